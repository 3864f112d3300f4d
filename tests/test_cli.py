"""The mbo-lab command: each verb on real files, errors with exit status 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import mbo_lab
from mbo_lab.cli import main


def test_info_json_on_clx5(clx5_path, capsys):
    assert main(["info", str(clx5_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 38_212
    assert info["counters"]["unknown_cancel"] == 1_224
    assert info["counters"]["unknown_modify"] == 216
    assert info["crossed_states"] == 172 and info["locked_states"] == 0
    assert info["symbols"] == ["CLX5"]


def test_synth_then_mbp_parquet_and_csv(tmp_path, capsys):
    f = tmp_path / "s.dbn.zst"
    assert main(["synth", "-o", str(f), "--records", "20000", "--seed", "4"]) == 0
    assert len(mbo_lab.load(f)) == 20_000
    out_pq = tmp_path / "book.parquet"
    out_csv = tmp_path / "book.csv"
    assert main(["mbp", str(f), "--levels", "3", "-o", str(out_pq), "--chunk-records",
                 "3000"]) == 0
    assert main(["mbp", str(f), "--levels", "3", "-o", str(out_csv)]) == 0
    pq = pd.read_parquet(out_pq)
    want = mbo_lab.mbp(f, levels=3)
    assert len(pq) == len(want)
    np.testing.assert_array_equal(pq["record_index"].to_numpy(), want["record_index"].to_numpy())
    np.testing.assert_allclose(pq["bid_px_02"].to_numpy(), want["bid_px_02"].to_numpy(),
                               equal_nan=True)
    np.testing.assert_array_equal(pq["ask_sz_01"].to_numpy(), want["ask_sz_01"].to_numpy())
    csv = pd.read_csv(out_csv)
    assert list(csv.columns[:1]) == ["ts_recv"] and len(csv) == len(want)
    assert {"bid_px_00", "ask_ct_02", "crossed", "locked"} <= set(csv.columns)


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.dbn")]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "demo_path" in err
    bad = tmp_path / "x.dbn"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 2
    assert "not a DBN file" in capsys.readouterr().err
    f = tmp_path / "s.dbn"
    mbo_lab.write_synth(f, 1000, progress=False)
    assert main(["mbp", str(f), "-o", str(tmp_path / "out.txt")]) == 2


def test_demo_prints_a_book_summary(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "demo data" in out and "F_LAST" in out and "book " in out


@pytest.mark.slow
def test_batch_verb(tmp_path, capsys):
    for k in range(2):
        mbo_lab.write_synth(tmp_path / f"d{k}.dbn", 5_000, seed=k, progress=False)
    rc = main(["batch", str(tmp_path / "*.dbn"), "-o", str(tmp_path / "store"),
               "--workers", "1", "--levels", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "'ok': 2" in out
    assert len(mbo_lab.read_store(tmp_path / "store", "bbo")) > 0


# --------------------------------------------------------------------------- streaming


def _peak_rss(args: list[str]) -> int:
    """Peak RSS (bytes) of one ``mbo-lab`` child process (its own ru_maxrss)."""
    import os
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "mbo_lab.cli", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    p.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, err
    return ru.ru_maxrss * 1024


@pytest.mark.slow
def test_mbp_and_export_memory_bounded_by_chunk(tmp_path):
    """5x the records, same small chunk: peak RSS of `mbo-lab mbp` and `mbo-lab export`
    grows far less than the input (the MBP-10 output of the big file alone would be
    ~300 MB; its records 56 MB)."""
    small = mbo_lab.write_synth(tmp_path / "s.dbn", 200_000, seed=2, progress=False)
    big = mbo_lab.write_synth(tmp_path / "b.dbn", 1_000_000, seed=2, progress=False)
    grown = big.stat().st_size - small.stat().st_size  # 45 MB more input
    chunk = ["--chunk-records", "20000"]
    rss = {}
    for name, f in (("s", small), ("b", big)):
        rss["mbp", name] = _peak_rss(["mbp", str(f), "-o", str(tmp_path / f"{name}.parquet"),
                                      *chunk])
        rss["export", name] = _peak_rss(["export", str(f), "-o", str(tmp_path / f"st{name}"),
                                         "--tables", "bbo,mbp,trades", *chunk])
    for verb in ("mbp", "export"):
        assert rss[verb, "b"] < 1.3 * rss[verb, "s"], (verb, rss)
        # neither the mapped input nor the output is kept: far less growth than the input
        assert rss[verb, "b"] - rss[verb, "s"] < grown / 2, (verb, rss, grown)
    got = pd.read_parquet(tmp_path / "b.parquet")
    assert len(got) == int(np.count_nonzero(mbo_lab.load(big).records["flags"] & 0x80))
    assert got.index.name == "ts_recv"


def test_mbp_parquet_with_empty_chunks_on_clx5(clx5_path, clx5, tmp_path, capsys):
    """Chunks of 320 records: some hold no F_LAST record; the table is still whole."""
    out = tmp_path / "x.parquet"
    assert main(["mbp", str(clx5_path), "--chunk-records", "320", "--levels", "3",
                 "-o", str(out)]) == 0
    got = pd.read_parquet(out)
    want = mbo_lab.mbp(clx5, levels=3)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got["record_index"].to_numpy(),
                                  want["record_index"].to_numpy())
    np.testing.assert_array_equal(got.index.asi8, want.index.asi8)
    for c in ("bid_px_02", "ask_px_00"):
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), equal_nan=True)
    for c in ("ask_sz_02", "bid_ct_01"):
        np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy())
    assert set(got["symbol"]) == {"CLX5"}
    assert (got["crossed"].to_numpy() == want["crossed"].to_numpy()).all()
    assert not (tmp_path / "x.parquet.part").exists()


def test_mbp_without_any_f_last_writes_an_empty_table(tmp_path):
    recs = mbo_lab.synth_records(500, seed=1)
    recs["flags"] &= ~np.uint8(0x80)
    f = mbo_lab.write_dbn(tmp_path / "nolast.dbn", recs)
    assert main(["mbp", str(f), "-o", str(tmp_path / "e.parquet"), "--levels", "2"]) == 0
    got = pd.read_parquet(tmp_path / "e.parquet")
    assert len(got) == 0 and "bid_px_01" in got.columns


# --------------------------------------------------------------------------- outputs


def test_output_problems_exit_2_and_leave_nothing(tmp_path, capsys, monkeypatch):
    f = mbo_lab.write_synth(tmp_path / "s.dbn", 3_000, progress=False)
    cases = [
        (tmp_path / "missing" / "o.parquet", "does not exist"),
        (tmp_path, "is a folder"),
    ]
    for out, msg in cases:
        assert main(["mbp", str(f), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and err.count("\n") == 1
    existing = tmp_path / "old.parquet"
    existing.write_bytes(b"keep me")
    assert main(["mbp", str(f), "-o", str(existing)]) == 2
    assert "exists and would be replaced" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    assert main(["mbp", str(f), "-o", str(existing), "--force"]) == 0
    assert "replaced the existing file" in capsys.readouterr().out
    assert len(pd.read_parquet(existing)) > 0
    # the store is a folder, the output is a file
    assert main(["export", str(f), "-o", str(existing)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # read-only folder (we may run as root: the permission check is simulated)
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if str(p) == str(ro)
                        else real(p, m, *a, **k))
    assert main(["mbp", str(f), "-o", str(ro / "o.csv")]) == 2
    assert "read-only" in capsys.readouterr().err
    assert list(ro.iterdir()) == []


def test_full_disk_is_a_package_error(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing (simulated): exit 2, 'disk is full', no OUT or OUT.part left;
    the store keeps its previous content."""
    import errno

    import pyarrow.parquet as pq

    from mbo_lab import store

    f = mbo_lab.write_synth(tmp_path / "s.dbn", 20_000, progress=False)
    assert main(["export", str(f), "-o", str(tmp_path / "st"), "--tables", "bbo"]) == 0
    before = store.read(tmp_path / "st", "bbo")
    files_before = sorted((tmp_path / "st").rglob("*.parquet"))
    capsys.readouterr()
    calls = {"n": 0}
    real = pq.ParquetWriter.write_table

    def full(self, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "o.parquet"
    assert main(["mbp", str(f), "-o", str(out), "--chunk-records", "2000"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "o.parquet.part").exists()
    calls["n"] = 0
    assert main(["export", str(f), "-o", str(tmp_path / "st"), "--tables", "bbo",
                 "--chunk-records", "2000"]) == 2
    assert "disk is full" in capsys.readouterr().err
    pd.testing.assert_frame_equal(store.read(tmp_path / "st", "bbo"), before)
    assert sorted((tmp_path / "st").rglob("*.parquet")) == files_before
    assert not any((tmp_path / "st" / ".staging").iterdir())


def test_full_disk_on_the_real_file_leaves_no_part(tmp_path, capsys):
    """The output really on a full device (/dev/full): closing it fails again while the
    first error is handled; exit 2 with the disk-full message, and no OUT.part left."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    f = mbo_lab.write_synth(tmp_path / "s.dbn", 20_000, progress=False)
    out = tmp_path / "o.parquet"
    part = tmp_path / "o.parquet.part"
    part.symlink_to("/dev/full")
    assert main(["mbp", str(f), "--levels", "4", "-o", str(out), "--chunk-records",
                 "2500", "--force"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err
    assert not out.exists() and not part.is_symlink() and not part.exists()


# --------------------------------------------------------------------------- inputs


def _special_inputs(tmp_path):
    import os

    loop = tmp_path / "loop.dbn"
    os.symlink(loop, loop)
    fifo = tmp_path / "fifo.dbn"
    os.mkfifo(fifo)
    d = tmp_path / "adir.dbn"
    d.mkdir()
    return [(tmp_path / "missing.dbn", "not found"), (d, "directory"),
            (loop, "loop"), (fifo, "fifo")]


def test_export_and_mbp_check_inputs_first(tmp_path, capsys):
    for path, word in _special_inputs(tmp_path):
        for verb in (["export", str(path), "-o", str(tmp_path / "st")],
                     ["mbp", str(path), "-o", str(tmp_path / "o.parquet")],
                     ["info", str(path)]):
            assert main(verb) == 2, verb
            err = capsys.readouterr().err
            assert word in err.lower(), (verb, err)
            assert "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists()


def test_batch_reports_bad_inputs_without_a_cluster(tmp_path):
    from mbo_lab.batch import batch

    paths = [p for p, _ in _special_inputs(tmp_path) if not p.is_dir()]  # folders expand
    res = batch(paths, tmp_path / "out", progress=False)
    rep = res.report.set_index("file")
    assert list(rep["status"]) == ["error"] * 3
    assert "fifo" in rep.loc[str(tmp_path / "fifo.dbn"), "error"]
    assert "loop" in rep.loc[str(tmp_path / "loop.dbn"), "error"]
    assert "not found" in rep.loc[str(tmp_path / "missing.dbn"), "error"]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv,words", [
    (["mbp", "{f}", "-o", "{t}/o.parquet", "--levels", "100000"], "levels must be within"),
    (["mbp", "{f}", "-o", "{t}/o.parquet", "--levels", "0"], "levels must be within"),
    (["mbp", "{f}", "-o", "{t}/o.parquet", "--chunk-records", "0"], "chunk_records"),
    (["export", "{f}", "-o", "{t}/st", "--levels", "100000"], "levels must be within"),
    (["synth", "-o", "{t}/s.dbn", "--records", "-1"], "--records must be"),
    (["synth", "-o", "{t}/s.dbn", "--records", "10", "--clear-every", "0"], "--clear-every"),
    (["batch", "{f}", "-o", "{t}/b", "--workers", "-1"], "--workers must be"),
    (["batch", "{f}", "-o", "{t}/b", "--workers", "1", "--scheduler", "tcp://127.0.0.1:9",
      "--scheduler-timeout", "1"], "cannot reach the Dask scheduler"),
    (["lab", "--port", "70000"], "--port must be"),
])
def test_bad_arguments_exit_2_fast(argv, words, tmp_path, capsys):
    import time

    f = mbo_lab.write_synth(tmp_path / "s.dbn", 1_000, progress=False)
    argv = [a.format(f=f, t=tmp_path) for a in argv]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 20
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,line", [("SIGINT", 130, "mbo-lab: interrupted"),
                                           ("SIGTERM", 143, "mbo-lab: terminated")])
def test_signals_print_one_line_and_remove_part_files(sig, code, line, tmp_path):
    """Ctrl-C / SIGTERM while `mbo-lab mbp` writes (the slow reference engine keeps it
    busy): one line on stderr, the exit code, and no OUT.part left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    f = mbo_lab.write_synth(tmp_path / "s.dbn", 300_000, seed=5, progress=False)
    out = tmp_path / "o.parquet"
    p = subprocess.Popen([sys.executable, "-m", "mbo_lab.cli", "mbp", str(f), "-o", str(out),
                          "--engine", "reference", "--chunk-records", "2000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = tmp_path / "o.parquet.part"
    deadline = time.monotonic() + 120
    while not part.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert part.exists(), "the command never started writing"
    os.kill(p.pid, getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == code, err
    assert err.strip() == line
    assert not part.exists() and not out.exists()


# --------------------------------------------------------------------------- settings, lab


def test_info_and_demo_honour_mbo_lab_engine(clx5_path, capsys, monkeypatch):
    monkeypatch.setenv("MBO_LAB_ENGINE", "reference")
    assert main(["info", str(clx5_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["engine"] == "reference"
    assert info["counters"]["unknown_cancel"] == 1_224  # same book, other engine
    assert main(["info", str(clx5_path), "--json", "--engine", "numba"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "numba"  # argument wins
    assert main(["demo"]) == 0
    assert "engine      reference" in capsys.readouterr().out


def test_lab_verb_calls_launch_main(monkeypatch, tmp_path, capsys):
    import sys
    import types

    calls = []
    fake = types.ModuleType("mbo_lab.launch")
    fake.main = lambda path, *, port=None, open_browser=True: calls.append(
        (path, port, open_browser)) or 0
    monkeypatch.setitem(sys.modules, "mbo_lab.launch", fake)
    monkeypatch.setattr(mbo_lab, "launch", fake, raising=False)
    f = mbo_lab.write_synth(tmp_path / "s.dbn", 1_000, progress=False)
    assert main(["lab", str(f), "--port", "9123", "--no-browser"]) == 0
    assert main(["lab"]) == 0
    assert calls == [(str(f), 9123, False), (None, None, True)]
    assert main(["lab", str(tmp_path / "nope.dbn")]) == 2
    assert "not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mbo_lab.launch", None)  # not installed
    monkeypatch.delattr(mbo_lab, "launch", raising=False)
    assert main(["lab"]) == 2
    assert "not available" in capsys.readouterr().err


@pytest.mark.parametrize("opts,kw", [(["--every", "50ms"], {"every": "50ms"}),
                                     (["--changes-only"], {"changes_only": True}),
                                     (["--every", "1s", "--changes-only"],
                                      {"every": "1s", "changes_only": True})])
def test_mbp_sampling_options_match_the_api(opts, kw, tmp_path, capsys):
    """`mbo-lab mbp --every/--changes-only` (small chunks, so bins span chunks) writes the
    states mbo_lab.mbp(every=, changes_only=) returns (the kernel's sampling, itself
    checked against the reference book in the kernel's tests)."""
    f = mbo_lab.write_synth(tmp_path / "s.dbn", 30_000, seed=6, progress=False)
    out = tmp_path / "o.parquet"
    assert main(["mbp", str(f), "--levels", "3", "-o", str(out), "--chunk-records", "1700",
                 *opts]) == 0
    got = pd.read_parquet(out)
    want = mbo_lab.mbp(f, levels=3, **kw)
    full = mbo_lab.mbp(f, levels=3)
    assert 0 < len(got) < len(full)
    assert sorted(got["record_index"]) == sorted(want["record_index"])
    g = got.set_index("record_index").sort_index()
    w = want.set_index("record_index").sort_index()
    for c in ("bid_px_02", "ask_px_00"):
        np.testing.assert_allclose(g[c].to_numpy(), w[c].to_numpy(), equal_nan=True)
    for c in ("ask_sz_01", "bid_ct_00"):
        np.testing.assert_array_equal(g[c].to_numpy(), w[c].to_numpy())
    assert main(["mbp", str(f), "-o", str(tmp_path / "b.parquet"), "--every", "soon"]) == 2
    assert "--every" in capsys.readouterr().err


def test_cli_compressions_are_the_stores():
    from mbo_lab import cli, store

    assert cli._COMPRESSIONS == store.COMPRESSIONS


@pytest.fixture(scope="module")
def synth_40k(tmp_path_factory):
    """A 40k-record synthetic file and mbo_lab.mbp(levels=4)'s table of it (read-only:
    shared by the --compression cases)."""
    f = mbo_lab.write_synth(tmp_path_factory.mktemp("synth40k") / "s.dbn", 40_000, seed=9,
                            progress=False)
    return f, mbo_lab.mbp(f, levels=4)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "snappy", "none"])
def test_mbp_compressions_write_the_api_table(compression, synth_40k, tmp_path):
    """Every --compression writes one standard Parquet file (row groups encoded in threads,
    two kernel buffers in turn: chunks of 2500 records) that pandas reads back as
    mbo_lab.mbp's table: same states, values and column dtypes as the CLI's schema."""
    f, want = synth_40k
    out = tmp_path / f"{compression}.parquet"
    assert main(["mbp", str(f), "--levels", "4", "-o", str(out), "--chunk-records", "2500",
                 "--compression", compression]) == 0
    got = pd.read_parquet(out)
    assert len(got) == len(want) > 20_000
    np.testing.assert_array_equal(got.index.asi8, want.index.asi8)
    for c in want.columns:
        if c.startswith(("bid_px", "ask_px")):
            np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy(), err_msg=c)
        elif c == "symbol":
            assert (got[c].astype(str).to_numpy() == want[c].astype(str).to_numpy()).all()
        elif c == "ts_event":
            np.testing.assert_array_equal(got[c].array.asi8, want[c].array.asi8)
        else:
            np.testing.assert_array_equal(got[c].to_numpy().astype(np.int64),
                                          want[c].to_numpy().astype(np.int64), err_msg=c)
    assert got["bid_sz_00"].dtype == np.int64 and got["ask_ct_03"].dtype == np.int32
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out).metadata.num_row_groups >= 40_000 // 2500 - 1
