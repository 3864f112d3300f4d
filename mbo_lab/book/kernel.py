"""The Numba book kernel: MBO records applied to flat-array order books.

Every function here is ``@njit(cache=True, nogil=True)`` over flat NumPy arrays; the state
lives in :class:`mbo_lab.book.state.BookState` (arrays named in :data:`STATE_FIELDS`,
passed to the kernel positionally). Semantics are exactly those of
:mod:`mbo_lab.book.reference` (the tests compare the two at every F_LAST); read that
module for the rules.

Layout (all int64)
------------------
* ``bk_hash (BH, 2)``: open-addressing table ``key -> book`` with
  ``key = (instrument_id << 16 | publisher_id) + 1`` (0 = empty); ``bk_info (B, 2)``
  holds each book's instrument and publisher.
* ``seg (2B, 3)``: per book two *segments* (``2b`` bids, ``2b+1`` asks): start, length and
  capacity of a slice of ``pool (P, 2)`` = (key, level id). Keys grow toward the touch
  (bids ``price``, asks ``~price``) so the best level is the last row and work near the
  touch shifts few rows. Any int64 price works: there is no tick ladder to overflow.
* ``lvl (L, 5)``: price, total size, order count, FIFO head and tail order slot;
  ``lvl_free`` is a stack of free rows.
* ``ords (O, 8)``: order id, segment, price, size, level, prev, next, add time (ns) -- one
  64-byte row per order; ``ord_free`` is a stack of free rows.
* ``oh (H, 2)``: linear-probing hash ``(order_id, book) -> order slot`` (slot -1 = empty),
  kept at most half full, with backward-shift deletion (no tombstones).

Growth: the kernel checks capacity *before* it changes anything for a record; when a pool,
table or segment is full it returns that record's index and a status code, the Python
wrapper grows the arrays and calls again from that record, so results equal one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..io.records import (
    ACTION_ADD,
    ACTION_CANCEL,
    ACTION_CLEAR,
    ACTION_FILL,
    ACTION_MODIFY,
    ACTION_NONE,
    ACTION_TRADE,
    F_LAST,
    F_TOB,
    SIDE_ASK,
    SIDE_BID,
)

# status codes returned by apply_records
OK = 0
NEED_ORDERS = 1
NEED_LEVELS = 2
NEED_SEGMENT = 3
NEED_BOOKS = 4

# meta slots (int64 scalars of the state)
M_NBOOKS = 0  # books in use
M_ORD_FREE = 1  # free order rows on the stack
M_LVL_FREE = 2  # free level rows on the stack
M_SEG_USED = 3  # pool rows handed out to segments
M_LIVE = 4  # live orders (= occupied order-hash entries)
M_SEG_FULL = 5  # segment that needs room (with NEED_SEGMENT; -1: room for a new book)
M_LAST_KEY = 6  # cache: last book key looked up
M_LAST_BOOK = 7  # cache: its book index
N_META = 8

# anomaly counters, same order as reference.COUNTER_NAMES
C_UNKNOWN_CANCEL = 0
C_UNKNOWN_MODIFY = 1
C_DUPLICATE_ADD = 2
C_OVER_CANCEL = 3
C_SIDE_NONE = 4
C_UNDEF_PRICE = 5
C_ZERO_SIZE = 6
C_BAD_ACTION = 7
N_COUNTERS = 8

# columns
O_ID, O_SEG, O_PX, O_SZ, O_LVL, O_PREV, O_NEXT, O_TS = 0, 1, 2, 3, 4, 5, 6, 7
L_PX, L_SZ, L_CT, L_HEAD, L_TAIL = 0, 1, 2, 3, 4
S_START, S_LEN, S_CAP = 0, 1, 2
SEG_INIT_CAP = 16

UNDEF = np.int64(2**63 - 1)
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)

#: The state arrays, in the order the kernel takes them.
STATE_FIELDS = ("meta", "counters", "bk_hash", "bk_info", "seg", "pool", "lvl", "lvl_free",
                "ords", "ord_free", "oh")


# --------------------------------------------------------------------------- hashing


@njit(cache=True, nogil=True, inline="always")
def _ohash(oid, b, mask):
    h = (np.uint64(oid) ^ (np.uint64(b) * _MIX1)) * _MIX2
    h = h ^ (h >> np.uint64(29))
    return np.int64(h & np.uint64(mask))


@njit(cache=True, nogil=True)
def order_find(oh, ords, oid, b):
    """Order slot of ``(order_id, book)`` (order id as int64 bits) or -1."""
    mask = oh.shape[0] - 1
    i = _ohash(oid, b, mask)
    while True:
        slot = oh[i, 1]
        if slot < 0:
            return np.int64(-1)
        if oh[i, 0] == oid and (ords[slot, O_SEG] >> 1) == b:
            return slot
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _oh_put(oh, oid, b, slot):
    mask = oh.shape[0] - 1
    i = _ohash(oid, b, mask)
    while oh[i, 1] >= 0:
        i = (i + 1) & mask
    oh[i, 0] = oid
    oh[i, 1] = slot


@njit(cache=True, nogil=True)
def _oh_del(oh, ords, slot):
    """Remove the entry of order ``slot`` (backward-shift deletion)."""
    mask = oh.shape[0] - 1
    i = _ohash(ords[slot, O_ID], ords[slot, O_SEG] >> 1, mask)
    while oh[i, 1] != slot:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        sj = oh[j, 1]
        if sj < 0:
            break
        k = _ohash(oh[j, 0], ords[sj, O_SEG] >> 1, mask)
        if i <= j:
            stay = i < k <= j
        else:
            stay = k > i or k <= j
        if stay:
            continue
        oh[i, 0] = oh[j, 0]
        oh[i, 1] = sj
        i = j
    oh[i, 1] = -1


@njit(cache=True, nogil=True)
def rehash_orders(old, new, ords):
    """Move every entry of order hash ``old`` into the (larger, empty) table ``new``."""
    for i in range(old.shape[0]):
        slot = old[i, 1]
        if slot >= 0:
            _oh_put(new, old[i, 0], ords[slot, O_SEG] >> 1, slot)


@njit(cache=True, nogil=True)
def book_find(bk_hash, key):
    """Book index of ``key = (instrument_id << 16 | publisher_id) + 1`` or -1."""
    mask = bk_hash.shape[0] - 1
    i = _ohash(key, 0, mask)
    while True:
        k = bk_hash[i, 0]
        if k == 0:
            return np.int64(-1)
        if k == key:
            return bk_hash[i, 1]
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def book_put(bk_hash, key, b):
    mask = bk_hash.shape[0] - 1
    i = _ohash(key, 0, mask)
    while bk_hash[i, 0] != 0:
        i = (i + 1) & mask
    bk_hash[i, 0] = key
    bk_hash[i, 1] = b


# --------------------------------------------------------------------------- levels


@njit(cache=True, nogil=True, inline="always")
def _side_key(is_ask, price):
    return ~price if is_ask else price


@njit(cache=True, nogil=True, inline="always")
def _seg_search(pool, start, n, key):
    """First position p in [0, n] with pool[start+p, 0] >= key (keys ascending).

    Probes the last rows first: most activity is at or near the touch.
    """
    p = n - 1
    stop = max(n - 4, 0)
    while p >= stop:
        kp = pool[start + p, 0]
        if kp < key:
            return p + 1
        if kp == key:
            return p
        p -= 1
    lo = 0
    hi = p + 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if pool[start + mid, 0] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _level_get(meta, seg, pool, lvl, lvl_free, s, price):
    """Level row for ``price`` in segment ``s``, created empty if absent (room checked)."""
    key = _side_key(s & 1, price)
    start = seg[s, S_START]
    n = seg[s, S_LEN]
    p = _seg_search(pool, start, n, key)
    if p < n and pool[start + p, 0] == key:
        return pool[start + p, 1]
    meta[M_LVL_FREE] -= 1
    lv = lvl_free[meta[M_LVL_FREE]]
    lvl[lv, L_PX] = price
    lvl[lv, L_SZ] = 0
    lvl[lv, L_CT] = 0
    lvl[lv, L_HEAD] = -1
    lvl[lv, L_TAIL] = -1
    for q in range(start + n, start + p, -1):
        pool[q, 0] = pool[q - 1, 0]
        pool[q, 1] = pool[q - 1, 1]
    pool[start + p, 0] = key
    pool[start + p, 1] = lv
    seg[s, S_LEN] = n + 1
    return lv


@njit(cache=True, nogil=True)
def _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, s):
    """Remove every level and order of segment ``s``."""
    start = seg[s, S_START]
    for p in range(seg[s, S_LEN]):
        lv = pool[start + p, 1]
        o = lvl[lv, L_HEAD]
        while o >= 0:
            nxt = ords[o, O_NEXT]
            _oh_del(oh, ords, o)
            meta[M_LIVE] -= 1
            ord_free[meta[M_ORD_FREE]] = o
            meta[M_ORD_FREE] += 1
            o = nxt
        lvl_free[meta[M_LVL_FREE]] = lv
        meta[M_LVL_FREE] += 1
    seg[s, S_LEN] = 0


# --------------------------------------------------------------------------- outputs


@njit(cache=True, nogil=True)
def write_levels(seg, pool, lvl, b, nlev, row, out_bpx, out_bsz, out_bct, out_apx, out_asz,
                 out_act):
    """Write the top ``nlev`` levels of book ``b`` (-1: no such book) into row ``row``.

    Returns the cross state: 0 normal or a side empty, 1 locked, 2 crossed.
    """
    nb = 0
    na = 0
    top_b = 0
    top_a = 0
    if b >= 0:
        nb = seg[2 * b, S_LEN]
        top_b = seg[2 * b, S_START] + nb - 1
        na = seg[2 * b + 1, S_LEN]
        top_a = seg[2 * b + 1, S_START] + na - 1
    for k in range(nlev):
        if k < nb:
            lv = pool[top_b - k, 1]
            out_bpx[row, k] = lvl[lv, L_PX]
            out_bsz[row, k] = lvl[lv, L_SZ]
            out_bct[row, k] = lvl[lv, L_CT]
        else:
            out_bpx[row, k] = UNDEF
            out_bsz[row, k] = 0
            out_bct[row, k] = 0
        if k < na:
            lv = pool[top_a - k, 1]
            out_apx[row, k] = lvl[lv, L_PX]
            out_asz[row, k] = lvl[lv, L_SZ]
            out_act[row, k] = lvl[lv, L_CT]
        else:
            out_apx[row, k] = UNDEF
            out_asz[row, k] = 0
            out_act[row, k] = 0
    if nb > 0 and na > 0:
        bp = lvl[pool[top_b, 1], L_PX]
        ap = lvl[pool[top_a, 1], L_PX]
        if bp > ap:
            return 2
        if bp == ap:
            return 1
    return 0


# --------------------------------------------------------------------------- the kernel


@njit(cache=True, nogil=True)
def _book_create(meta, bk_hash, bk_info, seg, key):
    b = meta[M_NBOOKS]
    meta[M_NBOOKS] = b + 1
    book_put(bk_hash, key, b)
    bk_info[b, 0] = (key - 1) >> 16
    bk_info[b, 1] = (key - 1) & 0xFFFF
    for side in range(2):
        s = 2 * b + side
        seg[s, S_START] = meta[M_SEG_USED]
        seg[s, S_LEN] = 0
        seg[s, S_CAP] = SEG_INIT_CAP
        meta[M_SEG_USED] += SEG_INIT_CAP
    return b


@njit(cache=True, nogil=True)
def apply_records(meta, counters, bk_hash, bk_info, seg, pool, lvl, lvl_free, ords, ord_free,
                  oh, recs, start, stop, nlev, out_idx, out_bpx, out_bsz, out_bct, out_apx,
                  out_asz, out_act, out_cross, n_out, trade_idx, n_trades, base_index):
    """Apply ``recs[start:stop]`` (``MBO_KERNEL_DTYPE``) to the state arrays.

    At every record with F_LAST, row ``n_out`` of the outputs gets the record's index
    (``base_index + i``), the top ``nlev`` levels of the record's book (prices int64
    fixed-point, ``UNDEF`` when empty; sizes in lots; order counts) and its cross state.
    Trade records' indices go to ``trade_idx`` (pass a 0-length array to skip).

    Returns ``(next_record, status, n_out, n_trades)``: status ``OK`` when every record
    was applied; otherwise what must grow before calling again from ``next_record``.

    The hot paths (find, remove, add, output) are written out in this one function on
    purpose: a Numba call that passes arrays costs an atomic reference-count update per
    array, which made helper-based code ~10x slower. Rare paths (clear, top-of-book,
    new book) call helpers.
    """
    ohmask = oh.shape[0] - 1
    hash_limit = oh.shape[0] >> 1
    want_trades = trade_idx.shape[0] > 0
    last_key = meta[M_LAST_KEY]
    b = meta[M_LAST_BOOK]
    for i in range(start, stop):
        r = recs[i]
        act = r.action
        flags = r.flags
        key = ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) + 1
        if key != last_key:
            b = book_find(bk_hash, key)
            last_key = key
        if act == ACTION_TRADE or act == ACTION_FILL or act == ACTION_NONE:
            if act == ACTION_TRADE and want_trades:
                trade_idx[n_trades] = base_index + i
                n_trades += 1
        elif act == ACTION_ADD or act == ACTION_CANCEL or act == ACTION_MODIFY or \
                act == ACTION_CLEAR:
            side = r.side
            has_side = side == SIDE_BID or side == SIDE_ASK
            if b < 0:
                if meta[M_NBOOKS] >= bk_info.shape[0]:
                    meta[M_LAST_KEY] = -1
                    return i, NEED_BOOKS, n_out, n_trades
                if meta[M_SEG_USED] + 2 * SEG_INIT_CAP > pool.shape[0]:
                    meta[M_LAST_KEY] = -1
                    meta[M_SEG_FULL] = -1
                    return i, NEED_SEGMENT, n_out, n_trades
                b = _book_create(meta, bk_hash, bk_info, seg, key)
            s = 2 * b + (1 if side == SIDE_ASK else 0)
            if (act == ACTION_ADD or act == ACTION_MODIFY) and has_side:
                # room for one more order and level, checked before any change
                if meta[M_ORD_FREE] < 1 or meta[M_LIVE] + 1 > hash_limit:
                    meta[M_LAST_KEY] = -1
                    return i, NEED_ORDERS, n_out, n_trades
                if meta[M_LVL_FREE] < 1:
                    meta[M_LAST_KEY] = -1
                    return i, NEED_LEVELS, n_out, n_trades
                if seg[s, S_LEN] >= seg[s, S_CAP]:
                    meta[M_LAST_KEY] = -1
                    meta[M_SEG_FULL] = s
                    return i, NEED_SEGMENT, n_out, n_trades
            price = r.price
            sz = np.int64(r.size)
            oid = np.int64(r.order_id)
            is_tob = act == ACTION_ADD and (flags & F_TOB) != 0
            # ---- find the order when the action needs it
            o = np.int64(-1)
            if act == ACTION_CANCEL or (has_side and not is_tob and price != UNDEF and
                                        (act == ACTION_MODIFY or sz > 0)):
                h = _ohash(oid, b, ohmask)
                while True:
                    sl = oh[h, 1]
                    if sl < 0:
                        break
                    if oh[h, 0] == oid and (ords[sl, O_SEG] >> 1) == b:
                        o = sl
                        break
                    h = (h + 1) & ohmask
            # ---- decide: remove order rm, then add (s, oid, price, sz, ts) if add
            rm = np.int64(-1)
            add = False
            ts = np.int64(r.ts_recv)
            if act == ACTION_CLEAR:
                _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, 2 * b)
                _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, 2 * b + 1)
            elif act == ACTION_CANCEL:
                if o < 0:
                    counters[C_UNKNOWN_CANCEL] += 1
                else:
                    cur = ords[o, O_SZ]
                    if sz >= cur:
                        if sz > cur:
                            counters[C_OVER_CANCEL] += 1
                        rm = o
                    else:
                        ords[o, O_SZ] = cur - sz
                        lvl[ords[o, O_LVL], L_SZ] -= sz
            elif not has_side:
                counters[C_SIDE_NONE] += 1
            elif is_tob:
                _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, s)
                if price != UNDEF and sz > 0:
                    lv = _level_get(meta, seg, pool, lvl, lvl_free, s, price)
                    lvl[lv, L_SZ] = sz
            elif price == UNDEF:
                counters[C_UNDEF_PRICE] += 1
            elif act == ACTION_ADD:
                if sz == 0:
                    counters[C_ZERO_SIZE] += 1
                else:
                    if o >= 0:
                        counters[C_DUPLICATE_ADD] += 1
                        rm = o
                    add = True
            else:  # modify
                if o < 0:
                    counters[C_UNKNOWN_MODIFY] += 1
                    add = sz > 0
                elif sz == 0:
                    rm = o
                elif ords[o, O_PX] != price or ords[o, O_SEG] != s or sz > ords[o, O_SZ]:
                    # price or side change, or size increase: back of the queue
                    ts = ords[o, O_TS]
                    rm = o
                    add = True
                else:
                    lvl[ords[o, O_LVL], L_SZ] += sz - ords[o, O_SZ]
                    ords[o, O_SZ] = sz
            # ---- remove order rm
            if rm >= 0:
                lv = ords[rm, O_LVL]
                prv = ords[rm, O_PREV]
                nxt = ords[rm, O_NEXT]
                if prv >= 0:
                    ords[prv, O_NEXT] = nxt
                else:
                    lvl[lv, L_HEAD] = nxt
                if nxt >= 0:
                    ords[nxt, O_PREV] = prv
                else:
                    lvl[lv, L_TAIL] = prv
                lvl[lv, L_SZ] -= ords[rm, O_SZ]
                lvl[lv, L_CT] -= 1
                if lvl[lv, L_CT] == 0 and lvl[lv, L_SZ] == 0:
                    # last order gone: drop the level from its segment
                    srm = ords[rm, O_SEG]
                    st = seg[srm, S_START]
                    n = seg[srm, S_LEN]
                    p = _seg_search(pool, st, n, _side_key(srm & 1, lvl[lv, L_PX]))
                    for q in range(st + p, st + n - 1):
                        pool[q, 0] = pool[q + 1, 0]
                        pool[q, 1] = pool[q + 1, 1]
                    seg[srm, S_LEN] = n - 1
                    lvl_free[meta[M_LVL_FREE]] = lv
                    meta[M_LVL_FREE] += 1
                # hash delete with backward shift
                h = _ohash(ords[rm, O_ID], ords[rm, O_SEG] >> 1, ohmask)
                while oh[h, 1] != rm:
                    h = (h + 1) & ohmask
                j = h
                while True:
                    j = (j + 1) & ohmask
                    sj = oh[j, 1]
                    if sj < 0:
                        break
                    k = _ohash(oh[j, 0], ords[sj, O_SEG] >> 1, ohmask)
                    if h <= j:
                        stay = h < k <= j
                    else:
                        stay = k > h or k <= j
                    if not stay:
                        oh[h, 0] = oh[j, 0]
                        oh[h, 1] = sj
                        h = j
                oh[h, 1] = -1
                meta[M_LIVE] -= 1
                ord_free[meta[M_ORD_FREE]] = rm
                meta[M_ORD_FREE] += 1
            # ---- add order at the back of its level
            if add:
                kk = _side_key(s & 1, price)
                st = seg[s, S_START]
                n = seg[s, S_LEN]
                p = _seg_search(pool, st, n, kk)
                if p < n and pool[st + p, 0] == kk:
                    lv = pool[st + p, 1]
                else:
                    meta[M_LVL_FREE] -= 1
                    lv = lvl_free[meta[M_LVL_FREE]]
                    lvl[lv, L_PX] = price
                    lvl[lv, L_SZ] = 0
                    lvl[lv, L_CT] = 0
                    lvl[lv, L_HEAD] = -1
                    lvl[lv, L_TAIL] = -1
                    for q in range(st + n, st + p, -1):
                        pool[q, 0] = pool[q - 1, 0]
                        pool[q, 1] = pool[q - 1, 1]
                    pool[st + p, 0] = kk
                    pool[st + p, 1] = lv
                    seg[s, S_LEN] = n + 1
                meta[M_ORD_FREE] -= 1
                o = ord_free[meta[M_ORD_FREE]]
                tail = lvl[lv, L_TAIL]
                ords[o, O_ID] = oid
                ords[o, O_SEG] = s
                ords[o, O_PX] = price
                ords[o, O_SZ] = sz
                ords[o, O_LVL] = lv
                ords[o, O_PREV] = tail
                ords[o, O_NEXT] = -1
                ords[o, O_TS] = ts
                if tail >= 0:
                    ords[tail, O_NEXT] = o
                else:
                    lvl[lv, L_HEAD] = o
                lvl[lv, L_TAIL] = o
                lvl[lv, L_SZ] += sz
                lvl[lv, L_CT] += 1
                h = _ohash(oid, b, ohmask)
                while oh[h, 1] >= 0:
                    h = (h + 1) & ohmask
                oh[h, 0] = oid
                oh[h, 1] = o
                meta[M_LIVE] += 1
        else:
            counters[C_BAD_ACTION] += 1
        if flags & F_LAST:
            # ---- publish the record's book: top nlev levels and cross state
            out_idx[n_out] = base_index + i
            nb = 0
            na = 0
            top_b = 0
            top_a = 0
            if b >= 0:
                nb = seg[2 * b, S_LEN]
                top_b = seg[2 * b, S_START] + nb - 1
                na = seg[2 * b + 1, S_LEN]
                top_a = seg[2 * b + 1, S_START] + na - 1
            for k in range(nlev):
                if k < nb:
                    lv = pool[top_b - k, 1]
                    out_bpx[n_out, k] = lvl[lv, L_PX]
                    out_bsz[n_out, k] = lvl[lv, L_SZ]
                    out_bct[n_out, k] = lvl[lv, L_CT]
                else:
                    out_bpx[n_out, k] = UNDEF
                    out_bsz[n_out, k] = 0
                    out_bct[n_out, k] = 0
                if k < na:
                    lv = pool[top_a - k, 1]
                    out_apx[n_out, k] = lvl[lv, L_PX]
                    out_asz[n_out, k] = lvl[lv, L_SZ]
                    out_act[n_out, k] = lvl[lv, L_CT]
                else:
                    out_apx[n_out, k] = UNDEF
                    out_asz[n_out, k] = 0
                    out_act[n_out, k] = 0
            cross = 0
            if nb > 0 and na > 0:
                bp = lvl[pool[top_b, 1], L_PX]
                ap = lvl[pool[top_a, 1], L_PX]
                if bp > ap:
                    cross = 2
                elif bp == ap:
                    cross = 1
            out_cross[n_out] = cross
            n_out += 1
    meta[M_LAST_KEY] = last_key
    meta[M_LAST_BOOK] = b
    return stop, OK, n_out, n_trades


# --------------------------------------------------------------------------- queries


@njit(cache=True, nogil=True)
def queue_ahead(lvl, ords, o):
    """Size (lots) ahead of order slot ``o`` in its FIFO level, incl. a top-of-book part."""
    lv = ords[o, O_LVL]
    total = np.int64(0)
    p = lvl[lv, L_HEAD]
    while p >= 0:
        total += ords[p, O_SZ]
        p = ords[p, O_NEXT]
    ahead = lvl[lv, L_SZ] - total  # a top-of-book part ranks first
    p = lvl[lv, L_HEAD]
    while p != o:
        ahead += ords[p, O_SZ]
        p = ords[p, O_NEXT]
    return ahead


@njit(cache=True, nogil=True)
def check_invariants(meta, seg, pool, lvl, ords, oh):
    """0 when the state is consistent, else the code of the first violation found.

    1 a level's size is not positive or below the sum of its orders; 2 a level's count is
    not its number of orders; 3 segment keys not strictly ascending; 4 an order has a bad
    size, level or hash entry; 5 the live-order count disagrees with the levels.
    """
    live = 0
    for s in range(2 * meta[M_NBOOKS]):
        start = seg[s, S_START]
        for p in range(seg[s, S_LEN]):
            if p > 0 and pool[start + p, 0] <= pool[start + p - 1, 0]:
                return 3
            lv = pool[start + p, 1]
            total = np.int64(0)
            cnt = 0
            o = lvl[lv, L_HEAD]
            while o >= 0:
                if ords[o, O_SZ] <= 0 or ords[o, O_LVL] != lv or ords[o, O_SEG] != s:
                    return 4
                if order_find(oh, ords, ords[o, O_ID], s >> 1) != o:
                    return 4
                total += ords[o, O_SZ]
                cnt += 1
                o = ords[o, O_NEXT]
            if cnt != lvl[lv, L_CT]:
                return 2
            if lvl[lv, L_SZ] < total or lvl[lv, L_SZ] <= 0:
                return 1
            live += cnt
    if live != meta[M_LIVE]:
        return 5
    return 0
