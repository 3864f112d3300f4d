"""Shared helpers of the dashboard parts: colours, figures, float64 arrays, throttling."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BID = "#1e8449"
ASK = "#c0392b"
MID = "#566573"
WMID = "#8e44ad"

#: Wall clock used for throttling; parts take a ``clock`` argument so tests can fake it.
Clock = Callable[[], float]
now: Clock = time.perf_counter


def f64(values: Any) -> np.ndarray:
    """A NEW contiguous float64 array (bqplot casts int64 to int32; a mutated array that is
    assigned again is not synced, so every update gets a fresh object)."""
    return np.array(values, dtype=np.float64, copy=True, order="C")


def finite(px: np.ndarray) -> np.ndarray:
    """Mask of the levels that exist (NaN price = empty level)."""
    return np.isfinite(px)


def price_decimals(prices: np.ndarray, max_decimals: int = 9) -> int:
    """Fewest decimals that show every price exactly (e.g. 2 for 64.83, 0 for 5000)."""
    p = np.asarray(prices, dtype=np.float64)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return 2
    for d in range(max_decimals + 1):
        if np.all(np.abs(np.round(p, d) - p) < 1e-9 * np.maximum(1.0, np.abs(p))):
            return d
    return max_decimals


def fmt_px(value: float, decimals: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def nice_max(value: float) -> float:
    """A round number >= value (1, 2, 2.5, 5 x 10^k), at least 1."""
    if not math.isfinite(value) or value <= 1:
        return 1.0
    k = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * k >= value:
            return float(m * k)
    return float(10 * k)


def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round tick values inside [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo if math.isfinite(lo) else 0.0])
    raw = (hi - lo) / max(n - 1, 1)
    k = 10 ** math.floor(math.log10(raw))
    step = min((m * k for m in (1, 2, 2.5, 5, 10)),
               key=lambda st: abs((hi - lo) / st - (n - 1)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    return np.round(ticks, 9)


def book_key(frame: Any) -> tuple[int, int]:
    return int(frame.instrument_id), int(frame.publisher_id)


def figure(marks: list, axes: list, *, title: str = "", height: str = "300px",
           width: str = "100%", css_class: str | None = None, legend: bool = False,
           margin: dict | None = None):
    """A bqplot Figure set up for live updates (no animation, fixed size)."""
    import bqplot as bq
    from ipywidgets import Layout

    fig = bq.Figure(
        marks=marks, axes=axes, title=title, animation_duration=0,
        fig_margin=margin or {"top": 30, "bottom": 38, "left": 66, "right": 15},
        layout=Layout(width=width, height=height, min_width="260px"),
        legend_location="top-left", title_style={"font-size": "13px"},
    )
    if css_class:
        fig.add_class(css_class)
    return fig


def span(values: Any) -> tuple[float, float]:
    """(min, max) of the finite values, NaNs when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.min()), float(v.max())


def infer_tick(frame: Any) -> float | None:
    """Smallest gap between the frame's price levels (rounded to 1e-9), or None.

    Each side's levels are sorted, so neighbours hold the smallest gaps; the spread counts
    too. Cheap enough to run at every frame."""
    best = math.inf
    for px in (frame.bid_px, frame.ask_px):
        p = px[np.isfinite(px)]
        if len(p) > 1:
            d = np.abs(np.diff(p))
            d = d[d > 1e-12]
            if len(d):
                best = min(best, float(d.min()))
    bb, ba = frame.best_bid, frame.best_ask
    if math.isfinite(bb) and math.isfinite(ba) and abs(ba - bb) > 1e-12:
        best = min(best, abs(ba - bb))
    return round(best, 9) if math.isfinite(best) else None


class StickyRange:
    """An explicit, rarely changing domain for a bqplot scale.

    A domain recomputed from the data at every frame makes bqplot redraw the axis and every
    mark on the scale; that costs more in the browser than the data itself. ``fit(lo, hi)``
    keeps the scale's ``min``/``max`` while the data stays inside and uses at least
    ``1 / slack`` of the range, else sets a new range with ``margin`` (a fraction of the
    data span, at least ``min_pad``) on each side. It never leaves a zero-width domain
    (bqplot's axes fail on one). ``floor`` pins the lower end (e.g. 0 for sizes).
    Returns True when the scale was changed (one message).
    """

    def __init__(self, scale: Any, *, margin: float = 0.25, min_pad: float = 1.0,
                 rel_pad: float = 0.0, slack: float = 4.0, floor: float | None = None,
                 margin_lo: float | None = None, date: bool = False):
        self.scale = scale
        self.margin, self.min_pad, self.slack = margin, min_pad, slack
        self.rel_pad = rel_pad
        self.margin_lo = margin if margin_lo is None else margin_lo
        self.floor = floor
        self.date = date
        self.lo: float | None = None
        self.hi: float | None = None

    def _value(self, v: float) -> Any:
        if not self.date:
            return float(v)
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(v) // 1000)

    def fit(self, lo: float, hi: float) -> bool:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            if self.lo is not None:
                return False
            lo = hi = self.floor if self.floor is not None else 0.0
        if self.floor is not None:
            lo = self.floor
        if self.lo is not None and self.lo <= lo and hi <= self.hi:
            width = self.hi - self.lo
            least = max(self.min_pad, self.rel_pad * max(abs(lo), abs(hi)))
            if (hi - lo) * self.slack >= width or width <= 3 * least:
                return False
        least = max(self.min_pad, self.rel_pad * max(abs(lo), abs(hi)))
        pad = max((hi - lo) * self.margin, least)
        new_lo = self.floor if self.floor is not None else (
            lo - max((hi - lo) * self.margin_lo, least if hi - lo < least else 0.0))
        new_hi = hi + pad
        self.lo, self.hi = new_lo, new_hi
        with self.scale.hold_sync():
            self.scale.min, self.scale.max = self._value(new_lo), self._value(new_hi)
        return True

    def reset(self) -> None:
        self.lo = self.hi = None


class Throttle:
    """``ready()`` is True at most ``hz`` times a second (by ``clock``)."""

    def __init__(self, hz: float, clock: Clock | None = None):
        self.period = 1.0 / hz if hz > 0 else 0.0
        self.clock = clock or now
        self.last = -math.inf

    def ready(self, force: bool = False) -> bool:
        t = self.clock()
        if force or t - self.last >= self.period:
            self.last = t
            return True
        return False

    def reset(self) -> None:
        self.last = -math.inf


class Part:
    """Base of the dashboard parts: ``widget`` is what is displayed, ``update(frame)``
    redraws it from a :class:`~mbo_lab.replay.session.Frame`."""

    widget: Any

    def update(self, frame: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Forget history (rolling windows) after a seek back or a book change."""

    def _repr_mimebundle_(self, **kw: Any):
        return self.widget._repr_mimebundle_(**kw)
