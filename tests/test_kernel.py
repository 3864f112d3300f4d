"""The Numba kernel equals the reference book at every F_LAST state.

Compared: the published frames (``BookFrames.equals`` plus trades), the anomaly counters,
``top()`` of every book and ``order()`` of live and dead order ids, and the kernel's own
invariant check. Sources: the CME CLX5 sample, synthetic streams (clean, started
mid-stream, mutated, extreme prices), every hand-written sequence of ``test_reference``,
and property-based random/adversarial streams.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_records, rec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reference import CASES

from mbo_lab.book.engine import NumbaEngine, ReferenceEngine, book_key, make_engine
from mbo_lab.book.frames import BookFrames
from mbo_lab.book.state import BookState
from mbo_lab.errors import EngineError
from mbo_lab.io.records import F_LAST, F_MBP, F_SNAPSHOT, F_TOB, UNDEF_PRICE, empty_records

FIELDS = ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross")
PX = 1_000_000_000
UNDEF = int(UNDEF_PRICE)
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
U32_MAX = 2**32 - 1

# CLX5 facts documented in shared/docs/domain.md (§1.2, §1.5, §2)
CLX5_F_LAST = 32_053
CLX5_CROSSED = 172
CLX5_LOCKED = 0
CLX5_UNKNOWN_CANCEL = 1_224
CLX5_UNKNOWN_MODIFY = 216
CLX5_TRADES = 1_599


pytestmark = pytest.mark.usefixtures("warm_numba")


# --------------------------------------------------------------------------- helpers


def replay(engine, records: np.ndarray, cuts=()) -> BookFrames:
    """Apply ``records`` to ``engine`` in chunks split at ``cuts``; the frames joined."""
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < len(records))), len(records)]
    parts = [engine.apply(records[a:b]) for a, b in zip(bounds, bounds[1:])]
    out = BookFrames.concat(parts, engine.levels)
    out.counters = engine.counters
    return out


def assert_frames_equal(got: BookFrames, want: BookFrames) -> None:
    """Field by field, naming the first differing state."""
    assert len(got) == len(want), f"{len(got)} states, expected {len(want)}"
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.shape == b.shape, f"{f}: shape {a.shape} != {b.shape}"
        diff = a != b
        bad = np.flatnonzero(diff.any(axis=1) if diff.ndim > 1 else diff)
        if len(bad):
            r = int(bad[0])
            raise AssertionError(
                f"{f} differs at {len(bad)} states, first state {r} (record "
                f"{int(want.index[r])}): kernel {a[r].tolist()} != reference {b[r].tolist()}"
            )
    assert got.equals(want) and want.equals(got)
    assert np.array_equal(got.trades, want.trades)


def books_of(records: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(records["instrument_id"].tolist(), records["publisher_id"].tolist()))


def assert_queries_equal(ne: NumbaEngine, re: ReferenceEngine, records: np.ndarray,
                         levels: int = 10, extra_ids: int = 200) -> None:
    """``top()`` of every book and ``order()`` of every live order (and of a sample of
    other ids) agree; the kernel holds exactly the reference's live orders."""
    rng = np.random.default_rng(0)
    ids = np.unique(records["order_id"]) if len(records) else np.zeros(0, np.uint64)
    sample = ids if len(ids) <= extra_ids else rng.choice(ids, extra_ids, replace=False)
    live = 0
    for iid, pub in sorted(books_of(records) | {(123_456, 7)}):
        assert_frames_equal(ne.top(iid, pub, levels), re.top(iid, pub, levels))
        book = re.market.books.get((iid, pub))
        live_ids = list(book.orders) if book is not None else []
        live += len(live_ids)
        for oid in live_ids + [int(x) for x in sample]:
            assert ne.order(iid, pub, oid) == re.order(iid, pub, oid), (iid, pub, oid)
    assert ne.state.live_orders == live
    assert ne.check() == 0


