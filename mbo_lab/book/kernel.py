"""The Numba book kernel: MBO records applied to flat-array order books.

Every function here is ``@njit(cache=True, nogil=True, _nrt=False)`` over flat NumPy
arrays; the state lives in :class:`mbo_lab.book.state.BookState` (arrays named in
:data:`STATE_FIELDS`, passed to the kernel positionally). Semantics are exactly those of
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
* ``lvl (L, 8)``: price, total size, order count, FIFO head and tail order slot (3 spare
  columns: one 64-byte row per level); ``lvl_free`` is a stack of free rows.
* ``ords (O, 8)``: order id, segment, price, size, level, prev, next, add time (ns) -- one
  64-byte row per order; ``ord_free`` is a stack of free rows.
* Both hashes are keyed by two random seeds of the state (``meta[M_SEED0]``,
  ``meta[M_SEED1]``), drawn per state from the OS, copied by checkpoints: a hostile file
  cannot choose order ids (or instrument ids) that all land on one home row.
* ``oh (H, 2)``: linear-probing hash ``(order_id, book) -> order slot``: row
  ``(order_id, book << 32 | slot)``, ``-1`` = empty, so a probe never reads ``ords``. Kept
  at most half full (it grows with the live orders, not with ``ords``), backward-shift
  deletion (no tombstones).

Growth: the kernel checks capacity *before* it changes anything for a record; when a pool,
table or segment is full it returns that record's index and a status code, the Python
wrapper grows the arrays and calls again from that record, so results equal one pass.

Speed notes (each measured)
---------------------------
* Every function is compiled with ``_nrt=False``: the kernel never allocates, and without
  the Numba runtime a call or an inlined helper that passes arrays costs no atomic
  reference-count update (with the runtime, each array argument cost ~5-10 ns per call,
  inlined or not, which made helper-based code ~10x slower and was the first big cost).
* The hot loop works on flat 1-D views of the 2-D state (``arr.reshape(arr.size)``) with
  ``np.uint64`` indices: no negative-index fix-up and no stride multiply per access.
  Row widths are the layout constants above.
* Look-ahead: four records ahead the kernel finds the record's book and the home row of its
  order in ``oh`` and prefetches that row; one record ahead it prefetches the order's row
  of ``ords``. A book or hash row missing from L1 was the largest stall.
* Free-list depths and the live count are locals inside the loop; the order hash is small
  (sized by the live orders) and its probe reads only ``oh``.
* Hot helpers are ``inline="always"`` and each is inlined at one call site only (compile
  time); rare paths (clear, new book, top-of-book over real orders) are calls.
* Where the time goes (10M generated records, 5 books, ~1,100 live orders: the whole
  state sits in L1/L2; 36 ns per record on the 2-core VM, ``benchmarks/profile_kernel.py``
  for the instruction-level profile): reading records and the look-ahead 7 ns, publishing
  the BBO and record fields at F_LAST 6 ns, the add/cancel/modify work the rest, spread
  over its branches with no single hot spot. Tried and measured within noise (+-3 %):
  look-ahead of 2 or 3 records instead of 4, no order-row prefetch, a one-multiply book
  hash, a branch-free scan of the top four levels, compiling the sampling, log and
  selection branches away (+3 %). Dropping the look-ahead costs 6 %.
* Not built, and why: a two-stage pipeline (one thread keeps the order map and emits level
  deltas, a second keeps the levels and publishes). On the profile above each stage needs
  at least ~20 ns per record (reading 7 + about half the A/C/M work + writing deltas;
  publishing 6 + the other half + reading deltas), so even with free synchronisation it
  stays under 50M records/s on two cores, and it does nothing for one core. Books on two
  threads (``build.py``) already reach 1.37-1.54x one thread.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

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
    FIXED_PRICE_SCALE,
    SIDE_ASK,
    SIDE_BID,
)

# status codes returned by apply_records
OK = 0
NEED_ORDERS = 1
NEED_LEVELS = 2
NEED_SEGMENT = 3
NEED_BOOKS = 4
NEED_LOG = 5  # the level-change log is full: flush or grow it, then call again
NEED_OUT = 6  # (sampling) the outputs are full: grow them, then call again

# meta slots (int64 scalars of the state)
M_NBOOKS = 0  # books in use
M_ORD_FREE = 1  # free order rows on the stack
M_LVL_FREE = 2  # free level rows on the stack
M_SEG_USED = 3  # pool rows handed out to segments
M_LIVE = 4  # live orders (= occupied order-hash entries)
M_SEG_FULL = 5  # segment that needs room (with NEED_SEGMENT; -1: room for a new book)
M_SEED0 = 6  # hash seed xored into keys (random per state, copied by checkpoints)
M_SEED1 = 7  # hash seed multiplier (odd)
M_LAST_KEY = M_SEED0  # old names of the two slots
M_LAST_BOOK = M_SEED1
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
N_OCOLS = 8
L_PX, L_SZ, L_CT, L_HEAD, L_TAIL = 0, 1, 2, 3, 4
N_LCOLS = 8
S_START, S_LEN, S_CAP = 0, 1, 2
SEG_INIT_CAP = 16

# order-hash rows: (order_id, book << TAG_SHIFT | slot)
TAG_SHIFT = 32
SLOT_MASK = (1 << TAG_SHIFT) - 1

UNDEF = np.int64(2**63 - 1)
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)

#: The state arrays, in the order the kernel takes them.
STATE_FIELDS = ("meta", "counters", "bk_hash", "bk_info", "seg", "pool", "lvl", "lvl_free",
                "ords", "ord_free", "oh")

_JIT = dict(cache=True, nogil=True, error_model="numpy", _nrt=False)


# --------------------------------------------------------------------------- hashing


@njit(inline="always", **_JIT)
def _ohash(oid, b, mask, k0, k1):
    """Home row of ``(oid, book b)`` in a table of ``mask + 1`` rows, keyed by the state's
    random seeds ``k0`` and ``k1`` (odd): the key enters through a multiply and the high
    bits are folded down before the second multiply, so ids crafted to share a row under
    one seed (or under an unkeyed mix) scatter under another."""
    h = (np.uint64(oid) ^ np.uint64(k0) ^ (np.uint64(b) * _MIX1)) * np.uint64(k1)
    h = h ^ (h >> np.uint64(32))
    h = h * _MIX2
    h = h ^ (h >> np.uint64(29))
    return np.int64(h & np.uint64(mask))


@njit(**_JIT)
def order_find(oh, ords, oid, b, k0, k1):
    """Order slot of ``(order_id, book)`` (order id as int64 bits) or -1."""
    mask = oh.shape[0] - 1
    i = _ohash(oid, b, mask, k0, k1)
    while True:
        t = oh[i, 1]
        if t < 0:
            return np.int64(-1)
        if oh[i, 0] == oid and (t >> TAG_SHIFT) == b:
            return t & SLOT_MASK
        i = (i + 1) & mask


@njit(inline="always", **_JIT)
def _oh_put(oh, oid, b, slot, k0, k1):
    mask = oh.shape[0] - 1
    i = _ohash(oid, b, mask, k0, k1)
    while oh[i, 1] >= 0:
        i = (i + 1) & mask
    oh[i, 0] = oid
    oh[i, 1] = (b << TAG_SHIFT) | slot


@njit(inline="always", **_JIT)
def _oh_del_at(oh, i, mask, k0, k1):
    """Empty row ``i`` of the order hash (backward-shift deletion)."""
    j = i
    while True:
        j = (j + 1) & mask
        t = oh[j, 1]
        if t < 0:
            break
        k = _ohash(oh[j, 0], t >> TAG_SHIFT, mask, k0, k1)
        if ((j - k) & mask) >= ((j - i) & mask):
            oh[i, 0] = oh[j, 0]
            oh[i, 1] = t
            i = j
    oh[i, 1] = -1


@njit(inline="always", **_JIT)
def _oh_del(oh, ords, slot, k0, k1):
    """Remove the entry of order ``slot``."""
    mask = oh.shape[0] - 1
    oid = ords[slot, O_ID]
    i = _ohash(oid, ords[slot, O_SEG] >> 1, mask, k0, k1)
    while (oh[i, 1] & SLOT_MASK) != slot or oh[i, 0] != oid:
        i = (i + 1) & mask
    _oh_del_at(oh, i, mask, k0, k1)


@njit(**_JIT)
def rehash_orders(old, new, ords, k0, k1):
    """Move every entry of order hash ``old`` into the (larger, empty) table ``new``."""
    for i in range(old.shape[0]):
        t = old[i, 1]
        if t >= 0:
            _oh_put(new, old[i, 0], t >> TAG_SHIFT, t & SLOT_MASK, k0, k1)


@njit(**_JIT)
def book_find(bk_hash, key, k0, k1):
    """Book index of ``key = (instrument_id << 16 | publisher_id) + 1`` or -1."""
    mask = bk_hash.shape[0] - 1
    i = _ohash(key, 0, mask, k0, k1)
    while True:
        k = bk_hash[i, 0]
        if k == 0:
            return np.int64(-1)
        if k == key:
            return bk_hash[i, 1]
        i = (i + 1) & mask


@njit(**_JIT)
def book_put(bk_hash, key, b, k0, k1):
    mask = bk_hash.shape[0] - 1
    i = _ohash(key, 0, mask, k0, k1)
    while bk_hash[i, 0] != 0:
        i = (i + 1) & mask
    bk_hash[i, 0] = key
    bk_hash[i, 1] = b


# --------------------------------------------------------------------------- levels


@njit(inline="always", **_JIT)
def _side_key(is_ask, price):
    return ~price if is_ask else price


@njit(**_JIT)
def _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, s):
    """Remove every level and order of segment ``s``."""
    k0 = meta[M_SEED0]
    k1 = meta[M_SEED1]
    start = seg[s, S_START]
    for p in range(seg[s, S_LEN]):
        lv = pool[start + p, 1]
        o = lvl[lv, L_HEAD]
        while o >= 0:
            nxt = ords[o, O_NEXT]
            _oh_del(oh, ords, o, k0, k1)
            meta[M_LIVE] -= 1
            ord_free[meta[M_ORD_FREE]] = o
            meta[M_ORD_FREE] += 1
            o = nxt
        lvl_free[meta[M_LVL_FREE]] = lv
        meta[M_LVL_FREE] += 1
    seg[s, S_LEN] = 0


# --------------------------------------------------------------------------- hot-path helpers


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to load element ``idx`` of 1-D ``arr`` into cache (never faults)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i32 = ir.IntType(32)
        vp = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [vp, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, vp), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# The helpers below work on flat (1-D) views of the state with unsigned indices. Rows:
# pool 2, seg 3, lvl and ords 8, oh 2 int64.


@njit(inline="always", **_JIT)
def _pos(P, st, n, key):
    """First position p in [0, n] of segment rows ``st..st+n-1`` (flat pool ``P``) whose
    key is >= ``key``: the top rows (the touch) first, then a binary search."""
    p = n - 1
    stop = max(n - 4, 0)
    while p >= stop:
        kp = P[np.uint64(2 * (st + p))]
        if kp < key:
            return p + 1
        if kp == key:
            return p
        p -= 1
    lo = 0
    hi = p + 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if P[np.uint64(2 * (st + mid))] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(inline="always", **_JIT)
def _level_at_f(SG, P, LV, lvl_free, nlfree, s, price):
    """Level row of ``price`` in segment ``s``, created empty if absent (room checked).
    Returns ``(level, free levels left)``."""
    kk = _side_key(s & 1, price)
    st = SG[np.uint64(3 * s + S_START)]
    n = SG[np.uint64(3 * s + S_LEN)]
    p = _pos(P, st, n, kk)
    if p < n and P[np.uint64(2 * (st + p))] == kk:
        return P[np.uint64(2 * (st + p) + 1)], nlfree
    nlfree -= 1
    lv = lvl_free[np.uint64(nlfree)]
    lb = lv * N_LCOLS
    LV[np.uint64(lb + L_PX)] = price
    LV[np.uint64(lb + L_SZ)] = 0
    LV[np.uint64(lb + L_CT)] = 0
    LV[np.uint64(lb + L_HEAD)] = -1
    LV[np.uint64(lb + L_TAIL)] = -1
    for q in range(2 * (st + n) - 1, 2 * (st + p) - 1, -1):
        P[np.uint64(q + 2)] = P[np.uint64(q)]
    P[np.uint64(2 * (st + p))] = kk
    P[np.uint64(2 * (st + p) + 1)] = lv
    SG[np.uint64(3 * s + S_LEN)] = n + 1
    return lv, nlfree


@njit(inline="always", **_JIT)
def _unlink_f(SG, P, LV, lvl_free, OR, nlfree, o):
    """Take order ``o`` out of its level (size, count, FIFO links); drop the level from its
    segment when nothing is left. Returns the free levels left."""
    ob = o * N_OCOLS
    lv = OR[np.uint64(ob + O_LVL)]
    lb = lv * N_LCOLS
    prv = OR[np.uint64(ob + O_PREV)]
    nxt = OR[np.uint64(ob + O_NEXT)]
    if prv >= 0:
        OR[np.uint64(prv * N_OCOLS + O_NEXT)] = nxt
    else:
        LV[np.uint64(lb + L_HEAD)] = nxt
    if nxt >= 0:
        OR[np.uint64(nxt * N_OCOLS + O_PREV)] = prv
    else:
        LV[np.uint64(lb + L_TAIL)] = prv
    lsz = LV[np.uint64(lb + L_SZ)] - OR[np.uint64(ob + O_SZ)]
    lct = LV[np.uint64(lb + L_CT)] - 1
    LV[np.uint64(lb + L_SZ)] = lsz
    LV[np.uint64(lb + L_CT)] = lct
    if lct == 0 and lsz == 0:
        s = OR[np.uint64(ob + O_SEG)]
        st = SG[np.uint64(3 * s + S_START)]
        n = SG[np.uint64(3 * s + S_LEN)]
        p = _pos(P, st, n, _side_key(s & 1, LV[np.uint64(lb + L_PX)]))
        for q in range(2 * (st + p), 2 * (st + n - 1)):
            P[np.uint64(q)] = P[np.uint64(q + 2)]
        SG[np.uint64(3 * s + S_LEN)] = n - 1
        lvl_free[np.uint64(nlfree)] = lv
        nlfree += 1
    return nlfree


@njit(inline="always", **_JIT)
def _append_f(LV, OR, lv, o, sz):
    """Put order ``o`` (size ``sz``) at the back of level ``lv``'s FIFO."""
    lb = lv * N_LCOLS
    ob = o * N_OCOLS
    tail = LV[np.uint64(lb + L_TAIL)]
    OR[np.uint64(ob + O_LVL)] = lv
    OR[np.uint64(ob + O_PREV)] = tail
    OR[np.uint64(ob + O_NEXT)] = -1
    if tail >= 0:
        OR[np.uint64(tail * N_OCOLS + O_NEXT)] = o
    else:
        LV[np.uint64(lb + L_HEAD)] = o
    LV[np.uint64(lb + L_TAIL)] = o
    LV[np.uint64(lb + L_SZ)] += sz
    LV[np.uint64(lb + L_CT)] += 1


