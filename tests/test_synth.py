"""Tests of the synthetic MBO generator (mbo_lab.io.synth)."""

from __future__ import annotations

import time
import tracemalloc
from collections import defaultdict

import numpy as np
import pytest

from mbo_lab.io import synth
from mbo_lab.io.dbn import load
from mbo_lab.io.records import (
    F_LAST,
    F_SNAPSHOT,
    F_TOB,
    MBO_DTYPE,
    RTYPE_MBO,
    UNDEF_PRICE,
)
from mbo_lab.io.synth import (
    DEFAULT_INSTRUMENTS,
    GENERATOR_VERSION,
    TOB_INSTRUMENT,
    SynthInstrument,
    demo_path,
    generate,
    synth_records,
    write_synth,
)

UNDEF = int(UNDEF_PRICE)
N_MAIN = 200_000
SNAP_EVERY = 20_000


@pytest.fixture(scope="module")
def recs() -> np.ndarray:
    """The main sample: default books, TOB publisher, snapshots."""
    return synth_records(N_MAIN, seed=11, clear_snapshot_every=SNAP_EVERY)


# --------------------------------------------------------------------------- replay


class ReplayError(AssertionError):
    pass


def replay(r: np.ndarray) -> dict:
    """Pure-Python reference replay with structural checks; raises ReplayError.

    Books are keyed by (instrument_id, publisher_id); each order is
    [side, price, size, priority stamp]. Returns counters for further assertions.
    """
    books: dict[tuple, dict[int, list]] = defaultdict(dict)
    tob: dict[tuple, dict[bytes, int]] = defaultdict(lambda: {b"B": UNDEF, b"A": UNDEF})
    stamp = 0
    stats = defaultdict(int)
    cols = [r[name].tolist() for name in
            ("instrument_id", "publisher_id", "action", "side", "order_id", "price", "size",
             "flags")]
    ev_fills: set[int] = set()     # resting ids filled in the current event
    ev_done: set[int] = set()      # ... and followed by their C/M
    ev_trade_id = None
    snap = None                    # (expected list of (id, side, px, sz), position)
    ev_index = 0

    def fail(j, msg):
        raise ReplayError(f"record {j}: {msg}")

    for j, (iid, pub, act, side, oid, px, sz, fl) in enumerate(zip(*cols)):
        key = (iid, pub)
        book = books[key]
        if fl & F_TOB:
            if act != b"A" or oid != 0 or side not in (b"A", b"B"):
                fail(j, "bad TOB record")
            if (px == UNDEF) != (sz == 0):
                fail(j, "TOB: UNDEF price iff size 0")
            tob[key][side] = px
            stats["tob"] += 1
            stats["tob_undef"] += px == UNDEF
        elif act == b"R":
            if not fl & F_SNAPSHOT or side != b"N" or px != UNDEF or sz != 0 or oid != 0:
                fail(j, "bad clear record")
            # expected re-adds: bids best first, asks best first, FIFO within a level
            bids = sorted((o for o in book.items() if o[1][0] == b"B"),
                          key=lambda o: (-o[1][1], o[1][3]))
            asks = sorted((o for o in book.items() if o[1][0] == b"A"),
                          key=lambda o: (o[1][1], o[1][3]))
            snap = [(i, o[0], o[1], o[2]) for i, o in bids + asks]
            snap_pos = 0
            book.clear()
            stats["clears"] += 1
            if not snap and not fl & F_LAST:
                fail(j, "clear of an empty book must carry F_LAST")
        elif act == b"A":
            if oid in book:
                fail(j, f"add of live id {oid}")
            if fl & F_SNAPSHOT:
                if snap is None or snap_pos >= len(snap):
                    fail(j, "unexpected snapshot add")
                if snap[snap_pos] != (oid, side, px, sz):
                    fail(j, f"snapshot add {(oid, side, px, sz)} != {snap[snap_pos]}")
                snap_pos += 1
                stats["snapshot_adds"] += 1
            elif ev_trade_id is not None and oid == ev_trade_id:
                stats["residual_adds"] += 1
            if sz == 0 or side not in (b"A", b"B"):
                fail(j, "bad add")
            stamp += 1
            book[oid] = [side, px, sz, stamp]
        elif act in (b"C", b"M", b"F"):
            o = book.get(oid)
            if o is None:
                fail(j, f"{act!r} of unknown order id {oid} in book {key}")
            if o[0] != side:
                fail(j, "side differs from the order's side")
            if act == b"C":
                if px != o[1] or not 0 < sz <= o[2]:
                    fail(j, f"cancel size {sz} of order {o}")
                stats["partial_cancels"] += sz < o[2] and oid not in ev_fills
                o[2] -= sz
                if o[2] == 0:
                    del book[oid]
            elif act == b"M":
                if sz == 0:
                    fail(j, "modify to size 0")
                if px != o[1] or sz > o[2]:
                    stamp += 1
                    o[3] = stamp      # price change or size increase: back of the queue
                o[1] = px
                o[2] = sz
            else:
                if px != o[1] or not 0 < sz <= o[2]:
                    fail(j, "fill does not match the resting order")
                ev_fills.add(oid)
                stats["fills"] += 1
            if act in (b"C", b"M") and oid in ev_fills:
                ev_done.add(oid)
                stats["fill_cancels" if act == b"C" else "fill_modifies"] += 1
        elif act == b"T":
            if side not in (b"A", b"B") or sz == 0 or oid == 0:
                fail(j, "bad trade record")
            ev_trade_id = oid
            stats["trades"] += 1
        else:
            fail(j, f"unexpected action {act!r}")
        if fl & F_LAST:
            if ev_fills != ev_done:
                fail(j, f"fills without C/M in the event: {ev_fills - ev_done}")
            if snap is not None and snap_pos != len(snap):
                fail(j, f"snapshot re-added {snap_pos} of {len(snap)} orders")
            ev_fills = set()
            ev_done = set()
            ev_trade_id = None
            snap = None
            ev_index += 1
            if fl & F_TOB:
                t = tob[key]
                if t[b"B"] != UNDEF and t[b"A"] != UNDEF and t[b"B"] >= t[b"A"]:
                    fail(j, "TOB book crossed")
            elif ev_index % 23 == 0:
                bids = [o[1] for o in book.values() if o[0] == b"B"]
                asks = [o[1] for o in book.values() if o[0] == b"A"]
                if bids and asks and max(bids) >= min(asks):
                    fail(j, "book crossed after F_LAST")
            stats["max_live"] = max(stats["max_live"], len(book))
    stats["events"] = ev_index
    stats["final_live"] = sum(len(b) for b in books.values())
    return dict(stats)


