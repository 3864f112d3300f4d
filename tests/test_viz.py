"""Unit tests of the notebook dashboard (mbo_lab.viz), without a browser.

Each part's ``update(frame)`` is checked on widget state: float64 prices to bqplot, new
array objects at every update, throttling with a fake clock, controls driving a session,
the book selector, one subscriber callback per frame and the crossed flag.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from conftest import zone_controls

import mbo_lab
from mbo_lab.replay.session import SPEED_MAX
from mbo_lab.viz import (
    SPEEDS,
    Controls,
    Dashboard,
    DepthChart,
    Heatmap,
    Inspector,
    Ladder,
    PriceChart,
    StatsPanel,
)
from mbo_lab.viz._common import (
    StickyRange,
    history,
    js_key,
    nice_ticks,
    price_decimals,
    price_ticks,
    session_tick,
    session_time_zone,
    size_ticks,
    time_ticks,
)


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, dt: float) -> None:
        self.t += dt


@pytest.fixture(scope="module")
def records() -> np.ndarray:
    """A small synthetic stream with five books (one of them top-of-book only)."""
    return mbo_lab.synth_records(30_000, seed=3)


@pytest.fixture
def session(records):
    s = mbo_lab.open(records)
    s.seek(index=5_000)  # a book with depth on both sides
    return s


def frames(session, n: int, step: int = 10, playing: bool = False) -> list:
    out = []
    for _ in range(n):
        session.step(step)
        out.append(dataclasses.replace(session.frame(), playing=playing))
    return out


def crossed_frame(fr):
    """The frame with its best bid moved two ticks above the best ask."""
    bid = fr.bid_px.copy()
    bid[0] = fr.ask_px[0] + 0.5
    return dataclasses.replace(fr, bid_px=bid, crossed=True, locked=False)


def bqplot_arrays(widget) -> list[tuple[str, np.ndarray]]:
    """Every numeric array trait of every bqplot mark below ``widget``."""
    import bqplot as bq
    import ipywidgets as W

    out, todo, seen = [], [widget], set()
    while todo:
        w = todo.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        if isinstance(w, bq.Figure):
            todo.extend(w.marks)
        elif isinstance(w, bq.Mark):
            for name in w.trait_names(sync=True):
                v = getattr(w, name)
                if isinstance(v, np.ndarray) and v.dtype.kind in "iuf":
                    out.append((f"{type(w).__name__}.{name}", v))
        elif isinstance(w, W.Box):
            todo.extend(w.children)
    return out


# ---------------------------------------------------------------------- helpers
def test_helpers():
    assert price_decimals(np.array([64.83, 64.8, np.nan])) == 2
    assert price_decimals(np.array([6001.25, 6000.0])) == 2
    assert price_decimals(np.array([5000.0])) == 0
    t = nice_ticks(64.67, 64.96, 5)
    assert t.dtype == np.float64 and 2 <= len(t) <= 7 and t[0] >= 64.67 and t[-1] <= 64.96

    import bqplot as bq

    sc = bq.LinearScale()
    r = StickyRange(sc, margin=0.1, min_pad=0.5)
    assert r.fit(10.0, 10.0)  # a flat range gets a width
    assert sc.min < 10.0 < sc.max
    lo, hi = sc.min, sc.max
    assert not r.fit(10.0, 10.2)  # inside: unchanged
    assert (sc.min, sc.max) == (lo, hi)
    assert r.fit(9.0, 12.0) and sc.min <= 9.0 and sc.max >= 12.0


@pytest.mark.parametrize("tz", ["UTC", "America/Chicago", "Asia/Tokyo", "Asia/Kolkata"])
@pytest.mark.parametrize("lo,width", [(1758749700.123, 900.0), (1758749700.0, 3.0),
                                      (1758749000.0, 30_000.0), (1758749000.0, 0.2),
                                      (1758700000.0, 3 * 86400.0)])
def test_time_ticks_in_any_zone(tz, lo, width):
    """Tick labels are made in Python in the chosen zone: 24-hour, never repeated, every
    value has its label under the key JavaScript's String(number) gives."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    vals, labels = time_ticks(lo, lo + width, tz, n=5)
    assert 1 <= len(vals) <= 6 and vals.dtype == np.float64
    assert np.all((vals >= lo - 1e-6) & (vals <= lo + width + 1e-6))
    assert [js_key(v) for v in vals] == list(labels)
    texts = list(labels.values())
    assert len(set(texts)) == len(texts), texts
    zone = dt.UTC if tz == "UTC" else ZoneInfo(tz)
    for v in vals:
        local = dt.datetime.fromtimestamp(float(v), tz=dt.UTC).astimezone(zone)
        text = labels[js_key(v)]
        if ":" in text:  # HH:MM[:SS[.mmm]] of the local time, 24-hour clock
            assert text.startswith(local.strftime("%H:%M")), (text, local)
        else:
            assert text == local.strftime("%b %d")


def test_js_key_matches_javascript():
    # JavaScript: String(1758749700) "1758749700", String(0.5) "0.5", String(1758749700.25)
    assert js_key(1758749700.0) == "1758749700"
    assert js_key(0.5) == "0.5" and js_key(1758749700.25) == "1758749700.25"


