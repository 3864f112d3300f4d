"""A trading day through the public API: rate and peak RSS per path (a benchmark, not a
test). Figures are judged against issue 10's targets in the same run.

For each record count (1M, 10M; 50M, 100M with ``--big``) and each case, a fresh
subprocess loads the synthetic ``.dbn`` (memory-mapped), warms the kernels up on a tiny
stream, runs the case once and reports its wall time, CPU time and its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``kernel1`` / ``kernel10``: kernel-only apply + top-1 / top-10 at every F_LAST into
  pre-allocated, pre-touched outputs (the pure kernel rate); ``kernel1x2``: the same with
  the books split over 2 threads (``threads`` in the result: 1 when the split is uneven);
* ``floor1`` / ``floor10``: allocate and fill fresh arrays of the byte size of the frame
  ``bbo`` / ``mbp(levels=10)`` returns (the fresh-memory floor: a returned frame must be
  written to fresh memory once);
* ``bbo``: ``mbo_lab.bbo(data)`` (threads chosen automatically: 2 on an idle 2-core
  machine); ``bbo1t``: the same on one thread; ``mbp10``: ``mbo_lab.mbp(data, levels=10)`` at every
  F_LAST (skipped when its frame would not fit the memory budget ``--max-frame-gib``);
  ``mbp10_100ms``: ``mbo_lab.mbp(data, levels=10, every="100ms")``;
* ``baseline``: import + warmup only (the RSS every case starts from).

Usage::

    python benchmarks/bench_day.py --data-dir DIR            # DIR/synth_<N>.dbn if present
    python benchmarks/bench_day.py --sizes 1e6,1e7 --big 5e7,1e8 --lock FILE

Files come from ``--data-dir`` (or ``MBO_LAB_BENCH_DIR``) as ``synth_<N>.dbn``; a missing
size is cut from a larger file there (the first N records, memory-mapped) or generated
with ``mbo_lab.write_synth`` into a temporary folder. ``--lock FILE`` runs the ``--big``
sizes under ``flock FILE`` (one big job at a time on a shared machine). Timings on a
shared machine are noisy: compare ratios from one run and read the load average printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import numpy as np
import mbo_lab
from _kernel import kernel_buffer
from mbo_lab.book.engine import NumbaEngine, _readonly

case, path, n, nbytes = {case!r}, {path!r}, {n}, {nbytes}
mbo_lab.warmup()
data = mbo_lab.load(path)
if n < len(data):
    data = mbo_lab.MboData(data.records[:n], data.metadata)
res = {{"case": case, "records": len(data)}}


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    res["wall"] = time.perf_counter() - w0
    res["cpu"] = time.process_time() - c0
    return out


if case.startswith("kernel") and "x" in case:
    from mbo_lab.book import build as B
    levels, nthreads = (int(x) for x in case[6:].split("x"))
    recs = _readonly(data.records)
    buf, n_tr = kernel_buffer(recs, levels)  # pre-touched; not warmed (no 1-thread run)
    nthreads, mul = B._plan_threads(recs, nthreads)
    res["threads"] = nthreads
    tr = np.zeros(n_tr, np.int64)
    timed(lambda: B._run_threads(recs, buf, tr, levels, nthreads, mul, B.THREAD_CHUNK, None))
    res["frame_bytes"] = 0
elif case.startswith("kernel"):
    levels = int(case[6:])
    recs = _readonly(data.records)
    buf, _ = kernel_buffer(recs, levels, warm=1_000_000)  # the kernel alone is timed
    eng = NumbaEngine(levels, trades=False)
    timed(lambda: eng.run(recs, buf, 0, np.zeros(0, np.int64), 0))
    res["frame_bytes"] = 0
elif case.startswith("floor"):
    def fill():
        a = np.empty(nbytes, np.uint8)
        a.fill(1)
        return a
    timed(fill)
    res["frame_bytes"] = nbytes
elif case == "bbo":
    df = timed(lambda: mbo_lab.bbo(data))
    res["threads"] = df.attrs["threads"]  # what bbo() decided (idle CPUs, prefault)
    res["frame_bytes"] = int(df.memory_usage(index=True).sum())
    res["rows"] = len(df)
elif case == "bbo1t":
    df = timed(lambda: mbo_lab.bbo(data, threads=1))
    res["frame_bytes"] = int(df.memory_usage(index=True).sum())
    res["rows"] = len(df)
elif case == "mbp10":
    df = timed(lambda: mbo_lab.mbp(data, levels=10))
    res["frame_bytes"] = int(df.memory_usage(index=True).sum())
    res["rows"] = len(df)
elif case == "mbp10_100ms":
    df = timed(lambda: mbo_lab.mbp(data, levels=10, every="100ms"))
    res["frame_bytes"] = int(df.memory_usage(index=True).sum())
    res["rows"] = len(df)
elif case == "baseline":
    timed(lambda: None)
    res["frame_bytes"] = 0
res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(res))
"""