@njit(inline="always", **_JIT)
def _oh_del_f(OH, i, mask, k0, k1):
    """Empty row ``i`` of the (flat) order hash, backward-shift deletion."""
    j = i
    while True:
        j = (j + 1) & mask
        t = OH[np.uint64(2 * j + 1)]
        if t < 0:
            break
        k = _ohash(OH[np.uint64(2 * j)], t >> TAG_SHIFT, mask, k0, k1)
        if ((j - k) & mask) >= ((j - i) & mask):
            OH[np.uint64(2 * i)] = OH[np.uint64(2 * j)]
            OH[np.uint64(2 * i + 1)] = t
            i = j
    OH[np.uint64(2 * i + 1)] = -1


@njit(inline="always", **_JIT)
def _log_row(LG, n_log, i, side, price, size):
    """Row ``n_log`` of the (flat) level-change log: record, side, price, new size."""
    q = np.uint64(4 * n_log)
    LG[q] = i
    LG[q + np.uint64(1)] = side
    LG[q + np.uint64(2)] = price
    LG[q + np.uint64(3)] = size
    return n_log + 1


@njit(**_JIT)
def _log_clear(LG, n_log, i, SG, P, LV, s):
    """Log every level of segment ``s`` as removed (size 0) by record ``i``."""
    st = SG[np.uint64(3 * s + S_START)]
    for p in range(SG[np.uint64(3 * s + S_LEN)]):
        lv = P[np.uint64(2 * (st + p) + 1)]
        n_log = _log_row(LG, n_log, i, s & 1, LV[np.uint64(lv * N_LCOLS + L_PX)], 0)
    return n_log


