"""The liquidity map widget (``mbo_lab.viz.liquidity_map``): state after construction,
zoom re-queries the visible window with bounded payloads, a click seeks the session,
colour controls, time labels in any zone, close() unsubscribes.

The map reads only the session APIs of contract B (``liquidity``, ``trades_between``,
``seek``, ``subscribe``, ``frame``, ``tick``, ``time_zone``); the tests use a real
Session on synthetic data that records the ``liquidity`` calls.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from conftest import zone_controls

import mbo_lab
from mbo_lab.replay.session import Session
from mbo_lab.viz.liquidity_map import (
    LiquidityMap,
    color_cells,
    js_number_key,
    time_ticks,
)

pytest.importorskip("bqplot")

class _Recording(Session):
    """The real Session, recording the ``liquidity`` calls the map makes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[dict] = []

    def liquidity(self, start=None, end=None, **kw):
        self.calls.append(dict(start=start, end=end, **kw))
        return super().liquidity(start, end, **kw)


@pytest.fixture(scope="module")
def session():
    recs = mbo_lab.synth_records(30_000, seed=11)
    return _Recording(recs, fps=240)


@pytest.fixture
def lmap(session):
    session.calls.clear()
    m = LiquidityMap(session, width_px=300, height_px=200, debounce=0)
    yield m
    m.close()


# ------------------------------------------------------------------------ pure helpers
def test_js_number_key_matches_javascript_string():
    assert js_number_key(3600.0) == "3600"
    assert js_number_key(-0.0) == "0"
    assert js_number_key(3600.125) == "3600.125"
    assert js_number_key(0.5) == "0.5"


@pytest.mark.parametrize("tz", ["UTC", "America/Chicago", "Asia/Tokyo", "Asia/Kolkata"])
def test_time_ticks_label_the_instant_in_the_zone(tz):
    origin = pd.Timestamp("2025-09-24", tz="UTC").value
    s = pd.Timestamp("2025-09-24 19:31:07", tz="UTC").value
    e = s + 47 * 60 * 10**9
    values, labels = time_ticks(s, e, origin, tz)
    assert 3 <= len(values) <= 12
    assert values.dtype == np.float64
    for v in values:
        ns = origin + round(v * 1e9)
        assert s <= ns <= e
        want = pd.Timestamp(ns, tz="UTC").tz_convert(tz).strftime("%H:%M")
        assert labels[js_number_key(v)] == want
    # round local minutes (multiples of the step in that zone)
    mins = [int(lab[-2:]) for lab in labels.values()]
    assert all(m % 5 == 0 for m in mins), labels


def test_time_ticks_sub_second_windows_show_milliseconds():
    origin = pd.Timestamp("2025-09-24", tz="UTC").value
    s = pd.Timestamp("2025-09-24 19:31:07.1234", tz="UTC").value
    values, labels = time_ticks(s, s + 40_000_000, origin, "UTC")  # 40 ms
    assert len(values) >= 3
    assert len(set(labels.values())) == len(values)  # never repeated
    assert all(lab.startswith("19:31:07.") for lab in labels.values())


def test_time_ticks_sub_millisecond_window_has_one_tick():
    origin = pd.Timestamp("2025-09-24", tz="UTC").value
    s = pd.Timestamp("2025-09-24 19:31:07.123456789", tz="UTC").value
    values, labels = time_ticks(s, s + 500, origin, "UTC")
    assert len(values) == 1
    assert labels[js_number_key(values[0])] == "19:31:07.123456"


def test_color_cells_sides_cutoffs_and_scale():
    bid = np.array([[0.0, 1.0, 10.0, 100.0, np.nan]])
    ask = np.array([[5.0, 0.0, 20.0, 0.0, np.nan]])
    c, lo, hi = color_cells(bid, ask, log_scale=False, lower_pct=0, upper_pct=100)
    assert not np.isnan(c).any()
    # the larger side wins: ask 5 at col 0, bid 1, ask 20, bid 100, nothing
    assert c[0, 0] < 0 and c[0, 1] > 0 and c[0, 2] < 0 and c[0, 3] > 0 and c[0, 4] == 0
    assert (lo, hi) == (1.0, 100.0)
    assert c[0, 3] == 1.0 and abs(c[0, 1]) == pytest.approx(0.18)
    # a higher lower cut-off hides the small cells; log spreads small sizes apart
    c2, lo2, _ = color_cells(bid, ask, log_scale=False, lower_pct=50, upper_pct=100)
    assert lo2 > 1.0 and c2[0, 1] == 0.0 and c2[0, 3] == 1.0
    lin, _, _ = color_cells(bid, ask, log_scale=False, lower_pct=0, upper_pct=100)
    lg, _, _ = color_cells(bid, ask, log_scale=True, lower_pct=0, upper_pct=100)
    assert abs(lg[0, 0]) > abs(lin[0, 0])
    z, _, _ = color_cells(np.full((2, 2), np.nan), np.zeros((2, 2)))
    assert (z == 0).all()


