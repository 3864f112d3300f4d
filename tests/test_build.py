"""``mbp``/``bbo``/``replay_frames``/``iter_frames``: equal to the reference book, sampled
in the kernel exactly as the reference states sampled by pandas, outputs without copies.

The oracle for every option is the reference book (``ReferenceEngine``) plus a plain
pandas selection written here: grid sampling = the last reference state of each
(book, ts_recv bin); change-only = the reference states whose published top-N differs
from the previous kept state of the same book.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import build_records, fail_on_call, rec

import mbo_lab
from mbo_lab.book import frames as FR
from mbo_lab.book.build import every_ns, iter_frames, replay_frames
from mbo_lab.book.engine import NumbaEngine, ReferenceEngine
from mbo_lab.book.frames import BookFrames
from mbo_lab.errors import EngineError
from mbo_lab.io.dbn import write_dbn
from mbo_lab.io.records import F_LAST

LEVEL_FIELDS = ("bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross")


@pytest.fixture(scope="module")
def small_synth() -> np.ndarray:
    """30k synthetic records (5 books, clears, a top-of-book publisher), ~2 min of time."""
    return mbo_lab.synth_records(30_000, seed=7, clear_snapshot_every=8_000,
                                 tob_publisher=True)


def reference_frames(records: np.ndarray, levels: int) -> BookFrames:
    return ReferenceEngine(levels=levels).apply(records)


@pytest.fixture(scope="module")
def ref(small_synth):
    """``ref(levels)``: the reference book's frames of ``small_synth`` (computed once per
    number of levels in this module; do not modify them)."""
    cache: dict[int, BookFrames] = {}

    def get(levels: int) -> BookFrames:
        if levels not in cache:
            cache[levels] = reference_frames(small_synth, levels)
        return cache[levels]

    return get


def state_table(fr: BookFrames, records: np.ndarray) -> pd.DataFrame:
    """One row per state: book key, ts_recv, record index and the published state."""
    r = records[fr.index]
    out = pd.DataFrame({
        "book": (r["instrument_id"].astype(np.int64) << 16) | r["publisher_id"],
        "ts": r["ts_recv"].astype(np.int64),
        "index": fr.index,
    })
    out["state"] = [b"".join(np.ascontiguousarray(getattr(fr, f)[i]).astype(np.int64)
                             .tobytes() for f in LEVEL_FIELDS) for i in range(len(fr))]
    return out


def oracle_rows(fr: BookFrames, records: np.ndarray, every: int | None,
                changes_only: bool) -> np.ndarray:
    """Rows of the reference frames that sampling must keep, in record order."""
    t = state_table(fr, records)
    if every:
        t = t.assign(bin=np.floor_divide(t["ts"], every))
        t = t.groupby(["book", "bin"], sort=False).tail(1).sort_values("index")
    if changes_only:
        prev = t.groupby("book", sort=False)["state"].shift()
        t = t[t["state"] != prev]
    return t.index.to_numpy()


def assert_same_states(got: BookFrames, want: BookFrames, rows: np.ndarray) -> None:
    assert got.index.tolist() == want.index[rows].tolist()
    for f in LEVEL_FIELDS:
        a = np.asarray(getattr(got, f))
        b = np.asarray(getattr(want, f))[rows]
        assert np.array_equal(a.astype(np.int64), b.astype(np.int64)), f


def assert_df_equals_reference(df: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(df.columns) == list(ref.columns)
    assert (df.index == ref.index).all()
    for c in df.columns:
        a, b = df[c].to_numpy(), ref[c].to_numpy()
        if c == "symbol":
            a, b = a.astype(str), b.astype(str)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), c


# --------------------------------------------------------------------------- every F_LAST


def test_mbp_equals_reference_clx5(clx5):
    df = mbo_lab.mbp(clx5, levels=10)
    ref = mbo_lab.mbp(clx5, levels=10, engine="reference")
    assert_df_equals_reference(df, ref)
    assert len(df) == int(np.count_nonzero(clx5.records["flags"] & F_LAST))
    # Databento's MBP-10 types: uint32 sizes and counts, categorical symbol
    assert df["bid_sz_00"].dtype == np.uint32 and df["ask_ct_09"].dtype == np.uint32
    assert isinstance(df["symbol"].dtype, pd.CategoricalDtype)
    assert set(df["symbol"].astype(str)) == set(clx5.symbols.values())
    assert df.attrs["counters"] == ref.attrs["counters"]


@pytest.mark.parametrize("chunk", [997, 1 << 20])
def test_mbp_bbo_equal_reference_synth(small_synth, chunk):
    for price_type in ("float", "fixed"):
        df = mbo_lab.mbp(small_synth, levels=4, chunk_records=chunk, price_type=price_type)
        ref = mbo_lab.mbp(small_synth, levels=4, engine="reference", price_type=price_type)
        assert_df_equals_reference(df, ref)
    assert_df_equals_reference(mbo_lab.bbo(small_synth, chunk_records=chunk),
                               mbo_lab.bbo(small_synth, engine="reference"))


def test_replay_frames_keeps_int64_defaults(ref, small_synth):
    """Analytics and other callers get the documented frame types unless they ask."""
    fr, _ = replay_frames(small_synth, 3)
    assert fr.bid_px.dtype == np.int64 and fr.bid_sz.dtype == np.int64
    assert fr.bid_ct.dtype == np.int32
    want = ref(3)
    assert fr.equals(want) and np.array_equal(fr.trades, want.trades)
    assert fr.fields["ts_recv"].tolist() == \
        small_synth["ts_recv"][fr.index].astype(np.int64).tolist()


def test_sizes_widen_when_uint32_is_not_exact():
    """Two orders of 2**32 - 1 lots at one price: the level needs int64."""
    big = 2**32 - 1
    recs = build_records([rec("A", "B", 100, big, 1), rec("A", "B", 100, big, 2),
                          rec("A", "A", 101, 5, 3)])
    df = mbo_lab.bbo(recs)
    assert df["bid_sz_00"].dtype == np.int64
    assert df["bid_sz_00"].tolist() == [big, 2 * big, 2 * big]
    assert_df_equals_reference(df, mbo_lab.bbo(recs, engine="reference"))


def test_to_df_shares_memory_and_symbols():
    recs = build_records([rec("A", "B", 100, 5, 1, iid=7), rec("A", "A", 101, 5, 2, iid=8),
                          rec("A", "A", 102, 5, 3, iid=9)])
    fr, data = replay_frames(recs, 2, price_type="float", compact=True)
    df = fr.to_df(None, {7: "AAA", 8: "BBB"})
    assert np.shares_memory(df["bid_px_00"].to_numpy(), fr.bid_px)
    assert np.shares_memory(df["ask_sz_01"].to_numpy(), fr.ask_sz)
    assert np.shares_memory(df["sequence"].to_numpy(), fr.fields["sequence"])
    assert df["symbol"].astype(str).tolist() == ["AAA", "BBB", ""]
    # frames without record fields gather them from the records
    plain = NumbaEngine(2).apply(recs)
    assert plain.fields is None
    d2 = plain.to_df(recs, {7: "AAA"})
    assert d2["symbol"].astype(str).tolist() == ["AAA", "", ""]
    assert (d2.index == df.index).all()
    with pytest.raises(ValueError, match="records"):
        plain.to_df()


def test_passes_check_the_file_first(small_synth, monkeypatch):
    data = mbo_lab.MboData(small_synth)

    class Changed(mbo_lab.DataError):
        pass

    def boom():
        raise Changed("file changed")

    monkeypatch.setattr(data, "check_unchanged", boom, raising=False)
    with pytest.raises(Changed):
        mbo_lab.bbo(data)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("every", [12_345, 1_000_000, 100_000_000, 1_000_000_000])
@pytest.mark.parametrize("changes_only", [False, True])
def test_grid_sampling_equals_reference_last_state_per_bin(ref, small_synth, every,
                                                           changes_only):
    want = ref(3)
    rows = oracle_rows(want, small_synth, every, changes_only)
    assert 0 < len(rows) < len(want)
    for chunk in (1 << 20, 1_009):
        got, _ = replay_frames(small_synth, 3, every=every, changes_only=changes_only,
                               chunk_records=chunk)
        assert_same_states(got, want, rows)
    ref, _ = replay_frames(small_synth, 3, engine="reference", every=every,
                           changes_only=changes_only)
    assert_same_states(ref, want, rows)


def test_changes_only_equals_deduplicated_reference(small_synth, clx5):
    for recs, levels in ((small_synth, 2), (small_synth, 10), (clx5.records, 1),
                         (clx5.records, 5)):
        want = reference_frames(recs, levels)
        rows = oracle_rows(want, recs, None, True)
        assert 0 < len(rows) < len(want)
        got, _ = replay_frames(recs, levels, changes_only=True, chunk_records=4_001)
        assert_same_states(got, want, rows)


def test_sampling_hand_written_books_and_bins():
    """Two books interleaved, bins of 10 us (records are 1 us apart)."""
    rows = []
    for k in range(60):
        iid = 1 + (k % 3 == 0)
        rows.append(rec("A", "B" if k % 2 else "A", 100 + k % 4, 1 + k % 3, k, iid=iid))
        if k % 7 == 0:
            rows.append(rec("T", "B", 100, 1, 0, iid=3))  # F_LAST of a book without orders
    recs = build_records(rows)
    want = reference_frames(recs, 2)
    for every in (1, 10_000, 7_000, 10**12):
        for co in (False, True):
            got = mbo_lab.mbp(recs, 2, every=every, changes_only=co, price_type="fixed")
            r = oracle_rows(want, recs, every, co)
            assert got["record_index"].tolist() == want.index[r].tolist()
            assert got["bid_px_01"].tolist() == want.bid_px[r, 1].tolist()


def test_mbp_every_string_and_dataframe(ref, small_synth):
    df = mbo_lab.mbp(small_synth, levels=2, every="100ms")
    want = ref(2)
    rows = oracle_rows(want, small_synth, 100_000_000, False)
    assert df["record_index"].tolist() == want.index[rows].tolist()
    assert df.index.is_monotonic_increasing
    bb = mbo_lab.bbo(small_synth, every=pd.Timedelta("100ms"))
    w1 = ref(1)
    assert bb["record_index"].tolist() == w1.index[oracle_rows(w1, small_synth, 10**8,
                                                               False)].tolist()


def test_every_parsing():
    assert every_ns("100ms") == 100_000_000
    assert every_ns("1s") == every_ns(pd.Timedelta(seconds=1)) == 10**9
    assert every_ns(5) == 5 and every_ns(None) is None
    for bad in ("soon", 0, -5, "0s", 1.5):
        with pytest.raises(EngineError):
            every_ns(bad)
    with pytest.raises(EngineError):
        NumbaEngine(2, every=0)


# --------------------------------------------------------------------------- streaming


def test_iter_frames_streams_samples_and_reuses(ref, small_synth, tmp_path):
    path = tmp_path / "s.dbn"
    write_dbn(path, small_synth)
    want = ref(3)
    parts = [fr for _, fr in iter_frames(path, 3, chunk_records=2_500, reuse=False)]
    assert BookFrames.concat(parts, 3).equals(want)
    # reused buffers: consume each chunk before the next
    got_idx, got_px, bufs = [], [], set()
    for chunk, fr in iter_frames(path, 3, chunk_records=2_500):
        assert len(fr) == 0 or fr.index[0] >= chunk.first_index
        got_idx += fr.index.tolist()
        got_px.append(np.array(fr.bid_px))
        bufs.add(fr.index.__array_interface__["data"][0] if len(fr) else None)
    assert got_idx == want.index.tolist()
    assert np.array_equal(np.concatenate(got_px), want.bid_px)
    assert len(bufs - {None}) <= 2  # one buffer (plus at most one regrowth)
    # sampled across chunk boundaries, with the pending states after the last chunk
    for every, co in ((50_000_000, False), (10**9, True), (None, True)):
        parts = [fr.copy() for _, fr in iter_frames(path, 3, chunk_records=2_500,
                                                    every=every, changes_only=co)]
        got = BookFrames.concat(parts, 3)
        assert_same_states(got, want, oracle_rows(want, small_synth, every, co))
        df = got.to_df(None, {})
        assert df["record_index"].tolist() == got.index.tolist()


def test_iter_frames_rotating_buffers_keep_the_previous_chunk(ref, small_synth, tmp_path):
    """buffers=2: a chunk's frames stay intact while the next chunk is written (into the
    other buffer), two buffers in all, states equal to the reference; sampled too."""
    path = tmp_path / "s.dbn"
    write_dbn(path, small_synth)
    want = ref(3)
    kept, addrs = [], set()
    prev = None
    for _, fr in iter_frames(path, 3, chunk_records=2_000, buffers=2):
        if prev is not None:  # the previous chunk's view still holds its states
            assert np.array_equal(prev[0].index, prev[1]) and \
                np.array_equal(prev[0].bid_px, prev[2])
        prev = (fr, fr.index.copy(), fr.bid_px.copy())
        kept.append(fr.copy())
        if len(fr):
            addrs.add(fr.index.__array_interface__["data"][0])
    assert BookFrames.concat(kept, 3).equals(want)
    assert len(addrs) == 2
    parts = [fr.copy() for _, fr in iter_frames(path, 3, chunk_records=2_000, buffers=2,
                                                every=10**9, changes_only=True)]
    assert_same_states(BookFrames.concat(parts, 3), want,
                       oracle_rows(want, small_synth, 10**9, True))
    with pytest.raises(EngineError):
        next(iter_frames(path, 3, buffers=0))


# --------------------------------------------------------------------------- first call

_FIRST_CALL = r"""
import sys, numba, mbo_lab
heavy = {"mbo_lab.analytics", "mbo_lab.store", "mbo_lab.replay", "mbo_lab.serve",
         "mbo_lab.viz", "mbo_lab.io.fetch", "mbo_lab.io.live", "asyncio", "tornado",
         "ipywidgets", "bqplot", "dask"}
