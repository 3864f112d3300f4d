"""Frame rate of the notebook dashboard in a real browser (a benchmark, not a test).

Runs the same measurement as ``tests/test_notebooks_browser.py``: JupyterLab on
127.0.0.1, ``notebooks/02_dashboard.ipynb`` in headless Debian Chromium, Play pressed,
then the number of distinct contents of the dashboard's stats panel per second (it
changes with every frame the page draws). Target: >= 20 fps during playback.

    .venv/bin/python benchmarks/bench_dashboard_fps.py [--seconds 10] [--speed 500x] [--runs 1]

Needs /usr/bin/chromium and the playwright package (never ``playwright install``).
The kernel, the server and the browser share this machine's cores, so the figure is a
lower bound of what a desktop browser shows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_FPS = 20.0


def _browser_module():
    path = ROOT / "tests" / "test_notebooks_browser.py"
    spec = importlib.util.spec_from_file_location("mbo_lab_browser_measure", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--speed", default=None,
                    help="speed label of the dashboard dropdown (default: 500x on CLX5, "
                         "20x on the demo data)")
    ap.add_argument("--runs", type=int, default=1, help="runs (a fresh server each)")
    ap.add_argument("--out", default=str(ROOT / "test-output"), help="screenshot folder")
    ap.add_argument("--json", action="store_true", help="print every measurement as JSON")
    args = ap.parse_args(argv)

    mod = _browser_module()
    reason = mod.browser_missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    fps = []
    for i in range(args.runs):
        res = mod.measure_dashboard(Path(args.out), seconds=args.seconds, speed=args.speed,
                                    screenshot=f"dashboard_bench_{i}.png")
        fps.append(res["fps"])
        if args.json:
            print(json.dumps(res, indent=1, default=str))
        print(f"run {i + 1}: {res['fps']:.1f} fps shown by the page at {res['speed']} "
              f"({res['stats_changes']} frames in {res['seconds']:.0f} s; kernel side: "
              f"{res['kernel_stats'].split('#')[-1].strip()}); screenshot {res['screenshot']}")
    best, mid = max(fps), statistics.median(fps)
    verdict = "meets" if mid >= TARGET_FPS else "below"
    print(f"dashboard fps: median {mid:.1f}, best {best:.1f} ({verdict} the {TARGET_FPS:g} "
          "fps target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
