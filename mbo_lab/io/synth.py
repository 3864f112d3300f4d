"""Deterministic synthetic MBO (L3) streams in Databento's layout, fast enough for 100M records.

The generator simulates several order books, each keyed by ``(instrument_id, publisher_id)``,
and emits the records a Databento MBO feed would carry for them:

* ``A`` adds clustered around a drifting mid (geometric distance in ticks from the touch,
  occasionally far away), sizes from a skewed distribution (1..~100 lots);
* ``C`` cancels of live orders (full, or partial with a size below the order's remaining
  size) and ``M`` modifies (new price and/or new total size; price change and size increase
  lose priority, size decrease keeps it);
* trades in the CME match pattern: one ``T`` per price level (side = aggressor, order_id =
  aggressor's id, size = quantity at that price) followed by one ``F`` per resting order
  filled, then per resting order a ``C`` (full fill) or an ``M`` to the remaining size
  (partial fill); occasionally the aggressor's residual rests as an ``A`` with its id;
* optionally, every ~K records, a snapshot of one book: ``R`` (side ``N``, ``UNDEF_PRICE``,
  size 0, ``F_SNAPSHOT``) then ``A`` records with ``F_SNAPSHOT`` re-adding every live order in
  priority order (bids best first, then asks best first; FIFO within a level);
* a top-of-book-only publisher (``F_TOB``): ``A`` records with order_id 0 carrying a side's
  best price and size, or ``UNDEF_PRICE`` / size 0 for an empty side.

All records of one event share ``ts_event``, ``ts_recv``, ``ts_in_delta`` and ``sequence``;
only the event's last record has ``F_LAST``. ``ts_recv`` never decreases; ``ts_event <=
ts_recv``; ``sequence`` increases per event for each publisher. Every ``C``/``M``/``F``
refers to a live order of the same book, so a book built from the first record never sees
an unknown order id, and books are never crossed after ``F_LAST``.

The hot loop is Numba (``cache=True``: compiled once, ~15 s, then loaded from the cache)
over flat arrays, with its own SplitMix64 random state kept in an array, so the output
depends only on the arguments: the same ``seed`` gives byte-identical records whatever
``chunk_records`` is, and memory stays bounded by the chunk size plus the (capped)
live-order tables. It produces roughly 6-9 million records per second on one core.

>>> chunks = generate(1_000_000, seed=1, chunk_records=250_000)   # doctest: +SKIP
>>> recs = synth_records(10_000, seed=3)                           # doctest: +SKIP
>>> path = write_synth("synth.dbn.zst", 5_000_000)                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from ..errors import ArgumentError
from .records import (
    ACTION_ADD,
    ACTION_CANCEL,
    ACTION_CLEAR,
    ACTION_FILL,
    ACTION_MODIFY,
    ACTION_TRADE,
    F_LAST,
    F_SNAPSHOT,
    F_TOB,
    LENGTH_MBO,
    MBO_DTYPE,
    MBO_KERNEL_DTYPE,
    RTYPE_MBO,
    SIDE_ASK,
    SIDE_BID,
    SIDE_NONE,
)

__all__ = [
    "SynthInstrument",
    "DEFAULT_INSTRUMENTS",
    "TOB_INSTRUMENT",
    "GENERATOR_VERSION",
    "DEFAULT_START_NS",
    "generate",
    "synth_records",
    "write_synth",
    "demo_path",
]

log = logging.getLogger(__name__)

#: Bumped whenever the generated stream changes for the same arguments (cache key).
GENERATOR_VERSION = 1

#: 2025-01-02 14:30:00 UTC in ns since the epoch (default first ``ts_recv``).
DEFAULT_START_NS = 1_735_828_200 * 1_000_000_000

_PROGRESS_MIN_RECORDS = 5_000_000
_DEFAULT_EVENTS_PER_SECOND = 200.0


@dataclass(frozen=True)
class SynthInstrument:
    """One simulated book: an instrument on one publisher.

    Attributes
    ----------
    instrument_id : int
        Venue instrument id (u32). The same id may appear on several publishers.
    publisher_id : int
        Databento publisher id (u16); the book key is ``(instrument_id, publisher_id)``.
    symbol : str
        Raw symbol written to the DBN symbol mappings.
    tick : int
        Minimum price increment, fixed-point (1e-9 units): ``10_000_000`` is 0.01.
    start_price : int
        Initial mid, fixed-point (1e-9 units); rounded to a multiple of ``tick``.
    tob : bool
        True for a top-of-book-only publisher (``F_TOB`` records, no order ids). Its
        prices follow the full-depth book of the same ``instrument_id`` when there is one.
    weight : float
        Relative event rate of this book.
    lot_size : int
        Size unit; every order size is a multiple of it (e.g. 100 shares).
    target_orders : int
        Typical number of live orders in the book (adds become rarer above it).
    """

    instrument_id: int
    publisher_id: int
    symbol: str
    tick: int
    start_price: int
    tob: bool = False
    weight: float = 1.0
    lot_size: int = 1
    target_orders: int = 400


#: Default books: CL-like (tick 0.01, ~65.00) and ES-like (tick 0.25, ~6000) futures on
#: publisher 1, and an equity (tick 0.01, ~180.00) listed on publishers 1 and 2.
DEFAULT_INSTRUMENTS: tuple[SynthInstrument, ...] = (
    SynthInstrument(1001, 1, "CLG5", 10_000_000, 65_000_000_000, weight=3.0,
                    target_orders=500),
    SynthInstrument(1002, 1, "ESH5", 250_000_000, 6_000_000_000_000, weight=3.0,
                    target_orders=600),
    SynthInstrument(1003, 1, "SYNQ", 10_000_000, 180_000_000_000, weight=2.0,
                    lot_size=100, target_orders=300),
    SynthInstrument(1003, 2, "SYNQ", 10_000_000, 180_000_000_000, weight=1.0,
                    lot_size=100, target_orders=200),
)

#: Top-of-book-only publisher (like IEX TOPS, publisher 38) for the default equity.
TOB_INSTRUMENT = SynthInstrument(1003, 38, "SYNQ", 10_000_000, 180_000_000_000, tob=True,
                                 weight=0.7, lot_size=100)

# --------------------------------------------------------------------------- kernel layout
# The kernel's state lives in a handful of flat arrays. Numba reference-counts every
# array argument of a call (~10 ns each), so the per-event code sits in one function
# (:func:`_fill`) and calls with arrays happen only for trades, snapshots and rescans.
#   gs  int64 [G_SEQ0 + n_publishers]        global scalars, then one sequence per publisher
#   fl  float64 [F_BW0 + n_books]             time parameters, then cumulative book weights
#   bk  int64 [n_books, B_NFIELDS]            per-book parameters and state
#   od  int64 [n_books, 2, 4, cap]            live orders per side: id, price, size, stamp
#   scr int64 [3, max(cap, MAX_FILLS)]        scratch: level slots / fill slots / fill sizes
#   rng uint64 [1]                            SplitMix64 state

G_TS = 0          # current ts_recv (ns)
G_GEN = 1         # records generated so far (including those waiting in the pending buffer)
G_TOTAL = 2       # records to generate in all
G_NEXT_SNAP = 3   # G_GEN value at which the next snapshot is due
G_SNAP_EVERY = 4  # snapshot period in records (0: never)
G_SNAP_RR = 5     # round-robin pointer for snapshots
G_PEND_LO = 6     # pending buffer: first record not yet copied out
G_PEND_HI = 7     # pending buffer: end of the pending records
G_STAMP = 8       # priority stamp counter
G_CAP = 9         # live-order capacity per side of a book
G_MAXEV = 10      # largest possible event (records)
G_SEQ0 = 11       # first per-publisher sequence counter

F_BURST_MEAN = 0  # mean gap of burst events (ns)
F_SLOW_MEAN = 1   # mean gap of the other events (ns)
F_MAX_GAP = 2     # cap of one gap (ns)
F_BW0 = 3         # cumulative book weights (last = 1.0)

B_IID = 0
B_PUB = 1
B_TOB = 2
B_REF = 3      # full-depth book a TOB book follows (-1: none)
B_LOT = 4
B_TICK = 5
B_TARGET = 6
B_SEQ = 7      # index into gs of the publisher's sequence counter
B_M2 = 8       # latent mid, in half ticks
B_M2MIN = 9
B_M2MAX = 10
B_OID = 11     # last order id issued
B_TSEV = 12    # last ts_event of the book
B_TBPX = 13    # TOB book: bid price (ticks, 0 = empty side), size
B_TBSZ = 14
B_TAPX = 15    # TOB book: ask price (ticks, 0 = empty side), size
B_TASZ = 16
B_N = 17       # live orders, bid / ask (B_N + side)
B_BEST = 19    # cached best price, bid / ask (ticks; -1 / INT64_MAX when empty)
B_OK = 21      # cache valid, bid / ask
B_NFIELDS = 23

O_ID = 0
O_PX = 1
O_SZ = 2
O_ST = 3       # priority stamp (smaller = earlier in the FIFO)

_I64MAX = np.iinfo(np.int64).max
_UNDEF = np.int64(2**63 - 1)
MAX_FILLS = 200                       # resting orders filled by one aggressor, at most
MAX_TRADE_RECORDS = 3 * MAX_FILLS + 1
_P_TRADE = 0.035
_P_MODIFY = 0.09
_P_PARTIAL_CANCEL = 0.12
_P_MID_MOVE = 0.03


def _lot_table() -> np.ndarray:
    """Quantiles of the order-size distribution in lots: 30% one lot, median ~5, up to ~100."""
    n = 4096
    out = np.empty(n, np.int64)
    for j in range(n):
        u = (j + 0.5) / n
        if u < 0.3:
            out[j] = 1
            continue
        v = (u - 0.3) / 0.7
        lots = 1 + int(math.exp(4.6 * v * v))
        if lots > 10 and j % 2:
            lots = (lots // 5) * 5
        out[j] = lots
    return out


_LOTS = _lot_table()

#: success probabilities of the tabulated geometric distributions (index = table row)
_GEOM_P = (0.3, 0.4, 0.5, 0.6, 0.75)
_G30, _G40, _G50, _G60, _G75 = range(5)


def _geom_tables() -> np.ndarray:
    """Quantiles (4096 per row) of geometric distributions, one row per :data:`_GEOM_P`."""
    u = (np.arange(4096) + 0.5) / 4096
    rows = [np.floor(np.log1p(-u) / math.log(1.0 - p)) for p in _GEOM_P]
    return np.minimum(np.array(rows), 255).astype(np.uint8)


_GEOM = _geom_tables()

# --------------------------------------------------------------------------- RNG


@njit(cache=True, nogil=True)
def _next(rng):
    s = rng[0] + np.uint64(0x9E3779B97F4A7C15)
    rng[0] = s
    z = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _unif(rng):
    """Uniform float in [0, 1)."""
    return np.float64(_next(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def _randint(rng, n):
    """Uniform integer in [0, n) (n >= 1)."""
    return np.int64(_next(rng) >> np.uint64(11)) % n


@njit(cache=True, nogil=True)
def _geom(rng, p):
    """Failures before the first success (success probability p), at most 10,000."""
    k = np.int64(math.log(1.0 - _unif(rng)) / math.log(1.0 - p))
    return min(k, np.int64(10_000))


@njit(cache=True, nogil=True)
def _geom_t(rng, t):
    """Geometric draw from quantile table t (see :data:`_GEOM_P`); branch-free and cheap."""
    return np.int64(_GEOM[t, np.int64(_next(rng) >> np.uint64(52))])


@njit(cache=True, nogil=True)
def _expo(rng, mean):
    return -math.log(1.0 - _unif(rng)) * mean


@njit(cache=True, nogil=True)
def _lots(rng):
    """Order size in lots (see :func:`_lot_table`)."""
    return _LOTS[np.int64(_next(rng) >> np.uint64(52))]


# --------------------------------------------------------------------------- book helpers


@njit(cache=True, nogil=True)
def _put(buf, i, pub, iid, oid, px, size, flags, action, side):
    r = buf[i]
    r.length = LENGTH_MBO
    r.rtype = RTYPE_MBO
    r.publisher_id = pub
    r.instrument_id = iid
    r.order_id = oid
    r.price = px
    r.size = size
    r.flags = flags
    r.channel_id = 0
    r.action = action
    r.side = side


@njit(cache=True, nogil=True)
def _best_scan(b, s, bk, od):
    """Best price (ticks) of side s (0 bid, 1 ask) of book b; -1 / INT64_MAX when empty.

    Scans the side and refreshes the cache; callers read ``bk[b, B_BEST + s]`` directly
    when ``bk[b, B_OK + s]`` is set.
    """
    n = bk[b, B_N + s]
    if s == 0:
        v = np.int64(-1)
        for i in range(n):
            if od[b, 0, O_SZ, i] > 0 and od[b, 0, O_PX, i] > v:
                v = od[b, 0, O_PX, i]
    else:
        v = np.int64(_I64MAX)
        for i in range(n):
            if od[b, 1, O_SZ, i] > 0 and od[b, 1, O_PX, i] < v:
                v = od[b, 1, O_PX, i]
    bk[b, B_BEST + s] = v
    bk[b, B_OK + s] = 1
    return v


@njit(cache=True, nogil=True)
def _improve_best(b, s, px, bk):
    if bk[b, B_OK + s]:
        if (s == 0 and px > bk[b, B_BEST + s]) or (s == 1 and px < bk[b, B_BEST + s]):
            bk[b, B_BEST + s] = px


@njit(cache=True, nogil=True)
def _insert(b, s, oid, px, sz, gs, bk, od):
    i = bk[b, B_N + s]
    od[b, s, O_ID, i] = oid
    od[b, s, O_PX, i] = px
    od[b, s, O_SZ, i] = sz
    gs[G_STAMP] += 1
    od[b, s, O_ST, i] = gs[G_STAMP]
    bk[b, B_N + s] = i + 1


@njit(cache=True, nogil=True)
def _remove(b, s, i, bk, od):
    last = bk[b, B_N + s] - 1
    if i != last:
        for f in range(4):
            od[b, s, f, i] = od[b, s, f, last]
    bk[b, B_N + s] = last


@njit(cache=True, nogil=True)
def _new_oid(b, bk, rng):
    bk[b, B_OID] += 1 + _randint(rng, 8)
    return bk[b, B_OID]


@njit(cache=True, nogil=True)
def _side_char(s):
    return SIDE_BID if s == 0 else SIDE_ASK


@njit(cache=True, nogil=True)
def _anchor(m2, s):
    """Price (ticks) next to the latent mid m2 (half ticks): highest bid below, lowest ask above."""
    if s == 0:
        return (m2 - 1) // 2
    return (m2 + 2) // 2


@njit(cache=True, nogil=True)
def _sort_priority(idx, k, b, s, od):
    """Sort slots idx[:k] of book b, side s into priority order: best price first, then
    FIFO (priority stamp). Shell sort; stamps are unique, so the order is total."""
    sign = -1 if s == 0 else 1
    gap = 1
    while gap < k // 3:
        gap = 3 * gap + 1
    while gap >= 1:
        for a in range(gap, k):
            v = idx[a]
            kp = sign * od[b, s, O_PX, v]
            ks = od[b, s, O_ST, v]
            c = a
            while c >= gap:
                w = idx[c - gap]
                wp = sign * od[b, s, O_PX, w]
                if wp < kp or (wp == kp and od[b, s, O_ST, w] < ks):
                    break
                idx[c] = w
                c -= gap
            idx[c] = v
        gap //= 3


# --------------------------------------------------------------------------- events


@njit(cache=True, nogil=True)
def _trade(buf, pos, budget, b, aside, limit, qty, rest_prob, gs, rng, bk, od, scr):
    """Aggressor on side ``aside`` with limit (ticks) and qty sweeps the other side.

    Writes T, F..., C-or-M..., [A] records; returns the number written (0: nothing traded).
    """
    opp = 1 - aside
    tick = bk[b, B_TICK]
    pub = bk[b, B_PUB]
    iid = bk[b, B_IID]
    start = pos
    room = min(budget, MAX_TRADE_RECORDS)
    if room < 4:
        return 0
    aid = _new_oid(b, bk, rng)
    remaining = qty
    nf = 0
    exhausted = False
    ach = _side_char(aside)
    och = _side_char(opp)
    while remaining > 0:
        p = bk[b, B_BEST + opp] if bk[b, B_OK + opp] else _best_scan(b, opp, bk, od)
        if opp == 1:
            if p == _I64MAX or p > limit:
                exhausted = True
                break
        else:
            if p < 0 or p < limit:
                exhausted = True
                break
        n = bk[b, B_N + opp]
        k = 0
        for i in range(n):
            if od[b, opp, O_PX, i] == p and od[b, opp, O_SZ, i] > 0:
                scr[0, k] = i
                k += 1
        _sort_priority(scr[0], k, b, opp, od)
        used = (pos - start) + nf
        maxo = (room - used - 2) // 2
        if maxo > MAX_FILLS - nf:
            maxo = MAX_FILLS - nf
        if maxo <= 0:
            break
        tpos = pos
        _put(buf, pos, pub, iid, aid, p * tick, 0, 0, ACTION_TRADE, ach)
        pos += 1
        lvl = 0
        j = 0
        while j < k and j < maxo and remaining > 0:
            i = scr[0, j]
            f = min(remaining, od[b, opp, O_SZ, i])
            _put(buf, pos, pub, iid, od[b, opp, O_ID, i], p * tick, f, 0, ACTION_FILL, och)
            pos += 1
            od[b, opp, O_SZ, i] -= f
            scr[1, nf] = i
            scr[2, nf] = f
            nf += 1
            remaining -= f
            lvl += f
            j += 1
        buf[tpos].size = lvl
        bk[b, B_OK + opp] = 0
        if remaining > 0 and j < k:
            break  # record budget or fill cap reached inside the level
    if nf == 0:
        return 0
    # book updates for the resting orders, in fill order: C for a full fill, M to the rest
    for q in range(nf):
        i = scr[1, q]
        left = od[b, opp, O_SZ, i]
        if left == 0:
            _put(buf, pos, pub, iid, od[b, opp, O_ID, i], od[b, opp, O_PX, i] * tick,
                 scr[2, q], 0, ACTION_CANCEL, och)
        else:
            _put(buf, pos, pub, iid, od[b, opp, O_ID, i], od[b, opp, O_PX, i] * tick, left, 0,
                 ACTION_MODIFY, och)
        pos += 1
    # drop fully filled orders, highest slot first (swap-remove keeps lower slots valid)
    m = 0
    for q in range(nf):
        i = scr[1, q]
        if od[b, opp, O_SZ, i] == 0:
            scr[0, m] = i
            m += 1
    for a in range(1, m):
        v = scr[0, a]
        c = a - 1
        while c >= 0 and scr[0, c] < v:
            scr[0, c + 1] = scr[0, c]
            c -= 1
        scr[0, c + 1] = v
    for a in range(m):
        _remove(b, opp, scr[0, a], bk, od)
    # the aggressor's residual rests only when nothing is left to trade against at its limit
    if (remaining > 0 and exhausted and bk[b, B_N + aside] < gs[G_CAP]
            and _unif(rng) < rest_prob):
        _insert(b, aside, aid, limit, remaining, gs, bk, od)
        _improve_best(b, aside, limit, bk)
        _put(buf, pos, pub, iid, aid, limit * tick, remaining, 0, ACTION_ADD, ach)
        pos += 1
    return pos - start


@njit(cache=True, nogil=True)
def _snapshot(buf, pos, b, bk, od):
    """R (clear) then every live order as an F_SNAPSHOT add, in priority order."""
    pub = bk[b, B_PUB]
    iid = bk[b, B_IID]
    tick = bk[b, B_TICK]
    start = pos
    _put(buf, pos, pub, iid, 0, _UNDEF, 0, F_SNAPSHOT, ACTION_CLEAR, SIDE_NONE)
    pos += 1
    for s in range(2):
        n = bk[b, B_N + s]
        idx = np.arange(n)
        _sort_priority(idx, n, b, s, od)
        sc = _side_char(s)
        for j in range(n):
            i = idx[j]
            _put(buf, pos, pub, iid, od[b, s, O_ID, i], od[b, s, O_PX, i] * tick,
                 od[b, s, O_SZ, i], F_SNAPSHOT, ACTION_ADD, sc)
            pos += 1
    return pos - start


@njit(cache=True, nogil=True)
def _fill(out, pend, gs, fl, rng, bk, od, scr):
    """Fill ``out`` with the next len(out) records of the stream.

    One event per loop turn. Events are written straight into ``out`` while a
    largest-possible event fits; otherwise into ``pend``, whose overflow is copied out
    at the next call, so the stream does not depend on the chunk sizes. The add, cancel,
    modify and TOB code is written inline here: Numba reference-counts every array
    argument of a call (~10 ns each), so the common path makes no such calls; trades,
    snapshots and best-price rescans are calls.
    """
    n_out = out.shape[0]
    pos = 0
    lo = gs[G_PEND_LO]
    hi = gs[G_PEND_HI]
    while lo < hi and pos < n_out:
        out[pos] = pend[lo]
        pos += 1
        lo += 1
    maxev = gs[G_MAXEV]
    cap = gs[G_CAP]
    nb = bk.shape[0]
    while pos < n_out:
        direct = n_out - pos >= maxev
        buf = out if direct else pend
        w = pos if direct else 0
        budget = gs[G_TOTAL] - gs[G_GEN]
        # ---- time: bursty gaps between events, latencies
        if _unif(rng) < 0.4:
            gap = _expo(rng, fl[F_BURST_MEAN])
        else:
            gap = _expo(rng, fl[F_SLOW_MEAN])
        if gap > fl[F_MAX_GAP]:
            gap = fl[F_MAX_GAP]
        gs[G_TS] += np.int64(gap)
        ts_recv = gs[G_TS]
        u = _unif(rng)
        delta = 4_000 + np.int64(40_000.0 * u * u * u)     # ts_recv - venue send time (ns)
        u = _unif(rng)
        engine = 1_000 + np.int64(20_000.0 * u * u)        # engine receive to send (ns)
        k = 0
        b = 0
        # ---- periodic snapshot of one full-depth book (round robin)
        if gs[G_SNAP_EVERY] > 0 and gs[G_GEN] >= gs[G_NEXT_SNAP]:
            gs[G_NEXT_SNAP] += gs[G_SNAP_EVERY]
            for t in range(nb):
                c = (gs[G_SNAP_RR] + t) % nb
                if bk[c, B_TOB] == 0:
                    gs[G_SNAP_RR] = c + 1
                    if 1 + bk[c, B_N] + bk[c, B_N + 1] <= budget:
                        b = c
                        k = _snapshot(buf, w, b, bk, od)
                    break
        if k == 0:
            # ---- pick a book by weight and move its latent mid
            u = _unif(rng)
            b = nb - 1
            for c in range(nb):
                if u < fl[F_BW0 + c]:
                    b = c
                    break
            if _unif(rng) < _P_MID_MOVE:
                m2 = bk[b, B_M2] + (1 if _unif(rng) < 0.5 else -1)
                if m2 < bk[b, B_M2MIN]:
                    m2 = bk[b, B_M2MIN] + 1
                if m2 > bk[b, B_M2MAX]:
                    m2 = bk[b, B_M2MAX] - 1
                bk[b, B_M2] = m2
        tick = bk[b, B_TICK]
        lot = bk[b, B_LOT]
        pub = bk[b, B_PUB]
        iid = bk[b, B_IID]
        if k == 0 and bk[b, B_TOB]:
            # ---- top-of-book publisher: one or both sides as F_TOB adds (order_id 0)
            ref = bk[b, B_REF]
            m2 = bk[ref, B_M2] if ref >= 0 else bk[b, B_M2]
            nbp = _anchor(m2, 0) - _geom_t(rng, _G60)   # fresh values, never crossed
            nap = _anchor(m2, 1) + _geom_t(rng, _G60)
            nbs = lot * _lots(rng) * (1 + _geom_t(rng, _G50))
            nas = lot * _lots(rng) * (1 + _geom_t(rng, _G50))
            if nbp < 1 or _unif(rng) < 0.02:
                nbp = 0
                nbs = 0
            if _unif(rng) < 0.02:
                nap = 0
                nas = 0
            u = _unif(rng)
            do_b = u < 0.4 or u >= 0.75
            do_a = u >= 0.4
            obp = bk[b, B_TBPX]
            oap = bk[b, B_TAPX]
            # a side that is kept must not cross the other side's new value
            if do_b and not do_a and oap > 0 and nbp >= oap:
                do_a = True
            if do_a and not do_b and obp > 0 and nap > 0 and obp >= nap:
                do_b = True
            if do_a and do_b and budget < 2:
                # room for one record only: update the bid, emptied if it crosses the old ask
                do_a = False
                if oap > 0 and nbp >= oap:
                    nbp = 0
                    nbs = 0
            if do_b:
                bk[b, B_TBPX] = nbp
                bk[b, B_TBSZ] = nbs
                _put(buf, w + k, pub, iid, 0, nbp * tick if nbp > 0 else _UNDEF, nbs, F_TOB,
                     ACTION_ADD, SIDE_BID)
                k += 1
            if do_a:
                bk[b, B_TAPX] = nap
                bk[b, B_TASZ] = nas
                _put(buf, w + k, pub, iid, 0, nap * tick if nap > 0 else _UNDEF, nas, F_TOB,
                     ACTION_ADD, SIDE_ASK)
                k += 1
        elif k == 0:
            # ---- full-depth book: add (0), trade (1), modify (2) or cancel (3)
            n = bk[b, B_N] + bk[b, B_N + 1]
            p_add = 0.62 - 0.2 * n / bk[b, B_TARGET]
            if p_add < 0.15:
                p_add = 0.15
            u = _unif(rng)
            if n == 0 or u < p_add:
                kind = 0
            elif u < p_add + _P_TRADE:
                kind = 1
            elif u < p_add + _P_TRADE + _P_MODIFY:
                kind = 2
            else:
                kind = 3
            if kind == 1:
                # ---- marketable order against the touch (sometimes a level or two through)
                bb = bk[b, B_BEST] if bk[b, B_OK] else _best_scan(b, 0, bk, od)
                ba = bk[b, B_BEST + 1] if bk[b, B_OK + 1] else _best_scan(b, 1, bk, od)
                p_buy = 0.5
                if bb >= 0 and ba != _I64MAX:
                    diff = bk[b, B_M2] - (bb + ba)   # latent mid vs book mid, half ticks
                    if diff > 0:
                        p_buy = 0.75
                    elif diff < 0:
                        p_buy = 0.25
                s = 0 if _unif(rng) < p_buy else 1
                if bk[b, B_N + 1 - s] == 0:
                    s = 1 - s
                if bk[b, B_N + 1 - s] == 0:
                    kind = 0
                else:
                    extra = _geom_t(rng, _G75)
                    if s == 0:
                        limit = ba + extra
                    else:
                        limit = max(bb - extra, np.int64(1))
                    qty = lot * _lots(rng) * (1 + _geom_t(rng, _G60))
                    k = _trade(buf, w, budget, b, s, limit, qty, 0.1, gs, rng, bk, od, scr)
                    if k == 0:
                        kind = 3
            if kind == 0:
                # ---- limit order near the latent mid; a marketable one trades instead
                s = 0 if _unif(rng) < 0.5 else 1
                if bk[b, B_N + s] >= cap:
                    s = 1 - s
                if bk[b, B_N + s] >= cap:
                    kind = 3
                else:
                    d = _geom_t(rng, _G30)
                    if _unif(rng) < 0.03:
                        d = 10 + _geom(rng, 0.03)   # occasionally far from the touch
                    if d > 2000:
                        d = 2000
                    px = _anchor(bk[b, B_M2], s)
                    px = px - d if s == 0 else px + d
                    if px < 1:
                        px = 1
                    qty = lot * _lots(rng)
                    o = 1 - s
                    ob = bk[b, B_BEST + o] if bk[b, B_OK + o] else _best_scan(b, o, bk, od)
                    rest = True
                    if (s == 0 and px >= ob) or (s == 1 and px <= ob):
                        k = _trade(buf, w, budget, b, s, px, qty, 0.7, gs, rng, bk, od, scr)
                        if k > 0:
                            rest = False
                        else:
                            px = ob - 1 if s == 0 else ob + 1   # no room to trade: rest outside
                            if px < 1:
                                rest = False
                                kind = 3
                    if rest:
                        oid = _new_oid(b, bk, rng)
                        _insert(b, s, oid, px, qty, gs, bk, od)
                        _improve_best(b, s, px, bk)
                        _put(buf, w, pub, iid, oid, px * tick, qty, 0, ACTION_ADD,
                             _side_char(s))
                        k = 1
            if kind == 2 or kind == 3:
                # ---- a uniformly random live order
                n0 = bk[b, B_N]
                idx = _randint(rng, n0 + bk[b, B_N + 1])
                s = 0 if idx < n0 else 1
                i = idx if idx < n0 else idx - n0
                sz = od[b, s, O_SZ, i]
                px = od[b, s, O_PX, i]
                oid = od[b, s, O_ID, i]
                if kind == 3:
                    # ---- cancel: full, sometimes partial (size = quantity removed)
                    c = sz
                    if _unif(rng) < _P_PARTIAL_CANCEL and sz >= 2 * lot:
                        c = lot * (1 + _randint(rng, sz // lot - 1))
                    _put(buf, w, pub, iid, oid, px * tick, c, 0, ACTION_CANCEL, _side_char(s))
                    if c < sz:
                        od[b, s, O_SZ, i] = sz - c
                    else:
                        if bk[b, B_OK + s] and bk[b, B_BEST + s] == px:
                            bk[b, B_OK + s] = 0
                        _remove(b, s, i, bk, od)
                else:
                    # ---- modify: size down keeps priority; size up or new price loses it
                    new_sz = sz
                    new_px = px
                    u = _unif(rng)
                    if u < 0.45:
                        if sz >= 2 * lot:
                            new_sz = lot * (1 + _randint(rng, sz // lot - 1))
                    elif u < 0.65:
                        new_sz = sz + lot * (1 + _geom_t(rng, _G40))
                    else:
                        dd = 1 + _geom_t(rng, _G50)
                        if _unif(rng) < 0.5:
                            dd = -dd
                        new_px = px + dd
                        o = 1 - s
                        ob = bk[b, B_BEST + o] if bk[b, B_OK + o] else _best_scan(b, o, bk, od)
                        if s == 0 and new_px >= ob:
                            new_px = ob - 1
                        elif s == 1 and new_px <= ob:
                            new_px = ob + 1
                        if new_px < 1:
                            new_px = 1
                        if _unif(rng) < 0.3:
                            new_sz = lot * _lots(rng)
                    if new_px != px or new_sz > sz:
                        gs[G_STAMP] += 1
                        od[b, s, O_ST, i] = gs[G_STAMP]   # back of the queue
                    if new_px != px:
                        if bk[b, B_OK + s] and bk[b, B_BEST + s] == px:
                            bk[b, B_OK + s] = 0
                        else:
                            _improve_best(b, s, new_px, bk)
                    od[b, s, O_PX, i] = new_px
                    od[b, s, O_SZ, i] = new_sz
                    _put(buf, w, pub, iid, oid, new_px * tick, new_sz, 0, ACTION_MODIFY,
                         _side_char(s))
                k = 1
        # ---- event header fields; F_LAST on the last record only
        ts_event = ts_recv - delta - engine
        if ts_event < bk[b, B_TSEV]:
            ts_event = bk[b, B_TSEV]
        bk[b, B_TSEV] = ts_event
        q = bk[b, B_SEQ]
        gs[q] += 1 + _geom_t(rng, _G60)
        sq = gs[q] & 0xFFFFFFFF
        for i in range(w, w + k):
            r = buf[i]
            r.ts_event = ts_event
            r.ts_recv = ts_recv
            r.ts_in_delta = delta
            r.sequence = sq
        buf[w + k - 1].flags = buf[w + k - 1].flags | F_LAST
        gs[G_GEN] += k
        if direct:
            pos += k
        else:
            lo = 0
            hi = k
            while lo < hi and pos < n_out:
                out[pos] = pend[lo]
                pos += 1
                lo += 1
    gs[G_PEND_LO] = lo
    gs[G_PEND_HI] = hi


# --------------------------------------------------------------------------- Python side


def _resolve_instruments(instruments: Sequence[SynthInstrument] | None,
                         tob_publisher: bool) -> list[SynthInstrument]:
    if instruments is None:
        books = list(DEFAULT_INSTRUMENTS)
        if tob_publisher:
            books.append(TOB_INSTRUMENT)
    else:
        books = [i for i in instruments if tob_publisher or not i.tob]
    if not books:
        raise ArgumentError("no books to simulate: pass at least one SynthInstrument "
                         "(tob_publisher=False drops top-of-book-only ones)")
    seen = set()
    for ins in books:
        key = (int(ins.instrument_id), int(ins.publisher_id))
        if key in seen:
            raise ArgumentError(f"duplicate book (instrument_id, publisher_id) = {key}")
        seen.add(key)
        if ins.tick <= 0:
            raise ArgumentError(f"{ins.symbol}: tick must be > 0 (fixed-point, 1e-9 units), "
                             f"got {ins.tick}")
        if ins.start_price < ins.tick:
            raise ArgumentError(f"{ins.symbol}: start_price must be >= one tick "
                             f"(fixed-point, 1e-9 units), got {ins.start_price}")
        if ins.weight <= 0 or ins.lot_size < 1 or ins.target_orders < 1:
            raise ArgumentError(f"{ins.symbol}: weight must be > 0, lot_size >= 1 and "
                             "target_orders >= 1")
        if not 0 <= ins.instrument_id < 2**32 or not 0 <= ins.publisher_id < 2**16:
            raise ArgumentError(f"{ins.symbol}: instrument_id must fit u32, publisher_id u16")
    return books


def _gap_params(events_per_second: float) -> tuple[float, float, float]:
    """(burst mean, slow mean, max gap) in ns for a mean event rate."""
    if not events_per_second > 0:
        raise ArgumentError(f"events_per_second must be > 0, got {events_per_second}")
    mean = 1e9 / events_per_second
    burst = min(20_000.0, 0.25 * mean)
    slow = (mean - 0.4 * burst) / 0.6
    return burst, slow, 10.0 * slow


def _mix64(x: int) -> int:
    """SplitMix64 finalizer of ``x`` (mod 2**64): the kernel's initial random state."""
    z = (x + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


class _State:
    """All generator state as flat NumPy arrays (continues across chunks)."""

    def __init__(self, n_records: int, seed: int, books: list[SynthInstrument],
                 snapshot_every: int | None, start_ns: int, events_per_second: float,
                 max_live_per_book: int):
        nb = len(books)
        cap = max(8, int(max_live_per_book) // 2)
        pubs = sorted({int(i.publisher_id) for i in books})
        gs = np.zeros(G_SEQ0 + len(pubs), np.int64)
        gs[G_TS] = int(start_ns)
        gs[G_TOTAL] = int(n_records)
        gs[G_SNAP_EVERY] = int(snapshot_every or 0)
        gs[G_NEXT_SNAP] = int(snapshot_every or 0)
        gs[G_CAP] = cap
        gs[G_MAXEV] = max(1 + 2 * cap, MAX_TRADE_RECORDS)
        gs[G_SEQ0:] = [1_000_000 * (p + 1) for p in range(len(pubs))]
        w = np.array([float(i.weight) for i in books])
        cw = np.cumsum(w) / w.sum()
        cw[-1] = 1.0
        self.fl = np.concatenate([np.array(_gap_params(events_per_second)), cw])
        self.rng = np.array([_mix64(int(seed))], np.uint64)
        bk = np.zeros((nb, B_NFIELDS), np.int64)
        for b, ins in enumerate(books):
            ticks = max(1, (int(ins.start_price) + int(ins.tick) // 2) // int(ins.tick))
            bk[b, B_IID] = ins.instrument_id
            bk[b, B_PUB] = ins.publisher_id
            bk[b, B_TOB] = int(bool(ins.tob))
            bk[b, B_REF] = -1
            if ins.tob:
                for c, other in enumerate(books):
                    if not other.tob and other.instrument_id == ins.instrument_id:
                        bk[b, B_REF] = c
                        break
            bk[b, B_LOT] = ins.lot_size
            bk[b, B_TICK] = ins.tick
            bk[b, B_TARGET] = ins.target_orders
            bk[b, B_SEQ] = G_SEQ0 + pubs.index(int(ins.publisher_id))
            bk[b, B_M2] = 2 * ticks + 1   # mid between two ticks: a one-tick spread
            bk[b, B_M2MIN] = max(8, (2 * ticks) // 5)
            bk[b, B_M2MAX] = max(bk[b, B_M2MIN] + 16, 10 * ticks)
            bk[b, B_OID] = 6_400_000_000_000 + b * 100_000_000_000
            bk[b, B_TSEV] = int(start_ns)
        self.gs = gs
        self.bk = bk
        self.od = np.zeros((nb, 2, 4, cap), np.int64)
        self.scr = np.zeros((3, max(cap, MAX_FILLS)), np.int64)
        self.pend = np.zeros(int(gs[G_MAXEV]), MBO_KERNEL_DTYPE)

    def fill(self, out: np.ndarray) -> None:
        _fill(out, self.pend, self.gs, self.fl, self.rng, self.bk, self.od, self.scr)


def _check_common(n_records: int, chunk_records: int, clear_snapshot_every: int | None
                  ) -> None:
    if int(n_records) < 0:
        raise ArgumentError(f"n_records must be >= 0, got {n_records}")
    if int(chunk_records) < 1:
        raise ArgumentError(f"chunk_records must be >= 1, got {chunk_records}")
    if clear_snapshot_every is not None and int(clear_snapshot_every) < 1:
        raise ArgumentError("clear_snapshot_every must be None or >= 1 (records), got "
                         f"{clear_snapshot_every}")


def generate(n_records: int, *, seed: int = 0,
             instruments: Sequence[SynthInstrument] | None = None,
             clear_snapshot_every: int | None = None, tob_publisher: bool = True,
             start_ns: int = DEFAULT_START_NS, chunk_records: int = 1 << 20,
             events_per_second: float = _DEFAULT_EVENTS_PER_SECOND,
             max_live_per_book: int = 5000) -> Iterator[np.ndarray]:
    """Stream a synthetic MBO feed as chunks of records (``MBO_DTYPE``).

    Parameters
    ----------
    n_records : int
        Total number of records yielded (exactly). The stream ends on a complete event.
    seed : int
        Random seed; the same arguments give byte-identical records, whatever
        ``chunk_records`` is.
    instruments : sequence of SynthInstrument, optional
        The books to simulate; default :data:`DEFAULT_INSTRUMENTS` (+
        :data:`TOB_INSTRUMENT` when ``tob_publisher``).
    clear_snapshot_every : int, optional
        Every ~this many records (count), one full-depth book (round robin) is re-published
        as an ``R`` clear plus ``F_SNAPSHOT`` adds. None: never.
    tob_publisher : bool
        Include the top-of-book-only publisher; False also drops ``tob=True`` entries of
        ``instruments``.
    start_ns : int
        ``ts_recv`` origin, ns since the UNIX epoch (UTC); default 2025-01-02 14:30 UTC.
    chunk_records : int
        Records per yielded chunk (the last may be shorter). Memory is O(chunk_records).
    events_per_second : float
        Mean event rate over all books (events/s of ``ts_recv``); gaps are bursty.
    max_live_per_book : int
        Cap on live orders per book (half per side); bounds memory and snapshot size.

    Yields
    ------
    numpy.ndarray
        A fresh array of ``MBO_DTYPE`` records per chunk.
    """
    _check_common(n_records, chunk_records, clear_snapshot_every)
    books = _resolve_instruments(instruments, tob_publisher)
    if int(max_live_per_book) < 16:
        raise ArgumentError(f"max_live_per_book must be >= 16, got {max_live_per_book}")
    if int(start_ns) < 0:
        raise ArgumentError(f"start_ns must be >= 0 (ns since the UNIX epoch), got {start_ns}")
    state = _State(int(n_records), seed, books, clear_snapshot_every, start_ns,
                   events_per_second, max_live_per_book)
    return _iterate(state, int(n_records), int(chunk_records))


def _iterate(state: _State, n_records: int, chunk_records: int) -> Iterator[np.ndarray]:
    done = 0
    while done < n_records:
        k = min(chunk_records, n_records - done)
        out = np.empty(k, MBO_KERNEL_DTYPE)
        state.fill(out)
        done += k
        yield out.view(MBO_DTYPE)


def synth_records(n_records: int, **kw) -> np.ndarray:
    """All ``n_records`` records of :func:`generate` in one ``MBO_DTYPE`` array.

    For small streams (the array takes 56 bytes per record); keyword arguments are
    those of :func:`generate`.
    """
    chunks = list(generate(n_records, **kw))
    if not chunks:
        return np.zeros(0, MBO_DTYPE)
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks)


def _symbols(books: Sequence[SynthInstrument]) -> dict[int, str]:
    out: dict[int, str] = {}
    for ins in books:
        out.setdefault(int(ins.instrument_id), ins.symbol)
    return out


def write_synth(path: str | os.PathLike, n_records: int, *, seed: int = 0,
                progress: bool | None = None, **kw) -> Path:
    """Generate ``n_records`` records and write them as a DBN file; returns the path.

    A ``.zst`` suffix writes Zstandard-compressed DBN. The metadata maps each
    instrument_id to its symbol; its ``end`` (ns) is an upper bound of the last
    ``ts_recv``. ``progress`` shows a tqdm bar (None: only when ``n_records >= 5M``).
    Other keyword arguments are those of :func:`generate`. The file appears under its
    final name only when complete.
    """
    from .dbn import DbnWriter

    chunk_records = int(kw.get("chunk_records", 1 << 20))
    _check_common(n_records, chunk_records, kw.get("clear_snapshot_every"))
    books = _resolve_instruments(kw.get("instruments"), kw.get("tob_publisher", True))
    start = int(kw.get("start_ns", DEFAULT_START_NS))
    _, _, max_gap = _gap_params(kw.get("events_per_second", _DEFAULT_EVENTS_PER_SECOND))
    end = start + int(n_records) * (int(max_gap) + 1) + 1
    if progress is None:
        progress = n_records >= _PROGRESS_MIN_RECORDS
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(n_records), unit="rec", unit_scale=True,
                   desc=f"synth {Path(path).name}", leave=False)
    log.info("writing %s synthetic MBO records (seed %s) to %s", f"{n_records:,}", seed, path)
    try:
        with DbnWriter(path, dataset="SYNTH.MBO", start=start, end=end,
                       symbols=_symbols(books)) as w:
            for chunk in generate(n_records, seed=seed, **kw):
                w.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return Path(path)


def demo_path(n_records: int = 200_000, seed: int = 7) -> Path:
    """Path of a cached synthetic demo file (plain ``.dbn``), generated on first use.

    The file lives in ``get_settings().cache_dir`` and its name holds ``n_records``,
    ``seed`` and :data:`GENERATOR_VERSION`. It uses the default books, the TOB
    publisher and a snapshot every 50,000 records.
    """
    from ..config import get_settings

    folder = Path(get_settings().cache_dir)
    path = folder / f"synth_mbo_v{GENERATOR_VERSION}_n{int(n_records)}_s{int(seed)}.dbn"
    if path.is_file():
        return path
    log.info("generating demo file %s", path)
    return write_synth(path, n_records, seed=seed, clear_snapshot_every=50_000)
