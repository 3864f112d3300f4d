"""The dashboard notebook in a real JupyterLab and a real browser (headless Chromium).

Starts ``jupyter lab`` on 127.0.0.1 (free port, no token, fresh root/workspaces/settings
folders holding a copy of ``notebooks/02_dashboard.ipynb``; optionally the "JupyterLab
Dark" theme), opens the notebook with the Python Playwright sync API in Debian's
``/usr/bin/chromium`` (never a downloaded browser) in a 1366x768 window with the browser's
time zone set (``timezone_id``), runs all cells, chooses a speed and presses Play. The
notebook itself never plays (it ends paused, so ``nbval`` runs it without a browser).

Checks, in America/Chicago with the dark theme: the ladder and the price chart change
while the kernel clock plays; no widget error and no widget/bqplot console error; the
time axis labels are the same 24-hour UTC labels as in UTC and Asia/Tokyo browsers and
never raw numbers; widget messages/s and bytes/s received on the kernel websocket stay
within 100/s and 300 kB/s; the JS heap (CDP, after a forced GC) stays flat; the ladder
text is light on the dark theme; the dashboard fits the notebook's view without
horizontal scrolling; re-creating the dashboard in the kernel closes the old one (same
number of subscribers). Saves ``test-output/dashboard.png`` and writes the figures to
``test-output/dashboard_fps.txt``.

Without ``/usr/bin/chromium`` the tests are skipped, unless ``MBO_LAB_REQUIRE_BROWSER=1``
(set by CI), which makes them fail. ``benchmarks/bench_dashboard_fps.py`` reuses
:func:`measure_dashboard`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_dashboard.ipynb"
OUT_DIR = ROOT / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = pytest.mark.browser


def browser_missing_reason() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # pragma: no cover - playwright is a test dependency
        return f"playwright is not importable: {exc}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(notebook: Path = NOTEBOOK, timeout: float = 90.0, *, dark: bool = False
                ) -> Iterator[dict]:
    """A JupyterLab server in a temporary root holding a copy of ``notebook`` (in the
    "JupyterLab Dark" theme when ``dark``); yields ``{"url", "root", "log"}``. Always
    stops the server (and its kernels)."""
    tmp = Path(tempfile.mkdtemp(prefix="mbo_lab_lab_"))
    root, work = tmp / "root", tmp / "workspaces"
    cfg, settings, runtime = tmp / "config", tmp / "settings", tmp / "runtime"
    for d in (root, work, cfg / "labconfig", settings, runtime):
        d.mkdir(parents=True)
    shutil.copy(notebook, root / notebook.name)
    # No news/update toasts: they cover the page and fetch from the network.
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # Render every cell (no windowing), so the dashboard output is always in the DOM.
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    if dark:
        themes = settings / "@jupyterlab" / "apputils-extension"
        themes.mkdir(parents=True)
        (themes / "themes.jupyterlab-settings").write_text(
            json.dumps({"theme": "JupyterLab Dark"}))
    port = _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTER_RUNTIME_DIR=str(runtime), JUPYTER_WIDGETS_ECHO="0",
               PYTHONUNBUFFERED="1")
    env.pop("MBO_LAB_PORT", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           "--ServerApp.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
           f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={work}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    log_path = tmp / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(url + "/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter lab did not answer in time:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.25)
        yield {"url": url, "root": root, "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started: server + kernels
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


# JavaScript run in the page -------------------------------------------------------------
_JS_CELLS = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    if (!w || !w.content || !w.content.model || !w.sessionContext) return null;
    const cells = w.content.model.cells, counts = [], errors = [];
    for (let i = 0; i < cells.length; i++) {
        const c = cells.get(i);
        if (c.type !== 'code') continue;
        counts.push(c.executionCount);
        for (let j = 0; j < c.outputs.length; j++) {
            const o = c.outputs.get(j);
            if (o.type === 'error') errors.push(JSON.stringify(o.toJSON()).slice(0, 800));
        }
    }
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    return {counts, errors, status: k ? k.status : null};
}"""

