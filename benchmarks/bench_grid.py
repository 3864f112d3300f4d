"""Liquidity-grid benchmark: whole-day overview and 1-minute zooms of one book.

Opens a replay session on a DBN file (``--path`` or ``MBO_LAB_BENCH_PATH``; without one,
``--records`` synthetic records are generated with ``mbo_lab.write_synth`` into a temporary
file), then times ``Session.liquidity``:

* the whole stream at ``--bins`` x ``--rows`` cells (targets: <= 1 s at 10M records,
  <= 10 s at 100M, with a progress bar beyond 2 s),
* ``--zooms`` 1-minute windows at random places in the day (target <= 150 ms each),

and prints a table with time, peak RSS, cells and bytes per result. Figures, not a test;
run big files under ``flock /work/bench_data/big.lock`` (see the brief).

    python benchmarks/bench_grid.py --path /work/bench_data/synth_10000000.dbn
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mbo_lab  # noqa: E402


def _rss() -> tuple[float, float]:
    """(peak RSS of the process, current anonymous RSS) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon = 0.0
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return peak, anon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=os.environ.get("MBO_LAB_BENCH_PATH"))
    ap.add_argument("--records", type=float, default=1e7,
                    help="records to generate when no --path is given")
    ap.add_argument("--bins", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--zooms", type=int, default=20)
    ap.add_argument("--zoom-seconds", type=float, default=60.0)
    args = ap.parse_args()
    tmp = None
    path = args.path
    if not path:
        tmp = tempfile.TemporaryDirectory()
        path = str(Path(tmp.name) / "synth.dbn")
        t0 = time.perf_counter()
        mbo_lab.write_synth(path, int(args.records), seed=1)
        print(f"generated {int(args.records):,} records in {time.perf_counter() - t0:.1f} s")
    print(f"load average: {os.getloadavg()}")
    mbo_lab.warmup()
    rows = []
    data = mbo_lab.load(path)
    t0, c0 = time.perf_counter(), time.process_time()
    s = mbo_lab.open(data, progress=False)
    t_open = time.perf_counter() - t0
    rows.append(("open (books + checkpoints)", t_open, *_rss(), "-", "-"))
    rows.append(("  (CPU time)", time.process_time() - c0, *_rss(), "", ""))
    n = len(s)
    print(f"{path}: {n:,} records, book {s.instrument_id}@{s.publisher_id}, "
          f"{len(s._checkpoints)} checkpoints every {s.checkpoint_every:,}")
    ts = s.data.records["ts_recv"]
    first, last = int(ts[0]), int(ts[-1])
    # compile the grid path on a tiny window first (a cold cache is not the figure here)
    s.liquidity(first, first + 10**9, time_bins=4, price_rows=4, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    g = s.liquidity(time_bins=args.bins, price_rows=args.rows)
    t_day = time.perf_counter() - t0
    rows.append((f"whole day {args.bins}x{args.rows}", t_day, *_rss(),
                 f"{g.bid_twa.size:,}", f"{g.nbytes / 2**20:.1f} MiB"))
    rows.append(("  (CPU time, both threads)", time.process_time() - c0, *_rss(), "", ""))
    print(g)
    rng = np.random.default_rng(0)
    span = int(args.zoom_seconds * 1e9)
    lat, cpu = [], []
    cells = 0
    nbytes = 0
    for _ in range(args.zooms):
        a = int(rng.integers(first, max(first + 1, last - span)))
        t0, c0 = time.perf_counter(), time.process_time()
        z = s.liquidity(a, a + span, time_bins=args.bins, price_rows=args.rows,
                        progress=False)
        lat.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        cells, nbytes = z.bid_twa.size, z.nbytes
    ms = np.array(lat) * 1000
    rows.append((f"{args.zoom_seconds:g}-s zoom p50 (n={len(ms)})", np.median(ms) / 1000,
                 *_rss(), f"{cells:,}", f"{nbytes / 2**20:.1f} MiB"))
    rows.append(("  zoom p95", np.percentile(ms, 95) / 1000, *_rss(), "", ""))
    rows.append(("  zoom max", ms.max() / 1000, *_rss(), "", ""))
    rows.append(("  zoom CPU p50", np.median(cpu), *_rss(), "", ""))
    rows.append(("  zoom CPU p95", np.percentile(cpu, 95), *_rss(), "", ""))
    t0 = time.perf_counter()
    s.seek(n // 2)
    h = s.history(points=600)
    rows.append(("history(600) at mid-day", time.perf_counter() - t0, *_rss(), f"{len(h)}",
                 f"{len(h.attrs['trades'])} trades"))
    print()
    print(f"{'result':34s} {'time':>9s} {'peak RSS':>10s} {'anon RSS':>10s} {'cells':>10s} "
          f"{'bytes':>12s}")
    for name, sec, peak, anon, c, b in rows:
        print(f"{name:34s} {sec * 1000:7.0f} ms {peak:7.0f} MiB {anon:7.0f} MiB {c:>10s} "
              f"{b:>12s}")
    print(f"load average after: {os.getloadavg()}")
    print("wall times on a shared machine include other processes' turns; CPU time is this "
          "process's own (both threads of the grid pass)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