print("IMPORTED", sorted(m for m in heavy if m in sys.modules))
mbo_lab.warmup()

def signatures():
    out = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("mbo_lab"):
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, numba.core.dispatcher.Dispatcher):
                out[f"{name}.{attr}"] = len(obj.signatures)
    return out

demo = mbo_lab.load(mbo_lab.demo_path())  # several books (generated before the snapshot)
before = signatures()
data = mbo_lab.load(sys.argv[1])
mbo_lab.bbo(data)
mbo_lab.mbp(data, levels=10)
s = mbo_lab.open(data, progress=False)
s.seek(len(data) // 2)
s.step(5)
s.back(2)
from mbo_lab.book import build as B
assert B._plan_threads(B._readonly(demo.records), 2)[0] == 2
mbo_lab.bbo(demo, threads=2)  # a day on idle CPUs: books in threads
mbo_lab.mbp(demo, levels=10, threads=2)
after = signatures()
print("NEW", sorted(k for k in after if after[k] != before.get(k, 0)))
"""


def test_import_is_light_and_warmup_covers_the_first_calls(clx5_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(clx5_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines()
                 if line.startswith(("IMPORTED", "NEW")))
    assert lines["IMPORTED"] == "[]", "import mbo_lab loaded " + lines["IMPORTED"]
    assert lines["NEW"] == "[]", "compiled after warmup(): " + lines["NEW"]


def test_lazy_names_resolve():
    import mbo_lab as m

    assert callable(m.open) and m.open is m.open_session
    assert callable(m.export) and callable(m.read_store) and callable(m.fetch)
    assert hasattr(m.analytics, "spread") and m.store.export is m.export
    assert callable(m.batch) and m.SPEED_MAX > 0
    assert set(m.__all__) <= set(dir(m))
    with pytest.raises(AttributeError):
        m.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_equal_one_pass_and_reference(small_synth, clx5, threads):
    """Books split over threads (each its own state) give exactly the one-thread frames,
    trades and counters, equal to the reference book."""
    from mbo_lab.book import build as B

    for recs, levels in ((small_synth, 4), (clx5.records, 3)):
        want = reference_frames(recs, levels)
        one, _ = replay_frames(recs, levels, threads=1)
        for mul in B._PART_MULS[:3]:
            kr = np.asarray(recs).view(mbo_lab.io.records.MBO_KERNEL_DTYPE)
            sizes = B._part_sizes(kr, 1, threads, mul)
            assert sizes.sum() == len(recs)
            got = B._run_threads  # the planner may refuse an uneven split: force one
            buf = B.FrameBuffer(int(np.count_nonzero(recs["flags"] & F_LAST)), levels,
                                column_major=True, fields=True)
            tr = np.empty(len(want.trades), np.int64)
            counters = got(B._readonly(recs), buf, tr, levels, threads, mul, 997, None)
            fr = buf.frames(buf.capacity)
            assert fr.equals(want) and np.array_equal(tr, want.trades)
            assert counters == want.counters == one.counters
            assert fr.fields["sequence"].tolist() == recs["sequence"][fr.index].tolist()
        assert one.equals(want)


def test_select_part_gathers_one_part_with_global_rows(small_synth):
    """kernel.select_part: the records of one part, in order, with each one's row among
    all F_LAST states and all trades of the stream (numpy oracle), for every part."""
    from mbo_lab.book import build as B

    kr = B._readonly(small_synth)
    words = kr.view(np.int64).reshape(len(kr), 7)
    key = ((kr["instrument_id"].astype(np.int64) << 16) | kr["publisher_id"]) + 1
    is_last = (kr["flags"] & F_LAST) != 0
    is_trade = kr["action"] == ord("T")
    for nparts, mul in ((2, B._PART_MULS[0]), (3, B._PART_MULS[1])):
        h = (key.astype(np.uint64) * np.uint64(mul)) >> np.uint64(32)
        parts = ((h * np.uint64(nparts)) >> np.uint64(32)).astype(np.int64)
        assert set(parts.tolist()) <= set(range(nparts))
        for p in range(nparts):
            sel = [np.full(len(kr), -7, np.int64) for _ in range(3)]
            g = np.zeros(len(kr), kr.dtype)
            m, n_out, n_tr = B.K.select_part(kr, words, nparts, p, np.uint64(mul), 5, 9,
                                             *sel, g.view(np.int64).reshape(len(kr), 7))
            want = np.flatnonzero(parts == p)
            assert m == len(want) and n_out == 5 + is_last.sum() and n_tr == 9 + is_trade.sum()
            assert np.array_equal(sel[0][:m], want)
            assert np.array_equal(sel[1][:m], 5 + (np.cumsum(is_last) - is_last)[want])
            assert np.array_equal(sel[2][:m], 9 + (np.cumsum(is_trade) - is_trade)[want])
            assert g[:m].tobytes() == kr[want].tobytes()


def test_threads_plan_strided_records_and_few_books(small_synth):
    """Strided records (a view) stay on one thread and still equal the reference; no more
    threads than books with records."""
    from mbo_lab.book import build as B

    strided = B._readonly(small_synth)[::2]
    assert B._plan_threads(strided, 2) == (1, 1)
    assert_df_equals_reference(mbo_lab.bbo(mbo_lab.MboData(small_synth[::2]), threads=2),
                               mbo_lab.bbo(mbo_lab.MboData(small_synth[::2]),
                                           engine="reference"))
    kr = B._readonly(small_synth)
    books = len(np.unique((kr["instrument_id"].astype(np.int64) << 16) | kr["publisher_id"]))
    n, mul = B._plan_threads(kr, 64)
    assert 1 < n <= books
    assert np.count_nonzero(B._part_sizes(kr, max(1, len(kr) // 100_000), n, mul)) == n


@pytest.mark.timeout(60)
def test_threads_error_in_a_worker_is_raised_not_hung(small_synth, monkeypatch):
    """A failure in any thread reaches the caller; threads waiting on it do not hang."""
    from mbo_lab.book import build as B

    kr = B._readonly(small_synth)
    calls = fail_on_call(monkeypatch, B.NumbaEngine, "run", 3, EngineError("injected"))
    n_last = int(np.count_nonzero(kr["flags"] & F_LAST))
    buf = B.FrameBuffer(n_last, 2, column_major=True, fields=True)
    for threads in (2, 3):
        calls["n"] = 0
        with pytest.raises(EngineError, match="injected"):
            B._run_threads(kr, buf, np.empty(len(kr), np.int64), 2, threads,
                           B._PART_MULS[0], 997, None)


def test_threads_option_and_planner(small_synth, monkeypatch):
    from mbo_lab.book import build as B

    kr = B._readonly(small_synth)
    assert B._plan_threads(kr, 1) == (1, 1)
    assert B._plan_threads(kr, None) == (1, 1)  # small streams: one thread
    monkeypatch.setattr(B, "PARALLEL_MIN_RECORDS", 1000)
    monkeypatch.setenv("MBO_LAB_THREADS", "2")
    assert B._plan_threads(kr, None) == B._plan_threads(kr, 2)
    assert B._plan_threads(kr[:10], None) == (1, 1)  # small streams stay on one thread
    monkeypatch.setenv("MBO_LAB_THREADS", "1")
    assert B._plan_threads(kr, None) == (1, 1)
    monkeypatch.delenv("MBO_LAB_THREADS")
    # auto: the CPUs idle right now, less those reserved (the prefault thread)
    busy = B._busy_cpus()  # runnable tasks besides this one (may exceed the CPUs)
    assert isinstance(busy, float) and busy >= 0
    monkeypatch.setattr(B, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(B, "_busy_cpus", lambda: 0.0)
    assert B._auto_threads() == 2
    assert B._auto_threads(reserve=1) == 1
    monkeypatch.setattr(B, "_busy_cpus", lambda: 1.0)
    assert B._auto_threads() == 1  # the other core is busy
    monkeypatch.setattr(B, "_usable_cpus", lambda: 1)
    monkeypatch.setattr(B, "_busy_cpus", lambda: 0.0)
    assert B._auto_threads() == 1
    monkeypatch.setattr(B, "_usable_cpus", lambda: 16)
    assert B._auto_threads() == 4
    assert B._auto_threads(reserve=1) == 4
    monkeypatch.setattr(B, "_busy_cpus", lambda: 13.0)
    assert B._auto_threads(reserve=1) == 2
    n, mul = B._plan_threads(kr, 2)
    if n == 2:
        sizes = B._part_sizes(kr, 1, 2, mul)
        assert sizes.max() <= 0.8 * sizes.sum()
    with pytest.raises(EngineError):
        B._plan_threads(kr, 0)
    monkeypatch.setenv("MBO_LAB_THREADS", "2")
    df = mbo_lab.bbo(small_synth)
    assert_df_equals_reference(df, mbo_lab.bbo(small_synth, engine="reference"))
    threaded = mbo_lab.mbp(small_synth, 3, threads=2)
    assert threaded.attrs["threads"] == B._plan_threads(kr, 2)[0]
    assert mbo_lab.mbp(small_synth, 3, threads=1).attrs["threads"] == 1
    assert_df_equals_reference(threaded, mbo_lab.mbp(small_synth, 3, engine="reference"))


def _resident_fraction(arrays) -> float:
    """Share of the pages under ``arrays`` that are resident (``mincore``): exact for the
    buffer itself, whatever else the process maps or frees meanwhile."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = 4096
    res = total = 0
    for a in arrays:
        lo = a.ctypes.data // page * page
        hi = -(-(a.ctypes.data + a.nbytes) // page) * page
        n = (hi - lo) // page
        vec = (ctypes.c_ubyte * n)()
        assert libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), vec) == 0
        res += sum(v & 1 for v in vec)
        total += n
    return res / total