GIB = 1 << 30
_REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def settle(quiet_s: float = 3.0, max_s: float = 60.0) -> None:
    """Wait until the VM's free page reporting is idle (its counter unchanged for
    ``quiet_s`` seconds, at most ``max_s``). A VM that reports freed memory to the host
    pays a host fault on the next first touch (0.4-0.6 GiB/s here, against 1.5-2 GiB/s for
    memory freed moments ago): without this, a case that runs right after one that freed
    gigabytes (floor1 after bbo) gets cheap fresh memory and the ratios lie. No-op without
    ``/sys/module/page_reporting`` (not a VM with free page reporting)."""
    import time

    if not _REPORTED.exists():
        return
    t0 = since = time.monotonic()
    last = _REPORTED.read_text()
    while time.monotonic() - t0 < max_s:
        time.sleep(0.5)
        cur = _REPORTED.read_text()
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def run_case(case: str, path: Path, n: int, nbytes: int = 0, lock: str | None = None,
             cache: str | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), case=case,
                        path=str(path), n=n, nbytes=nbytes)
    cmd = [sys.executable, "-c", code]
    if lock:
        cmd = ["flock", lock] + cmd
    env = dict(os.environ)
    if cache:
        env["NUMBA_CACHE_DIR"] = cache
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"case": case, "error": (out.stderr or out.stdout)[-600:]}


def data_file(n: int, data_dir: Path | None, tmp: Path, books: int = 0) -> Path:
    """A file with at least ``n`` records: DIR/<prefix><n>.dbn, a larger one, or generated.
    ``books=0``: the default synthetic books (``synth_``: 5 books, the largest 37 % of the
    records); ``books=K``: K equal books (``synth_multiK_``), as a multi-instrument feed."""
    prefix = f"synth_multi{books}_" if books else "synth_"
    if data_dir is not None:
        exact = data_dir / f"{prefix}{n}.dbn"
        if exact.is_file():
            return exact
        larger = sorted((int(p.stem[len(prefix):]), p) for p in data_dir.glob(f"{prefix}*.dbn")
                        if p.stem[len(prefix):].isdigit() and int(p.stem[len(prefix):]) >= n)
        if larger:
            return larger[0][1]
    import mbo_lab

    path = tmp / f"{prefix}{n}.dbn"
    if not path.exists():
        kw = {}
        if books:
            from mbo_lab.io.synth import SynthInstrument

            kw["instruments"] = [SynthInstrument(2000 + k, 1, f"MB{k:02d}", 10_000_000,
                                                 (50 + 10 * k) * 1_000_000_000)
                                 for k in range(books)]
        mbo_lab.write_synth(path, n, seed=1, progress=False, **kw)
    return path


