"""The whole-day liquidity map: resting size by price over time, straight from the kernel.

:class:`LiquidityMap` is one bqplot figure whose time (x) and price (y) scales are shared
by every mark on it:

* a canvas ``HeatMap`` of resting size per cell (bids and asks as signed values on a
  diverging, transparent-in-the-middle colour scale, so it reads in light and dark themes),
* the best bid and ask path per time bin (``Lines``),
* trades as bubbles sized by quantity and coloured by aggressor (``Scatter``),
* large resting orders (from ``grid.large_orders``) as horizontal segments,
* the replay cursor (a vertical line following the session's frames, throttled),

plus a volume-profile strip for the visible window beside it (same price scale).

Every view of the map is computed by the session (``session.liquidity``,
``session.trades_between``: contract B) for exactly the window on screen at screen
resolution, so the cells shown are exact. Pan/zoom (mouse wheel and drag), box zoom, the
zoom buttons and the reset button change the window; the kernel is asked again after a
short debounce (an asyncio timer on the kernel's loop). In "seek" mode a click seeks the
session to that time, so every other view follows.

Traffic is bounded: one update sends at most ``max_cells`` heatmap cells (default 250k)
plus a few thousand points, never anything per record; prices and times go to the
browser as float64 (the colour values of the cells as float32). The heatmap sits on fixed
unit scales and fills the plot; after each query the time/price domains are set to the
grid's edges, so the browser redraws the canvas once per update (not at every wheel or
drag event). Double-click has no Python event in bqplot: the "whole day" button resets.
Times are sent as seconds since ``origin_ns`` (UTC midnight of the first record's day) on
a ``LinearScale``; the time-axis labels are computed in the kernel in the chosen zone
(``UTC`` or the session's exchange zone), so they are right whatever the browser's time
zone is. A zone change only relabels (axis, window and cursor times): no new query.

On its own the map has a zone dropdown in its toolbar. Inside the
:class:`~mbo_lab.viz.dashboard.Dashboard` it has none (``zone_control=False``): the
dashboard's header control is the one zone control and calls
:meth:`LiquidityMap.set_time_zone`.

>>> s = mbo_lab.open("CLX5_mbo.dbn")                     # doctest: +SKIP
>>> from mbo_lab.viz.liquidity_map import LiquidityMap
>>> m = LiquidityMap(s); m                                # doctest: +SKIP
>>> m.show(start="2025-09-24 21:50", end="2025-09-24 21:51")   # doctest: +SKIP
>>> m.close()                                             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time as _time
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from ..config import check_time_zone
from ..io.records import to_ns

log = logging.getLogger(__name__)

__all__ = ["LiquidityMap", "color_cells", "time_ticks", "js_number_key"]

BID = "#1e8449"
ASK = "#c0392b"
NEUTRAL = "#808b96"
LARGE_BID = "#52be80"
LARGE_ASK = "#ec7063"
CURSOR = "#f39c12"

#: Colour value of the faintest cell that passes the lower cut-off (0 is transparent).
FLOOR = 0.18

#: Time-tick steps (ns) the axis may use.
_STEPS_NS = [int(x) for x in (
    1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8,
    1e9, 2e9, 5e9, 1e10, 1.5e10, 3e10,
    6e10, 1.2e11, 3e11, 6e11, 9e11, 1.8e12,
    3.6e12, 7.2e12, 1.08e13, 2.16e13, 4.32e13, 8.64e13)]

_MODES = ("pan/zoom", "box zoom", "seek")


# ---------------------------------------------------------------------------- pure helpers
def js_number_key(value: float) -> str:
    """The string JavaScript's ``String(value)`` gives for a float tick value (bqplot looks
    ``Axis.tick_labels`` up by it). Exact for |value| in [1e-4, 1e16) and integers."""
    v = float(value)
    if v == int(v) and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


def time_ticks(start_ns: int, end_ns: int, origin_ns: int, tz: str = "UTC",
               n: int = 6) -> tuple[np.ndarray, dict[str, str]]:
    """About ``n`` round time ticks inside [start_ns, end_ns] in the zone ``tz``.

    Returns the tick values as float64 seconds since ``origin_ns`` and their labels
    (keys: :func:`js_number_key` of each value), formatted in ``tz`` with as many
    digits as the step needs (``HH:MM``, ``HH:MM:SS`` or ``HH:MM:SS.mmm``; the date is
    added when the window spans more than a day)."""
    start_ns, end_ns = int(start_ns), int(end_ns)
    if end_ns <= start_ns:
        end_ns = start_ns + 1_000_000
    span = end_ns - start_ns
    step = next((s for s in _STEPS_NS if span / s <= n), _STEPS_NS[-1])
    while span / step > 3 * n:  # multi-day windows
        step *= 2
    off = int(pd.Timestamp(start_ns, tz="UTC").tz_convert(tz).utcoffset().total_seconds()
              * 1e9)
    first = -((-(start_ns + off)) // step) * step - off  # ceil in local wall time
    ticks = np.arange(first, end_ns + 1, step, dtype=np.int64)
    if len(ticks) == 0:  # a window shorter than a millisecond: one tick at its start
        ticks = np.array([start_ns], dtype=np.int64)
        step = 1
    if span > 86_400 * 10**9:
        fmt = "%m-%d %H:%M"
    elif step < 10**6:
        fmt = "%H:%M:%S.%f "  # microseconds (the trailing space keeps them all)
    elif step < 10**9:
        fmt = "%H:%M:%S.%f"
    elif step < 60 * 10**9:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    idx = pd.DatetimeIndex(ticks.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(tz)
    labels = [s[:-3] if fmt.endswith("%f") else s.strip() for s in idx.strftime(fmt)]
    # rounded to the microsecond, so the float key is the same in Python and in JS
    values = np.round((ticks - int(origin_ns)) / 1e3) / 1e6
    return values.astype(np.float64), {js_number_key(v): lab for v, lab in zip(values, labels)}


def color_cells(bid: np.ndarray, ask: np.ndarray, *, log_scale: bool = True,
                lower_pct: float = 5.0, upper_pct: float = 99.5
                ) -> tuple[np.ndarray, float, float]:
    """Colour values in [-1, 1] for resting sizes per cell.

    ``bid``/``ask``: resting size (lots) per cell, NaN where no state exists. Each cell
    shows the side with more size: positive for bids, negative for asks. The cut-offs are
    percentiles of the non-zero cell sizes: cells under the lower one are 0 (transparent),
    cells at or over the upper one are +-1, the rest scale linearly (or by ``log1p``) into
    ``[FLOOR, 1]``. Returns ``(values, lower_size, upper_size)``; never NaN (bqplot's canvas
    HeatMap does not draw NaN cells reliably)."""
    b = np.nan_to_num(np.asarray(bid, dtype=np.float64), nan=0.0)
    a = np.nan_to_num(np.asarray(ask, dtype=np.float64), nan=0.0)
    bid_side = b >= a
    mag = np.where(bid_side, b, a)
    nz = mag[mag > 0]
    out = np.zeros(mag.shape, dtype=np.float64)
    if nz.size == 0:
        return out, 0.0, 0.0
    lo_p, hi_p = sorted((min(max(float(lower_pct), 0.0), 100.0),
                         min(max(float(upper_pct), 0.0), 100.0)))
    lo, hi = (float(v) for v in np.percentile(nz, [lo_p, hi_p]))
    tf = np.log1p if log_scale else (lambda x: x)
    tlo, thi = float(tf(lo)), float(tf(hi))
    show = mag >= lo
    show &= mag > 0
    if thi > tlo:
        x = np.clip((tf(mag) - tlo) / (thi - tlo), 0.0, 1.0)
    else:
        x = np.ones(mag.shape)
    val = FLOOR + (1.0 - FLOOR) * x
    out[show] = val[show]
    out[~bid_side] *= -1.0
    return out, lo, hi


def _f64(values: Any) -> np.ndarray:
    """A new contiguous float64 array (bqplot casts int64 to int32; new objects sync)."""
    return np.array(values, dtype=np.float64, copy=True, order="C")


def _nice(value: float) -> float:
    """A round number >= value (1, 2, 5 x 10^k), at least 1."""
    if not math.isfinite(value) or value <= 1:
        return 1.0
    k = 10 ** math.floor(math.log10(value))
    return float(next(m * k for m in (1, 2, 5, 10) if m * k >= value))


def _decimals(tick: float) -> int:
    if not (tick and math.isfinite(tick)) or tick <= 0:
        return 2
    for d in range(10):
        if abs(round(tick, d) - tick) < 1e-9 * max(1.0, tick):
            return d
    return 9


# ---------------------------------------------------------------------------- the widget
class LiquidityMap(W.VBox):
    """The liquidity map of a replay session's selected book; see the module docstring.

    Parameters
    ----------
    session : Session
        Uses ``liquidity``, ``trades_between``, ``seek``, ``subscribe``, ``frame``,
        ``tick`` and ``time_zone`` (contract B) and nothing else.
    width_px, height_px : int
        Size of the plot area the grid is computed for (one time bin per pixel column
        and a price row per tick, or per tick multiple when rows would be under
        ``min_row_px`` pixels); at most ``max_cells`` cells.
    measure : "twa" | "max"
        Time-weighted mean or maximum resting size per cell.
    log_scale, lower_pct, upper_pct
        Colour controls (also in the toolbar): percentile cut-offs of the cell sizes.
    time_zone : str, optional
        Zone of the time axis and of the times in the status line; default the session's
        exchange zone (``"UTC"`` is the other choice).
    zone_control : bool
        Show the zone dropdown in the toolbar (``zone_select``; default). The dashboard
        passes False: its header control is the only one and drives the map through
        :meth:`set_time_zone`; ``zone_select`` is then None.
    debounce : float
        Seconds between the last zoom/pan event and the new query (0: query at once).
    cursor_hz : float
        Most cursor moves per second while playing.
    max_trades, max_large_orders : int
        Most trade bubbles / large-order marks per view (the largest are kept).

    After construction the first view (the whole stream) is on screen. Counters:
    ``updates`` (data updates sent), ``bytes_sent`` (array payload bytes of all of them),
    ``last_bytes``, ``last_cells``, ``last_latency`` (seconds from the last zoom/pan event
    of a gesture to the data sent, debounce included), ``last_query_seconds``. ``window`` is the visible
    ``(start_ns, end_ns, price_lo, price_hi)``; ``grid`` the last ``LiquidityGrid``.
    """

    def __init__(self, session: Any, *, width_px: int = 1000, height_px: int = 420,
                 max_cells: int = 250_000, min_row_px: float = 2.0, measure: str = "twa",
                 log_scale: bool = True, lower_pct: float = 5.0, upper_pct: float = 99.5,
                 time_zone: str | None = None, debounce: float = 0.08,
                 cursor_hz: float = 5.0, max_trades: int = 2000,
                 max_large_orders: int = 200, show_profile: bool = True,
                 zone_control: bool = True, clock: Callable[[], float] | None = None):
        import bqplot as bq

        self.session = session
        self.width_px, self.height_px = int(width_px), int(height_px)
        self.max_cells = int(max_cells)
        self.min_row_px = float(min_row_px)
        if measure not in ("twa", "max"):
            raise ValueError(f"measure must be 'twa' or 'max', got {measure!r}")
        self.measure = measure
        self.log_scale = bool(log_scale)
        self.lower_pct, self.upper_pct = float(lower_pct), float(upper_pct)
        self.exchange_zone = str(getattr(session, "time_zone", None) or "UTC")
        self.time_zone = check_time_zone(time_zone or self.exchange_zone)
        self.debounce = float(debounce)
        self.max_trades = int(max_trades)
        self.max_large_orders = int(max_large_orders)
        self.clock = clock or _time.perf_counter
        self._cursor_period = 1.0 / cursor_hz if cursor_hz > 0 else 0.0
        self._cursor_last = -math.inf

        # counters
        self.updates = 0
        self.bytes_sent = 0
        self.last_bytes = 0
        self.last_cells = 0
        self.last_latency = 0.0
        self.last_query_seconds = 0.0
        self.queries = 0
        self.seeks = 0
        self.errors: list[str] = []

        self.grid: Any = None
        self.window: tuple[int, int, float, float] | None = None
        self._home: tuple[Any, tuple[int, int, float, float]] | None = None
        self._own = 0  # > 0 while the kernel itself sets scale domains
        self._timer: Any = None
        self._pending_since: float | None = None
        self._cursor_ns: int | None = None
        self._key: tuple[int, int] | None = None
        self._closed = False

        ts = session.data.records["ts_recv"]
        self.data_start, self.data_end = int(ts[0]), int(ts[-1])
        day = pd.Timestamp(self.data_start, tz="UTC").floor("D")
        self.origin_ns = int(day.as_unit("ns").value)

        # ------------------------------------------------------------ scales and marks
        self.x_scale = bq.LinearScale(allow_padding=False)
        self.y_scale = bq.LinearScale(allow_padding=False)
        self.color_scale = bq.ColorScale(colors=[ASK, "transparent", BID], min=-1.0, max=1.0,
                                         mid=0.0)
        self.unit_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.size_scale = bq.LinearScale(min=0.0, max=1.0)
        self.side_scale = bq.ColorScale(colors=[ASK, NEUTRAL, BID], min=-1.0, max=1.0)
        xy = {"x": self.x_scale, "y": self.y_scale}
        # The heatmap sits on its own fixed [0, 1] x [0, 1] scales: its cells fill the plot
        # area and the kernel makes the time/price domains equal to the grid's edges at
        # every update. So the browser redraws the canvas once per update, never at every
        # wheel/drag event of a gesture (bqplot's canvas HeatMap would redraw all cells on
        # an image as large as the zoomed data: huge, slow, over the canvas size limit).
        self.heat_x_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.heat_y_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.heat = bq.HeatMap(x=_f64([0.25, 0.75]), y=_f64([0.25, 0.75]),
                               color=np.zeros((2, 2), dtype=np.float32),
                               scales={"x": self.heat_x_scale, "y": self.heat_y_scale,
                                       "color": self.color_scale},
                               null_color="transparent")
        self.bbo_lines = bq.Lines(x=_f64([0, 1]), y=_f64([[0, 0], [1, 1]]),
                                  colors=[BID, ASK], stroke_width=1.5,
                                  interpolation="step-before", scales=xy,
                                  labels=["bid", "ask"])
        self.large = bq.Lines(x=_f64([[0, 1]]), y=_f64([[0, 0]]), colors=[LARGE_BID],
                              stroke_width=4, opacities=[0.9], scales=xy, visible=False)
        self.trades = bq.Scatter(x=_f64([0]), y=_f64([0]), color=_f64([0]), size=_f64([1]),
                                 default_size=120, opacities=[0.75], stroke="white",
                                 stroke_width=0.5,
                                 scales={**xy, "color": self.side_scale,
                                         "size": self.size_scale}, visible=False)
        self.cursor = bq.Lines(x=_f64([0, 0]), y=_f64([0, 1]), colors=[CURSOR],
                               stroke_width=1.5, line_style="dashed",
                               scales={"x": self.x_scale, "y": self.unit_scale},
                               visible=False)
        # "seek" mode: invisible full-height columns that catch clicks (bqplot's selectors
        # report no single click position; a mark's element_click does)
        self.hit = bq.Bars(x=_f64([0, 1]), y=_f64([1, 1]), colors=[CURSOR], opacities=[0.0],
                           padding=0.0, base=0.0, stroke=CURSOR, stroke_width=3,
                           scales={"x": self.x_scale, "y": self.unit_scale}, visible=False)
        self.hit.on_element_click(self._on_hit)
        self._hit_ns = np.zeros(2, dtype=np.int64)
        self.time_axis = bq.Axis(scale=self.x_scale, label=self._time_label(),
                                 grid_lines="none", tick_values=_f64([0]), tick_labels={},
                                 label_offset="32px")
        self.price_axis = bq.Axis(scale=self.y_scale, side="left", label="price",
                                  label_offset="54px", grid_lines="none", tick_format=".2f")
        margin = {"top": 8, "bottom": 44, "left": 70, "right": 8}
        self.figure = bq.Figure(
            marks=[self.heat, self.large, self.bbo_lines, self.trades, self.cursor,
                   self.hit],
            axes=[self.time_axis, self.price_axis], animation_duration=0,
            fig_margin=margin, background_style={"fill": "transparent"},
            layout=W.Layout(width="100%", height=f"{self.height_px + 52}px",
                            min_width="300px", flex="1 1 auto"))
        self.figure.add_class("mbo-map-figure")
        from bqplot.interacts import BrushSelector, PanZoom

        self.panzoom = PanZoom(scales={"x": [self.x_scale], "y": [self.y_scale]})
        self.brush = BrushSelector(x_scale=self.x_scale, y_scale=self.y_scale,
                                      color=CURSOR)
        self.figure.interaction = self.panzoom

        # volume profile strip (same price scale, same vertical margins)
        self.vol_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.profile_bars = bq.Bars(
            x=_f64([0, 1]), y=_f64([[0, 0], [0, 0]]), orientation="horizontal",
            type="stacked", colors=[BID, ASK], padding=0.0, opacities=[0.8, 0.8],
            scales={"x": self.y_scale, "y": self.vol_scale})
        self.vol_axis = bq.Axis(scale=self.vol_scale, label="traded", tick_values=_f64([0, 1]),
                                tick_format="~s", grid_lines="none", label_offset="32px")
        self.profile = bq.Figure(
            marks=[self.profile_bars], axes=[self.vol_axis], animation_duration=0,
            fig_margin={"top": margin["top"], "bottom": margin["bottom"], "left": 4,
                        "right": 18},
            background_style={"fill": "transparent"},
            layout=W.Layout(width="120px", min_width="120px",
                            height=f"{self.height_px + 52}px", flex="0 0 120px"))
        self.profile.add_class("mbo-map-profile")

        # ------------------------------------------------------------ toolbar
        def button(desc: str, tip: str, cls: str, icon: str = "") -> W.Button:
            b = W.Button(description=desc, tooltip=tip, icon=icon,
                         layout=W.Layout(width="auto", padding="0 6px"))
            b.add_class(cls)
            return b

        self.mode = W.ToggleButtons(options=list(_MODES), value="pan/zoom",
                                    tooltips=["wheel zooms, drag pans",
                                              "drag a box to zoom into it",
                                              "click a time to seek the replay there "
                                              "(the ladder and all views follow)"],
                                    style={"button_width": "92px"})
        self.mode.add_class("mbo-map-mode")
        self.zoom_in_button = button("+", "zoom in (time and price, x2)", "mbo-map-zoom-in")
        self.zoom_out_button = button("\u2212", "zoom out (x2)", "mbo-map-zoom-out")
        self.left_button = button("\u25c0", "pan back in time", "mbo-map-left")
        self.right_button = button("\u25b6", "pan forward in time", "mbo-map-right")
        self.reset_button = button("whole day", "reset to the whole stream", "mbo-map-reset")
        self.zone_select: W.Dropdown | None = None
        if zone_control:
            zones = ["UTC"] if self.exchange_zone == "UTC" else [self.exchange_zone, "UTC"]
            if self.time_zone not in zones:
                zones.append(self.time_zone)
            self.zone_select = W.Dropdown(options=zones, value=self.time_zone,
                                          tooltip="zone of the time axis and times shown",
                                          layout=W.Layout(width="150px"))
            self.zone_select.add_class("mbo-map-zone")
        self.scale_toggle = W.ToggleButtons(options=["log", "linear"],
                                            value="log" if self.log_scale else "linear",
                                            style={"button_width": "64px"})
        self.scale_toggle.add_class("mbo-map-scale")
        self.measure_select = W.Dropdown(
            options=[("mean size", "twa"), ("max size", "max")], value=self.measure,
            layout=W.Layout(width="110px"))
        self.cut_slider = W.FloatRangeSlider(
            value=(self.lower_pct, self.upper_pct), min=0.0, max=100.0, step=0.5,
            description="cut-offs %", continuous_update=False, readout_format=".1f",
            style={"description_width": "64px"}, layout=W.Layout(width="280px"))
        self.cut_slider.add_class("mbo-map-cutoffs")
        self.status = W.HTML(layout=W.Layout(width="100%", min_height="18px"))
        self.status.add_class("mbo-map-status")

        self.zoom_in_button.on_click(lambda _b: self.zoom(0.5))
        self.zoom_out_button.on_click(lambda _b: self.zoom(2.0))
        self.left_button.on_click(lambda _b: self.pan(-0.5))
        self.right_button.on_click(lambda _b: self.pan(0.5))
        self.reset_button.on_click(lambda _b: self.reset())
        self.mode.observe(self._on_mode, "value")
        if self.zone_select is not None:
            self.zone_select.observe(self._on_zone, "value")
        self.scale_toggle.observe(self._on_colors, "value")
        self.measure_select.observe(self._on_colors, "value")
        self.cut_slider.observe(self._on_colors, "value")
        for sc in (self.x_scale, self.y_scale):
            sc.observe(self._on_domain, ["min", "max"])
        self.brush.observe(self._on_brush, "brushing")

        tools = W.HBox([self.mode, self.zoom_in_button, self.zoom_out_button,
                        self.left_button, self.right_button, self.reset_button]
                       + ([self.zone_select] if self.zone_select is not None else []),
                       layout=W.Layout(flex_flow="row wrap", align_items="center"))
        colors = W.HBox([W.HTML("<span style='color:var(--jp-ui-font-color2);"
                                "font-size:12px'>colour</span>"),
                         self.scale_toggle, self.measure_select, self.cut_slider],
                        layout=W.Layout(flex_flow="row wrap", align_items="center"))
        plots = [self.figure] + ([self.profile] if show_profile else [])
        super().__init__(children=[tools, colors, W.HBox(plots, layout=W.Layout(
            width="100%", align_items="stretch")), self.status],
            layout=W.Layout(width="100%"))
        self.add_class("mbo-map")

        self.reset()
        fr = session.frame()
        self._key = (int(fr.instrument_id), int(fr.publisher_id))
        self._move_cursor(int(fr.ts_recv))
        self._unsubscribe: Callable[[], None] | None = session.subscribe(self._on_frame)

    # ------------------------------------------------------------------ geometry
    def _x(self, ns: Any) -> np.ndarray:
        """Seconds since ``origin_ns`` (float64) of ns times."""
        return (np.asarray(ns, dtype=np.int64) - self.origin_ns) / 1e9

    def _ns_of_x(self, x: float) -> int:
        return self.origin_ns + int(round(float(x) * 1e9))

    def _tick(self) -> float:
        t = getattr(self.session, "tick", None)
        try:
            t = float(t)
        except (TypeError, ValueError):
            t = 0.0
        return t if math.isfinite(t) and t > 0 else 0.01

    def _shape(self, start: int, end: int, lo: float | None, hi: float | None
               ) -> dict[str, Any]:
        """Grid request for a window: a bin per pixel column, a row per tick (or tick
        multiple), at most ``max_cells`` cells."""
        tick = self._tick()
        max_rows = max(8, min(int(self.height_px / self.min_row_px), self.max_cells // 2))
        kw: dict[str, Any] = {}
        if lo is not None and hi is not None and hi > lo:
            n_ticks = max(1, int(math.ceil((hi - lo) / tick - 1e-9)))
            mult = max(1, int(math.ceil(n_ticks / max_rows)))
            rows = max(1, int(math.ceil(n_ticks / mult)))
            kw.update(price_lo=float(lo), price_hi=float(hi), tick_multiple=mult)
        else:
            rows = max_rows
        bins = max(2, min(self.width_px, self.max_cells // max(rows, 1)))
        kw.update(time_bins=int(bins), price_rows=int(rows))
        return kw

    # ------------------------------------------------------------------ queries
    def _query(self, start: int, end: int, lo: float | None, hi: float | None) -> Any:
        t0 = self.clock()
        # a progress bar only while the cell that builds the map runs (a widget callback
        # has no cell output to show it in)
        progress = None if self.updates == 0 else False
        grid = self.session.liquidity(start, end, progress=progress,
                                      **self._shape(start, end, lo, hi))
        self.queries += 1
        self.last_query_seconds = self.clock() - t0
        return grid

    def _fit_prices(self, grid: Any) -> tuple[float, float] | None:
        """Price range around the BBO path of a grid (+- a third of its span, at least 10
        ticks), or None if the grid's range already holds the path and is at most 1.5
        times as tall."""
        vals = np.concatenate([np.asarray(grid.bid_low, dtype=float),
                               np.asarray(grid.ask_high, dtype=float),
                               np.asarray(grid.bid_close, dtype=float),
                               np.asarray(grid.ask_close, dtype=float)])
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            return None
        lo, hi = float(vals.min()), float(vals.max())
        pad = max((hi - lo) / 3.0, 10 * self._tick())
        lo, hi = lo - pad, hi + pad
        e = np.asarray(grid.price_edges, dtype=float)
        contains = e[0] <= lo + pad / 2 and e[-1] >= hi - pad / 2
        if contains and (e[-1] - e[0]) <= 1.5 * (hi - lo):
            return None  # close enough: spare a second pass over the day
        return lo, hi

    def reset(self) -> None:
        """Show the whole stream (the view is computed once and cached)."""
        self._cancel_timer()
        if self._home is None:
            try:
                grid = self._query(self.data_start, self.data_end + 1, None, None)
                fit = self._fit_prices(grid)
                if fit is not None:
                    grid = self._query(self.data_start, self.data_end + 1, *fit)
            except Exception as exc:
                self._error(exc, "whole-day view")
                return
            e = np.asarray(grid.price_edges, dtype=float)
            self._home = (grid, (self.data_start, self.data_end + 1, float(e[0]),
                                 float(e[-1])))
        grid, win = self._home
        self._draw(grid, win, event_t=self.clock())

    def show(self, start: Any = None, end: Any = None, price_lo: float | None = None,
             price_hi: float | None = None) -> None:
        """Show a window now (times: ns ints or anything ``pd.Timestamp`` takes; None keeps
        the current bound; prices None keep the current range)."""
        win = self.window or (self.data_start, self.data_end + 1, None, None)
        s = win[0] if start is None else to_ns(start)
        e = win[1] if end is None else to_ns(end)
        lo = win[2] if price_lo is None else float(price_lo)
        hi = win[3] if price_hi is None else float(price_hi)
        self._refresh((s, e, lo, hi), event_t=self.clock())

    def zoom(self, factor: float) -> None:
        """Zoom the time and price ranges by ``factor`` around the window's centre (0.5 =
        in, 2 = out); never wider than the whole stream in time."""
        if self.window is None:
            return
        s, e, lo, hi = self.window
        c, half = (s + e) / 2, (e - s) / 2 * factor
        half = max(half, 5e5)  # 1 ms windows at least
        s, e = int(c - half), int(c + half)
        if e - s >= self.data_end + 1 - self.data_start:
            self.reset()
            return
        pc, ph = (lo + hi) / 2, (hi - lo) / 2 * factor
        ph = max(ph, 2 * self._tick())
        self._refresh((s, e, pc - ph, pc + ph), event_t=self.clock())

    def pan(self, fraction: float) -> None:
        """Move the time window by ``fraction`` of its width."""
        if self.window is None:
            return
        s, e, lo, hi = self.window
        d = int((e - s) * fraction)
        self._refresh((s + d, e + d, lo, hi), event_t=self.clock())

    def _refresh(self, win: tuple[int, int, float | None, float | None], *,
                 event_t: float) -> None:
        s, e, lo, hi = win
        s, e = int(min(s, e)), int(max(s, e))
        if e - s < 1000:
            e = s + 1000
        if lo is not None and hi is not None and hi < lo:
            lo, hi = hi, lo
        try:
            grid = self._query(s, e, lo, hi)
        except Exception as exc:
            self._error(exc, "query")
            return
        pe = np.asarray(grid.price_edges, dtype=float)
        self._draw(grid, (s, e, float(pe[0]) if lo is None else float(lo),
                          float(pe[-1]) if hi is None else float(hi)), event_t=event_t)

    # ------------------------------------------------------------------ sending
    def _colors(self, grid: Any) -> np.ndarray:
        bid = grid.bid_twa if self.measure == "twa" else grid.bid_max
        ask = grid.ask_twa if self.measure == "twa" else grid.ask_max
        c, self.cut_lo, self.cut_hi = color_cells(bid, ask, log_scale=self.log_scale,
                                                  lower_pct=self.lower_pct,
                                                  upper_pct=self.upper_pct)
        # (rows, bins): y rows, x columns. Colour values in [-1, 1] travel as float32
        # (half the bytes; prices and times stay float64).
        return np.ascontiguousarray(c.T, dtype=np.float32)

    def _draw(self, grid: Any, win: tuple[int, int, float, float], *, event_t: float
              ) -> None:
        """Put a grid (and the trades and marks of its window) on the figure: one message
        per mark, new arrays only (float64; the heat's colour values float32). The time
        and price domains become the grid's edges."""
        if self._closed:
            return
        te = np.asarray(grid.t_edges, dtype=np.int64)
        pe = np.asarray(grid.price_edges, dtype=np.float64)
        # the visible window IS the grid: time edges [start, end), price edges of the rows
        s, e = (int(te[0]), int(te[-1])) if len(te) > 1 else win[:2]
        lo, hi = (float(pe[0]), float(pe[-1])) if len(pe) > 1 else win[2:]
        nbytes = 0
        yc = _f64((pe[:-1] + pe[1:]) / 2)  # row centres (prices) for the profile
        color = self._colors(grid)
        n_bins, n_rows = len(te) - 1, len(pe) - 1
        if n_bins < 2 or n_rows < 2:  # bqplot's HeatMap needs two of each
            n_bins = n_rows = 2
            color = np.zeros((2, 2), dtype=np.float32)
        hx = _f64((np.arange(n_bins) + 0.5) / n_bins)  # cell centres on the unit scales
        hy = _f64((np.arange(n_rows) + 0.5) / n_rows)
        try:
            trades = self.session.trades_between(int(s), int(e), max_trades=self.max_trades)
        except Exception as exc:
            self._error(exc, "trades")
            trades = None
        tick = float(getattr(grid, "tick", 0.0) or self._tick())
        dec = _decimals(self._tick())
        tv, tl = time_ticks(s, e, self.origin_ns, self.time_zone)
        with self.hold_sync():
            self._own += 1
            try:
                with self.x_scale.hold_sync():
                    self.x_scale.min, self.x_scale.max = float(self._x(s)), float(self._x(e))
                with self.y_scale.hold_sync():
                    self.y_scale.min, self.y_scale.max = float(lo), float(hi)
            finally:
                self._own -= 1
            self._set_ticks(tv, tl)
            nbytes += tv.nbytes
            if self.price_axis.tick_format != f".{dec}f":
                self.price_axis.tick_format = f".{dec}f"
            with self.heat.hold_sync():
                if not np.array_equal(self.heat.x, hx):
                    self.heat.x = hx
                    nbytes += hx.nbytes
                if not np.array_equal(self.heat.y, hy):
                    self.heat.y = hy
                    nbytes += hy.nbytes
                self.heat.color = color
            nbytes += color.nbytes
            nbytes += self._send_bbo(grid, te)
            nbytes += self._send_trades(trades)
            nbytes += self._send_large(getattr(grid, "large_orders", None), s, e)
            nbytes += self._send_profile(grid, yc, tick)
            nbytes += self._send_hit(s, e)
        self.grid = grid
        self.window = (int(s), int(e), float(lo), float(hi))
        self.updates += 1
        self.last_bytes = nbytes
        self.bytes_sent += nbytes
        self.last_cells = int(color.size)
        self.last_latency = self.clock() - event_t
        self._status()

    def _send_bbo(self, grid: Any, te: np.ndarray) -> int:
        x = _f64(self._x(te[1:]))  # a bin's close holds over the bin (step-before)
        y = np.vstack([_f64(grid.bid_close), _f64(grid.ask_close)])
        ok = np.isfinite(y).any()
        with self.bbo_lines.hold_sync():
            if ok:
                self.bbo_lines.x, self.bbo_lines.y = x, y
            self.bbo_lines.visible = bool(ok)
        return (x.nbytes + y.nbytes) if ok else 0

    def _send_trades(self, trades: pd.DataFrame | None) -> int:
        if trades is None or len(trades) == 0:
            self.trades.visible = False
            return 0
        ts = pd.DatetimeIndex(trades.index).as_unit("ns").asi8
        px = trades["price"].to_numpy(dtype=np.float64)
        ok = np.isfinite(px)
        side = trades["side"].astype(str).to_numpy()
        c = np.where(side == "B", 1.0, np.where(side == "A", -1.0, 0.0))
        sz = trades["size"].to_numpy(dtype=np.float64)
        x, y, c, sz = _f64(self._x(ts[ok])), _f64(px[ok]), _f64(c[ok]), _f64(sz[ok])
        if len(x) == 0:
            self.trades.visible = False
            return 0
        with self.size_scale.hold_sync():
            self.size_scale.min, self.size_scale.max = 0.0, float(max(sz.max(), 1.0))
        with self.trades.hold_sync():
            self.trades.x, self.trades.y, self.trades.color, self.trades.size = x, y, c, sz
            self.trades.visible = True
        return x.nbytes + y.nbytes + c.nbytes + sz.nbytes

    def _send_large(self, lo_df: pd.DataFrame | None, s: int, e: int) -> int:
        if lo_df is None or len(lo_df) == 0:
            self.large.visible = False
            return 0
        df = lo_df
        if len(df) > self.max_large_orders:
            df = df.nlargest(self.max_large_orders, "size")
        t0 = np.maximum(_to_ns_array(df["ts_start"]), s)
        t1 = np.minimum(_to_ns_array(df["ts_end"], fill=e), e)
        px = df["price"].to_numpy(dtype=np.float64)
        ok = np.isfinite(px) & (t1 >= t0)
        if not ok.any():
            self.large.visible = False
            return 0
        x = _f64(np.stack([self._x(t0[ok]), self._x(t1[ok])], axis=1))
        y = _f64(np.stack([px[ok], px[ok]], axis=1))
        sides = df["side"].astype(str).to_numpy()[ok]
        colors = [LARGE_BID if sd in ("B", "bid", "0") else LARGE_ASK for sd in sides]
        with self.large.hold_sync():
            self.large.x, self.large.y, self.large.colors = x, y, colors
            self.large.visible = True
        return x.nbytes + y.nbytes

    def _send_hit(self, s: int, e: int, columns: int = 500) -> int:
        """The seek columns: even slices of the window, one per two pixel columns of the
        map (at most ``columns``); a click seeks to the middle of its slice. (bqplot rounds
        bar widths to whole pixels; the invisible 3 px stroke closes the gaps.)"""
        n = int(max(2, min(columns, self.width_px // 2)))
        edges = np.linspace(s, e, n + 1)
        mid = ((edges[:-1] + edges[1:]) / 2).astype(np.int64)
        self._hit_ns = mid
        x = _f64(self._x(mid))
        y = np.ones(n, dtype=np.float64)
        with self.hit.hold_sync():
            self.hit.x, self.hit.y = x, y
        return x.nbytes + y.nbytes

    def _send_profile(self, grid: Any, yc: np.ndarray, tick: float) -> int:
        buy = np.nan_to_num(np.asarray(grid.buy_volume, dtype=np.float64)).sum(axis=0)
        sell = np.nan_to_num(np.asarray(grid.sell_volume, dtype=np.float64)).sum(axis=0)
        if len(buy) != len(yc):  # a degenerate grid: nothing to profile
            buy = sell = np.zeros(len(yc))
        y = np.vstack([_f64(buy), _f64(sell)])
        top = _nice(float((buy + sell).max()) if len(buy) else 0.0)
        if self.vol_scale.max != top:
            with self.vol_scale.hold_sync():
                self.vol_scale.min, self.vol_scale.max = 0.0, top
            self.vol_axis.tick_values = _f64([0.0, top])
        with self.profile_bars.hold_sync():
            self.profile_bars.x, self.profile_bars.y = _f64(yc), y
        self.volume_profile = pd.DataFrame({"buy": buy, "sell": sell}, index=yc)
        return yc.nbytes + y.nbytes

    def _status(self) -> None:
        if self.window is None:
            return
        s, e, lo, hi = self.window
        a = pd.Timestamp(s, tz="UTC").tz_convert(self.time_zone)
        b = pd.Timestamp(e, tz="UTC").tz_convert(self.time_zone)
        t0 = a.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        t1 = b.strftime("%H:%M:%S.%f" if a.date() == b.date() else "%Y-%m-%d %H:%M:%S.%f")
        dec = _decimals(self._tick())
        cur = ""
        if self._cursor_ns is not None:
            c = pd.Timestamp(self._cursor_ns, tz="UTC").tz_convert(self.time_zone)
            cur = (" &middot; replay <b class='mbo-map-cursor-time'>"
                   f"{c.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}</b>")
        g = self.grid
        shape = f"{len(g.t_edges) - 1}\u00d7{len(g.price_edges) - 1}" if g is not None else "-"
        self.status.value = (
            "<span style='font-size:11px;color:var(--jp-ui-font-color2)'>"
            f"<span class='mbo-map-window'>{t0} \u2013 {t1[:-3]}</span> "
            f"{html.escape(self.time_zone)} &middot; {lo:.{dec}f}\u2013{hi:.{dec}f} &middot; "
            f"{shape} cells, colour {self._cut_text()} &middot; "
            f"{self.last_bytes / 1024:.0f} kB, {self.last_latency * 1000:.0f} ms{cur}</span>")

    def _cut_text(self) -> str:
        lo, hi = getattr(self, "cut_lo", 0.0), getattr(self, "cut_hi", 0.0)
        if not hi:
            return "-"
        return f"{lo:.3g}\u2013{hi:.3g} lots ({'log' if self.log_scale else 'linear'})"

    # ------------------------------------------------------------------ events
    def _on_domain(self, change: dict) -> None:
        """A scale domain changed: from the browser (pan/zoom) unless we set it."""
        if self._own or self._closed or self.window is None:
            return
        xs, xe = self.x_scale.min, self.x_scale.max
        if xs is None or xe is None:
            return
        vis, win = self._visible(), self.window
        if (abs(vis[0] - win[0]) < 1000 and abs(vis[1] - win[1]) < 1000
                and vis[2] == win[2] and vis[3] == win[3]):
            return  # the window shown already (e.g. a late notification of our own set)
        # keep the axis labels right at once (cheap); the data follows after the debounce
        tv, tl = time_ticks(self._ns_of_x(xs), self._ns_of_x(xe), self.origin_ns,
                            self.time_zone)
        self._set_ticks(tv, tl)
        self._pending_since = self.clock()  # the latest event of the gesture
        self._schedule()

    def _set_ticks(self, values: np.ndarray, labels: dict[str, str], *,
                   relabel: bool = False) -> None:
        """New time ticks: the labels go first, in their own message, holding the old
        ticks' labels too. (bqplot's axis redraws new tick values in a d3 transition that
        captures the formatter of that moment, so labels sent with or after the values
        would be overwritten by the old ones.)"""
        ax = self.time_axis
        if np.array_equal(ax.tick_values, values) and ax.tick_labels == labels:
            return
        old = {} if relabel else {k: v for k, v in (ax.tick_labels or {}).items()
                                  if k in {js_number_key(x) for x in ax.tick_values}}
        merged = {**old, **labels}
        if merged != ax.tick_labels:
            ax.tick_labels = merged
        ax.tick_values = values

    def _visible(self) -> tuple[int, int, float | None, float | None]:
        xs, xe = self.x_scale.min, self.x_scale.max
        lo, hi = self.y_scale.min, self.y_scale.max
        return (self._ns_of_x(xs), self._ns_of_x(xe), lo, hi)

    def _schedule(self) -> None:
        self._cancel_timer()
        if self.debounce <= 0:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                loop = asyncio.get_event_loop_policy().get_event_loop()
            except RuntimeError:
                loop = None
        if loop is None or loop.is_closed():
            self.flush()
            return
        self._timer = loop.call_later(self.debounce, self.flush)

    def _cancel_timer(self) -> None:
        t, self._timer = self._timer, None
        if t is not None:
            t.cancel()

    def flush(self) -> None:
        """Query and draw the window the browser shows now (the debounced zoom/pan)."""
        self._timer = None
        since, self._pending_since = self._pending_since, None
        if self._closed or since is None:
            return
        s, e, lo, hi = self._visible()
        whole = self.data_end + 1 - self.data_start
        if e - s >= whole * 1.5 and self._home is not None:
            self.reset()  # zoomed far out: the whole stream
            return
        self._refresh((s, e, lo, hi), event_t=since)

    @property
    def pending(self) -> bool:
        """True while a zoom/pan waits for its debounced query."""
        return self._pending_since is not None

    def _on_brush(self, change: dict) -> None:
        if change["new"] or self._closed:  # still dragging
            return
        sx, sy = self.brush.selected_x, self.brush.selected_y
        if sx is None or sy is None or len(sx) < 2 or len(sy) < 2:
            return
        s, e = sorted(self._ns_of_x(v) for v in sx)
        lo, hi = sorted(float(v) for v in sy)
        self.brush.selected_x, self.brush.selected_y = None, None
        if e - s < 1000 or hi <= lo:
            return
        self._refresh((s, e, lo, hi), event_t=self.clock())

    def _on_hit(self, _mark: Any, event: dict) -> None:
        """A click on a seek column (browser message ``element_click``)."""
        if self._closed:
            return
        data = (event or {}).get("data") or {}
        k = data.get("index")
        if k is not None and 0 <= int(k) < len(self._hit_ns):
            self.seek_time(int(self._hit_ns[int(k)]))
        elif data.get("x") is not None:
            self.seek_x(float(data["x"]))

    def seek_time(self, ns: int) -> None:
        """Seek the session to ``ns`` (clipped to the stream)."""
        ns = min(max(int(ns), self.data_start), self.data_end)
        try:
            self.session.seek(time=pd.Timestamp(ns, tz="UTC"))
            self.seeks += 1
        except Exception as exc:
            self._error(exc, "seek")

    def seek_x(self, x: float) -> None:
        """Seek the session to the time at ``x`` (seconds since ``origin_ns``): what a
        click in "seek" mode does."""
        self.seek_time(self._ns_of_x(x))

    def _on_mode(self, change: dict) -> None:
        mode = change["new"]
        self.hit.visible = mode == "seek"
        self.figure.interaction = {"pan/zoom": self.panzoom, "box zoom": self.brush,
                                   "seek": None}[mode]

    def set_time_zone(self, tz: str) -> None:
        """Show the time axis and every time of the map in ``tz`` (an IANA name) at once:
        new tick labels, axis title and status line, no new query. The dashboard calls
        this from its zone control; a standalone map's dropdown shows ``tz`` (added to
        its choices when new)."""
        tz = check_time_zone(tz)
        zsel = self.zone_select
        if zsel is not None and zsel.value != tz:
            if tz not in zsel.options:
                zsel.options = [*zsel.options, tz]
            zsel.value = tz  # its observer relabels (once)
        else:
            self._apply_zone(tz)

    def _on_zone(self, change: dict) -> None:
        """The standalone map's dropdown changed."""
        if change["new"]:
            self._apply_zone(change["new"])

    def _apply_zone(self, tz: str) -> None:
        self.time_zone = tz
        label = self._time_label()
        if self.time_axis.label != label:
            self.time_axis.label = label
        if self.window is not None:
            tv, tl = time_ticks(self.window[0], self.window[1], self.origin_ns,
                                self.time_zone)
            self._set_ticks(tv, tl, relabel=True)
            self._status()

    def _time_label(self) -> str:
        return f"time ({self.time_zone})"

    def set_colors(self, *, log_scale: bool | None = None, lower_pct: float | None = None,
                   upper_pct: float | None = None, measure: str | None = None) -> None:
        """Change the colour controls and redraw the cells (no new query)."""
        with self.hold_trait_notifications():
            if log_scale is not None:
                self.scale_toggle.value = "log" if log_scale else "linear"
            if measure is not None:
                self.measure_select.value = measure
            if lower_pct is not None or upper_pct is not None:
                lo, hi = self.cut_slider.value
                self.cut_slider.value = (lo if lower_pct is None else float(lower_pct),
                                         hi if upper_pct is None else float(upper_pct))

    def _on_colors(self, change: dict) -> None:
        self.log_scale = self.scale_toggle.value == "log"
        self.measure = self.measure_select.value
        self.lower_pct, self.upper_pct = (float(v) for v in self.cut_slider.value)
        if self.grid is None or self._closed:
            return
        t = self.clock()
        color = self._colors(self.grid)
        if color.shape != np.shape(self.heat.color):
            return
        self.heat.color = color
        self.updates += 1
        self.last_bytes = color.nbytes
        self.bytes_sent += color.nbytes
        self.last_latency = self.clock() - t
        self._status()

    # ------------------------------------------------------------------ frames
    def _on_frame(self, frame: Any) -> None:
        """Session subscriber: move the cursor (throttled while playing); a new book
        resets the map."""
        if self._closed:
            return
        key = (int(frame.instrument_id), int(frame.publisher_id))
        if key != self._key:
            self._key = key
            self._home = None
            self.reset()
        t = self.clock()
        if frame.playing and t - self._cursor_last < self._cursor_period:
            return
        self._cursor_last = t
        self._move_cursor(int(frame.ts_recv))

    def _move_cursor(self, ns: int) -> None:
        self._cursor_ns = ns
        x = float(self._x(ns))
        with self.cursor.hold_sync():
            self.cursor.x = _f64([x, x])
            self.cursor.visible = True
        self._status()

    def _error(self, exc: BaseException, where: str) -> None:
        log.warning("liquidity map %s failed: %s", where, exc, exc_info=exc)
        msg = f"{where}: {type(exc).__name__}: {exc}"
        self.errors = [*self.errors, msg][-5:]
        self.status.value = (f"<span class='mbo-map-error' style='font-size:12px;"
                             f"color:var(--jp-error-color1)'>{html.escape(msg)}</span>")

    # ------------------------------------------------------------------ lifetime
    @property
    def subscribed(self) -> bool:
        return self._unsubscribe is not None

    def close(self) -> None:
        """Unsubscribe from the session, stop the timer and close every widget."""
        self._closed = True
        if hasattr(self, "_timer"):
            self._cancel_timer()
        unsub, self._unsubscribe = getattr(self, "_unsubscribe", None), None
        if unsub is not None:
            unsub()
        try:
            import bqplot as bq
        except ImportError:  # interpreter shutting down (Widget.__del__)
            return

        seen: set[int] = set()

        def close_tree(w: Any) -> None:
            if w is None or id(w) in seen:
                return
            seen.add(id(w))
            if isinstance(w, W.Box):
                for c in w.children:
                    close_tree(c)
            elif isinstance(w, bq.Figure):
                for m in w.marks:
                    for sc in m.scales.values():
                        close_tree(sc)
                    close_tree(m)
                for ax in w.axes:
                    close_tree(ax)
            w.close()

        for name in ("panzoom", "brush", "heat_x_scale", "heat_y_scale"):
            close_tree(getattr(self, name, None))
        for child in list(self.children):
            close_tree(child)
        super().close()


def _to_ns_array(col: pd.Series, fill: int | None = None) -> np.ndarray:
    """ns int64 of a column of ns ints or timestamps (NaT/NaN -> ``fill``)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        out = pd.DatetimeIndex(pd.to_datetime(col, utc=True)).as_unit("ns").asi8.copy()
        bad = out == np.iinfo(np.int64).min  # NaT
        out[bad] = 0 if fill is None else fill
        return out.astype(np.int64)
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    if fill is not None:
        v = np.where(np.isfinite(v), v, fill)
    return np.nan_to_num(v).astype(np.int64)
