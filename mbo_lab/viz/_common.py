"""Shared helpers of the dashboard parts: colours, theme CSS, time zones and time/price
ticks made in Python (never by the browser), figures, float64 arrays, throttling, and the
session accessors with fallbacks until contract B lands (tick, time zone, history)."""

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
        legend_location="top-left", title_style={"font-size": "12px"},
        background_style={"fill": "transparent"},
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


# ---------------------------------------------------------------------------- theme
#: CSS of the dashboard: JupyterLab's theme variables (light and dark), transparent figures.
THEME_CSS = """
.mbo-dashboard { color: var(--jp-ui-font-color1, #222); font-size: 12px; }
.mbo-dashboard .bqplot > svg, .mbo-dashboard .bqplot .svg-background,
.mbo-liquidity-map .bqplot .svg-background { fill: transparent !important; background: transparent !important; }
.mbo-dashboard .bqplot { background: transparent !important; }
.mbo-dashboard .bqplot .axis text, .mbo-dashboard .bqplot .axislabel,
.mbo-dashboard .bqplot .mainheading, .mbo-dashboard .bqplot text.mainheading {
  fill: var(--jp-ui-font-color1, #222) !important; color: var(--jp-ui-font-color1, #222); }
.mbo-dashboard .bqplot .axis path, .mbo-dashboard .bqplot .axis line {
  stroke: var(--jp-border-color1, #999) !important; }
.mbo-dashboard .bqplot .axis .tick line { stroke-opacity: 0.35; }
.mbo-dashboard .mbo-muted { color: var(--jp-ui-font-color2, #566573); }
.mbo-dashboard table.mbo-kv td:first-child { color: var(--jp-ui-font-color2, #566573); padding-right: 8px; }
.mbo-dashboard table.mbo-kv td { font-family: var(--jp-code-font-family, monospace); padding: 0 2px; }
.mbo-dashboard .mbo-flag-crossed { color: #fff; background: #c0392b; padding: 0 4px; font-weight: bold; }
.mbo-dashboard .mbo-flag-locked { color: #fff; background: #d35400; padding: 0 4px; font-weight: bold; }
.mbo-dashboard .mbo-flag-warn { color: #fff; background: #b9770e; padding: 0 4px; font-weight: bold; }
.mbo-dashboard .mbo-errors-box { color: var(--jp-error-color1, #922b21);
  background: var(--jp-error-color3, #fdedec); border: 1px solid var(--jp-error-color2, #e6b0aa);
  padding: 2px 8px; font-size: 12px; }
table.mbo-dom { border-collapse: collapse; width: 100%; table-layout: fixed;
  font-family: var(--jp-code-font-family, monospace); font-size: 11.5px; line-height: 14px; }
table.mbo-dom th { font-weight: normal; color: var(--jp-ui-font-color2, #566573);
  border-bottom: 1px solid var(--jp-border-color2, #ccc); padding: 1px 3px; }
table.mbo-dom td { padding: 0 4px; height: 14px; white-space: nowrap; overflow: hidden;
  color: var(--jp-ui-font-color1, #222); }
table.mbo-dom td.bc, table.mbo-dom td.bs { text-align: right; }
table.mbo-dom td.ac, table.mbo-dom td.as { text-align: left; }
table.mbo-dom td.p { text-align: center; color: var(--jp-ui-font-color1, #222);
  background: var(--jp-layout-color2, #eee); }
table.mbo-dom td.bs { background: linear-gradient(to left, rgba(30,132,73,.45) var(--w,0%), transparent var(--w,0%)); }
table.mbo-dom td.as { background: linear-gradient(to right, rgba(192,57,43,.45) var(--w,0%), transparent var(--w,0%)); }
table.mbo-dom td.bc, table.mbo-dom td.ac { color: var(--jp-ui-font-color2, #566573); }
table.mbo-dom tr.bb td.p { background: rgba(30,132,73,.55); color: #fff; font-weight: bold; }
table.mbo-dom tr.ba td.p { background: rgba(192,57,43,.55); color: #fff; font-weight: bold; }
table.mbo-dom tr.x td { box-shadow: inset 0 0 0 9999px rgba(211,84,0,.18); }
table.mbo-dom tr.x td.p { background: #d35400; color: #fff; font-weight: bold; }
table.mbo-dom tr.l td.p { background: #b9770e; color: #fff; font-weight: bold; }
table.mbo-dom td.t { text-align: left; font-weight: bold; }
table.mbo-dom td.t.B { color: #27ae60; } table.mbo-dom td.t.A { color: #e74c3c; }
.mbo-dom-head { font-size: 12px; margin-bottom: 2px; }
"""


