"""The current MBO record (the last one applied) and what it did to the book, as HTML."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import pandas as pd

from ._common import Clock, Part, Throttle

_ACTION = {"A": "Add", "C": "Cancel", "M": "Modify", "R": "Clear", "T": "Trade", "F": "Fill",
           "N": "None"}
_SIDE = {"B": "bid", "A": "ask", "N": "none"}


def _ts(ns: int) -> str:
    return str(pd.Timestamp(int(ns), tz="UTC")) if ns else "-"


class Inspector(Part):
    """An HTML table of ``frame.record`` (action, side, price, size, order id, flags,
    times, sequence, book) and ``frame.effect``. While playing it is redrawn at most
    ``max_hz`` times a second (nobody reads faster); paused frames are always shown."""

    def __init__(self, *, max_hz: float = 8.0, clock: Clock | None = None):
        self.throttle = Throttle(max_hz, clock)
        self.widget = W.HTML(layout=W.Layout(width="100%", height="280px",
                                             overflow="hidden"))
        self.widget.add_class("mbo-inspector")
        self.updates = 0

    @staticmethod
    def render(frame: Any) -> str:
        r = frame.record
        a = r.get("action", "?")
        price = r.get("price")
        rows = [
            ("record", f"#{frame.record_index:,}"),
            ("action", f"{html.escape(a)} ({_ACTION.get(a, 'unknown')})"),
            ("side", f"{html.escape(r.get('side', '?'))} ({_SIDE.get(r.get('side'), '?')})"),
            ("price", "UNDEF" if price is None else f"{price:.9g}"),
            ("size", f"{r.get('size', 0):,}"),
            ("order id", str(r.get("order_id", ""))),
            ("flags", html.escape(" ".join(r.get("flags", [])) or "-")),
            ("ts_recv", _ts(r.get("ts_recv", 0))),
            ("ts_event", _ts(r.get("ts_event", 0))),
            ("sequence", str(r.get("sequence", ""))),
            ("book", f"{r.get('instrument_id', '')}@{r.get('publisher_id', '')}"),
        ]
        body = "".join(f"<tr><td style='color:#566573;padding-right:8px'>{k}</td>"
                       f"<td style='font-family:monospace'>{v}</td></tr>" for k, v in rows)
        return ("<div style='font-size:12px;line-height:1.3'><b>Current record</b>"
                f"<table>{body}</table><div style='margin-top:4px'><b>Effect:</b> "
                f"<span class='mbo-effect'>{html.escape(frame.effect)}</span></div></div>")

    def update(self, frame: Any) -> None:
        self.updates += 1
        if not self.throttle.ready(force=not frame.playing):
            return
        text = self.render(frame)
        if text != self.widget.value:
            self.widget.value = text
