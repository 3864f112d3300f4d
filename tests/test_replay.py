"""Replay session: seek/step/snapping, checkpoints equal to a fresh replay, clock, frames."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import mbo_lab
from mbo_lab.book.engine import ReferenceEngine
from mbo_lab.io.records import F_LAST


@pytest.fixture(scope="module")
def synth_session():
    recs = mbo_lab.synth_records(60_000, seed=5, clear_snapshot_every=15_000)
    return mbo_lab.open(recs, checkpoint_every=20_000, fps=240)


def _reference_top(session, levels=10):
    ref = ReferenceEngine(levels)
    ref.apply(session.data.records[: session.position])
    return ref.top(session.instrument_id, session.publisher_id, levels)


def _assert_frame_matches_reference(session, frame):
    top = _reference_top(session, len(frame.bid_px))
    want_bid = np.where(top.bid_px[0] == mbo_lab.io.records.UNDEF_PRICE, np.nan,
                        top.bid_px[0] / 1e9)
    np.testing.assert_allclose(frame.bid_px, want_bid, equal_nan=True)
    np.testing.assert_array_equal(frame.bid_sz, top.bid_sz[0])
    np.testing.assert_array_equal(frame.ask_sz, top.ask_sz[0])
    np.testing.assert_array_equal(frame.ask_ct, top.ask_ct[0])
    assert frame.crossed == bool(top.cross[0] == 2)


@pytest.mark.parametrize("index", [0, 1, 19_999, 20_000, 33_333, 59_999])
def test_seek_equals_fresh_replay_and_snaps_to_f_last(synth_session, index):
    s = synth_session
    fr = s.seek(index)
    # the state shown is right after an F_LAST record of the selected book at or before the
    # target (so that book is never shown mid-event)
    r = s.data.records
    mine = (r["instrument_id"] == s.instrument_id) & (r["publisher_id"] == s.publisher_id)
    book_last = (r["flags"] & F_LAST).astype(bool) & mine
    if not (np.argmax(book_last) <= index < len(s) - 1):
        book_last = (r["flags"] & F_LAST).astype(bool)  # before the book's first event/at the end
    assert book_last[fr.record_index]
    assert not book_last[fr.record_index + 1: index + 1].any() or index == 0
    _assert_frame_matches_reference(s, fr)


def test_seek_backwards_and_forwards_in_any_order(synth_session):
    s = synth_session
    for idx in (50_000, 10, 40_000, 39_000, 41_000, 5):
        _assert_frame_matches_reference(s, s.seek(idx))


def test_seek_by_time(synth_session):
    s = synth_session
    ts = int(s.data.records["ts_recv"][30_000])
    fr = s.seek(time=ts)
    assert fr.ts_recv <= ts
    assert s.data.records["ts_recv"][fr.record_index] <= ts
    with pytest.raises(mbo_lab.MboLabError):
        s.seek(index=10**9)
    with pytest.raises(mbo_lab.MboLabError):
        s.seek()


def test_step_moves_by_events(synth_session):
    s = synth_session
    s.seek(1000)
    r = s.data.records
    mine = (r["instrument_id"] == s.instrument_id) & (r["publisher_id"] == s.publisher_id)
    flast = np.flatnonzero((r["flags"] & F_LAST).astype(bool) & mine)  # the book's events
    k = int(np.searchsorted(flast, s.record_index))
    assert flast[k] == s.record_index
    fr = s.step(7)
    assert fr.record_index == flast[k + 7]
    fr = s.back(3)
    assert fr.record_index == flast[k + 4]
    assert s.step(0).record_index == flast[k + 4]
    assert s.to_start().record_index == np.flatnonzero(r["flags"] & F_LAST)[0]
    assert s.to_end().position == len(s)


def test_subscribers_get_frames_and_coalescing(synth_session):
    s = synth_session
    s.to_start()
    got = []
    unsub = s.subscribe(got.append)
    s.set_speed(mbo_lab.SPEED_MAX)
    steps = 0
    while s.advance(0.01, max_records=5_000):
        steps += 1
    unsub()
    assert s.position == len(s)
    assert got, "no frame published"
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # frames only at F_LAST records
    assert all(s.data.records["flags"][f.record_index] & F_LAST for f in got)
    n = len(got)
    s.seek(100)  # after unsubscribe nothing more arrives
    assert len(got) == n


def test_frame_rate_is_capped():
    recs = mbo_lab.synth_records(40_000, seed=2)
    s = mbo_lab.open(recs, fps=5)
    got = []
    s.subscribe(got.append)
    s.set_speed(mbo_lab.SPEED_MAX)
    while s.advance(0.001, max_records=500):
        pass
    # dozens of advances within well under a second: at most a handful of frames
    assert s.clock.frames_skipped > 0
    assert len(got) < 20


class _FakeClock:
    """perf_counter() for the session module, set by the test."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize("jitter", [0.0, 0.002, 0.003])