@njit(inline="always", **_JIT)
def _book_key(r):
    """Book key of record ``r``: ``(instrument_id << 16 | publisher_id) + 1`` (0 = none)."""
    return ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) + 1


@njit(inline="always", **_JIT)
def part_of(key, nparts, pmul):
    """Part (thread) of book ``key`` in a partition of ``nparts``: bits 32-63 of
    ``key * pmul`` scaled to ``[0, nparts)`` by a multiply (no division in the loop)."""
    h = (np.uint64(key) * np.uint64(pmul)) >> np.uint64(32)
    return np.int64((h * np.uint64(nparts)) >> np.uint64(32))


@njit(inline="always", **_JIT)
def _book_probe(BH, key, bkmask, k0, k1):
    """Book index of ``key`` in the flat book hash ``BH`` (-1: not created yet)."""
    hb = _ohash(key, 0, bkmask, k0, k1)
    while True:
        kb = BH[np.uint64(2 * hb)]
        if kb == key:
            return BH[np.uint64(2 * hb + 1)]
        if kb == 0:
            return np.int64(-1)
        hb = (hb + 1) & bkmask


@njit(inline="always", **_JIT)
def _peek(recs, j, BH, bkmask, OH, ohmask, k0, k1):
    """Book of record ``j`` (-1: none yet) and the home row of its order in the order hash,
    which is prefetched."""
    r = recs[np.uint64(j)]
    key = _book_key(r)
    b = _book_probe(BH, key, bkmask, k0, k1)
    h = _ohash(np.int64(r.order_id), b, ohmask, k0, k1)
    _prefetch(OH, np.uint64(2 * h))
    return b, h


@njit(**_JIT)
def _peek_call(recs, j, BH, bkmask, OH, ohmask, k0, k1):
    """:func:`_peek` as a call (not inlined), for the few look-ups before the loop."""
    return _peek(recs, j, BH, bkmask, OH, ohmask, k0, k1)


# --------------------------------------------------------------------------- outputs


def _px_out(out, v):  # pragma: no cover - replaced by the overload below in compiled code
    """``v`` (int64 fixed-point price) as stored in ``out``: unchanged for integer outputs;
    for float outputs in currency units, NaN for ``UNDEF``."""
    if out.dtype.kind == "f":
        return np.nan if v == UNDEF else v / FIXED_PRICE_SCALE
    return v


@overload(_px_out, jit_options=dict(_JIT))
def _px_out_impl(out, v):
    if isinstance(out.dtype, types.Float):
        def conv(out, v):
            if v == UNDEF:
                return np.nan
            return np.float64(v) / np.float64(FIXED_PRICE_SCALE)
        return conv

    def same(out, v):
        return v
    return same


# sampler rows (int64): record index, ts_recv, ts_event, instrument, publisher, sequence,
# bin start (ns), cross state, then bid px/sz/ct and ask px/sz/ct (nlev each)
SP_IDX, SP_TSR, SP_TSE, SP_IID, SP_PUB, SP_SEQ, SP_BIN, SP_CROSS = range(8)
SP_HEAD = 8
# sampler meta: pending books, current bin start, current bin end, bin set (0/1)
SM_NPEND, SM_BIN0, SM_BIN1, SM_SET = range(4)


@njit(**_JIT)
def state_row(SG, P, LV, b, nlev, cur):
    """Top ``nlev`` levels (int64) and cross state of book ``b`` into sampler row ``cur``."""
    nb = 0
    na = 0
    top_b = 0
    top_a = 0
    if b >= 0:
        nb = SG[6 * b + S_LEN]
        top_b = SG[6 * b + S_START] + nb - 1
        na = SG[6 * b + 3 + S_LEN]
        top_a = SG[6 * b + 3 + S_START] + na - 1
    for k in range(nlev):
        if k < nb:
            lb = P[2 * (top_b - k) + 1] * N_LCOLS
            cur[SP_HEAD + k] = LV[lb + L_PX]
            cur[SP_HEAD + nlev + k] = LV[lb + L_SZ]
            cur[SP_HEAD + 2 * nlev + k] = LV[lb + L_CT]
        else:
            cur[SP_HEAD + k] = UNDEF
            cur[SP_HEAD + nlev + k] = 0
            cur[SP_HEAD + 2 * nlev + k] = 0
        if k < na:
            lb = P[2 * (top_a - k) + 1] * N_LCOLS
            cur[SP_HEAD + 3 * nlev + k] = LV[lb + L_PX]
            cur[SP_HEAD + 4 * nlev + k] = LV[lb + L_SZ]
            cur[SP_HEAD + 5 * nlev + k] = LV[lb + L_CT]
        else:
            cur[SP_HEAD + 3 * nlev + k] = UNDEF
            cur[SP_HEAD + 4 * nlev + k] = 0
            cur[SP_HEAD + 5 * nlev + k] = 0
    cross = 0
    if nb > 0 and na > 0:
        bp = LV[P[2 * top_b + 1] * N_LCOLS + L_PX]
        ap = LV[P[2 * top_a + 1] * N_LCOLS + L_PX]
        if bp > ap:
            cross = 2
        elif bp == ap:
            cross = 1
    cur[SP_CROSS] = cross