def judge(case: str, r: dict, got: dict, base_rss: int) -> str:
    """Issue 10's targets for ``case``, as ratios of wall (and CPU) times from this run.
    RSS is judged as the growth over the baseline case (interpreter, kernels and the
    mapped input already touched by load()) relative to the returned frame."""
    def t(name: str, key: str) -> float:
        return got.get(name, {}).get(key, 0.0) or 0.0

    fb = r.get("frame_bytes", 0)
    extra = (r["peak_rss"] - base_rss) / fb if fb else float("nan")
    if case == "bbo" and t("kernel1", "wall"):
        return (f"rate {t('kernel1', 'wall') / r['wall']:.0%} of kernel "
                f"(cpu {t('kernel1', 'cpu') / r['cpu']:.0%}; target >= 40%), "
                f"{r['wall'] / (t('kernel1', 'wall') + t('floor1', 'wall')):.2f}x kernel+floor "
                f"(cpu {r['cpu'] / (t('kernel1', 'cpu') + t('floor1', 'cpu')):.2f}x; "
                f"target <= 1.3), RSS growth {extra:.2f}x frame (target <= 1.5)")
    if case == "mbp10" and t("kernel10", "wall"):
        return (f"{r['wall'] / (t('kernel10', 'wall') + t('floor10', 'wall')):.2f}x "
                f"kernel10+floor (cpu "
                f"{r['cpu'] / (t('kernel10', 'cpu') + t('floor10', 'cpu')):.2f}x; "
                f"target <= 1.5), RSS growth {extra:.2f}x frame (target <= 1.2)")
    if case == "mbp10_100ms":
        return f"{r.get('rows', 0):,} rows, RSS growth {extra:.2f}x frame"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("MBO_LAB_BENCH_DIR"))
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--big", default="", help="sizes run under --lock, e.g. 5e7,1e8")
    ap.add_argument("--lock", default=None, help="flock file for the --big sizes")
    ap.add_argument("--max-frame-gib", type=float, default=6.0,
                    help="skip mbp at every F_LAST when its frame would exceed this")
    ap.add_argument("--cases", default="baseline,kernel1,kernel1x2,kernel10,bbo,bbo1t,floor1,"
                                       "mbp10,"
                                       "floor10,mbp10_100ms")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--no-settle", dest="settle", action="store_false",
                    help="do not wait, before each case, until the VM's free page reporting "
                         "is idle (by default every case meets fresh memory in the same state)")
    ap.add_argument("--books", type=int, default=0,
                    help="K > 0: a stream of K equal books (synth_multiK_<N>.dbn)")
    args = ap.parse_args()
    data_dir = Path(args.data_dir) if args.data_dir else None
    sizes = [(int(float(x)), False) for x in args.sizes.split(",") if x]
    sizes += [(int(float(x)), True) for x in args.big.split(",") if x]
    cases = args.cases.split(",")
    print(f"# load average at start: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, big in sizes:
            path = data_file(n, data_dir, Path(tmp), args.books)
            lock = args.lock if big else None
            input_bytes = 56 * n
            got: dict[str, dict] = {}
            for case in cases:
                nbytes = 0
                if case == "floor1":
                    nbytes = got.get("bbo", {}).get("frame_bytes", 0)
                if case == "floor10":
                    nbytes = got.get("mbp10", {}).get("frame_bytes", 0)
                    if not nbytes and "kernel10" in got:
                        nbytes = int(got["kernel10"].get("rows", 0))
                if case.startswith("floor") and not nbytes:
                    got[case] = {"case": case, "skipped": "no frame size measured"}
                    continue
                if case in ("mbp10", "kernel10"):
                    est = 0.79 * n * 370  # F_LAST share of the synthetic stream x row bytes
                    if est > args.max_frame_gib * GIB:
                        got[case] = {"case": case, "skipped":
                                     f"frame ~{est / GIB:.1f} GiB > --max-frame-gib "
                                     f"{args.max_frame_gib}: a day of MBP-10 at every F_LAST "
                                     "does not fit; see mbp10_100ms"}
                        continue
                if args.settle:
                    settle()
                r = run_case(case, path, n, nbytes, lock)
                r["load"] = os.getloadavg()[0]
                got[case] = r
                print(json.dumps({"n": n, **r}), flush=True)
            rows.append((n, input_bytes, got))
    # ---- table
    print()
    print(f"{'records':>11} {'case':<12} {'wall s':>8} {'cpu s':>8} {'Mrec/s':>8} "
          f"{'peak RSS':>9} {'frame':>9}  note")
    for n, _input_bytes, got in rows:
        base = got.get("baseline", {}).get("peak_rss", 0)
        for case, r in got.items():
            if "skipped" in r or "error" in r:
                print(f"{n:>11,} {case:<12} {'-':>8} {'-':>8} {'-':>8} {'-':>9} {'-':>9}  "
                      f"{r.get('skipped') or 'ERROR ' + r['error'][-200:]}")
                continue
            wall, cpu = r["wall"], r["cpu"]
            rate = n / wall / 1e6 if wall > 0 and not case.startswith(("floor", "baseline")) \
                else float("nan")
            fb = r.get("frame_bytes", 0)
            print(f"{n:>11,} {case:<12} {wall:>8.3f} {cpu:>8.3f} {rate:>8.2f} "
                  f"{r['peak_rss'] / GIB:>8.2f}G {fb / GIB:>8.2f}G  {judge(case, r, got, base)}"
                  f"{' threads ' + str(r['threads']) if 'threads' in r else ''}"
                  f" (load {r['load']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps([{"records": n, "cases": g} for n, _, g in rows],
                                              indent=1))


if __name__ == "__main__":
    main()
