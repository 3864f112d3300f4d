"""Depth ladder: a price ladder of ``2 * levels + 1`` tick rows around the touch, drawn as
one horizontal bqplot ``Bars`` mark (bid and ask sizes stacked on their rows) with
"size (orders)" labels beside the bars."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import (
    ASK,
    BID,
    Part,
    StickyRange,
    book_key,
    f64,
    figure,
    infer_tick,
    price_decimals,
)


class Ladder(Part):
    """Bids and asks around the touch on fixed price rows (one row per tick).

    The rows are ``2 * levels + 1`` consecutive tick prices centred on the mid; they move
    only when the touch gets near the edge (so the price axis is not redrawn at every
    frame). Levels outside the rows are not shown (the depth chart shows them).
    After :meth:`update`, ``bars.x`` holds the row prices (ascending, float64) and
    ``bars.y`` a ``(2, rows)`` float64 array: row 0 the bid size at each price, row 1 the
    ask size (0 where nothing rests). ``labels.text`` holds ``"size (orders)"`` per row.
    ``tick`` is inferred from the book (the smallest gap between levels) unless given.
    """

    def __init__(self, levels: int = 10, *, tick: float | None = None,
                 height: str = "420px", width: str = "100%"):
        import bqplot as bq

        self.levels = int(levels)
        self.n_rows = 2 * self.levels + 1
        self.fixed_tick = tick
        self.price_scale = bq.OrdinalScale()
        self.size_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.bars = bq.Bars(
            x=np.zeros(0), y=np.zeros((2, 0)), orientation="horizontal", type="stacked",
            colors=[BID, ASK], padding=0.1, stroke="white", stroke_width=0.5,
            scales={"x": self.price_scale, "y": self.size_scale},
            tooltip=bq.Tooltip(fields=["x", "y"], labels=["price", "size"]),
        )
        self.labels = bq.Label(
            x=np.zeros(0), y=np.zeros(0), text=np.array([], dtype=str), align="start",
            x_offset=4, y_offset=0, default_size=11, font_unit="px", colors=["#222"],
            scales={"x": self.size_scale, "y": self.price_scale},
        )
        self.price_axis = bq.Axis(scale=self.price_scale, side="left",
                                  tick_format=".2f", grid_lines="none",
                                  tick_style={"font-size": "11px"})
        self.size_axis = bq.Axis(scale=self.size_scale, label="size (lots)",
                                 grid_lines="dashed", tick_format=",.0f")
        self.widget = figure([self.bars, self.labels], [self.price_axis, self.size_axis],
                             title="Ladder", height=height, width=width,
                             css_class="mbo-ladder",
                             margin={"top": 30, "bottom": 35, "left": 70, "right": 10})
        self._sizes = StickyRange(self.size_scale, floor=0.0, margin=0.45, min_pad=1.0,
                                  slack=3.0)
        self.updates = 0
        self.reset()

    def reset(self) -> None:
        self.tick: float | None = self.fixed_tick
        self._guessed = False
        self.base: int | None = None  # row 0 price in ticks
        self._key: tuple[int, int] | None = None
        self._sizes.reset()

    # ------------------------------------------------------------------ rows
    @property
    def prices(self) -> np.ndarray:
        """The row prices (ascending)."""
        if self.base is None or self.tick is None:
            return np.zeros(0)
        return np.round((self.base + np.arange(self.n_rows)) * self.tick, 9)

    def _place(self, frame: Any) -> bool:
        """Choose the rows; True when they changed."""
        tick = self.fixed_tick or infer_tick(frame)
        changed = False
        if tick is not None and (self.tick is None or self._guessed
                                 or tick < self.tick - 1e-12):
            self.tick, self.base, changed = tick, None, True
            self._guessed = False
        bb, ba = frame.best_bid, frame.best_ask
        touch = [p for p in (bb, ba) if math.isfinite(p)]
        if not touch:
            return changed
        if self.tick is None:  # one level only: guess from its decimals until we know
            self.tick = 10.0 ** -price_decimals(np.array(touch))
            self._guessed = True
        mid = sum(touch) / len(touch)
        m = int(round(mid / self.tick))
        if self.base is not None:
            lo_t = int(round(min(touch) / self.tick)) - self.base
            hi_t = int(round(max(touch) / self.tick)) - self.base
            edge = max(1, self.levels // 3)
            if lo_t >= edge and hi_t <= self.n_rows - 1 - edge:
                return changed
        new_base = m - self.levels
        if new_base != self.base:
            self.base, changed = new_base, True
        return changed

    def rows(self, frame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row prices, bid sizes, ask sizes, order counts) on the current rows."""
        px = self.prices
        n = len(px)
        bid, ask, ct = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        if n == 0:
            return px, bid, ask, ct
        for lp, ls, lc, out in ((frame.bid_px, frame.bid_sz, frame.bid_ct, bid),
                                (frame.ask_px, frame.ask_sz, frame.ask_ct, ask)):
            m = np.isfinite(lp)
            r = np.rint(lp[m] / self.tick).astype(np.int64) - self.base
            ok = (r >= 0) & (r < n)
            out[r[ok]] += ls[m][ok]
            ct[r[ok]] += lc[m][ok]
        return px, bid, ask, ct

    # ------------------------------------------------------------------ update
    def update(self, frame: Any) -> None:
        key = book_key(frame)
        if key != self._key:
            self.reset()
            self._key = key
        moved = self._place(frame)
        px, bid, ask, ct = self.rows(frame)
        size = bid + ask
        text = np.array([f"{int(s):,} ({int(c)})" if s > 0 else ""
                         for s, c in zip(size, ct)], dtype=str)
        self._sizes.fit(0.0, float(size.max()) if len(size) else 0.0)
        if moved:  # the ordinal domain follows the data (both marks hold the rows)
            fmt = f".{price_decimals(px)}f"
            if self.price_axis.tick_format != fmt:
                self.price_axis.tick_format = fmt
        with self.bars.hold_sync():
            self.bars.x = f64(px)
            self.bars.y = f64(np.vstack([bid, ask]))
        with self.labels.hold_sync():
            self.labels.x = f64(size)
            self.labels.y = f64(px)
            self.labels.text = text
        self.updates += 1