@njit(**_JIT)
def _emit(src, b, smp_last, changes_only, nlev, out_idx, OBP, OBS, OBC, OAP, OAS, OAC,
          out_cross, rs, ks, n_out, out_tsr, out_tse, out_iid, out_pub, out_seq):
    """Write sampler row ``src`` of book ``b`` as output state ``n_out`` unless
    ``changes_only`` and its top levels and cross state equal the book's last kept state.
    Returns the new output count."""
    w = SP_HEAD + 6 * nlev
    if changes_only:
        if smp_last[b, SP_IDX] >= 0:
            same = True
            for c in range(SP_CROSS, w):
                if smp_last[b, c] != src[c]:
                    same = False
                    break
            if same:
                return n_out
        for c in range(w):
            smp_last[b, c] = src[c]
    out_idx[n_out] = src[SP_IDX]
    if out_tsr.shape[0] > 0:
        out_tsr[n_out] = src[SP_TSR]
        out_tse[n_out] = src[SP_TSE]
        out_iid[n_out] = src[SP_IID]
        out_pub[n_out] = src[SP_PUB]
        out_seq[n_out] = src[SP_SEQ]
    for k in range(nlev):
        q = n_out * rs + k * ks
        OBP[q] = _px_out(OBP, src[SP_HEAD + k])
        OBS[q] = src[SP_HEAD + nlev + k]
        OBC[q] = src[SP_HEAD + 2 * nlev + k]
        OAP[q] = _px_out(OAP, src[SP_HEAD + 3 * nlev + k])
        OAS[q] = src[SP_HEAD + 4 * nlev + k]
        OAC[q] = src[SP_HEAD + 5 * nlev + k]
    out_cross[n_out] = src[SP_CROSS]
    return n_out + 1


@njit(**_JIT)
def flush_pending(smp_pend, smp_last, smp_list, smp_meta, changes_only, nlev, out_idx, OBP,
                  OBS, OBC, OAP, OAS, OAC, out_cross, rs, ks, n_out, out_tsr, out_tse,
                  out_iid, out_pub, out_seq):
    """Emit every pending (grid-sampled) state in record order; returns the output count.
    The outputs must have room for ``smp_meta[SM_NPEND]`` more states."""
    n = smp_meta[SM_NPEND]
    # insertion sort of the pending books by their state's record index (few books)
    for x in range(1, n):
        v = smp_list[x]
        y = x - 1
        while y >= 0 and smp_pend[smp_list[y], SP_IDX] > smp_pend[v, SP_IDX]:
            smp_list[y + 1] = smp_list[y]
            y -= 1
        smp_list[y + 1] = v
    for x in range(n):
        b = smp_list[x]
        n_out = _emit(smp_pend[b], b, smp_last, changes_only, nlev, out_idx, OBP, OBS, OBC,
                      OAP, OAS, OAC, out_cross, rs, ks, n_out, out_tsr, out_tse, out_iid,
                      out_pub, out_seq)
        smp_pend[b, SP_IDX] = -1
    smp_meta[SM_NPEND] = 0
    return n_out


@njit(**_JIT)
def _publish_sampled(smp_pend, smp_last, smp_list, smp_meta, b, cur, every, changes_only,
                     nlev, out_idx, OBP, OBS, OBC, OAP, OAS, OAC, out_cross, rs, ks, n_out,
                     out_tsr, out_tse, out_iid, out_pub, out_seq):
    """Sample the state ``cur`` of book ``b``.

    ``every > 0``: bins are ``[k * every, (k + 1) * every)`` of ts_recv (ns). Each book's
    latest state in the current bin waits in its pending row; when a record's ts_recv
    reaches the next bin, all pending states are emitted in record order (the last state of
    each book in each bin). If ts_recv goes back to an earlier bin, a book's pending state
    from another bin is emitted before the new one is kept.
    ``changes_only``: a state is emitted only when it differs from the book's last emitted
    state (top ``nlev`` prices, sizes, counts and cross state).
    """
    if every <= 0:
        return _emit(cur, b, smp_last, changes_only, nlev, out_idx, OBP, OBS, OBC, OAP, OAS,
                     OAC, out_cross, rs, ks, n_out, out_tsr, out_tse, out_iid, out_pub,
                     out_seq)
    ts = cur[SP_TSR]
    if smp_meta[SM_SET] == 0 or ts >= smp_meta[SM_BIN1] or ts < smp_meta[SM_BIN0]:
        if smp_meta[SM_SET] != 0 and ts >= smp_meta[SM_BIN1]:
            n_out = flush_pending(smp_pend, smp_last, smp_list, smp_meta, changes_only, nlev,
                                  out_idx, OBP, OBS, OBC, OAP, OAS, OAC, out_cross, rs, ks,
                                  n_out, out_tsr, out_tse, out_iid, out_pub, out_seq)
        g = ts // every
        if ts < 0 and g * every != ts:
            g -= 1
        smp_meta[SM_BIN0] = g * every
        smp_meta[SM_BIN1] = g * every + every
        smp_meta[SM_SET] = 1
    cur[SP_BIN] = smp_meta[SM_BIN0]
    w = SP_HEAD + 6 * nlev
    if smp_pend[b, SP_IDX] >= 0:
        if smp_pend[b, SP_BIN] != cur[SP_BIN]:
            n_out = _emit(smp_pend[b], b, smp_last, changes_only, nlev, out_idx, OBP, OBS,
                          OBC, OAP, OAS, OAC, out_cross, rs, ks, n_out, out_tsr, out_tse,
                          out_iid, out_pub, out_seq)
    else:
        smp_list[smp_meta[SM_NPEND]] = b
        smp_meta[SM_NPEND] += 1
    for c in range(w):
        smp_pend[b, c] = cur[c]
    return n_out


@njit(**_JIT)
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


@njit(**_JIT)
def _book_create(meta, bk_hash, bk_info, seg, key):
    k0 = meta[M_SEED0]
    k1 = meta[M_SEED1]
    b = meta[M_NBOOKS]
    meta[M_NBOOKS] = b + 1
    book_put(bk_hash, key, b, k0, k1)
    bk_info[b, 0] = (key - 1) >> 16
    bk_info[b, 1] = (key - 1) & 0xFFFF
    for side in range(2):
        s = 2 * b + side
        seg[s, S_START] = meta[M_SEG_USED]
        seg[s, S_LEN] = 0
        seg[s, S_CAP] = SEG_INIT_CAP
        meta[M_SEG_USED] += SEG_INIT_CAP
    return b


# what a record does to an order once decided
_OP_NONE = 0
_OP_REMOVE = 1  # remove order o
_OP_ADD = 2  # add a new order
_OP_MOVE = 3  # order o goes to the back of (s, price) with size sz and time ts