def compare(records: np.ndarray, levels: int = 4, cuts=(), ref_cuts=None,
            state: BookState | None = None, queries: bool = True):
    """Run both engines; assert equal frames, counters, queries; return them."""
    ne = NumbaEngine(levels=levels, state=state)
    re = ReferenceEngine(levels=levels)
    got = replay(ne, records, cuts)
    want = replay(re, records, cuts if ref_cuts is None else ref_cuts)
    assert_frames_equal(got, want)
    assert ne.counters == re.counters
    assert got.counters == want.counters == re.counters
    assert ne.check() == 0
    if queries:
        assert_queries_equal(ne, re, records, levels)
    return ne, re, got, want


def every_record_last(records: np.ndarray) -> np.ndarray:
    out = records.copy()
    out["flags"] |= F_LAST
    return out


def random_cuts(n: int, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.integers(1, max(n, 2), size=k).tolist())


# --------------------------------------------------------------------------- hand-written


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_written_every_record(name):
    """Every record has F_LAST: the state is compared after every record."""
    recs = build_records(CASES[name])
    assert np.all(recs["flags"] & F_LAST) or name == "trade_flags"
    compare(every_record_last(recs), levels=6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_written_one_record_chunks(name):
    """The sequences' own flags, one record per chunk (state kept across calls)."""
    recs = build_records(CASES[name])
    compare(recs, levels=2, cuts=range(1, len(recs)), ref_cuts=())


def test_all_hand_written_in_one_stream_tiny_state():
    recs = build_records([r for name in sorted(CASES) for r in CASES[name]])
    compare(every_record_last(recs), levels=8,
            state=BookState(books=1, orders=2, levels=2, segment_pool=4))


# --------------------------------------------------------------------------- CLX5


def test_clx5_kernel_equals_reference(clx5, clx5_frames):
    ne, re, got, want = clx5_frames
    assert_frames_equal(got, want)
    assert ne.counters == re.counters == got.counters
    assert ne.check() == 0
    assert_queries_equal(ne, re, clx5.records, levels=10, extra_ids=500)


def test_clx5_documented_counts(clx5, clx5_frames):
    _, _, got, _ = clx5_frames
    assert len(got) == CLX5_F_LAST
    assert got.index.tolist() == np.flatnonzero(clx5.records["flags"] & F_LAST).tolist()
    assert int(np.count_nonzero(got.cross == 2)) == CLX5_CROSSED
    assert int(np.count_nonzero(got.cross == 1)) == CLX5_LOCKED
    assert got.counters["unknown_cancel"] == CLX5_UNKNOWN_CANCEL
    assert got.counters["unknown_modify"] == CLX5_UNKNOWN_MODIFY
    assert len(got.trades) == CLX5_TRADES
    assert got.trades.tolist() == np.flatnonzero(clx5.records["action"] == b"T").tolist()


def test_clx5_random_chunks_equal_one_pass(clx5, clx5_frames):
    _, _, _, want = clx5_frames
    for seed in range(3):
        ne = NumbaEngine(levels=10)
        got = replay(ne, clx5.records, random_cuts(len(clx5), 25, seed) + [1, 2, 3])
        assert_frames_equal(got, want)
        assert ne.counters == want.counters
        assert ne.check() == 0


def test_clx5_tiny_state_grows_to_the_same_result(clx5, clx5_frames):
    _, _, _, want = clx5_frames
    ne = NumbaEngine(levels=10, state=BookState(books=1, orders=2, levels=2, segment_pool=4))
    assert_frames_equal(ne.apply(clx5.records), want)
    assert ne.check() == 0


# --------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="session")
def synth_frames(synth):
    ne, re = NumbaEngine(levels=10), ReferenceEngine(levels=10)
    got, want = ne.apply(synth), re.apply(synth)
    return ne, re, got, want


def test_synth_stream_has_what_we_test(synth):
    """The fixture stream holds clears, snapshots, TOB records and several books."""
    act = synth["action"]
    assert np.count_nonzero(act == b"R") >= 2
    assert np.count_nonzero(synth["flags"] & F_SNAPSHOT) > 100
    assert np.count_nonzero(synth["flags"] & F_TOB) > 100
    assert len(books_of(synth)) >= 5
    assert len(set(synth["publisher_id"].tolist())) >= 3


def test_synth_kernel_equals_reference(synth, synth_frames):
    ne, re, got, want = synth_frames
    assert_frames_equal(got, want)
    assert ne.counters == re.counters
    assert ne.check() == 0
    assert_queries_equal(ne, re, synth, levels=10, extra_ids=300)
    # the generator never references unknown orders and never crosses a book
    assert sum(got.counters.values()) == 0
    assert not got.cross.any()
    assert len(got) == int(np.count_nonzero(synth["flags"] & F_LAST))


def test_synth_random_chunks_equal_one_pass(synth, synth_frames):
    _, _, _, want = synth_frames
    for seed in range(3):
        ne = NumbaEngine(levels=10)
        assert_frames_equal(replay(ne, synth, random_cuts(len(synth), 40, seed)), want)
        assert ne.check() == 0


def test_synth_tiny_state_grows_to_the_same_result(synth, synth_frames):
    _, _, _, want = synth_frames
    ne = NumbaEngine(levels=10, state=BookState(books=1, orders=2, levels=2, segment_pool=4))
    assert_frames_equal(ne.apply(synth), want)
    assert ne.check() == 0
    default = NumbaEngine(levels=10)
    default.apply(synth)
    assert ne.state.live_orders == default.state.live_orders
    assert sorted(ne.state.book_keys()) == sorted(default.state.book_keys())


def test_synth_checkpoint_copy_restore(synth, synth_frames):
    _, _, _, want = synth_frames
    half = len(synth) // 2 + 17
    first, rest = synth[:half], synth[half:]
    ne = NumbaEngine(levels=10)
    f1 = ne.apply(first, base_index=0)
    ckpt = ne.state.copy()
    counters_at_half = ne.counters
    f2 = ne.apply(rest, base_index=half)
    after = ne.counters
    joined = BookFrames.concat([f1, f2], 10)
    assert_frames_equal(joined, want)

    ne.state.restore(ckpt)
    assert ne.counters == counters_at_half
    assert_frames_equal(ne.apply(rest, base_index=half), f2)
    assert ne.counters == after
    assert ne.check() == 0

    ne.state.restore(ckpt)  # the checkpoint was not touched by the replay after restore
    assert_frames_equal(ne.apply(rest, base_index=half), f2)

    other = NumbaEngine(levels=10, state=ckpt.copy())  # a fresh engine from the checkpoint
    assert_frames_equal(other.apply(rest, base_index=half), f2)
    assert other.check() == 0


def test_synth_started_mid_stream(synth):
    """A slice that starts mid-stream: unknown cancels/modifies, orders missing."""
    recs = synth[123_457:163_457]
    ne, _, got, _ = compare(recs, levels=10, cuts=random_cuts(len(recs), 10, 4), ref_cuts=())
    assert got.counters["unknown_cancel"] > 0 and got.counters["unknown_modify"] > 0


def mutate(records: np.ndarray, seed: int) -> np.ndarray:
    """Adversarial damage: colliding ids across books, side N, UNDEF and extreme prices,
    zero and huge sizes, bad actions, TOB flags, book swaps, random F_LAST."""
    rng = np.random.default_rng(seed)
    r = records.copy()
    n = len(r)

    def pick(p):
        return rng.random(n) < p

    m = pick(0.3)
    r["order_id"][m] = rng.integers(0, 40, int(m.sum()))
    r["side"][pick(0.01)] = b"N"
    r["side"][pick(0.01)] = b"A"
    r["price"][pick(0.01)] = UNDEF
    m = pick(0.005)
    r["price"][m] = rng.choice([I64_MAX - 1, I64_MIN, I64_MIN + 1, -1, 0, 1], int(m.sum()))
    r["size"][pick(0.01)] = 0
    r["size"][pick(0.003)] = U32_MAX
    r["action"][pick(0.004)] = b"X"
    r["action"][pick(0.002)] = b"R"
    r["flags"][pick(0.01)] ^= F_TOB
    r["flags"][pick(0.005)] |= F_MBP
    m = pick(0.3)
    r["flags"][m] = np.where(rng.random(int(m.sum())) < 0.5, r["flags"][m] | F_LAST,
                             r["flags"][m] & ~np.uint8(F_LAST))
    m = pick(0.02)
    r["publisher_id"][m] = rng.choice([1, 2, 38, 9], int(m.sum()))
    return r


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_stream(synth, seed):
    recs = mutate(synth[seed * 40_000: seed * 40_000 + 30_000], seed)
    _, _, got, _ = compare(recs, levels=10, cuts=random_cuts(len(recs), 20, seed),
                           ref_cuts=())
    c = got.counters
    for name in ("unknown_cancel", "duplicate_add", "over_cancel", "side_none",
                 "undef_price", "zero_size", "bad_action"):
        assert c[name] > 0, name


def dense_random_stream(n: int, seed: int, ticks: int) -> np.ndarray:
    """Uniformly random records on three books (ids from a pool of 1,500, prices within
    ``ticks`` ticks): many levels or deep queues, so hash deletions, level inserts and
    removals and re-queues happen in bulk; plus rare clears, TOB adds, side N and bad
    actions."""
    rng = np.random.default_rng(seed)
    r = empty_records(n)
    r["ts_recv"] = np.arange(n, dtype=np.uint64) * 10 + 1
    books = np.array([(1, 1), (1, 2), (7, 1)])[rng.integers(0, 3, n)]
    r["instrument_id"], r["publisher_id"] = books[:, 0], books[:, 1]
    r["action"] = rng.choice(np.array([b"A", b"C", b"M", b"T", b"F", b"R", b"X", b"N"]), n,
                             p=[.4, .25, .2, .05, .05, .002, .004, .044])
    r["side"] = rng.choice(np.array([b"B", b"A", b"N"]), n, p=[.495, .495, .01])
    r["price"] = (1_000 + rng.integers(-ticks // 2, ticks - ticks // 2, n)) * 10_000_000
    r["size"] = rng.integers(0, 30, n)
    r["order_id"] = rng.integers(0, 1_500, n)
    r["flags"] = np.where(rng.random(n) < 0.5, F_LAST, 0)
    r["flags"][rng.random(n) < 0.003] |= F_TOB
    return r


@pytest.mark.parametrize("seed, ticks", [(0, 300), (1, 6)])
def test_dense_random_stream(seed, ticks):
    recs = dense_random_stream(30_000, seed, ticks)
    compare(recs, levels=10, cuts=random_cuts(len(recs), 15, seed), ref_cuts=())
    compare(recs, levels=3, state=BookState(books=1, orders=2, levels=2, segment_pool=4),
            queries=False)


def test_extreme_prices_far_apart(synth):
    """Books near int64 max, near int64 min, negative, and 10^5 times wider apart."""
    r = synth[:40_000].copy()
    px = r["price"]
    undef = px == UNDEF
    shifted = px.copy()
    iid, pub = r["instrument_id"], r["publisher_id"]
    shifted[iid == 1001] = px[iid == 1001] + (I64_MAX - 10**15)
    shifted[iid == 1002] = px[iid == 1002] + (I64_MIN + 10**15)
    shifted[(iid == 1003) & (pub == 1)] = -px[(iid == 1003) & (pub == 1)]
    shifted[(iid == 1003) & (pub != 1)] = px[(iid == 1003) & (pub != 1)] * 100_000
    shifted[undef] = UNDEF
    r["price"] = shifted
    assert (r["price"][~undef] != UNDEF).all()
    _, _, got, _ = compare(r, levels=10)
    defined = got.bid_px != UNDEF
    assert (got.bid_px[defined] > I64_MAX - 10**16).any()
    assert (got.ask_px[got.ask_px != UNDEF] < I64_MIN + 10**16).any()


def test_extreme_price_levels_every_record():
    rows = CASES["extreme_prices"]
    recs = build_records(rows)
    ne, _, got, _ = compare(recs, levels=6)
    assert got.cross[-1] == 2
    assert got.bid_px[-1, :4].tolist() == [1, 0, -5 * PX, I64_MIN]


# --------------------------------------------------------------------------- properties

BOOKS = [(1, 1), (1, 2), (2, 1), (2**32 - 1, 2**16 - 1)]
PRICES = [99 * PX, 100 * PX, 101 * PX, 102 * PX, UNDEF, I64_MAX - 1, I64_MIN, I64_MIN + 1,
          -PX, 0, 1]
IDS = [0, 1, 2, 3, 4, 5, 6, 2**63 - 1, 2**63, 2**64 - 1]

_price = st.one_of(st.sampled_from(PRICES), st.sampled_from(PRICES),
                   st.integers(I64_MIN, I64_MAX - 1))
_size = st.one_of(st.sampled_from([0, 1, 1, 2, 3, 5, 10]),
                  st.sampled_from([U32_MAX, U32_MAX - 1]), st.integers(0, U32_MAX))
_flags = st.one_of(st.sampled_from([0, F_LAST, F_LAST, F_LAST | F_SNAPSHOT]),
                   st.sampled_from([F_TOB, F_TOB | F_LAST]), st.integers(0, 255))


@st.composite
def _record(draw, last: bool):
    iid, pub = draw(st.sampled_from(BOOKS))
    row = dict(
        instrument_id=iid, publisher_id=pub,
        action=draw(st.sampled_from("AAAAACCCCMMMMRTFNXB")),
        side=draw(st.sampled_from("BBBAAAN")),
        price=draw(_price), size=draw(_size), order_id=draw(st.sampled_from(IDS)),
        flags=draw(_flags),
    )
    if last:
        row["flags"] |= F_LAST
    return row


def _stream(last: bool, max_size: int = 80):
    return st.lists(_record(last), min_size=1, max_size=max_size)


PROPS = settings(max_examples=250, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPS
@given(rows=_stream(last=True))
def test_property_every_record(rows):
    """Random and adversarial streams, state compared after every record."""
    compare(build_records(rows), levels=4)


@PROPS
@given(rows=_stream(last=False, max_size=120), data=st.data())
def test_property_random_flags_and_chunks(rows, data):
    recs = build_records(rows)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(recs) - 1)), max_size=8))
    ref_cuts = data.draw(st.lists(st.integers(1, max(1, len(recs) - 1)), max_size=3))
    compare(recs, levels=3, cuts=cuts, ref_cuts=ref_cuts)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=_stream(last=True, max_size=150))
