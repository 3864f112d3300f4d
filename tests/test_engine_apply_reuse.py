"""``NumbaEngine(reuse=True)``: apply() writes every call into the same output buffers.

Values equal the default (fresh buffers) path, chunk by chunk and against the reference;
the previous call's frames are overwritten (documented), the default path never
overwrites; buffers grow when a chunk has more states or trades; sampling and the level
log work with it.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernel import assert_frames_equal

from mbo_lab.book.engine import NumbaEngine, ReferenceEngine, book_key
from mbo_lab.book.frames import BookFrames

LEVELS = 5


pytestmark = pytest.mark.usefixtures("warm_numba")


def _chunks(n: int, sizes: list[int]):
    lo = 0
    for k in sizes:
        yield lo, min(n, lo + k)
        lo += k
    if lo < n:
        yield lo, n


def test_reuse_equals_fresh_path_and_reference(gen):
    sizes = [5_000, 5_000, 20_000, 1_000, 4_000]  # growth, then smaller chunks
    fresh = NumbaEngine(LEVELS)
    reuse = NumbaEngine(LEVELS, reuse=True)
    got, want = [], []
    for lo, hi in _chunks(len(gen), sizes):
        a = fresh.apply(gen[lo:hi])
        b = reuse.apply(gen[lo:hi])
        assert_frames_equal(b, a)
        assert b.counters == a.counters
        got.append(b.copy())
        want.append(a)
    joined = BookFrames.concat(got, LEVELS)
    ref = ReferenceEngine(LEVELS).apply(gen)
    assert_frames_equal(joined, ref)
    # the fresh path's frames stayed valid through every later call
    kept = BookFrames.concat(want, LEVELS)
    assert_frames_equal(kept, ref)


def test_reuse_overwrites_previous_frames(gen):
    eng = NumbaEngine(LEVELS, reuse=True)
    f1 = eng.apply(gen[:20_000])
    first = f1.copy()
    f2 = eng.apply(gen[20_000:30_000])  # fewer states and trades: no regrowth
    # the same memory: f1 now shows (the start of) f2's states
    assert np.shares_memory(f1.bid_px, f2.bid_px)
    assert np.shares_memory(f1.trades, f2.trades)
    k = min(len(f1), len(f2))
    assert np.array_equal(f1.index[:k], f2.index[:k])
    assert not np.array_equal(f1.index, first.index)
    # the default engine never shares
    d = NumbaEngine(LEVELS)
    g1 = d.apply(gen[:20_000])
    g2 = d.apply(gen[20_000:30_000])
    assert not np.shares_memory(g1.bid_px, g2.bid_px)
    assert_frames_equal(g1, first)


def test_buffer_grows_only_when_needed(gen):
    eng = NumbaEngine(LEVELS, reuse=True)
    eng.apply(gen[:1_000])
    buf = eng._out
    small = buf.capacity
    eng.apply(gen[1_000:1_500])  # fewer states: the same buffer
    assert eng._out is buf
    fr = eng.apply(gen[1_500:11_500])  # more: a larger one, with room to spare
    assert eng._out is not buf and eng._out.capacity >= len(fr) > small
    want = NumbaEngine(LEVELS)
    want.apply(gen[:1_500])
    assert_frames_equal(fr, want.apply(gen[1_500:11_500]))
    grown = eng._out
    eng.apply(gen[11_500:12_000])
    assert eng._out is grown


def test_trades_off_and_empty_chunks(gen):
    eng = NumbaEngine(LEVELS, trades=False, reuse=True)
    fr = eng.apply(gen[:5_000])
    assert len(fr.trades) == 0
    assert len(eng.apply(gen[5_000:5_000])) == 0
    eng.trades = True  # switched on later: the trade buffer grows from nothing
    fr = eng.apply(gen[5_000:15_000])
    ref = NumbaEngine(LEVELS)
    ref.apply(gen[:5_000])
    want = ref.apply(gen[5_000:15_000])
    assert len(want.trades) > 0
    assert_frames_equal(fr, want)


def test_reuse_with_sampling_and_level_log(gen):
    key = book_key(*gen[["instrument_id", "publisher_id"]][0].tolist())
    every = int(np.diff(gen["ts_recv"][[0, -1]])[0] // 300)
    a = NumbaEngine(LEVELS, every=every, changes_only=True)
    b = NumbaEngine(LEVELS, every=every, changes_only=True, reuse=True)
    for lo, hi in _chunks(len(gen), [3_000, 30_000, 2_000, 10_000]):
        fa = a.apply(gen[lo:hi], log_key=key)
        fb = b.apply(gen[lo:hi], log_key=key)
        assert_frames_equal(fb, fa)
        assert np.array_equal(fb.level_log, fa.level_log)
    assert_frames_equal(b.flush(), a.flush())
