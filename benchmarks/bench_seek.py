"""Open + seek benchmark: open a day, then seek to random positions (target p95 < 50 ms).

Opens a replay session on a DBN file (``--path`` or ``MBO_LAB_BENCH_PATH``) or on
``--records`` generated records (in memory), reports the open time (the books pass and
the checkpoint pass), checkpoint memory and peak RSS, then seeks to random record indices
and random times and prints the median / p95 / max latency. Prints figures; not a test.
Files of 50M records or more: run under ``flock /work/bench_data/big.lock``.

    python benchmarks/bench_seek.py --records 1e7
    python benchmarks/bench_seek.py --path /work/bench_data/synth_100000000.dbn
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mbo_lab  # noqa: E402


def _rss() -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon = 0.0
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return f"peak RSS {peak:,.0f} MiB (anonymous now {anon:,.0f} MiB)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default=os.environ.get("MBO_LAB_BENCH_PATH"),
                    help="DBN file to open (default: generate --records records)")
    ap.add_argument("--records", type=float, default=1e7)
    ap.add_argument("--seeks", type=int, default=200)
    ap.add_argument("--checkpoint-every", type=int, default=None)
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()}")
    mbo_lab.warmup()
    if args.path:
        t0 = time.perf_counter()
        src = mbo_lab.load(args.path)
        print(f"load (memory map) {args.path}: {time.perf_counter() - t0:.2f} s")
    else:
        t0 = time.perf_counter()
        src = mbo_lab.synth_records(int(args.records), seed=11)
        print(f"generated {len(src):,} records in {time.perf_counter() - t0:.1f} s")
    print(f"before open: {_rss()}")
    t0, c0 = time.perf_counter(), time.process_time()
    s = mbo_lab.open(src, checkpoint_every=args.checkpoint_every, progress=False)
    load = time.perf_counter() - t0
    load_cpu = time.process_time() - c0
    n = len(s)
    cp_bytes = sum(c.state.nbytes() for c in s._checkpoints)
    print(f"open {n:,} records ({len(s.books)} books; {len(s._checkpoints)} checkpoints every "
          f"{s.checkpoint_every:,} records, {cp_bytes / 2**20:.0f} MiB): {load:.2f} s "
          f"wall, {load_cpu:.2f} s CPU ({n / load / 1e6:.1f}M rec/s wall; checkpoint pass "
          f"{s.load_seconds:.2f} s); {_rss()}")
    # compile every seek path once
    s.seek(n // 3)
    s.seek(time=int(s.data.records["ts_recv"][n // 4]))
    rng = np.random.default_rng(0)
    lat, cpu = [], []
    for idx in rng.integers(0, n, args.seeks):
        t0, c0 = time.perf_counter(), time.process_time()
        s.seek(int(idx))
        lat.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ts = s.data.records["ts_recv"]
    for t in rng.integers(int(ts[0]), int(ts[-1]), args.seeks // 4):
        t0, c0 = time.perf_counter(), time.process_time()
        s.seek(time=int(t))
        lat.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for name, v in (("wall", lat), ("CPU", cpu)):
        ms = np.array(v) * 1000
        print(f"seek {name} time over {len(ms)} random seeks: median {np.median(ms):.1f} ms, "
              f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (target p95 < 50 ms)")
    print("(CPU time = this process's own CPU; on a shared machine wall time also holds the "
          "time other processes ran)")
    print(f"after seeks: {_rss()}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
