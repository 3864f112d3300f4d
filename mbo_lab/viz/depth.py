"""Cumulative depth: two filled step lines (bids to the left of the touch, asks to the
right), cumulative size against price."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import (
    ASK,
    BID,
    Clock,
    Part,
    StickyRange,
    Throttle,
    f64,
    figure,
    price_ticks,
    size_ticks,
    span,
)


def _side(px: np.ndarray, sz: np.ndarray, n: int, fallback: float) -> tuple[np.ndarray, np.ndarray]:
    """Prices and cumulative sizes of one side, padded to ``n`` points by repeating the
    last one (an empty side becomes a flat zero line at ``fallback``)."""
    m = np.isfinite(px[:n])
    p = px[:n][m].astype(np.float64)
    c = np.cumsum(sz[:n][m].astype(np.float64))
    if len(p) == 0:
        return np.full(n, fallback), np.zeros(n)
    if len(p) < n:
        p = np.concatenate([p, np.full(n - len(p), p[-1])])
        c = np.concatenate([c, np.full(n - len(c), c[-1])])
    return p, c


class DepthChart(Part):
    """Filled cumulative depth step lines.

    After :meth:`update`, ``lines.x`` and ``lines.y`` are ``(2, levels)`` float64 arrays:
    row 0 the bids (best first, price falling), row 1 the asks (best first, price rising).
    The axes keep their range while the book stays inside it (fewer redraws); price
    ticks sit at multiples of ``tick`` with its decimals, size ticks are integers. While
    playing it is redrawn at most ``max_hz`` times a second.
    """

    def __init__(self, levels: int = 10, *, tick: float | None = None, max_hz: float = 10.0,
                 clock: Clock | None = None, height: str = "420px", width: str = "100%"):
        import bqplot as bq

        self.levels = int(levels)
        self.tick = tick
        self.throttle = Throttle(max_hz, clock)
        self.x_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.y_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.lines = bq.Lines(
            x=np.array([[0.2, 0.4], [0.6, 0.8]]), y=np.array([[0.5, 0.5], [0.5, 0.5]]),
            colors=[BID, ASK], fill="bottom",
            fill_colors=[BID, ASK], fill_opacities=[0.35, 0.35], opacities=[1.0, 1.0],
            interpolation="step-after", stroke_width=1.5, labels=["bids", "asks"],
            scales={"x": self.x_scale, "y": self.y_scale},
        )
        self.price_axis = bq.Axis(scale=self.x_scale, grid_lines="none",
                                  tick_format=".2f", tick_values=np.array([0.5]))
        self.size_axis = bq.Axis(scale=self.y_scale, side="left", grid_lines="dashed",
                                 tick_format=",.0f", tick_values=np.array([0.0, 1.0]))
        self.widget = figure(
            [self.lines], [self.price_axis, self.size_axis],
            title="Cumulative depth (lots) by price", height=height, width=width,
            css_class="mbo-depth", margin={"top": 24, "bottom": 24, "left": 52, "right": 14})
        self._x = StickyRange(self.x_scale, margin=0.05, min_pad=1e-9, rel_pad=2e-4,
                              slack=2.0)
        self._y = StickyRange(self.y_scale, floor=0.0, margin=0.3, min_pad=1.0, slack=3.0)
        self.updates = 0

    def reset(self) -> None:
        self._x.reset()
        self._y.reset()

    def set_tick(self, tick: float | None) -> None:
        self.tick = tick

    def update(self, frame: Any) -> None:
        self.updates += 1
        if not self.throttle.ready(force=not frame.playing):
            return
        n = self.levels
        bb, ba = frame.best_bid, frame.best_ask
        if not (np.isfinite(bb) or np.isfinite(ba)):
            return  # an empty book: keep the last picture (nothing finite to draw)
        bx, by = _side(frame.bid_px, frame.bid_sz, n, ba if np.isfinite(ba) else 0.0)
        ax, ay = _side(frame.ask_px, frame.ask_sz, n, bb if np.isfinite(bb) else bx[0])
        x, y = f64(np.vstack([bx, ax])), f64(np.vstack([by, ay]))
        lo, hi = span(x)
        if self._x.fit(lo, hi):
            ticks, fmt = price_ticks(self._x.lo, self._x.hi, self.tick or 0.0, n=4)
            with self.price_axis.hold_sync():
                self.price_axis.tick_format = fmt
                if len(ticks):
                    self.price_axis.tick_values = ticks
        if self._y.fit(0.0, span(y)[1]):
            self.size_axis.tick_values = size_ticks(self._y.hi, 4)
        with self.lines.hold_sync():
            self.lines.x = x
            self.lines.y = y
