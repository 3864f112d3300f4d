"""Price chart: best bid and ask over a window of market time ending at the current
position, with the trades of the same window as markers (area by quantity, colour by
aggressor side). The window is filled from the kernel at once (``session.history``) after
opening, a seek or a book change, then extended by the frames while playing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import (
    ASK,
    BID,
    Clock,
    Part,
    StickyRange,
    Throttle,
    book_key,
    f64,
    figure,
    history,
    price_ticks,
    set_time_ticks,
    span,
    time_ticks,
    zone_label,
)

#: Trade colour values: the aggressor side of a Databento trade ('B' buyer, 'A' seller).
SIDE_VALUE = {"B": 1.0, "A": -1.0}


class PriceChart(Part):
    """Best bid / best ask step lines and trade markers over ``span`` of market time.

    The x axis is a plain linear scale in seconds since the epoch (float64) whose tick
    values and labels are made in Python in the chosen time zone (``tz``: "UTC" or the
    exchange's zone), so the browser's own time zone never changes what is shown. The
    y axis ticks sit at multiples of the instrument's ``tick`` with its decimals.

    After :meth:`update`: ``bid_line.x``/``ask_line.x`` hold the times (s), ``.y`` the
    prices (float64; NaN where a side was empty); ``trades.x/y/size/color`` the trades of
    the same window (s, price, quantity, +1 buyer / -1 seller / 0 unknown aggressor).
    ``session`` (optional) provides the history; without one the chart starts from the
    frames it sees. Lines are sent at most ``max_hz`` times a second while playing.
    """

    TITLE = "Best bid / ask and trades (buyer green, seller red)"

    def __init__(self, session: Any = None, *, points: int = 300, span_ns: int = 15 * 60 * 10**9,
                 max_trades: int = 300, max_hz: float = 5.0, tick: float | None = None,
                 tz: str = "UTC", clock: Clock | None = None, height: str = "300px",
                 width: str = "100%", window: int | None = None):
        import bqplot as bq

        self.session = session
        self.points = int(window or points)
        self.span_ns = int(span_ns)
        self.max_trades = int(max_trades)
        self.tick = tick
        self.tz = tz
        self.throttle = Throttle(max_hz, clock)
        self.x_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.y_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        sc = {"x": self.x_scale, "y": self.y_scale}
        # marks start with two finite points inside the domain (never empty: bqplot draws
        # d="null" paths and translate(0,undefined) markers from empty or NaN data)
        self.bid_line = bq.Lines(x=np.array([0.0, 1.0]), y=np.array([0.5, 0.5]), colors=[BID],
                                 stroke_width=1.5, interpolation="step-after", scales=sc,
                                 visible=False)
        self.ask_line = bq.Lines(x=np.array([0.0, 1.0]), y=np.array([0.5, 0.5]), colors=[ASK],
                                 stroke_width=1.5, interpolation="step-after", scales=sc,
                                 visible=False)
        self.size_scale = bq.LinearScale(min=0.0, max=1.0)
        self.trades = bq.Scatter(
            x=np.array([0.5]), y=np.array([0.5]), size=np.array([1.0]), color=np.array([0.0]),
            default_size=120, stroke="#333", stroke_width=0.5, opacities=[0.8],
            visible=False,
            scales={**sc, "size": self.size_scale,
                    "color": bq.ColorScale(colors=[ASK, "#999999", BID], min=-1.0, max=1.0)},
        )
        self.time_axis = bq.Axis(scale=self.x_scale, label=f"time ({zone_label(tz)})",
                                 grid_lines="none", tick_values=np.array([0.0]),
                                 tick_labels={"0": ""}, label_offset="28px")
        self.price_axis = bq.Axis(scale=self.y_scale, side="left", grid_lines="dashed",
                                  tick_format=".2f", tick_values=np.array([0.5]))
        self.widget = figure(
            [self.bid_line, self.ask_line, self.trades], [self.time_axis, self.price_axis],
            title=self.TITLE, height=height, width=width, css_class="mbo-price",
            margin={"top": 24, "bottom": 34, "left": 62, "right": 12})
        self._xr = StickyRange(self.x_scale, margin=0.0, margin_lo=0.0, min_pad=1.0,
                               slack=1e12)
        self._yr = StickyRange(self.y_scale, margin=0.15, min_pad=1e-9, rel_pad=2e-4,
                               slack=4.0)
        self.updates = 0
        self.renders = 0
        self.history_loads = 0
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self._t = np.zeros(0, dtype=np.int64)
        self._b = np.zeros(0)
        self._a = np.zeros(0)
        self._tr = np.zeros((0, 4))  # ts (ns, as float), price, size, side value
        self._last_tr: tuple[int, int] = (-1, 0)
        self._key: tuple[int, int] | None = None
        self._last_ts = -1
        self._xr.reset()
        self._yr.reset()
        self._dirty = self._tr_dirty = True

    def set_time_zone(self, tz: str) -> None:
        """Label the time axis in zone ``tz`` (values do not change)."""
        self.tz = tz
        self.time_axis.label = f"time ({zone_label(tz)})"
        self._set_time_ticks()

    def set_tick(self, tick: float | None) -> None:
        self.tick = tick

    def load_history(self) -> None:
        """Fill the window from the kernel (``session.history``) ending at the session's
        position: the BBO path and the trades of the same window."""
        if self.session is None:
            return
        df = history(self.session, points=self.points, span_ns=self.span_ns)
        self._t = df.index.asi8.astype(np.int64)
        self._b = df["bid"].to_numpy(np.float64, copy=True)
        self._a = df["ask"].to_numpy(np.float64, copy=True)
        tr = df.attrs.get("trades")
        if tr is not None and len(tr) and len(self._t):
            # lines and trades on one window (the grid's first point starts it)
            tr = tr[(tr.index.asi8 >= self._t[0]) & (tr.index.asi8 <= self._t[-1])]
        if tr is not None and len(tr):
            if len(tr) > self.max_trades:
                keep = np.sort(np.argsort(-tr["size"].to_numpy(), kind="stable")
                               [: self.max_trades])
                tr = tr.iloc[keep]
            side = np.array([SIDE_VALUE.get(s, 0.0) for s in tr["side"]])
            self._tr = np.column_stack([tr.index.asi8.astype(np.float64),
                                        tr["price"].to_numpy(np.float64),
                                        tr["size"].to_numpy(np.float64), side])
        else:
            self._tr = np.zeros((0, 4))
        self._last_tr = (int(self._t[-1]) if len(self._t) else -1, 10**9)
        self.history_loads += 1
        self._dirty = self._tr_dirty = True

    # ------------------------------------------------------------------ frames
    def _append(self, frame: Any) -> None:
        ts = int(frame.ts_recv)
        bid, ask = frame.best_bid, frame.best_ask
        step = self.span_ns / max(self.points - 1, 1)
        if len(self._t) and ts - self._t[-1] < step and len(self._t) > 1 \
                and self._t[-1] - self._t[-2] < step:
            self._t[-1], self._b[-1], self._a[-1] = ts, bid, ask  # same bin: latest wins
        else:
            self._t = np.append(self._t, ts)
            self._b = np.append(self._b, bid)
            self._a = np.append(self._a, ask)
        keep = self._t >= ts - self.span_ns
        keep[-2:] = True
        if not keep.all():
            self._t, self._b, self._a = self._t[keep], self._b[keep], self._a[keep]
        # trades the frame lists (the last ones up to its record) and not seen yet
        last_ts, k_last = self._last_tr
        counts: dict[int, int] = {}
        new = []
        for t, px, qty, side in frame.trades:
            t = int(t)
            k = counts[t] = counts.get(t, 0) + 1
            if t > last_ts or (t == last_ts and k > k_last and k_last < 10**9):
                new.append((float(t), float(px), float(qty), SIDE_VALUE.get(side, 0.0)))
        if frame.trades:
            newest = int(frame.trades[-1][0])
            if newest > last_ts:
                self._last_tr = (newest, counts[newest])
            elif newest == last_ts and k_last < 10**9:
                self._last_tr = (newest, max(k_last, counts[newest]))
        tr = np.vstack([self._tr, np.array(new).reshape(-1, 4)]) if new else self._tr
        tr = tr[tr[:, 0] >= self._t[0]] if len(self._t) else tr
        if len(tr) > self.max_trades:
            tr = tr[-self.max_trades:]
        if new or len(tr) != len(self._tr):
            self._tr = tr
            self._tr_dirty = True
        self._dirty = True

    def update(self, frame: Any) -> None:
        key = book_key(frame)
        ts = int(frame.ts_recv)
        jump = (key != self._key or ts < self._last_ts
                or (not frame.playing and ts != self._last_ts)
                or ts - self._last_ts > self.span_ns // 4)
        self.updates += 1
        if jump:
            self.reset()
            self._key = key
            self._last_ts = ts
            if self.session is not None:
                try:
                    self.load_history()
                except Exception:
                    self.reset()
                    self._key = key
                    self._append(frame)
                    raise
            if not len(self._t) or self._t[-1] < ts:
                self._append(frame)
        else:
            self._last_ts = ts
            self._append(frame)
        if self.throttle.ready(force=not frame.playing or jump):
            self._send()

    # ------------------------------------------------------------------ drawing
    def _set_time_ticks(self) -> None:
        if self._xr.lo is None:
            return
        vals, labels = time_ticks(self._xr.lo, self._xr.hi, self.tz, n=5)
        if len(vals):
            set_time_ticks(self.time_axis, vals, labels)

    def _send(self) -> None:
        if not self._dirty or not len(self._t):
            return
        self._dirty = False
        x = self._t.astype(np.float64) / 1e9
        t_end = x[-1]
        t0 = min(x[0], t_end - self.span_ns / 1e9 / 8)
        # the time axis pages forward by a quarter of the span
        if self._xr.lo is None or t_end > self._xr.hi or t0 < self._xr.lo - 1e-6:
            width = max(t_end - t0, 1.0)
            lo = t0
            hi = t_end + (width * 0.25 if self._xr.lo is not None else width * 0.02)
            self._xr.lo, self._xr.hi = lo, hi
            with self.x_scale.hold_sync():
                self.x_scale.min, self.x_scale.max = float(lo), float(hi)
            self._set_time_ticks()
        lo, hi = span(np.concatenate([self._b, self._a, self._tr[:, 1]]))
        if math.isfinite(lo) and self._yr.fit(lo, hi):
            vals, fmt = price_ticks(self._yr.lo, self._yr.hi, self.tick or 0.0, n=5)
            with self.price_axis.hold_sync():
                self.price_axis.tick_format = fmt
                if len(vals):
                    self.price_axis.tick_values = vals
        for line, y in ((self.bid_line, self._b), (self.ask_line, self._a)):
            ok = np.isfinite(y)
            if ok.sum() >= 1:
                xs, ys = x, y
                if len(xs) == 1:
                    xs, ys = np.array([x[0], x[0] + 1e-3]), np.array([y[0], y[0]])
                with line.hold_sync():
                    line.x = f64(xs)
                    line.y = f64(ys)
                    if not line.visible:
                        line.visible = True
            elif line.visible:
                line.visible = False
        tr = self._tr
        if not self._tr_dirty:
            pass
        elif len(tr):
            with self.trades.hold_sync():
                self.trades.x = f64(tr[:, 0] / 1e9)
                self.trades.y = f64(tr[:, 1])
                self.trades.size = f64(tr[:, 2])
                self.trades.color = f64(tr[:, 3])
                smax = float(tr[:, 2].max())
                if self.size_scale.max != smax:
                    self.size_scale.max = max(smax, 1.0)
                if not self.trades.visible:
                    self.trades.visible = True
        elif self.trades.visible:
            self.trades.visible = False
        self._tr_dirty = False
        self.renders += 1

    def flush(self) -> None:
        """Send what the throttle held back."""
        self._send()