@njit(**_JIT)
def apply_records(meta, counters, bk_hash, bk_info, seg, pool, lvl, lvl_free, ords, ord_free,
                  oh, recs, start, stop, nlev, out_idx, out_bpx, out_bsz, out_bct, out_apx,
                  out_asz, out_act, out_cross, n_out, trade_idx, n_trades, base_index,
                  log_key, level_log, n_log, rs, ks, out_tsr, out_tse, out_iid, out_pub,
                  out_seq, every, changes_only, smp_pend, smp_last, smp_list, smp_meta,
                  smp_cur, sel, sel_out, sel_tr):
    """Apply ``recs[start:stop]`` (``MBO_KERNEL_DTYPE``) to the state arrays.

    At every record with F_LAST, row ``n_out`` of the outputs gets the record's index
    (``base_index + i``), the top ``nlev`` levels of the record's book (prices int64
    fixed-point, ``UNDEF`` when empty; sizes in lots; order counts) and its cross state.
    Trade records' indices go to ``trade_idx`` (pass a 0-length array to skip).

    Output layout: state ``n`` level ``k`` is element ``n * rs + k * ks`` of the flat
    level outputs (``rs = nlev, ks = 1``: row-major; ``rs = 1, ks = capacity``: one
    contiguous column per level). Prices are written as int64 fixed-point or, into float64
    outputs, as float (NaN when empty); sizes and counts in the outputs' integer types (the
    caller picks types that hold them exactly). With non-empty ``out_tsr``, the record's
    ``ts_recv``, ``ts_event``, ``instrument_id``, ``publisher_id`` and ``sequence`` go to
    ``out_tsr/out_tse/out_iid/out_pub/out_seq``.

    Sampling (``every > 0`` ns and/or ``changes_only``): see :func:`_publish_sampled`; the
    ``smp_*`` arrays are the sampler's state (``smp_pend/smp_last (books, 8 + 6 nlev)``,
    ``smp_list (books,)``, ``smp_meta (4,)``, ``smp_cur (8 + 6 nlev,)``). Room for the
    states a record can emit is checked before the record (``NEED_OUT``).

    Selection (threads over independent books, see :func:`select_part`): with a
    non-empty ``sel``, ``recs`` holds the records of some books gathered from a larger
    stream, ``sel[i]`` is record ``i``'s index in that stream (offset by ``base_index``),
    and its state goes to output row ``sel_out[i]`` and its trade index to ``sel_tr[i]``
    (their rows in the whole record-ordered result), so threads sharing the outputs fill
    disjoint rows. Not with sampling or the log; the returned ``n_out``/``n_trades`` are
    then meaningless (the caller has the totals from :func:`select_part`).

    Level-change log: for the book with ``log_key = (instrument_id << 16 | publisher_id)
    + 1`` (0: no log), every change of an aggregated level's size is written from row
    ``n_log`` of ``level_log (k, 4)``: ``[base_index + i, side 0 bid / 1 ask, price,
    new level size (0 = removed)]``. Room for a record's rows is checked before the record
    changes anything (``NEED_LOG``).

    Returns ``(next_record, status, n_out, n_trades, n_log)``: status ``OK`` when every
    record was applied; otherwise what must grow before calling again from
    ``next_record``.
    """
    LG = level_log.reshape(level_log.size)
    log_cap = level_log.shape[0]
    want_fields = out_tsr.shape[0] > 0
    sampled = every > 0 or changes_only
    out_cap = out_idx.shape[0]
    # flat views (the row widths are the layout's constants)
    BH = bk_hash.reshape(bk_hash.size)
    SG = seg.reshape(seg.size)
    P = pool.reshape(pool.size)
    LV = lvl.reshape(lvl.size)
    OR = ords.reshape(ords.size)
    OH = oh.reshape(oh.size)
    OBP = out_bpx.reshape(out_bpx.size)
    OBS = out_bsz.reshape(out_bsz.size)
    OBC = out_bct.reshape(out_bct.size)
    OAP = out_apx.reshape(out_apx.size)
    OAS = out_asz.reshape(out_asz.size)
    OAC = out_act.reshape(out_act.size)
    ohmask = oh.shape[0] - 1
    hash_limit = oh.shape[0] >> 1
    k0 = meta[M_SEED0]
    k1 = meta[M_SEED1]
    bkmask = bk_hash.shape[0] - 1
    want_trades = trade_idx.shape[0] > 0
    nofree = meta[M_ORD_FREE]
    nlfree = meta[M_LVL_FREE]
    live = meta[M_LIVE]
    status = OK
    next_rec = stop
    # look-ahead pipeline: book and order-hash home row of records i+1..i+4, found (and
    # the hash row prefetched) four records ahead
    last = max(stop - 1, 0)
    use_sel = sel.shape[0] > 0
    b1, h1 = np.int64(-1), np.int64(0)
    b2, h2 = np.int64(-1), np.int64(0)
    b3, h3 = np.int64(-1), np.int64(0)
    b4, h4 = np.int64(-1), np.int64(0)
    if stop > start:
        b1, h1 = _peek_call(recs, start, BH, bkmask, OH, ohmask, k0, k1)
        b2, h2 = _peek_call(recs, min(start + 1, last), BH, bkmask, OH, ohmask, k0, k1)
        b3, h3 = _peek_call(recs, min(start + 2, last), BH, bkmask, OH, ohmask, k0, k1)
        b4, h4 = _peek_call(recs, min(start + 3, last), BH, bkmask, OH, ohmask, k0, k1)
    for i in range(start, stop):
        r = recs[np.uint64(i)]
        act = r.action
        flags = r.flags
        key = _book_key(r)
        b = b1
        hhome = h1
        b1, h1 = b2, h2
        b2, h2 = b3, h3
        b3, h3 = b4, h4
        b4, h4 = _peek(recs, min(i + 4, last), BH, bkmask, OH, ohmask, k0, k1)
        # the order row of record i+1 (if its home hash row holds it) into cache
        t1 = OH[np.uint64(2 * h1 + 1)]
        _prefetch(OR, np.uint64((t1 & SLOT_MASK) * N_OCOLS if t1 >= 0 else 0))
        if b < 0:
            # ---- the record's book (-1: not created yet)
            b = _book_probe(BH, key, bkmask, k0, k1)
            hhome = _ohash(np.int64(r.order_id), b, ohmask, k0, k1)
        if sampled and (flags & F_LAST) != 0:
            # room for the states this record can emit; its book must exist to be sampled
            if n_out + smp_meta[0] + 1 > out_cap:
                status = NEED_OUT
                next_rec = i
                break
            if b < 0:
                if meta[M_NBOOKS] >= bk_info.shape[0]:
                    status = NEED_BOOKS
                    next_rec = i
                    break
                if meta[M_SEG_USED] + 2 * SEG_INIT_CAP > pool.shape[0]:
                    meta[M_SEG_FULL] = -1
                    status = NEED_SEGMENT
                    next_rec = i
                    break
                b = _book_create(meta, bk_hash, bk_info, seg, key)
                hhome = _ohash(np.int64(r.order_id), b, ohmask, k0, k1)
        if act == ACTION_TRADE or act == ACTION_FILL or act == ACTION_NONE:
            if act == ACTION_TRADE and want_trades:
                if use_sel:
                    n_trades = sel_tr[np.uint64(i)]
                    trade_idx[np.uint64(n_trades)] = base_index + sel[np.uint64(i)]
                else:
                    trade_idx[np.uint64(n_trades)] = base_index + i
                n_trades += 1
        elif act == ACTION_ADD or act == ACTION_CANCEL or act == ACTION_MODIFY or \
                act == ACTION_CLEAR:
            side = r.side
            has_side = side == SIDE_BID or side == SIDE_ASK
            if b < 0:
                if meta[M_NBOOKS] >= bk_info.shape[0]:
                    status = NEED_BOOKS
                    next_rec = i
                    break
                if meta[M_SEG_USED] + 2 * SEG_INIT_CAP > pool.shape[0]:
                    meta[M_SEG_FULL] = -1
                    status = NEED_SEGMENT
                    next_rec = i
                    break
                b = _book_create(meta, bk_hash, bk_info, seg, key)
                hhome = _ohash(np.int64(r.order_id), b, ohmask, k0, k1)
            s = 2 * b + (1 if side == SIDE_ASK else 0)
            if (act == ACTION_ADD or act == ACTION_MODIFY) and has_side:
                # room for one more order and level, checked before any change
                if nofree < 1 or live + 1 > hash_limit:
                    status = NEED_ORDERS
                    next_rec = i
                    break
                if nlfree < 1:
                    status = NEED_LEVELS
                    next_rec = i
                    break
                if SG[np.uint64(3 * s + S_LEN)] >= SG[np.uint64(3 * s + S_CAP)]:
                    meta[M_SEG_FULL] = s
                    status = NEED_SEGMENT
                    next_rec = i
                    break
            lg = key == log_key
            if lg:
                # rows this record can log: 2 (old and new level), a side (TOB) or both
                # sides (clear) of the book
                need = 2
                if act == ACTION_CLEAR:
                    need = SG[np.uint64(6 * b + S_LEN)] + SG[np.uint64(6 * b + 3 + S_LEN)]
                elif act == ACTION_ADD and (flags & F_TOB) != 0:
                    need = SG[np.uint64(3 * s + S_LEN)] + 1
                if n_log + need > log_cap:
                    status = NEED_LOG
                    next_rec = i
                    break
            ri = base_index + i
            price = r.price
            sz = np.int64(r.size)
            oid = np.int64(r.order_id)
            is_tob = act == ACTION_ADD and (flags & F_TOB) != 0
            # ---- find the order when the action needs it; hp: its hash row, or the
            # empty row where it would go
            o = np.int64(-1)
            hp = np.int64(-1)
            if act == ACTION_CANCEL or (has_side and not is_tob and price != UNDEF and
                                        (act == ACTION_MODIFY or sz > 0)):
                hp = hhome
                while True:
                    t = OH[np.uint64(2 * hp + 1)]
                    if t < 0:
                        break
                    if OH[np.uint64(2 * hp)] == oid and (t >> TAG_SHIFT) == b:
                        o = t & SLOT_MASK
                        break
                    hp = (hp + 1) & ohmask
            ob = o * N_OCOLS
            # ---- decide
            op = _OP_NONE
            ts = np.int64(0)
            if act == ACTION_CANCEL:
                if o < 0:
                    counters[C_UNKNOWN_CANCEL] += 1
                else:
                    cur = OR[np.uint64(ob + O_SZ)]
                    if sz >= cur:
                        if sz > cur:
                            counters[C_OVER_CANCEL] += 1
                        op = _OP_REMOVE
                    else:
                        OR[np.uint64(ob + O_SZ)] = cur - sz
                        lb = OR[np.uint64(ob + O_LVL)] * N_LCOLS
                        LV[np.uint64(lb + L_SZ)] -= sz
                        if lg and sz != 0:
                            n_log = _log_row(LG, n_log, ri, OR[np.uint64(ob + O_SEG)] & 1,
                                             LV[np.uint64(lb + L_PX)], LV[np.uint64(lb + L_SZ)])
            elif act == ACTION_CLEAR:
                meta[M_ORD_FREE] = nofree
                meta[M_LVL_FREE] = nlfree
                meta[M_LIVE] = live
                if lg:
                    n_log = _log_clear(LG, n_log, ri, SG, P, LV, 2 * b)
                    n_log = _log_clear(LG, n_log, ri, SG, P, LV, 2 * b + 1)
                _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, 2 * b)
                _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, 2 * b + 1)
                nofree = meta[M_ORD_FREE]
                nlfree = meta[M_LVL_FREE]
                live = meta[M_LIVE]
            elif not has_side:
                counters[C_SIDE_NONE] += 1
            elif is_tob:
                # replace the side by one order-less level
                st = SG[np.uint64(3 * s + S_START)]
                n = SG[np.uint64(3 * s + S_LEN)]
                orders = False
                new_lvl = price != UNDEF and sz > 0
                old_sz = np.int64(0)  # old size at the new price
                for p in range(n):
                    lb = P[np.uint64(2 * (st + p) + 1)] * N_LCOLS
                    if LV[np.uint64(lb + L_HEAD)] >= 0:
                        orders = True
                    if lg:
                        if new_lvl and LV[np.uint64(lb + L_PX)] == price:
                            old_sz = LV[np.uint64(lb + L_SZ)]
                        else:
                            n_log = _log_row(LG, n_log, ri, s & 1, LV[np.uint64(lb + L_PX)], 0)
                if lg and new_lvl and old_sz != sz:
                    n_log = _log_row(LG, n_log, ri, s & 1, price, sz)
                if orders:
                    meta[M_ORD_FREE] = nofree
                    meta[M_LVL_FREE] = nlfree
                    meta[M_LIVE] = live
                    _clear_segment(meta, seg, pool, lvl, lvl_free, ords, ord_free, oh, s)
                    nofree = meta[M_ORD_FREE]
                    nlfree = meta[M_LVL_FREE]
                    live = meta[M_LIVE]
                    n = 0
                if price != UNDEF and sz > 0:
                    if n == 1:
                        lv = P[np.uint64(2 * st + 1)]
                    else:
                        for p in range(n):
                            lvl_free[np.uint64(nlfree)] = P[np.uint64(2 * (st + p) + 1)]
                            nlfree += 1
                        nlfree -= 1
                        lv = lvl_free[np.uint64(nlfree)]
                        LV[np.uint64(lv * N_LCOLS + L_CT)] = 0
                        LV[np.uint64(lv * N_LCOLS + L_HEAD)] = -1
                        LV[np.uint64(lv * N_LCOLS + L_TAIL)] = -1
                    LV[np.uint64(lv * N_LCOLS + L_PX)] = price
                    LV[np.uint64(lv * N_LCOLS + L_SZ)] = sz
                    P[np.uint64(2 * st)] = _side_key(s & 1, price)
                    P[np.uint64(2 * st + 1)] = lv
                    SG[np.uint64(3 * s + S_LEN)] = 1
                else:
                    for p in range(n):
                        lvl_free[np.uint64(nlfree)] = P[np.uint64(2 * (st + p) + 1)]
                        nlfree += 1
                    SG[np.uint64(3 * s + S_LEN)] = 0
            elif price == UNDEF:
                counters[C_UNDEF_PRICE] += 1
            elif act == ACTION_ADD:
                if sz == 0:
                    counters[C_ZERO_SIZE] += 1
                elif o >= 0:
                    counters[C_DUPLICATE_ADD] += 1
                    op = _OP_MOVE
                    ts = np.int64(r.ts_recv)
                else:
                    op = _OP_ADD
                    ts = np.int64(r.ts_recv)
            else:  # modify
                if o < 0:
                    counters[C_UNKNOWN_MODIFY] += 1
                    if sz > 0:
                        op = _OP_ADD
                        ts = np.int64(r.ts_recv)
                elif sz == 0:
                    op = _OP_REMOVE
                elif OR[np.uint64(ob + O_PX)] != price or OR[np.uint64(ob + O_SEG)] != s or \
                        sz > OR[np.uint64(ob + O_SZ)]:
                    # price or side change, or size increase: back of the queue
                    op = _OP_MOVE
                    ts = OR[np.uint64(ob + O_TS)]
                else:
                    lb = OR[np.uint64(ob + O_LVL)] * N_LCOLS
                    d = sz - OR[np.uint64(ob + O_SZ)]
                    LV[np.uint64(lb + L_SZ)] += d
                    OR[np.uint64(ob + O_SZ)] = sz
                    if lg and d != 0:
                        n_log = _log_row(LG, n_log, ri, s & 1, price, LV[np.uint64(lb + L_SZ)])
            # ---- carry it out
            if op == _OP_MOVE and OR[np.uint64(ob + O_PX)] == price and \
                    OR[np.uint64(ob + O_SEG)] == s:
                # same level: to the back of its queue with the new size
                lv = OR[np.uint64(ob + O_LVL)]
                lb = lv * N_LCOLS
                d = sz - OR[np.uint64(ob + O_SZ)]
                LV[np.uint64(lb + L_SZ)] += d
                if lg and d != 0:
                    n_log = _log_row(LG, n_log, ri, s & 1, price, LV[np.uint64(lb + L_SZ)])
                nxt = OR[np.uint64(ob + O_NEXT)]
                if nxt >= 0:
                    prv = OR[np.uint64(ob + O_PREV)]
                    if prv >= 0:
                        OR[np.uint64(prv * N_OCOLS + O_NEXT)] = nxt
                    else:
                        LV[np.uint64(lb + L_HEAD)] = nxt
                    OR[np.uint64(nxt * N_OCOLS + O_PREV)] = prv
                    tail = LV[np.uint64(lb + L_TAIL)]
                    OR[np.uint64(tail * N_OCOLS + O_NEXT)] = o
                    OR[np.uint64(ob + O_PREV)] = tail
                    OR[np.uint64(ob + O_NEXT)] = -1
                    LV[np.uint64(lb + L_TAIL)] = o
                OR[np.uint64(ob + O_SZ)] = sz
                OR[np.uint64(ob + O_TS)] = ts
            elif op != _OP_NONE:
                if op != _OP_ADD:
                    # out of its level (remove, or move to another level)
                    lb = OR[np.uint64(ob + O_LVL)] * N_LCOLS
                    side_old = OR[np.uint64(ob + O_SEG)] & 1
                    nlfree = _unlink_f(SG, P, LV, lvl_free, OR, nlfree, o)
                    if lg:
                        # a removed level keeps its price and size 0 in its (free) row
                        n_log = _log_row(LG, n_log, ri, side_old, LV[np.uint64(lb + L_PX)],
                                         LV[np.uint64(lb + L_SZ)])
                if op == _OP_REMOVE:
                    _oh_del_f(OH, hp, ohmask, k0, k1)
                    live -= 1
                    ord_free[np.uint64(nofree)] = o
                    nofree += 1
                else:
                    # into the back of its (new) level
                    lv, nlfree = _level_at_f(SG, P, LV, lvl_free, nlfree, s, price)
                    if op == _OP_ADD:
                        nofree -= 1
                        o = ord_free[np.uint64(nofree)]
                        ob = o * N_OCOLS
                        OR[np.uint64(ob + O_ID)] = oid
                        OH[np.uint64(2 * hp)] = oid
                        OH[np.uint64(2 * hp + 1)] = (b << TAG_SHIFT) | o
                        live += 1
                    OR[np.uint64(ob + O_SEG)] = s
                    OR[np.uint64(ob + O_PX)] = price
                    OR[np.uint64(ob + O_SZ)] = sz
                    OR[np.uint64(ob + O_TS)] = ts
                    _append_f(LV, OR, lv, o, sz)
                    if lg:
                        n_log = _log_row(LG, n_log, ri, s & 1, price,
                                         LV[np.uint64(lv * N_LCOLS + L_SZ)])
        else:
            counters[C_BAD_ACTION] += 1
        if flags & F_LAST:
            if sampled:
                # ---- sampling: the state goes to the book's pending row (grid) or is
                # compared with the book's last kept state (changes only)
                cur = smp_cur
                cur[0] = base_index + i
                cur[1] = np.int64(r.ts_recv)
                cur[2] = np.int64(r.ts_event)
                cur[3] = np.int64(r.instrument_id)
                cur[4] = np.int64(r.publisher_id)
                cur[5] = np.int64(r.sequence)
                state_row(SG, P, LV, b, nlev, cur)
                n_out = _publish_sampled(smp_pend, smp_last, smp_list, smp_meta, b, cur,
                                         every, changes_only, nlev, out_idx, OBP, OBS, OBC,
                                         OAP, OAS, OAC, out_cross, rs, ks, n_out, out_tsr,
                                         out_tse, out_iid, out_pub, out_seq)
                continue
            # ---- publish the record's book: top nlev levels and cross state
            if use_sel:
                n_out = sel_out[np.uint64(i)]
                out_idx[np.uint64(n_out)] = base_index + sel[np.uint64(i)]
            else:
                out_idx[np.uint64(n_out)] = base_index + i
            if want_fields:
                out_tsr[np.uint64(n_out)] = np.int64(r.ts_recv)
                out_tse[np.uint64(n_out)] = np.int64(r.ts_event)
                out_iid[np.uint64(n_out)] = r.instrument_id
                out_pub[np.uint64(n_out)] = r.publisher_id
                out_seq[np.uint64(n_out)] = r.sequence
            nb = 0
            na = 0
            top_b = 0
            top_a = 0
            if b >= 0:
                sb = 6 * b
                nb = SG[np.uint64(sb + S_LEN)]
                top_b = SG[np.uint64(sb + S_START)] + nb - 1
                na = SG[np.uint64(sb + 3 + S_LEN)]
                top_a = SG[np.uint64(sb + 3 + S_START)] + na - 1
            row = n_out * rs
            bp = UNDEF
            ap = UNDEF
            if nb > 0:
                lb = P[np.uint64(2 * top_b + 1)] * N_LCOLS
                bp = LV[np.uint64(lb + L_PX)]
                if nlev > 0:
                    OBP[np.uint64(row)] = _px_out(OBP, bp)
                    OBS[np.uint64(row)] = LV[np.uint64(lb + L_SZ)]
                    OBC[np.uint64(row)] = LV[np.uint64(lb + L_CT)]
            elif nlev > 0:
                OBP[np.uint64(row)] = _px_out(OBP, UNDEF)
                OBS[np.uint64(row)] = 0
                OBC[np.uint64(row)] = 0
            if na > 0:
                lb = P[np.uint64(2 * top_a + 1)] * N_LCOLS
                ap = LV[np.uint64(lb + L_PX)]
                if nlev > 0:
                    OAP[np.uint64(row)] = _px_out(OAP, ap)
                    OAS[np.uint64(row)] = LV[np.uint64(lb + L_SZ)]
                    OAC[np.uint64(row)] = LV[np.uint64(lb + L_CT)]
            elif nlev > 0:
                OAP[np.uint64(row)] = _px_out(OAP, UNDEF)
                OAS[np.uint64(row)] = 0
                OAC[np.uint64(row)] = 0
            for k in range(1, nlev):
                q = np.uint64(row + k * ks)
                if k < nb:
                    lb = P[np.uint64(2 * (top_b - k) + 1)] * N_LCOLS
                    OBP[q] = _px_out(OBP, LV[np.uint64(lb + L_PX)])
                    OBS[q] = LV[np.uint64(lb + L_SZ)]
                    OBC[q] = LV[np.uint64(lb + L_CT)]
                else:
                    OBP[q] = _px_out(OBP, UNDEF)
                    OBS[q] = 0
                    OBC[q] = 0
                if k < na:
                    lb = P[np.uint64(2 * (top_a - k) + 1)] * N_LCOLS
                    OAP[q] = _px_out(OAP, LV[np.uint64(lb + L_PX)])
                    OAS[q] = LV[np.uint64(lb + L_SZ)]
                    OAC[q] = LV[np.uint64(lb + L_CT)]
                else:
                    OAP[q] = _px_out(OAP, UNDEF)
                    OAS[q] = 0
                    OAC[q] = 0
            cross = 0
            if nb > 0 and na > 0:
                if bp > ap:
                    cross = 2
                elif bp == ap:
                    cross = 1
            out_cross[np.uint64(n_out)] = cross
            n_out += 1
    meta[M_ORD_FREE] = nofree
    meta[M_LVL_FREE] = nlfree
    meta[M_LIVE] = live
    return next_rec, status, n_out, n_trades, n_log


