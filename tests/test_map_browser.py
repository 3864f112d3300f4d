"""The liquidity map in a real JupyterLab and a real browser (headless Debian Chromium).

Reuses the JupyterLab/Playwright helpers of ``tests/test_notebooks_browser.py`` (loaded
by path, not edited). The test writes a small notebook to a temporary folder (never the
repo notebooks): open a session (CLX5 when present, else the demo data), show a
:class:`~mbo_lab.viz.liquidity_map.LiquidityMap` and the dashboard (for the ladder). The
browser runs in a non-UTC zone (``America/Chicago``, then ``Asia/Tokyo``) and in
JupyterLab's dark theme, and checks:

* the map shows on opening (a canvas heatmap image, the bid/ask lines);
* the time-axis labels are the ones computed for the exchange zone (right whatever the
  browser's zone is);
* a mouse-wheel zoom changes the visible window and re-renders with new cells;
* in "seek" mode a click moves the session position (the map's cursor time) and the
  dashboard's ladder;
* the dashboard shows ONE time-zone control (the header's; its embedded map has no
  dropdown, the standalone map keeps its own) and switching it from UTC to the exchange
  zone relabels the embedded map's time axis (tick texts, axis title, status line);
* no widget errors, zero console errors;
* a screenshot in ``test-output/`` (and, with ``MBO_LAB_UPDATE_DOCS=1``, a copy of the
  whole-day view under 150 kB as ``docs/map.png``).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "test-output"
DOCS_PNG = ROOT / "docs" / "map.png"

pytestmark = pytest.mark.browser


def _browser_module():
    spec = importlib.util.spec_from_file_location(
        "mbo_lab_browser_helpers", Path(__file__).with_name("test_notebooks_browser.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


B = _browser_module()

_SETUP = r'''
import os
from pathlib import Path
import mbo_lab
from mbo_lab.viz.liquidity_map import LiquidityMap
import ipywidgets as W

path = Path(DATA_PATH)
session = mbo_lab.open(path if path.is_file() else None)
if session.time_zone == "UTC":  # demo data: the zone switch needs a zone other than UTC
    session.time_zone = "America/Chicago"
session
'''

_MAP = r'''
lmap = LiquidityMap(session, width_px=900, height_px=330, debounce=0.1)
box = W.VBox([lmap])
box.add_class("mbo-map-test")
box
'''

_DASH = r'''
dash = session.dashboard()
dash
'''


def _notebook(folder: Path) -> Path:
    import mbo_lab

    data = str(Path(mbo_lab.get_settings().data_path).resolve())
    setup = _SETUP.replace("DATA_PATH", repr(data))
    cells = [setup, _MAP, _DASH]
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                     "outputs": [], "source": c.strip()} for c in cells],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / "map_test.ipynb"
    path.write_text(json.dumps(nb))
    return path


_JS_MAP = """() => {
    const root = document.querySelector('.mbo-map-test .mbo-map');
    if (!root) return null;
    const img = root.querySelector('.mbo-map-figure image.heatmap');
    const ticks = [...root.querySelectorAll('.mbo-map-figure g.axis')]
        .map(g => [...g.querySelectorAll('.tick text')].map(t => t.textContent));
    const labels = [...root.querySelectorAll('.mbo-map-figure text.axislabel')]
        .map(t => t.textContent);
    const q = (sel) => { const e = root.querySelector(sel); return e ? e.textContent : null; };
    const rect = root.querySelector('.mbo-map-figure svg.svg-figure rect, '
                                    + '.mbo-map-figure .plotarea_events');
    const fig = root.querySelector('.mbo-map-figure');
    const fb = fig ? fig.getBoundingClientRect() : null;
    const lines = [...root.querySelectorAll('.mbo-map-figure path.line')]
        .map(p => (p.getAttribute('d') || '').length);
    return {href: img ? (img.getAttribute('href') || '').length + ':'
                         + (img.getAttribute('href') || '').slice(-64) : null,
            ticks, labels, window: q('.mbo-map-window'), cursor: q('.mbo-map-cursor-time'),
            error: q('.mbo-map-error'), lines,
            fig: fb ? [fb.x, fb.y, fb.width, fb.height] : null};
}"""

_JS_DASH_ZONE = """() => {
    const d = document.querySelector('.mbo-dashboard');
    if (!d) return null;
    // a zone control: any <select> offering UTC (whatever its class)
    const zoneSelects = (root) => [...root.querySelectorAll('select')]
        .filter(s => [...s.options].some(o => /UTC/.test(o.textContent)));
    const alone = document.querySelector('.mbo-map-test');
    const m = d.querySelector('.mbo-map');
    const axis = m ? m.querySelector('.mbo-map-figure g.axis') : null;
    const label = m ? [...m.querySelectorAll('.mbo-map-figure text.axislabel')]
        .map(t => t.textContent).find(t => t.startsWith('time (')) : null;
    const status = m ? m.querySelector('.mbo-map-status') : null;
    const header = d.querySelector('.mbo-tz select');
    const text = (o) => o.textContent.replace(/\u00a0/g, ' ');  // ipywidgets: nbsp
    return {zone_controls: zoneSelects(d).length,
            header_controls: d.querySelectorAll('.mbo-tz').length,
            map_controls: d.querySelectorAll('.mbo-map-zone').length,
            standalone_controls: alone ? zoneSelects(alone).length : null,
            options: header ? [...header.options].map(text) : [],
            selected: header && header.selectedIndex >= 0
                ? text(header.options[header.selectedIndex]) : null,
            ticks: axis ? [...axis.querySelectorAll('.tick text')].map(t => t.textContent) : [],
            label, status: status ? status.textContent : null};
}"""

_JS_LADDER = """() => { const e = document.querySelector('.mbo-dashboard .mbo-ladder');
                        return e ? e.innerHTML : null; }"""


def _png_scaled(page, png: bytes, scale: float) -> bytes:
    """The PNG scaled by ``scale`` by the browser's own canvas (no imaging library)."""
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    out = page.evaluate("""async ([url, scale]) => {
        const img = new Image(); img.src = url; await img.decode();
        const c = document.createElement('canvas');
        c.width = Math.round(img.width * scale); c.height = Math.round(img.height * scale);
        const ctx = c.getContext('2d'); ctx.imageSmoothingQuality = 'high';
        ctx.drawImage(img, 0, 0, c.width, c.height);
        return c.toDataURL('image/png');
    }""", [url, scale])
    return base64.b64decode(out.split(",", 1)[1])


