"""Book engines: the Numba kernel and the reference book behind one interface.

An engine keeps the state of every book of a stream between calls, so a stream can be
fed chunk by chunk with results equal to one pass::

    >>> eng = NumbaEngine(levels=10)
    >>> frames = eng.apply(data.records)        # doctest: +SKIP

``make_engine("numba" | "reference")`` picks one by name.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from ..errors import EngineError
from ..io.records import F_LAST, MBO_DTYPE, SIDE_ASK, SIDE_BID, UNDEF_PRICE, kernel_view
from . import kernel as K
from .frames import BookFrames, FrameBuffer
from .reference import COUNTER_NAMES, Market, _iter_fields
from .state import BookState

__all__ = ["Engine", "NumbaEngine", "ReferenceEngine", "make_engine", "ENGINES", "book_key"]

log = logging.getLogger(__name__)

ENGINES = ("numba", "reference")

#: Initial rows of a level-change log (it doubles when full).
LOG_INIT_ROWS = 1 << 12


def book_key(instrument_id: int, publisher_id: int) -> int:
    """The key of one book for ``NumbaEngine.apply(..., log_key=)``:
    ``instrument_id << 16 | publisher_id``."""
    iid, pub = int(instrument_id), int(publisher_id)
    if not (0 <= iid < 2**32 and 0 <= pub < 2**16):
        raise EngineError(f"book_key: instrument_id must be uint32 and publisher_id uint16, "
                          f"got ({iid}, {pub})")
    return (iid << 16) | pub


class Engine(Protocol):
    levels: int
    records_applied: int

    def apply(self, records: np.ndarray, base_index: int | None = None) -> BookFrames: ...

    @property
    def counters(self) -> dict[str, int]: ...


def _check_records(records: np.ndarray) -> np.ndarray:
    if not isinstance(records, np.ndarray) or records.dtype.itemsize != 56 or \
            records.dtype.names is None or "action" not in records.dtype.names:
        raise EngineError(
            "engines take MBO records: a NumPy structured array in Databento's MBO layout "
            "(mbo_lab.MBO_DTYPE); pass MboData.records or load a file with mbo_lab.load()"
        )
    return records


def _readonly(recs: np.ndarray) -> np.ndarray:
    """A read-only kernel view of MBO records: ``load()`` gives read-only arrays, so the
    kernel is compiled (and warmed up) for exactly one record-array type."""
    recs = kernel_view(recs)
    if recs.flags.writeable or type(recs) is not np.ndarray:
        recs = np.ndarray.view(recs, np.ndarray)
        recs.flags.writeable = False
    return recs


class NumbaEngine:
    """The Numba kernel over a :class:`BookState`.

    Parameters
    ----------
    levels : int
        Levels per side written at every F_LAST (1 = BBO).
    state : BookState, optional
        Start from this state (e.g. a checkpoint copy); a new empty one by default.
    trades : bool
        Also collect the record indices of Trade records.
    every : int, optional
        Sample on a time grid: keep only the last state of each book in each ``every``-ns
        bin of ts_recv (bins ``[k * every, (k + 1) * every)``). A bin's states are emitted
        when a later bin starts; call :meth:`flush` after the last records.
    changes_only : bool
        Keep only states whose top ``levels`` (prices, sizes, counts) or cross state differ
        from the book's previous kept state (after grid sampling when both are set).
    reuse : bool
        Opt-in for callers that use each result before the next call (or not at all):
        :meth:`apply` writes every call's states and trade indices into the same buffers
        (grown when a call has more states than they hold) instead of fresh memory, so the
        :class:`BookFrames` (and its ``trades``) returned by one call are **overwritten by
        the next** ``apply`` on this engine -- copy what you keep
        (``fr.copy()``, or ``arr.copy()`` of one array). Fresh memory costs a page
        fault per page on its first write (and a prefault thread on a second core): on
        1M-record chunks of a synthetic day, ``levels=10`` went from 9.9M to 15.2M rec/s
        and from 1.8 to 0.7 s CPU per 10M records, ``levels=1`` from 21M to 24M rec/s.
        Off by default: returned frames then stay valid for good.
    """

    name = "numba"

    def __init__(self, levels: int = 10, state: BookState | None = None, trades: bool = True,
                 *, every: int | None = None, changes_only: bool = False,
                 reuse: bool = False):
        if levels < 1:
            raise EngineError(f"levels must be >= 1, got {levels}")
        if every is not None and int(every) <= 0:
            raise EngineError(f"every must be a positive number of ns, got {every!r}")
        self.levels = int(levels)
        self.state = state if state is not None else BookState()
        self.trades = trades
        self.records_applied = 0
        self.every = 0 if every is None else int(every)
        self.changes_only = bool(changes_only)
        self.reuse = bool(reuse)
        self._out: FrameBuffer | None = None  # the buffers apply() reuses (reuse=True)
        self._out_trades = np.zeros(0, np.int64)
        w = K.SP_HEAD + 6 * self.levels
        self._smp_cur = np.zeros(w, np.int64)
        self._smp_meta = np.zeros(4, np.int64)
        self._smp = (np.zeros((0, w), np.int64), np.zeros((0, w), np.int64),
                     np.zeros(0, np.int64))
        self._fit_sampler()

    @property
    def sampled(self) -> bool:
        return self.every > 0 or self.changes_only

    def _fit_sampler(self) -> None:
        """Sampler rows for every book the state has room for (they grow together)."""
        if not self.sampled:
            return
        nb = len(self.state.arrays["bk_info"])
        pend, last, lst = self._smp
        if len(pend) >= nb:
            return
        w = pend.shape[1]
        new_pend = np.full((nb, w), -1, np.int64)
        new_last = np.full((nb, w), -1, np.int64)
        new_list = np.zeros(nb, np.int64)
        new_pend[: len(pend)] = pend
        new_last[: len(last)] = last
        new_list[: len(lst)] = lst
        self._smp = (new_pend, new_last, new_list)

    @property
    def counters(self) -> dict[str, int]:
        """Anomaly counters since the start (see :mod:`mbo_lab.book.reference`)."""
        return dict(zip(COUNTER_NAMES, self.state.counters.tolist()))

    def apply(self, records: np.ndarray, base_index: int | None = None, *,
              log_key: int | None = None) -> BookFrames:
        """Apply records in order; return the book states at their F_LAST records.

        ``base_index`` is the index of ``records[0]`` in the stream (defaults to the number
        of records applied so far), used for :attr:`BookFrames.index`.

        ``log_key`` (:func:`book_key`) selects one book whose level changes are returned in
        ``frames.level_log``: int64 rows ``[record_index, side (0 bid, 1 ask), price
        (fixed 1e-9), new level size (lots, 0 = level removed)]`` in record order, one per
        change of an aggregated level's size. Without it the log is empty, shape (0, 4).

        With ``reuse=True`` (see the class) the returned frames and trades are views of
        buffers that the next call overwrites; the level log is always a new array.
        """
        recs = _readonly(_check_records(records))
        n_last, n_trades, _ = K.scan_counts(recs)
        cap = n_last if not self.sampled else min(n_last, 1 << 12) + 16
        n_trades = n_trades if self.trades else 0
        if self.reuse:
            buf = self._out
            if buf is None or buf.capacity < cap or buf.levels != self.levels:
                # a little room beyond this call's states: chunks of one size vary a bit
                cap = max(cap, buf.capacity + buf.capacity // 4) if buf is not None else cap
                buf = self._out = FrameBuffer(cap, self.levels, prefault=not self.sampled)
            trade_idx = self._out_trades
            if len(trade_idx) < n_trades:
                trade_idx = self._out_trades = np.zeros(n_trades + n_trades // 4, np.int64)
            if n_trades == 0:
                trade_idx = trade_idx[:0]  # an empty array tells the kernel: no trades
        else:
            # the kernel writes every cell it reports; unsampled, every row: map pages ahead
            buf = FrameBuffer(cap, self.levels, prefault=not self.sampled)
            trade_idx = np.zeros(n_trades, np.int64)
        buf, n_out, n_tr, log = self.run(recs, buf, 0, trade_idx, base_index, log_key)
        if self.reuse:
            self._out = buf  # sampling may have grown it
        out = buf.frames(n_out)
        out.trades = trade_idx[:n_tr]
        out.counters = self.counters
        if log is not None:
            out.level_log = log
        return out

    def run(self, recs: np.ndarray, buf: FrameBuffer, n_out: int, trade_idx: np.ndarray,
            base_index: int | None = None, log_key: int | None = None, n_trades: int = 0,
            sel: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> tuple[FrameBuffer, int, int, np.ndarray | None]:
        """Apply kernel-view records, writing states into ``buf`` from state ``n_out`` (it
        must have room for every F_LAST of ``recs`` unless sampling, where it grows) and
        Trade indices into ``trade_idx`` from ``n_trades``. Returns ``(buffer, states,
        trades, level log or None)``; the buffer is a new one if it had to grow.

        ``sel = (indices, output rows, trade rows)`` from :func:`kernel.select_part`
        (threads over independent books): only ``recs[indices]`` are applied, each state and
        trade at its given row; the returned counts are then meaningless (not with
        sampling or a log)."""
        recs = _readonly(recs)
        if sel is None:
            sel = _NO_SEL
        elif self.sampled or log_key is not None:
            raise EngineError("internal: a record selection is not for sampling or a log")
        base = self.records_applied if base_index is None else int(base_index)
        if log_key is None:
            lkey = 0
            log = _NO_LOG
        else:
            lkey = int(log_key)
            if not 0 <= lkey < 2**48:
                raise EngineError(f"log_key must be book_key(instrument_id, publisher_id), "
                                  f"got {log_key!r}")
            lkey += 1
            log = np.empty((min(LOG_INIT_ROWS, 2 * len(recs) + 16), 4), np.int64)
        parts: list[np.ndarray] = []
        pend, last, lst = self._smp
        i, n_tr, n_log = 0, int(n_trades), 0
        while True:
            i, status, n_out, n_tr, n_log = K.apply_records(
                *self.state.as_tuple(), recs, i, len(recs), self.levels,
                *buf.kernel_outputs(), n_out, trade_idx, n_tr, base, lkey, log, n_log,
                buf.rs, buf.ks, *buf.fields, self.every, self.changes_only, pend, last, lst,
                self._smp_meta, self._smp_cur, *sel,
            )
            if status == K.OK:
                break
            if status == K.NEED_LOG:
                # keep what was logged; continue at the same record in a larger buffer
                if n_log:
                    parts.append(log[:n_log].copy())
                b = self.state.book_index((lkey - 1) >> 16, (lkey - 1) & 0xFFFF)
                need = 2 + sum(self.state.book_levels(b)) if b >= 0 else 2
                log = np.empty((max(2 * len(log), 2 * need), 4), np.int64)
                n_log = 0
                continue
            if status == K.NEED_OUT:
                buf = buf.grown(n_out, 2 * buf.capacity + 2 * len(lst) + 16)
                continue
            self.state.grow(status)
            if status == K.NEED_BOOKS:
                self._fit_sampler()
                pend, last, lst = self._smp
        self.records_applied = base + len(recs)
        out_log = None
        if log_key is not None:
            out_log = np.concatenate(parts + [log[:n_log]]) if parts else log[:n_log].copy()
        return buf, n_out, n_tr, out_log

    @property
    def pending(self) -> int:
        """Grid-sampled states waiting for their bin to end (see :meth:`flush`)."""
        return int(self._smp_meta[K.SM_NPEND])

    def flush(self, buf: FrameBuffer | None = None, n_out: int = 0
              ) -> tuple[FrameBuffer, int] | BookFrames:
        """Emit the states still pending in the current time bin (``every``), in record
        order. Without ``buf``: returns them as :class:`BookFrames`; with a buffer: writes
        them from state ``n_out`` (growing it if needed) and returns ``(buffer, states)``."""
        as_frames = buf is None
        if buf is None:
            buf = FrameBuffer(self.pending + 1, self.levels)
        if n_out + self.pending > buf.capacity:
            buf = buf.grown(n_out, n_out + self.pending + 1)
        pend, last, lst = self._smp
        if self.pending:
            n_out = K.flush_pending(pend, last, lst, self._smp_meta, self.changes_only,
                                    self.levels, *buf.kernel_outputs(), buf.rs, buf.ks,
                                    n_out, *buf.fields)
        if as_frames:
            out = buf.frames(n_out)
            out.counters = self.counters
            return out
        return buf, n_out

    # ---- queries on the current state
    def _book(self, instrument_id: int, publisher_id: int) -> int:
        return self.state.book_index(instrument_id, publisher_id)

    def top(self, instrument_id: int, publisher_id: int, levels: int | None = None
            ) -> BookFrames:
        """Current top ``levels`` of one book as a one-row :class:`BookFrames`."""
        n = self.levels if levels is None else levels
        out = BookFrames.empty(1, n)
        b = self._book(instrument_id, publisher_id)
        a = self.state.arrays
        out.cross[0] = K.write_levels(a["seg"], a["pool"], a["lvl"], b, n, 0, out.bid_px,
                                      out.bid_sz, out.bid_ct, out.ask_px, out.ask_sz,
                                      out.ask_ct)
        out.index[0] = self.records_applied - 1
        return out

    def book_levels(self, instrument_id: int, publisher_id: int) -> tuple[np.ndarray, ...]:
        """Every current level of one book, best first: ``(bid_px, bid_sz, bid_ct, ask_px,
        ask_sz, ask_ct)`` (prices int64 fixed 1e-9, sizes lots, counts int64); empty
        arrays when the book does not exist."""
        b = self._book(instrument_id, publisher_id)
        a = self.state.arrays
        out: list[np.ndarray] = []
        for side in (0, 1):
            if b < 0:
                rows = np.zeros(0, np.int64)
            else:
                st, n = int(a["seg"][2 * b + side, K.S_START]), int(a["seg"][2 * b + side,
                                                                               K.S_LEN])
                rows = a["pool"][st: st + n, 1][::-1]  # the best level is the last row
            lv = a["lvl"][rows]
            out += [lv[:, K.L_PX].copy(), lv[:, K.L_SZ].copy(), lv[:, K.L_CT].copy()]
        return tuple(out)

    def order(self, instrument_id: int, publisher_id: int, order_id: int) -> dict | None:
        """A live order as a dict (side 'B'/'A', price fixed-point, size, ts_recv ns,
        queue position = size ahead in lots), or None."""
        b = self._book(instrument_id, publisher_id)
        if b < 0:
            return None
        a = self.state.arrays
        oid = np.uint64(order_id).view(np.int64) if order_id >= 2**63 else np.int64(order_id)
        o = int(K.order_find(a["oh"], a["ords"], oid, b, *self.state.seeds))
        if o < 0:
            return None
        row = a["ords"][o]
        return {
            "order_id": int(order_id),
            "side": "A" if row[K.O_SEG] & 1 else "B",
            "price": int(row[K.O_PX]),
            "size": int(row[K.O_SZ]),
            "ts_recv": int(np.int64(row[K.O_TS]).view(np.uint64)),
            "queue_position": int(K.queue_ahead(a["lvl"], a["ords"], o)),
        }

    def check(self) -> int:
        """Run the state invariant check; 0 = consistent (see kernel.check_invariants)."""
        a = self.state.arrays
        return int(K.check_invariants(a["meta"], a["seg"], a["pool"], a["lvl"], a["ords"],
                                      a["oh"]))


class ReferenceEngine:
    """The pure-Python reference book behind the engine interface (slow, readable)."""

    name = "reference"

    def __init__(self, levels: int = 10, market: Market | None = None, trades: bool = True):
        if levels < 1:
            raise EngineError(f"levels must be >= 1, got {levels}")
        self.levels = int(levels)
        self.market = market if market is not None else Market()
        self.trades = trades
        self.records_applied = 0

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.market.counters)

    def apply(self, records: np.ndarray, base_index: int | None = None) -> BookFrames:
        records = _check_records(records)
        base = self.records_applied if base_index is None else int(base_index)
        flags = records["flags"]
        n_last = int(np.count_nonzero(flags & F_LAST))
        out = BookFrames.empty(n_last, self.levels)
        m = self.market
        j = 0
        trades = []
        for i, rec in enumerate(_iter_fields(records)):
            m.apply(*rec)
            if rec[2] == ord("T"):
                trades.append(base + i)
            if rec[7] & F_LAST:
                b = m.book(rec[0], rec[1])
                out.index[j] = base + i
                self._write(b, j, out)
                out.cross[j] = b.cross_state()
                j += 1
        self.records_applied += len(records)
        out.trades = np.array(trades if self.trades else [], np.int64)
        out.counters = self.counters
        return out

    def _write(self, book, row: int, out: BookFrames) -> None:
        for side, px, sz, ct in ((SIDE_BID, out.bid_px, out.bid_sz, out.bid_ct),
                                 (SIDE_ASK, out.ask_px, out.ask_sz, out.ask_ct)):
            for k, (p, s, c) in enumerate(book.levels(side, self.levels)):
                px[row, k] = p
                sz[row, k] = s
                ct[row, k] = c

    def top(self, instrument_id: int, publisher_id: int, levels: int | None = None
            ) -> BookFrames:
        n = self.levels if levels is None else levels
        out = BookFrames.empty(1, n)
        b = self.market.book(instrument_id, publisher_id)
        saved, self.levels = self.levels, n
        try:
            self._write(b, 0, out)
        finally:
            self.levels = saved
        out.cross[0] = b.cross_state()
        out.index[0] = self.records_applied - 1
        return out

    def order(self, instrument_id: int, publisher_id: int, order_id: int) -> dict | None:
        b = self.market.books.get((instrument_id, publisher_id))
        o = None if b is None else b.order(order_id)
        if o is None:
            return None
        return {
            "order_id": int(order_id),
            "side": chr(o.side),
            "price": int(o.price),
            "size": int(o.size),
            "ts_recv": int(o.ts_recv),
            "queue_position": int(b.queue_position(order_id)),
        }


def make_engine(name: str = "numba", levels: int = 10, **kw) -> NumbaEngine | ReferenceEngine:
    """Build an engine by name: ``"numba"`` (default, fast) or ``"reference"``."""
    if name == "numba":
        return NumbaEngine(levels=levels, **kw)
    if name == "reference":
        return ReferenceEngine(levels=levels, **kw)
    raise EngineError(f"unknown engine {name!r}; choose one of {ENGINES}")


_NO_LOG = np.zeros((0, 4), np.int64)
_NO_SEL = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

_ = (MBO_DTYPE, UNDEF_PRICE)