_JS_WATCH_LADDER = """() => {
    const el = document.querySelector('.mbo-dashboard .mbo-ladder');
    window.__mboStats = [];
    window.__mboStart = performance.now();
    let last = el.textContent;
    const rec = () => {
        const t = el.textContent;
        if (t !== last) { last = t; window.__mboStats.push([performance.now(), t]); }
    };
    window.__mboObserver = new MutationObserver(rec);
    window.__mboObserver.observe(el, {subtree: true, childList: true, characterData: true});
    return true;
}"""

# Distinct ladder contents seen since _JS_WATCH_LADDER, and the seconds watched.
_JS_LADDER_RESULT = """() => {
    window.__mboObserver.disconnect();
    return {changes: window.__mboStats.length,
            seconds: (performance.now() - window.__mboStart) / 1000,
            last: window.__mboStats.length ? window.__mboStats[window.__mboStats.length - 1][1]
                                           : null};
}"""

_JS_SNAPSHOT = """() => {
    const svg = (sel) => { const e = document.querySelector(sel + ' svg');
                           return e ? e.innerHTML : null; };
    const html = (sel) => (document.querySelector(sel) || {}).innerHTML || null;
    return {ladder: html('.mbo-dashboard .mbo-ladder'), price: svg('.mbo-price'),
            depth: svg('.mbo-depth'),
            stats: (document.querySelector('.mbo-stats') || {}).textContent || null,
            errors: (document.querySelector('.mbo-errors') || {}).textContent || ''};
}"""

# Tick label texts of the price chart's axes, its axis titles, and layout facts.
_JS_AXES = """() => {
    const out = {axes: [], labels: []};
    document.querySelectorAll('.mbo-price .axis').forEach(ax => {
        out.axes.push(Array.from(ax.querySelectorAll('.tick text')).map(t => t.textContent));
        const l = ax.querySelector('.axislabel');
        out.labels.push(l ? l.textContent : '');
    });
    const d = document.querySelector('.mbo-dashboard');
    const r = d ? d.getBoundingClientRect() : null;
    const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
               || document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
    out.box = r ? {w: r.width, h: r.height, scroll_w: d.scrollWidth,
                   view_h: nb ? nb.clientHeight : null, view_w: nb ? nb.clientWidth : null,
                   view_scroll_w: nb ? nb.scrollWidth : null} : null;
    const p = document.querySelector('.mbo-ladder table.mbo-dom td.p');
    out.ladder_color = p ? getComputedStyle(p).color : null;
    const bg = document.querySelector('.jp-Notebook');
    out.page_bg = bg ? getComputedStyle(bg).backgroundColor : null;
    out.dashboards = document.querySelectorAll('.mbo-dashboard').length;
    out.tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    return out;
}"""

# Run Python in the notebook's kernel; returns its stdout.
_JS_KERNEL_EXEC = """async (code) => {
    const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const f = k.requestExecute({code, silent: false, store_history: false});
    let out = '';
    f.onIOPub = (m) => { if (m.header.msg_type === 'stream') out += m.content.text;
                         if (m.header.msg_type === 'error') out += 'ERROR ' + m.content.evalue; };
    await f.done;
    return out;
}"""

_WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class",
                  "Error creating widget", "Model not found")
# Console errors of widgets and bqplot/d3 (the previous dashboard logged
# "translate(0,undefined)", 'd: "null"' and "Error setting state").
_CONSOLE_ERRORS = ("Could not create a view", "Error setting state", "Failed to load model",
                   "Cannot read properties", "is not a function", "pageerror", "undefined",
                   "null", "NaN", "Expected")