def test_publish_schedule_keeps_jittery_ticks_and_caps_the_average(monkeypatch, jitter):
    """Ticks one period apart with wake-up jitter (a little early or late) all publish:
    the frame slots follow a fixed schedule, so jitter does not drop every other frame
    (half the frames were skipped with a deadline clock before). A caller advancing far
    faster than ``fps`` still gets at most ``fps`` frames per second on average."""
    import mbo_lab.replay.session as S

    s = mbo_lab.open(mbo_lab.synth_records(20_000, seed=5), fps=30, progress=False)
    clock = _FakeClock()
    monkeypatch.setattr(S, "_time", clock)
    period = 1 / 30
    s.clock.last_publish = 0.0
    k0 = s.clock.frames_skipped
    rng = np.random.default_rng(1)
    for k in range(300):  # 10 s of ticks
        clock.now = 1000.0 + k * period + rng.uniform(-jitter, jitter)
        assert s._publish()
    assert s.clock.frames_skipped == k0
    # a tight loop: 100 calls per frame period for 10 s
    start = clock.now
    published = 0
    for k in range(1, 30_001):
        clock.now = start + k * period / 100
        published += s._publish()
    assert 299 <= published <= 301  # fps x 10 s, whatever the call rate


def test_play_pause_on_an_event_loop():
    recs = mbo_lab.synth_records(30_000, seed=3)
    s = mbo_lab.open(recs, fps=50)

    async def run():
        s.play(speed=mbo_lab.SPEED_MAX)
        await asyncio.sleep(0.3)
        s.pause()
        return s.position

    pos = asyncio.run(run())
    assert pos > 1
    assert not s.playing
    assert s.clock.task is None


def test_speed_validation_and_select(synth_session):
    s = synth_session
    with pytest.raises(mbo_lab.MboLabError):
        s.set_speed(0.01)
    with pytest.raises(mbo_lab.MboLabError):
        s.set_speed(5000)
    assert len(s.books) > 1
    other = [b for b in s.books if b != (s.instrument_id, s.publisher_id)][0]
    s.select(*other)
    assert (s.instrument_id, s.publisher_id) == other
    _assert_frame_matches_reference(s, s.frame())
    with pytest.raises(mbo_lab.MboLabError):
        s.select(999_999)


def test_html_repr_and_to_dict(synth_session):
    s = synth_session
    s.seek(20_000)
    html = s._repr_html_()
    assert "<table>" in html and "Session" in html
    d = s.frame().to_dict(5)
    assert len(d["bids"]) <= 5 and d["record"]["action"] in "ACMRTFN"
    assert d["position"] == s.position


def test_clx5_crossed_states_flagged(clx5):
    s = mbo_lab.open(clx5)
    fr = s.seek(time="2025-09-24 21:50")
    assert fr.crossed  # CME pre-open: a real cross, kept and flagged
    assert fr.best_bid > fr.best_ask
    assert np.isnan(fr.bbo["mid"])


# --------------------------------------------------------------------------- contract B


def test_play_outside_a_running_loop_raises_and_run_plays():
    recs = mbo_lab.synth_records(1_000, seed=6)
    s = mbo_lab.open(recs, fps=240)
    with pytest.raises(mbo_lab.MboLabError, match="await session.run"):
        s.play()
    assert not s.playing
    got = []
    s.subscribe(got.append)
    asyncio.run(s.run(speed=mbo_lab.SPEED_MAX))
    assert s.position == len(s) and not s.playing
    assert len(got) > 10  # played state by state, not one jump to the end


def test_speed_max_plays_each_state_of_the_selected_book():
    recs = mbo_lab.synth_records(20_000, seed=7)
    s = mbo_lab.open(recs, fps=240)
    key = (s.instrument_id, s.publisher_id)
    mine = np.flatnonzero((recs["instrument_id"] == key[0]) & (recs["publisher_id"] == key[1])
                          & (recs["flags"] & F_LAST > 0))
    s.set_speed(mbo_lab.SPEED_MAX)
    seen = []
    while s.advance(0.0) and len(seen) < 50:
        seen.append(s.record_index)
    start = int(np.searchsorted(mine, seen[0]))
    assert seen == mine[start: start + len(seen)].tolist()


