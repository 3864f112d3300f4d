"""The notebook dashboard in a real browser during playback (a benchmark, not a test).

Runs the measurement of ``tests/test_notebooks_browser.py`` (JupyterLab on 127.0.0.1,
``notebooks/02_dashboard.ipynb`` in headless Debian Chromium at 1366x768, browser in
America/Chicago, JupyterLab's dark theme, every panel visible, Play pressed at 100x) on
each data set and prints, per data set:

* fps: distinct contents of the DOM ladder per second (the fastest panel; the dashboard
  redraws at most 30 frames/s, each panel at its own lower rate),
* widget messages/s and kB/s the page received (kernel websocket frames holding
  ``comm_msg``; targets <= 100 messages/s and <= 300 kB/s),
* the tab's JS heap (CDP ``JSHeapUsedSize`` after a forced GC) every 10 s: target flat
  (+-10 %) over the run.

Data sets: ``demo`` (the package's synthetic demo stream) and ``10M`` (a 10M-record
synthetic day: ``--big PATH`` or ``MBO_LAB_BENCH_10M``, else generated once with
``mbo_lab.write_synth`` into ``--cache``). When playback reaches the end of a stream the
benchmark presses Play again (the session restarts from the start).

    .venv/bin/python benchmarks/bench_dashboard_fps.py                 # 1 minute each
    .venv/bin/python benchmarks/bench_dashboard_fps.py --minutes 10    # the full run
    .venv/bin/python benchmarks/bench_dashboard_fps.py --data demo --minutes 0.5

Needs /usr/bin/chromium and the playwright package (never ``playwright install``).
The kernel, the server and the browser share this machine's cores: figures are a lower
bound of what a desktop browser shows; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _browser_module():
    path = ROOT / "tests" / "test_notebooks_browser.py"
    spec = importlib.util.spec_from_file_location("mbo_lab_browser_measure", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ten_million(path: str | None, cache: Path) -> Path:
    """A 10M-record synthetic stream: the given path, else one generated once."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"--big {p} does not exist")
        return p
    import mbo_lab

    p = cache / "synth_10000000_seed1.dbn"
    if not p.is_file():
        print(f"generating {p} (10M records, seed 1) ...", flush=True)
        mbo_lab.write_synth(p, 10_000_000, seed=1)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0,
                    help="minutes of playback measured per data set (10 for the full run)")
    ap.add_argument("--speed", default="100x", help="speed label of the dashboard dropdown")
    ap.add_argument("--data", choices=["demo", "10M", "both"], default="both")
    ap.add_argument("--big", default=os.environ.get("MBO_LAB_BENCH_10M"),
                    help="a 10M-record .dbn/.dbn.zst (default: generated into --cache)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mbo_lab_bench"),
                    help="folder for a generated 10M-record stream")
    ap.add_argument("--out", default=str(ROOT / "test-output"), help="screenshot folder")
    ap.add_argument("--light", action="store_true", help="light theme instead of dark")
    ap.add_argument("--json", action="store_true", help="print every measurement as JSON")
    args = ap.parse_args(argv)

    mod = _browser_module()
    reason = mod.browser_missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sets: list[tuple[str, str]] = []
    if args.data in ("demo", "both"):
        sets.append(("demo", str(Path(args.cache) / "no-such-file.dbn")))  # -> demo data
    if args.data in ("10M", "both"):
        cache = Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        sets.append(("10M", str(_ten_million(args.big, cache))))
    old = os.environ.get("MBO_LAB_DATA_PATH")
    ok = True
    try:
        for name, path in sets:
            os.environ["MBO_LAB_DATA_PATH"] = path  # the notebook opens it (or demo data)
            res = mod.measure_dashboard(
                Path(args.out), seconds=args.minutes * 60.0, speed=args.speed,
                screenshot=f"dashboard_bench_{name}.png", dark=not args.light,
                rerun_check=False, sample_every=2.0, timeout=600.0, replay=True)
            load = os.getloadavg()
            if args.json:
                print(json.dumps({k: v for k, v in res.items() if k != "stats_text"},
                                 indent=1, default=str))
            heap = res["heap_mb"]
            h0, h1 = heap[0][1], heap[-1][1]
            hmax = max(m for _, m in heap)
            flat = h1 <= h0 * 1.10 + 5.0
            within = res["messages_per_s"] <= 100 and res["kB_per_s"] <= 300
            ok = ok and flat and within
            shown = re.findall(r"([\d.]+) fps", res.get("stats_text") or "")
            kernel_fps = f"{shown[-1]} fps drawn by the dashboard (stats panel); " if shown else ""
            print(f"{name}: {kernel_fps}{res['fps']:.1f} ladder redraws/s seen in the page at "
                  f"{res['speed']} for "
                  f"{args.minutes:g} min; {res['messages_per_s']:.0f} widget messages/s, "
                  f"{res['kB_per_s']:.0f} kB/s ({'within' if within else 'OVER'} 100/s, "
                  f"300 kB/s); JS heap {h0:.1f} -> {h1:.1f} MB (max {hmax:.1f}; "
                  f"{'flat' if flat else 'GROWING'}); console errors "
                  f"{len(res['console_errors'])}; load {load[0]:.2f} {load[1]:.2f}; "
                  f"screenshot {res['screenshot']}", flush=True)
            print(f"   heap samples (s, MB): {heap}", flush=True)
    finally:
        if old is None:
            os.environ.pop("MBO_LAB_DATA_PATH", None)
        else:
            os.environ["MBO_LAB_DATA_PATH"] = old
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
