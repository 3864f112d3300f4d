"""The liquidity grid: resting size by (time bin x price row) of one book, from the kernel.

:class:`LiquidityGrid` is what ``Session.liquidity()`` returns and what the liquidity map
draws. It is computed by :func:`accumulate` (Numba) from

* the levels of the book at the start (``NumbaEngine.book_levels`` after replaying from the
  nearest checkpoint),
* the kernel's level-change log of that book (``NumbaEngine.apply(..., log_key=)``, rows
  ``[record_index, side, price, new_size]``),
* the best bid/ask the kernel writes at every F_LAST record (``levels=1``),
* the records themselves (times, flags, actions, prices, sizes, sides of trades),

chunk by chunk: nothing is allocated per record and the cost is the window's records.

What a cell means
-----------------
A *state* of the book exists only at an F_LAST record **of that book**; it holds from that
record's ``ts_recv`` until the next state of the same book (the last one until the window
end). Records of the book between two F_LAST records change the book but are never shown
on their own. Before the first state of the book (in the stream) there is nothing to show:
those cells are NaN. The state in effect at the window start (the last state before it) holds
from the window start. Crossed and locked books are shown exactly as they are (bid rows
above ask rows); nothing is uncrossed.

For time bin ``b = [t_edges[b], t_edges[b+1])`` (ns) and price row
``r = [price_edges_fixed[r], price_edges_fixed[r+1])`` (fixed 1e-9; a row is ``tick_multiple``
ticks wide):

* ``bid_twa[b, r]`` / ``ask_twa``: time-weighted mean over the part of the bin covered by
  states of the total resting size (lots) of the levels of that side whose price falls in
  the row; NaN where no state covers the bin.
* ``bid_max`` / ``ask_max``: the largest such total among the states that hold at some
  instant of the bin (a state replaced within the same nanosecond counts at that instant).
* ``buy_volume`` / ``sell_volume``: traded lots of the book's Trade records (``ts_recv`` in
  the bin, price in the row) by aggressor side (``side`` B = buyer-initiated, A =
  seller-initiated; side N trades are in neither).
* ``bid_open/high/low/close`` and the ``ask_*`` ones (per bin): the best price of the state
  in effect at the bin start (or the first state in the bin), the highest and lowest best
  price over the states that hold in the bin, and the one in effect at the bin end. NaN where
  no state covers the bin or the side is empty.

``large_orders``: resting orders of the book with ``size >= k x`` the median size of the
book's Add records in the window (``k = 5`` by default), one row per episode: from the time
the order became that large at that price (its add time if it was resting at the window start)
until it was cancelled, filled, modified below the threshold or to another price, or the book
was cleared (clipped to the window end if it was still resting); at most
:data:`MAX_LARGE_ORDERS` episodes, the largest. Top-of-book publishers (F_TOB) have no
orders, so none.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numba import njit

from ..io.records import FIXED_PRICE_SCALE, UNDEF_PRICE

__all__ = ["LiquidityGrid", "GridAccumulator", "KINDS", "time_edges", "price_grid",
           "large_order_episodes", "resting_orders", "LARGE_ORDER_K", "MAX_LARGE_ORDERS"]

#: Arrays of :meth:`LiquidityGrid.to_frame`: (bins, rows) cell kinds.
KINDS = ("bid_twa", "ask_twa", "bid_max", "ask_max", "buy_volume", "sell_volume")
#: Large order threshold: ``size >= LARGE_ORDER_K x median add size`` of the window.
LARGE_ORDER_K = 5.0
#: At most this many large-order episodes are returned (the largest).
MAX_LARGE_ORDERS = 5000

_UNDEF = np.int64(UNDEF_PRICE)
_J = dict(cache=True, nogil=True)

# ist (int64 scalars of an accumulation) slots
I_HCOUNT0 = 0  # prices in the bid hash
I_HCOUNT1 = 1  # prices in the ask hash
I_HAS_STATE = 2  # 1 once a state of the book exists
I_TB = 3  # bin of the last time seen
I_TLAST = 4  # last time seen (monotone clamp)
I_TFIRST = 5  # time of the first state (or t0)
I_ND = 6  # dirty rows on the stack
I_BID = 7  # best bid of the state in effect (fixed, UNDEF = empty)
I_ASK = 8
I_BBO_BIN = 9  # last bin where the state in effect was registered in the BBO path
I_STATES = 10  # states of the book seen in the window (incl. pre-window records)
I_RECORDS = 11  # records scanned
N_IST = 12


@dataclass
class LiquidityGrid:
    """Resting liquidity of one book on a (time bin x price row) grid; see the module doc.

    Attributes
    ----------
    t_edges : int64 (bins + 1,)
        Bin edges, ns since the epoch (UTC); bin ``b`` is ``[t_edges[b], t_edges[b+1])``.
    price_edges : float64 (rows + 1,)
        Row edges in currency units; ``price_edges_fixed`` the same in fixed 1e-9 (int64).
    tick : float
        The instrument's price increment; rows are ``tick_multiple`` ticks wide.
    bid_twa, ask_twa, bid_max, ask_max : float64 (bins, rows)
        Time-weighted mean / max resting size (lots); NaN where no state exists.
    buy_volume, sell_volume : float64 (bins, rows)
        Traded lots by aggressor side.
    bid_open ... ask_close : float64 (bins,)
        BBO path per bin (currency units; NaN when empty).
    large_orders : DataFrame
        ``ts_start``, ``ts_end`` (ns), ``side`` ('B'/'A'), ``price`` (float), ``size``
        (lots, the largest during the episode), ``order_id``.
    """

    t_edges: np.ndarray
    price_edges: np.ndarray
    price_edges_fixed: np.ndarray
    tick: float
    tick_multiple: int
    bid_twa: np.ndarray
    ask_twa: np.ndarray
    bid_max: np.ndarray
    ask_max: np.ndarray
    buy_volume: np.ndarray
    sell_volume: np.ndarray
    bid_open: np.ndarray
    bid_high: np.ndarray
    bid_low: np.ndarray
    bid_close: np.ndarray
    ask_open: np.ndarray
    ask_high: np.ndarray
    ask_low: np.ndarray
    ask_close: np.ndarray
    large_orders: pd.DataFrame
    instrument_id: int = 0
    publisher_id: int = 0
    records: int = 0
    states: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(time bins, price rows)."""
        return self.bid_twa.shape

    @property
    def t_start(self) -> pd.Timestamp:
        return pd.Timestamp(int(self.t_edges[0]), tz="UTC")

    @property
    def t_end(self) -> pd.Timestamp:
        return pd.Timestamp(int(self.t_edges[-1]), tz="UTC")

    @property
    def price_centers(self) -> np.ndarray:
        """Row centres (currency units)."""
        return (self.price_edges[:-1] + self.price_edges[1:]) / 2

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the large-order frame included)."""
        n = sum(getattr(self, k).nbytes for k in KINDS)
        n += sum(getattr(self, f"{s}_{p}").nbytes for s in ("bid", "ask")
                 for p in ("open", "high", "low", "close"))
        n += self.t_edges.nbytes + self.price_edges.nbytes + self.price_edges_fixed.nbytes
        return int(n + self.large_orders.memory_usage(index=False).sum())

    def to_frame(self, kind: str = "bid_twa") -> pd.DataFrame:
        """One cell array as a DataFrame: UTC DatetimeIndex of bin starts x float price
        columns (row lower edges). ``kind`` is one of :data:`KINDS`, or ``"bbo"`` for the
        per-bin BBO path (columns ``bid_open`` ... ``ask_close``)."""
        idx = pd.DatetimeIndex(self.t_edges[:-1].astype("datetime64[ns]")).tz_localize("UTC")
        idx.name = "time"
        if kind == "bbo":
            cols = {f"{s}_{p}": getattr(self, f"{s}_{p}") for s in ("bid", "ask")
                    for p in ("open", "high", "low", "close")}
            return pd.DataFrame(cols, index=idx)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or 'bbo', got {kind!r}")
        cols = pd.Index(np.round(self.price_edges[:-1], 9), name="price")
        return pd.DataFrame(getattr(self, kind), index=idx, columns=cols, copy=False)

    def __repr__(self) -> str:
        b, r = self.shape
        return (f"LiquidityGrid({b} bins x {r} rows, {self.t_start} .. {self.t_end}, "
                f"prices {self.price_edges[0]:.6g} .. {self.price_edges[-1]:.6g} "
                f"(row {self.tick_multiple} x tick {self.tick:g}), book {self.instrument_id}@"
                f"{self.publisher_id}, {self.records:,} records, {len(self.large_orders)} "
                f"large orders, {self.nbytes / 2**20:.1f} MiB)")

    def _repr_html_(self) -> str:
        b, r = self.shape
        with np.errstate(all="ignore"):
            touch_bid = np.nanmean(self.bid_close) if np.isfinite(self.bid_close).any() \
                else float("nan")
        rows = [("window", f"{self.t_start} .. {self.t_end}"),
                ("grid", f"{b:,} time bins x {r:,} price rows"),
                ("prices", f"{self.price_edges[0]:.6g} .. {self.price_edges[-1]:.6g} "
                           f"(row = {self.tick_multiple} x tick {self.tick:g})"),
                ("book", f"{self.instrument_id}@{self.publisher_id}"),
                ("records", f"{self.records:,} ({self.states:,} states)"),
                ("mean close bid", f"{touch_bid:.6g}"),
                ("large orders", f"{len(self.large_orders):,}"),
                ("memory", f"{self.nbytes / 2**20:.1f} MiB")]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        return f"<b>LiquidityGrid</b><table>{body}</table>"


# --------------------------------------------------------------------------- grids


def time_edges(t0: int, t1: int, bins: int) -> np.ndarray:
    """``bins + 1`` int64 edges from ``t0`` to ``t1`` (ns), as even as integers allow."""
    if bins < 1 or t1 <= t0:
        raise ValueError(f"need bins >= 1 and t1 > t0, got bins={bins}, [{t0}, {t1})")
    span = int(t1) - int(t0)
    k = np.arange(bins + 1, dtype=np.int64)
    if span < 2**62 // max(bins, 1):
        return np.int64(t0) + (k * span) // bins
    return np.int64(t0) + (k * (span // bins))  # pragma: no cover - spans beyond centuries


def price_grid(lo: int, hi: int, rows: int, tick: int, tick_multiple: int | None = None
               ) -> tuple[np.ndarray, int]:
    """Row edges (fixed 1e-9, int64) covering ``[lo, hi]`` with rows a whole number of
    ticks wide, aligned on the tick; returns ``(edges, tick_multiple)``.

    Without ``tick_multiple`` the smallest multiple whose ``rows`` rows cover the range is
    used and the range is centred; with it, ``rows`` rows start at ``lo`` (rounded down to
    the tick)."""
    tick = max(int(tick), 1)
    rows = max(int(rows), 1)
    lo, hi = int(lo), max(int(hi), int(lo))
    if tick_multiple is None:
        span_ticks = (hi - lo) // tick + 1
        m = max(1, -(-span_ticks // rows))
        width = rows * m * tick
        centre = (lo + hi) // 2
        start = ((centre - width // 2) // tick) * tick
        if start > lo:
            start = (lo // tick) * tick
    else:
        m = max(1, int(tick_multiple))
        start = (lo // tick) * tick
    edges = np.int64(start) + np.arange(rows + 1, dtype=np.int64) * np.int64(m * tick)
    return edges, m


# --------------------------------------------------------------------------- Numba core


@njit(**_J)
def _hslot(hk, s, price, mask):
    h = (np.uint64(price) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(17)
    i = np.int64(h & np.uint64(mask))
    while True:
        k = hk[s, i]
        if k == price or k == UNDEF_PRICE:
            return i
        i = (i + 1) & mask


@njit(**_J)
def rehash(hk, hv, nk, nv):
    """Move the price -> size tables ``hk/hv`` (2, cap) into larger empty ``nk/nv``."""
    mask = nk.shape[1] - 1
    for s in range(2):
        for i in range(hk.shape[1]):
            if hk[s, i] != UNDEF_PRICE:
                j = _hslot(nk, s, hk[s, i], mask)
                nk[s, j] = hk[s, i]
                nv[s, j] = hv[s, i]


@njit(**_J)
def _set_level(hk, hv, ist, work, dirty, dstack, s, price, size, plo, row_w, nrows):
    """Level ``price`` of side ``s`` now has ``size`` lots (working book)."""
    if price < plo:
        return
    r = (price - plo) // row_w
    if r >= nrows:
        return
    mask = hk.shape[1] - 1
    i = _hslot(hk, s, price, mask)
    if hk[s, i] == UNDEF_PRICE:
        hk[s, i] = price
        hv[s, i] = 0
        ist[I_HCOUNT0 + s] += 1
    old = hv[s, i]
    if old == size:
        return
    hv[s, i] = size
    work[s, r] += size - old
    if dirty[s, r] == 0:
        dirty[s, r] = 1
        dstack[ist[I_ND]] = s * nrows + r
        ist[I_ND] += 1


@njit(**_J)
def _flush(edges, sums, mx, s, r, v, ta, b, t):
    """Row ``r`` of side ``s`` held ``v`` lots over ``[ta, t)`` starting in bin ``b``;
    add it to the time integrals and maxima (the bin of ``ta`` always counts)."""
    nb = edges.shape[0] - 1
    fv = np.float64(v)
    while True:
        be = edges[b + 1]
        se = t if t < be else be
        if se > ta and v != 0:
            sums[s, b, r] += fv * np.float64(se - ta)
        if fv > mx[s, b, r]:
            mx[s, b, r] = fv
        if t <= be or b >= nb - 1:
            break
        b += 1
        ta = be


@njit(**_J)
def _bbo_register(bbo, opened, b, bid, ask):
    """The state with best prices ``bid``/``ask`` (fixed, UNDEF = empty) holds in bin b."""
    fb = np.nan if bid == UNDEF_PRICE else bid / 1e9
    fa = np.nan if ask == UNDEF_PRICE else ask / 1e9
    if opened[b] == 0:
        opened[b] = 1
        bbo[0, b] = fb
        bbo[4, b] = fa
    if fb == fb:
        if not (bbo[1, b] >= fb):
            bbo[1, b] = fb
        if not (bbo[2, b] <= fb):
            bbo[2, b] = fb
    if fa == fa:
        if not (bbo[5, b] >= fa):
            bbo[5, b] = fa
        if not (bbo[6, b] <= fa):
            bbo[6, b] = fa
    bbo[3, b] = fb
    bbo[7, b] = fa


@njit(**_J)
def init_levels(hk, hv, ist, work, cur, dirty, dstack, bid_px, bid_sz, ask_px, ask_sz,
                has_state, plo, row_w, nrows):
    """Load the book's levels at the start (``book_levels``); with ``has_state`` they are
    the state in effect at the window start, else only the working book."""
    for k in range(bid_px.shape[0]):
        _set_level(hk, hv, ist, work, dirty, dstack, 0, bid_px[k], bid_sz[k], plo, row_w,
                   nrows)
    for k in range(ask_px.shape[0]):
        _set_level(hk, hv, ist, work, dirty, dstack, 1, ask_px[k], ask_sz[k], plo, row_w,
                   nrows)
    if has_state:
        for q in range(ist[I_ND]):
            s = dstack[q] // nrows
            r = dstack[q] - s * nrows
            dirty[s, r] = 0
            cur[s, r] = work[s, r]
        ist[I_ND] = 0
        ist[I_HAS_STATE] = 1
        ist[I_BID] = bid_px[0] if bid_px.shape[0] else UNDEF_PRICE
        ist[I_ASK] = ask_px[0] if ask_px.shape[0] else UNDEF_PRICE


@njit(**_J)
def accumulate(recs, base, key, log, bbo_bid, bbo_ask, edges, plo, row_w, nrows,
               hk, hv, ist, work, cur, last_t, last_b, dirty, dstack,
               sums, mx, vol, bbo, opened):
    """Fold one chunk of records (``recs``, stream index of ``recs[0]`` = ``base``) into
    the grid accumulators. ``log``: the kernel's level log of the book for these records;
    ``bbo_bid/bbo_ask``: best prices the kernel wrote at each F_LAST record of the chunk
    (all books, in order). ``key = instrument_id << 16 | publisher_id``. All other
    arguments are the accumulator state (see :class:`GridAccumulator`)."""
    nb = edges.shape[0] - 1
    t0 = edges[0]
    nlog = log.shape[0]
    q = 0  # next log row
    p = 0  # next F_LAST row of the kernel output
    tb = ist[I_TB]
    tlast = ist[I_TLAST]
    n = recs.shape[0]
    for i in range(n):
        r = recs[i]
        gi = base + i
        while q < nlog and log[q, 0] == gi:
            _set_level(hk, hv, ist, work, dirty, dstack, log[q, 1], log[q, 2], log[q, 3],
                       plo, row_w, nrows)
            q += 1
        is_last = (r.flags & 0x80) != 0
        mine = ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key
        if not mine:
            if is_last:
                p += 1
            continue
        traw = np.int64(r.ts_recv)
        t = traw
        if t < tlast:
            t = tlast
        if t < t0:
            t = t0
        tlast = t
        while tb < nb - 1 and edges[tb + 1] <= t:
            tb += 1
        if r.action == 84 and traw >= t0:  # 'T' trade
            px = r.price
            if px != UNDEF_PRICE and px >= plo:
                row = (px - plo) // row_w
                if row < nrows:
                    if r.side == 66:
                        vol[0, tb, row] += r.size
                    elif r.side == 65:
                        vol[1, tb, row] += r.size
        if is_last:
            # publish: the working book becomes the state in effect at t
            for k in range(ist[I_ND]):
                s = dstack[k] // nrows
                rr = dstack[k] - s * nrows
                dirty[s, rr] = 0
                if work[s, rr] != cur[s, rr]:
                    _flush(edges, sums, mx, s, rr, cur[s, rr], last_t[s, rr], last_b[s, rr], t)
                    cur[s, rr] = work[s, rr]
                    last_t[s, rr] = t
                    last_b[s, rr] = tb
            ist[I_ND] = 0
            if ist[I_HAS_STATE]:
                for b in range(ist[I_BBO_BIN] + 1, tb + 1):
                    _bbo_register(bbo, opened, b, ist[I_BID], ist[I_ASK])
            else:
                ist[I_HAS_STATE] = 1
                ist[I_TFIRST] = t
            ist[I_BID] = bbo_bid[p]
            ist[I_ASK] = bbo_ask[p]
            _bbo_register(bbo, opened, tb, ist[I_BID], ist[I_ASK])
            ist[I_BBO_BIN] = tb
            ist[I_STATES] += 1
            p += 1
    ist[I_TB] = tb
    ist[I_TLAST] = tlast
    ist[I_RECORDS] += n
    return q, p


@njit(**_J)
def finish(edges, ist, cur, last_t, last_b, sums, mx, bbo, opened, out_twa, out_max):
    """Close the window: every row's value holds until the window end; write the
    time-weighted means / maxima (NaN where no state covers a bin) into ``out_*``
    (2, bins, rows) and complete the BBO path."""
    nb = edges.shape[0] - 1
    nrows = cur.shape[1]
    t_end = edges[nb]
    if ist[I_HAS_STATE] == 0:
        for s in range(2):
            for b in range(nb):
                for r in range(nrows):
                    out_twa[s, b, r] = np.nan
                    out_max[s, b, r] = np.nan
        return
    for s in range(2):
        for r in range(nrows):
            _flush(edges, sums, mx, s, r, cur[s, r], last_t[s, r], last_b[s, r], t_end)
    for b in range(ist[I_BBO_BIN] + 1, nb):
        _bbo_register(bbo, opened, b, ist[I_BID], ist[I_ASK])
    tf = ist[I_TFIRST]
    for b in range(nb):
        lo = edges[b] if edges[b] > tf else tf
        cov = edges[b + 1] - lo
        for s in range(2):
            if cov <= 0:
                for r in range(nrows):
                    out_twa[s, b, r] = np.nan
                    out_max[s, b, r] = np.nan
            else:
                c = np.float64(cov)
                for r in range(nrows):
                    out_twa[s, b, r] = sums[s, b, r] / c
                    out_max[s, b, r] = mx[s, b, r]


class GridAccumulator:
    """Python holder of one grid pass's state: feed it the start levels, then chunks.

    >>> acc = GridAccumulator(t_edges, price_edges_fixed, key)         # doctest: +SKIP
    >>> acc.start(bid_px, bid_sz, ask_px, ask_sz, has_state=True)     # doctest: +SKIP
    >>> acc.add(records_chunk, base, frames.level_log, bid_best, ask_best)  # doctest: +SKIP
    >>> twa, mx, vol, bbo = acc.finish()                              # doctest: +SKIP
    """

    def __init__(self, t_edges: np.ndarray, price_edges_fixed: np.ndarray, key: int):
        self.edges = np.ascontiguousarray(t_edges, dtype=np.int64)
        pe = np.ascontiguousarray(price_edges_fixed, dtype=np.int64)
        self.plo = np.int64(pe[0])
        self.nrows = len(pe) - 1
        self.row_w = np.int64(pe[1] - pe[0])
        self.key = np.int64(key)
        nb, nr = len(self.edges) - 1, self.nrows
        self.hk = np.full((2, 1024), _UNDEF, np.int64)
        self.hv = np.zeros((2, 1024), np.int64)
        self.ist = np.zeros(N_IST, np.int64)
        self.ist[I_TLAST] = self.edges[0]
        self.ist[I_TFIRST] = self.edges[0]
        self.ist[I_BID] = _UNDEF
        self.ist[I_ASK] = _UNDEF
        self.ist[I_BBO_BIN] = -1
        self.work = np.zeros((2, nr), np.int64)
        self.cur = np.zeros((2, nr), np.int64)
        self.last_t = np.full((2, nr), self.edges[0], np.int64)
        self.last_b = np.zeros((2, nr), np.int64)
        self.dirty = np.zeros((2, nr), np.int8)
        self.dstack = np.zeros(2 * nr, np.int64)
        self.sums = np.zeros((2, nb, nr), np.float64)
        self.mx = np.zeros((2, nb, nr), np.float64)
        self.vol = np.zeros((2, nb, nr), np.float64)
        self.bbo = np.full((8, nb), np.nan)
        self.opened = np.zeros(nb, np.int8)

    def _room(self, extra: int) -> None:
        cap = self.hk.shape[1]
        need = int(max(self.ist[I_HCOUNT0], self.ist[I_HCOUNT1])) + int(extra)
        if need * 2 <= cap:
            return
        while need * 2 > cap:
            cap *= 2
        nk = np.full((2, cap), _UNDEF, np.int64)
        nv = np.zeros((2, cap), np.int64)
        rehash(self.hk, self.hv, nk, nv)
        self.hk, self.hv = nk, nv

    def start(self, bid_px: np.ndarray, bid_sz: np.ndarray, ask_px: np.ndarray,
              ask_sz: np.ndarray, has_state: bool) -> None:
        """The book's levels (all of them, fixed prices, lots) where the pass starts."""
        bid_px, ask_px = (np.ascontiguousarray(x, dtype=np.int64) for x in (bid_px, ask_px))
        bid_sz, ask_sz = (np.ascontiguousarray(x, dtype=np.int64) for x in (bid_sz, ask_sz))
        self._room(len(bid_px) + len(ask_px))
        init_levels(self.hk, self.hv, self.ist, self.work, self.cur, self.dirty, self.dstack,
                    bid_px, bid_sz, ask_px, ask_sz, bool(has_state), self.plo, self.row_w,
                    self.nrows)

    def add(self, recs: np.ndarray, base: int, level_log: np.ndarray, bbo_bid: np.ndarray,
            bbo_ask: np.ndarray) -> None:
        """Fold records ``recs`` (kernel view; stream index of the first = ``base``)."""
        self._room(len(level_log))
        q, p = accumulate(recs, np.int64(base), self.key, level_log, bbo_bid, bbo_ask,
                          self.edges, self.plo, self.row_w, self.nrows, self.hk, self.hv,
                          self.ist, self.work, self.cur, self.last_t, self.last_b, self.dirty,
                          self.dstack, self.sums, self.mx, self.vol, self.bbo, self.opened)
        if q != len(level_log) or p != len(bbo_bid):
            raise ValueError(
                f"grid: level log / kernel output do not match the records at {base} "
                f"(log rows used {q} of {len(level_log)}, states {p} of {len(bbo_bid)})")

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(twa (2, bins, rows), max (2, bins, rows), volume (2, bins, rows), bbo (8, bins)),
        written over the accumulator's own arrays: call once."""
        # in place: the integrals become means, the maxima get their NaNs (no new arrays)
        finish(self.edges, self.ist, self.cur, self.last_t, self.last_b, self.sums, self.mx,
               self.bbo, self.opened, self.sums, self.mx)
        return self.sums, self.mx, self.vol, self.bbo

    @property
    def states(self) -> int:
        return int(self.ist[I_STATES])

    @property
    def records(self) -> int:
        return int(self.ist[I_RECORDS])