def theme_style() -> str:
    """The dashboard's ``<style>`` element (put once into the page by the dashboard)."""
    return f"<style>{THEME_CSS}</style>"


# ---------------------------------------------------------------------------- time zones
#: Time zone of an exchange's data by dataset prefix (used when the session says nothing).
EXCHANGE_ZONES = {"GLBX": "America/Chicago", "XCME": "America/Chicago", "XNYM": "America/Chicago",
                  "IFEU": "Europe/London", "XEUR": "Europe/Berlin", "XNAS": "America/New_York",
                  "XNYS": "America/New_York", "DBEQ": "America/New_York"}


def session_time_zone(session: Any) -> str:
    """The exchange's time zone of a session: ``session.time_zone`` (contract B) when set,
    else guessed from the dataset (GLBX/CME -> America/Chicago), else "UTC"."""
    tz = getattr(session, "time_zone", None)
    if isinstance(tz, str) and tz:
        return tz
    data = getattr(session, "data", None)
    ds = str(getattr(getattr(data, "metadata", None), "dataset", "") or "").upper()
    for prefix, zone in EXCHANGE_ZONES.items():
        if ds.startswith(prefix):
            return zone
    return "UTC"


def _zone(tz: str):
    from zoneinfo import ZoneInfo

    return dt.UTC if tz in ("UTC", "utc", None) else ZoneInfo(tz)


def utc_offset_s(tz: str, t_s: float) -> float:
    """Offset of zone ``tz`` from UTC (seconds) at UTC time ``t_s`` (seconds since epoch)."""
    if tz in ("UTC", "utc"):
        return 0.0
    z = _zone(tz)
    off = dt.datetime.fromtimestamp(float(t_s), tz=dt.UTC).astimezone(z).utcoffset()
    return off.total_seconds() if off is not None else 0.0