@njit(**_JIT)
def count_outputs(recs):
    """``(records with F_LAST, Trade records)`` of ``recs`` (``MBO_KERNEL_DTYPE``) in one
    pass: the output sizes :func:`apply_records` needs."""
    n_last = 0
    n_trades = 0
    for i in range(recs.shape[0]):
        r = recs[np.uint64(i)]
        n_last += np.int64((r.flags & F_LAST) != 0)
        n_trades += np.int64(r.action == ACTION_TRADE)
    return n_last, n_trades


@njit(**_JIT)
def select_part(recs, words, nparts, part, pmul, n_out, n_trades, sel, sel_out, sel_tr,
                out_words):
    """Gather the records of ``recs`` whose book is in part ``part`` of ``nparts``
    (:func:`part_of`) for :func:`apply_records`'s selection: the records (as 7 int64 words
    each: ``words`` is ``recs`` viewed so) into ``out_words``, their indices into ``sel``,
    each one's output row (``n_out`` + F_LAST records before it) into ``sel_out`` and trade
    row into ``sel_tr`` (all of at least ``len(recs)`` rows). Branch-free (every record is
    written, then kept or overwritten): books interleave at random, so a test per record
    would be a mispredicted branch; and the kernel then walks contiguous records. Returns
    ``(selected, n_out, n_trades)`` after the whole of ``recs``."""
    m = 0
    for i in range(recs.shape[0]):
        r = recs[np.uint64(i)]
        key = _book_key(r)
        for w in range(7):
            out_words[np.uint64(m), np.uint64(w)] = words[np.uint64(i), np.uint64(w)]
        sel[np.uint64(m)] = i
        sel_out[np.uint64(m)] = n_out
        sel_tr[np.uint64(m)] = n_trades
        m += np.int64(part_of(key, nparts, pmul) == part)
        n_out += np.int64((r.flags & F_LAST) != 0)
        n_trades += np.int64(r.action == ACTION_TRADE)
    return m, n_out, n_trades


