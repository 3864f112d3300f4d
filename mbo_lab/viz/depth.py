"""Cumulative depth: two filled step lines (bids to the left of the touch, asks to the
right), cumulative size against price."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import (
    ASK,
    BID,
    Part,
    StickyRange,
    f64,
    figure,
    nice_ticks,
    price_decimals,
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
    The axes keep their range while the book stays inside it (fewer redraws).
    """

    def __init__(self, levels: int = 10, *, height: str = "420px", width: str = "100%"):
        import bqplot as bq

        self.levels = int(levels)
        self.x_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.y_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.lines = bq.Lines(
            x=np.zeros((2, 1)), y=np.zeros((2, 1)), colors=[BID, ASK], fill="bottom",
            fill_colors=[BID, ASK], fill_opacities=[0.35, 0.35], opacities=[1.0, 1.0],
            interpolation="step-after", stroke_width=1.5, labels=["bids", "asks"],
            scales={"x": self.x_scale, "y": self.y_scale},
        )
        self.price_axis = bq.Axis(scale=self.x_scale, label="price", grid_lines="none",
                                  tick_format=".2f")
        self.widget = figure(
            [self.lines],
            [self.price_axis,
             bq.Axis(scale=self.y_scale, side="left", label="cum. size",
                     grid_lines="dashed", tick_format=",.0f")],
            title="Cumulative depth", height=height, width=width, css_class="mbo-depth")
        self._x = StickyRange(self.x_scale, margin=0.05, min_pad=1e-9, rel_pad=2e-4,
                              slack=2.0)
        self._y = StickyRange(self.y_scale, floor=0.0, margin=0.3, min_pad=1.0, slack=3.0)
        self.updates = 0

    def reset(self) -> None:
        self._x.reset()
        self._y.reset()

    def update(self, frame: Any) -> None:
        n = self.levels
        bb, ba = frame.best_bid, frame.best_ask
        bx, by = _side(frame.bid_px, frame.bid_sz, n, ba if np.isfinite(ba) else 0.0)
        ax, ay = _side(frame.ask_px, frame.ask_sz, n, bb if np.isfinite(bb) else bx[0])
        x, y = f64(np.vstack([bx, ax])), f64(np.vstack([by, ay]))
        lo, hi = span(x)
        if self._x.fit(lo, hi):
            ticks = nice_ticks(self._x.lo, self._x.hi, 5)
            with self.price_axis.hold_sync():
                self.price_axis.tick_format = f".{max(price_decimals(x), price_decimals(ticks))}f"
                self.price_axis.tick_values = ticks
        self._y.fit(0.0, span(y)[1])
        with self.lines.hold_sync():
            self.lines.x = x
            self.lines.y = y
        self.updates += 1