def test_frame_book_record_is_the_selected_books_last_record(synth_session):
    s = synth_session
    s.select(*max(s._book_counts, key=s._book_counts.get))
    r = s.data.records
    for idx in (500, 12_345, 40_001):
        fr = s.seek(idx)
        bi = fr.book_record_index
        assert (int(r["instrument_id"][bi]), int(r["publisher_id"][bi])) == \
            (s.instrument_id, s.publisher_id)
        later = r[bi + 1: fr.record_index + 1]
        assert not ((later["instrument_id"] == s.instrument_id)
                    & (later["publisher_id"] == s.publisher_id)).any()
        assert fr.book_record["order_id"] == int(r["order_id"][bi])
        assert fr.to_dict()["book_record"] == fr.book_record


def test_trades_between_and_max_trades(synth_session):
    s = synth_session
    r = s.data.records
    ts = r["ts_recv"].astype(np.int64)
    t0, t1 = int(ts[10_000]), int(ts[30_000])
    df = s.trades_between(t0, t1, max_trades=10**9)
    sel = ((r["action"] == b"T") & (r["instrument_id"] == s.instrument_id)
           & (r["publisher_id"] == s.publisher_id) & (ts >= t0) & (ts < t1))
    assert df["record_index"].tolist() == np.flatnonzero(sel).tolist()
    assert str(df.index.tz) == "UTC" and set(df["side"]) <= {"B", "A", "N"}
    np.testing.assert_allclose(df["price"], r["price"][sel] / 1e9)
    small = s.trades_between(t0, t1, max_trades=5)
    assert len(small) == 5 and small.index.is_monotonic_increasing
    assert small["size"].min() >= df["size"].nlargest(5).min()
    with pytest.raises(mbo_lab.MboLabError):
        s.trades_between(t1, t0)


def test_history_equals_reference_states_and_spans_trades(synth_session):
    s = synth_session
    s.select(*max(s._book_counts, key=s._book_counts.get))
    fr = s.seek(45_000)
    h = s.history(points=40, span_ns=None)
    assert len(h) == 40 and list(h.columns) == ["bid", "ask", "mid"]
    t0, t_end = h.attrs["window"]
    assert h.index[-1].value == t_end and t_end == fr.ts_recv + 1
    # the last point is the current state; every point equals the reference state then
    assert h["bid"].iloc[-1] == fr.best_bid and h["ask"].iloc[-1] == fr.best_ask
    r = s.data.records
    ts = r["ts_recv"].astype(np.int64)
    ref = ReferenceEngine(1)
    frames = ref.apply(r[: s.position])
    mine = ((r["instrument_id"][frames.index] == s.instrument_id)
            & (r["publisher_id"][frames.index] == s.publisher_id))
    st_t = ts[frames.index[mine]]
    st_bid = frames.bid_px[mine, 0]
    for t, bid in zip(h.index.asi8[::7], h["bid"].to_numpy()[::7]):
        k = int(np.searchsorted(st_t, t - 1, "right")) - 1  # last state before the point
        want = np.nan if k < 0 or st_bid[k] == mbo_lab.io.records.UNDEF_PRICE \
            else st_bid[k] / 1e9
        np.testing.assert_equal(bid, want)
    tr = h.attrs["trades"]
    assert len(tr) > 0
    assert tr.index.min().value >= t0 and tr.index.max().value < t_end
    assert (tr["record_index"] < s.position).all()


def test_liquidity_zoom_equals_whole_day_slice(synth_session):
    s = synth_session
    s.select(*max(s._book_counts, key=s._book_counts.get))
    pos = s.position
    ts = s.data.records["ts_recv"].astype(np.int64)
    day = s.liquidity(time_bins=60, price_rows=50)
    # a zoomed window on exactly the same bins and rows gives the same cells
    e = day.t_edges
    z = s.liquidity(int(e[30]), int(e[40]), time_bins=10, price_rows=50,
                    price_lo=day.price_edges[0], tick_multiple=day.tick_multiple)
    np.testing.assert_array_equal(z.price_edges_fixed, day.price_edges_fixed)
    np.testing.assert_array_equal(z.t_edges, e[30:41])
    for kind in ("bid_twa", "ask_twa", "bid_max", "ask_max", "buy_volume", "sell_volume"):
        np.testing.assert_allclose(getattr(z, kind), getattr(day, kind)[30:40], rtol=1e-9,
                                   equal_nan=True, err_msg=kind)
    np.testing.assert_array_equal(z.bid_close, day.bid_close[30:40])
    assert s.position == pos  # views never move the session
    assert z.info["replayed_from_checkpoint"] <= s.checkpoint_every
    assert day.t_edges[0] == ts[0] and day.t_edges[-1] == ts[-1] + 1
    assert np.isfinite(day.bid_twa).any() and (day.buy_volume.sum() > 0)