@pytest.mark.skipif(not sys.platform.startswith("linux") or not FR.populate_supported(),
                    reason="MADV_POPULATE_WRITE is Linux >= 5.14")
def test_prefault_maps_pages_and_keeps_contents():
    """The prefault thread makes the buffer resident without touching what is written."""
    # 115 bytes per row: ~115 MiB, over PREFAULT_MIN_BYTES (64 MiB)
    buf = FR.FrameBuffer(1 << 20, 2, column_major=True, fields=True)
    buf.index[:1000] = np.arange(1000)
    buf.store["bid_px"][1, :1000] = 7
    th = buf.start_prefault()
    assert th is not None and buf.start_prefault() is None  # once per buffer
    th.join()
    # RSS growth is no measure here: freed heap pages of earlier tests may back the buffer
    assert _resident_fraction(buf._arrays()) > 0.99
    assert buf.index[:1000].tolist() == list(range(1000))
    assert (buf.store["bid_px"][1, :1000] == 7).all()
    assert FR.FrameBuffer(1000, 1, prefault=True)._prefault is None  # small: no thread


def test_prefault_stop_ends_within_one_column_range(monkeypatch):
    """stop_prefault() ends the thread after the column range being mapped, not after the
    whole row block (all columns: ~0.2 s of first touches at 10 levels on a slow VM)."""
    import threading

    mapped, first, release = [], threading.Event(), threading.Event()

    def slow_populate(addr, length):
        mapped.append(addr)
        first.set()
        release.wait(5)
        return True

    monkeypatch.setattr(FR, "_populate", slow_populate)
    blocks = [[(a, 8) for a in range(0, 640, 8)]] * 3  # 3 blocks of 80 column ranges
    pf = FR._Prefault(blocks, ())
    assert first.wait(5)
    pf.stop_event.set()
    release.set()
    pf.thread.join(5)
    assert not pf.thread.is_alive() and len(mapped) == 1


