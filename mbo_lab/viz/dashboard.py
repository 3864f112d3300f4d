"""The dashboard: ladder, depth, price chart, heatmap, controls, inspector and stats of
one replay session, redrawn from ONE session subscriber per frame."""

from __future__ import annotations

import html
import logging
import math
import traceback
from typing import Any

import ipywidgets as W

from ._common import Clock, now
from .controls import Controls
from .depth import DepthChart
from .heatmap import Heatmap
from .inspector import Inspector
from .ladder import Ladder
from .price import PriceChart
from .stats import StatsPanel

log = logging.getLogger(__name__)

#: The dashboard never redraws faster than this, whatever the session's fps.
MAX_FPS = 30.0


class Dashboard(W.VBox):
    """All views of a :class:`~mbo_lab.replay.session.Session` in one widget.

    >>> s = mbo_lab.open()                       # doctest: +SKIP
    >>> dash = s.dashboard()                     # or Dashboard(s)      # doctest: +SKIP
    >>> dash                                     # display; press Play  # doctest: +SKIP

    The session's clock (in the kernel) plays; the dashboard subscribes to its frames and
    redraws every part in one callback, at most ``min(session fps, fps, 30)`` times a
    second while playing (a paused session's frames are always drawn). A part that fails
    does not stop the others: the error is shown in the dashboard's error area. When the
    session holds several books a dropdown selects the one shown. :meth:`close`
    unsubscribes (the session keeps its state and clock).
    """

    def __init__(self, session: Any, levels: int = 10, *, fps: float | None = None,
                 price_window: int = 300, heatmap_rows: int = 60, heatmap_cols: int = 200,
                 heatmap_hz: float = 5.0, clock: Clock | None = None):
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

        self.ladder = Ladder(self.levels)
        self.depth = DepthChart(self.levels)
        self.price = PriceChart(price_window, clock=clock)
        self.heatmap = Heatmap(heatmap_rows, heatmap_cols, heatmap_hz, clock=clock)
        self.controls = Controls(session, on_error=self.show_error, clock=clock)
        self.inspector = Inspector(clock=clock)
        self.stats = StatsPanel(session, clock=clock)
        self.parts = [self.controls, self.ladder, self.depth, self.price, self.heatmap,
                      self.stats, self.inspector]

        self.title = W.HTML()
        self.error_area = W.HTML(layout=W.Layout(width="100%"))
        self.error_area.add_class("mbo-errors")
        header: list[W.Widget] = [self.title]
        self.book_selector: W.Dropdown | None = None
        if len(session.books) > 1:
            symbols = session.data.symbols
            opts = [(f"{symbols.get(i, '') or i} ({i}@{p})", (i, p)) for i, p in session.books]
            self.book_selector = W.Dropdown(
                options=opts, value=(session.instrument_id, session.publisher_id),
                description="book", layout=W.Layout(width="260px"),
                style={"description_width": "36px"})
            self.book_selector.add_class("mbo-book")
            self.book_selector.observe(self._on_book, "value")
            header.append(self.book_selector)

        side = W.VBox([self.stats.widget, self.inspector.widget],
                      layout=W.Layout(width="30%", min_width="260px", padding="0 0 0 8px"))
        super().__init__(
            children=[
                W.HBox(header, layout=W.Layout(align_items="center")),
                self.controls.widget,
                self.error_area,
                W.HBox([W.Box([self.ladder.widget], layout=W.Layout(width="35%")),
                        W.Box([self.depth.widget], layout=W.Layout(width="35%")), side],
                       layout=W.Layout(width="100%")),
                W.HBox([W.Box([self.price.widget], layout=W.Layout(width="55%")),
                        W.Box([self.heatmap.widget], layout=W.Layout(width="45%"))],
                       layout=W.Layout(width="100%")),
            ],
            layout=W.Layout(width="100%"))
        self.add_class("mbo-dashboard")
        self._unsubscribe = session.subscribe(self._on_frame)
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
        with self.hold_sync():
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
        text = (f"<b style='font-size:15px'>{sym}</b> <span style='color:#566573'>"
                f"{frame.instrument_id}@{frame.publisher_id} &middot; "
                f"{len(self.session):,} records</span>")
        if self.title.value != text:
            self.title.value = text

    # ------------------------------------------------------------------ errors
    def show_error(self, exc: BaseException, where: str = "") -> None:
        """Show an error in the dashboard's error area (kept: the last 5)."""
        log.warning("dashboard %s error: %s", where, exc, exc_info=exc)
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        msg = f"{where + ': ' if where else ''}{tb}"
        if self.errors and self.errors[-1] == msg:
            return
        self.errors = [*self.errors, msg][-5:]
        items = "".join(f"<li>{html.escape(m)}</li>" for m in self.errors)
        self.error_area.value = (
            "<div style='color:#922b21;background:#fdedec;border:1px solid #e6b0aa;"
            f"padding:4px 8px;font-size:12px'><b>Errors</b><ul style='margin:0'>{items}</ul>"
            "</div>")

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

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Unsubscribe from the session and close the widgets."""
        unsub, self._unsubscribe = getattr(self, "_unsubscribe", None), None
        if unsub is not None:
            unsub()
        for child in list(self.children):
            _close_tree(child)
        super().close()


def _close_tree(w: Any) -> None:
    """Close a widget and what it holds (box children; figure marks, axes and scales)."""
    import bqplot as bq

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
