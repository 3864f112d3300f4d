"""Batch benchmark: speed-up from 1 to 2 Dask workers and the per-file overhead.

Generates F files of N records (one "day" each), then times ``mbo_lab.batch`` on a
LocalCluster with 1 and with 2 single-threaded worker processes (cluster start-up and
worker warm-up excluded: the clusters are started before the clock), and a single-process
loop over the same files for comparison. Per-file overhead is estimated from a run over
tiny files. Prints figures; not a test.

    python benchmarks/bench_batch.py --files 8 --records 500000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mbo_lab  # noqa: E402
from mbo_lab.batch import _warm_worker, batch  # noqa: E402

DAY = 86_400_000_000_000
START = 1_735_828_200_000_000_000


def make_files(folder: Path, n_files: int, n_records: int) -> list[Path]:
    out = []
    for k in range(n_files):
        p = folder / f"day{k:03d}.dbn.zst"
        mbo_lab.write_synth(p, n_records, seed=100 + k, start_ns=START + k * DAY,
                            progress=False)
        out.append(p)
    return out


def timed_batch(files, out_dir, workers: int) -> tuple[float, int]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as lc, Client(lc) as client:
        client.run(_warm_worker)
        t0 = time.perf_counter()
        res = batch(files, out_dir, client=client, overwrite=True, progress=False)
        dt = time.perf_counter() - t0
    return dt, int((res.report["status"] == "ok").sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--records", type=int, default=500_000)
    args = ap.parse_args()
    from mbo_lab.store import export

    with tempfile.TemporaryDirectory(prefix="mbo_batch_bench_") as tmp:
        tmp = Path(tmp)
        files = make_files(tmp / "in", args.files, args.records)
        tiny = make_files(tmp / "tiny", args.files, 2_000)
        total = args.files * args.records
        mbo_lab.warmup()
        t0 = time.perf_counter()
        for f in files:
            export(f, tmp / "single", what=("bbo", "trades"), progress=False)
        single = time.perf_counter() - t0
        t1, ok1 = timed_batch(files, tmp / "w1", 1)
        t2, ok2 = timed_batch(files, tmp / "w2", 2)
        tt, _ = timed_batch(tiny, tmp / "tiny_out", 2)
        print(f"{args.files} files x {args.records:,} records ({total:,} records)")
        print(f"single process loop        {single:8.2f} s  {total / single / 1e6:6.2f} M rec/s")
        print(f"batch, 1 worker            {t1:8.2f} s  {total / t1 / 1e6:6.2f} M rec/s ({ok1} ok)")
        print(f"batch, 2 workers           {t2:8.2f} s  {total / t2 / 1e6:6.2f} M rec/s ({ok2} ok)")
        print(f"speed-up 1 -> 2 workers    {t1 / t2:8.2f} x")
        print(f"per-file overhead (tiny files, 2 workers) {tt / args.files * 1000:6.0f} ms/file")


if __name__ == "__main__":
    main()