# --------------------------------------------------------------------------- large orders


@njit(**_J)
def _median_add_size(recs, lo, hi, key, t0, step):
    """Median size of the book's Add records (not F_TOB) among every ``step``-th record of
    ``recs[lo:hi]`` with ``ts_recv >= t0`` (a size histogram; sizes >= 65535 share the last
    bucket, which only matters when more than half the adds are that large). 0 when there
    is none."""
    hist = np.zeros(65536, np.int64)
    n = 0
    for i in range(lo, hi, step):
        r = recs[i]
        if r.action != 65 or (r.flags & 0x40) != 0:
            continue
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) != key:
            continue
        if np.int64(r.ts_recv) < t0:
            continue
        s = r.size if r.size < 65535 else 65535
        hist[s] += 1
        n += 1
    if n == 0:
        return 0.0
    # median as numpy defines it: mean of the two middle values for even n
    k1 = (n - 1) // 2
    k2 = n // 2
    c = 0
    v1 = -1
    v2 = -1
    for s in range(65536):
        c += hist[s]
        if v1 < 0 and c > k1:
            v1 = s
        if c > k2:
            v2 = s
            break
    return (v1 + v2) / 2.0


@njit(**_J)
def _emit(out, nout, lv, sl, t, oid):
    """Append the episode of live slot ``sl`` ending at ``t``; returns (out, nout)."""
    if nout == out.shape[0]:
        o2 = np.zeros((2 * nout, 6), np.int64)
        o2[:nout] = out[:nout]
        out = o2
    out[nout, 0] = lv[sl, 3]
    out[nout, 1] = t
    out[nout, 2] = lv[sl, 0]
    out[nout, 3] = lv[sl, 1]
    out[nout, 4] = lv[sl, 4]
    out[nout, 5] = oid
    return out, nout + 1


