"""Book-kernel benchmark: prints records/s and peak RSS; a benchmark, not a test.

Measures, in one run on this machine:

* reference book vs Numba kernel, apply + BBO at every F_LAST, on CLX5 and on a generated
  stream (ratio from the same run, same records);
* kernel with top-10 at every F_LAST;
* file -> BBO end to end from ``.dbn`` (memory-mapped) and ``.dbn.zst`` (streamed);
* N generated records through BBO streamed from a ``.dbn.zst`` file in chunks, peak RSS;
* first BBO of CLX5 in a fresh process, with a warm and with a cold Numba cache.

Usage::

    python benchmarks/bench_kernel.py                 # 10M-record stream
    python benchmarks/bench_kernel.py --records 2e6 --big 0     # quicker
    python benchmarks/bench_kernel.py --big 1e8       # also the 100M streaming run

Each measurement that needs a clean process (RSS, first call) runs in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mbo_lab  # noqa: E402
from mbo_lab.book.engine import NumbaEngine, ReferenceEngine  # noqa: E402
from mbo_lab.book.state import BookState  # noqa: E402


def median_rate(fn, n_records: int, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_records / statistics.median(times), times


def kernel_rate(records: np.ndarray, levels: int, repeats: int, chunk: int = 1 << 20) -> float:
    """Apply + top-``levels`` at every F_LAST, streamed in chunks (outputs per chunk)."""
    # warm: compile, and size the state once so the timed runs measure steady state
    warm = NumbaEngine(levels, trades=False)
    warm.apply(records[: min(len(records), chunk)])

    def run():
        eng = NumbaEngine(levels, trades=False, state=BookState())
        for lo in range(0, len(records), chunk):
            eng.apply(records[lo: lo + chunk])

    rate, _ = median_rate(run, len(records), repeats)
    return rate


def reference_rate(records: np.ndarray) -> float:
    t0 = time.perf_counter()
    ReferenceEngine(1, trades=False).apply(records)
    return len(records) / (time.perf_counter() - t0)


def child(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line; add peak RSS (MiB).

    Peak RSS is VmHWM from /proc (ru_maxrss would carry the parent's peak across exec).
    """
    wrapper = (
        "import json, resource, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        + code
        + "\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "out['peak_rss_mib'] = int(hwm.split()[1]) / 1024\n"
        "print(json.dumps(out))\n"
    )
    e = dict(os.environ)
    if env:
        e.update(env)
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                         env=e, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def end_to_end(path: Path) -> dict:
    code = (
        "import mbo_lab\n"
        "from mbo_lab.book.build import iter_frames\n"
        "mbo_lab.warmup()\n"
        f"t0 = time.perf_counter(); n = 0; states = 0\n"
        f"for chunk, fr in iter_frames({str(path)!r}, levels=1, engine='numba'):\n"
        "    n += len(chunk); states += len(fr)\n"
        "dt = time.perf_counter() - t0\n"
        "out = {'records': n, 'states': states, 'seconds': dt, 'rate': n / dt}\n"
    )
    return child(code)


def first_call(data_path: str, cache_dir: str | None) -> dict:
    code = (
        "t0 = time.perf_counter()\n"
        "import mbo_lab\n"
        f"df = mbo_lab.bbo({data_path!r})\n"
        "out = {'seconds': time.perf_counter() - t0, 'rows': len(df)}\n"
    )
    env = {"NUMBA_CACHE_DIR": cache_dir} if cache_dir else None
    return child(code, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=float, default=1e7, help="generated stream length")
    ap.add_argument("--big", type=float, default=0,
                    help="records for the streamed peak-RSS run (e.g. 1e8); 0 skips it")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-records", type=int, default=200_000,
                    help="records of each stream the reference book is timed on")
    args = ap.parse_args()
    n = int(args.records)
    rows: list[tuple[str, str]] = []

    def report(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name:<58} {value}", flush=True)

    print(f"mbo_lab {mbo_lab.__version__}, numba kernel benchmark, {os.cpu_count()} cores")
    clx5 = mbo_lab.get_settings().data_path
    streams = []
    if Path(clx5).is_file():
        streams.append(("CLX5", mbo_lab.load(clx5).records))
    else:
        print(f"(CLX5 not found at {clx5}: skipped)")
    t0 = time.perf_counter()
    synth = mbo_lab.synth_records(n, seed=1)
    print(f"generated {n:,} records in {time.perf_counter() - t0:.1f} s")
    streams.append((f"synthetic {n / 1e6:g}M", synth))

    for name, recs in streams:
        m = min(len(recs), args.ref_records)
        ref = reference_rate(recs[:m])
        ker_same = kernel_rate(recs[:m], 1, args.repeats)
        report(f"{name}: reference book, apply+BBO ({m:,} rec)", f"{ref / 1e6:8.3f} M rec/s")
        report(f"{name}: kernel, apply+BBO (same {m:,} rec)",
               f"{ker_same / 1e6:8.2f} M rec/s  ({ker_same / ref:,.0f}x reference)")
        if len(recs) > m:
            ker = kernel_rate(recs, 1, args.repeats)
            report(f"{name}: kernel, apply+BBO (all {len(recs):,} rec)",
                   f"{ker / 1e6:8.2f} M rec/s")
        top = kernel_rate(recs, 10, max(1, args.repeats // 2))
        report(f"{name}: kernel, apply+top-10 at every F_LAST", f"{top / 1e6:8.2f} M rec/s")

    with tempfile.TemporaryDirectory(prefix="mbo_bench_") as tmp:
        plain = Path(tmp) / "synth.dbn"
        zst = Path(tmp) / "synth.dbn.zst"
        mbo_lab.write_dbn(plain, synth)
        mbo_lab.write_dbn(zst, synth)
        del synth
        for path in (plain, zst):
            r = end_to_end(path)
            report(f"file -> BBO end to end, {path.name} ({r['records']:,} rec)",
                   f"{r['rate'] / 1e6:8.2f} M rec/s, peak RSS {r['peak_rss_mib']:.0f} MiB")
        if args.big:
            big = Path(tmp) / "big.dbn.zst"
            t0 = time.perf_counter()
            mbo_lab.write_synth(big, int(args.big), seed=2, progress=False)
            print(f"generated {int(args.big):,} records to {big.name} in "
                  f"{time.perf_counter() - t0:.0f} s ({big.stat().st_size / 2**20:.0f} MiB)")
            r = end_to_end(big)
            report(f"{int(args.big):,} records streamed through BBO (.zst)",
                   f"{r['rate'] / 1e6:8.2f} M rec/s, peak RSS {r['peak_rss_mib']:.0f} MiB")

    if Path(clx5).is_file():
        first_call(clx5, None)  # make sure the default cache is warm
        warm = [first_call(clx5, None)["seconds"] for _ in range(3)]
        report("fresh process -> first CLX5 BBO, warm cache (median of 3)",
               f"{statistics.median(warm):8.2f} s")
        with tempfile.TemporaryDirectory(prefix="mbo_numba_cold_") as cold_dir:
            cold = first_call(clx5, cold_dir)
        report("fresh process -> first CLX5 BBO, cold cache", f"{cold['seconds']:8.2f} s")
    print(f"\nthis process peak RSS: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