def test_property_tiny_state_grows(rows):
    compare(build_records(rows), levels=3,
            state=BookState(books=1, orders=2, levels=2, segment_pool=4))


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=_stream(last=False, max_size=100), cut=st.integers(0, 100))
def test_property_checkpoint_restore(rows, cut):
    recs = build_records(rows)
    cut = min(cut, len(recs))
    ne = NumbaEngine(levels=3)
    ne.apply(recs[:cut])
    ckpt = ne.state.copy()
    f1 = ne.apply(recs[cut:], base_index=cut)
    c1 = ne.counters
    ne.state.restore(ckpt)
    assert_frames_equal(ne.apply(recs[cut:], base_index=cut), f1)
    assert ne.counters == c1
    assert ne.check() == 0


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=_stream(last=True, max_size=60), levels=st.integers(1, 12))
def test_property_levels_and_sorted(rows, levels):
    """Any depth: equal to the reference, levels sorted and packed (no gaps)."""
    _, _, got, _ = compare(build_records(rows), levels=levels, queries=False)
    for px, sz, ct, sign in ((got.bid_px, got.bid_sz, got.bid_ct, -1),
                             (got.ask_px, got.ask_sz, got.ask_ct, 1)):
        defined = px != UNDEF
        assert (sz[defined] > 0).all() and (ct >= 0).all()
        assert (sz[~defined] == 0).all() and (ct[~defined] == 0).all()
        assert (defined[:, 1:] <= defined[:, :-1]).all()  # packed toward level 0
        both = defined[:, 1:] & defined[:, :-1]
        step = np.sign(px[:, 1:].astype(object) - px[:, :-1].astype(object))
        assert (step[both] == sign).all()