def events(r: np.ndarray) -> np.ndarray:
    """Index of the last record of each run of records sharing the event key."""
    key = np.stack([r["publisher_id"].astype(np.int64), r["instrument_id"].astype(np.int64),
                    r["sequence"].astype(np.int64), r["ts_recv"].view(np.int64),
                    r["ts_event"].view(np.int64)], axis=1)
    change = np.any(key[1:] != key[:-1], axis=1)
    return np.flatnonzero(np.append(change, True))


# --------------------------------------------------------------------------- basics


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 12_345])
def test_exact_count(n):
    chunks = list(generate(n, seed=n, chunk_records=1000))
    assert sum(len(c) for c in chunks) == n
    assert all(0 < len(c) <= 1000 and c.dtype == MBO_DTYPE for c in chunks)
    r = synth_records(n, seed=n)
    assert len(r) == n and r.dtype == MBO_DTYPE
    if n:
        assert r["flags"][-1] & F_LAST, "the stream ends on a complete event"


def test_deterministic_same_seed():
    a = synth_records(50_000, seed=3, clear_snapshot_every=7_000)
    b = synth_records(50_000, seed=3, clear_snapshot_every=7_000)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("chunk", [1, 97, 4_999, 5_001, 16_384])
def test_chunk_size_does_not_change_the_stream(chunk):
    kw = dict(seed=5, clear_snapshot_every=6_000)
    ref = synth_records(40_000, **kw)
    got = np.concatenate(list(generate(40_000, chunk_records=chunk, **kw)))
    assert got.tobytes() == ref.tobytes()


def test_different_seed_differs():
    a = synth_records(5_000, seed=1)
    b = synth_records(5_000, seed=2)
    assert a.tobytes() != b.tobytes()
    # ... but both are valid streams of the same books
    assert set(zip(a["instrument_id"].tolist(), a["publisher_id"].tolist())) == \
        set(zip(b["instrument_id"].tolist(), b["publisher_id"].tolist()))