def _wait(page, pred, timeout: float, what: str, script: str = _JS_MAP):
    """Evaluate ``script`` in the page until ``pred`` holds for its result."""
    deadline = time.monotonic() + timeout
    while True:
        st = page.evaluate(script)
        if st and pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {st}")
        time.sleep(0.2)


def _wait_dash(page, pred, timeout: float, what: str):
    return _wait(page, pred, timeout, what, _JS_DASH_ZONE)


def _span(window_text: str) -> float:
    """Seconds between the two times of the map's window caption."""
    import pandas as pd

    a, b = (t.strip() for t in window_text.split("\u2013"))
    ta = pd.Timestamp(a)
    tb = pd.Timestamp(b if len(b) > 12 else f"{a[:10]} {b}")  # same day: time only
    return (tb - ta).total_seconds()


def _expected_time_labels(zone: str) -> set[str]:
    """Labels the map must show for the whole stream in ``zone`` (computed here)."""
    import mbo_lab
    from mbo_lab.viz.liquidity_map import time_ticks

    path = Path(mbo_lab.get_settings().data_path)
    data = mbo_lab.load(path if path.is_file() else mbo_lab.demo_path())
    ts = data.records["ts_recv"]
    import pandas as pd

    origin = pd.Timestamp(int(ts[0]), tz="UTC").floor("D").value
    _, labels = time_ticks(int(ts[0]), int(ts[-1]) + 1, origin, zone)
    return set(labels.values())