# --------------------------------------------------------------------------- misuse


def test_engine_misuse_raises_engine_error():
    with pytest.raises(EngineError, match="levels"):
        NumbaEngine(levels=0)
    with pytest.raises(EngineError, match="levels"):
        ReferenceEngine(levels=0)
    with pytest.raises(EngineError, match="numba"):
        make_engine("fast")
    for eng in (NumbaEngine(), ReferenceEngine()):
        with pytest.raises(EngineError, match="MBO"):
            eng.apply(np.zeros(3, np.int64))
        with pytest.raises(EngineError):
            eng.apply([1, 2, 3])
    assert isinstance(make_engine("reference", levels=2), ReferenceEngine)
    assert isinstance(make_engine(), NumbaEngine)


def test_empty_input_and_unknown_book_queries():
    for eng in (NumbaEngine(levels=3), ReferenceEngine(levels=3)):
        f = eng.apply(build_records([]))
        assert len(f) == 0 and f.bid_px.shape == (0, 3)
        assert eng.order(1, 1, 1) is None
        top = eng.top(5, 5)
        assert top.bid_px.tolist() == [[UNDEF] * 3] and top.cross.tolist() == [0]
    assert NumbaEngine().check() == 0


# --------------------------------------------------------------------------- level log


def _ref_levels(book) -> dict[tuple[int, int], int]:
    """All levels of a reference book as ``{(side 0/1, price): size}``."""
    return {**{(0, p): s for p, s, _ in book.levels(SIDE_B)},
            **{(1, p): s for p, s, _ in book.levels(SIDE_A)}}