def test_price_and_size_ticks():
    vals, fmt = price_ticks(64.77, 64.96, 0.01, n=5)
    assert fmt == ",.2f"
    steps = np.round(vals / 0.01, 6)
    np.testing.assert_allclose(steps, np.round(steps))  # multiples of the tick
    assert len(set(f"{v:.2f}" for v in vals)) == len(vals) <= 6
    vals, fmt = price_ticks(6000.0, 6000.75, 0.25)
    np.testing.assert_allclose(vals, [6000.0, 6000.25, 6000.5, 6000.75])
    assert fmt == ",.2f"
    for hi in (0.3, 1, 3, 7, 40, 1234):
        t = size_ticks(hi)
        assert t[0] == 0 and np.all(t == np.round(t)) and t[-1] <= max(hi, 1)
        assert len(t) >= 2 and len(set(t)) == len(t)


def test_session_tick_time_zone_and_history(session, clx5):
    assert session_tick(session) == 0.25  # synthetic ES book
    assert session_time_zone(session) in ("UTC", "America/Chicago")
    s = mbo_lab.open(clx5)
    assert session_tick(s) == 0.01
    assert session_time_zone(s) == "America/Chicago"  # GLBX.MDP3
    s.seek(time="2025-09-24 21:50")
    df = history(s, points=200, span_ns=10 * 60 * 10**9)
    assert len(df) == 200 and str(df.index.tz) == "UTC"
    # Session.history: each row is the state 1 ns before its time; the last is the current one
    assert df.index[-1].value == int(s.frame().ts_recv) + 1
    # the last point is the current BBO (computed from checkpoints, not from frames)
    fr = s.frame()
    assert df["bid"].iloc[-1] == fr.best_bid and df["ask"].iloc[-1] == fr.best_ask
    # every point equals the session's own state at that time
    for k in (0, 57, 133):
        t = df.index[k] - pd.Timedelta(1, "ns")
        f2 = s.seek(time=t)
        assert df["bid"].iloc[k] == f2.best_bid or (np.isnan(df["bid"].iloc[k])
                                                     and np.isnan(f2.best_bid))
    tr = df.attrs["trades"]
    assert list(tr.columns) == ["price", "size", "side", "record_index"]
    if len(tr):
        assert tr.index.min() >= df.index[0] and tr.index.max() <= df.index[-1]


# ---------------------------------------------------------------------- ladder
def test_ladder_rows_at_the_tick_centred_on_the_touch(session):
    lad = Ladder(21, tick=0.25)
    fr = frames(session, 1, step=200)[0]
    lad.update(fr)
    t = lad.table(fr)
    px = t["price"]
    assert len(px) == 21 and np.allclose(np.diff(px), -0.25)  # highest first, one tick
    # every level of the frame on the rows shows its size and order count on its side
    for lp, ls, lc, side in ((fr.bid_px, fr.bid_sz, fr.bid_ct, "bid"),
                             (fr.ask_px, fr.ask_sz, fr.ask_ct, "ask")):
        for p, sz, ct in zip(lp, ls, lc):
            k = np.flatnonzero(np.isclose(px, p))
            if np.isfinite(p) and len(k):
                assert t[f"{side}_sz"][k[0]] == sz and t[f"{side}_ct"][k[0]] == ct
    # the touch is near the centre row, cumulative sizes grow away from it
    kb = int(np.flatnonzero(np.isclose(px, fr.best_bid))[0])
    ka = int(np.flatnonzero(np.isclose(px, fr.best_ask))[0])
    assert ka < kb and abs((ka + kb) / 2 - 10) <= 1
    assert t["bid_cum"][kb] == fr.bid_sz[0] and np.all(np.diff(t["bid_cum"][kb:]) >= 0)
    assert t["ask_cum"][ka] == fr.ask_sz[0] and np.all(np.diff(t["ask_cum"][:ka + 1]) <= 0)
    html_ = lad.widget.value
    assert "mbo-dom" in html_ and f"{fr.best_bid:,.2f}" in html_
    assert html_.count("<tr") == 22  # header + 21 rows


def test_ladder_crossed_clx5_is_not_blank(clx5):
    """CLX5 pre-open states are crossed: the ladder keeps both sides and marks the rows."""
    s = mbo_lab.open(clx5)
    fr = s.seek(time="2025-09-24 21:50")
    assert fr.crossed
    lad = Ladder(21, tick=session_tick(s))
    lad.update(fr)
    t = lad.table(fr)
    assert t["bid_sz"].sum() > 0 and t["ask_sz"].sum() > 0
    kb = int(np.flatnonzero(np.isclose(t["price"], fr.best_bid))[0])
    ka = int(np.flatnonzero(np.isclose(t["price"], fr.best_ask))[0])
    assert kb < ka  # bid above ask
    assert t["crossed"][kb:ka + 1].all() and t["crossed"].sum() == ka - kb + 1
    assert "CROSSED" in lad.widget.value and "class='x" in lad.widget.value
    assert np.allclose(np.diff(t["price"]), -0.01)