@njit(**_J)
def _oh(oid, mask):
    h = (np.uint64(oid) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(21)
    return np.int64(h & np.uint64(mask))


@njit(**_J)
def _ofind(ht, oid):
    """Row of ``oid`` in the order table ``ht`` (rows ``(order_id, slot)``, slot -1 =
    empty), or -1."""
    mask = ht.shape[0] - 1
    i = _oh(oid, mask)
    while ht[i, 1] >= 0:
        if ht[i, 0] == oid:
            return i
        i = (i + 1) & mask
    return np.int64(-1)


@njit(**_J)
def _oput(ht, oid, slot):
    mask = ht.shape[0] - 1
    i = _oh(oid, mask)
    while ht[i, 1] >= 0:
        i = (i + 1) & mask
    ht[i, 0] = oid
    ht[i, 1] = slot


@njit(**_J)
def _odel(ht, i):
    """Empty row ``i`` (backward-shift deletion, no tombstones)."""
    mask = ht.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ht[j, 1] < 0:
            break
        k = _oh(ht[j, 0], mask)
        if ((j - k) & mask) >= ((j - i) & mask):
            ht[i, 0] = ht[j, 0]
            ht[i, 1] = ht[j, 1]
            i = j
    ht[i, 1] = -1


@njit(**_J)
def _close_side(ht, nlive, lv, free, nfree, out, nout, side, t):
    """End the episodes of every live large order (``side`` 2) or of one side (0/1).
    Returns (out, nout, nfree, nlive)."""
    if nlive == 0:
        return out, nout, nfree, nlive
    i = 0
    while i < ht.shape[0]:
        sl = ht[i, 1]
        if sl >= 0 and (side == 2 or lv[sl, 0] == side):
            out, nout = _emit(out, nout, lv, sl, t, ht[i, 0])
            free[nfree] = sl
            nfree += 1
            nlive -= 1
            _odel(ht, i)  # a later row may move into i: look at it again
            continue
        i += 1
    return out, nout, nfree, nlive


@njit(**_J)
def _track_large(recs, lo, hi, key, thr, t0, t_end, init_id, init_side, init_px, init_sz,
                 init_ts):
    """Episodes of orders of size >= ``thr`` in ``recs[lo:hi]`` (the book ``key``),
    starting from the large orders resting at ``lo`` (``init_*``). Returns an int64 array
    (ts_start, ts_end, side 0/1, price, size, order_id) of the episodes that overlap
    ``[t0, t_end)``; orders still resting at the end get ``ts_end = t_end``."""
    cap = 64
    while cap < 2 * init_id.shape[0] + 64:
        cap *= 2
    ht = np.full((2 * cap, 2), -1, np.int64)  # order table, at most half full
    lv = np.zeros((cap, 5), np.int64)  # side, price, size, ts_start, max size
    free = np.arange(cap - 1, -1, -1)
    nfree = cap
    nlive = 0
    out = np.zeros((64, 6), np.int64)
    nout = 0
    for k in range(init_id.shape[0]):
        nfree -= 1
        sl = free[nfree]
        lv[sl, 0] = init_side[k]
        lv[sl, 1] = init_px[k]
        lv[sl, 2] = init_sz[k]
        lv[sl, 3] = init_ts[k]
        lv[sl, 4] = init_sz[k]
        _oput(ht, init_id[k], sl)
        nlive += 1
    for i in range(lo, hi):
        r = recs[i]
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) != key:
            continue
        a = r.action
        if a == 82:  # clear
            out, nout, nfree, nlive = _close_side(ht, nlive, lv, free, nfree, out, nout, 2,
                                                  np.int64(r.ts_recv))
            continue
        if a != 65 and a != 67 and a != 77:
            continue
        if a == 65 and (r.flags & 0x40) != 0:  # top-of-book side replacement
            if nlive > 0 and (r.side == 66 or r.side == 65):
                out, nout, nfree, nlive = _close_side(ht, nlive, lv, free, nfree, out, nout,
                                                      0 if r.side == 66 else 1,
                                                      np.int64(r.ts_recv))
            continue
        oid = np.int64(r.order_id)
        row = _ofind(ht, oid) if nlive > 0 else np.int64(-1)
        if a == 67:  # cancel: the live order's side and price
            if row < 0:
                continue
            sl = ht[row, 1]
            new_side = lv[sl, 0]
            new_px = lv[sl, 1]
            new_sz = lv[sl, 2] - np.int64(r.size)
        else:
            new_sz = np.int64(r.size)
            if row < 0 and new_sz < thr:
                continue
            if r.side != 66 and r.side != 65:
                continue
            if r.price == UNDEF_PRICE or (a == 65 and r.size == 0):
                continue
            new_side = np.int64(0) if r.side == 66 else np.int64(1)
            new_px = np.int64(r.price)
        t = np.int64(r.ts_recv)
        if row >= 0:
            sl = ht[row, 1]
            same = lv[sl, 0] == new_side and lv[sl, 1] == new_px and a != 65
            if same and new_sz >= thr:
                lv[sl, 2] = new_sz
                if new_sz > lv[sl, 4]:
                    lv[sl, 4] = new_sz
                continue
            out, nout = _emit(out, nout, lv, sl, t, oid)  # the episode ends here
            _odel(ht, row)
            free[nfree] = sl
            nfree += 1
            nlive -= 1
        if a != 67 and new_sz >= thr:
            if nfree == 0:  # grow the slots and the table
                lv2 = np.zeros((2 * cap, 5), np.int64)
                lv2[:cap] = lv
                free = np.zeros(2 * cap, np.int64)
                free[:cap] = np.arange(2 * cap - 1, cap - 1, -1)
                nfree = cap
                lv = lv2
                ht2 = np.full((4 * cap, 2), -1, np.int64)
                for q in range(ht.shape[0]):
                    if ht[q, 1] >= 0:
                        _oput(ht2, ht[q, 0], ht[q, 1])
                ht = ht2
                cap = 2 * cap
            nfree -= 1
            sl = free[nfree]
            lv[sl, 0] = new_side
            lv[sl, 1] = new_px
            lv[sl, 2] = new_sz
            lv[sl, 3] = t
            lv[sl, 4] = new_sz
            _oput(ht, oid, sl)
            nlive += 1
    out, nout, nfree, nlive = _close_side(ht, nlive, lv, free, nfree, out, nout, 2, t_end)
    m = 0
    for k in range(nout):  # keep the episodes overlapping the window
        if out[k, 1] > t0:
            out[m] = out[k]
            m += 1
    return out[:m].copy()


