"""Liquidity map benchmark: bytes per map update and latency from a zoom event to the data
sent, on a whole day and on 1-minute windows (targets: whole day <= 1 s for 10M records;
1-minute window <= 150 ms; <= 250k cells per update). Prints figures; not a test.

Opens a replay session on a DBN file (``--path`` or ``MBO_LAB_BENCH_PATH``; else
``--records`` records written by ``mbo_lab.write_synth`` to a temporary file), builds a
:class:`~mbo_lab.viz.liquidity_map.LiquidityMap` (1000 x 400 px plot area) and drives it
the way the browser does: it sets the time/price scale domains (as bqplot's PanZoom does)
and calls ``flush()`` (what the debounce timer calls), so the figure is the kernel's time
from the zoom event to the widget messages written (query + colouring + serialization),
without the debounce delay (the map's ``debounce``, default 0.08 s after the last event of
a gesture, adds to it in a notebook).

Bytes are the real widget messages: every message the map's widgets publish is counted
(JSON + binary buffers) by wrapping the comm's ``publish_msg``.

``--browser`` also runs the dashboard notebook (which shows the map first) in JupyterLab
+ headless Chromium while playing and reports the frames per second the page shows
(``tests/test_notebooks_browser.measure_dashboard``).

    python benchmarks/bench_map.py --records 1e7
    python benchmarks/bench_map.py --path /work/bench_data/synth_10000000.dbn --browser
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mbo_lab  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Meter:
    """Counts the bytes and messages every widget comm publishes."""

    def __init__(self) -> None:
        import comm

        self.bytes = 0
        self.messages = 0
        self._cls = comm.DummyComm
        self._orig = self._cls.publish_msg
        meter = self

        def publish_msg(this, msg_type, data=None, metadata=None, buffers=None, **keys):
            meter.messages += 1
            meter.bytes += len(json.dumps(data, default=str)) if data is not None else 0
            for b in buffers or []:
                meter.bytes += memoryview(b).nbytes
            return meter._orig(this, msg_type, data, metadata, buffers, **keys)

        self._cls.publish_msg = publish_msg

    def take(self) -> tuple[int, int]:
        out = (self.bytes, self.messages)
        self.bytes = self.messages = 0
        return out

    def close(self) -> None:
        self._cls.publish_msg = self._orig


def _zoom(m, start_ns: int, end_ns: int, lo: float, hi: float, meter: _Meter) -> dict:
    """What a PanZoom gesture does: new scale domains from the browser, then the
    debounced flush. Returns the latency (s), the bytes/messages sent and the cells."""
    meter.take()
    with m.x_scale.hold_trait_notifications():
        m.x_scale.min = float((start_ns - m.origin_ns) / 1e9)
        m.x_scale.max = float((end_ns - m.origin_ns) / 1e9)
    with m.y_scale.hold_trait_notifications():
        m.y_scale.min, m.y_scale.max = float(lo), float(hi)
    assert m.pending, "the domain did not change"
    cpu = time.process_time()
    m.flush()
    cpu = time.process_time() - cpu
    b, n = meter.take()
    return {"latency": m.last_latency, "query": m.last_query_seconds, "cpu": cpu, "bytes": b,
            "messages": n, "cells": m.last_cells, "array_bytes": m.last_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default=os.environ.get("MBO_LAB_BENCH_PATH"),
                    help="DBN file (default: write --records synthetic records)")
    ap.add_argument("--records", type=float, default=1e7)
    ap.add_argument("--windows", type=int, default=20, help="random 1-minute windows")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=400)
    ap.add_argument("--browser", action="store_true",
                    help="also measure fps of the dashboard (map first) in Chromium")
    ap.add_argument("--seconds", type=float, default=10.0, help="browser seconds measured")
    ap.add_argument("--browser-only", action="store_true", help="skip the kernel figures")
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    if not args.browser_only:
        _kernel_figures(args)
    if args.browser or args.browser_only:
        _browser_figures(args)
    return 0


def _kernel_figures(args: argparse.Namespace) -> None:

    mbo_lab.warmup()
    path = args.path
    if not path:
        path = str(Path(tempfile.mkdtemp(prefix="mbo_map_bench_")) / "synth.dbn")
        t0 = time.perf_counter()
        mbo_lab.write_synth(path, int(args.records), seed=1)
        print(f"wrote {int(args.records):,} synthetic records in "
              f"{time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    s = mbo_lab.open(path, progress=False)
    print(f"open {path}: {len(s):,} records, book {s.instrument_id}@{s.publisher_id}, "
          f"{time.perf_counter() - t0:.2f} s")
    # compile the grid pass (Numba cache) outside the timings
    ts = s.data.records["ts_recv"]
    t_first, t_last = int(ts[0]), int(ts[-1])
    s.liquidity(t_first, t_first + 60 * 10**9, time_bins=10, price_rows=10)

    from mbo_lab.viz.liquidity_map import LiquidityMap

    meter = _Meter()
    try:
        t0 = time.perf_counter()
        # no event loop runs here, so the debounce timer never fires: _zoom calls flush()
        m = LiquidityMap(s, width_px=args.width, height_px=args.height, debounce=60.0)
        build = time.perf_counter() - t0
        b, n = meter.take()
        g = m.grid
        print(f"\nmap built (whole-day view, {len(g.t_edges) - 1}x{len(g.price_edges) - 1} "
              f"cells; {m.queries} grid queries incl. the price fit): {build:.2f} s, "
              f"{n} messages / {b / 1e3:,.0f} kB at construction")

        _, _, lo, hi = m.window
        rng = np.random.default_rng(7)
        res = []
        for t in rng.integers(t_first, max(t_first + 1, t_last - 60 * 10**9), args.windows):
            # price range: the touch at that time +- 20 ticks
            g1 = s.liquidity(int(t), int(t) + 60 * 10**9, time_bins=4, price_rows=4)
            mids = np.concatenate([g1.bid_close, g1.ask_close])
            mids = mids[np.isfinite(mids)]
            c = float(np.median(mids)) if len(mids) else (lo + hi) / 2
            tick = s.tick
            res.append(_zoom(m, int(t), int(t) + 60 * 10**9, c - 100 * tick, c + 100 * tick,
                             meter))
        lat = np.array([r["latency"] for r in res]) * 1000
        qry = np.array([r["query"] for r in res]) * 1000
        cpu = np.array([r["cpu"] for r in res]) * 1000
        kb = np.array([r["bytes"] for r in res]) / 1e3
        cells = np.array([r["cells"] for r in res])
        print(f"1-minute windows ({len(res)} random, 200 ticks tall): zoom event -> data "
              f"sent median {np.median(lat):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
              f"max {lat.max():.0f} ms wall; CPU median {np.median(cpu):.0f} ms (grid query "
              f"median {np.median(qry):.0f} ms wall); "
              f"{np.median(kb):,.0f} kB per update (max {kb.max():,.0f} kB), cells "
              f"median {int(np.median(cells)):,} (max {cells.max():,}); messages "
              f"{int(np.median([r['messages'] for r in res]))} per update")
        # zoom out to the whole day through the browser path (re-queried, not the cache)
        m._home = None
        day = _zoom(m, t_first, t_last + 1, lo, hi, meter)
        print(f"whole-day update (zoom event -> data sent): {day['latency'] * 1000:.0f} ms "
              f"wall, {day['cpu'] * 1000:.0f} ms CPU (grid query {day['query'] * 1000:.0f} ms "
              f"wall), {day['cells']:,} cells, "
              f"{day['bytes'] / 1e3:,.0f} kB in {day['messages']} messages")
        t0 = time.perf_counter()
        m.set_colors(lower_pct=20)
        b, n = meter.take()
        print(f"colour change (no query): {(time.perf_counter() - t0) * 1000:.0f} ms, "
              f"{b / 1e3:,.0f} kB in {n} messages")
        t0 = time.perf_counter()
        m.seek_time((t_first + t_last) // 2)
        print(f"click -> session.seek (incl. frame to subscribers): "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        print(f"totals: {m.updates} updates, {m.bytes_sent / 1e6:.1f} MB array payload; "
              f"peak RSS {_rss_mib():,.0f} MiB; load average {os.getloadavg()}")
        m.close()
    finally:
        meter.close()



def _browser_figures(args: argparse.Namespace) -> None:
    spec = importlib.util.spec_from_file_location(
        "mbo_lab_browser_measure", ROOT / "tests" / "test_notebooks_browser.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reason = mod.browser_missing_reason()
    if reason:
        print(f"browser: cannot run: {reason}")
        return
    r = mod.measure_dashboard(ROOT / "test-output", seconds=args.seconds,
                              screenshot="map_bench_dashboard.png")
    keep = ("speed", "seconds", "fps", "ladder_changes", "stats_changes",
            "messages_per_s", "kB_per_s", "heap_mb", "console_errors")
    print(f"browser: dashboard notebook (map first) playing at {r.get('speed')}: "
          f"{r.get('fps', float('nan')):.1f} fps shown; "
          f"{r.get('messages_per_s', float('nan')):.0f} widget messages/s, "
          f"{r.get('kB_per_s', float('nan')):.0f} kB/s; load average {os.getloadavg()}")
    print(json.dumps({k: r[k] for k in keep if k in r}, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
