"""Unit tests of the notebook dashboard (mbo_lab.viz), without a browser.

Each part's ``update(frame)`` is checked on widget state: float64 prices to bqplot, new
array objects at every update, throttling with a fake clock, controls driving a session,
the book selector, one subscriber callback per frame and the crossed flag.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

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
from mbo_lab.viz._common import StickyRange, nice_ticks, price_decimals


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


# ---------------------------------------------------------------------- ladder
def test_ladder_arrays_are_float64_prices_and_sizes(session):
    lad = Ladder(levels=10)
    fr = frames(session, 1, step=200)[0]
    lad.update(fr)
    x, y = lad.bars.x, lad.bars.y
    assert x.dtype == np.float64 and y.dtype == np.float64
    assert y.shape == (2, len(x)) == (2, 21)
    assert np.all(np.diff(x) > 0)
    # Each level of the frame that falls on the rows shows its size on its side.
    for px, sz, row in ((fr.bid_px, fr.bid_sz, 0), (fr.ask_px, fr.ask_sz, 1)):
        shown = 0
        for p, s in zip(px, sz):
            if not np.isfinite(p):
                continue
            k = np.flatnonzero(np.isclose(x, p))
            if len(k):
                assert y[row, k[0]] == s
                shown += 1
        assert shown >= 1
    assert np.isclose(x, fr.best_bid).any() and np.isclose(x, fr.best_ask).any()
    # Labels: "size (orders)" on rows with size, empty elsewhere.
    k = int(np.flatnonzero(np.isclose(x, fr.best_bid))[0])
    assert lad.labels.text[k] == f"{int(fr.bid_sz[0]):,} ({int(fr.bid_ct[0])})"
    assert lad.labels.x.dtype == np.float64 and lad.labels.y.dtype == np.float64
    assert all(t == "" for t, s in zip(lad.labels.text, y.sum(axis=0)) if s == 0)


def test_ladder_assigns_new_arrays_each_update(session):
    lad = Ladder()
    f1, f2 = frames(session, 2, step=50)
    lad.update(f1)
    x1, y1, t1 = lad.bars.x, lad.bars.y, lad.labels.text
    lad.update(f2)
    assert lad.bars.x is not x1 and lad.bars.y is not y1 and lad.labels.text is not t1


def test_ladder_rows_follow_the_touch_only_near_the_edge(session):
    lad = Ladder(levels=10)
    fr = frames(session, 1, step=200)[0]
    lad.update(fr)
    rows = lad.bars.x.copy()
    tick = lad.tick
    # A small move of the touch keeps the rows.
    small = dataclasses.replace(fr, bid_px=fr.bid_px + tick, ask_px=fr.ask_px + tick)
    lad.update(small)
    np.testing.assert_allclose(lad.bars.x, rows)
    # A large move re-centres them.
    big = dataclasses.replace(fr, bid_px=fr.bid_px + 30 * tick, ask_px=fr.ask_px + 30 * tick)
    lad.update(big)
    assert lad.bars.x[0] > rows[-1]
    assert np.isclose(lad.bars.x, big.best_ask).any()


def test_ladder_tick_guess_is_replaced(session):
    """One level gives no tick: the ladder guesses from the decimals, then learns it."""
    assert session.instrument_id == 1002  # the synthetic ES book: tick 0.25
    fr = frames(session, 1, step=100)[0]
    nan = np.full_like(fr.bid_px, np.nan)
    one = dataclasses.replace(fr, bid_px=nan, bid_sz=np.zeros_like(fr.bid_sz),
                              ask_px=np.concatenate([fr.ask_px[:1], nan[1:]]))
    lad = Ladder()
    lad.update(one)
    assert np.isclose(lad.bars.x, fr.best_ask).any()
    lad.update(fr)
    assert lad.tick == 0.25
    np.testing.assert_allclose(np.diff(lad.bars.x), 0.25)


# ---------------------------------------------------------------------- depth
def test_depth_cumulative_float64(session):
    dep = DepthChart(levels=10)
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
    # the axis range is explicit and holds the data
    assert dep.x_scale.min <= x.min() and dep.x_scale.max >= x.max()
    assert dep.y_scale.min == 0.0 and dep.y_scale.max >= y.max()


def test_depth_empty_side(session):
    dep = DepthChart(levels=5)
    fr = frames(session, 1, step=100)[0]
    empty = dataclasses.replace(fr, bid_px=np.full_like(fr.bid_px, np.nan),
                                bid_sz=np.zeros_like(fr.bid_sz))
    dep.update(empty)
    assert np.all(dep.lines.y[0] == 0) and np.all(np.isfinite(dep.lines.x))


# ---------------------------------------------------------------------- price
def test_price_lines_and_trades(session):
    pc = PriceChart(window=50)
    frs = frames(session, 80, step=5)
    for fr in frs:
        pc.update(fr)
    x, y = pc.lines.x, pc.lines.y
    assert len(x) == 50 and y.shape == (4, 50) and y.dtype == np.float64
    assert x.dtype.kind == "M"
    last = frs[-1]
    assert x[-1] == np.datetime64(last.ts_recv, "ns")
    bbo = last.bbo
    np.testing.assert_allclose(y[:, -1], [bbo["bid_px"], bbo["ask_px"], bbo["mid"],
                                          bbo["weighted_mid"]], equal_nan=True)
    # trades: float64 prices/sizes, colours +1 buyer / -1 seller, all inside the window
    tr = pc.trades
    assert len(tr.y) > 0
    assert tr.y.dtype == np.float64 and tr.size.dtype == np.float64
    assert set(np.unique(tr.color)) <= {-1.0, 0.0, 1.0}
    assert tr.x.min() >= x[0]
    want = {(np.datetime64(t, "ns"), p, float(q)) for t, p, q, _ in last.trades
            if np.datetime64(t, "ns") >= x[0]}
    got = set(zip(tr.x, tr.y, tr.size))
    assert want <= got
    # the same frame again adds no trade twice
    n = len(tr.y)
    pc.update(last)
    assert len(pc.trades.y) == n


def test_price_resets_on_seek_back_and_book_change(session):
    pc = PriceChart()
    for fr in frames(session, 20, step=20):
        pc.update(fr)
    assert len(pc.lines.x) == 20
    session.to_start()
    pc.update(session.frame())
    assert len(pc.lines.x) == 1
    other = next(b for b in session.books if b != (session.instrument_id, session.publisher_id))
    session.select(*other)
    session.step(50)
    pc.update(session.frame())
    assert len(pc.lines.x) == 1


def test_price_trades_throttled_while_playing(session):
    clock = FakeClock()
    pc = PriceChart(trades_hz=5.0, clock=clock)
    frs = frames(session, 40, step=10, playing=True)
    sent = 0
    last = None
    for fr in frs:
        pc.update(fr)
        if pc.trades.y is not last:
            sent += 1
            last = pc.trades.y
        clock.tick(0.01)  # 100 frames/s of wall time
    assert sent <= 3  # 0.4 s at 5 Hz (+ the first)


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
    assert session.record_index <= 1 + int(session._flags_last[0])
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
def test_inspector_shows_record_and_effect(session):
    ins = Inspector()
    fr = frames(session, 1, step=30)[0]
    ins.update(fr)
    v = ins.widget.value
    assert str(fr.record["order_id"]) in v and "Effect" in v
    assert fr.effect.split(":")[0] in v


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


def test_stats_counts_levels_and_crossed_flag(session):
    st = StatsPanel(session)
    fr = frames(session, 1, step=300)[0]
    st.update(fr)
    v = st.widget.value
    stats = session.stats()
    assert f"{len(session):,}" in v and f"{fr.position:,}" in v
    assert f"{stats['bid_levels']:,} / {stats['ask_levels']:,}" in v
    assert f"{fr.live_orders:,}" in v and "CROSSED" not in v
    assert "unknown cxl / mod" in v
    st.update(crossed_frame(fr))
    assert "CROSSED" in st.widget.value
    vals = st.values(dataclasses.replace(fr, counters={**fr.counters, "unknown_cancel": 7}))
    assert vals["unknown_cancel"] == 7


# ---------------------------------------------------------------------- dashboard
def test_dashboard_one_callback_per_frame(session, monkeypatch):
    n_subs = len(session.clock.subscribers)
    dash = Dashboard(session)
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


def test_dashboard_renders_at_most_fps_while_playing(session):
    clock = FakeClock()
    playing = frames(session, 60, step=3, playing=True)
    dash = Dashboard(session, clock=clock)
    assert dash.max_fps <= 30
    r0 = dash.frames_rendered
    for fr in playing:
        clock.tick(0.01)  # frames 100 times a second
        dash._on_frame(fr)
    rendered = dash.frames_rendered - r0
    assert rendered <= 60 * 0.01 * dash.max_fps / 0.9 + 1
    assert dash.frames_dropped >= 60 - rendered
    # paused frames are always drawn
    r1 = dash.frames_rendered
    dash._on_frame(dataclasses.replace(session.frame(), playing=False))
    assert dash.frames_rendered == r1 + 1
    dash.close()


def test_dashboard_book_selector(session):
    dash = Dashboard(session)
    sel = dash.book_selector
    assert sel is not None
    assert [v for _, v in sel.options] == session.books
    assert sel.value == (session.instrument_id, session.publisher_id)
    other = next(b for b in session.books if b != sel.value)
    sel.value = other
    assert (session.instrument_id, session.publisher_id) == other
    fr = session.frame()
    assert (fr.instrument_id, fr.publisher_id) == other
    # the parts show the new book
    assert len(dash.price.lines.x) == 1
    assert dash.errors == []
    # a selection made on the session moves the dropdown
    session.select(*session.books[0])
    assert sel.value == session.books[0]
    dash.close()


def test_dashboard_single_book_has_no_selector():
    recs = mbo_lab.synth_records(5_000, seed=1)
    one = recs[(recs["instrument_id"] == 1001) & (recs["publisher_id"] == 1)]
    s = mbo_lab.open(one)
    dash = Dashboard(s)
    assert dash.book_selector is None
    dash.close()


def test_dashboard_shows_errors_and_keeps_going(session, monkeypatch):
    dash = Dashboard(session)

    def boom(frame):
        raise ValueError("ladder exploded")

    monkeypatch.setattr(dash.ladder, "update", boom)
    before = dash.stats.updates
    session.step(3)
    assert "ladder exploded" in dash.error_area.value
    assert "Ladder" in dash.errors[-1]
    assert dash.stats.updates == before + 1  # the other parts still updated
    dash.clear_errors()
    assert dash.error_area.value == ""
    dash.close()


def test_dashboard_crossed_flag_shown(session):
    dash = Dashboard(session)
    fr = frames(session, 1, step=200)[0]
    dash._on_frame(crossed_frame(fr))
    assert "CROSSED" in dash.stats.widget.value
    assert dash.errors == []
    dash.close()


def test_dashboard_sends_float64_prices_only(session):
    dash = Dashboard(session)
    for fr in frames(session, 20, step=25):
        dash._on_frame(fr)
    arrays = bqplot_arrays(dash)
    assert arrays
    bad = [(name, a.dtype) for name, a in arrays if a.dtype != np.float64]
    assert bad == []
    dash.close()


def test_session_dashboard_method(session):
    dash = session.dashboard(levels=5)
    assert isinstance(dash, Dashboard) and dash.levels == 5
    assert len(dash.ladder.bars.x) == 11
    dash.close()


def test_dashboard_follows_the_session_clock(session):
    """advance() drives the dashboard like the play task does (no event loop)."""
    dash = Dashboard(session)
    session.set_speed(100)
    r0 = dash.frames_rendered
    for _ in range(10):
        session.clock.last_publish = 0.0  # let every tick publish
        session.advance(0.05)
    assert dash.frames_rendered > r0
    assert dash.controls.slider.value == session.record_index
    dash.close()