def test_populate_probe_is_remembered(monkeypatch):
    """populate_supported() tries madvise once on a scratch page: a refusal (old kernel,
    seccomp) turns the prefault off for good, before any buffer asks for it."""
    monkeypatch.setattr(FR, "_populate_state", {})
    if not sys.platform.startswith("linux"):
        assert not FR.populate_supported()
        return
    calls = []

    def refuse(addr, length, advice):
        calls.append((addr % 4096, length, advice))
        return -1

    monkeypatch.setitem(FR._populate_state, "fn", refuse)
    assert not FR.populate_supported() and not FR.populate_supported()
    assert calls == [(0, 4096, 23)]  # one aligned page, MADV_POPULATE_WRITE, once
    buf = FR.FrameBuffer(1 << 20, 2, column_major=True)
    assert buf.start_prefault() is None  # no thread
    monkeypatch.setattr(FR, "_populate_state", {})  # the real probe: once, remembered
    first = FR.populate_supported()
    assert FR._populate_state.get("probed") and FR.populate_supported() == first


@pytest.mark.parametrize("threads", [1, 2])
def test_prefault_racing_the_kernel_equals_reference(ref, small_synth, monkeypatch, threads):
    """With the prefault thread running while the kernel writes (threshold lowered so the
    small stream gets one), frames equal the reference book."""
    monkeypatch.setattr(FR, "PREFAULT_MIN_BYTES", 0)
    monkeypatch.setattr(FR, "_PREFAULT_ROWS", 64)  # many blocks: the race is real
    for levels in (1, 4):
        fr, _ = replay_frames(small_synth, levels, chunk_records=997, threads=threads)
        assert fr.equals(ref(levels))
    assert_df_equals_reference(mbo_lab.bbo(small_synth, threads=threads),
                               mbo_lab.bbo(small_synth, engine="reference"))


def test_engine_apply_sampled_grows_and_flushes(ref, small_synth):
    """NumbaEngine.apply with sampling: small outputs that grow (NEED_OUT), chunk by
    chunk, then flush(): the same states as the reference oracle."""
    want = ref(2)
    for every, co in ((None, True), (10**6, False), (10**8, True)):
        eng = NumbaEngine(2, every=every, changes_only=co)
        parts = [eng.apply(small_synth[lo: lo + 7_000], base_index=lo)
                 for lo in range(0, len(small_synth), 7_000)]
        parts.append(eng.flush())
        assert eng.pending == 0
        got = BookFrames.concat(parts, 2)
        assert_same_states(got, want, oracle_rows(want, small_synth, every, co))