def test_ladder_locked_row_and_last_trade(session):
    lad = Ladder(11, tick=0.25)
    fr = frames(session, 1, step=200)[0]
    bid = fr.bid_px.copy()
    bid[0] = fr.best_ask
    locked = dataclasses.replace(fr, bid_px=bid, locked=True, crossed=False,
                                 trades=[(fr.ts_recv, fr.best_ask, 7, "B")])
    t = lad.table(locked)
    k = int(np.flatnonzero(np.isclose(t["price"], fr.best_ask))[0])
    assert t["locked"][k] and t["locked"].sum() == 1
    assert t["trade"][k] == 7 and t["trade_side"][k] == "B"
    lad.update(locked)
    assert "class='l" in lad.widget.value or "class='x l" in lad.widget.value


def test_ladder_uses_the_session_tick_on_a_tob_feed(session, records):
    """A top-of-book book (F_TOB) has one level per side: the rows use the session's tick
    (the same instrument's full-depth book agrees), never a gap between two prices."""
    from mbo_lab.io.records import F_TOB

    tob = [b for b in session.books
           if np.any(records["flags"][(records["instrument_id"] == b[0])
                                      & (records["publisher_id"] == b[1])] & F_TOB)]
    assert tob, "the synthetic stream has a top-of-book publisher"
    iid, pub = tob[0]
    full = next(b for b in session.books if b[0] == iid and b != tob[0])
    session.select(*full)
    want = session_tick(session)
    session.select(iid, pub)
    fr = session.step(50)
    tick = session_tick(session)
    assert tick == want
    lad = Ladder(21, tick=tick)
    t = lad.table(fr)
    np.testing.assert_allclose(np.diff(t["price"]), -tick)
    assert t["bid_sz"].sum() + t["ask_sz"].sum() > 0


def test_ladder_rows_follow_the_touch_only_near_the_edge(session):
    lad = Ladder(21, tick=0.25)
    fr = frames(session, 1, step=200)[0]
    rows = lad.table(fr)["price"].copy()
    small = dataclasses.replace(fr, bid_px=fr.bid_px + 0.25, ask_px=fr.ask_px + 0.25)
    np.testing.assert_allclose(lad.table(small)["price"], rows)
    big = dataclasses.replace(fr, bid_px=fr.bid_px + 30 * 0.25, ask_px=fr.ask_px + 30 * 0.25)
    moved = lad.table(big)["price"]
    assert moved[-1] > rows[0] and np.isclose(moved, big.best_ask).any()


def test_ladder_throttled_while_playing(session):
    clock = FakeClock()
    lad = Ladder(21, tick=0.25, max_hz=10.0, clock=clock)
    for fr in frames(session, 60, step=3, playing=True):
        clock.tick(1 / 60)
        lad.update(fr)
    assert lad.renders <= 1 * 10 + 1


# ---------------------------------------------------------------------- depth
def test_depth_cumulative_float64(session):
    dep = DepthChart(levels=10, tick=0.25)
    fr = frames(session, 1, step=300)[0]
    dep.update(fr)
    x, y = dep.lines.x, dep.lines.y
    assert x.shape == y.shape == (2, 10)
    assert x.dtype == np.float64 and y.dtype == np.float64
    nb = int(np.isfinite(fr.bid_px).sum())
    np.testing.assert_allclose(x[0, :nb], fr.bid_px[:nb])
    np.testing.assert_allclose(y[0, :nb], np.cumsum(fr.bid_sz[:nb]))
    assert np.all(np.diff(x[0]) <= 0) and np.all(np.diff(x[1]) >= 0)
    assert np.all(np.diff(y[1]) >= 0)
    x0 = dep.lines.x
    dep.update(frames(session, 1)[0])
    assert dep.lines.x is not x0
    assert dep.x_scale.min <= x.min() and dep.x_scale.max >= x.max()
    assert dep.y_scale.min == 0.0 and dep.y_scale.max >= y.max()
    # price ticks at multiples of the tick, integer size ticks, none repeated
    pt = dep.price_axis.tick_values
    np.testing.assert_allclose(pt / 0.25, np.round(pt / 0.25))
    assert dep.price_axis.tick_format == ",.2f"
    st = dep.size_axis.tick_values
    assert np.all(st == np.round(st)) and len(set(st)) == len(st)


def test_depth_empty_side(session):
    dep = DepthChart(levels=5)
    fr = frames(session, 1, step=100)[0]
    empty = dataclasses.replace(fr, bid_px=np.full_like(fr.bid_px, np.nan),
                                bid_sz=np.zeros_like(fr.bid_sz))
    dep.update(empty)
    assert np.all(dep.lines.y[0] == 0) and np.all(np.isfinite(dep.lines.x))