@njit(**_J)
def _book_orders(oh, ords, b, min_size, out):
    """Live orders of book ``b`` with size >= ``min_size`` from the kernel's order hash
    (rows ``(order_id, book << 32 | slot)``) into ``out`` (n, 5): order_id, side 0/1,
    price, size, add time. Returns the count (call with a large enough ``out``)."""
    n = 0
    for i in range(oh.shape[0]):
        tag = oh[i, 1]
        if tag < 0 or (tag >> 32) != b:
            continue
        o = tag & 0xFFFFFFFF
        if ords[o, 3] < min_size:
            continue
        if n < out.shape[0]:
            out[n, 0] = ords[o, 0]
            out[n, 1] = ords[o, 1] & 1
            out[n, 2] = ords[o, 2]
            out[n, 3] = ords[o, 3]
            out[n, 4] = ords[o, 7]
        n += 1
    return n


def resting_orders(state, instrument_id: int, publisher_id: int, min_size: int = 0
                   ) -> dict[str, np.ndarray]:
    """Orders of one book resting in a kernel :class:`~mbo_lab.book.state.BookState`
    (arrays ``order_id``, ``side`` 0 bid / 1 ask, ``price`` fixed, ``size`` lots,
    ``ts_recv`` ns of the add)."""
    from . import kernel as K

    names = ("order_id", "side", "price", "size", "ts_recv")
    b = state.book_index(instrument_id, publisher_id)
    if b < 0:
        return {n: np.zeros(0, np.int64) for n in names}
    assert (K.O_ID, K.O_SEG, K.O_PX, K.O_SZ, K.O_TS, K.TAG_SHIFT) == (0, 1, 2, 3, 7, 32)
    a = state.arrays
    out = np.zeros((256, 5), np.int64)
    n = _book_orders(a["oh"], a["ords"], np.int64(b), np.int64(min_size), out)
    if n > len(out):
        out = np.zeros((n, 5), np.int64)
        _book_orders(a["oh"], a["ords"], np.int64(b), np.int64(min_size), out)
    return {name: out[:n, j].copy() for j, name in enumerate(names)}


