"""Seek benchmark: time to reach random positions of a generated stream (target < 50 ms).

Opens a replay session on N generated records (checkpoints are built while loading),
then seeks to random record indices and random times and prints the median / p95 / max
latency, plus load time and checkpoint memory. Prints figures; not a test.

    python benchmarks/bench_seek.py --records 1e7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mbo_lab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=float, default=1e7)
    ap.add_argument("--seeks", type=int, default=200)
    ap.add_argument("--checkpoint-every", type=int, default=None)
    args = ap.parse_args()
    n = int(args.records)
    t0 = time.perf_counter()
    recs = mbo_lab.synth_records(n, seed=11)
    print(f"generated {n:,} records in {time.perf_counter() - t0:.1f} s")
    mbo_lab.warmup()
    t0 = time.perf_counter()
    s = mbo_lab.open(recs, checkpoint_every=args.checkpoint_every, progress=False)
    load = time.perf_counter() - t0
    cp_bytes = sum(c.state.nbytes() for c in s._checkpoints)
    print(f"open (full pass + {len(s._checkpoints)} checkpoints every "
          f"{s.checkpoint_every:,} records): {load:.2f} s, checkpoints {cp_bytes / 2**20:.0f} MiB")
    rng = np.random.default_rng(0)
    lat = []
    for idx in rng.integers(0, n, args.seeks):
        t0 = time.perf_counter()
        s.seek(int(idx))
        lat.append(time.perf_counter() - t0)
    ts = s.data.records["ts_recv"]
    for t in rng.integers(int(ts[0]), int(ts[-1]), args.seeks // 4):
        t0 = time.perf_counter()
        s.seek(time=int(t))
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1000
    print(f"seek latency over {len(ms)} random seeks: median {np.median(ms):.1f} ms, "
          f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (target < 50 ms)")


if __name__ == "__main__":
    main()