def check_level_log(records: np.ndarray, iid: int, pub: int, cuts=(), start: int = 0,
                    every_record: bool = True, state: BookState | None = None) -> int:
    """Replaying the kernel's level log of book ``(iid, pub)`` onto its levels at record
    ``start`` (from :meth:`NumbaEngine.book_levels`) gives the reference book's levels
    after every record of the book (``every_record``) or at the book's F_LAST records.
    Returns the number of log rows checked."""
    from mbo_lab.book.reference import Market, _iter_fields

    ne = NumbaEngine(levels=2, state=state)
    if start:
        ne.apply(records[:start])
    bpx, bsz, bct, apx, asz, act_ = ne.book_levels(iid, pub)
    m = Market()
    fields = list(_iter_fields(records))
    for row in fields[:start]:
        m.apply(*row)
    ref = m.books.get((iid, pub))
    if ref is None:
        assert len(bpx) == len(apx) == 0
    else:
        assert [tuple(x) for x in zip(bpx.tolist(), bsz.tolist(), bct.tolist())] == \
            ref.levels(SIDE_B)
        assert [tuple(x) for x in zip(apx.tolist(), asz.tolist(), act_.tolist())] == \
            ref.levels(SIDE_A)
    levels = {**{(0, p): s for p, s in zip(bpx.tolist(), bsz.tolist())},
              **{(1, p): s for p, s in zip(apx.tolist(), asz.tolist())}}
    bounds = [start, *sorted(set(int(c) for c in cuts if start < c < len(records))),
              len(records)]
    logs = []
    for a, b in zip(bounds, bounds[1:]):
        f = ne.apply(records[a:b], base_index=a, log_key=book_key(iid, pub))
        assert f.level_log.dtype == np.int64 and f.level_log.shape[1] == 4
        if len(f.level_log):
            assert a <= f.level_log[:, 0].min() and f.level_log[:, 0].max() < b
        logs.append(f.level_log)
    log = np.concatenate(logs) if logs else np.zeros((0, 4), np.int64)
    assert (np.diff(log[:, 0]) >= 0).all(), "rows in record order"
    assert np.isin(log[:, 1], [0, 1]).all() and (log[:, 3] >= 0).all()
    rows = log.tolist()
    j = 0
    for i in range(start, len(records)):
        row = fields[i]
        m.apply(*row)
        while j < len(rows) and rows[j][0] == i:
            _, side, px, sz = rows[j]
            if sz:
                levels[(side, px)] = sz
            else:
                assert levels.pop((side, px), None) is not None, f"record {i}: removed " \
                    "a level that did not exist"
            j += 1
        if (row[0], row[1]) != (iid, pub):
            continue
        if every_record or row[7] & F_LAST:
            assert levels == _ref_levels(m.book(iid, pub)), f"record {i}"
    assert j == len(rows)
    return len(rows)