def large_order_episodes(recs: np.ndarray, lo: int, hi: int, key: int, t0: int, t_end: int,
                         resting: dict[str, np.ndarray] | None = None,
                         k: float = LARGE_ORDER_K, threshold: float | None = None,
                         max_rows: int | None = MAX_LARGE_ORDERS
                         ) -> tuple[pd.DataFrame, float]:
    """Large resting orders of one book over records ``recs[lo:hi]`` (kernel view); see the
    module doc. ``resting``: the book's orders resting at ``lo`` (``order_id``, ``side``
    0/1, ``price``, ``size``, ``ts_recv`` arrays). The median add size is exact for up to
    2M records and taken from every 8th record beyond. With more than ``max_rows``
    episodes the largest are kept. Returns (frame, threshold in lots)."""
    if threshold is None:
        step = 1 if hi - lo <= 2_000_000 else 8
        med = float(_median_add_size(recs, lo, hi, np.int64(key), np.int64(t0), step))
        threshold = k * med if med > 0 else float("inf")
    cols = ["ts_start", "ts_end", "side", "price", "size", "order_id"]
    if not np.isfinite(threshold):
        return pd.DataFrame({c: pd.Series([], dtype="int64") for c in cols}), threshold
    thr = int(np.ceil(threshold))
    if resting is None:
        resting = {n: np.zeros(0, np.int64) for n in ("order_id", "side", "price", "size",
                                                      "ts_recv")}
    big = np.asarray(resting["size"]) >= thr
    arr = _track_large(recs, int(lo), int(hi), np.int64(key), np.int64(thr), np.int64(t0),
                       np.int64(t_end),
                       *(np.ascontiguousarray(np.asarray(resting[n])[big], np.int64)
                         for n in ("order_id", "side", "price", "size", "ts_recv")))
    if max_rows is not None and len(arr) > max_rows:
        arr = arr[np.argsort(-arr[:, 4], kind="stable")[:max_rows]]
    arr = arr[np.lexsort((arr[:, 5], arr[:, 0]))] if len(arr) else arr
    df = pd.DataFrame({
        "ts_start": arr[:, 0], "ts_end": np.minimum(arr[:, 1], np.int64(t_end)),
        "side": np.where(arr[:, 2] == 0, "B", "A"),
        "price": arr[:, 3].astype(np.float64) / FIXED_PRICE_SCALE,
        "size": arr[:, 4], "order_id": arr[:, 5].view(np.uint64),
    })
    return df, threshold