def test_tick_and_time_zone(clx5):
    s = mbo_lab.open(clx5)
    assert s.tick == pytest.approx(0.01)
    assert s.time_zone == "America/Chicago"
    s.time_zone = "Asia/Tokyo"
    assert s.time_zone == "Asia/Tokyo"
    with pytest.raises(mbo_lab.MboLabError):
        s.time_zone = "Mars/Olympus"
    demo = mbo_lab.open(mbo_lab.synth_records(5_000, seed=1))
    assert demo.tick > 0
    assert demo.time_zone in ("UTC", "America/Chicago")


def test_frame_trades_are_the_books_last_trades(synth_session):
    s = synth_session
    r = s.data.records
    for book in s.books[:3]:
        s.select(*book)
        fr = s.seek(33_000)
        sel = np.flatnonzero((r["action"] == b"T") & (r["instrument_id"] == book[0])
                             & (r["publisher_id"] == book[1]))
        want = sel[sel <= fr.record_index][-20:]
        assert [t[0] for t in fr.trades] == r["ts_recv"][want].astype(np.int64).tolist()
        assert [t[2] for t in fr.trades] == r["size"][want].astype(np.int64).tolist()


def test_snapping_never_shows_the_selected_book_mid_event():
    """Books interleave: B1 (no F_LAST), A1 (F_LAST), B2 (F_LAST). With B selected, a seek
    to just after A1 must not publish B with only B1 applied: it snaps to B's last
    complete event (the state before B1), and stepping moves by B's own events."""
    from conftest import build_records, rec

    P = 100 * 10**9
    rows = [rec("A", "B", P, 5, 1, iid=2), rec("A", "A", P + 10**9, 5, 2, iid=1),
            rec("A", "B", P - 10**9, 7, 3, iid=2, flags=0),   # B1: B mid-event
            rec("A", "A", P + 2 * 10**9, 1, 4, iid=1),         # A1: F_LAST of A
            rec("A", "B", P - 2 * 10**9, 9, 5, iid=2),          # B2: completes B's event
            rec("A", "A", P + 3 * 10**9, 1, 6, iid=1)]
    s = mbo_lab.open(build_records(rows), instrument_id=2)
    fr = s.seek(3)                      # the state after A1
    assert s.record_index == 0          # B's last complete event is record 0
    assert list(fr.bid_sz[:1]) == [5] and fr.bid_sz[1] == 0   # B1's order is not shown
    fr = s.step(1)                      # B's next event: B1 + B2 together
    assert s.record_index == 4 and list(fr.bid_sz[:3]) == [5, 7, 9]
    assert s.step(0).record_index == 4  # step(0) stays where it is
    assert s.back(1).record_index == 0


def test_seek_to_a_non_time_raises():
    s = mbo_lab.open(mbo_lab.synth_records(5_000, seed=4))
    for bad in ("NaT", "not a time"):
        with pytest.raises(mbo_lab.MboLabError, match="not a time"):
            s.seek(time=bad)


def test_frame_before_the_selected_books_first_record():
    """Before its first record the selected book shows empty, with no book record (and
    the session does not scan back through the stream to find out)."""
    from conftest import build_records, rec

    P = 100 * 10**9
    rows = [rec("A", "A", P + k * 10**9, 1, 10 + k, iid=1) for k in range(50)]
    rows += [rec("A", "B", P, 3, 99, iid=2), rec("A", "A", P + 10**9, 4, 98, iid=2)]
    s = mbo_lab.open(build_records(rows), instrument_id=2)
    fr = s.seek(10)
    assert fr.book_record is None and s.record_index == 10
    assert not np.isfinite(fr.best_bid) and not np.isfinite(fr.best_ask)
    fr = s.to_end()
    assert fr.book_record is not None and fr.best_bid == 100.0 and fr.best_ask == 101.0