def fmt_time(ns: int, tz: str = "UTC", fmt: str = "%Y-%m-%d %H:%M:%S.%f") -> str:
    """A ns timestamp as text in zone ``tz`` (24-hour clock), "-" for 0."""
    if not ns:
        return "-"
    t = dt.datetime.fromtimestamp(int(ns) // 1000 / 1e6, tz=dt.UTC).astimezone(_zone(tz))
    return t.strftime(fmt)


def zone_label(tz: str) -> str:
    """Short label of a zone for axis titles, e.g. "UTC" or "America/Chicago"."""
    return "UTC" if tz in ("UTC", "utc") else tz


#: Time-axis steps (seconds): ms to a day.
TIME_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
              60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def js_key(v: float) -> str:
    """How JavaScript's ``String(number)`` writes a float64 (keys of bqplot's
    ``Axis.tick_labels``): the shortest round-trip digits, no trailing ``.0``."""
    r = repr(float(v))
    return r[:-2] if r.endswith(".0") else r


def time_ticks(lo_s: float, hi_s: float, tz: str = "UTC", n: int = 5
               ) -> tuple[np.ndarray, dict[str, str]]:
    """Tick values (seconds since the epoch, float64) and their labels in zone ``tz``.

    At most ``n + 1`` ticks at round steps of local time, 24-hour labels whose precision
    follows the step (so no two labels repeat), the date added at local midnight. The
    labels are made here, never by the browser, so they do not depend on its time zone.
    """
    if not (math.isfinite(lo_s) and math.isfinite(hi_s)) or hi_s <= lo_s:
        return np.zeros(0), {}
    span_s = hi_s - lo_s
    step = next((s for s in TIME_STEPS if span_s / s <= n), TIME_STEPS[-1])
    if span_s / step > n:
        step = math.ceil(span_s / n / 86400) * 86400.0
    off = utc_offset_s(tz, lo_s)
    first = math.ceil((lo_s + off) / step - 1e-9) * step
    local = np.arange(first, hi_s + off + step * 1e-9, step)
    values = np.round(local - off, 6)
    if step < 1:
        fmt, cut = "%H:%M:%S.%f", 3
    elif step < 60:
        fmt, cut = "%H:%M:%S", 0
    else:
        fmt, cut = "%H:%M", 0
    labels: dict[str, str] = {}
    z = _zone(tz)
    for v in values:
        t = dt.datetime.fromtimestamp(float(v), tz=dt.UTC).astimezone(z)
        s = t.strftime(fmt)
        if cut:
            s = s[:-cut]
        if step >= 60 and t.hour == 0 and t.minute == 0:
            s = t.strftime("%b %d")
        labels[js_key(v)] = s
    return values.astype(np.float64), labels


def set_time_ticks(axis: Any, values: np.ndarray, labels: dict[str, str]) -> None:
    """Give a bqplot ``Axis`` new tick values and their labels without a moment of
    unlabelled ticks: first the labels of the old and the new values (one message), then
    the new values (a second message). Sent together, bqplot 0.13 redraws the new values
    with the previous labels and shows raw numbers (e.g. "1.7587437e+9") until the
    next change."""
    old = axis.tick_values if axis.tick_values is not None else np.zeros(0)
    keep = {js_key(v) for v in old}
    merged = {k: v for k, v in (axis.tick_labels or {}).items() if k in keep}
    merged.update(labels)
    if merged != axis.tick_labels:
        axis.tick_labels = merged
    if not np.array_equal(old, values):
        axis.tick_values = values
    if len(merged) > len(labels):
        axis.tick_labels = dict(labels)


# ---------------------------------------------------------------------------- price ticks
def tick_decimals(tick: float) -> int:
    """Decimals of a price increment (0.01 -> 2, 0.25 -> 2, 5 -> 0)."""
    return price_decimals(np.array([tick], dtype=np.float64))


def price_ticks(lo: float, hi: float, tick: float, n: int = 5) -> tuple[np.ndarray, str]:
    """Tick values at multiples of the instrument's ``tick`` inside [lo, hi] (at most
    ``n + 1``, never repeated) and the d3 format with the tick's decimals."""
    dec = tick_decimals(tick) if tick and tick > 0 else price_decimals(np.array([lo, hi]))
    fmt = f",.{dec}f"
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo or not tick or tick <= 0:
        return np.zeros(0), fmt
    step = tick
    k = 0
    while (hi - lo) / step > n:
        step = tick * (1, 2, 5)[k % 3] * 10 ** (k // 3)
        k += 1
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    vals = np.round(np.arange(first, last + 1) * step, max(dec, 0) + 2)
    return vals.astype(np.float64), fmt


def size_ticks(hi: float, n: int = 4) -> np.ndarray:
    """Integer tick values 0 .. >= hi at round steps (no repeated integer labels)."""
    hi = max(1.0, float(hi) if math.isfinite(hi) else 1.0)
    step = 1.0
    k = 0
    while hi / step > n:
        step = float((1, 2, 5)[k % 3] * 10 ** (k // 3))
        k += 1
    return np.arange(0.0, hi + step * 1e-9, step, dtype=np.float64)


# ---------------------------------------------------------------------------- session access
def session_tick(session: Any) -> float | None:
    """The selected book's price increment (``session.tick``, inferred by the session from
    the data); None when the session cannot tell."""
    try:
        v = float(session.tick)
    except (AttributeError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def frame_book_record(frame: Any) -> tuple[dict, bool]:
    """(record to show, True if it belongs to the frame's book): ``frame.book_record``
    (contract B) when present, else ``frame.record`` checked against the frame's book."""
    rec = getattr(frame, "book_record", None)
    if rec:
        return rec, True
    rec = frame.record or {}
    own = (rec.get("instrument_id") == frame.instrument_id
           and rec.get("publisher_id") == frame.publisher_id)
    return rec, own


def history(session: Any, points: int = 300, span_ns: int | None = None) -> Any:
    """BBO path (``bid``, ``ask``, ``mid``; DatetimeIndex UTC on a regular grid) ending at
    the session's position, trades of the same window in ``df.attrs["trades"]``: the
    session's :meth:`~mbo_lab.replay.session.Session.history` (computed by the kernel from
    checkpoints; views never touch kernel state themselves)."""
    return session.history(points=points, span_ns=span_ns)


def data_warnings(session: Any) -> list[str]:
    """Problems of the session's source a user must see (e.g. a truncated file opened with
    ``allow_truncated=True``), from the data's attributes when it has them."""
    data = getattr(session, "data", None)
    out: list[str] = []
    tr = getattr(data, "truncated", None)
    if tr:
        out.append(tr if isinstance(tr, str) else
                   "TRUNCATED file (opened with allow_truncated=True): the data ends at an "
                   "incomplete record")
    for w in getattr(data, "warnings", None) or ():
        if "truncat" in str(w).lower() and str(w) not in out:
            out.append(str(w))
    return out


def user_message(exc: BaseException) -> str:
    """What a user sees of an error: the package's message alone for its own errors
    (no traceback), ``Type: message`` for others."""
    from ..errors import MboLabError

    if isinstance(exc, MboLabError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
