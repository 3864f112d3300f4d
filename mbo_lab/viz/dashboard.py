"""The dashboard: liquidity map (when available), DOM ladder, price chart with trades,
cumulative depth, controls, statistics and the selected book's last record of one replay
session, redrawn from ONE session subscriber per frame."""

from __future__ import annotations

import html
import inspect
import logging
import math
import weakref
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..config import check_time_zone
from ._common import (
    ASK,
    BID,
    Clock,
    data_warnings,
    fmt_time,
    now,
    session_tick,
    session_time_zone,
    theme_style,
    user_message,
    zone_label,
)
from .controls import Controls
from .depth import DepthChart
from .heatmap import Heatmap
from .inspector import Inspector
from .ladder import Ladder, static_ladder
from .price import PriceChart
from .stats import StatsPanel

log = logging.getLogger(__name__)

#: The dashboard never redraws faster than this, whatever the session's fps.
MAX_FPS = 30.0

#: The live dashboard of each session: a new one closes the previous one (a re-run cell
#: must not leave the old dashboard subscribed).
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def live_dashboard(session: Any) -> Dashboard | None:
    """The dashboard currently subscribed to ``session`` (None if closed or never made)."""
    return _LIVE.get(session)


def _liquidity_map_class() -> Any:
    """``LiquidityMap`` (contract E) when ``viz/liquidity_map.py`` exists and imports."""
    try:
        from .liquidity_map import LiquidityMap
    except Exception as exc:  # noqa: BLE001 - the map is optional until it lands
        log.debug("no liquidity map: %s", exc)
        return None
    return LiquidityMap