# ---------------------------------------------------------------------- price
def test_price_history_at_once_after_open_and_seek(session):
    """The window is filled from the kernel at once, lines and trades span the same
    window, the axes never show a 0..1 (or 0-60) default."""
    pc = PriceChart(session, points=200, span_ns=5 * 60 * 10**9, tick=0.25)
    session.seek(index=20_000)
    pc.update(session.frame())
    assert pc.history_loads == 1 and pc.bid_line.visible
    x = pc.bid_line.x
    assert x.dtype == np.float64 and len(x) >= 200
    assert x[-1] == pytest.approx(session.frame().ts_recv / 1e9)
    assert x[-1] - x[0] == pytest.approx(300.0, rel=1e-3) or x[0] == pytest.approx(
        int(session.data.records["ts_recv"][0]) / 1e9, abs=1.0)
    if pc.trades.visible:
        assert pc.trades.x.min() >= x[0] - 1e-6 and pc.trades.x.max() <= x[-1] + 1e-6
    assert pc.x_scale.min <= x[0] and pc.x_scale.max >= x[-1]
    lo, hi = np.nanmin(pc.bid_line.y), np.nanmax(pc.ask_line.y)
    assert pc.y_scale.min <= lo and pc.y_scale.max >= hi and pc.y_scale.min > 1.0
    # y ticks at the tick with its decimals; time labels for every tick value, unique
    yt = pc.price_axis.tick_values
    np.testing.assert_allclose(yt / 0.25, np.round(yt / 0.25))
    labels = pc.time_axis.tick_labels
    assert [js_key(v) for v in pc.time_axis.tick_values] == list(labels)
    assert len(set(labels.values())) == len(labels) >= 2
    # a seek back reloads the window ending at the new position
    session.seek(index=8_000)
    pc.update(session.frame())
    assert pc.history_loads == 2
    assert pc.bid_line.x[-1] == pytest.approx(session.frame().ts_recv / 1e9)


def test_price_appends_while_playing_and_keeps_trades_once(session):
    clock = FakeClock()
    pc = PriceChart(session, points=100, span_ns=60 * 10**9, clock=clock, max_hz=1000.0)
    pc.update(session.frame())
    n0 = pc.history_loads
    frs = frames(session, 40, step=5, playing=True)
    for fr in frs:
        clock.tick(0.05)
        pc.update(fr)
    assert pc.history_loads == n0  # contiguous frames: no reload
    assert pc.bid_line.x[-1] == pytest.approx(frs[-1].ts_recv / 1e9)
    assert pc.bid_line.y[-1] == frs[-1].best_bid
    seen = [tuple(r) for r in pc._tr]
    assert len(seen) == len(set(seen))  # no trade twice
    pc.update(frs[-1])
    assert len(pc._tr) == len(seen)
    assert len(pc.bid_line.x) <= 100 + 45


def test_price_time_zone_changes_labels_not_values(session):
    pc = PriceChart(session, tz="UTC")
    pc.update(session.frame())
    vals, labels = pc.time_axis.tick_values.copy(), dict(pc.time_axis.tick_labels)
    pc.set_time_zone("Asia/Tokyo")
    assert pc.time_axis.label == "time (Asia/Tokyo)"
    np.testing.assert_allclose(pc.time_axis.tick_values, vals)
    assert pc.time_axis.tick_labels != labels  # +9 h


def test_price_resets_on_book_change(session):
    pc = PriceChart(session)
    pc.update(session.frame())
    other = next(b for b in session.books if b != (session.instrument_id, session.publisher_id))
    session.select(*other)
    pc.update(session.frame())
    assert pc.history_loads == 2 and pc._key == other


# ---------------------------------------------------------------------- heatmap
def test_heatmap_grid_and_throttle(session):
    clock = FakeClock()
    hm = Heatmap(rows=60, cols=200, max_hz=5.0, clock=clock)
    frs = frames(session, 30, step=10, playing=True)
    hm.update(frs[0])
    assert hm.renders == 1
    c0 = hm.heat.color
    assert c0.shape == (60, 200) and c0.dtype == np.float64
    assert hm.heat.y.dtype == np.float64 and hm.heat.x.dtype == np.float64
    for fr in frs[1:10]:  # within 0.2 s: held back
        clock.tick(0.01)
        hm.update(fr)
    assert hm.renders == 1 and hm.heat.color is c0
    clock.tick(0.2)
    hm.update(frs[10])
    assert hm.renders == 2 and hm.heat.color is not c0
    # the newest column holds the book: bids > 0, asks < 0 at their rows
    fr = frs[10]
    col = hm.heat.color[:, -1]
    y = hm.heat.y
    for px, sign in ((fr.best_bid, 1), (fr.best_ask, -1)):
        k = np.flatnonzero(np.isclose(y, px))
        assert len(k) == 1 and np.sign(col[k[0]]) == sign
    # a paused frame is drawn at once; a held-back one by flush()
    hm.update(dataclasses.replace(frs[11], playing=False))
    assert hm.renders == 3
    hm.update(frs[12])
    assert hm.renders == 3
    hm.flush()
    assert hm.renders == 4
    # at most max_hz renders per second over a long run
    r0 = hm.renders
    for fr in frames(session, 100, step=2, playing=True):
        clock.tick(1 / 30)
        hm.update(fr)
    assert hm.renders - r0 <= math.ceil(100 / 30 * 5) + 1