@pytest.fixture(scope="module")
def lab():
    reason = B.browser_missing_reason()
    if reason:
        if os.environ.get("MBO_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MBO_LAB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="mbo_lab_map_nb_"))
    with B.jupyter_lab(_notebook(folder)) as lab:
        # JupyterLab's dark theme (user settings are read when the page loads)
        themes = lab["log"].parent / "settings" / "@jupyterlab" / "apputils-extension"
        themes.mkdir(parents=True, exist_ok=True)
        (themes / "themes.jupyterlab-settings").write_text(
            json.dumps({"theme": "JupyterLab Dark"}))
        yield lab


def _open(pw, lab, zone: str):
    browser = pw.chromium.launch(executable_path=str(B.CHROMIUM), args=B.CHROMIUM_ARGS,
                                 headless=True)
    ctx = browser.new_context(timezone_id=zone, viewport={"width": 1500, "height": 1300})
    page = ctx.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(f"{lab['url']}/lab/tree/map_test.ipynb", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell",
                           timeout=120_000)
    B._run_all_cells(page, 180)
    with contextlib.suppress(Exception):
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    return browser, page, console


@pytest.mark.parametrize("zone", ["America/Chicago", "Asia/Tokyo"])
def test_map_in_browser(lab, zone):
    from playwright.sync_api import sync_playwright

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    full = zone == "America/Chicago"  # the whole flow once; labels/theme in both zones
    with sync_playwright() as pw:
        browser, page, console = _open(pw, lab, zone)
        try:
            assert page.evaluate("() => document.body.dataset.jpThemeLight") == "false"
            assert page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone") \
                == zone
            page.wait_for_selector(".mbo-map-test .mbo-map-figure image.heatmap",
                                   timeout=60_000)
            page.locator(".mbo-map-test").scroll_into_view_if_needed()
            st0 = _wait(page, lambda s: s["href"] and int(s["href"].split(":")[0]) > 1000
                        and s["window"], 60, "the first heatmap")
            # the time axis: labelled with the exchange zone, ticks computed for that zone
            label = next((t for t in st0["labels"] if t.startswith("time (")), None)
            assert label is not None, st0["labels"]
            map_zone = label[len("time ("):-1]
            expected = _expected_time_labels(map_zone)
            shown = set(st0["ticks"][0]) if st0["ticks"] else set()
            assert shown and shown <= expected, (shown, expected)
            assert all(re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d{3})?)?", t) for t in shown), shown
            assert any(n > 50 for n in st0["lines"]), "no bid/ask line drawn"
            assert not st0["error"], st0["error"]
            if full and os.environ.get("MBO_LAB_UPDATE_DOCS") == "1":
                time.sleep(1.0)  # the whole-day view, for the README
                png = page.locator(".mbo-map-test").screenshot()
                small = png
                for scale in (0.8, 0.65, 0.5, 0.4):
                    if len(small) < 150_000:
                        break
                    small = _png_scaled(page, png, scale)
                assert len(small) < 150_000
                DOCS_PNG.parent.mkdir(exist_ok=True)
                DOCS_PNG.write_bytes(small)

            if full:
                # ---- zoom with the mouse wheel over the middle of the plot
                x, y, w, h = st0["fig"]
                cx, cy = x + 70 + (w - 78) * 0.5, y + 8 + (h - 52) * 0.5
                page.mouse.move(cx, cy)
                for _ in range(4):
                    page.mouse.wheel(0, -400)
                    time.sleep(0.05)
                st1 = _wait(page, lambda s: s["window"] != st0["window"]
                            and s["href"] != st0["href"], 30, "the zoomed map")
                span0, span1 = _span(st0["window"]), _span(st1["window"])
                assert 0 < span1 < 0.8 * span0, (st0["window"], st1["window"])
                st1 = _wait(page, lambda s: s["ticks"] and s["ticks"][0]
                            and _span(s["window"]) < 0.8 * span0, 10, "new time ticks")
                # ---- the zoom-in button: time from the click to the new image on screen
                t_click = time.monotonic()
                page.locator(".mbo-map-test .mbo-map-zoom-in").click()
                st1b = _wait(page, lambda s: s["href"] != st1["href"]
                             and s["window"] != st1["window"], 30, "the button zoom")
                button_seconds = time.monotonic() - t_click
                assert _span(st1b["window"]) < 0.7 * _span(st1["window"])
                st1 = st1b
                # ---- click to seek
                page.locator(".mbo-map-test .mbo-map-mode button",
                             has_text="seek").click()
                time.sleep(0.5)
                ladder0 = page.evaluate(_JS_LADDER)
                page.mouse.move(x + 70 + (w - 78) * 0.3, cy)
                page.mouse.click(x + 70 + (w - 78) * 0.3, cy)
                st2 = _wait(page, lambda s: s["cursor"] != st1["cursor"], 30,
                            "the session to move")
                deadline = time.monotonic() + 15
                while page.evaluate(_JS_LADDER) == ladder0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert page.evaluate(_JS_LADDER) != ladder0, "the ladder did not follow"
                assert st2["cursor"] and st2["cursor"] != st1["cursor"]
            # ---- the dashboard: one zone control (the header's), driving its map
            page.locator(".mbo-dashboard .mbo-map").scroll_into_view_if_needed()
            d0 = _wait_dash(page, lambda d: d["ticks"] and d["label"] and d["options"],
                            60, "the dashboard's map")
            assert d0["zone_controls"] == 1 and d0["header_controls"] == 1, d0
            assert d0["map_controls"] == 0, d0
            assert d0["standalone_controls"] == 1, d0  # the map alone keeps its dropdown
            assert d0["selected"] == "time: UTC" and d0["label"] == "time (UTC)", d0
            assert set(d0["ticks"]) <= _expected_time_labels("UTC"), d0
            other = next(o for o in d0["options"] if o.startswith("time: exchange ("))
            exch = other[len("time: exchange ("):-1]
            page.locator(".mbo-dashboard .mbo-tz select").select_option(
                index=d0["options"].index(other))
            # label, ticks and status line are separate widget messages: wait for all
            d1 = _wait_dash(page, lambda d: d["label"] == f"time ({exch})"
                            and d["ticks"] and d["ticks"] != d0["ticks"]
                            and exch in (d["status"] or ""), 30,
                            "the dashboard's map in the exchange zone")
            assert set(d1["ticks"]) <= _expected_time_labels(exch), (d1, exch)
            assert exch in (d1["status"] or ""), d1
            assert d1["zone_controls"] == 1 and d1["selected"] == other, d1
            time.sleep(1.0)
            problems = B._page_problems(page)
            shot = OUT_DIR / f"map_{zone.replace('/', '_')}.png"
            page.locator(".mbo-map-test").screenshot(path=str(shot))
        finally:
            browser.close()
    brief = {k: v for k, v in st0.items() if k != "lines"}
    print(json.dumps({"zone": zone, "console": console, "problems": problems,
                      "first": brief, "zoomed": st1["window"] if full else None,
                      "button_zoom_to_image_s": round(button_seconds, 3) if full else None,
                      "seeked": st2["cursor"] if full else None,
                      "dashboard_zone": [d0["ticks"], d1["label"], d1["ticks"]]}, indent=1))
    assert not problems, problems
    assert not console, console
    assert shot.stat().st_size > 10_000