def test_header_fields_and_time(recs):
    r = recs
    assert np.all(r["length"] == 14) and np.all(r["rtype"] == RTYPE_MBO)
    assert np.all(r["channel_id"] == 0)
    ts_recv = r["ts_recv"].view(np.int64)
    assert np.all(np.diff(ts_recv) >= 0), "ts_recv must never decrease"
    assert np.all(r["ts_event"] <= r["ts_recv"])
    assert ts_recv[0] >= synth.DEFAULT_START_NS
    assert np.all(r["ts_in_delta"] > 0)
    assert np.all(np.isin(r["action"], [b"A", b"C", b"M", b"R", b"T", b"F"]))
    assert np.all(np.isin(r["side"], [b"A", b"B", b"N"]))
    assert np.all((r["side"] == b"N") == (r["action"] == b"R"))


def test_events_share_fields_and_flag_last(recs):
    r = recs
    last = events(r)
    has_last = np.flatnonzero(r["flags"] & F_LAST)
    # exactly the last record of each event has F_LAST
    assert np.array_equal(last, has_last)
    # sequence increases from event to event within each publisher
    ev = r[last]
    for pub in np.unique(ev["publisher_id"]):
        seq = ev["sequence"][ev["publisher_id"] == pub].astype(np.int64)
        assert np.all(np.diff(seq) > 0), f"publisher {pub}: sequence not increasing"
    # the sample has multi-record events
    assert len(last) < 0.9 * len(r)


def test_prices_sizes_and_ticks(recs):
    r = recs
    ticks = {(i.instrument_id, i.publisher_id): (i.tick, i.lot_size)
             for i in (*DEFAULT_INSTRUMENTS, TOB_INSTRUMENT)}
    defined = r["price"] != UNDEF
    assert np.all(r["price"][defined] > 0)
    for (iid, pub), (tick, lot) in ticks.items():
        m = (r["instrument_id"] == iid) & (r["publisher_id"] == pub)
        assert m.sum() > 100, f"book {(iid, pub)} missing"
        assert np.all(r["price"][m & defined] % tick == 0)
        assert np.all(r["size"][m] % lot == 0)
    # sizes > 0 except clears and empty TOB sides
    zero = r["size"] == 0
    assert np.all((r["action"][zero] == b"R") | ((r["flags"][zero] & F_TOB) != 0))
    assert np.all(r["price"][zero] == UNDEF)
    adds = r[(r["action"] == b"A") & (r["flags"] == F_LAST) & (r["instrument_id"] == 1001)]
    lots = adds["size"]
    # skewed: many one-lots, median a few lots, rarely above ~100 (aggressor residuals can be)
    assert 1 <= np.median(lots) <= 10 and np.mean(lots == 1) > 0.1
    assert np.percentile(lots, 99) <= 110 and np.mean(lots > 100) < 0.01


def test_mid_drifts_and_adds_cluster_near_touch(recs):
    cl = recs[(recs["instrument_id"] == 1001) & (recs["action"] == b"T")]
    px = cl["price"] / 1e9
    assert 60 < px.min() < px.max() < 70
    assert px.max() - px.min() >= 0.05, "the mid should move"
    # adds: most within 10 ticks of the median trade price nearby in time
    adds = recs[(recs["instrument_id"] == 1001) & (recs["action"] == b"A")]
    dist = np.abs(adds["price"] - np.median(adds["price"][:2000])) // 10_000_000
    assert np.mean(dist[:2000] <= 15) > 0.8


# --------------------------------------------------------------------------- structure


def test_replay_consistency(recs):
    """Every C/M/F refers to a live order of its book; CME trade pattern; snapshots."""
    st = replay(recs)
    assert st["trades"] > 500 and st["fills"] > st["trades"] * 0.9
    assert st["fill_cancels"] > 100 and st["fill_modifies"] > 20
    assert st["fill_cancels"] + st["fill_modifies"] == st["fills"]
    assert st["partial_cancels"] > 100
    assert st["residual_adds"] > 0
    assert st["clears"] == N_MAIN // SNAP_EVERY - 1 or st["clears"] == N_MAIN // SNAP_EVERY
    assert st["snapshot_adds"] > 100
    assert st["tob"] > 1000 and st["tob_undef"] > 0