# ------------------------------------------------------------------------ the widget
def test_construction_shows_the_whole_stream(lmap, session):
    ts = session.data.records["ts_recv"]
    s, e, lo, hi = lmap.window
    assert s == int(ts[0]) and e == int(ts[-1]) + 1
    assert lo < hi
    assert session.calls and session.calls[0]["start"] == int(ts[0])
    g = lmap.grid
    bins, rows = len(g.t_edges) - 1, len(g.price_edges) - 1
    assert lmap.heat.color.shape == (rows, bins)
    assert bins * rows <= lmap.max_cells
    assert lmap.heat.color.dtype == np.float32 and lmap.heat.x.dtype == np.float64
    assert lmap.heat.y.dtype == np.float64
    assert np.count_nonzero(lmap.heat.color) > 0
    assert not np.isnan(lmap.heat.color).any()
    # bid/ask lines, trades, cursor at the session position, profile, time axis
    assert lmap.bbo_lines.y.shape == (2, bins) and lmap.bbo_lines.visible
    assert lmap.trades.visible and len(lmap.trades.x) > 0
    assert set(np.unique(lmap.trades.color)) <= {-1.0, 0.0, 1.0}
    assert lmap.cursor.visible
    cur_ns = lmap.origin_ns + lmap.cursor.x[0] * 1e9
    assert abs(cur_ns - session.frame().ts_recv) < 1e3
    assert lmap.profile_bars.y.shape == (2, rows)
    assert lmap.time_axis.label == f"time ({session.time_zone})"
    assert len(lmap.time_axis.tick_values) >= 2
    assert all(js_number_key(v) in lmap.time_axis.tick_labels
               for v in lmap.time_axis.tick_values)
    assert lmap.updates == 1 and lmap.bytes_sent == lmap.last_bytes > 0
    assert lmap.subscribed and lmap._on_frame in session.clock.subscribers


def test_browser_zoom_requeries_the_visible_window(lmap, session):
    s, e, lo, hi = lmap.window
    before_cells = lmap.heat.color
    n_calls = len(session.calls)
    # the browser (PanZoom) sets the scale domains: a tenth of the time, half the prices
    xs, xe = lmap.x_scale.min, lmap.x_scale.max
    mid = (lo + hi) / 2
    with lmap.x_scale.hold_trait_notifications():
        lmap.x_scale.min = xs + (xe - xs) * 0.45
        lmap.x_scale.max = xs + (xe - xs) * 0.55
    with lmap.y_scale.hold_trait_notifications():  # as ipywidgets' set_state does
        lmap.y_scale.min, lmap.y_scale.max = mid - (hi - lo) / 4, mid + (hi - lo) / 4
    assert len(session.calls) > n_calls  # debounce=0: queried at once
    call = session.calls[-1]
    ns = s + (e - s) * 0.45, s + (e - s) * 0.55
    assert abs(call["start"] - ns[0]) < 1e4 and abs(call["end"] - ns[1]) < 1e4
    assert call["price_lo"] == pytest.approx(mid - (hi - lo) / 4)
    assert call["price_hi"] == pytest.approx(mid + (hi - lo) / 4)
    new_s, new_e, new_lo, new_hi = lmap.window
    row = lmap.grid.tick * lmap.grid.tick_multiple
    assert new_lo <= call["price_lo"] < new_lo + session.tick + 1e-9
    assert call["price_hi"] <= new_hi < call["price_hi"] + row + 1e-9
    assert new_e - new_s < (e - s) / 5
    assert not np.array_equal(lmap.heat.color, before_cells)
    # the heat fills the plot on its unit scales; the domains are the grid's edges
    g = lmap.grid
    assert lmap.x_scale.min == pytest.approx((g.t_edges[0] - lmap.origin_ns) / 1e9)
    assert lmap.x_scale.max == pytest.approx((g.t_edges[-1] - lmap.origin_ns) / 1e9)
    assert (lmap.y_scale.min, lmap.y_scale.max) == (g.price_edges[0], g.price_edges[-1])
    assert lmap.heat.x.min() > 0 and lmap.heat.x.max() < 1
    assert (lmap.heat_x_scale.min, lmap.heat_x_scale.max) == (0.0, 1.0)
    assert lmap.last_cells <= lmap.max_cells
    assert lmap.last_bytes < 250_000 * 8 + 200_000
    # the time labels follow the window
    assert all(lmap.x_scale.min - 1e-6 <= v <= lmap.x_scale.max + 1e-6
               for v in lmap.time_axis.tick_values)


