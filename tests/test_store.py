"""Tests of mbo_lab.store: Parquet export/read, exact round trips, partitions, re-runs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import fail_on_call

import mbo_lab
from mbo_lab import store
from mbo_lab.cli import main
from mbo_lab.io.dbn import write_dbn
from mbo_lab.io.synth import DEFAULT_START_NS

N = 20_000
SYMBOLS = {1001: "CLG5", 1002: "ESH5", 1003: "SYNQ"}
#: 40 s before a UTC midnight, so the stream spans two days
START = (DEFAULT_START_NS // 86_400_000_000_000 + 1) * 86_400_000_000_000 - 40 * 10**9


@pytest.fixture(scope="module")
def recs() -> np.ndarray:
    return mbo_lab.synth_records(N, seed=21, clear_snapshot_every=8_000, start_ns=START)


@pytest.fixture(scope="module")
def exported(recs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("store")
    summary = store.export(recs, out, levels=4, chunk_records=4_000, progress=False,
                           symbols=SYMBOLS)
    return out, summary


def _bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_layout_and_summary(exported, recs):
    out, s = exported
    assert s["records"] == N and set(s["tables"]) == set(store.TABLES)
    days = sorted(p.name for p in (out / "records").iterdir())
    assert days == [f"date={d}" for d in sorted({str(np.datetime64(int(t), "ns").astype(
        "datetime64[D]")) for t in recs["ts_recv"][[0, -1]]})]
    assert len(days) == 2
    parts = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    # partitioned by day only: one file per table and day for one export (5 chunks here)
    for table in store.TABLES:
        mine = [p for p in parts if p.startswith(table + "/")]
        assert sorted(p.split("/")[1] for p in mine) == days, table
        assert sorted(store.files(out, table)) == sorted(str(out / p) for p in mine)
        assert s["tables"][table]["partitions"] == [str(out / p) for p in sorted(mine)]
    assert all(p.split("/")[-1].startswith("part-") for p in parts)
    assert s["tables"]["records"]["rows"] == N
    assert store.tables(out) == sorted(store.TABLES)
    assert not any((out / ".staging").iterdir())
    assert s["key"] == "<memory>" and s["replaced"] is False
    # instrument_id is a column, rows clustered by instrument in each chunk's row groups
    import pyarrow.parquet as pq

    f = pq.ParquetFile(sorted(store.files(out, "records"))[0])
    iid = f.read(columns=["instrument_id"])["instrument_id"].to_numpy()
    assert f.schema_arrow.field("instrument_id").type == "uint32"
    assert np.count_nonzero(np.diff(iid.astype(np.int64)) < 0) <= s["records"] // 4_000
    stats = f.metadata.row_group(0).column(f.schema_arrow.get_field_index("instrument_id"))
    assert stats.statistics.has_min_max


def test_records_round_trip_exact(exported, recs):
    out, _ = exported
    df = store.read(out, "records")
    assert len(df) == N
    assert _bytes(store.records_from_frame(df)) == _bytes(recs)
    assert (df.index.asi8 == recs["ts_recv"].astype(np.int64)).all()
    assert df["price_fixed"].dtype == np.int64 and df["order_id"].dtype == np.uint64
    undef = recs["price"] == mbo_lab.io.records.UNDEF_PRICE
    assert undef.any() and df["price"].isna().to_numpy().tolist() == undef.tolist()
    assert set(df["symbol"]) == {"CLG5", "ESH5", "SYNQ"}


def test_bbo_mbp_trades_equal_engine_output(exported, recs):
    out, s = exported
    ref = mbo_lab.mbp(recs, 4, price_type="fixed")
    reff = mbo_lab.mbp(recs, 4)
    bbo = store.read(out, "bbo")
    mbp = store.read(out, "mbp")
    for got, levels in ((bbo, 1), (mbp, 4)):
        assert len(got) == len(ref)
        assert (got.index == ref.index).all()
        assert (got["record_index"].to_numpy() == ref["record_index"].to_numpy()).all()
        for k in range(levels):
            for side in ("bid", "ask"):
                c = f"{side}_px_{k:02d}"
                assert (got[c + "_fixed"].to_numpy() == ref[c].to_numpy()).all()
                np.testing.assert_array_equal(got[c].to_numpy(), reff[c].to_numpy())
                for f in ("sz", "ct"):
                    assert (got[f"{side}_{f}_{k:02d}"].to_numpy() ==
                            ref[f"{side}_{f}_{k:02d}"].to_numpy()).all()
        assert (got["crossed"].to_numpy() == ref["crossed"].to_numpy()).all()
    assert "bid_px_01" not in bbo.columns
    tr = store.read(out, "trades")
    ti = np.flatnonzero(recs["action"] == b"T")
    assert tr["record_index"].tolist() == ti.tolist()
    assert (tr["price_fixed"].to_numpy() == recs["price"][ti]).all()
    assert tr["side"].tolist() == recs["side"][ti].astype("U1").tolist()
    assert s["tables"]["trades"]["rows"] == len(ti)


def test_read_filters(exported, recs):
    out, _ = exported
    day2 = str(np.datetime64(int(recs["ts_recv"][-1]), "ns").astype("datetime64[D]"))
    one = store.read(out, "bbo", instrument_id=1002, date=day2, columns=["bid_px_00"])
    assert set(one["instrument_id"]) == {1002} and set(one["date"]) == {day2}
    assert list(one.columns) == ["bid_px_00", "date", "instrument_id"]
    t0 = pd.Timestamp(int(recs["ts_recv"][1000]), tz="UTC")
    t1 = pd.Timestamp(int(recs["ts_recv"][2000]), tz="UTC")
    win = store.read(out, "records", start=t0, end=t1)
    assert win["record_index"].tolist() == list(range(
        int(np.searchsorted(recs["ts_recv"], recs["ts_recv"][1000])),
        int(np.searchsorted(recs["ts_recv"], recs["ts_recv"][2000]))))
    two = store.read(out, "trades", publisher_id=[1, 2], side="B")
    assert set(two["publisher_id"]) == {1, 2} and set(two["side"]) == {"B"}
    with pytest.raises(store.StoreError, match="no column"):
        store.read(out, "bbo", colour="red")
    with pytest.raises(store.StoreError, match="no table"):
        store.read(out, "nothing")


def test_readable_by_pandas_and_duckdb(exported, recs):
    out, _ = exported
    direct = pd.read_parquet(out / "records")
    assert len(direct) == N and int(direct["size"].sum()) == int(recs["size"].sum())
    duckdb = pytest.importorskip("duckdb")
    q = duckdb.sql(
        f"select instrument_id, date, count(*) as n, sum(size) as sz, "
        f"min(epoch_ns(ts_recv)) as t0, max(price_fixed) filter (where action = 'T') as pmax "
        f"from read_parquet('{out}/records/**/*.parquet', hive_partitioning=true) "
        f"group by all order by all").df()
    for row in q.itertuples():
        sel = recs[recs["instrument_id"] == row.instrument_id]
        day = sel["ts_recv"].astype("datetime64[ns]").astype("datetime64[D]").astype(str)
        sel = sel[day == str(row.date)[:10]]
        assert row.n == len(sel) and row.sz == int(sel["size"].sum())
        assert row.t0 == int(sel["ts_recv"].min())
        assert row.pmax == int(sel["price"][sel["action"] == b"T"].max())
    nb = duckdb.sql(f"select count(*) from read_parquet('{out}/bbo/**/*.parquet', "
                    "hive_partitioning=true) where crossed").df().iloc[0, 0]
    assert nb == 0


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # dask's own use of pandas
def test_readable_by_dask(exported):
    dd = pytest.importorskip("dask.dataframe", reason="dask is not installed")
    out, _ = exported
    got = dd.read_parquet(str(out / "trades")).compute()
    want = store.read(out, "trades")
    assert len(got) == len(want)
    assert sorted(got["record_index"]) == want["record_index"].tolist()
    assert (got["ts_recv"].dt.tz is not None) and got["price_fixed"].dtype == np.int64


def test_grid_is_last_state_per_bin(recs, tmp_path):
    s = store.export(recs, tmp_path, levels=2, grid="50ms", what=("mbp",), chunk_records=1_500,
                     progress=False)
    got = store.read(tmp_path, "mbp")
    ref = mbo_lab.mbp(recs, 2, price_type="fixed")
    step = 50_000_000
    ref["_bin"] = ref.index.asi8 // step * step
    want = ref.groupby(["instrument_id", "publisher_id", "_bin"], sort=False).tail(1)
    assert sorted(got["record_index"]) == sorted(want["record_index"])
    assert s["tables"]["mbp"]["rows"] == len(want)
    w = want.set_index("record_index").loc[got["record_index"]]
    assert (pd.DatetimeIndex(got["ts_bin"]).asi8 == w["_bin"].to_numpy()).all()
    assert (got["bid_px_01_fixed"].to_numpy() == w["bid_px_01"].to_numpy()).all()
    assert (got["ask_sz_00"].to_numpy() == w["ask_sz_00"].to_numpy()).all()
    with pytest.raises(store.StoreError, match="one layout"):  # another source: refused
        store.export(recs, tmp_path, levels=3, grid="50ms", what=("mbp",), progress=False,
                     name="other")
    # the same source exported again with another layout replaces its table
    store.export(recs[:3_000], tmp_path, levels=3, what=("mbp",), progress=False)
    assert "bid_px_02" in store.read(tmp_path, "mbp").columns


def test_file_source_streams_like_memory(recs, tmp_path, exported):
    path = write_dbn(tmp_path / "s.dbn.zst", recs, symbols=SYMBOLS)
    out = tmp_path / "from_file"
    s = store.export(path, out, levels=4, chunk_records=7_000, progress=True)
    assert s["records"] == N and s["source"] == str(path)
    for table in store.TABLES:
        a = store.read(out, table)
        b = store.read(exported[0], table)
        pd.testing.assert_frame_equal(a, b)


def test_rerun_replaces_partitions(recs, tmp_path):
    out = tmp_path / "re"
    store.export(recs, out, levels=1, what=("bbo", "trades"), progress=False)
    first = store.read(out, "bbo")
    clean = tmp_path / "clean"
    s = store.export(recs, out, levels=1, what=("bbo", "trades"), progress=False)
    assert s["replaced"] is True
    pd.testing.assert_frame_equal(store.read(out, "bbo"), first)
    n_files = len(list(out.rglob("*.parquet")))
    assert n_files == len(store.files(out, "bbo")) + len(store.files(out, "trades")) == 4
    # re-exporting the source with other data leaves exactly what a clean export leaves:
    # no day, no table that only the earlier export had
    store.export(recs[:5_000], out, levels=1, what=("bbo",), progress=False)
    store.export(recs[:5_000], clean, levels=1, what=("bbo",), progress=False)
    assert store.tables(out) == ["bbo"] == store.tables(clean)
    pd.testing.assert_frame_equal(store.read(out, "bbo"), store.read(clean, "bbo"))
    rel = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.parquet"))
    assert rel == sorted(p.relative_to(clean).parent.as_posix()
                         for p in clean.rglob("*.parquet"))
    assert not (out / "trades").exists()
    ref = mbo_lab.bbo(recs[:5_000])
    assert store.read(out, "bbo")["record_index"].tolist() == ref["record_index"].tolist()
    # another source adds to the store; its re-export replaces only its own rows
    store.export(recs[10_000:], out, levels=1, what=("bbo",), progress=False, name="late")
    both = store.read(out, "bbo")
    assert len(both) == len(ref) + len(mbo_lab.bbo(recs[10_000:]))
    store.export(recs[:5_000], out, levels=1, what=("bbo",), progress=False)
    pd.testing.assert_frame_equal(store.read(out, "bbo"), both)


def test_failed_export_leaves_previous_data(recs, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    store.export(recs, out, levels=1, what=("bbo",), progress=False)
    before = store.read(out, "bbo")
    fail_on_call(monkeypatch, store._Staging, "write", 3, RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        store.export(recs[:10_000], out, levels=1, what=("bbo",), chunk_records=1_000,
                     progress=False)
    pd.testing.assert_frame_equal(store.read(out, "bbo"), before)
    assert not any((out / ".staging").iterdir())


def test_stale_staging_removed(recs, tmp_path):
    out = tmp_path / "stale"
    store.export(recs[:3_000], out, levels=1, what=("trades",), progress=False)
    stale = out / ".staging" / f"{socket.gethostname()}-{2**22 + 12345}-deadbeef"
    stale.mkdir(parents=True)
    alive = out / ".staging" / f"{socket.gethostname()}-{os.getpid()}-cafe"
    alive.mkdir()
    store.export(recs[:6_000], out, levels=1, what=("trades",), progress=False)
    ti = np.flatnonzero(recs["action"][:6_000] == b"T")
    assert store.read(out, "trades")["record_index"].tolist() == ti.tolist()
    assert not stale.exists() and alive.exists()


def test_bad_arguments(recs, tmp_path):
    with pytest.raises(store.StoreError, match="unknown table"):
        store.export(recs, tmp_path, what=("quotes",))
    with pytest.raises(store.StoreError, match="grid"):
        store.export(recs, tmp_path, grid="soon")
    with pytest.raises(store.StoreError, match="levels"):
        store.export(recs, tmp_path, levels=0)


_MEMORY_PROBE = """
import json, sys, tracemalloc
import pyarrow as pa
import mbo_lab
from mbo_lab import store
out = []
for n in (60_000, 240_000):
    path = mbo_lab.write_synth(f"{sys.argv[1]}/big{n}.dbn.zst", n, seed=3, progress=False)
    tracemalloc.start()
    s = store.export(path, f"{sys.argv[1]}/big{n}", levels=5, grid="1s",
                     chunk_records=10_000, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out.append([s["records"], peak])
print(json.dumps({"runs": out, "arrow_max": pa.default_memory_pool().max_memory()}))
"""


def test_memory_is_bounded_by_chunk(tmp_path):
    """From .dbn.zst in 10k-record chunks, 4x the records take about the same peak memory:
    the export never holds the whole stream (NumPy peak and Arrow's pool). Runs in a fresh
    process: Arrow's pool high-water mark is process-wide, so other tests would inflate it."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    (n0, p0), (n1, p1) = got["runs"]
    assert (n0, n1) == (60_000, 240_000)
    assert p1 < 1.3 * p0, f"NumPy peaks {p0 / 2**20:.1f}, {p1 / 2**20:.1f} MiB"
    assert got["arrow_max"] < 64 << 20, got["arrow_max"]


def test_cli_export(tmp_path, capsys):
    path = mbo_lab.write_synth(tmp_path / "c.dbn", 5_000, seed=1)
    rc = main(["export", str(path), "-o", str(tmp_path / "o"), "--levels", "3", "--grid",
               "100ms"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exported 5,000 records" in out and "mbp" in out
    assert "bid_px_02" in store.read(tmp_path / "o", "mbp").columns
    assert main(["export", str(path), "-o", str(tmp_path / "o2"), "--tables", "bogus"]) == 2
    assert "(added it)" in out
    # --every is --grid; exporting the same file again says it replaced the earlier export
    assert main(["export", str(path), "-o", str(tmp_path / "o"), "--levels", "3",
                 "--every", "100ms", "--tables", "mbp"]) == 0
    out = capsys.readouterr().out
    assert "replaced its previous export" in out
    assert store.tables(tmp_path / "o") == ["mbp"]


# --------------------------------------------------------------------------- atomic commits


def _export_in_child(path: Path, out: Path, crash_at: str | None) -> int:
    """Export ``path`` into ``out`` in a child process that kills itself (SIGKILL) at the
    commit step ``crash_at``; returns its exit code."""
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop(store._CRASH_ENV, None)
    if crash_at:
        env[store._CRASH_ENV] = crash_at
    code = ("import sys, mbo_lab.store as s; s.export(sys.argv[1], sys.argv[2], levels=2, "
            "what=('bbo', 'trades'), chunk_records=3000, progress=False)")
    return subprocess.run([sys.executable, "-c", code, str(path), str(out)],
                          timeout=300, env=env).returncode


def _snapshot(out: Path) -> dict:
    return {t: store.read(out, t) for t in store.tables(out)}


@pytest.mark.slow
def test_killed_commit_leaves_old_or_new_store_then_reexport_is_clean(recs, tmp_path):
    """SIGKILL at each commit step: readers see exactly the old store (before the manifest
    switch) or the new one (after it); the next export removes what the dead one left and
    leaves exactly what a clean export leaves."""
    src = tmp_path / "day.dbn"
    old_recs = recs[:12_000]  # the source as first exported (one day) ...
    write_dbn(src, old_recs, symbols=SYMBOLS)
    out = tmp_path / "store"
    assert _export_in_child(src, out, None) == 0
    old = _snapshot(out)
    write_dbn(src, recs, symbols=SYMBOLS)  # ... then grown to two days
    clean = tmp_path / "clean"
    assert _export_in_child(src, clean, None) == 0
    new = _snapshot(clean)
    for step, want in (("before-lock", old), ("moving", old), ("before-manifest", old),
                       ("after-manifest", new)):
        assert _export_in_child(src, out, step) == -9, step
        got = _snapshot(out)
        assert sorted(got) == sorted(want), step
        for t in want:
            pd.testing.assert_frame_equal(got[t], want[t], obj=f"{step} {t}")
        if step != "after-manifest":  # restore the old store for the next step
            write_dbn(src, old_recs, symbols=SYMBOLS)
            assert _export_in_child(src, out, None) == 0
            write_dbn(src, recs, symbols=SYMBOLS)
            pd.testing.assert_frame_equal(store.read(out, "bbo"), old["bbo"])
    assert _export_in_child(src, out, None) == 0
    for t in new:
        pd.testing.assert_frame_equal(store.read(out, t), new[t])
    rel = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.parquet"))
    assert rel == sorted(p.relative_to(clean).parent.as_posix()
                         for p in clean.rglob("*.parquet"))
    assert len(rel) == 4  # bbo + trades over two days: every orphan is gone
    assert not any((out / ".staging").iterdir())


def test_readers_see_only_the_manifest(recs, tmp_path):
    """A part file that no manifest lists (a killed export's) is invisible to read()."""
    out = tmp_path / "s"
    store.export(recs, out, levels=1, what=("bbo",), progress=False)
    before = store.read(out, "bbo")
    f = Path(store.files(out, "bbo")[0])
    orphan = f.with_name("part-ffff-deadbeef-00000.parquet")
    orphan.write_bytes(f.read_bytes())
    pd.testing.assert_frame_equal(store.read(out, "bbo"), before)
    store.export(recs[:100], out, levels=1, what=("trades",), progress=False, name="x")
    assert not orphan.exists()  # removed by the next commit


# --------------------------------------------------------------------------- file count


def test_many_instruments_few_files(tmp_path):
    """38k instrument ids: one file per table and day (was one per instrument), readable
    with instrument filters by read(), pandas, DuckDB and Dask."""
    n = 76_000
    recs = mbo_lab.synth_records(n, seed=8)
    rng = np.random.default_rng(3)
    ids = rng.permutation(38_000).astype(np.uint32) + 5_000_000
    recs["instrument_id"] = ids[np.arange(n) % 38_000]
    s = store.export(recs, tmp_path, levels=2, chunk_records=25_000, progress=False)
    days = len({int(t) // 86_400_000_000_000 for t in recs["ts_recv"]})
    parts = list(tmp_path.rglob("*.parquet"))
    assert len(parts) == 4 * days, len(parts)
    target = int(ids[17])
    want = np.flatnonzero(recs["instrument_id"] == target)
    got = store.read(tmp_path, "records", instrument_id=target)
    assert got["record_index"].tolist() == want.tolist()
    assert s["tables"]["records"]["rows"] == n
    duckdb = pytest.importorskip("duckdb")
    q = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/records/**/*.parquet', "
                   f"hive_partitioning=true) where instrument_id = {target}").df().iloc[0, 0]
    assert q == len(want)
    pdf = pd.read_parquet(tmp_path / "records", filters=[("instrument_id", "==", target)])
    assert len(pdf) == len(want)


def test_row_groups_are_clustered_by_instrument(recs, tmp_path, monkeypatch):
    """Small row groups: each covers a narrow instrument range, so statistics prune."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(store, "ROW_GROUP_ROWS", 1_000)
    store.export(recs, tmp_path, levels=1, what=("records",), chunk_records=6_000,
                 progress=False)
    f = pq.ParquetFile(store.files(tmp_path, "records")[0])
    col = f.schema_arrow.get_field_index("instrument_id")
    spans = [(f.metadata.row_group(i).column(col).statistics.min,
              f.metadata.row_group(i).column(col).statistics.max)
             for i in range(f.metadata.num_row_groups)]
    assert len(spans) > 3
    single = sum(lo == hi for lo, hi in spans)
    assert single >= len(spans) - 2 * 6  # at most a few groups straddle two instruments


def test_long_days_go_on_in_new_files(recs, exported, tmp_path, monkeypatch):
    """A writer closes after _MAX_FILE_ROW_GROUPS row groups (and an earlier day's when a
    later day starts), so its metadata stays bounded: more files, the same tables."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(store, "ROW_GROUP_ROWS", 1_000)
    monkeypatch.setattr(store, "_MAX_FILE_ROW_GROUPS", 3)
    s = store.export(recs, tmp_path, levels=4, chunk_records=4_000, progress=False,
                     symbols=SYMBOLS)
    base, _ = exported
    for table in ("records", "bbo", "mbp"):
        paths = store.files(tmp_path, table)
        assert len(paths) > 4, (table, len(paths))
        assert all(pq.ParquetFile(p).metadata.num_row_groups <= 3 for p in paths)
        got, want = store.read(tmp_path, table), store.read(base, table)
        assert s["tables"][table]["rows"] == len(want)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


# --------------------------------------------------------------------------- odd bytes, edges


def test_non_ascii_action_bytes_export_and_round_trip(tmp_path):
    recs = mbo_lab.synth_records(2_000, seed=4)
    recs["action"][10] = b"\xff"
    recs["side"][11] = b"\x00"
    store.export(recs, tmp_path, levels=1, what=("records", "trades"), progress=False)
    df = store.read(tmp_path, "records")
    assert df.set_index("record_index").loc[10, "action"] == "\\xff"
    assert df.set_index("record_index").loc[11, "side"] == "\\x00"
    assert _bytes(store.records_from_frame(df)) == _bytes(recs)


def test_export_checks_input_and_output_first(recs, tmp_path):
    import errno as _errno

    from mbo_lab.errors import DataError

    out = tmp_path / "o"
    with pytest.raises(DataError, match="not found"):
        store.export(tmp_path / "missing.dbn", out)
    assert not out.exists()  # nothing created for a bad input
    (tmp_path / "file").write_text("x")
    with pytest.raises(store.OutputError, match="is a file"):
        store.export(recs[:100], tmp_path / "file")
    e = store._os_error(OSError(_errno.EROFS, "ro"), out, "the store")
    assert "read-only" in str(e)


def test_changes_only_equals_the_api(recs, tmp_path):
    """export(changes_only=True) keeps the states mbo_lab.mbp(changes_only=True) keeps
    (small chunks: the comparison with a book's previous state crosses chunks)."""
    s = store.export(recs, tmp_path, levels=3, what=("mbp",), changes_only=True,
                     chunk_records=1_300, progress=False)
    got = store.read(tmp_path, "mbp")
    want = mbo_lab.mbp(recs, 3, changes_only=True, price_type="fixed")
    assert 0 < len(got) < len(mbo_lab.bbo(recs))
    assert got["record_index"].tolist() == want["record_index"].tolist()
    assert (got["bid_px_02_fixed"].to_numpy() == want["bid_px_02"].to_numpy()).all()
    assert s["tables"]["mbp"]["rows"] == len(want)
    with pytest.raises(store.StoreError, match="combined"):
        store.export(recs, tmp_path / "x", levels=3, grid="1s", changes_only=True)


# --------------------------------------------------------------------------- parquet writer


@pytest.fixture(scope="module")
def book_tables(recs):
    """``book_tables(levels, rows_per_table)``: Arrow tables of the MBP-``levels`` states
    of ``recs``, one per ``rows_per_table`` states, built by the CLI's row-group builder
    (``cli._mbp_tables``) from fixed-point frames with ``fixed=True``: float prices (NaN
    for an empty level) plus the exact ``<side>_px_<k>_fixed`` columns (the CLI writes float
    prices only), and a null-free symbol column. Built once per (levels, rows_per_table)
    for the module; the tables are read-only, so the tests share them."""
    from mbo_lab.cli import _mbp_tables

    cache: dict[tuple[int, int], list] = {}

    def build(levels: int, rows_per_table: int) -> list:
        key = (levels, rows_per_table)
        if key not in cache:
            fr = mbo_lab.replay_frames(recs, levels)[0]
            chunk = SimpleNamespace(records=recs, first_index=0, symbols=SYMBOLS)
            tables = list(_mbp_tables(chunk, fr, levels, rows=rows_per_table, fixed=True))
            assert sum(t.num_rows for t in tables) == len(fr)
            cache[key] = tables
        return cache[key]

    return build


def _same(a, b) -> None:
    """Equal Arrow tables, NaN equal to NaN (empty levels)."""
    assert a.schema.equals(b.schema, check_metadata=False)
    assert a.num_rows == b.num_rows
    for name in a.schema.names:
        np.testing.assert_array_equal(a.column(name).to_numpy(), b.column(name).to_numpy(),
                                      err_msg=name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", store.COMPRESSIONS)
def test_parallel_writer_writes_the_tables_in_order(book_tables, tmp_path, compression):
    """Row groups encoded in threads and appended in order: the file reads back as the
    concatenated tables (pyarrow, pandas, DuckDB), one row group per table, with the
    per-column encodings of parquet_options and statistics only on ids/times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    duckdb = pytest.importorskip("duckdb")
    tables = book_tables(3, 1_500)
    schema = tables[0].schema
    opts = store.parquet_options(schema.names, compression)
    w = store.ParallelParquetWriter(tmp_path / "p.parquet", schema, threads=3, **opts)
    for t in tables:
        w.write(t)
    w.close()
    assert w.written == w.queued == len(tables) > 5
    f = pq.ParquetFile(tmp_path / "p.parquet")
    assert f.metadata.num_row_groups == len(tables)
    assert f.metadata.num_rows == sum(t.num_rows for t in tables)
    _same(f.read(), pa.concat_tables(tables))
    for g in (0, len(tables) // 2, len(tables) - 1):  # each row group found at its offset
        _same(f.read_row_group(g), tables[g])
    # a single-threaded ParquetWriter with the same options gives the same table
    pq.write_table(pa.concat_tables(tables), tmp_path / "s.parquet", row_group_size=1_500,
                   **opts)
    _same(pq.read_table(tmp_path / "s.parquet"), f.read())
    rg = f.metadata.row_group(1)
    col = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert "DELTA_BINARY_PACKED" in col["bid_sz_00"].encodings
    assert "DELTA_BINARY_PACKED" in col["ts_recv"].encodings
    assert any("DICTIONARY" in e for e in col["ask_px_01"].encodings)
    assert col["bid_sz_00"].compression == "UNCOMPRESSED"
    assert col["ask_px_01"].compression == compression.upper().replace("NONE",
                                                                       "UNCOMPRESSED")
    assert col["instrument_id"].statistics is not None
    assert col["bid_px_00"].statistics is None
    got = pd.read_parquet(tmp_path / "p.parquet")
    assert len(got) == f.metadata.num_rows
    np.testing.assert_array_equal(got["record_index"].to_numpy(),
                                  pa.concat_tables(tables)["record_index"].to_numpy())
    n = duckdb.sql(f"select count(*) as n, sum(bid_sz_02) as sz, "
                   f"sum(ask_px_01_fixed) filter (where ask_sz_01 > 0) as px "
                   f"from read_parquet('{tmp_path / 'p.parquet'}')").df().iloc[0]
    assert n["n"] == len(got) and n["sz"] == int(got["bid_sz_02"].sum())
    assert n["px"] == int(got["ask_px_01_fixed"][got["ask_sz_01"] > 0].sum())


@pytest.mark.timeout(60)
def test_parallel_writer_empty_and_errors(book_tables, tmp_path, monkeypatch):
    """No table: a valid file with the schema and no rows. A row group larger than the
    thread's output buffer goes to a growing one. A table of another schema: the error
    comes out of the next call, nothing hangs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = book_tables(2, 4_000)
    schema = tables[0].schema

    def full(buf):
        raise OSError("Write out of bounds")

    with monkeypatch.context() as m:
        m.setattr(pa, "FixedSizeBufferWriter", full)
        w = store.ParallelParquetWriter(tmp_path / "g.parquet", schema)
        for t in tables:
            w.write(t)
        w.close()
    _same(pq.read_table(tmp_path / "g.parquet"), pa.concat_tables(tables))
    w = store.ParallelParquetWriter(tmp_path / "e.parquet", schema)
    w.close()
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.num_rows == 0 and t.schema.names == schema.names
    w = store.ParallelParquetWriter(tmp_path / "x.parquet", schema)
    w.write(tables[0])
    w.write(pa.table({"a": [1, 2]}))
    with pytest.raises(Exception, match="(?i)schema|field|column"):
        w.close()
    w.abort()
    with pytest.raises(store.StoreError, match="compression"):
        store.parquet_options(schema.names, "brotli")
    with pytest.raises(store.StoreError, match="page index"):
        store.ParallelParquetWriter(tmp_path / "y.parquet", schema, write_page_index=True)


@pytest.mark.timeout(60)
def test_parallel_writer_holds_at_most_max_pending_tables(tmp_path, monkeypatch):
    """write() blocks while max_pending tables are queued or being encoded (bounded memory
    whatever the caller queues), then goes on; the file is still complete and in order."""
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pa.table({"x": np.arange(k * 100, k * 100 + 100)}) for k in range(5)]
    gate = threading.Event()
    real = store.ParallelParquetWriter._encode_one

    def slow(self, seq, tbl):
        gate.wait(30)
        return real(self, seq, tbl)

    monkeypatch.setattr(store.ParallelParquetWriter, "_encode_one", slow)
    w = store.ParallelParquetWriter(tmp_path / "b.parquet", tables[0].schema, threads=1,
                                    max_pending=2)
    w.write(tables[0])
    w.write(tables[1])
    third = threading.Thread(target=lambda: [w.write(t) for t in tables[2:]])
    third.start()
    third.join(0.5)
    assert third.is_alive() and w.queued == 2  # blocked: two tables held
    gate.set()
    third.join(30)
    assert not third.is_alive() and w.queued == 5
    w.close()
    assert pq.read_table(tmp_path / "b.parquet").column("x").to_pylist() == \
        list(range(500))


@pytest.mark.timeout(60)
def test_export_waits_for_a_commit_in_progress(tmp_path, monkeypatch):
    """Two exports into one folder at once (as batch workers do): the second one's start
    check waits while the first one's commit has moved its files in but not yet written
    the manifest, instead of taking them for a foreign folder; both sources end listed."""
    import threading

    a = mbo_lab.write_synth(tmp_path / "a.dbn", 5_000, seed=1, progress=False)
    b = mbo_lab.write_synth(tmp_path / "b.dbn", 5_000, seed=2, progress=False)
    out = tmp_path / "st"
    moved, go = threading.Event(), threading.Event()
    real = store._crash_point

    def pause(step):
        if step == "before-manifest" and threading.current_thread().name == "first":
            moved.set()
            go.wait(30)
        real(step)

    monkeypatch.setattr(store, "_crash_point", pause)
    errors = []

    def run(src):
        try:
            store.export(src, out, levels=2, what=("bbo",), progress=False)
        except Exception as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    first = threading.Thread(target=run, args=(a,), name="first")
    first.start()
    assert moved.wait(60)  # files moved in, no manifest yet
    second = threading.Thread(target=run, args=(b,), name="second")
    second.start()
    second.join(1.0)
    assert second.is_alive()  # waiting on the store's lock, not failed
    go.set()
    first.join(60)
    second.join(60)
    assert errors == []
    m = json.loads((out / store.MANIFEST).read_text())
    assert len(m["sources"]) == 2