SIDE_B, SIDE_A = ord("B"), ord("A")


def test_level_log_clx5(clx5):
    recs = clx5.records
    books = sorted(books_of(recs), key=lambda k: -int(np.count_nonzero(
        (recs["instrument_id"] == k[0]) & (recs["publisher_id"] == k[1]))))
    n = check_level_log(recs, *books[0], every_record=False)
    assert n > 1000
    check_level_log(recs, *books[0], cuts=random_cuts(len(recs), 20, 1), start=5_000,
                    every_record=False)
    if len(books) > 1:
        check_level_log(recs, *books[1], every_record=False)


def test_level_log_synth_clears_and_tob(synth, monkeypatch):
    import mbo_lab.book.engine as E

    monkeypatch.setattr(E, "LOG_INIT_ROWS", 1)  # the log grows at once, also mid-clear
    recs = synth[:60_000]
    tob = recs[(recs["flags"] & F_TOB) != 0]
    tob_book = (int(tob["instrument_id"][0]), int(tob["publisher_id"][0]))
    clears = recs[recs["action"] == b"R"]
    clear_book = (int(clears["instrument_id"][0]), int(clears["publisher_id"][0]))
    assert check_level_log(recs, *tob_book, every_record=False) > 100
    assert check_level_log(recs, *clear_book, every_record=False,
                           cuts=random_cuts(len(recs), 10, 2)) > 100
    # tiny state and log: growth of both in the middle of clears and TOB records
    check_level_log(recs[:20_000], *clear_book, start=7_000,
                    state=BookState(books=1, orders=2, levels=2, segment_pool=4))