def test_replay_detects_corruption(recs):
    """Negative controls: the checker itself catches broken streams."""
    r = recs[:30_000].copy()
    replay(r)
    bad = r.copy()
    i = np.flatnonzero(bad["action"] == b"C")[10]
    bad["order_id"][i] = 12345
    with pytest.raises(ReplayError, match="unknown order id"):
        replay(bad)
    # drop the C/M that follows a fill: the fill is left without its book update
    j = np.flatnonzero(r["action"] == b"F")[0]
    k = j + 1
    while r["action"][k] not in (b"C", b"M"):
        k += 1
    with pytest.raises(ReplayError):
        replay(np.delete(r, k))


def test_trade_pattern(recs):
    """T (aggressor side/id) -> F per resting order (other side) -> C or M per order."""
    r = recs
    act = r["action"]
    t_idx = np.flatnonzero(act == b"T")
    assert len(t_idx)
    for i in t_idx[:300]:
        t = r[i]
        j = i + 1
        filled = 0
        while j < len(r) and act[j] == b"F":
            f = r[j]
            assert f["side"] != t["side"] and f["price"] == t["price"]
            assert f["order_id"] != t["order_id"]
            assert (f["ts_event"], f["sequence"]) == (t["ts_event"], t["sequence"])
            filled += int(f["size"])
            j += 1
        assert filled == t["size"], "T size = sum of the F sizes at that price"
        assert not t["flags"] & F_LAST
    # the first event with a trade: T, F..., then C/M for each F, F_LAST at the end
    i = t_idx[0]
    end = i
    while not r["flags"][end] & F_LAST:
        end += 1
    ev = r[i:end + 1]
    fills = ev[ev["action"] == b"F"]["order_id"].tolist()
    after = ev[np.isin(ev["action"], [b"C", b"M"])]["order_id"].tolist()
    assert after == fills


def test_tob_publisher_toggle():
    with_tob = synth_records(20_000, seed=2)
    without = synth_records(20_000, seed=2, tob_publisher=False)
    m = (with_tob["flags"] & F_TOB) != 0
    assert m.sum() > 200
    tobs = with_tob[m]
    assert np.all(tobs["publisher_id"] == TOB_INSTRUMENT.publisher_id)
    assert np.all(tobs["order_id"] == 0) and np.all(tobs["action"] == b"A")
    assert not np.any(without["flags"] & F_TOB)
    assert TOB_INSTRUMENT.publisher_id not in set(without["publisher_id"].tolist())
    replay(without)


def test_snapshots_toggle():
    none = synth_records(30_000, seed=9)
    assert not np.any(none["flags"] & F_SNAPSHOT)
    assert not np.any(none["action"] == b"R")
    snaps = synth_records(30_000, seed=9, clear_snapshot_every=4_000)
    clears = np.flatnonzero(snaps["action"] == b"R")
    assert len(clears) >= 5
    for i in clears:
        assert snaps["flags"][i] & F_SNAPSHOT and snaps["size"][i] == 0
        assert snaps["price"][i] == UNDEF and snaps["side"][i] == b"N"
        j = i
        while not snaps["flags"][j] & F_LAST:
            j += 1
            assert snaps["action"][j] == b"A" and snaps["flags"][j] & F_SNAPSHOT
        assert snaps["flags"][j] == F_LAST | F_SNAPSHOT
        assert j - i > 10, "a snapshot re-adds the book's live orders"
    st = replay(snaps)
    assert st["clears"] == len(clears)


def test_custom_instruments_cap_and_low_price():
    """A single book with a tiny price (ticks stay positive) and a small order cap."""
    ins = [SynthInstrument(7, 9, "TINY", 1_000_000, 20_000_000, target_orders=10_000,
                           lot_size=5)]
    r = synth_records(60_000, seed=1, instruments=ins, max_live_per_book=40,
                      clear_snapshot_every=10_000)
    assert set(r["instrument_id"].tolist()) == {7} and set(r["publisher_id"].tolist()) == {9}
    defined = r["price"] != UNDEF
    assert np.all(r["price"][defined] >= 1_000_000)
    assert np.all(r["price"][defined] % 1_000_000 == 0)
    assert np.all(r["size"] % 5 == 0)
    st = replay(r)
    assert st["max_live"] <= 40


