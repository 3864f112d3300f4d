"""Session statistics: records, position, live orders, levels, spread, crossed flag and
the anomaly counters (unknown cancels/modifies, ...)."""

from __future__ import annotations

import html
import math
from collections import deque
from typing import Any

import ipywidgets as W

from ._common import Clock, Part, Throttle, data_warnings, fmt_time, now, zone_label


class StatsPanel(Part):
    """An HTML panel of a frame's statistics.

    ``session`` (optional) adds the total record count and the number of price levels of
    each side (a frame only holds the top levels). The panel also shows the frame's
    ``seq`` and the rate at which frames reach it (``fps``; "paused" instead of a stale
    figure when the clock stands). While playing it is redrawn at most ``max_hz`` times a
    second. Times are written in zone ``tz``; problems of the source (a truncated file
    opened with ``allow_truncated=True``) are flagged.
    """

    def __init__(self, session: Any = None, *, clock: Clock | None = None,
                 max_hz: float = 5.0, tz: str = "UTC", height: str = "190px"):
        self.session = session
        self.clock = clock or now
        self.tz = tz
        self.throttle = Throttle(max_hz, clock)
        self._times: deque[float] = deque(maxlen=64)
        # A fixed size: a panel that changes height would make the figures lay out again.
        self.widget = W.HTML(layout=W.Layout(width="100%", height=height, overflow="hidden"))
        self.widget.add_class("mbo-stats")
        self.warnings = data_warnings(session) if session is not None else []
        self.updates = 0
        self._last: Any = None

    def set_time_zone(self, tz: str) -> None:
        self.tz = tz
        if self._last is not None:
            self.widget.value = self.render(self.values(self._last), self.fps)

    @property
    def fps(self) -> float:
        """Frames per second over the last second of updates."""
        t = list(self._times)
        if len(t) < 2:
            return 0.0
        recent = [x for x in t if x >= t[-1] - 1.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def values(self, frame: Any) -> dict[str, Any]:
        total = len(self.session) if self.session is not None else (
            round(frame.position / frame.progress) if frame.progress else frame.position)
        levels = (None, None)
        if self.session is not None:
            st = self.session.stats()
            levels = (st["bid_levels"], st["ask_levels"])
        bbo = frame.bbo
        c = frame.counters
        return {
            "records": total, "position": frame.position, "progress": frame.progress,
            "time": fmt_time(frame.ts_recv, self.tz), "tz": zone_label(self.tz),
            "warnings": self.warnings,
            "live_orders": frame.live_orders, "bid_levels": levels[0], "ask_levels": levels[1],
            "spread": bbo["spread"], "mid": bbo["mid"], "crossed": frame.crossed,
            "locked": frame.locked, "unknown_cancel": c.get("unknown_cancel", 0),
            "unknown_modify": c.get("unknown_modify", 0),
            "other_anomalies": {k: v for k, v in c.items()
                                if v and k not in ("unknown_cancel", "unknown_modify")},
            "seq": frame.seq, "playing": frame.playing, "speed": frame.speed,
        }

    @staticmethod
    def render(v: dict[str, Any], fps: float) -> str:
        def num(x: Any) -> str:
            return "-" if x is None else f"{x:,}"

        spread = "-" if not math.isfinite(v["spread"]) else f"{v['spread']:.6g}"
        mid = "-" if not math.isfinite(v["mid"]) else f"{v['mid']:.6g}"
        if v["crossed"]:
            flag = "<span class='mbo-crossed mbo-flag-crossed'>CROSSED</span>"
        elif v["locked"]:
            flag = "<span class='mbo-locked mbo-flag-locked'>LOCKED</span>"
        else:
            flag = "<span style='color:#27ae60'>ok</span>"
        other = ", ".join(f"{k} {n:,}" for k, n in v["other_anomalies"].items()) or "none"
        speed = "max" if math.isinf(v["speed"]) else f"{v['speed']:g}x"
        rows = [
            ("records", num(v["records"])),
            ("position", f"{v['position']:,} ({100 * v['progress']:.1f} %)"),
            (f"time ({html.escape(v.get('tz', 'UTC'))})", html.escape(v["time"])),
            ("live orders", num(v["live_orders"])),
            ("levels bid / ask", f"{num(v['bid_levels'])} / {num(v['ask_levels'])}"),
            ("spread / mid", f"{spread} / {mid}"),
            ("book", flag),
            ("unknown cxl / mod", f"{v['unknown_cancel']:,} / {v['unknown_modify']:,}"),
            ("other anomalies", html.escape(other)),
            ("clock", f"{'playing' if v['playing'] else 'paused'} at {speed}"),
            ("frame", f"#{v['seq']:,} &middot; "
                      + (f"{fps:.1f} fps" if v["playing"] else "paused")),
        ]
        for w in v.get("warnings") or ():
            rows.insert(0, ("source", f"<span class='mbo-flag-warn mbo-truncated'>"
                                      f"{html.escape(w)}</span>"))
        body = "".join(f"<tr><td>{k}</td><td>{val}</td></tr>" for k, val in rows)
        return (f"<div style='font-size:12px;line-height:1.25'>"
                f"<table class='mbo-kv'>{body}</table></div>")

    def update(self, frame: Any) -> None:
        self._last = frame
        if frame.playing:
            self._times.append(self.clock())
        else:
            self._times.clear()
        self.updates += 1
        if not self.throttle.ready(force=not frame.playing):
            return
        text = self.render(self.values(frame), self.fps)
        if text != self.widget.value:
            self.widget.value = text