@pytest.mark.parametrize("name", sorted(CASES))
def test_level_log_hand_written(name):
    recs = build_records(CASES[name])
    for iid, pub in books_of(recs):
        check_level_log(recs, iid, pub)
        check_level_log(recs, iid, pub, cuts=range(1, len(recs)))


def test_level_log_off_is_empty_and_key_checked(synth):
    ne = NumbaEngine(levels=1)
    f = ne.apply(synth[:1000])
    assert f.level_log.shape == (0, 4)
    f = ne.apply(synth[1000:2000], log_key=book_key(999_999, 9))  # no such book
    assert f.level_log.shape == (0, 4)
    with pytest.raises(EngineError):
        ne.apply(synth[:10], log_key=-1)
    with pytest.raises(EngineError):
        book_key(2**32, 1)
    assert book_key(3, 2) == (3 << 16) | 2
    assert all(len(x) == 0 for x in NumbaEngine().book_levels(1, 1))


@PROPS
@given(rows=_stream(last=False, max_size=100), data=st.data())
def test_property_level_log(rows, data):
    recs = build_records(rows)
    iid, pub = data.draw(st.sampled_from(BOOKS))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(recs) - 1)), max_size=5))
    start = data.draw(st.integers(0, len(recs)))
    check_level_log(recs, iid, pub, cuts=cuts, start=start)