def test_bad_arguments(tmp_path):
    from mbo_lab.errors import ArgumentError, MboLabError

    assert issubclass(ArgumentError, MboLabError) and issubclass(ArgumentError, ValueError)
    with pytest.raises(ArgumentError, match="n_records must be >= 0, got -1"):
        generate(-1)
    with pytest.raises(ArgumentError, match="chunk_records"):
        generate(10, chunk_records=0)
    with pytest.raises(ArgumentError, match="clear_snapshot_every"):
        generate(10, clear_snapshot_every=0)
    with pytest.raises(ArgumentError, match="tick"):
        generate(10, instruments=[SynthInstrument(1, 1, "X", 0, 100)])
    with pytest.raises(ArgumentError, match="duplicate"):
        generate(10, instruments=[SynthInstrument(1, 1, "X", 10, 100)] * 2)
    with pytest.raises(ArgumentError):
        generate(10, instruments=[TOB_INSTRUMENT], tob_publisher=False)
    # the file writer checks before creating anything
    for kw in ({"n_records": -1}, {"n_records": 10, "clear_snapshot_every": 0}):
        with pytest.raises(ArgumentError):
            synth.write_synth(tmp_path / "x.dbn.zst", progress=False, **kw)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["s.dbn", "s.dbn.zst"])
def test_file_round_trip(tmp_path, name):
    import databento

    kw = dict(seed=4, clear_snapshot_every=5_000, chunk_records=3_000)
    path = write_synth(tmp_path / name, 12_000, progress=False, **kw)
    assert path.is_file() and not (tmp_path / (name + ".part")).exists()
    ref = synth_records(12_000, **kw)
    data = load(path)
    assert len(data) == 12_000
    assert data.records.tobytes() == ref.tobytes()
    assert data.metadata.compressed == name.endswith(".zst")
    assert data.symbols == {1001: "CLG5", 1002: "ESH5", 1003: "SYNQ"}
    assert data.metadata.start == synth.DEFAULT_START_NS
    assert data.metadata.end > int(ref["ts_recv"][-1])
    # Databento's own reader agrees
    arr = databento.DBNStore.from_file(path).to_ndarray()
    assert len(arr) == 12_000 and arr.dtype.itemsize == 56
    assert arr.tobytes() == ref.tobytes()


def test_write_with_progress_bar(tmp_path):
    path = write_synth(tmp_path / "p.dbn", 3_000, seed=1, progress=True)
    assert len(load(path)) == 3_000


def test_demo_path_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MBO_LAB_CACHE_DIR", str(tmp_path / "cache"))
    p = demo_path(4_000, seed=3)
    assert p.is_file() and p.parent == tmp_path / "cache"
    assert "4000" in p.name and "s3" in p.name and f"v{GENERATOR_VERSION}" in p.name
    mtime = p.stat().st_mtime_ns
    assert demo_path(4_000, seed=3) == p and p.stat().st_mtime_ns == mtime
    data = load(p)
    assert len(data) == 4_000
    assert data.records.tobytes() == synth_records(
        4_000, seed=3, clear_snapshot_every=50_000).tobytes()


# --------------------------------------------------------------------------- scale


def test_bounded_memory():
    n, chunk = 3_000_000, 100_000
    full_bytes = n * MBO_DTYPE.itemsize
    next(iter(generate(10)))          # compile / load the kernel outside the measurement
    tracemalloc.start()
    try:
        total = 0
        last_ts = 0
        for c in generate(n, seed=1, chunk_records=chunk):
            total += len(c)
            assert int(c["ts_recv"][0]) >= last_ts
            last_ts = int(c["ts_recv"][-1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n
    assert peak < full_bytes / 5, f"peak {peak / 1e6:.1f} MB for a {full_bytes / 1e6:.0f} MB stream"


@pytest.mark.slow
def test_throughput():
    n = 5_000_000
    next(iter(generate(10)))
    t0 = time.perf_counter()
    total = sum(len(c) for c in generate(n, seed=2))
    rate = total / (time.perf_counter() - t0)
    assert total == n
    assert rate > 1e6, f"{rate / 1e6:.2f} M records/s"