def test_debounced_zoom_waits_for_flush(session):
    # the debounce timer needs an event loop (the kernel's in Jupyter); without one the map
    # queries at once, so give this test its own (an earlier asyncio.run() leaves none)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    m = LiquidityMap(session, width_px=200, height_px=100, debounce=10.0)
    try:
        n = len(session.calls)
        m.x_scale.max = m.x_scale.min + (m.x_scale.max - m.x_scale.min) / 2
        m.x_scale.min = m.x_scale.min + 1.0
        assert m.pending and len(session.calls) == n  # nothing asked yet
        m.flush()
        assert not m.pending and len(session.calls) == n + 1
    finally:
        m.close()
        asyncio.set_event_loop(None)
        loop.close()


def test_zoom_buttons_and_reset(lmap, session):
    s, e, lo, hi = lmap.window
    lmap.zoom_in_button.click()
    s2, e2, lo2, hi2 = lmap.window
    assert (e2 - s2) == pytest.approx((e - s) / 2, rel=1e-6)
    row = lmap.grid.tick * lmap.grid.tick_multiple
    assert abs((hi2 - lo2) - (hi - lo) / 2) <= 2 * row + 1e-9
    lmap.right_button.click()
    assert lmap.window[0] > s2
    n = len(session.calls)
    lmap.reset_button.click()
    assert lmap.window == (s, e, lo, hi)
    assert len(session.calls) == n  # the whole-day view is cached