def _luminance(css: str | None) -> float:
    """Relative luminance 0..1 of a CSS rgb()/rgba() colour (0.5 when unknown)."""
    import re

    m = re.findall(r"[\d.]+", css or "")
    if len(m) < 3:
        return 0.5
    r, g, b = (float(x) / 255 for x in m[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _page_problems(page) -> list[str]:
    """Error outputs, widget errors and the dashboard's error area."""
    probs = list((page.evaluate(_JS_CELLS) or {}).get("errors", []))
    text = page.inner_text(".jp-NotebookPanel:not(.lm-mod-hidden)")
    probs += [m for m in _WIDGET_ERRORS if m in text]
    err = page.evaluate("() => (document.querySelector('.mbo-errors') || {}).textContent")
    if err:
        probs.append(f"dashboard error area: {err}")
    return probs


def _run_all_cells(page, timeout: float) -> None:
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell",
                           timeout=timeout * 1000)
    page.wait_for_function(f"() => {{ const s = ({_JS_CELLS})(); "
                           "return s && s.status === 'idle'; }", timeout=timeout * 1000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + timeout
    time.sleep(0.5)
    while True:
        s = page.evaluate(_JS_CELLS)
        if s["errors"]:
            raise AssertionError(f"a cell failed: {s['errors']}")
        if all(c is not None for c in s["counts"]) and s["status"] == "idle":
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"cells did not finish in {timeout} s: {s}")
        time.sleep(0.25)


def measure_dashboard(out_dir: Path = OUT_DIR, *, seconds: float = 5.0,
                      speed: str | None = None, screenshot: str = "dashboard.png",
                      timeout: float = 120.0, timezone_id: str = "America/Chicago",
                      dark: bool = True, viewport: tuple[int, int] = (1366, 768),
                      play: bool = True, rerun_check: bool = True,
                      sample_every: float = 0.5, replay: bool = False,
                      lab: dict | None = None) -> dict:
    """Open the dashboard notebook in JupyterLab + Chromium (browser in ``timezone_id``,
    JupyterLab's dark theme when ``dark``, a ``viewport`` window), run it, read the
    time-axis labels, press Play and watch the page for ``seconds`` (pressing Play again
    when the stream ends, if ``replay``).

    Returns the measurements: frames per second the page shows (distinct ladder contents
    per second), widget messages and bytes per second received by the page (kernel
    websocket frames holding ``comm_msg``), JS heap after a forced GC at the start and end
    of playback (CDP), console errors, layout box, axis labels, screenshot path.
    ``lab`` reuses a running :func:`jupyter_lab` (its theme then applies)."""
    from playwright.sync_api import sync_playwright

    import mbo_lab

    out_dir.mkdir(parents=True, exist_ok=True)
    if speed is None:  # about 20-30 s of playback for either data set
        clx = Path(mbo_lab.get_settings().data_path).is_file()
        speed = "100x" if clx else "20x"
    res: dict = {"speed": speed, "seconds": seconds, "timezone_id": timezone_id, "dark": dark}
    ws_log: list[tuple[float, int]] = []  # (time, bytes) of comm messages received

    def on_ws(ws) -> None:
        def frame(payload) -> None:
            data = payload if isinstance(payload, bytes) else payload.encode()
            if b"comm_msg" in data:
                ws_log.append((time.monotonic(), len(data)))
        ws.on("framereceived", frame)

    with (contextlib.nullcontext(lab) if lab else jupyter_lab(dark=dark)) as lab, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                      timezone_id=timezone_id)
            page = ctx.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("websocket", on_ws)
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK.name}", timeout=timeout * 1000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell",
                                   timeout=timeout * 1000)
            if dark:
                page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'",
                                       timeout=30_000)
            _run_all_cells(page, timeout)
            with contextlib.suppress(Exception):  # more room for the dashboard
                page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
            page.wait_for_selector(".mbo-dashboard .mbo-ladder table", timeout=30_000)
            page.wait_for_selector(".mbo-stats", timeout=30_000)
            page.evaluate("() => document.querySelector('.mbo-dashboard')"
                          ".scrollIntoView({block: 'start'})")
            time.sleep(1.5)
            res["axes_paused"] = page.evaluate(_JS_AXES)
            before = page.evaluate(_JS_SNAPSHOT)
            res["problems_before"] = _page_problems(page)
            res["kernel_time"] = page.evaluate(
                _JS_KERNEL_EXEC, "print(session.time.strftime('%H:%M:%S'))").strip()
            snaps, stats = [], {"changes": 0, "seconds": 0.0, "last": ""}
            heap = []
            if play:
                cdp = ctx.new_cdp_session(page)
                cdp.send("Performance.enable")

                def heap_mb() -> float:
                    cdp.send("HeapProfiler.collectGarbage")
                    m = {x["name"]: x["value"] for x in cdp.send("Performance.getMetrics")
                         ["metrics"]}
                    return m.get("JSHeapUsedSize", 0.0) / 1e6

                page.select_option(".mbo-speed select", label=speed)
                time.sleep(0.3)
                page.click(".mbo-play")
                page.wait_for_function(
                    "() => (document.querySelector('.mbo-stats') || {}).textContent"
                    "?.includes('fps')", timeout=15_000)
                time.sleep(1.5)  # let the first frames through
                heap.append((0.0, heap_mb()))
                page.evaluate(_JS_WATCH_LADDER)
                ws_log.clear()
                t0 = time.monotonic()
                next_heap = t0 + 10.0
                while time.monotonic() - t0 < seconds:
                    time.sleep(sample_every)
                    snaps.append(page.evaluate(_JS_SNAPSHOT))
                    if replay and "paused" in (snaps[-1]["stats"] or ""):
                        page.click(".mbo-play")  # the end of the stream: play it again
                    if time.monotonic() >= next_heap:
                        heap.append((time.monotonic() - t0, heap_mb()))
                        next_heap += 10.0
                watched = time.monotonic() - t0
                stats = page.evaluate(_JS_LADDER_RESULT)
                msgs = [b for t, b in ws_log if t >= t0]
                res["messages_per_s"] = len(msgs) / watched
                res["kB_per_s"] = sum(msgs) / watched / 1e3
                heap.append((watched, heap_mb()))
                res["axes_playing"] = page.evaluate(_JS_AXES)
            shot = out_dir / screenshot
            # The dashboard keeps changing while playing, so clip instead of waiting for a
            # "stable" element.
            box = page.locator(".mbo-dashboard").bounding_box()
            page.screenshot(path=str(shot), full_page=True,
                            clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                  "height": box["height"]})
            res["stats_text"] = (page.evaluate(_JS_SNAPSHOT)["stats"] or "")
            if play:
                page.click(".mbo-play")  # pause
                page.wait_for_function(
                    "() => (document.querySelector('.mbo-stats') || {}).textContent"
                    "?.includes('paused')", timeout=15_000)
            res["problems_after"] = _page_problems(page)
            if rerun_check:
                # a re-run dashboard cell replaces the old dashboard: subscribers unchanged
                out = page.evaluate(_JS_KERNEL_EXEC, (
                    "n0 = len(session.clock.subscribers)\nold = dash\n"
                    "dash = session.dashboard(levels=10)\n"
                    "print(n0, len(session.clock.subscribers), old.closed, dash.closed)"))
                res["rerun"] = out.strip()
            res["console_errors"] = console[:20]
            res["widget_console_errors"] = [c for c in console
                                            if any(m in c for m in _CONSOLE_ERRORS)][:10]
        finally:
            browser.close()
    res["fps"] = stats["changes"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    res["ladder_changes"] = stats["changes"]
    res["heap_mb"] = [(round(t, 1), round(m, 1)) for t, m in heap]
    for part in ("ladder", "price", "depth"):
        vals = [before[part]] + [s[part] for s in snaps]
        res[f"{part}_distinct"] = len(set(vals))
    res["screenshot"] = str(shot)
    return res


def _time_labels(axes: dict) -> list[str]:
    """The price chart's time-axis tick labels (the axis titled "time (...)")."""
    for ticks, label in zip(axes["axes"], axes["labels"]):
        if label.startswith("time"):
            return ticks
    return []


def _require_browser() -> None:
    reason = browser_missing_reason()
    if reason:
        if os.environ.get("MBO_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MBO_LAB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


_LABELS_BY_ZONE: dict[str, list[str]] = {}


def test_dashboard_time_axis_in_browser_zones():
    """The time axis reads the same (UTC, 24-hour) whatever the browser's time zone: the
    notebook run in a UTC and in an Asia/Tokyo browser (one JupyterLab, light theme)."""
    _require_browser()
    with jupyter_lab() as lab:
        for timezone_id in ("UTC", "Asia/Tokyo"):
            res = measure_dashboard(OUT_DIR, timezone_id=timezone_id, dark=False, play=False,
                                    rerun_check=False, lab=lab,
                                    screenshot=f"dashboard_{timezone_id[-5:]}.png")
            print(json.dumps({k: v for k, v in res.items() if k != "stats_text"}, indent=1))
            assert res["axes_paused"]["tz"] == timezone_id
            _check_time_axis(res)
            assert not res["problems_before"], res["problems_before"]
            assert not res["widget_console_errors"], res["widget_console_errors"]
            _LABELS_BY_ZONE[timezone_id] = _time_labels(res["axes_paused"])


def _check_time_axis(res: dict) -> None:
    labels = _time_labels(res["axes_paused"])
    assert len(labels) >= 2, res["axes_paused"]
    assert len(set(labels)) == len(labels), labels  # never repeated
    assert all(len(t) >= 5 and t[2] == ":" for t in labels), labels  # HH:MM, 24-hour
    assert "time (UTC)" in res["axes_paused"]["labels"]
    # the window ends at the session's position: the last label is within the last
    # quarter-hour before the kernel's current time (UTC)
    kt = res["kernel_time"]
    last = labels[-1]
    mins = lambda t: int(t[:2]) * 60 + int(t[3:5])  # noqa: E731
    assert 0 <= (mins(kt) - mins(last)) % 1440 <= 15, (kt, labels)
    others = [v for z, v in _LABELS_BY_ZONE.items() if z != res["timezone_id"]]
    for o in others:
        assert o == labels, (o, labels)


def test_dashboard_notebook_in_browser():
    """America/Chicago, dark theme, 1366x768: plays, bounded traffic and memory, zero
    widget console errors, re-run replaces the old dashboard, screenshot saved."""
    _require_browser()
    res = measure_dashboard(OUT_DIR, seconds=12.0)
    (OUT_DIR / "dashboard_fps.txt").write_text(
        f"{res['fps']:.1f}\n# ladder redraws per second in headless Chromium while playing "
        f"at {res['speed']}; {res['messages_per_s']:.0f} widget messages/s, "
        f"{res['kB_per_s']:.0f} kB/s; JS heap {res['heap_mb']}\n")
    print(json.dumps({k: v for k, v in res.items() if k != "stats_text"}, indent=1))
    _check_time_axis(res)
    assert not res["problems_before"], res["problems_before"]
    assert not res["problems_after"], res["problems_after"]
    assert not res["widget_console_errors"], res["widget_console_errors"]
    assert res["ladder_distinct"] >= 3, "the ladder did not change while playing"
    assert res["price_distinct"] >= 3, "the price chart did not change while playing"
    assert res["ladder_changes"] >= 10, "the ladder hardly changed while playing"
    assert res["messages_per_s"] <= 100, res["messages_per_s"]
    assert res["kB_per_s"] <= 300, res["kB_per_s"]
    m0, m1 = res["heap_mb"][0][1], res["heap_mb"][-1][1]
    assert m1 <= m0 * 1.10 + 5.0, res["heap_mb"]  # flat (+-10 %, 5 MB of GC noise)
    # readable in the dark theme: light text on the ladder's price column
    assert _luminance(res["axes_paused"]["ladder_color"]) > 0.5, res["axes_paused"]
    box = res["axes_paused"]["box"]
    # fits 1366x768: no horizontal scrolling, the whole dashboard in the notebook's view
    assert box["view_scroll_w"] <= box["view_w"] + 1 and box["h"] <= box["view_h"], box
    # while playing, every time label is a time (never a raw number of seconds)
    playing = _time_labels(res["axes_playing"])
    assert playing and all(t[2] == ":" for t in playing), playing
    n0, n1, old_closed, new_closed = res["rerun"].split()
    assert n0 == n1 and old_closed == "True" and new_closed == "False", res["rerun"]
    assert Path(res["screenshot"]).stat().st_size > 10_000