# --------------------------------------------------------------------------- hash seeding

_M64 = (1 << 64) - 1


def _crafted_ids(k0: int, k1: int, n: int, book: int = 0) -> list[int]:
    """Order ids whose home row is 0 in every table of up to 2**24 rows under the seeds
    ``(k0, k1)``: the kernel's mix inverted step by step."""
    from mbo_lab.book import kernel as K

    mix1, mix2 = int(K._MIX1), int(K._MIX2)
    inv2, inv1 = pow(mix2, -1, 1 << 64), pow(k1 & _M64, -1, 1 << 64)
    out = []
    for j in range(1, n + 1):
        h = (j << 24) & _M64
        h = h ^ (h >> 29) ^ (h >> 58)  # undo h ^= h >> 29
        h = (h * inv2) & _M64  # undo * MIX2
        h = h ^ (h >> 32)  # undo h ^= h >> 32
        x = (h * inv1) & _M64  # undo * k1
        out.append(x ^ (k0 & _M64) ^ ((book * mix1) & _M64))
    return out


def test_order_hash_is_seeded_against_crafted_ids():
    from mbo_lab.book import kernel as K

    n = 3_000
    known = BookState(seed=123)
    k0, k1 = (int(x) for x in known.seeds)
    ids = _crafted_ids(k0, k1, n)
    rows = [rec("A", "B", (100 + i % 7) * PX, 1, oid, flags=0) for i, oid in enumerate(ids)]
    rows.append(rec("C", "B", 100 * PX, 1, ids[0]))
    recs = build_records(rows)

    # against the seeds they were made for, the ids pile onto one row (the attack works)
    ne = NumbaEngine(levels=2, state=known)
    ne.apply(recs[:-1])
    worst, total = K.probe_stats(known.arrays["meta"], known.arrays["oh"])
    assert worst >= n - 1 and total >= n * (n - 1) // 2

    # a fresh state draws other seeds: the same ids scatter, and results are unchanged
    fresh = BookState()
    assert (int(fresh.seeds[0]), int(fresh.seeds[1])) != (k0, k1)
    assert int(fresh.seeds[1]) & 1 == 1
    ne, re, got, want = compare(recs, levels=2, state=fresh)
    worst, total = K.probe_stats(fresh.arrays["meta"], fresh.arrays["oh"])
    assert ne.state.live_orders == n - 1
    assert worst < 40 and total < 2 * n, (worst, total)

    # checkpoints keep the seeds: a copy continues exactly like the original
    ckpt = fresh.copy()
    assert [int(x) for x in ckpt.seeds] == [int(x) for x in fresh.seeds]
    more = build_records([rec("C", "B", 100 * PX, 1, oid) for oid in ids[1:50]])
    f1 = NumbaEngine(levels=2, state=ckpt).apply(more, base_index=0)
    f2 = ne.apply(more, base_index=0)
    assert_frames_equal(f1, f2)
    assert np.array_equal(ckpt.arrays["oh"], fresh.arrays["oh"])


def test_book_hash_is_seeded():
    """Many instrument ids: every book is found again after growth, in any state."""
    rows = [rec("A", "B", 100 * PX, 1, 1, iid=(j << 20) + 1, pub=1) for j in range(300)]
    recs = build_records(rows)
    compare(recs, levels=1, state=BookState(books=1))
    a, b = BookState(), BookState()
    assert [int(x) for x in a.seeds] != [int(x) for x in b.seeds]
