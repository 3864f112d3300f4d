"""Batch replay on a real 2-worker LocalCluster, compared with a single-process run."""

from __future__ import annotations

import pandas as pd
import pytest

import mbo_lab
from mbo_lab.batch import batch, resolve_files

distributed = pytest.importorskip("distributed")

DAY = 86_400_000_000_000
START = 1_735_828_200_000_000_000  # 2025-01-02 14:30 UTC


@pytest.fixture(scope="module")
def day_files(tmp_path_factory):
    """Three generated files, one trading day each (different seeds and dates)."""
    d = tmp_path_factory.mktemp("days")
    paths = []
    for k in range(3):
        p = d / f"day{k}.dbn.zst"
        mbo_lab.write_synth(p, 30_000, seed=10 + k, start_ns=START + k * DAY, progress=False)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as lc, Client(lc) as client:
        yield client


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index() if "ts_recv" not in df.columns and df.index.name == "ts_recv" else df
    cols = [c for c in ("ts_recv", "record_index", "instrument_id", "publisher_id")
            if c in df.columns]
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str)
    return df.sort_values(cols).reset_index(drop=True)[sorted(df.columns)]


def test_resolve_files_pattern_and_folder(day_files):
    folder = day_files[0].parent
    assert resolve_files(str(folder / "*.dbn.zst")) == sorted(day_files)
    assert resolve_files(folder) == sorted(day_files)
    with pytest.raises(mbo_lab.MboLabError):
        resolve_files(str(folder / "nothing-*.dbn"))


def test_batch_equals_single_process(day_files, cluster, tmp_path):
    from mbo_lab.store import export, read

    res = batch(day_files, tmp_path / "batch", client=cluster, levels=3,
                what=("bbo", "trades"), progress=False)
    assert list(res.report["status"]) == ["ok"] * 3
    # the work really ran in the two worker processes, not here
    assert set(res.report["worker_pid"]) <= set(cluster.run(lambda: __import__("os").getpid()).values())
    single = tmp_path / "single"
    for p in day_files:
        export(p, single, levels=3, what=("bbo", "trades"), progress=False)
    for table in ("bbo", "trades"):
        got = _sorted(read(tmp_path / "batch", table))
        want = _sorted(read(single, table))
        assert len(got) > 0
        pd.testing.assert_frame_equal(got, want)
    # the Dask DataFrame view holds the same rows
    assert len(res.table("bbo")) == len(read(single, "bbo"))


def test_corrupt_file_reported_others_done(day_files, cluster, tmp_path):
    bad = tmp_path / "corrupt.dbn"
    bad.write_bytes(b"DBN\x03" + b"\xff" * 200)
    files = [day_files[0], bad, day_files[1]]
    res = batch(files, tmp_path / "out", client=cluster, progress=False)
    rep = res.report.set_index("file")
    assert rep.loc[str(bad), "status"] == "error"
    assert "DBN" in rep.loc[str(bad), "error"] or "metadata" in rep.loc[str(bad), "error"]
    assert rep.loc[str(day_files[0]), "status"] == "ok"
    assert rep.loc[str(day_files[1]), "status"] == "ok"
    # re-running skips the files already done and retries the failed one
    again = batch(files, tmp_path / "out", client=cluster, progress=False).report.set_index("file")
    assert again.loc[str(day_files[0]), "status"] == "skipped"
    assert again.loc[str(day_files[1]), "status"] == "skipped"
    assert again.loc[str(bad), "status"] == "error"
    forced = batch(files[:1], tmp_path / "out", client=cluster, overwrite=True, progress=False)
    assert list(forced.report["status"]) == ["ok"]


def test_bad_arguments_fail_before_any_cluster(day_files, tmp_path):
    import time

    t0 = time.perf_counter()
    for kw, word in (({"n_workers": -1}, "n_workers"), ({"n_workers": 0}, "n_workers"),
                     ({"levels": 100_000}, "levels")):
        with pytest.raises(mbo_lab.MboLabError, match=word):
            batch(day_files, tmp_path / "o", progress=False, **kw)
    assert time.perf_counter() - t0 < 5  # no LocalCluster was started
    (tmp_path / "file").write_text("x")
    with pytest.raises(mbo_lab.MboLabError, match="is a file"):
        batch(day_files, tmp_path / "file", progress=False)


def test_concurrent_commits_keep_every_file(day_files, cluster, tmp_path):
    """Two workers commit into one store at the same time (the lock queues them): the
    manifest lists every file's partitions, nothing else is on disk."""
    from mbo_lab.store import files, read

    res = batch(day_files, tmp_path / "st", client=cluster, levels=2, what=("bbo",),
                progress=False)
    assert list(res.report["status"]) == ["ok"] * 3
    listed = sorted(files(tmp_path / "st", "bbo"))
    on_disk = sorted(str(p) for p in (tmp_path / "st" / "bbo").rglob("*.parquet"))
    assert listed == on_disk and len(listed) >= 3
    assert len(read(tmp_path / "st", "bbo")) == sum(len(mbo_lab.bbo(p)) for p in day_files)
