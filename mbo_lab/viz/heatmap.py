"""Bookmap-style heatmap: resting size by price (rows) over time (columns) on a fixed
window, drawn by a canvas ``HeatMap`` and refreshed at most ``max_hz`` times a second."""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from ._common import (
    ASK,
    BID,
    Clock,
    Part,
    Throttle,
    book_key,
    f64,
    figure,
    infer_tick,
    price_decimals,
)


class Heatmap(Part):
    """Resting size by price over time, ``rows`` prices x ``cols`` time columns.

    Each refresh appends one column holding the latest frame's book: bid sizes as positive
    and ask sizes as negative values (``log1p`` of the size), 0 where nothing rests (the
    canvas HeatMap does not draw NaN cells reliably). The rows follow the mid: when it
    leaves the middle half of the window the grid is shifted. ``tick`` (the row height)
    is inferred from the book unless given.
    While playing, refreshes happen at most ``max_hz`` per second (frames in between only
    replace the pending state); when paused every frame is drawn at once.

    ``heat.x`` holds the column positions ``0 .. cols - 1`` (fixed, newest on the right:
    a fixed x domain spares the browser a second redraw per refresh), ``heat.y`` the row
    prices (float64), ``heat.color`` the ``(rows, cols)`` float64 grid; ``times`` the
    market time (ns) of each filled column; ``caption`` (an HTML line under the figure,
    at most once a second while playing) shows their time span. (A changing figure title
    would make bqplot lay the figure out again.)
    """

    TITLE = "Resting size by price (bids green, asks red)"

    def __init__(self, rows: int = 60, cols: int = 200, max_hz: float = 5.0, *,
                 tick: float | None = None, clock: Clock | None = None,
                 height: str = "300px", width: str = "100%"):
        import bqplot as bq

        self.rows, self.cols = int(rows), int(cols)
        self.fixed_tick = tick
        self.throttle = Throttle(max_hz, clock)
        self.x_scale = bq.LinearScale()
        self.y_scale = bq.LinearScale()
        self.color_scale = bq.ColorScale(colors=[ASK, "#fdebd0", "#ffffff", "#d5f5e3", BID],
                                         min=-1.0, max=1.0, mid=0.0)
        self.heat = bq.HeatMap(
            x=np.arange(self.cols, dtype=np.float64), y=np.arange(self.rows, dtype=np.float64),
            color=np.zeros((self.rows, self.cols)),
            scales={"x": self.x_scale, "y": self.y_scale, "color": self.color_scale},
        )
        self.price_axis = bq.Axis(scale=self.y_scale, side="left", label="price",
                                  label_offset="48px",
                                  tick_format=".2f", grid_lines="none")
        self.figure = figure(
            [self.heat],
            [bq.Axis(scale=self.x_scale, label="older \u2190 time \u2192 newest", num_ticks=0,
                     grid_lines="none"),
             self.price_axis],
            title=self.TITLE, height=height, width="100%", css_class="mbo-heatmap")
        self.caption = W.HTML(layout=W.Layout(height="20px", overflow="hidden"))
        self.caption.add_class("mbo-heatmap-span")
        self._caption_throttle = Throttle(1.0, clock)
        self.widget = W.VBox([self.figure, self.caption], layout=W.Layout(width=width))
        self.renders = 0
        self.updates = 0
        self.reset()

    def reset(self) -> None:
        self.grid = np.zeros((self.rows, self.cols))
        self.times = np.zeros(self.cols, dtype=np.int64)
        self.n = 0
        self.tick = self.fixed_tick
        self.anchor: float | None = None  # price of row 0
        self.vmax = 1.0
        self._key: tuple[int, int] | None = None
        self._pending: Any = None
        self.throttle.reset()

    # ------------------------------------------------------------------ grid
    def _row(self, px: np.ndarray) -> np.ndarray:
        return np.rint((px - self.anchor) / self.tick).astype(np.int64)

    def _recenter(self, frame: Any) -> None:
        mid = frame.bbo["mid"]
        if not math.isfinite(mid):
            mid = frame.best_bid if math.isfinite(frame.best_bid) else frame.best_ask
        if not math.isfinite(mid):
            return
        centre = self.rows // 2
        new_anchor = round(mid / self.tick) * self.tick - centre * self.tick
        if self.anchor is None:
            self.anchor = new_anchor
            return
        r = (mid - self.anchor) / self.tick
        if abs(r - centre) <= self.rows / 4:
            return
        shift = int(round((new_anchor - self.anchor) / self.tick))
        if shift == 0:
            return
        g = np.zeros_like(self.grid)
        if abs(shift) < self.rows:
            if shift > 0:  # prices went up: old row k is new row k - shift
                g[: self.rows - shift] = self.grid[shift:]
            else:
                g[-shift:] = self.grid[: self.rows + shift]
        self.grid = g
        self.anchor = new_anchor

    def _column(self, frame: Any) -> np.ndarray:
        col = np.zeros(self.rows)
        for px, sz, sign in ((frame.bid_px, frame.bid_sz, 1.0), (frame.ask_px, frame.ask_sz, -1.0)):
            m = np.isfinite(px)
            if not m.any():
                continue
            r = self._row(px[m])
            ok = (r >= 0) & (r < self.rows)
            col[r[ok]] = sign * np.log1p(sz[m][ok].astype(np.float64))
        return col

    def _push(self, frame: Any) -> None:
        ts = int(frame.ts_recv)
        tick = self.fixed_tick or infer_tick(frame)
        if tick is not None and (self.tick is None or tick < self.tick - 1e-12):
            if self.tick is not None:  # a finer tick than assumed: start again
                self.grid[:] = 0.0
                self.n = 0
                self.anchor = None
            self.tick = tick
        if self.tick is None:
            return
        self._recenter(frame)
        if self.anchor is None:
            return
        col = self._column(frame)
        if self.n and ts <= self.times[self.n - 1]:
            self.grid[:, self.n - 1] = col  # same market time: replace
        else:
            if self.n == self.cols:
                self.grid[:, :-1] = self.grid[:, 1:]
                self.times[:-1] = self.times[1:]
                self.n -= 1
            self.grid[:, self.n] = col
            self.times[self.n] = ts
            self.n += 1
        peak = float(np.abs(col).max()) if len(col) else 0.0
        if peak > self.vmax or peak < self.vmax * 0.3:
            self.vmax = max(1.0, float(np.ceil(peak * 1.1 * 4) / 4))
            with self.color_scale.hold_sync():
                self.color_scale.min, self.color_scale.max = -self.vmax, self.vmax
        self._render(bool(frame.playing))

    def _render(self, playing: bool = False) -> None:
        # The newest column is drawn at the right edge.
        n = self.n
        color = np.zeros((self.rows, self.cols))
        color[:, self.cols - n:] = self.grid[:, :n]
        y = self.anchor + self.tick * np.arange(self.rows, dtype=np.float64)
        d = price_decimals(y[: min(5, self.rows)])
        fmt = f".{d}f"
        if self.price_axis.tick_format != fmt:
            self.price_axis.tick_format = fmt
        with self.heat.hold_sync():
            if not np.array_equal(self.heat.y, y):
                self.heat.y = f64(y)
            self.heat.color = color  # a new array at every render
        if n and self._caption_throttle.ready(force=not playing):
            t0, t1 = (pd.Timestamp(int(t), tz="UTC").strftime("%H:%M:%S.%f")[:-3]
                      for t in (self.times[0], self.times[n - 1]))
            self.caption.value = (f"<span style='font-size:11px;color:#566573'>{n} columns, "
                                  f"{t0} \u2013 {t1} UTC</span>")
        self.renders += 1

    # ------------------------------------------------------------------ update
    def update(self, frame: Any) -> None:
        key = book_key(frame)
        if key != self._key or (self.n and frame.ts_recv < self.times[self.n - 1]):
            self.reset()
            self._key = key
        self.updates += 1
        self._pending = frame
        if self.throttle.ready(force=not frame.playing):
            self._pending = None
            self._push(frame)

    def flush(self) -> None:
        """Draw a frame held back by the throttle."""
        if self._pending is not None:
            fr, self._pending = self._pending, None
            self.throttle.ready(force=True)
            self._push(fr)
