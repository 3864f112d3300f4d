"""The selected book's last MBO record and what it did to the book, as HTML."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from ._common import Clock, Part, Throttle, fmt_time, frame_book_record, zone_label

_ACTION = {"A": "Add", "C": "Cancel", "M": "Modify", "R": "Clear", "T": "Trade", "F": "Fill",
           "N": "None"}
_SIDE = {"B": "bid", "A": "ask", "N": "none"}


def _effect(r: dict) -> str:
    """One line saying what a record (as a dict) does to its book."""
    a = r.get("action", "?")
    side = {"B": "bid", "A": "ask"}.get(r.get("side"), "-")
    price = r.get("price")
    px = "UNDEF" if price is None else f"{price:.6g}"
    name = _ACTION.get(a, f"unknown action {a!r}")
    if a in ("T", "F", "N"):
        return f"{name} {side} {r.get('size', 0)} @ {px}: no book change"
    if a == "R":
        return "Clear: the book is emptied"
    return f"{name} {side} order {r.get('order_id', '')}: {r.get('size', 0)} @ {px}"


class Inspector(Part):
    """An HTML table of the selected book's last record (``frame.book_record``, contract
    B) with its action, side, price, size, order id, flags, times, sequence and effect.
    Without ``book_record`` the frame's current record is shown, labelled as another
    book's when it is one. While playing it is redrawn at most ``max_hz`` times a second;
    paused frames are always shown. Times are written in zone ``tz``.
    """

    def __init__(self, *, max_hz: float = 4.0, tz: str = "UTC", clock: Clock | None = None,
                 height: str = "190px"):
        self.throttle = Throttle(max_hz, clock)
        self.tz = tz
        self.widget = W.HTML(layout=W.Layout(width="100%", height=height, overflow="hidden"))
        self.widget.add_class("mbo-inspector")
        self.updates = 0
        self._last: Any = None

    def set_time_zone(self, tz: str) -> None:
        self.tz = tz
        if self._last is not None:
            self.widget.value = self.render(self._last, self.tz)

    @staticmethod
    def render(frame: Any, tz: str = "UTC") -> str:
        r, own = frame_book_record(frame)
        a = r.get("action", "?")
        price = r.get("price")
        book = f"{r.get('instrument_id', '')}@{r.get('publisher_id', '')}"
        if own:
            title = "Last record of this book"
        else:
            title = (f"Current record: another book's ({html.escape(book)}), not "
                     f"{frame.instrument_id}@{frame.publisher_id}")
        rows = [
            ("action", f"{html.escape(a)} ({_ACTION.get(a, 'unknown')})"),
            ("side", f"{html.escape(r.get('side', '?'))} ({_SIDE.get(r.get('side'), '?')})"),
            ("price", "UNDEF" if price is None else f"{price:.9g}"),
            ("size", f"{r.get('size', 0):,}"),
            ("order id", str(r.get("order_id", ""))),
            ("flags", html.escape(" ".join(r.get("flags", [])) or "-")),
            (f"ts_recv ({zone_label(tz)})", fmt_time(r.get("ts_recv", 0), tz)),
            ("ts_event", fmt_time(r.get("ts_event", 0), tz)),
            ("sequence", str(r.get("sequence", ""))),
            ("book", html.escape(book)),
            ("stream record", f"#{frame.record_index:,}"),
        ]
        body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
        effect = _effect(r)
        eff = (f"<div><b>Effect:</b> <span class='mbo-effect'>{html.escape(effect)}</span></div>"
               if effect else "")
        cls = "mbo-own" if own else "mbo-other-book"
        return (f"<div class='{cls}' style='font-size:12px;line-height:1.25'><b>{title}</b>"
                f"<table class='mbo-kv'>{body}</table>{eff}</div>")

    def update(self, frame: Any) -> None:
        self.updates += 1
        self._last = frame
        if not self.throttle.ready(force=not frame.playing):
            return
        text = self.render(frame, self.tz)
        if text != self.widget.value:
            self.widget.value = text