def test_one_minute_window_payload_bounded(session):
    m = LiquidityMap(session, width_px=2000, height_px=1000, max_cells=50_000, debounce=0)
    try:
        t = int(session.data.records["ts_recv"][len(session) // 2])
        m.show(t, t + 60 * 10**9)
        assert m.window[1] - m.window[0] == 60 * 10**9
        assert m.last_cells <= 50_000
        assert m.last_bytes < 50_000 * 4 * 1.2 + 100_000
    finally:
        m.close()


def test_click_in_seek_mode_moves_the_session(lmap, session):
    lmap.mode.value = "seek"
    assert lmap.figure.interaction is None and lmap.hit.visible
    ts = session.data.records["ts_recv"]
    before = session.position
    # the seek columns cover the window, a pixel column each
    s, e, _, _ = lmap.window
    k = len(lmap.hit.x) // 3
    assert len(lmap.hit.x) == lmap.width_px // 2
    width = (e - s) / len(lmap.hit.x)
    target = int(s + (k + 0.5) * width)
    assert abs(lmap.origin_ns + lmap.hit.x[k] * 1e9 - target) < 2e3
    # what the browser sends for a click on column k
    lmap.hit._handle_custom_msgs(None, {"event": "element_click",
                                        "data": {"index": k, "x": lmap.hit.x[k]}})
    assert session.position != before
    assert int(ts[session.position - 1]) <= target
    assert target - int(ts[session.position - 1]) < width + 10**9
    # the session published the new frame: the cursor follows it
    cur_ns = lmap.origin_ns + lmap.cursor.x[0] * 1e9
    assert abs(cur_ns - int(ts[session.position - 1])) < 1e3
    assert lmap.seeks == 1
    lmap.mode.value = "pan/zoom"
    assert lmap.figure.interaction is lmap.panzoom and not lmap.hit.visible


def test_cursor_throttled_while_playing(session):
    t = [0.0]
    m = LiquidityMap(session, width_px=100, height_px=100, debounce=0, cursor_hz=5,
                     clock=lambda: t[0])
    try:
        fr = session.frame()
        moved = []
        m.cursor.observe(lambda ch: moved.append(ch["new"][0]), "x")
        for k in range(20):  # 20 playing frames within 1 s
            t[0] = k * 0.05
            fr.playing = True
            fr.ts_recv = int(session.data.records["ts_recv"][k * 100])
            m._on_frame(fr)
        assert 4 <= len(moved) <= 6
    finally:
        m.close()


def test_colour_controls_redraw_without_query(lmap, session):
    n = len(session.calls)
    c0 = lmap.heat.color
    lmap.set_colors(lower_pct=60)
    c1 = lmap.heat.color
    assert np.count_nonzero(c1) < np.count_nonzero(c0)
    assert f"{lmap.cut_lo:.3g}\u2013{lmap.cut_hi:.3g} lots (log)" in lmap.status.value
    lmap.set_colors(log_scale=False)
    assert lmap.log_scale is False and not np.array_equal(lmap.heat.color, c1)
    lmap.set_colors(measure="max")
    assert lmap.measure == "max"
    assert len(session.calls) == n
    # bids positive, asks negative
    assert (lmap.heat.color > 0).any() and (lmap.heat.color < 0).any()


def test_time_zone_choice_relabels_the_axis(lmap, session):
    v = lmap.time_axis.tick_values[0]
    ns = lmap.origin_ns + round(v * 1e9)
    local = lmap.time_axis.tick_labels[js_number_key(v)]
    assert pd.Timestamp(ns, tz="UTC").tz_convert(session.time_zone).strftime(
        "%H:%M:%S.%f").startswith(local)
    lmap.zone_select.value = "UTC"
    assert lmap.time_axis.label == "time (UTC)"
    utc = lmap.time_axis.tick_labels[js_number_key(v)]
    assert pd.Timestamp(ns, tz="UTC").strftime("%H:%M:%S.%f").startswith(utc)
    if session.time_zone != "UTC":
        assert utc != local


def test_close_unsubscribes(session):
    m = LiquidityMap(session, width_px=100, height_px=100, debounce=0)
    assert m._on_frame in session.clock.subscribers
    m.close()
    assert m._on_frame not in session.clock.subscribers
    assert not m.subscribed
    n = m.updates
    session.step(5)  # publishes: the closed map does not react
    assert m.updates == n


def test_book_change_redraws_the_whole_day_of_the_new_book():
    s = _Recording(mbo_lab.synth_records(30_000, seed=11), fps=240)
    others = [b for b in s.books if b != (s.instrument_id, s.publisher_id)]
    if not others:
        pytest.skip("the synthetic stream has one book")
    m = LiquidityMap(s, width_px=200, height_px=100, debounce=0)
    try:
        first = m.grid
        n = len(s.calls)
        s.select(*others[0])  # publishes a frame of the other book
        assert len(s.calls) > n
        assert (m.grid.instrument_id, m.grid.publisher_id) == others[0]
        assert (first.instrument_id, first.publisher_id) != others[0]
        ts = s.data.records["ts_recv"]
        assert m.window[:2] == (int(ts[0]), int(ts[-1]) + 1)
    finally:
        m.close()


def test_box_zoom_shows_the_brushed_box(lmap, session):
    lmap.mode.value = "box zoom"
    assert lmap.figure.interaction is lmap.brush
    s, e, lo, hi = lmap.window
    x0, x1 = lmap.x_scale.min, lmap.x_scale.max
    bx = [x0 + (x1 - x0) * 0.2, x0 + (x1 - x0) * 0.3]
    by = [lo + (hi - lo) * 0.4, lo + (hi - lo) * 0.6]
    # what the browser sends at the end of a drag
    lmap.brush.brushing = True
    lmap.brush.selected_x, lmap.brush.selected_y = np.array(bx), np.array(by)
    lmap.brush.brushing = False
    s2, e2, lo2, hi2 = lmap.window
    assert abs(s2 - (lmap.origin_ns + bx[0] * 1e9)) < 1e4
    assert abs(e2 - (lmap.origin_ns + bx[1] * 1e9)) < 1e4
    row = lmap.grid.tick * lmap.grid.tick_multiple
    assert lo2 <= by[0] < lo2 + session.tick + 1e-9
    assert by[1] <= hi2 < by[1] + row + 1e-9
    assert session.calls[-1]["price_lo"] == pytest.approx(by[0])
    assert lmap.brush.selected_x is None  # the box is cleared after the zoom


def test_cells_never_exceed_max_cells(session):
    m = LiquidityMap(session, width_px=5000, height_px=5000, min_row_px=1, max_cells=20_000,
                     debounce=0)
    try:
        assert m.last_cells <= 20_000
        s, e, lo, hi = m.window
        m.show(s, s + (e - s) // 10, lo, lo + 1000 * session.tick)
        assert m.last_cells <= 20_000
    finally:
        m.close()


def test_set_time_zone_adds_the_zone(lmap):
    lmap.set_time_zone("Asia/Tokyo")
    assert lmap.time_axis.label == "time (Asia/Tokyo)"
    assert "Asia/Tokyo" in lmap.zone_select.options
    v = lmap.time_axis.tick_values[0]
    ns = lmap.origin_ns + round(v * 1e9)
    lab = lmap.time_axis.tick_labels[js_number_key(v)]
    assert pd.Timestamp(ns, tz="UTC").tz_convert("Asia/Tokyo").strftime(
        "%H:%M:%S.%f").startswith(lab)
    with pytest.raises(mbo_lab.MboLabError, match="unknown time zone"):
        lmap.set_time_zone("Mars/Olympus")


def test_standalone_map_keeps_its_zone_dropdown(lmap, session, monkeypatch):
    assert zone_controls(lmap) == [lmap.zone_select]
    assert "mbo-map-zone" in lmap.zone_select._dom_classes
    assert lmap.zone_select.value == lmap.time_zone == session.time_zone  # the default
    relabels = []
    real = lmap._apply_zone
    monkeypatch.setattr(lmap, "_apply_zone", lambda tz: (relabels.append(tz), real(tz)))
    other = "UTC" if lmap.time_zone != "UTC" else "Asia/Tokyo"
    lmap.set_time_zone(other)  # through its own dropdown: relabelled once
    assert relabels == [other] and lmap.zone_select.value == other
    lmap.set_time_zone(other)  # already shown: relabelled once more, nothing else
    assert relabels == [other, other]


def test_unknown_time_zone_is_a_config_error(session):
    with pytest.raises(mbo_lab.ConfigError, match="unknown time zone"):
        LiquidityMap(session, width_px=300, height_px=200, time_zone="Bad/Zone")


def test_map_without_zone_control_is_driven_by_set_time_zone(session):
    """``zone_control=False`` (what the dashboard passes): no dropdown in the tree;
    ``set_time_zone`` relabels the axis, the window and the cursor time at once, without
    a new query."""
    m = LiquidityMap(session, width_px=300, height_px=200, debounce=0, time_zone="UTC",
                     zone_control=False)
    try:
        assert zone_controls(m) == [] and m.zone_select is None
        assert m.time_axis.label == "time (UTC)"
        n, updates = len(session.calls), m.updates
        for zone in ("Asia/Tokyo", "UTC", "America/Chicago"):
            m.set_time_zone(zone)
            assert m.time_zone == zone and m.time_axis.label == f"time ({zone})"
            for v in m.time_axis.tick_values:
                ns = m.origin_ns + round(float(v) * 1e9)
                lab = m.time_axis.tick_labels[js_number_key(v)]
                assert pd.Timestamp(ns, tz="UTC").tz_convert(zone).strftime(
                    "%H:%M:%S.%f").startswith(lab)
            s = pd.Timestamp(m.window[0], tz="UTC").tz_convert(zone)
            assert s.strftime("%Y-%m-%d %H:%M:%S") in m.status.value
            c = pd.Timestamp(session.frame().ts_recv, tz="UTC").tz_convert(zone)
            assert c.strftime("%Y-%m-%d %H:%M:%S") in m.status.value
        assert (len(session.calls), m.updates) == (n, updates)
        with pytest.raises(mbo_lab.MboLabError, match="unknown time zone"):
            m.set_time_zone("Mars/Olympus")
        assert m.time_zone == "America/Chicago"
    finally:
        m.close()