@njit(**_JIT)
def part_sizes(recs, step, nparts, pmul, out):
    """Records per part of every ``step``-th record into ``out (nparts,)`` (zeroed first):
    the balance of a book partition."""
    out[:] = 0
    for i in range(0, recs.shape[0], step):
        r = recs[np.uint64(i)]
        key = _book_key(r)
        out[part_of(key, nparts, pmul)] += 1
    return out


@njit(**_JIT)
def symbol_codes(iid, keys, key_codes, out):
    """``out[i] = key_codes[j]`` where ``keys[j] == iid[i]`` (``keys`` sorted), else
    ``key_codes[-1]``: instrument ids to category codes in one pass (the last hit is
    remembered, ids repeat)."""
    nk = keys.shape[0]
    last_id = np.int64(-1)
    last_code = key_codes[nk]
    for i in range(iid.shape[0]):
        v = np.int64(iid[i])
        if v != last_id:
            lo = 0
            hi = nk
            while lo < hi:
                mid = (lo + hi) >> 1
                if keys[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            last_code = key_codes[lo] if lo < nk and keys[lo] == v else key_codes[nk]
            last_id = v
        out[i] = last_code


@njit(**_JIT)
def scan_counts(recs):
    """``(records with F_LAST, Trade records, sum of Add/Modify sizes)`` of ``recs`` in one
    pass. The size sum bounds every level size a fresh book can reach from these records
    (a level holds live orders, each sized by one Add or Modify)."""
    n_last = 0
    n_trades = 0
    total = np.int64(0)
    for i in range(recs.shape[0]):
        r = recs[np.uint64(i)]
        n_last += np.int64((r.flags & F_LAST) != 0)
        a = r.action
        n_trades += np.int64(a == ACTION_TRADE)
        if a == ACTION_ADD or a == ACTION_MODIFY:
            total += np.int64(r.size)
    return n_last, n_trades, total


@njit(**_JIT)
def total_level_size(meta, seg, pool, lvl):
    """Sum of the sizes of every level of every book (lots)."""
    total = np.int64(0)
    for s in range(2 * meta[M_NBOOKS]):
        st = seg[s, S_START]
        for p in range(seg[s, S_LEN]):
            total += lvl[pool[st + p, 1], L_SZ]
    return total


# --------------------------------------------------------------------------- queries


@njit(**_JIT)
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


@njit(**_JIT)
def probe_stats(meta, oh):
    """``(max, total)`` displacement of the order-hash entries from their home rows:
    the extra probes a look-up of each costs."""
    k0 = meta[M_SEED0]
    k1 = meta[M_SEED1]
    mask = oh.shape[0] - 1
    worst = 0
    total = 0
    for i in range(oh.shape[0]):
        t = oh[i, 1]
        if t >= 0:
            d = (i - _ohash(oh[i, 0], t >> TAG_SHIFT, mask, k0, k1)) & mask
            worst = max(worst, d)
            total += d
    return worst, total


@njit(**_JIT)
def check_invariants(meta, seg, pool, lvl, ords, oh):
    """0 when the state is consistent, else the code of the first violation found.

    1 a level's size is not positive or below the sum of its orders; 2 a level's count is
    not its number of orders; 3 segment keys not strictly ascending; 4 an order has a bad
    size, level or hash entry; 5 the live-order count disagrees with the levels or the
    order hash.
    """
    k0 = meta[M_SEED0]
    k1 = meta[M_SEED1]
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
            prv = np.int64(-1)
            while o >= 0:
                if ords[o, O_SZ] <= 0 or ords[o, O_LVL] != lv or ords[o, O_SEG] != s or \
                        ords[o, O_PREV] != prv:
                    return 4
                if order_find(oh, ords, ords[o, O_ID], s >> 1, k0, k1) != o:
                    return 4
                total += ords[o, O_SZ]
                cnt += 1
                prv = o
                o = ords[o, O_NEXT]
            if lvl[lv, L_TAIL] != prv:
                return 4
            if cnt != lvl[lv, L_CT]:
                return 2
            if lvl[lv, L_SZ] < total or lvl[lv, L_SZ] <= 0:
                return 1
            live += cnt
    if live != meta[M_LIVE]:
        return 5
    used = 0
    for i in range(oh.shape[0]):
        if oh[i, 1] >= 0:
            used += 1
    if used != live:
        return 5
    return 0
