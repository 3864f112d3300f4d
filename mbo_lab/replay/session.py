"""The replay session: data + book state + checkpoints + a playback clock + subscribers.

``mbo_lab.open(source)`` returns a :class:`Session`. The session owns the records, a book
engine and checkpoints taken while loading, so it can seek anywhere quickly. Its clock runs
in the kernel (an asyncio task on the running loop, e.g. Jupyter's), never in a browser.
It publishes a :class:`Frame` to its subscribers only at F_LAST states, coalesced to at
most ``fps`` frames per second. Widgets and the SSE server read these frames; neither
touches the kernel.

Positions
---------
``position`` is the number of records applied (0 .. ``len(data)``); the book shown is the
state after record ``position - 1``. Every public move snaps to a position right after an
F_LAST record, so a published state is always complete.

>>> s = mbo_lab.open()            # demo data                  # doctest: +SKIP
>>> s.step(10); s.frame().bbo     # 10 events forward          # doctest: +SKIP
>>> s.seek(time="2025-09-24 21:50")                           # doctest: +SKIP

Views read the market around the position through the kernel, from checkpoints, without
moving the session: :meth:`Session.liquidity` (the liquidity grid of any window),
:meth:`Session.trades_between`, :meth:`Session.history` (the BBO path before the position),
plus :attr:`Session.tick` and :attr:`Session.time_zone`.

Opening a day
-------------
Opening makes passes over the (memory-mapped) records that copy nothing: one Numba pass
counts the books, one kernel pass takes checkpoints (by default every 250,000 records or
1/64 of the stream, whichever is smaller, at least 20,000). A checkpoint is a
:class:`~mbo_lab.book.state.CompactState`: the live orders, levels and hash entries only
(~0.1 MB on the synthetic day's 5 books instead of a 1.9 MB copy of every array at full
capacity), rebuilt into the session's own arrays on a seek. No per-record index is kept:
F_LAST positions, a book's last record and trades are found by short scans.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..book.build import Source, as_data
from ..book.engine import NumbaEngine
from ..book.state import CompactState
from ..config import get_settings
from ..errors import MboLabError
from ..io.dbn import MboData
from ..io.records import (
    F_LAST,
    FIXED_PRICE_SCALE,
    UNDEF_PRICE,
    byte_char,
    flag_names,
    kernel_view,
    px_to_float,
)
from . import scan, views

__all__ = ["Session", "Frame", "open_session", "SPEED_MAX"]

log = logging.getLogger(__name__)

#: Records per kernel call when the session replays from a checkpoint.
_REPLAY_CHUNK = 1 << 16

#: ``speed`` value meaning "as fast as possible".
SPEED_MAX = float("inf")

_ACTIONS = {"A": "Add", "C": "Cancel", "M": "Modify", "R": "Clear", "T": "Trade",
            "F": "Fill", "N": "None"}
_SIDES = {"B": "bid", "A": "ask", "N": "-"}


@dataclass
class Frame:
    """One published book state (at an F_LAST record) of the selected book.

    Prices are floats (currency units, NaN when absent); sizes in lots; times in ns.
    """

    seq: int
    position: int
    record_index: int
    ts_recv: int
    ts_event: int
    instrument_id: int
    publisher_id: int
    symbol: str
    bid_px: np.ndarray
    bid_sz: np.ndarray
    bid_ct: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray
    ask_ct: np.ndarray
    crossed: bool
    locked: bool
    trades: list[tuple[int, float, int, str]]
    counters: dict[str, int]
    live_orders: int
    record: dict[str, Any]
    effect: str
    playing: bool = False
    speed: float = 1.0
    progress: float = 0.0
    #: The last record of the selected book at or before ``record_index`` (for the
    #: inspector: ``record`` may belong to another book), None before its first record.
    book_record: dict[str, Any] | None = None
    book_record_index: int = -1

    @property
    def best_bid(self) -> float:
        return float(self.bid_px[0]) if len(self.bid_px) else float("nan")

    @property
    def best_ask(self) -> float:
        return float(self.ask_px[0]) if len(self.ask_px) else float("nan")

    @property
    def bbo(self) -> dict[str, float]:
        """Best bid/ask, spread, mid and size-weighted mid (NaN when crossed or a side is
        empty)."""
        bp, ap = self.best_bid, self.best_ask
        bq = float(self.bid_sz[0]) if len(self.bid_sz) else 0.0
        aq = float(self.ask_sz[0]) if len(self.ask_sz) else 0.0
        ok = np.isfinite(bp) and np.isfinite(ap) and not self.crossed
        return {
            "bid_px": bp, "bid_sz": bq, "ask_px": ap, "ask_sz": aq,
            "spread": ap - bp if ok else float("nan"),
            "mid": (ap + bp) / 2 if ok else float("nan"),
            "weighted_mid": (bp * aq + ap * bq) / (aq + bq) if ok and aq + bq > 0
            else float("nan"),
        }

    def to_dict(self, levels: int | None = None) -> dict[str, Any]:
        """JSON-ready dict (NaN prices become None)."""
        n = len(self.bid_px) if levels is None else levels

        def side(px, sz, ct):
            return [[float(p), int(s), int(c)] for p, s, c in zip(px[:n], sz[:n], ct[:n])
                    if np.isfinite(p)]

        bbo = {k: (None if not np.isfinite(v) else v) for k, v in self.bbo.items()}
        return {
            "seq": self.seq, "position": self.position, "record_index": self.record_index,
            "ts_recv": self.ts_recv, "ts_event": self.ts_event,
            "time": str(pd.Timestamp(self.ts_recv, tz="UTC")) if self.ts_recv else None,
            "instrument_id": self.instrument_id, "publisher_id": self.publisher_id,
            "symbol": self.symbol,
            "bids": side(self.bid_px, self.bid_sz, self.bid_ct),
            "asks": side(self.ask_px, self.ask_sz, self.ask_ct),
            "bbo": bbo, "crossed": self.crossed, "locked": self.locked,
            "trades": [list(t) for t in self.trades], "counters": self.counters,
            "live_orders": self.live_orders, "record": self.record, "effect": self.effect,
            "playing": self.playing, "speed": None if self.speed == SPEED_MAX else self.speed,
            "progress": self.progress, "book_record": self.book_record,
            "book_record_index": self.book_record_index,
        }


@dataclass
class _Checkpoint:
    position: int
    state: CompactState


@dataclass
class _Clock:
    playing: bool = False
    speed: float = 1.0
    market_ns: int = 0  # market time the clock has reached
    task: Any = None
    last_publish: float = 0.0
    frames_published: int = 0
    frames_skipped: int = 0
    subscribers: list[Callable[[Frame], None]] = field(default_factory=list)


class Session:
    """A replay of one MBO stream; see the module docstring.

    Parameters
    ----------
    source : path, MboData, record array or None
        None opens the built-in synthetic demo data.
    levels : int
        Levels per side in published frames.
    fps : float, optional
        Maximum frames per second (``MBO_LAB_FPS``, default 30).
    checkpoint_every : int, optional
        Records between checkpoints (default: 1/64 of the stream, at most 250,000 and at
        least 20,000; a seek replays at most this many records).
    instrument_id, publisher_id : int, optional
        The book to publish; defaults to the book with the most records.
    progress : bool, optional
        Progress bar while building checkpoints (default: for streams over 5M records).
    """

    def __init__(self, source: Source | None = None, *, levels: int = 10,
                 fps: float | None = None, checkpoint_every: int | None = None,
                 instrument_id: int | None = None, publisher_id: int | None = None,
                 progress: bool | None = None):
        if source is None:
            from ..io.synth import demo_path

            source = demo_path()
        self.data: MboData = as_data(source)
        self.settings = get_settings(fps=fps)
        self.levels = int(levels)
        recs = self.data.records
        n = len(recs)
        if n == 0:
            raise MboLabError("the source holds no records; nothing to replay")
        t_open = _time.perf_counter()
        self._kv = kernel_view(recs)
        self._book_counts, n_last, self._first_last = scan.books(self._kv)
        if n_last == 0:
            raise MboLabError(
                "the source has no record with F_LAST (0x80), so it has no complete book "
                "state to show; check that it is Databento MBO data"
            )
        self._ts = recs["ts_recv"]
        self.books: list[tuple[int, int]] = list(self._book_counts)
        self._ticks: dict[tuple[int, int], int] = {}
        self._time_zone: str | None = None
        self._lazy: dict[str, Any] = {}
        self._select(instrument_id, publisher_id)
        # the session never keeps what apply() returns: one reused (small) output buffer
        self.engine = NumbaEngine(levels=1, trades=False, reuse=True)
        self.position = 0
        self._stale = False  # see _restore_to
        self.seq = 0
        self.clock = _Clock(market_ns=int(self._ts[0]))
        self._build_checkpoints(checkpoint_every, progress)
        self.open_seconds = _time.perf_counter() - t_open
        self._goto(self._first_last + 1)

    # ---------------------------------------------------------------- selection
    def _select(self, instrument_id: int | None, publisher_id: int | None) -> None:
        if instrument_id is None and publisher_id is None:
            iid, pub = max(self._book_counts, key=self._book_counts.get)
        else:
            cands = [b for b in self.books if (instrument_id is None or b[0] == instrument_id)
                     and (publisher_id is None or b[1] == publisher_id)]
            if not cands:
                raise MboLabError(
                    f"no book for instrument_id={instrument_id} publisher_id={publisher_id}; "
                    f"books in this data: {self.books}"
                )
            iid, pub = max(cands, key=self._book_counts.get)
        self.instrument_id, self.publisher_id = iid, pub
        self._key = np.int64((iid << 16) | pub)
        # the selected book's first F_LAST record (-1: none): snapping never scans past it
        self._book_first_last = int(scan.next_last(self._kv, 0, len(self.data), self._key))
        self._book_first_rec = int(scan.first_of_book(self._kv, self._key))

    @property
    def _flags_last(self) -> np.ndarray:
        """Indices of every F_LAST record (built on first use only; prefer the scans)."""
        if "flags_last" not in self._lazy:
            self._lazy["flags_last"] = np.flatnonzero(self.data.records["flags"] & F_LAST)
        return self._lazy["flags_last"]

    @property
    def _book_trades(self) -> np.ndarray:
        """Indices of the selected book's Trade records (built on first use per book)."""
        k = ("trades", int(self._key))
        if k not in self._lazy:
            out = np.zeros(1 << 16, np.int64)
            n = int(scan.trades_in(self._kv, 0, len(self.data), self._key, out))
            if n > len(out):
                out = np.zeros(n, np.int64)
                scan.trades_in(self._kv, 0, len(self.data), self._key, out)
            self._lazy[k] = out[:n].copy()
        return self._lazy[k]

    def select(self, instrument_id: int, publisher_id: int | None = None) -> None:
        """Publish another book (the state of every book is kept; nothing is replayed)."""
        self._select(instrument_id, publisher_id)
        self._publish(force=True)

    # ---------------------------------------------------------------- checkpoints
    def _build_checkpoints(self, every: int | None, progress: bool | None) -> None:
        n = len(self.data)
        every = int(every or max(20_000, min(n // 64, 250_000)))
        if every < 1:
            raise MboLabError(f"checkpoint_every must be >= 1, got {every}")
        self.checkpoint_every = every
        check = getattr(self.data, "check_unchanged", None)
        if check is not None:
            check()
        self._checkpoints: list[_Checkpoint] = [_Checkpoint(0, self.engine.state.compact())]
        bar = None
        if progress or (progress is None and n > 5_000_000):
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="rec", unit_scale=True, desc="checkpoints", leave=False)
        recs = self.data.records
        t0 = _time.perf_counter()
        # the same pass collects the selected book's trades (for the frames' recent trades);
        # a second engine on the same state, whose reused chunk-sized buffers go with it
        eng = NumbaEngine(levels=1, state=self.engine.state, trades=True, reuse=True)
        book_trades = []
        iid, pub = self.instrument_id, self.publisher_id
        for lo in range(0, n, every):
            hi = min(n, lo + every)
            tr = eng.apply(recs[lo:hi], base_index=lo).trades
            book_trades.append(tr[(recs["instrument_id"][tr] == iid)
                                  & (recs["publisher_id"][tr] == pub)])
            self._checkpoints.append(_Checkpoint(hi, self.engine.state.compact()))
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        self.engine.records_applied = eng.records_applied
        self._lazy[("trades", int(self._key))] = (np.concatenate(book_trades) if book_trades
                                                  else np.zeros(0, np.int64))
        self._cp_positions = np.array([c.position for c in self._checkpoints], np.int64)
        self.final_counters = self.engine.counters
        self.load_seconds = _time.perf_counter() - t0
        self.position = n
        log.info("session: %d records, %d checkpoints in %.2f s", n, len(self._checkpoints),
                 self.load_seconds)

    def _restore_to(self, target: int) -> None:
        """Make the engine state equal to 'records [0, target) applied'.

        While the state changes, ``_stale`` is set: an interruption (Ctrl-C in a seek)
        between a change and the position that says so leaves it set, and the next call
        restores from a checkpoint instead of trusting ``position``."""
        if self._stale or not (self.position <= target and
                               target - self.position <= self.checkpoint_every):
            k = int(np.searchsorted(self._cp_positions, target, "right")) - 1
            cp = self._checkpoints[k]
            self._stale = True
            self.engine.state.restore(cp.state)
            self.position = cp.position
            self._stale = False
        recs = self.data.records
        while target > self.position:
            # small calls: the kernel's (reused) output buffer stays small and warm in cache
            hi = min(target, self.position + _REPLAY_CHUNK)
            self._stale = True
            self.engine.apply(recs[self.position:hi], base_index=self.position)
            self.position = hi
            self._stale = False

    def _snap(self, target: int) -> int:
        """Largest 'position after an F_LAST record of the selected book' <= target, so the
        published book is never mid-event; before that book's first F_LAST and at the end of
        the stream, the last F_LAST of any book (at least the stream's first one)."""
        j = -1
        if 0 <= self._book_first_last <= int(target) - 1 and target < len(self.data):
            j = int(scan.prev_last(self._kv, int(target) - 1, self._key))
        elif target > 0:
            j = int(scan.prev_last(self._kv, int(target) - 1, -1))
        return (j if j >= 0 else self._first_last) + 1

    def _goto(self, target: int) -> None:
        target = self._snap(max(1, min(int(target), len(self.data))))
        self._restore_to(target)
        self.clock.market_ns = int(self._ts[self.position - 1])
        self._publish(force=True)

    # ---------------------------------------------------------------- navigation
    def __len__(self) -> int:
        return len(self.data)

    @property
    def record_index(self) -> int:
        """Index of the last applied record (the current record)."""
        return self.position - 1

    @property
    def time(self) -> pd.Timestamp:
        """ts_recv of the current record (UTC)."""
        return pd.Timestamp(int(self._ts[self.record_index]), tz="UTC")

    def seek(self, index: int | None = None, *, time: Any = None) -> Frame:
        """Go to a record index (the state after it) or to a time (the state after the last
        record with ``ts_recv <= time``); snaps back to the nearest F_LAST."""
        if (index is None) == (time is None):
            raise MboLabError("seek takes exactly one of index= or time=")
        if time is not None:
            index = int(scan.search_ts(self._kv, views.to_ns(time, 0), True)) - 1
        if not 0 <= index < len(self.data):
            raise MboLabError(f"record index {index} is outside 0..{len(self.data) - 1}")
        self._goto(index + 1)
        return self.frame()

    def step(self, n: int = 1) -> Frame:
        """Move ``n`` F_LAST events forward (negative: back)."""
        key = self._key if self._book_first_last >= 0 else np.int64(-1)
        j = int(scan.nth_last(self._kv, self.position - 1, int(n), key))
        self._goto(j + 1)
        return self.frame()

    def back(self, n: int = 1) -> Frame:
        """Move ``n`` events back."""
        return self.step(-n)

    def to_start(self) -> Frame:
        self._goto(1)
        return self.frame()

    def to_end(self) -> Frame:
        self._goto(len(self.data))
        return self.frame()

    # ---------------------------------------------------------------- frames
    def frame(self) -> Frame:
        """The current state of the selected book as a :class:`Frame`."""
        iid, pub = self.instrument_id, self.publisher_id
        top = self.engine.top(iid, pub, self.levels)
        i = self.record_index
        rec = self.data.records[i]
        bt = self._book_trades  # one pass per book on first use, then a binary search
        t_hi = int(np.searchsorted(bt, i, "right"))
        trades = []
        for j in bt[max(0, t_hi - 20): t_hi]:
            r = self.data.records[j]
            trades.append((int(r["ts_recv"]), float(px_to_float(int(r["price"]))),
                           int(r["size"]), byte_char(r["side"])))
        # (no backward scan when the book has no record yet: it would read to record 0)
        bi = int(scan.prev_of_book(self._kv, i, self._key)) \
            if 0 <= self._book_first_rec <= i else -1
        return Frame(
            seq=self.seq, position=self.position, record_index=i,
            ts_recv=int(rec["ts_recv"]), ts_event=int(rec["ts_event"]),
            instrument_id=iid, publisher_id=pub,
            symbol=self.data.symbols.get(iid, ""),
            bid_px=_f(top.bid_px[0]), bid_sz=top.bid_sz[0].copy(), bid_ct=top.bid_ct[0].copy(),
            ask_px=_f(top.ask_px[0]), ask_sz=top.ask_sz[0].copy(), ask_ct=top.ask_ct[0].copy(),
            crossed=bool(top.cross[0] == 2), locked=bool(top.cross[0] == 1),
            trades=trades, counters=self.engine.counters,
            live_orders=self.engine.state.live_orders,
            record=describe_record(rec), effect=record_effect(rec),
            playing=self.clock.playing, speed=self.clock.speed,
            progress=self.position / len(self.data),
            book_record=describe_record(self.data.records[bi]) if bi >= 0 else None,
            book_record_index=bi,
        )

    def subscribe(self, callback: Callable[[Frame], None]) -> Callable[[], None]:
        """Call ``callback(frame)`` at every published frame; returns an unsubscribe."""
        self.clock.subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self.clock.subscribers:
                self.clock.subscribers.remove(callback)

        return unsubscribe

    def _publish(self, force: bool = False) -> bool:
        now = _time.perf_counter()
        period = 1.0 / self.settings.fps
        slack = 0.1 * period  # wake-up jitter of the clock's ticks
        last = self.clock.last_publish
        if not force and now < last + period - slack:
            self.clock.frames_skipped += 1
            return False
        # last_publish is the frame's slot on a fixed schedule: a tick a little early or
        # late keeps the schedule (so jitter does not drop every other frame), at most
        # ``fps`` frames per second on average; after a stall the schedule restarts
        self.clock.last_publish = max(last + period, now - slack)
        self.seq += 1
        if not self.clock.subscribers:
            return True
        fr = self.frame()
        for cb in list(self.clock.subscribers):
            try:
                cb(fr)
            except Exception:  # a broken subscriber must not stop the replay
                log.exception("frame subscriber %r failed", cb)
        self.clock.frames_published += 1
        return True

    # ---------------------------------------------------------------- the clock
    @property
    def playing(self) -> bool:
        return self.clock.playing

    def set_speed(self, speed: float) -> None:
        """Market-time speed: 0.1 .. 1000 (x real time) or ``SPEED_MAX`` (as fast as possible)."""
        speed = float(speed)
        if not (speed == SPEED_MAX or 0.1 <= speed <= 1000):
            raise MboLabError(f"speed must be within 0.1..1000 or SPEED_MAX, got {speed}")
        self.clock.speed = speed

    def advance(self, wall_seconds: float, max_records: int = 200_000) -> bool:
        """Move the clock by ``wall_seconds`` of wall time at the current speed and apply
        the records it reaches (snapped to F_LAST); publish if the frame budget allows.

        Returns False at the end of the data. At ``SPEED_MAX`` each call moves to the next
        state of the selected book (at most ``max_records`` records on), so "as fast as
        possible" plays every state of the book at the frame rate instead of jumping to the
        end. The play task calls this every frame; it is public so that scripts and tests
        can drive the clock without an event loop.
        """
        n = len(self.data)
        if self.position >= n:
            return False
        if self.clock.speed == SPEED_MAX:
            stop = min(n, self.position + max(1, int(max_records)))
            j = int(scan.next_last(self._kv, self.position, stop, self._key))
            target = j + 1 if j >= 0 else stop
            if j < 0 and self._snap(target) <= self.position and target < n:
                # no F_LAST of any book within max_records: go to the next one anywhere
                j = int(scan.next_last(self._kv, self.position, n, -1))
                target = j + 1 if j >= 0 else n
        else:
            self.clock.market_ns += int(wall_seconds * self.clock.speed * 1e9)
            target = int(scan.search_ts(self._kv, self.clock.market_ns, True))
            target = min(target, self.position + max_records)
        snapped = self._snap(target)
        if snapped > self.position:
            self._restore_to(snapped)
            if self.clock.speed == SPEED_MAX:
                self.clock.market_ns = int(self._ts[self.position - 1])
            # the last state is always published, whatever the frame budget
            self._publish(force=self.position >= n)
        elif target >= n:  # records after the last F_LAST: finish the stream
            self._restore_to(n)
            self._publish(force=True)
        return self.position < n

    def play(self, speed: float | None = None) -> None:
        """Start the clock as an asyncio task on the running event loop (Jupyter's kernel
        loop) and return at once.

        Outside a running loop (a plain script) it raises :class:`MboLabError`: use
        ``await session.run()`` (e.g. inside ``asyncio.run``), or drive the clock with
        :meth:`advance`."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise MboLabError(
                "Session.play() needs a running asyncio event loop and none is running here. "
                "In Jupyter call it from a cell (the kernel's loop runs there); in a script "
                "use `asyncio.run(session.run())` (or `await session.run()` in a coroutine), "
                "or drive the clock yourself with session.advance(seconds)"
            ) from None
        if speed is not None:
            self.set_speed(speed)
        if self.clock.playing:
            return
        if self.position >= len(self.data):
            self._goto(1)
        self.clock.playing = True
        self.clock.task = loop.create_task(self._run())

    async def run(self, speed: float | None = None) -> None:
        """Play until the end of the data or :meth:`pause` (a coroutine: ``await
        session.run()`` or ``asyncio.run(session.run())`` in a script)."""
        self.play(speed)
        task = self.clock.task
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass

    def pause(self) -> None:
        """Stop the clock (the state stays where it is)."""
        self.clock.playing = False
        task, self.clock.task = self.clock.task, None
        if task is not None and not task.done():
            task.cancel()
        self._publish(force=True)

    async def _run(self) -> None:
        period = 1.0 / self.settings.fps
        last = _time.perf_counter()
        due = last + period
        try:
            while self.clock.playing:
                # wake at fixed deadlines: a sleep that overshoots (~1 ms in a busy kernel)
                # shortens the next one instead of slowing the clock down; after a stall
                # the schedule restarts from now (no burst of catch-up frames)
                await asyncio.sleep(max(0.0, due - _time.perf_counter()))
                now = _time.perf_counter()
                more = self.advance(now - last)
                last = now
                due = due + period if due + period > now else now + period
                if not more:
                    self.clock.playing = False
                    self._publish(force=True)
                    break
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("replay clock stopped by an error")
            self.clock.playing = False

    # ---------------------------------------------------------------- views
    def liquidity(self, start: Any = None, end: Any = None, *, time_bins: int = 1000,
                  price_rows: int = 400, price_lo: float | None = None,
                  price_hi: float | None = None, tick_multiple: int | None = None,
                  progress: bool | None = None, large_k: float = 5.0) -> Any:
        """Resting liquidity of the selected book on a time x price grid, computed by the
        kernel from the nearest checkpoint before ``start`` (a zoomed window costs only its
        records); see :class:`mbo_lab.book.grid.LiquidityGrid` for what a cell means.

        ``start``/``end``: ns ints, anything ``pd.Timestamp`` takes (naive = UTC) or None
        (the whole stream). ``time_bins`` bins over ``[start, end)``; ``price_rows`` rows,
        each ``tick_multiple`` ticks wide (default: the smallest multiple that covers the
        range). The price range defaults to the window's trades and the touch at its start,
        padded 10 %; ``price_lo``/``price_hi`` (currency units) set it. ``progress``: a
        progress bar (None: only when the pass lasts over 2 s). Large orders are those with
        ``size >= large_k x`` the median Add size of the window. The session's position
        does not move."""
        return views.liquidity(self, start, end, time_bins=time_bins, price_rows=price_rows,
                               price_lo=price_lo, price_hi=price_hi,
                               tick_multiple=tick_multiple, progress=progress,
                               large_k=large_k)

    def trades_between(self, start: Any = None, end: Any = None, max_trades: int = 5000
                       ) -> pd.DataFrame:
        """Trades of the selected book with ``start <= ts_recv < end`` (None = open end):
        index ``ts_recv`` (UTC); columns ``price`` (float), ``size`` (lots), ``side``
        ('B' buyer / 'A' seller aggressor, 'N' none) and ``record_index``. With more than
        ``max_trades`` trades, the largest are kept (in time order)."""
        return views.trades_between(self, start, end, max_trades)

    def history(self, points: int = 600, span_ns: int | None = None) -> pd.DataFrame:
        """The selected book's BBO on a regular grid of ``points`` times ending at the
        current record (``span_ns`` long; default 30 minutes or the last 250,000 records,
        whichever is shorter, cut at the data start),
        computed by the kernel from checkpoints (not from played frames). Columns ``bid``,
        ``ask``, ``mid`` (float; NaN when a side is empty, mid NaN when crossed); each row is
        the book's state in effect 1 ns before its index time (the last row: the current
        state). ``df.attrs["trades"]`` holds the trades
        of the same window (columns as :meth:`trades_between`), ``df.attrs["window"]``
        the window ``(t0, t_end)`` in ns."""
        return views.history(self, points, span_ns)

    def tick_of(self, instrument_id: int, publisher_id: int) -> float:
        """Price increment of one book (currency units), inferred from its prices."""
        g = self._tick_fixed(int(instrument_id), int(publisher_id))
        return g / FIXED_PRICE_SCALE if g > 0 else 0.01

    def _tick_fixed(self, iid: int, pub: int) -> int:
        k = (iid, pub)
        if k not in self._ticks:
            self._ticks[k] = views.infer_tick(self._kv, (iid << 16) | pub)
        return self._ticks[k]

    @property
    def tick(self) -> float:
        """The selected instrument's price increment (currency units), from the data: the
        GCD of the differences between its prices over all its books (exact for top-of-book
        feeds and any book whose prices sit on the tick grid); 0.01 if it cannot be told."""
        g = 0
        for i, p in self.books:
            if i == self.instrument_id:
                g = int(np.gcd(g, self._tick_fixed(i, p)))
        return g / FIXED_PRICE_SCALE if g > 0 else 0.01

    @property
    def time_zone(self) -> str:
        """Exchange time zone (IANA name) guessed from the dataset / publisher
        (GLBX/CME -> "America/Chicago", else "UTC"); assign to override."""
        if self._time_zone is None:
            self._time_zone = views.guess_time_zone(self.data.metadata.dataset,
                                                    sorted({p for _, p in self.books}))
        return self._time_zone

    @time_zone.setter
    def time_zone(self, value: str) -> None:
        from ..config import check_time_zone

        self._time_zone = check_time_zone(value)

    # ---------------------------------------------------------------- serving
    def serve(self, host: str | None = None, port: int | None = None,
              token: str | None = None, **kw: Any) -> Any:
        """Serve this session over HTTP/SSE on the running event loop (returns at once);
        returns a server with ``.url``, ``.port``, ``.token``, ``.stop()``. See
        :mod:`mbo_lab.serve`."""
        from ..serve import start

        return start(self, host=host, port=port, token=token, **kw)

    # ---------------------------------------------------------------- display
    def stats(self) -> dict[str, Any]:
        """Counts for a stats panel."""
        nb, na = 0, 0
        b = self.engine.state.book_index(self.instrument_id, self.publisher_id)
        if b >= 0:
            nb, na = self.engine.state.book_levels(b)
        return {
            "records": len(self.data), "position": self.position,
            "time": str(self.time), "live_orders": self.engine.state.live_orders,
            "bid_levels": nb, "ask_levels": na, "books": len(self.books),
            "frames_published": self.clock.frames_published,
            "frames_skipped": self.clock.frames_skipped, **self.engine.counters,
        }

    def dashboard(self, **kw: Any) -> Any:
        """The notebook dashboard (ipywidgets + bqplot) on this session; see
        :class:`mbo_lab.viz.Dashboard`."""
        from ..viz.dashboard import Dashboard

        return Dashboard(self, **kw)

    def __repr__(self) -> str:
        return (f"Session({len(self.data):,} records, book {self.instrument_id}@"
                f"{self.publisher_id}, position {self.position:,}, {self.time})")

    def _repr_html_(self) -> str:
        fr = self.frame()
        rows = []
        n = self.levels
        for k in range(n - 1, -1, -1):
            if np.isfinite(fr.ask_px[k]):
                rows.append(f"<tr><td></td><td></td><td style='color:#c0392b'>{fr.ask_px[k]:.6g}"
                            f"</td><td>{fr.ask_sz[k]}</td><td>{fr.ask_ct[k]}</td></tr>")
        for k in range(n):
            if np.isfinite(fr.bid_px[k]):
                rows.append(f"<tr><td>{fr.bid_ct[k]}</td><td>{fr.bid_sz[k]}</td>"
                            f"<td style='color:#1e8449'>{fr.bid_px[k]:.6g}</td><td></td>"
                            "<td></td></tr>")
        bbo = fr.bbo
        flag = " <b style='color:#c0392b'>CROSSED</b>" if fr.crossed else ""
        head = (f"<b>mbo_lab Session</b> {html.escape(fr.symbol or str(fr.instrument_id))}"
                f"@{fr.publisher_id}: {len(self.data):,} records, at {fr.position:,} "
                f"({html.escape(str(self.time))}){flag}<br>spread {bbo['spread']:.6g}, "
                f"mid {bbo['mid']:.6g}, live orders {fr.live_orders:,}")
        table = ("<table><tr><th>bid ct</th><th>bid sz</th><th>price</th><th>ask sz</th>"
                 "<th>ask ct</th></tr>" + "".join(rows) + "</table>")
        return head + table


def _f(px: np.ndarray) -> np.ndarray:
    out = px.astype(np.float64) / FIXED_PRICE_SCALE
    out[px == UNDEF_PRICE] = np.nan
    return out


def describe_record(rec: np.void) -> dict[str, Any]:
    """A record as a JSON-ready dict (price float, flags by name)."""
    price = int(rec["price"])
    return {
        "action": byte_char(rec["action"]), "side": byte_char(rec["side"]),
        "price": None if price == int(UNDEF_PRICE) else price / FIXED_PRICE_SCALE,
        "size": int(rec["size"]), "order_id": int(rec["order_id"]),
        "flags": flag_names(int(rec["flags"])), "ts_recv": int(rec["ts_recv"]),
        "ts_event": int(rec["ts_event"]), "sequence": int(rec["sequence"]),
        "instrument_id": int(rec["instrument_id"]), "publisher_id": int(rec["publisher_id"]),
    }


def record_effect(rec: np.void) -> str:
    """One line saying what the record does to the book."""
    a = byte_char(rec["action"])
    side = _SIDES.get(byte_char(rec["side"]), "?")
    price = int(rec["price"])
    px = "UNDEF" if price == int(UNDEF_PRICE) else f"{price / FIXED_PRICE_SCALE:.6g}"
    name = _ACTIONS.get(a, f"unknown action {a!r}")
    if a in ("T", "F", "N"):
        return f"{name} {side} {int(rec['size'])} @ {px}: no book change"
    if a == "R":
        return "Clear: the book is emptied"
    return f"{name} {side} order {int(rec['order_id'])}: {int(rec['size'])} @ {px}"


def open_session(source: Source | None = None, **kw: Any) -> Session:
    """Open a replay session (``mbo_lab.open``); see :class:`Session`."""
    return Session(source, **kw)
