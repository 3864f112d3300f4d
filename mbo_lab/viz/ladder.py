"""DOM ladder: one row per price tick around the touch (bid size | price | ask size, with
order counts and cumulative sizes), crossed and locked rows marked, the last trade at its
price. An HTML widget redrawn at a bounded rate."""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as W
import numpy as np

from ._common import Clock, Part, Throttle, book_key, infer_tick, tick_decimals

#: Aggressor side of a trade ('B' buyer, 'A' seller) as shown in the trade column.
_TRADE_SIDE = {"B": "B", "A": "A"}


class Ladder(Part):
    """Price-row DOM (depth of market) of the selected book.

    ``rows`` consecutive prices at the instrument's ``tick`` (``session.tick``; inferred
    from the frame when not given), centred on the touch; the rows move only when the
    touch leaves the middle band, so the ladder does not jump at every frame. Each row
    shows cumulative bid size, bid size (orders), price, ask size (orders), cumulative
    ask size and the last trade when it happened at that price. A crossed book (bid above
    ask, e.g. CME pre-open) keeps both sides: the rows between the best ask and the best
    bid are marked crossed (``tr.x``), the row of a locked book ``tr.l``.

    :meth:`table` returns the rows as arrays (tests and the static view use it);
    ``widget.value`` holds the HTML, redrawn at most ``max_hz`` times a second while
    playing (paused frames at once).
    """

    def __init__(self, rows: int = 21, *, tick: float | None = None, max_hz: float = 20.0,
                 clock: Clock | None = None, height: str = "330px", width: str = "100%"):
        self.n_rows = max(3, int(rows) | 1)  # odd: one centre row
        self.fixed_tick = tick
        self.throttle = Throttle(max_hz, clock)
        self.widget = W.HTML(layout=W.Layout(width=width, height=height, overflow="hidden"))
        self.widget.add_class("mbo-ladder")
        self.updates = 0
        self.renders = 0
        self.reset()

    @property
    def levels(self) -> int:
        return self.n_rows // 2

    def reset(self) -> None:
        self.tick: float | None = self.fixed_tick
        self.base: int | None = None  # price of the lowest row, in ticks
        self._key: tuple[int, int] | None = None

    def set_tick(self, tick: float | None) -> None:
        """Use this price increment (e.g. ``session.tick``) from now on."""
        if tick and tick > 0 and tick != self.fixed_tick:
            self.fixed_tick = float(tick)
            self.tick, self.base = self.fixed_tick, None

    # ------------------------------------------------------------------ rows
    @property
    def prices(self) -> np.ndarray:
        """Row prices, highest first (as drawn)."""
        if self.base is None or self.tick is None:
            return np.zeros(0)
        return np.round((self.base + np.arange(self.n_rows)[::-1]) * self.tick, 9)

    def _place(self, frame: Any) -> None:
        if self.tick is None:
            self.tick = self.fixed_tick or infer_tick(frame)
        if self.tick is None:
            p = [x for x in (frame.best_bid, frame.best_ask) if math.isfinite(x)]
            if not p:
                return
            self.tick = 0.01  # one level only and no tick known: a placeholder
        touch = [round(p / self.tick) for p in (frame.best_bid, frame.best_ask)
                 if math.isfinite(p)]
        if not touch:
            return
        lo, hi = min(touch), max(touch)
        if self.base is not None:
            edge = max(1, self.n_rows // 5)
            if lo - self.base >= edge and self.base + self.n_rows - 1 - hi >= edge:
                return
        centre = (lo + hi) // 2
        self.base = int(centre - self.n_rows // 2)

    def table(self, frame: Any) -> dict[str, np.ndarray]:
        """The rows for ``frame`` (highest price first): ``price``, ``bid_sz``, ``bid_ct``,
        ``ask_sz``, ``ask_ct``, ``bid_cum``, ``ask_cum`` (cumulative from the best price
        outwards, 0 outside the side), ``crossed``/``locked`` (bool per row), ``trade``
        (size of the last trade at that price, 0 elsewhere) and ``trade_side``."""
        self._place(frame)
        px = self.prices
        n = len(px)
        out = {k: np.zeros(n, dtype=np.int64) for k in
               ("bid_sz", "bid_ct", "ask_sz", "ask_ct", "bid_cum", "ask_cum", "trade")}
        out["price"] = px
        out["crossed"] = np.zeros(n, dtype=bool)
        out["locked"] = np.zeros(n, dtype=bool)
        out["trade_side"] = np.full(n, "", dtype=object)
        if n == 0:
            return out
        top = self.base + self.n_rows - 1  # ticks of row 0
        for side, lp, ls, lc in (("bid", frame.bid_px, frame.bid_sz, frame.bid_ct),
                                 ("ask", frame.ask_px, frame.ask_sz, frame.ask_ct)):
            m = np.isfinite(lp)
            t = np.rint(lp[m] / self.tick).astype(np.int64)
            sz = np.asarray(ls)[m].astype(np.int64)
            ct = np.asarray(lc)[m].astype(np.int64)
            r = top - t
            ok = (r >= 0) & (r < n)
            np.add.at(out[f"{side}_sz"], r[ok], sz[ok])
            np.add.at(out[f"{side}_ct"], r[ok], ct[ok])
            if len(t):
                # cumulative from the best level outwards, carried over empty rows
                cum = np.cumsum(sz)
                rows_t = top - np.arange(n)
                if side == "bid":  # bids: best = highest; row price <= level price
                    k = np.searchsorted(-t, -rows_t, "right")  # levels with price >= row
                else:
                    k = np.searchsorted(t, rows_t, "right")  # levels with price <= row
                out[f"{side}_cum"] = np.where(k > 0, cum[np.maximum(k - 1, 0)], 0)
        bb, ba = frame.best_bid, frame.best_ask
        if math.isfinite(bb) and math.isfinite(ba):
            tb, ta = round(bb / self.tick), round(ba / self.tick)
            rows_t = top - np.arange(n)
            if tb > ta:
                out["crossed"] = (rows_t >= ta) & (rows_t <= tb)
            elif tb == ta:
                out["locked"] = rows_t == tb
        if frame.trades:
            _ts, tpx, tsz, tside = frame.trades[-1]
            r = top - round(float(tpx) / self.tick)
            if 0 <= r < n:
                out["trade"][r] = int(tsz)
                out["trade_side"][r] = _TRADE_SIDE.get(tside, "N")
        return out

    # ------------------------------------------------------------------ html
    def render(self, frame: Any, t: dict[str, np.ndarray] | None = None) -> str:
        """The ladder as an HTML table (classes styled by the dashboard's theme CSS)."""
        t = self.table(frame) if t is None else t
        dec = tick_decimals(self.tick) if self.tick else 2
        peak = max(1, int(max(t["bid_sz"].max(initial=0), t["ask_sz"].max(initial=0))))
        bb, ba = frame.best_bid, frame.best_ask
        state = ("<span class='mbo-flag-crossed'>CROSSED</span>" if frame.crossed else
                 "<span class='mbo-flag-locked'>LOCKED</span>" if frame.locked else "")
        tick = "-" if self.tick is None else f"{self.tick:.{dec}f}"
        head = (f"<div class='mbo-dom-head'><b>Ladder</b> <span class='mbo-muted'>tick {tick}"
                f"</span> {state}</div>")
        rows = []
        for i in range(len(t["price"])):
            p = t["price"][i]
            cls = []
            if t["crossed"][i]:
                cls.append("x")
            if t["locked"][i]:
                cls.append("l")
            if math.isfinite(bb) and abs(p - bb) < self.tick / 2:
                cls.append("bb")
            if math.isfinite(ba) and abs(p - ba) < self.tick / 2:
                cls.append("ba")
            bs, bc, as_, ac = t["bid_sz"][i], t["bid_ct"][i], t["ask_sz"][i], t["ask_ct"][i]
            bcell = (f"<td class='bs' style='--w:{100 * bs // peak}%'>{bs:,}"
                     f"{f' ({bc})' if bc else ''}</td>" if bs else "<td class='bs'></td>")
            acell = (f"<td class='as' style='--w:{100 * as_ // peak}%'>{as_:,}"
                     f"{f' ({ac})' if ac else ''}</td>" if as_ else "<td class='as'></td>")
            bcum = f"{t['bid_cum'][i]:,}" if t["bid_cum"][i] else ""
            acum = f"{t['ask_cum'][i]:,}" if t["ask_cum"][i] else ""
            tr = (f"<td class='t {t['trade_side'][i]}'>{t['trade'][i]:,}</td>" if t["trade"][i]
                  else "<td class='t'></td>")
            c = f" class='{' '.join(cls)}'" if cls else ""
            rows.append(f"<tr{c}><td class='bc'>{bcum}</td>{bcell}<td class='p'>{p:,.{dec}f}"
                        f"</td>{acell}<td class='ac'>{acum}</td>{tr}</tr>")
        return (head + "<table class='mbo-dom'><colgroup><col style='width:14%'>"
                "<col style='width:22%'><col style='width:19%'><col style='width:22%'>"
                "<col style='width:13%'><col style='width:10%'></colgroup>"
                "<tr><th>cum</th><th>bid (ord)</th><th>price</th><th>ask (ord)</th>"
                "<th>cum</th><th title='last trade'>trd</th></tr>" + "".join(rows)
                + "</table>")

    # ------------------------------------------------------------------ update
    def update(self, frame: Any) -> None:
        key = book_key(frame)
        if key != self._key:
            self.reset()
            self._key = key
        self.updates += 1
        if not self.throttle.ready(force=not frame.playing):
            return
        text = self.render(frame)
        if text != self.widget.value:
            self.widget.value = text
            self.renders += 1


def static_ladder(frame: Any, tick: float | None, rows: int = 15) -> str:
    """The ladder of ``frame`` as self-contained HTML (inline styles, no widgets)."""
    lad = Ladder(rows, tick=tick)
    t = lad.table(frame)
    dec = tick_decimals(lad.tick) if lad.tick else 2
    out = ["<table style='border-collapse:collapse;font-family:monospace;font-size:12px'>"
           "<tr><th>cum</th><th>bid (ord)</th><th>price</th><th>ask (ord)</th><th>cum</th>"
           "</tr>"]
    for i in range(len(t["price"])):
        bs, as_ = int(t["bid_sz"][i]), int(t["ask_sz"][i])
        bid = f"{bs:,} ({int(t['bid_ct'][i])})" if bs else ""
        ask = f"{as_:,} ({int(t['ask_ct'][i])})" if as_ else ""
        bcum = f"{int(t['bid_cum'][i]):,}" if t["bid_cum"][i] else ""
        acum = f"{int(t['ask_cum'][i]):,}" if t["ask_cum"][i] else ""
        price = f"{t['price'][i]:.{dec}f}"
        bg = "background:#f5cba7" if t["crossed"][i] or t["locked"][i] else ""
        out.append(f"<tr style='{bg}'><td style='text-align:right;color:#888'>{bcum}</td>"
                   f"<td style='text-align:right;color:#1e8449'>{bid}</td>"
                   f"<td style='padding:0 8px'>{html.escape(price)}</td>"
                   f"<td style='color:#c0392b'>{ask}</td><td style='color:#888'>{acum}</td></tr>")
    out.append("</table>")
    return "".join(out)
