"""The dashboard notebook in a real JupyterLab and a real browser (headless Chromium).

Starts ``jupyter lab`` on 127.0.0.1 (free port, no token, fresh root/workspaces/settings
folders holding a copy of ``notebooks/02_dashboard.ipynb``), opens the notebook with the
Python Playwright sync API in Debian's ``/usr/bin/chromium`` (never a downloaded browser),
runs all cells, chooses a speed in the dashboard's dropdown and presses its Play button.
The notebook itself never plays (it ends paused, so ``nbval`` runs it without a browser):
the test presses Play like a user would.

Checks that the ladder and the price chart change while the kernel clock plays, that no
widget error shows up, saves ``test-output/dashboard.png`` and measures the frame rate the
page shows: the number of distinct contents of the dashboard's stats panel (which changes
with every frame it draws) per second, written to ``test-output/dashboard_fps.txt``.

Without ``/usr/bin/chromium`` the test is skipped, unless ``MBO_LAB_REQUIRE_BROWSER=1``
(set by CI), which makes it fail. ``benchmarks/bench_dashboard_fps.py`` reuses
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
def jupyter_lab(notebook: Path = NOTEBOOK, timeout: float = 90.0) -> Iterator[dict]:
    """A JupyterLab server in a temporary root holding a copy of ``notebook``; yields
    ``{"url", "root", "log"}``. Always stops the server (and its kernels)."""
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

_JS_WATCH_STATS = """() => {
    const el = document.querySelector('.mbo-stats');
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

# Distinct stats texts seen since _JS_WATCH_STATS, and the seconds watched.
_JS_STATS_RESULT = """() => {
    window.__mboObserver.disconnect();
    return {changes: window.__mboStats.length,
            seconds: (performance.now() - window.__mboStart) / 1000,
            last: window.__mboStats.length ? window.__mboStats[window.__mboStats.length - 1][1]
                                           : null};
}"""

_JS_SNAPSHOT = """() => {
    const svg = (sel) => { const e = document.querySelector(sel + ' svg');
                           return e ? e.innerHTML : null; };
    return {ladder: svg('.mbo-ladder'), price: svg('.mbo-price'), depth: svg('.mbo-depth'),
            stats: (document.querySelector('.mbo-stats') || {}).textContent || null,
            errors: (document.querySelector('.mbo-errors') || {}).textContent || ''};
}"""

_WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class",
                  "Error creating widget", "Model not found")
# Browser console errors that mean a widget failed (d3's "attribute ...: Expected ..."
# complaints about an empty line path are harmless and not listed).
_CONSOLE_ERRORS = ("Could not create a view", "Error setting state", "Failed to load",
                   "Cannot read properties", "is not a function", "pageerror")


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
                      timeout: float = 120.0) -> dict:
    """Open the dashboard notebook in JupyterLab + Chromium, run it, press Play and
    watch the page for ``seconds``. Returns the measurements (fps, snapshot changes,
    problems seen, screenshot path)."""
    from playwright.sync_api import sync_playwright

    import mbo_lab

    out_dir.mkdir(parents=True, exist_ok=True)
    if speed is None:  # about 20-30 s of playback for either data set
        clx = Path(mbo_lab.get_settings().data_path).is_file()
        speed = "500x" if clx else "20x"
    res: dict = {"speed": speed, "seconds": seconds}
    with jupyter_lab() as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1300})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK.name}", timeout=timeout * 1000)
            _run_all_cells(page, timeout)
            with contextlib.suppress(Exception):  # more room for the dashboard
                page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
            page.wait_for_selector(".mbo-dashboard .mbo-ladder svg", timeout=30_000)
            page.wait_for_selector(".mbo-stats", timeout=30_000)
            page.locator(".mbo-dashboard").scroll_into_view_if_needed()
            time.sleep(1.0)
            before = page.evaluate(_JS_SNAPSHOT)
            res["problems_before"] = _page_problems(page)

            page.select_option(".mbo-speed select", label=speed)
            time.sleep(0.3)
            page.click(".mbo-play")
            page.wait_for_function(
                "() => (document.querySelector('.mbo-stats') || {}).textContent"
                "?.includes('playing')", timeout=15_000)
            time.sleep(1.0)  # let the first frames through
            page.evaluate(_JS_WATCH_STATS)
            snaps, t0 = [page.evaluate(_JS_SNAPSHOT)], time.monotonic()
            while time.monotonic() - t0 < seconds:
                time.sleep(0.5)
                snaps.append(page.evaluate(_JS_SNAPSHOT))
            stats = page.evaluate(_JS_STATS_RESULT)
            shot = out_dir / screenshot
            # The dashboard keeps changing while playing, so clip instead of waiting for a
            # "stable" element.
            box = page.locator(".mbo-dashboard").bounding_box()
            page.screenshot(path=str(shot), full_page=True,
                            clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                  "height": box["height"]})
            page.click(".mbo-play")  # pause
            page.wait_for_function(
                "() => (document.querySelector('.mbo-stats') || {}).textContent"
                "?.includes('paused')", timeout=15_000)
            res["problems_after"] = _page_problems(page)
            res["console_errors"] = console[:20]
            res["widget_console_errors"] = [c for c in console
                                            if any(m in c for m in _CONSOLE_ERRORS)][:10]
        finally:
            browser.close()
    res["fps"] = stats["changes"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    res["stats_changes"] = stats["changes"]
    res["kernel_stats"] = (stats["last"] or "")[-40:]
    for part in ("ladder", "price", "depth"):
        vals = [before[part]] + [s[part] for s in snaps]
        res[f"{part}_distinct"] = len(set(vals))
    res["screenshot"] = str(shot)
    return res


def test_dashboard_notebook_in_browser():
    reason = browser_missing_reason()
    if reason:
        if os.environ.get("MBO_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MBO_LAB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    res = measure_dashboard(OUT_DIR, seconds=5.0)
    (OUT_DIR / "dashboard_fps.txt").write_text(
        f"{res['fps']:.1f}\n# frames per second shown by the dashboard in headless Chromium "
        f"while playing at {res['speed']} ({res['stats_changes']} stats changes in "
        f"{res['seconds']} s)\n")
    print(json.dumps({k: v for k, v in res.items()}, indent=1))
    assert not res["problems_before"], res["problems_before"]
    assert not res["problems_after"], res["problems_after"]
    assert not res["widget_console_errors"], res["widget_console_errors"]
    assert res["ladder_distinct"] >= 3, "the ladder did not change while playing"
    assert res["price_distinct"] >= 3, "the price chart did not change while playing"
    assert res["stats_changes"] >= 10, "the stats panel hardly changed while playing"
    assert Path(res["screenshot"]).stat().st_size > 10_000
