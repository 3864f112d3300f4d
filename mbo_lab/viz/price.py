"""Price chart: bid, ask, mid and size-weighted mid over a rolling window of frames, with
trades as Scatter markers (area by quantity, colour by aggressor side)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import (
    ASK,
    BID,
    MID,
    WMID,
    Clock,
    Part,
    StickyRange,
    Throttle,
    book_key,
    f64,
    figure,
    price_decimals,
    span,
)

#: Trade colour values: the aggressor side of a Databento trade ('B' buyer, 'A' seller).
SIDE_VALUE = {"B": 1.0, "A": -1.0}


class PriceChart(Part):
    """Rolling bid/ask/mid/weighted-mid lines and trade markers.

    ``window`` frames are kept (a ring; a seek backwards or a book change starts afresh).
    ``lines.x`` holds the frame times (``datetime64[ns]``, sent to bqplot as float64 ms),
    ``lines.y`` a ``(4, n)`` float64 array (bid, ask, mid, weighted mid; NaN where a side is
    empty, and mid/weighted mid NaN while the book is crossed). ``trades.x/y/size/color``
    hold the trades seen in the window: time, price (float64), quantity (float64) and side
    (+1 buy aggressor, -1 sell aggressor, 0 unknown); while playing they are resent at most
    ``trades_hz`` times a second (a frame lists at most the last 20 trades, so a frame
    with more loses the older ones).
    """

    TITLE = ("bid (green), ask (red), mid (grey), weighted mid (purple); "
             "trades: buyer (green) / seller (red) aggressor")

    def __init__(self, window: int = 300, max_trades: int = 150, *, trades_hz: float = 6.0,
                 clock: Clock | None = None, height: str = "300px", width: str = "100%"):
        import bqplot as bq

        self.window = int(window)
        self.max_trades = int(max_trades)
        self._trades_throttle = Throttle(trades_hz, clock)
        self.x_scale = bq.DateScale(allow_padding=False)
        self.y_scale = bq.LinearScale(allow_padding=False)
        self.lines = bq.Lines(
            x=np.zeros(0, "datetime64[ns]"), y=np.zeros((4, 0)),
            colors=[BID, ASK, MID, WMID], labels=["bid", "ask", "mid", "wmid"],
            display_legend=False, stroke_width=1.5, interpolation="step-after",
            line_style="solid", scales={"x": self.x_scale, "y": self.y_scale},
        )
        self.trades = bq.Scatter(
            x=np.zeros(0, "datetime64[ns]"), y=np.zeros(0), size=np.zeros(0),
            color=np.zeros(0), default_size=140, stroke="#333", stroke_width=0.5,
            opacities=[0.8], display_legend=False,
            scales={"x": self.x_scale, "y": self.y_scale,
                    "size": bq.LinearScale(min=0.0),
                    "color": bq.ColorScale(colors=[ASK, "#999999", BID], min=-1.0, max=1.0)},
            tooltip=bq.Tooltip(fields=["y", "size"], labels=["price", "qty"]),
        )
        self.price_axis = bq.Axis(scale=self.y_scale, side="left", label="price",
                                  label_offset="48px",
                                  grid_lines="dashed", tick_format=".2f")
        self.widget = figure(
            [self.lines, self.trades],
            [bq.Axis(scale=self.x_scale, label="time (UTC)", grid_lines="none",
                     tick_format="%H:%M:%S"),
             self.price_axis],
            title=self.TITLE, height=height, width=width, css_class="mbo-price")
        # Explicit ranges that change rarely: the time axis pages forward by a fraction of
        # the window, the price axis moves when prices leave it.
        self._xr = StickyRange(self.x_scale, margin=0.15, margin_lo=0.0, min_pad=1e9,
                               slack=1e9, date=True)
        self._yr = StickyRange(self.y_scale, margin=0.3, min_pad=1e-9, rel_pad=2e-4,
                               slack=4.0)
        self.reset()
        self.updates = 0

    def reset(self) -> None:
        self._t = np.zeros(self.window, dtype=np.int64)
        self._y = np.full((4, self.window), np.nan)
        self._n = 0
        self._tr: list[tuple[int, float, float, float]] = []
        self._last_tr: tuple[int, int] = (-1, 0)  # (ts of the newest trade, how many at it)
        self._key: tuple[int, int] | None = None
        self._last_ts = -1
        self._sent_trades = -1
        self._dirty_trades = False
        if hasattr(self, "_xr"):
            self._xr.reset()
            self._yr.reset()

    # ------------------------------------------------------------------ data
    def _append(self, ts: int, bbo: dict[str, float]) -> None:
        row = (bbo["bid_px"], bbo["ask_px"], bbo["mid"], bbo["weighted_mid"])
        if self._n and ts == self._t[self._n - 1]:
            self._y[:, self._n - 1] = row  # same time: latest state wins
            return
        if self._n == self.window:
            self._t[:-1] = self._t[1:]
            self._y[:, :-1] = self._y[:, 1:]
            self._n -= 1
        self._t[self._n] = ts
        self._y[:, self._n] = row
        self._n += 1

    def _add_trades(self, trades: list[tuple[int, float, int, str]]) -> bool:
        """Add the frame's trades not seen yet (a frame lists the last trades up to its
        record, oldest first; trades at one timestamp are told apart by their order)."""
        last_ts, k_last = self._last_tr
        counts: dict[int, int] = {}
        added = False
        for ts, px, qty, side in trades:
            ts = int(ts)
            k = counts[ts] = counts.get(ts, 0) + 1
            if ts > last_ts or (ts == last_ts and k > k_last):
                self._tr.append((ts, float(px), float(qty), SIDE_VALUE.get(side, 0.0)))
                added = True
        if added:
            newest = int(trades[-1][0])
            self._last_tr = (newest, counts[newest])
        t0 = int(self._t[0]) if self._n else 0
        if self._tr and (self._tr[0][0] < t0 or len(self._tr) > self.max_trades):
            self._tr = [t for t in self._tr if t[0] >= t0][-self.max_trades:]
            added = True
        return added

    # ------------------------------------------------------------------ update
    def update(self, frame: Any) -> None:
        key = book_key(frame)
        ts = int(frame.ts_recv)
        if key != self._key or ts < self._last_ts:
            self.reset()
            self._key = key
        self._last_ts = ts
        bbo = frame.bbo
        if frame.crossed:
            bbo = dict(bbo, bid_px=frame.best_bid, ask_px=frame.best_ask)
        self._append(ts, bbo)
        self._dirty_trades = self._add_trades(frame.trades) or self._dirty_trades
        n = self._n
        y = f64(self._y[:, :n])
        lo, hi = span(y)
        if self._tr:
            tlo, thi = span(np.array([t[1] for t in self._tr]))
            lo, hi = min(lo, tlo), max(hi, thi)
        self._xr.fit(float(self._t[0]), float(self._t[n - 1]))
        if self._yr.fit(lo, hi):
            fmt = f".{price_decimals(y[:2, -1:])}f"
            if self.price_axis.tick_format != fmt:
                self.price_axis.tick_format = fmt
        with self.lines.hold_sync():
            self.lines.x = self._t[:n].astype("datetime64[ns]")  # a new array each time
            self.lines.y = y
        # The markers are redrawn at most trades_hz times a second while playing.
        if self._sent_trades < 0 or (self._dirty_trades and self._trades_throttle.ready(
                force=not frame.playing)):
            self._dirty_trades = False
            ts_ns = np.array([t[0] for t in self._tr], dtype=np.int64)
            tr = np.array([t[1:] for t in self._tr], dtype=np.float64).reshape(-1, 3)
            with self.trades.hold_sync():
                self.trades.x = ts_ns.astype("datetime64[ns]")
                self.trades.y = f64(tr[:, 0])
                self.trades.size = f64(tr[:, 1])
                self.trades.color = f64(tr[:, 2])
            self._sent_trades = len(tr)
        self.updates += 1
