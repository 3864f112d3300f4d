"""Compact checkpoints: ``BookState.compact()`` / ``from_compact()`` / ``restore()``.

A state rebuilt from a compact checkpoint must continue exactly like the state it was
taken from: equal frames, counters and queries (checked against the uncompacted copy and
the reference book), the same hash seeds and capacities, and -- since the free stacks keep
their order -- the same order slots and hash rows afterwards (the final states' compact
forms are equal). Sources: the CME CLX5 sample, a generated stream, random streams and
random cut points. Checkpoints must also be much smaller than full copies.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import build_records, rec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernel import _stream, assert_frames_equal, assert_queries_equal

import mbo_lab
from mbo_lab.book import kernel as K
from mbo_lab.book.engine import NumbaEngine, ReferenceEngine
from mbo_lab.book.frames import BookFrames
from mbo_lab.book.state import BookState, CompactState

LEVELS = 10
SNAP_FIELDS = ("meta", "counters", "bk_pos", "bk_rows", "bk_info", "seg", "pool_rows",
               "lvl_rows", "oh_pos", "oh_rows", "ord_rows")


pytestmark = pytest.mark.usefixtures("warm_numba")


@pytest.fixture(scope="module")
def gen_ref(gen) -> BookFrames:
    return ReferenceEngine(LEVELS).apply(gen)


@pytest.fixture(scope="module")
def clx5_ref(clx5_frames) -> BookFrames:
    assert LEVELS == 10  # clx5_frames' levels
    return clx5_frames[3]


def assert_snapshots_equal(a: CompactState, b: CompactState) -> None:
    assert a.shapes == b.shapes
    for f in SNAP_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and np.array_equal(x, y), f
    for f in ("lvl_free", "ord_free"):
        (r1, t1), (r2, t2) = getattr(a, f), getattr(b, f)
        assert r1 == r2 and np.array_equal(t1, t2), f
    assert a.extra.keys() == b.extra.keys()


def check_cut(records: np.ndarray, cut: int, want: BookFrames, *,
              state: BookState | None = None, ref_queries: bool = False) -> CompactState:
    """Apply ``records[:cut]``, checkpoint compactly, rebuild, apply the rest: the frames
    equal the uncompacted path (a full copy) and the reference ``want``."""
    ne = NumbaEngine(LEVELS, state=state)
    f1 = ne.apply(records[:cut], base_index=0)
    snap = ne.state.compact()
    full = ne.state.copy()
    # the rebuilt state: same capacities and seeds, the same live content
    rebuilt = BookState.from_compact(snap)
    assert {k: v.shape for k, v in rebuilt.arrays.items()} == \
        {k: v.shape for k, v in ne.state.arrays.items()}
    assert [int(x) for x in rebuilt.seeds] == [int(x) for x in ne.state.seeds]
    for k in ("meta", "counters", "bk_hash", "bk_info", "seg"):
        assert np.array_equal(rebuilt.arrays[k], ne.state.arrays[k]), k
    assert np.array_equal(rebuilt.arrays["oh"][:, 1], ne.state.arrays["oh"][:, 1])
    for k, m in (("ord_free", K.M_ORD_FREE), ("lvl_free", K.M_LVL_FREE)):
        n = int(ne.state.arrays["meta"][m])
        assert np.array_equal(rebuilt.arrays[k][:n], ne.state.arrays[k][:n]), k
    assert_snapshots_equal(rebuilt.compact(), snap)  # a round trip changes nothing
    r_eng = NumbaEngine(LEVELS, state=rebuilt)
    r_eng.records_applied = cut
    assert r_eng.check() == 0
    if ref_queries:  # orders (with queue positions) and tops as the reference has them
        ref = ReferenceEngine(LEVELS)
        ref.apply(records[:cut])
        assert_queries_equal(r_eng, ref, records[:cut], LEVELS, extra_ids=50)
    rest = records[cut:]
    f2 = r_eng.apply(rest, base_index=cut)
    # the uncompacted path: the full copy, and the original engine itself
    c_eng = NumbaEngine(LEVELS, state=full)
    f_full = c_eng.apply(rest, base_index=cut)
    assert_frames_equal(f2, f_full)
    assert r_eng.counters == c_eng.counters
    # ... ending in the same state, slot for slot (free-stack order kept)
    assert_snapshots_equal(r_eng.state.compact(), c_eng.state.compact())
    assert r_eng.check() == 0
    # the reference book over the whole stream
    got = BookFrames.concat([f1, f2], LEVELS)
    assert_frames_equal(got, want)
    assert r_eng.counters == want.counters
    # restore() in place into a state that moved on: the same again
    c_eng.state.restore(snap)
    assert_frames_equal(c_eng.apply(rest, base_index=cut), f2)
    return snap


def test_clx5_positions(clx5, clx5_ref):
    recs = clx5.records
    n = len(recs)
    for cut in (0, 1, 1_000, n // 3, n // 2 + 7, n - 1, n):
        check_cut(recs, cut, clx5_ref, ref_queries=cut in (1_000, n // 2 + 7))


def test_generated_positions(gen, gen_ref):
    n = len(gen)
    last = np.flatnonzero(gen["flags"] & mbo_lab.io.records.F_LAST)
    clears = np.flatnonzero(gen["action"] == b"R")
    cuts = [0, 1, 15_000, int(clears[1]) + 1, int(last[len(last) // 2]) + 1, 33_333,
            n - 1, n]
    for cut in cuts:
        check_cut(gen, cut, gen_ref, ref_queries=cut == 33_333)


def test_generated_tiny_state_grows_after_restore(gen, gen_ref):
    """Capacities are part of the checkpoint: a state that still has to grow after the
    cut grows the same way."""
    for cut in (50, 2_000, 30_001):
        check_cut(gen, cut, gen_ref,
                  state=BookState(books=1, orders=2, levels=2, segment_pool=4))


def test_random_cut_points(gen, gen_ref):
    """A chain of checkpoints: at each random cut the state is replaced by its compact
    checkpoint, rebuilt into a fresh engine, and the stream continues; the whole equals one
    pass and the reference."""
    rng = np.random.default_rng(7)
    for trial in range(3):
        cuts = np.unique(rng.integers(1, len(gen), 12))
        ne = NumbaEngine(LEVELS)
        parts = []
        lo = 0
        for hi in [*cuts.tolist(), len(gen)]:
            parts.append(ne.apply(gen[lo:hi], base_index=lo))
            snap = ne.state.compact()
            if trial == 1:
                ne.state.restore(snap)  # in place
            else:
                ne = NumbaEngine(LEVELS, state=BookState.from_compact(snap))
                ne.records_applied = hi
            lo = hi
        got = BookFrames.concat(parts, LEVELS)
        assert_frames_equal(got, gen_ref)
        assert ne.counters == gen_ref.counters
        assert ne.check() == 0


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=_stream(last=False, max_size=120), data=st.data(), tiny=st.booleans())
def test_property_compact_at_random_cuts(rows, data, tiny):
    """Random and adversarial streams (duplicate ids, unknown cancels, clears, TOB):
    compacting and rebuilding at random cuts never changes the result."""
    recs = build_records(rows)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(recs)), max_size=6))))
    want = ReferenceEngine(3).apply(recs)
    state = BookState(books=1, orders=2, levels=2, segment_pool=4) if tiny else None
    ne = NumbaEngine(3, state=state)
    parts, lo = [], 0
    for hi in [*cuts, len(recs)]:
        parts.append(ne.apply(recs[lo:hi], base_index=lo))
        snap = ne.state.compact()
        full = ne.state.copy()
        ne = NumbaEngine(3, state=BookState.from_compact(snap))
        ne.records_applied = hi
        # the rest from here: compact path == full-copy path, slot for slot
        a = NumbaEngine(3, state=BookState.from_compact(snap))
        b = NumbaEngine(3, state=full)
        assert_frames_equal(a.apply(recs[hi:], base_index=hi), b.apply(recs[hi:], base_index=hi))
        assert_snapshots_equal(a.state.compact(), b.state.compact())
        lo = hi
    got = BookFrames.concat(parts, 3)
    assert_frames_equal(got, want)
    assert ne.counters == want.counters
    assert ne.check() == 0


def test_recycled_slots_keep_their_order():
    """Orders freed before the checkpoint are handed out again in the same order after it
    (the free stack's top is kept), so later orders sit in the same slots."""
    PX = 1_000_000_000
    rows = [rec("A", "B", (100 - i) * PX, 1, 10 + i, flags=0) for i in range(40)]
    rows += [rec("C", "B", (100 - i) * PX, 1, 10 + i, flags=0) for i in (3, 17, 5, 30, 11)]
    recs = build_records(rows)
    more = build_records([rec("A", "A", (200 + i) * PX, 2, 900 + i) for i in range(8)])
    ne = NumbaEngine(3)
    ne.apply(recs)
    snap = ne.state.compact()
    r, top = snap.ord_free
    assert len(top) == 5 and r == len(ne.state.arrays["ords"]) - 40
    rebuilt = NumbaEngine(3, state=BookState.from_compact(snap))
    assert_frames_equal(rebuilt.apply(more, base_index=45), ne.apply(more, base_index=45))
    slots = [int(K.order_find(s.arrays["oh"], s.arrays["ords"], np.int64(900 + i), 0,
                              *s.seeds)) for s in (rebuilt.state, ne.state) for i in range(8)]
    assert slots[:8] == slots[8:] == [11, 30, 5, 17, 3, 40, 41, 42]


def test_checkpoint_is_immutable_and_independent(gen):
    ne = NumbaEngine(2)
    ne.apply(gen[:20_000])
    snap = ne.state.compact()
    for a in snap._arrays():
        assert not a.flags.writeable
        assert not any(np.shares_memory(a, v) for v in ne.state.arrays.values())
    with pytest.raises((AttributeError, TypeError)):
        snap.meta = None  # frozen dataclass
    for a in snap._arrays():  # over immutable bytes: cannot be made writeable again
        with pytest.raises(ValueError):
            a.flags.writeable = True
    with pytest.raises(TypeError):
        snap.shapes["oh"] = (2, 2)
    with pytest.raises(TypeError):
        snap.extra["x"] = np.zeros(1)
    before = [a.copy() for a in snap._arrays()]
    st1 = BookState.from_compact(snap)
    NumbaEngine(2, state=st1).apply(gen[20_000:30_000], base_index=20_000)
    ne.apply(gen[20_000:], base_index=20_000)
    ne.state.restore(snap)
    assert all(np.array_equal(x, y) for x, y in zip(before, snap._arrays()))
    assert snap.live_orders == ne.state.live_orders


def test_unknown_state_fields_are_kept_whole(gen):
    """A field a newer kernel might add is kept as a full copy."""
    ne = NumbaEngine(2)
    ne.apply(gen[:5_000])
    ne.state.arrays["future"] = np.arange(12, dtype=np.int64).reshape(3, 4)
    st2 = BookState.from_compact(ne.state.compact())
    assert np.array_equal(st2.arrays["future"], ne.state.arrays["future"])


@pytest.mark.parametrize("source", ["gen", "clx5"])
def test_session_checkpoints_are_compact_and_exact(request, source):
    """The session keeps compact checkpoints, several times smaller than full copies, and
    each rebuilds to the state a fresh replay reaches at its position."""
    data = request.getfixturevalue(source)
    recs = data.records if source == "clx5" else data
    s = mbo_lab.open(recs, checkpoint_every=4_000, progress=False)
    assert all(isinstance(c.state, CompactState) for c in s._checkpoints)
    compact = sum(c.state.nbytes() for c in s._checkpoints)
    full = sum(BookState.from_compact(c.state).nbytes() for c in s._checkpoints)
    assert full / compact > 5, (full, compact)
    ne = NumbaEngine(1, trades=False)
    for c in s._checkpoints[::3]:
        ne.apply(recs[ne.records_applied: c.position], base_index=ne.records_applied)
        got = BookState.from_compact(c.state)
        assert [int(x) for x in got.seeds] == [int(x) for x in s._checkpoints[0].state.seeds]
        # same live content; the seeds differ from ne's, so compare what does not hash
        assert got.live_orders == ne.state.live_orders
        assert np.array_equal(got.counters, ne.state.counters)
        for iid, pub in s.books:
            a = NumbaEngine(1, state=got).book_levels(iid, pub)
            b = ne.book_levels(iid, pub)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_outputs_do_not_depend_on_order_slots(gen, gen_ref):
    """Free-stack order only decides which slot a new order gets; the frames do not depend
    on it (the checkpoint keeps the order anyway, so states stay equal slot for slot)."""
    cut = 33_333
    ne = NumbaEngine(LEVELS)
    f1 = ne.apply(gen[:cut])
    snap = ne.state.compact()
    r, top = snap.ord_free
    assert len(top) > 1
    rng = np.random.default_rng(3)
    shuffled = dataclasses.replace(snap, ord_free=(r, rng.permutation(top)),
                                   lvl_free=(snap.lvl_free[0], snap.lvl_free[1][::-1]))
    other = NumbaEngine(LEVELS, state=BookState.from_compact(shuffled))
    f2 = other.apply(gen[cut:], base_index=cut)
    got = BookFrames.concat([f1, f2], LEVELS)
    assert_frames_equal(got, gen_ref)
    assert other.check() == 0


def test_failed_allocation_in_restore_leaves_state_unchanged(gen, monkeypatch):
    """restore() allocates every array it cannot reuse before it writes any: a failure
    there (MemoryError, Ctrl-C) leaves the state exactly as it was."""
    from mbo_lab.book import state as S

    small = NumbaEngine(2, state=BookState(orders=4, levels=2, segment_pool=64))
    small.apply(gen[:500])
    early = small.state.compact()
    small.apply(gen[500:20_000], base_index=500)
    late = small.state.compact()
    small.state.restore(early)  # seek back: arrays reused, larger than early's shapes need
    before = {k: v.copy() for k, v in small.state.arrays.items()}
    real = S._aligned

    def refuse_ords(shape, fill=0):
        if tuple(shape) == tuple(late.shapes["ords"]):
            raise KeyboardInterrupt
        return real(shape, fill)

    # the stream grew the order pool: restoring ``late`` must allocate its ords
    assert small.state.arrays["ords"].shape != tuple(late.shapes["ords"])
    with monkeypatch.context() as m:
        m.setattr(S, "_aligned", refuse_ords)
        with pytest.raises(KeyboardInterrupt):
            small.state.restore(late)
    assert before.keys() == small.state.arrays.keys()
    assert all(np.array_equal(before[k], small.state.arrays[k]) for k in before)
    assert small.check() == 0


@pytest.mark.parametrize("where", ["restore", "apply"])
def test_session_seek_after_an_interrupted_seek_is_exact(gen, monkeypatch, where):
    """Ctrl-C inside a seek, while the state is rebuilt from a checkpoint or between a
    replay call and the position update, must not leave a state the next seek trusts:
    the next seek equals a fresh session's."""
    s = mbo_lab.open(gen, checkpoint_every=5_000, progress=False)
    fresh = mbo_lab.open(gen, checkpoint_every=5_000, progress=False)
    s.seek(40_000)
    with monkeypatch.context() as m:
        if where == "restore":
            def broken(self, snap):  # half written, then interrupted
                self.arrays["ords"].fill(0)
                self.arrays["meta"][K.M_LIVE] += 7
                raise KeyboardInterrupt

            m.setattr(BookState, "_load", broken)
            target = 12_345  # behind the position: a checkpoint restore
        else:
            real = NumbaEngine.apply

            def broken(self, *args, **kw):  # applied, then interrupted before position moves
                real(self, *args, **kw)
                raise KeyboardInterrupt

            m.setattr(NumbaEngine, "apply", broken)
            target = 41_234  # just ahead: replayed from the current position
        with pytest.raises(KeyboardInterrupt):
            s.seek(target)
    for idx in (41_500, target, 20_000):  # first just ahead of the old position
        got, want = s.seek(idx), fresh.seek(idx)
        assert got.record_index == want.record_index
        assert s.engine.top(s.instrument_id, s.publisher_id, 5).bid_px.tolist() == \
            fresh.engine.top(fresh.instrument_id, fresh.publisher_id, 5).bid_px.tolist()
        assert s.engine.top(s.instrument_id, s.publisher_id, 5).ask_sz.tolist() == \
            fresh.engine.top(fresh.instrument_id, fresh.publisher_id, 5).ask_sz.tolist()
        assert s.engine.state.live_orders == fresh.engine.state.live_orders
        assert s.engine.check() == 0
