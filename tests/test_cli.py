"""The mbo-lab command: each verb on real files, errors with exit status 2."""

from __future__ import annotations

import json

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
