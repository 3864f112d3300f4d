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
    # the state shown is right after an F_LAST record at or before the target
    assert s.data.records["flags"][fr.record_index] & F_LAST
    later = s.data.records["flags"][fr.record_index + 1: index + 1] & F_LAST
    assert not later.any() or index == 0
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
    flast = np.flatnonzero(s.data.records["flags"] & F_LAST)
    k = int(np.searchsorted(flast, s.record_index))
    fr = s.step(7)
    assert fr.record_index == flast[k + 7]
    fr = s.back(3)
    assert fr.record_index == flast[k + 4]
    assert s.to_start().record_index == flast[0]
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