class Dashboard(W.VBox):
    """All views of a :class:`~mbo_lab.replay.session.Session` in one widget.

    >>> s = mbo_lab.open()                       # doctest: +SKIP
    >>> dash = s.dashboard()                     # or Dashboard(s)      # doctest: +SKIP
    >>> dash                                     # display; press Play  # doctest: +SKIP

    The session's clock (in the kernel) plays; the dashboard subscribes to its frames and
    redraws every part in one callback, at most ``min(session fps, fps, 30)`` times a
    second while playing; each part has its own lower rate (ladder 20/s, depth 10/s,
    price 5/s, stats 5/s, record 4/s) so the browser gets a bounded stream of messages.
    A paused session's frames are always drawn. Time axes and times are shown in UTC or
    in the exchange's time zone (``session.time_zone``), chosen by ONE control in the
    header (``tz_choice``) that drives every part, the liquidity map included (inside
    the dashboard the map shows no zone control of its own). A part that
    fails does not stop the others: its message is shown in the error area. When the
    session holds several books a dropdown selects the one shown. Making a new dashboard
    on a session closes the previous one; :meth:`close` unsubscribes (the session keeps
    its state and clock). Where widgets do not render (GitHub, nbconvert) the cell shows
    a static HTML summary (ladder, BBO, a price sparkline).

    Parameters
    ----------
    levels : int
        Levels per side of the depth chart (at most ``session.levels``).
    fps : float, optional
        Most redraws per second (also capped by the session's fps and 30).
    rows : int
        Price rows of the DOM ladder (one per tick, centred on the touch).
    span : pandas offset / Timedelta text
        Market time shown by the price chart, ending at the current position.
    tz : str, optional
        Zone of the times shown: "UTC" (default) or the exchange's zone (another IANA
        zone is added to the header's choices). :meth:`set_time_zone` changes it.
    liquidity_map, heatmap : bool
        Show the liquidity map (first panel) / the old playback heatmap.
    compact : bool
        Sizes that fit a 1366x768 JupyterLab window.
    """

    def __init__(self, session: Any, levels: int = 10, *, fps: float | None = None,
                 rows: int = 19, span: Any = "15min", tz: str | None = None,
                 liquidity_map: bool = True, heatmap: bool = False,
                 clock: Clock | None = None, compact: bool = True):
        old = _LIVE.get(session)
        if old is not None:
            old.close()
        self.session = session
        self.levels = max(1, min(int(levels), int(session.levels)))
        self.clock = clock or now
        limits = [MAX_FPS, float(session.settings.fps)] + ([float(fps)] if fps else [])
        self.max_fps = min(limits)
        self._period = 1.0 / self.max_fps
        self._last_render = -math.inf
        self.frames_rendered = 0
        self.frames_dropped = 0
        self.errors: list[str] = []
        self.exchange_tz = session_time_zone(session)
        self.tz = check_time_zone(tz or "UTC")  # ConfigError for an unknown name
        import pandas as pd

        span_ns = int(pd.Timedelta(span).value)
        tick = session_tick(session)
        self.tick = tick

        h_main, h_low = ("300px", "160px") if compact else ("460px", "260px")
        map_height = 160 if compact else 330  # the map's plot area (px)
        self.ladder = Ladder(rows, tick=tick, clock=clock, height=h_main)
        self.depth = DepthChart(self.levels, tick=tick, clock=clock, height=h_low)
        self.price = PriceChart(session, span_ns=span_ns, tick=tick, tz=self.tz, clock=clock,
                                height=h_low if liquidity_map and _liquidity_map_class()
                                else h_main)
        self.controls = Controls(session, on_error=self.show_error, clock=clock)
        self.inspector = Inspector(clock=clock, tz=self.tz, height=h_low)
        self.stats = StatsPanel(session, clock=clock, tz=self.tz, height=h_low)
        self.heatmap = (Heatmap(40, 120, 2.0, tick=tick, clock=clock, height="170px")
                        if heatmap else None)
        self.map = None
        if liquidity_map:
            cls = _liquidity_map_class()
            if cls is not None:
                try:
                    kw: dict[str, Any] = {}
                    params = inspect.signature(cls).parameters
                    if "time_zone" in params:
                        kw["time_zone"] = self.tz
                    if "zone_control" in params:
                        kw["zone_control"] = False  # the header's control drives it
                    if "height_px" in params:
                        kw["height_px"] = map_height
                    if "width_px" in params:
                        kw["width_px"] = 800
                    if "clock" in params and clock is not None:
                        kw["clock"] = clock
                    self.map = cls(session, **kw)
                except Exception as exc:  # noqa: BLE001 - the rest still works
                    self.map = None
                    self.errors.append(f"liquidity map: {user_message(exc)}")
        self.parts = [p for p in (self.controls, self.ladder, self.depth, self.price,
                                  self.heatmap, self.stats, self.inspector) if p is not None]

        self.title = W.HTML()
        self.error_area = W.HTML(layout=W.Layout(width="100%"))
        self.error_area.add_class("mbo-errors")
        zones = [("time: UTC", "UTC")]
        if self.exchange_tz != "UTC":
            zones.append((f"time: exchange ({self.exchange_tz})", self.exchange_tz))
        if self.tz not in [z for _, z in zones]:
            zones.append((f"time: {self.tz}", self.tz))
        self._setting_tz = False
        # the one zone control: every part (the liquidity map too) follows it
        self.tz_choice = W.Dropdown(
            options=zones, value=self.tz,
            tooltip="zone of every time axis and time shown",
            layout=W.Layout(width="250px"))
        self.tz_choice.add_class("mbo-tz")
        self.tz_choice.observe(self._on_tz, "value")
        header: list[W.Widget] = [self.title, self.tz_choice]
        self.book_selector: W.Dropdown | None = None
        if len(session.books) > 1:
            symbols = session.data.symbols
            opts = [(f"{symbols.get(i, '') or i} ({i}@{p})", (i, p)) for i, p in session.books]
            self.book_selector = W.Dropdown(
                options=opts, value=(session.instrument_id, session.publisher_id),
                description="book", layout=W.Layout(width="250px"),
                style={"description_width": "36px"})
            self.book_selector.add_class("mbo-book")
            self.book_selector.observe(self._on_book, "value")
            header.insert(1, self.book_selector)
        header.append(self.controls.widget)

        tabs = W.Tab(children=[self.stats.widget, self.inspector.widget],
                     layout=W.Layout(width="30%", min_width="250px"))
        tabs.titles = ("Stats", "Record")
        tabs.add_class("mbo-side")
        ladder_box = W.Box([self.ladder.widget],
                           layout=W.Layout(width="360px", min_width="300px", flex="0 0 auto"))
        if self.map is not None:
            ladder_box.layout.height = "auto"
        first = self.map if self.map is not None else self.price.widget
        main = W.HBox([W.Box([first], layout=W.Layout(flex="1 1 auto", min_width="300px")),
                       ladder_box], layout=W.Layout(width="100%", overflow="hidden"))
        self.main_row = main
        low: list[W.Widget] = []
        if self.map is not None:
            low.append(W.Box([self.price.widget], layout=W.Layout(width="36%")))
        if self.heatmap is not None:
            low.append(W.Box([self.heatmap.widget], layout=W.Layout(width="30%")))
        low += [W.Box([self.depth.widget], layout=W.Layout(flex="1 1 auto", min_width="220px")),
                tabs]
        self.style_html = W.HTML(theme_style(), layout=W.Layout(height="0px", margin="0"))
        super().__init__(
            children=[
                self.style_html,
                W.HBox(header, layout=W.Layout(align_items="center", flex_flow="row wrap")),
                self.error_area,
                main,
                W.HBox(low, layout=W.Layout(width="100%", overflow="hidden")),
            ],
            layout=W.Layout(width="100%", max_width="1600px", overflow="hidden"))
        self.add_class("mbo-dashboard")
        if self.errors:
            self._show_errors()
        self._unsubscribe = session.subscribe(self._on_frame)
        _LIVE[session] = self
        self._render(session.frame())

    # ------------------------------------------------------------------ frames
    def _on_frame(self, frame: Any) -> None:
        """The session subscriber: one call per published frame."""
        t = self.clock()
        if frame.playing and t - self._last_render < self._period * 0.9:
            self.frames_dropped += 1
            return
        self._render(frame)

    def _render(self, frame: Any) -> None:
        self._last_render = self.clock()
        self._last_frame = frame
        key = (frame.instrument_id, frame.publisher_id)
        if key != getattr(self, "_book", key):  # another book: its own price increment
            try:
                self._set_tick(session_tick(self.session))
            except Exception as exc:  # noqa: BLE001
                self.show_error(exc, where="tick")
        self._book = key
        self._title(frame)
        if self.book_selector is not None:
            key = (frame.instrument_id, frame.publisher_id)
            if self.book_selector.value != key:
                self.book_selector.unobserve(self._on_book, "value")
                try:
                    self.book_selector.value = key
                finally:
                    self.book_selector.observe(self._on_book, "value")
        for part in self.parts:
            try:
                part.update(frame)
            except Exception as exc:
                self.show_error(exc, where=type(part).__name__)
        self.frames_rendered += 1

    def _title(self, frame: Any) -> None:
        sym = html.escape(frame.symbol or str(frame.instrument_id))
        warn = "".join(f" <span class='mbo-flag-warn mbo-truncated'>{html.escape(w)}</span>"
                       for w in data_warnings(self.session)[:1])
        text = (f"<b style='font-size:14px'>{sym}</b> <span class='mbo-muted'>"
                f"{frame.instrument_id}@{frame.publisher_id} &middot; "
                f"{len(self.session):,} records</span>{warn}")
        if self.title.value != text:
            self.title.value = text

    # ------------------------------------------------------------------ settings
    def _on_tz(self, change: dict) -> None:
        """The header's zone control (the dashboard's only one) changed."""
        if not self._setting_tz and change["new"]:
            self._apply_tz(change["new"])

    def set_time_zone(self, tz: str) -> None:
        """Show times in ``tz`` ("UTC" or the exchange's zone, e.g. "America/Chicago";
        another IANA zone is added to the choices): the header control shows it and every
        part follows, the liquidity map included (labels only, no new query)."""
        tz = check_time_zone(tz)
        self._setting_tz = True
        try:
            if tz not in [v for _, v in self.tz_choice.options]:
                self.tz_choice.options = [*self.tz_choice.options, (f"time: {tz}", tz)]
            self.tz_choice.value = tz
        finally:
            self._setting_tz = False
        self._apply_tz(tz)

    def _apply_tz(self, tz: str) -> None:
        """Data flows one way: the dashboard tells each part its zone."""
        self.tz = tz
        for part in (self.price, self.stats, self.inspector):
            try:
                part.set_time_zone(tz)
            except Exception as exc:  # noqa: BLE001 - the others still follow
                self.show_error(exc, where=type(part).__name__)
        if self.map is not None:
            try:
                self.map.set_time_zone(tz)
            except Exception as exc:  # noqa: BLE001
                self.show_error(exc, where="liquidity map")

    # ------------------------------------------------------------------ errors
    def show_error(self, exc: BaseException, where: str = "") -> None:
        """Show an error's message (no traceback) in the error area (the last 5 kept)."""
        log.debug("dashboard %s error", where, exc_info=exc)
        msg = f"{where + ': ' if where else ''}{user_message(exc)}"
        if self.errors and self.errors[-1] == msg:
            return
        self.errors = [*self.errors, msg][-5:]
        self._show_errors()

    def _show_errors(self) -> None:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in self.errors)
        self.error_area.value = (f"<div class='mbo-errors-box'><b>Errors</b>"
                                 f"<ul style='margin:0'>{items}</ul></div>")

    def clear_errors(self) -> None:
        self.errors = []
        self.error_area.value = ""

    # ------------------------------------------------------------------ books
    def _on_book(self, change: dict) -> None:
        iid, pub = change["new"]
        try:
            self.session.select(iid, pub)  # publishes a frame of the new book
        except Exception as exc:
            self.show_error(exc, where="book")

    def _set_tick(self, tick: float | None) -> None:
        self.tick = tick
        for part in (self.ladder, self.depth, self.price):
            part.set_tick(tick)

    # ------------------------------------------------------------------ static view
    def static_html(self) -> str:
        """A self-contained HTML summary (no widgets): book, BBO, ladder and an inline-SVG
        sparkline of bid/ask over the price chart's window."""
        fr = self.session.frame()
        bbo = fr.bbo
        dec = 2
        if self.tick:
            from ._common import tick_decimals

            dec = tick_decimals(self.tick)

        def px(v: float) -> str:
            return "-" if not math.isfinite(v) else f"{v:.{dec}f}"

        flag = (" <b style='color:#c0392b'>CROSSED</b>" if fr.crossed
                else " <b style='color:#d35400'>LOCKED</b>" if fr.locked else "")
        warn = "".join(f" <b style='color:#b9770e'>{html.escape(w)}</b>"
                       for w in data_warnings(self.session))
        head = (f"<div><b>mbo_lab dashboard</b> (static view: run the notebook for the live "
                f"widgets) &middot; <b>{html.escape(fr.symbol or str(fr.instrument_id))}</b> "
                f"{fr.instrument_id}@{fr.publisher_id} &middot; {len(self.session):,} records"
                f" &middot; at {fr.position:,} ({html.escape(fmt_time(fr.ts_recv, self.tz))} "
                f"{zone_label(self.tz)}){flag}{warn}</div><div>bid <b style='color:{BID}'>"
                f"{px(fr.best_bid)}</b> x {int(bbo['bid_sz'])} &middot; ask <b style='color:"
                f"{ASK}'>{px(fr.best_ask)}</b> x {int(bbo['ask_sz'])} &middot; spread "
                f"{px(bbo['spread'])}</div>")
        return (f"<div class='mbo-static' style='font-size:12px'>{head}"
                f"<div style='display:flex;gap:16px;align-items:flex-start'>"
                f"{static_ladder(fr, self.tick, 15)}{self._sparkline()}</div></div>")

    def _sparkline(self, width: int = 320, height: int = 120) -> str:
        t = self.price._t.astype(np.float64)
        if len(t) < 2:
            return ""
        b, a = self.price._b, self.price._a
        v = np.concatenate([b, a])
        v = v[np.isfinite(v)]
        if not len(v):
            return ""
        lo, hi = float(v.min()), float(v.max())
        hi = hi if hi > lo else lo + 1.0
        x = (t - t[0]) / max(t[-1] - t[0], 1.0) * (width - 4) + 2

        def path(y: np.ndarray) -> str:
            pts, out = [], []
            for xi, yi in zip(x, y):
                if math.isfinite(yi):
                    pts.append(f"{xi:.1f},{(hi - yi) / (hi - lo) * (height - 16) + 8:.1f}")
                elif pts:
                    out.append(pts)
                    pts = []
            if pts:
                out.append(pts)
            return "".join(f"<polyline fill='none' stroke-width='1.2' points='{' '.join(p)}'"
                           " stroke='{c}'/>" for p in out)

        t0 = fmt_time(int(t[0]), self.tz, "%H:%M")
        t1 = fmt_time(int(t[-1]), self.tz, "%H:%M")
        body = path(b).replace("{c}", BID) + path(a).replace("{c}", ASK)
        return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 14}'"
                f" class='mbo-sparkline'>{body}<text x='2' y='{height + 10}' font-size='10'>"
                f"{t0}</text><text x='{width - 2}' y='{height + 10}' font-size='10' "
                f"text-anchor='end'>{t1} {zone_label(self.tz)}</text></svg>")

    def _repr_mimebundle_(self, **kw: Any) -> dict:
        data = super()._repr_mimebundle_(**kw) or {}
        if isinstance(data, tuple):
            data = data[0]
        data = dict(data)
        try:
            data["text/html"] = self.static_html()
        except Exception as exc:  # noqa: BLE001 - the live view still works
            data["text/html"] = f"<i>static view unavailable: {html.escape(str(exc))}</i>"
        return data

    # ------------------------------------------------------------------ lifetime
    @property
    def closed(self) -> bool:
        return getattr(self, "_unsubscribe", None) is None

    def close(self) -> None:
        """Unsubscribe from the session and close the widgets."""
        unsub, self._unsubscribe = getattr(self, "_unsubscribe", None), None
        if unsub is not None:
            unsub()
        session = getattr(self, "session", None)
        if session is not None and _LIVE.get(session) is self:
            del _LIVE[session]
        if getattr(self, "map", None) is not None:
            try:
                self.map.close()
            except Exception:  # noqa: BLE001
                log.debug("closing the liquidity map failed", exc_info=True)
        for child in list(self.children):
            _close_tree(child)
        super().close()


def _close_tree(w: Any) -> None:
    """Close a widget and what it holds (box children; figure marks, axes and scales)."""
    if isinstance(w, W.Box):
        for c in w.children:
            _close_tree(c)
    elif isinstance(w, bq.Figure):
        for m in w.marks:
            for sc in m.scales.values():
                sc.close()
            m.close()
        for ax in w.axes:
            ax.close()
    w.close()
