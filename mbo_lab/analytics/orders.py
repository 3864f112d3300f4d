"""Order-level statistics: lifetimes, cancel-to-trade ratios and an order's queue position.

One Numba pass follows every order id of every book (records sorted by book, order id and
position, so each order's records are contiguous: no hash table). Rules:

* an order is **born** by an Add, or by a Modify of an unknown id (the book treats it as an
  add); only Adds without F_SNAPSHOT give a known birth time: snapshot re-adds and
  unknown-id modifies are orders placed before the data starts;
* it **ends** when a Cancel or a Modify to size 0 removes it: reason ``filled`` when a
  Fill (``F``) of the same order with the same ``ts_event`` precedes it (CME and Nasdaq
  send fills as F then C/M), else ``cancelled``; ``replaced`` when an Add reuses its live
  id; ``cleared`` at a Clear (``R``) of its book -- except a snapshot Clear after which the
  snapshot re-adds the same id (the order goes on);
* C and M records right after a same-``ts_event`` fill of the same id are fill
  bookkeeping, not cancels or modifies, and are counted apart (``fill_removals``).

Times are ``ts_recv``. Records with F_SNAPSHOT are left out of every count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from ..book.build import Source, as_data
from ..book.engine import make_engine
from ..io.records import (
    ACTION_ADD,
    ACTION_CANCEL,
    ACTION_CLEAR,
    ACTION_FILL,
    ACTION_MODIFY,
    ACTION_TRADE,
    F_LAST,
    F_MBP,
    F_SNAPSHOT,
    F_TOB,
    SIDE_ASK,
    byte_chars,
    ns_to_datetime,
    px_to_float,
)
from ._base import AnalyticsError, _book_key, _book_mask, _buckets

__all__ = ["order_lifetimes", "cancel_to_trade", "queue_history", "END_REASONS"]

#: End reasons (``end_reason`` column), by code.
END_REASONS = ("alive", "cancelled", "filled", "replaced", "cleared")
_ALIVE, _CANCELLED, _FILLED, _REPLACED, _CLEARED = range(5)

# per-record classification of C/M records
K_OTHER, K_CANCEL, K_FILL_REMOVAL, K_MODIFY = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def _first_r_after(r_idx, lo, hi, after):
    """First position p in r_idx[lo:hi] (sorted) with r_idx[p] > after; hi when none."""
    a, b = lo, hi
    while a < b:
        m = (a + b) >> 1
        if r_idx[m] <= after:
            a = m + 1
        else:
            b = m
    return a


@njit(cache=True, nogil=True)
def _order_pass(ev, action, flags, size, ts_event, gkey, r_idx, r_flags, r_lo, r_hi,
                kind, cancel_qty, o_birth, o_end, o_reason, o_known, o_filled, o_mods):
    """Walk events ``ev`` (record indices sorted by book, order id, index).

    ``gkey[j]`` is a group id (book, order id) per event; ``r_lo/r_hi[j]`` the range of the
    book's Clear records in ``r_idx``. Fills ``kind``/``cancel_qty`` per record and one row
    per order life in ``o_*``; returns the number of rows.
    """
    n_out = 0
    n = len(ev)
    j0 = 0
    while j0 < n:
        j1 = j0
        while j1 < n and gkey[j1] == gkey[j0]:
            j1 += 1
        lo = r_lo[j0]
        hi = r_hi[j0]
        alive = False
        cur = np.int64(0)
        row = -1
        last_idx = np.int64(-1)
        fill_ts = np.uint64(0)
        has_fill = False
        for e in range(j0, j1):
            i = ev[e]
            a = action[i]
            snap = (flags[i] & 0x20) != 0
            if alive:
                p = _first_r_after(r_idx, lo, hi, last_idx)
                if p < hi and r_idx[p] < i:
                    cont = (a == 65 and snap and (r_flags[p] & 0x20) != 0
                            and (p + 1 >= hi or r_idx[p + 1] > i))
                    if cont:
                        cur = np.int64(size[i])
                        last_idx = i
                        continue
                    o_end[row] = r_idx[p]
                    o_reason[row] = 4  # cleared
                    alive = False
            same_fill = has_fill and ts_event[i] == fill_ts
            if a == 65:  # A
                if alive and snap:
                    cur = np.int64(size[i])
                    last_idx = i
                    continue
                if alive:
                    o_end[row] = i
                    o_reason[row] = 3  # replaced
                row = n_out
                n_out += 1
                o_birth[row] = i
                o_end[row] = -1
                o_reason[row] = 0
                o_known[row] = not snap
                o_filled[row] = 0
                o_mods[row] = 0
                alive = True
                cur = np.int64(size[i])
                has_fill = False
            elif a == 67:  # C
                kind[i] = 2 if same_fill else 1
                if alive:
                    q = np.int64(size[i])
                    cancel_qty[i] = min(q, cur)
                    cur -= q
                    if cur <= 0:
                        o_end[row] = i
                        o_reason[row] = 2 if same_fill else 1
                        alive = False
                else:
                    cancel_qty[i] = np.int64(size[i])
            elif a == 77:  # M
                kind[i] = 2 if same_fill else 3
                if alive:
                    if size[i] == 0:
                        kind[i] = 2 if same_fill else 1
                        cancel_qty[i] = cur
                        o_end[row] = i
                        o_reason[row] = 2 if same_fill else 1
                        alive = False
                    else:
                        if not same_fill:
                            o_mods[row] += 1
                        cur = np.int64(size[i])
                elif size[i] > 0:  # unknown id: the book adds it, birth unknown
                    row = n_out
                    n_out += 1
                    o_birth[row] = i
                    o_end[row] = -1
                    o_reason[row] = 0
                    o_known[row] = False
                    o_filled[row] = 0
                    o_mods[row] = 0
                    alive = True
                    cur = np.int64(size[i])
                else:
                    kind[i] = 2 if same_fill else 1
            elif a == 70:  # F
                has_fill = True
                fill_ts = ts_event[i]
                if alive:
                    o_filled[row] += np.int64(size[i])
            last_idx = i
        if alive:
            p = _first_r_after(r_idx, lo, hi, last_idx)
            if p < hi:
                o_end[row] = r_idx[p]
                o_reason[row] = 4
        j0 = j1
    return n_out


def _analyse(records: np.ndarray):
    """Run the order pass; returns per-record (kind, cancel_qty) and order rows."""
    n = len(records)
    act = records["action"].view(np.uint8)
    flags = records["flags"]
    key = _book_key(records)
    oid = records["order_id"].view(np.int64)
    sel = (np.isin(act, (ACTION_ADD, ACTION_CANCEL, ACTION_MODIFY, ACTION_FILL))
           & ((flags & (F_TOB | F_MBP)) == 0))
    cand = np.flatnonzero(sel)
    order = np.lexsort((cand, oid[cand], key[cand]))
    ev = cand[order].astype(np.int64)
    kev, oev = key[ev], oid[ev]
    gkey = np.zeros(len(ev), np.int64)
    if len(ev):
        gkey[1:] = np.cumsum((kev[1:] != kev[:-1]) | (oev[1:] != oev[:-1]))
    ri = np.flatnonzero(act == ACTION_CLEAR)
    ro = np.lexsort((ri, key[ri]))
    r_idx = ri[ro].astype(np.int64)
    r_key = key[r_idx]
    r_lo = np.searchsorted(r_key, kev, "left").astype(np.int64)
    r_hi = np.searchsorted(r_key, kev, "right").astype(np.int64)
    kind = np.zeros(n, np.int8)
    cancel_qty = np.zeros(n, np.int64)
    m = int(np.count_nonzero(np.isin(act[ev], (ACTION_ADD, ACTION_MODIFY))))
    o_birth = np.zeros(m, np.int64)
    o_end = np.zeros(m, np.int64)
    o_reason = np.zeros(m, np.int8)
    o_known = np.zeros(m, np.bool_)
    o_filled = np.zeros(m, np.int64)
    o_mods = np.zeros(m, np.int64)
    k = _order_pass(ev, act, flags, records["size"], records["ts_event"], gkey, r_idx,
                    flags[r_idx].copy(), r_lo, r_hi, kind, cancel_qty, o_birth, o_end,
                    o_reason, o_known, o_filled, o_mods)
    orders = (o_birth[:k], o_end[:k], o_reason[:k], o_known[:k], o_filled[:k], o_mods[:k])
    return kind, cancel_qty, orders


def order_lifetimes(source: Source, *, instrument_id: int | None = None,
                    publisher_id: int | None = None, include_unknown: bool = False
                    ) -> pd.DataFrame:
    """One row per order life: when it was added, how and when it ended, and its lifetime.

    Columns: ``instrument_id``, ``publisher_id``, ``order_id``, ``side`` (``B``/``A``),
    ``price`` (at the add, currency units), ``size`` (at the add, lots), ``ts_add``,
    ``ts_end`` (``ts_recv``; NaT while alive), ``lifetime`` (``ts_end - ts_add``,
    Timedelta; NaT while alive), ``end_reason`` (see :data:`END_REASONS`),
    ``filled_size`` (sum of its fills, lots), ``modifies`` (priced/sized changes, fills
    excluded), ``birth_known``, ``add_index`` / ``end_index`` (record indices, -1 alive).
    Orders whose birth is unknown (snapshot re-adds, unknown-id modifies) are left out
    unless ``include_unknown``.

    >>> lt = order_lifetimes(mbo_lab.demo_path(), instrument_id=1001)        # doctest: +SKIP
    >>> lt.groupby("end_reason")["lifetime"].median()                         # doctest: +SKIP
    """
    data = as_data(source)
    r = data.records
    _, _, (birth, end, reason, known, filled, mods) = _analyse(r)
    b = r[birth]
    keep = np.ones(len(birth), bool) if include_unknown else known.copy()
    bm = _book_mask(b, instrument_id, publisher_id)
    if bm is not None:
        keep &= bm
    birth, end, reason, known, filled, mods = (x[keep] for x in
                                               (birth, end, reason, known, filled, mods))
    b = r[birth]
    order = np.argsort(birth, kind="stable")
    birth, end, reason, known, filled, mods, b = (x[order] for x in
                                                  (birth, end, reason, known, filled, mods, b))
    alive = end < 0
    t_add = ns_to_datetime(b["ts_recv"])
    t_end_ns = np.where(alive, 0, r["ts_recv"][np.where(alive, 0, end)])
    t_end = pd.Series(ns_to_datetime(t_end_ns)).where(~alive)
    df = pd.DataFrame({
        "instrument_id": b["instrument_id"],
        "publisher_id": b["publisher_id"],
        "order_id": b["order_id"],
        "side": byte_chars(b["side"]),
        "price": px_to_float(b["price"]),
        "size": b["size"],
        "ts_add": t_add,
        "ts_end": t_end.array,
        "end_reason": pd.Categorical.from_codes(reason.astype(np.int64),
                                                categories=list(END_REASONS)),
        "filled_size": filled,
        "modifies": mods,
        "birth_known": known,
        "add_index": data.first_index + birth,
        "end_index": np.where(alive, -1, data.first_index + end),
    })
    df.insert(df.columns.get_loc("end_reason"), "lifetime", df["ts_end"] - df["ts_add"])
    return df


def cancel_to_trade(source: Source, freq: str | None = None, *,
                    instrument_id: int | None = None, publisher_id: int | None = None
                    ) -> pd.DataFrame:
    """Order-flow counts and cancel-to-trade ratios per book (and per bucket with ``freq``).

    Columns: ``adds`` (Adds without F_SNAPSHOT / F_TOB), ``added_qty``, ``cancels``
    (Cancels and Modifies to 0 that are not fill bookkeeping), ``cancelled_qty`` (lots
    removed by them), ``modifies`` (Modifies that are not fill bookkeeping),
    ``fill_removals`` (C/M right after a same-``ts_event`` fill of the order), ``trades``
    (Trade records), ``traded_qty`` (lots), ``cancel_to_trade`` = cancels / trades,
    ``cancel_to_trade_qty`` = cancelled_qty / traded_qty, ``order_to_trade`` = adds / trades
    (NaN when there is no trade). With ``freq`` the index is the bucket start (``ts``).

    >>> cancel_to_trade(mbo_lab.demo_path(), "1min", instrument_id=1001).head()  # doctest: +SKIP
    """
    data = as_data(source)
    r = data.records
    kind, cqty, _ = _analyse(r)
    act = r["action"].view(np.uint8)
    flags = r["flags"]
    nosnap = (flags & F_SNAPSHOT) == 0
    is_add = (act == ACTION_ADD) & nosnap & ((flags & (F_TOB | F_MBP)) == 0)
    is_trade = (act == ACTION_TRADE) & nosnap
    size = r["size"].astype(np.int64)
    df = pd.DataFrame({
        "instrument_id": r["instrument_id"],
        "publisher_id": r["publisher_id"],
        "adds": is_add.astype(np.int64),
        "added_qty": np.where(is_add, size, 0),
        "cancels": ((kind == K_CANCEL) & nosnap).astype(np.int64),
        "cancelled_qty": np.where((kind == K_CANCEL) & nosnap, cqty, 0),
        "modifies": ((kind == K_MODIFY) & nosnap).astype(np.int64),
        "fill_removals": ((kind == K_FILL_REMOVAL) & nosnap).astype(np.int64),
        "trades": is_trade.astype(np.int64),
        "traded_qty": np.where(is_trade, size, 0),
    })
    bm = _book_mask(r, instrument_id, publisher_id)
    keys = ["instrument_id", "publisher_id"]
    if freq is not None:
        df["_b"] = _buckets(r["ts_recv"], freq).astype(np.int64)
        keys.append("_b")
    if bm is not None:
        df = df[bm]
    out = df.groupby(keys, sort=True).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        t = out["trades"].where(out["trades"] > 0)
        q = out["traded_qty"].where(out["traded_qty"] > 0)
        out["cancel_to_trade"] = out["cancels"] / t
        out["cancel_to_trade_qty"] = out["cancelled_qty"] / q
        out["order_to_trade"] = out["adds"] / t
    out = out.reset_index()
    if freq is not None:
        out.index = ns_to_datetime(out.pop("_b").to_numpy().astype(np.uint64)).rename("ts")
    return out


def queue_history(source: Source, order_id: int, *, instrument_id: int | None = None,
                  publisher_id: int | None = None, engine: str | None = None
                  ) -> pd.DataFrame:
    """Queue position of one order after every book event that can change it.

    The book is replayed (Numba engine by default) to the order's first Add/Modify, then
    stepped from one F_LAST state of its book to the next whenever a record of that book
    touches the order, its price levels, an order that ever rested there, or clears the
    book; the state is read after each such event (never between the records of one event).

    Returns a DataFrame indexed by ``ts_recv`` (of the event's F_LAST record) with
    ``record_index``, ``live``, ``side``, ``price`` (currency units), ``size`` (lots left),
    ``queue_position`` (lots ahead in the FIFO level; NaN while not live), ``ahead_change``
    (lots, vs. the previous row), ``filled_ahead`` (lots filled at its price and side for
    other orders in the event), ``own_filled`` (lots of this order filled in the event) and
    ``actions`` (the event's actions of that book, e.g. ``"TFC"``). Runs to the order's last
    record. Meaningful for FIFO products only.

    >>> queue_history(data, 6_421_331_999, instrument_id=432669).plot(y="queue_position")  # doctest: +SKIP
    """
    data = as_data(source)
    r = data.records
    oid = np.uint64(order_id)
    mine = r["order_id"] == oid
    act = r["action"].view(np.uint8)
    births = mine & np.isin(act, (ACTION_ADD, ACTION_MODIFY))
    bm = _book_mask(r, instrument_id, publisher_id)
    if bm is not None:
        births &= bm
    if not births.any():
        raise AnalyticsError(f"order {order_id} is never added (no A or M record with that id"
                             + (" in the selected book)" if bm is not None else ")"))
    a0 = int(np.flatnonzero(births)[0])
    iid, pub = int(r["instrument_id"][a0]), int(r["publisher_id"][a0])
    book = (r["instrument_id"] == iid) & (r["publisher_id"] == pub)
    mine &= book
    last = int(np.flatnonzero(mine)[-1])
    prices = np.unique(r["price"][mine & np.isin(act, (ACTION_ADD, ACTION_MODIFY))])
    at_px = book & np.isin(r["price"], prices) & (act != ACTION_CLEAR)
    ids = np.unique(r["order_id"][: last + 1][at_px[: last + 1]])
    window = np.zeros(len(r), bool)
    window[a0: last + 1] = True
    relevant = window & book & (np.isin(r["order_id"], ids) | (act == ACTION_CLEAR) | at_px)
    book_last = np.flatnonzero(book & ((r["flags"] & F_LAST) != 0))
    pos = np.searchsorted(book_last, np.flatnonzero(relevant), "left")
    pos = pos[pos < len(book_last)]
    points = np.unique(book_last[pos])
    eng = make_engine(engine or "numba", levels=1, trades=False)
    if a0 > 0:
        eng.apply(r[:a0], base_index=0)
    done = a0
    rows = []
    side_b = r["side"].view(np.uint8)
    for pt in points.tolist():
        ev = slice(done, pt + 1)
        eng.apply(r[ev], base_index=done)
        o = eng.order(iid, pub, int(order_id))
        seg = r[ev]
        segbook = book[ev]
        fills = (seg["action"].view(np.uint8) == ACTION_FILL) & segbook
        own = int(seg["size"][fills & (seg["order_id"] == oid)].sum())
        if o is not None:
            sd = SIDE_ASK if o["side"] == "A" else ord("B")
            other = fills & (seg["order_id"] != oid) & (seg["price"] == o["price"]) & \
                (side_b[ev] == sd)
            ahead_filled = int(seg["size"][other].sum())
        else:
            ahead_filled = 0
        acts = seg["action"][segbook]
        rows.append((int(r["ts_recv"][pt]), data.first_index + pt, o is not None,
                     o["side"] if o else "", o["price"] if o else None,
                     o["size"] if o else 0,
                     float(o["queue_position"]) if o else np.nan, ahead_filled, own,
                     "".join(byte_chars(acts))))
        done = pt + 1
    ts = np.array([x[0] for x in rows], np.uint64)
    px = np.array([x[4] if x[4] is not None else 2**63 - 1 for x in rows], np.int64)
    qp = np.array([x[6] for x in rows], np.float64)
    df = pd.DataFrame({
        "record_index": np.array([x[1] for x in rows], np.int64),
        "live": np.array([x[2] for x in rows], bool),
        "side": np.array([x[3] for x in rows], dtype=object),
        "price": px_to_float(px),
        "size": np.array([x[5] for x in rows], np.int64),
        "queue_position": qp,
        "ahead_change": np.diff(qp, prepend=np.nan),
        "filled_ahead": np.array([x[7] for x in rows], np.int64),
        "own_filled": np.array([x[8] for x in rows], np.int64),
        "actions": np.array([x[9] for x in rows], dtype=object),
    }, index=ns_to_datetime(ts).rename("ts_recv"))
    return df