def test_heatmap_window_is_fixed(session):
    hm = Heatmap(rows=40, cols=50, max_hz=1000.0)
    for fr in frames(session, 120, step=3):
        hm.update(fr)
    assert hm.heat.color.shape == (40, 50) and hm.n == 50
    assert np.all(np.diff(hm.times) > 0)


# ---------------------------------------------------------------------- controls
class RecordingSession:
    """Stands in for a Session: records the calls the controls make."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.playing = False
        self.record_index = 0
        self.clock = type("C", (), {"speed": 1.0})()

    def __len__(self):
        return 1000

    def __getattr__(self, name):
        if name in ("play", "pause", "step", "back", "to_start", "to_end", "seek",
                    "set_speed"):
            return lambda *a, **k: self.calls.append((name, a, k))
        raise AttributeError(name)


def test_controls_call_the_session():
    s = RecordingSession()
    c = Controls(s)
    c.step_button.click()
    c.back_button.click()
    c.start_button.click()
    c.end_button.click()
    c.step_size.value = 5
    c.step_button.click()
    c.play_button.value = True
    c.play_button.value = False
    c.speed.value = 100.0
    c.speed.value = SPEED_MAX
    c.slider.value = 123
    assert [x[0] for x in s.calls] == ["step", "back", "to_start", "to_end", "step", "play",
                                       "pause", "set_speed", "set_speed", "seek"]
    assert s.calls[4][1] == (5,)
    assert s.calls[7][1] == (100.0,) and s.calls[8][1] == (SPEED_MAX,)
    assert s.calls[9][2] == {"index": 123}
    assert c.slider.continuous_update is False
    assert [label for label, _ in SPEEDS][0] == "0.1x" and SPEEDS[-1] == ("max", SPEED_MAX)


def test_controls_update_does_not_call_back(session):
    c = Controls(session)
    calls = []
    session.seek = lambda **k: calls.append(k)  # would be called by a slider change
    fr = frames(session, 1, step=100)[0]
    fr = dataclasses.replace(fr, playing=True, speed=50.0)
    c.update(fr)
    assert calls == []
    assert c.slider.value == fr.record_index
    assert c.play_button.value is True and c.play_button.description == "Pause"
    assert c.speed.value == 50.0


def test_controls_drive_a_real_session(session):
    c = Controls(session)
    c.step_button.click()
    p1 = session.position
    c.step_size.value = 10
    c.step_button.click()
    assert session.position > p1
    c.back_button.click()
    assert session.position == p1 or session.position < p1 + 10
    c.end_button.click()
    assert session.position == len(session)
    c.start_button.click()
    assert session.record_index <= session.seek(0).record_index + 1
    c.slider.value = 20_000  # seek
    assert abs(session.record_index - 20_000) < 100 and session.record_index <= 20_000
    c.speed.value = 10.0
    assert session.clock.speed == 10.0


def test_controls_errors_go_to_on_error(session):
    errors = []
    c = Controls(session, on_error=errors.append)
    c.slider.max = len(session) + 10
    c.slider.value = len(session) + 5  # outside the data
    assert len(errors) == 1 and isinstance(errors[0], mbo_lab.MboLabError)


# ---------------------------------------------------------------------- inspector, stats
def test_inspector_shows_the_books_record_or_labels_another(session):
    ins = Inspector()
    fr = frames(session, 1, step=30)[0]
    mine = dict(fr.record, instrument_id=fr.instrument_id, publisher_id=fr.publisher_id)
    other = dict(fr.record, instrument_id=fr.instrument_id + 1)
    # without frame.book_record: the current record, labelled when it is another book's
    if hasattr(fr, "book_record"):
        fr = dataclasses.replace(fr, book_record=None)
    ins.update(dataclasses.replace(fr, record=mine))
    v = ins.widget.value
    assert "Last record of this book" in v and str(mine["order_id"]) in v and "Effect" in v
    ins.update(dataclasses.replace(fr, record=other))
    v = ins.widget.value
    assert "another book" in v and f"{fr.instrument_id + 1}@" in v
    # with frame.book_record (contract B) the book's own record is shown
    fr2 = dataclasses.replace(fr, record=other)
    fr2.book_record = dict(mine, order_id=424242)
    ins.update(fr2)
    assert "Last record of this book" in ins.widget.value and "424242" in ins.widget.value


def test_inspector_uses_the_sessions_book_record(session):
    fr = session.frame()
    if getattr(fr, "book_record", None) is None:
        pytest.skip("Frame.book_record (contract B) is not there yet")
    ins = Inspector()
    ins.update(fr)
    r = fr.book_record
    assert (r["instrument_id"], r["publisher_id"]) == (fr.instrument_id, fr.publisher_id)
    assert "Last record of this book" in ins.widget.value
    assert str(r["order_id"]) in ins.widget.value


def test_inspector_throttled_while_playing(session):
    clock = FakeClock()
    ins = Inspector(max_hz=10.0, clock=clock)
    frs = frames(session, 5, step=10, playing=True)
    ins.update(frs[0])
    v0 = ins.widget.value
    clock.tick(0.01)
    ins.update(frs[1])
    assert ins.widget.value == v0
    clock.tick(0.2)
    ins.update(frs[2])
    assert ins.widget.value != v0


def test_stats_counts_levels_crossed_flag_and_paused_fps(session):
    clock = FakeClock()
    st = StatsPanel(session, clock=clock)
    fr = frames(session, 1, step=300)[0]
    st.update(fr)
    v = st.widget.value
    stats = session.stats()
    assert f"{len(session):,}" in v and f"{fr.position:,}" in v
    assert f"{stats['bid_levels']:,} / {stats['ask_levels']:,}" in v
    assert f"{fr.live_orders:,}" in v and "CROSSED" not in v
    assert "unknown cxl / mod" in v and "paused" in v and "fps" not in v
    st.update(crossed_frame(fr))
    assert "CROSSED" in st.widget.value
    vals = st.values(dataclasses.replace(fr, counters={**fr.counters, "unknown_cancel": 7}))
    assert vals["unknown_cancel"] == 7
    for f in frames(session, 10, step=3, playing=True):
        clock.tick(1 / 30)
        st.update(f)
    assert "fps" in st.widget.value and st.fps == pytest.approx(30.0, rel=0.05)
    st.update(dataclasses.replace(fr, playing=False))
    assert "paused" in st.widget.value and "fps" not in st.widget.value  # not stale


def test_stats_time_zone(session):
    st = StatsPanel(session, tz="Asia/Tokyo")
    fr = session.frame()
    st.update(fr)
    import pandas as pd

    want = pd.Timestamp(fr.ts_recv, tz="UTC").tz_convert("Asia/Tokyo").strftime("%H:%M:%S")
    assert "time (Asia/Tokyo)" in st.widget.value and want in st.widget.value


# ---------------------------------------------------------------------- dashboard
def make_dash(session, **kw):
    kw.setdefault("liquidity_map", False)
    return Dashboard(session, **kw)


def test_dashboard_one_callback_per_frame(session, monkeypatch):
    n_subs = len(session.clock.subscribers)
    dash = make_dash(session)
    assert len(session.clock.subscribers) == n_subs + 1
    counts: dict[str, int] = {}

    def counting(part):
        orig, name = part.update, type(part).__name__

        def update(frame):
            counts[name] = counts.get(name, 0) + 1
            orig(frame)

        return update

    for part in dash.parts:
        monkeypatch.setattr(part, "update", counting(part))
    session.step(5)  # publishes one frame
    assert counts == {type(p).__name__: 1 for p in dash.parts}
    assert dash.errors == []
    dash.close()
    assert len(session.clock.subscribers) == n_subs
    session.step(5)
    assert counts == {type(p).__name__: 1 for p in dash.parts}


def test_dashboard_rerun_replaces_the_old_one(session):
    """A re-run cell makes a new dashboard: the old one is unsubscribed and closed."""
    from mbo_lab.viz.dashboard import live_dashboard

    n_subs = len(session.clock.subscribers)
    d1 = make_dash(session)
    d2 = make_dash(session)
    d3 = session.dashboard(liquidity_map=False)
    assert d1.closed and d2.closed and not d3.closed
    assert d1.comm is None and d2.ladder.widget.comm is None
    assert len(session.clock.subscribers) == n_subs + 1
    assert live_dashboard(session) is d3
    d3.close()
    assert live_dashboard(session) is None and len(session.clock.subscribers) == n_subs


def test_dashboard_renders_at_most_fps_while_playing(session):
    clock = FakeClock()
    playing = frames(session, 60, step=3, playing=True)
    dash = make_dash(session, clock=clock)
    assert dash.max_fps <= 30
    r0 = dash.frames_rendered
    for fr in playing:
        clock.tick(0.01)  # frames 100 times a second
        dash._on_frame(fr)
    rendered = dash.frames_rendered - r0
    assert rendered <= 60 * 0.01 * dash.max_fps / 0.9 + 1
    assert dash.frames_dropped >= 60 - rendered
    r1 = dash.frames_rendered
    dash._on_frame(dataclasses.replace(session.frame(), playing=False))
    assert dash.frames_rendered == r1 + 1
    dash.close()


def test_dashboard_traffic_is_bounded(session, monkeypatch):
    """30 frames/s of playback for 4 s of wall time: <= 100 widget messages/s and
    <= 300 kB/s of state (JSON text + binary buffers) sent to the browser."""
    import json

    from ipywidgets import Widget

    clock = FakeClock()
    seconds = 4.0
    playing = frames(session, int(30 * seconds), step=7, playing=True)
    dash = make_dash(session, clock=clock)
    sent = {"n": 0, "bytes": 0}

    def count(self, msg, buffers=None):
        sent["n"] += 1
        sent["bytes"] += len(json.dumps(msg, default=str)) + sum(
            memoryview(b).nbytes for b in (buffers or []))

    monkeypatch.setattr(Widget, "_send", count)
    for fr in playing:
        clock.tick(1 / 30)
        dash._on_frame(fr)
    assert dash.frames_rendered >= 30 * seconds * 0.9
    rate, bps = sent["n"] / seconds, sent["bytes"] / seconds
    assert rate <= 100, f"{rate:.0f} messages/s"
    assert bps <= 300_000, f"{bps / 1e3:.0f} kB/s"
    dash.close()


def test_dashboard_book_selector(session):
    dash = make_dash(session)
    sel = dash.book_selector
    assert sel is not None
    assert [v for _, v in sel.options] == session.books
    assert sel.value == (session.instrument_id, session.publisher_id)
    other = next(b for b in session.books if b != sel.value)
    sel.value = other
    assert (session.instrument_id, session.publisher_id) == other
    fr = session.frame()
    assert (fr.instrument_id, fr.publisher_id) == other
    # the time panels show the new book's history at once
    assert dash.price._key == other and len(dash.price.bid_line.x) >= 2
    assert dash.errors == []
    session.select(*session.books[0])
    assert sel.value == session.books[0]
    dash.close()


def test_dashboard_single_book_has_no_selector():
    recs = mbo_lab.synth_records(5_000, seed=1)
    one = recs[(recs["instrument_id"] == 1001) & (recs["publisher_id"] == 1)]
    s = mbo_lab.open(one)
    dash = make_dash(s)
    assert dash.book_selector is None
    dash.close()


def test_dashboard_shows_errors_and_keeps_going(session, monkeypatch):
    dash = make_dash(session)

    def boom(frame):
        raise ValueError("ladder exploded")

    monkeypatch.setattr(dash.ladder, "update", boom)
    before = dash.stats.updates
    session.step(3)
    assert "ladder exploded" in dash.error_area.value
    assert "Ladder" in dash.errors[-1]
    assert dash.stats.updates == before + 1
    dash.clear_errors()
    assert dash.error_area.value == ""
    # a package error shows its message alone (no type name, no traceback)
    dash.controls.slider.max = len(session) + 10
    dash.controls.slider.value = len(session) + 5
    assert dash.errors[-1].startswith("record index") and "Traceback" not in dash.errors[-1]
    assert "MboLabError" not in dash.error_area.value
    dash.close()


def test_dashboard_crossed_flag_shown(session):
    dash = make_dash(session)
    fr = frames(session, 1, step=200)[0]
    dash._on_frame(crossed_frame(fr))
    assert "CROSSED" in dash.stats.widget.value and "CROSSED" in dash.ladder.widget.value
    assert dash.errors == []
    dash.close()


def test_dashboard_sends_float64_only_and_no_empty_marks(session):
    dash = make_dash(session)
    for fr in frames(session, 20, step=25):
        dash._on_frame(fr)
    arrays = bqplot_arrays(dash)
    assert arrays
    bad = [(name, a.dtype) for name, a in arrays if a.dtype != np.float64]
    assert bad == []
    # every visible mark has finite data (empty/NaN-only data made bqplot log d3 errors)
    import bqplot as bq

    for fig in (dash.price.widget, dash.depth.widget):
        for m in fig.marks:
            if m.visible:
                assert len(m.x) >= 1 and np.isfinite(np.asarray(m.x, float)).any()
                assert np.isfinite(np.asarray(m.y, float)).any()
        for ax in fig.axes:
            assert ax.tick_values is not None and len(ax.tick_values) >= 1
        for sc in (m.scales["x"] for m in fig.marks):
            assert isinstance(sc, bq.LinearScale) and sc.min < sc.max
    dash.close()


def test_dashboard_time_zone_choice(clx5):
    s = mbo_lab.open(clx5)
    dash = make_dash(s)
    assert [v for _, v in dash.tz_choice.options] == ["UTC", "America/Chicago"]
    assert [k for k, _ in dash.tz_choice.options][1] == "time: exchange (America/Chicago)"
    assert dash.price.time_axis.label == "time (UTC)"
    utc = dict(dash.price.time_axis.tick_labels)
    dash.tz_choice.value = "America/Chicago"
    assert dash.price.time_axis.label == "time (America/Chicago)"
    assert "America/Chicago" in dash.stats.widget.value
    chi = dash.price.time_axis.tick_labels
    assert list(chi) == list(utc)  # same tick values
    for k in utc:  # CDT = UTC - 5 h in September
        h_utc, h_chi = int(utc[k][:2]), int(chi[k][:2])
        assert (h_utc - h_chi) % 24 == 5
    dash.close()


def test_dashboard_static_view(clx5):
    s = mbo_lab.open(clx5)
    s.seek(time="2025-09-24 21:50")
    dash = make_dash(s)
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    h = bundle["text/html"]
    assert "<svg" in h and "<polyline" in h and "CLX5" in h and "CROSSED" in h
    fr = s.frame()
    assert f"{fr.best_bid:.2f}" in h and f"{fr.best_ask:.2f}" in h
    dash.close()


def test_dashboard_flags_a_truncated_source(session, monkeypatch):
    monkeypatch.setattr(session.data, "truncated", True, raising=False)  # MboData.truncated
    dash = make_dash(session)
    assert "TRUNCATED" in dash.title.value and "mbo-truncated" in dash.stats.widget.value
    assert "TRUNCATED" in dash.static_html()
    dash.close()


def test_session_dashboard_method(session):
    dash = session.dashboard(levels=5, liquidity_map=False)
    assert isinstance(dash, Dashboard) and dash.levels == 5
    assert dash.ladder.widget.value.count("<tr") == dash.ladder.n_rows + 1
    dash.close()


def test_dashboard_embeds_the_liquidity_map(session):
    from mbo_lab.viz.dashboard import _liquidity_map_class

    cls = _liquidity_map_class()
    if cls is None:
        pytest.skip("mbo_lab/viz/liquidity_map.py is not there yet (contract E)")
    dash = Dashboard(session)
    assert dash.map is not None and isinstance(dash.map, cls)
    assert dash.main_row.children[0].children[0] is dash.map  # the first, largest panel
    dash.close()


def test_dashboard_has_one_time_zone_control_that_drives_the_map(session):
    """With the liquidity map embedded, the header's zone choice is the only zone control
    in the widget tree and it relabels the map (axis, ticks, status) without a query."""
    from mbo_lab.viz.dashboard import _liquidity_map_class
    from mbo_lab.viz.liquidity_map import LiquidityMap

    assert _liquidity_map_class() is LiquidityMap  # a broken map import fails here
    session.time_zone = "America/Chicago"
    dash = Dashboard(session)
    m = dash.map
    try:
        assert m is not None
        assert zone_controls(dash) == [dash.tz_choice]
        assert [v for _, v in dash.tz_choice.options] == ["UTC", "America/Chicago"]
        assert dash.tz_choice.value == "UTC"  # the default stays UTC

        def check(zone: str) -> None:
            assert m.time_zone == zone
            assert m.time_axis.label == f"time ({zone})"
            vals = m.time_axis.tick_values
            assert len(vals) >= 2
            for v in vals:
                ns = m.origin_ns + round(float(v) * 1e9)
                lab = m.time_axis.tick_labels[js_key(v)]
                want = pd.Timestamp(ns, tz="UTC").tz_convert(zone)
                assert want.strftime("%H:%M:%S.%f").startswith(lab) \
                    or want.strftime("%m-%d %H:%M") == lab, (v, lab, want)
            s = m.window[0]
            start = pd.Timestamp(s, tz="UTC").tz_convert(zone).strftime("%Y-%m-%d %H:%M")
            assert start in m.status.value and zone in m.status.value
            cur = pd.Timestamp(session.frame().ts_recv, tz="UTC").tz_convert(zone)
            assert cur.strftime("%Y-%m-%d %H:%M:%S") in m.status.value

        check("UTC")
        queries, updates = m.queries, m.updates
        dash.tz_choice.value = "America/Chicago"
        check("America/Chicago")
        assert dash.price.time_axis.label == "time (America/Chicago)"
        dash.set_time_zone("UTC")  # from code: the header control follows
        assert dash.tz_choice.value == "UTC"
        check("UTC")
        assert (m.queries, m.updates) == (queries, updates)  # labels only, no new grid
        assert dash.errors == []
    finally:
        dash.close()


def test_dashboard_zone_argument_is_shown_by_its_control(session):
    """A zone given to the dashboard is the header control's value (not "UTC" while the
    parts show another zone)."""
    session.time_zone = "America/Chicago"
    dash = make_dash(session, tz="Asia/Tokyo")
    try:
        assert dash.tz_choice.value == "Asia/Tokyo" == dash.tz
        assert [v for _, v in dash.tz_choice.options] == ["UTC", "America/Chicago",
                                                          "Asia/Tokyo"]
        assert dash.price.time_axis.label == "time (Asia/Tokyo)"
    finally:
        dash.close()


def test_dashboard_unknown_time_zone_is_a_config_error(session):
    """A bad zone fails at once with the package's error, not as a missing map and raw
    ZoneInfoNotFoundError texts in the error area."""
    with pytest.raises(mbo_lab.ConfigError, match="unknown time zone"):
        make_dash(session, tz="Bad/Zone")


def test_dashboard_follows_the_session_clock(session):
    """advance() drives the dashboard like the play task does (no event loop)."""
    dash = make_dash(session)
    session.set_speed(100)
    r0 = dash.frames_rendered
    for _ in range(10):
        session.clock.last_publish = 0.0  # let every tick publish
        session.advance(0.05)
    assert dash.frames_rendered > r0
    dash.close()


def test_dashboard_takes_each_books_tick(session, monkeypatch):
    """A book selected from code (not the dropdown) gets its own price increment."""
    import mbo_lab.viz.dashboard as D

    ticks = {b: 0.25 * (k + 1) for k, b in enumerate(session.books)}
    monkeypatch.setattr(D, "session_tick",
                        lambda s: ticks[(s.instrument_id, s.publisher_id)])
    dash = make_dash(session)
    other = next(b for b in session.books if b != (session.instrument_id, session.publisher_id))
    session.select(*other)
    assert dash.ladder.tick == ticks[other] == dash.price.tick == dash.depth.tick
    t = dash.ladder.table(session.frame())
    np.testing.assert_allclose(np.diff(t["price"]), -ticks[other])
    assert dash.errors == []
    dash.close()
