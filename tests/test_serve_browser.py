"""The server's page in a real browser: headless Debian Chromium through Playwright.

The server runs in a background thread with its own event loop (``mbo_lab.serve.run``)
while the replay plays; the test opens ``page_url`` (token in the URL fragment), sees the
ladder update, uses the player buttons and saves a screenshot in ``test-output/``.
Skipped when Chromium is missing, unless ``MBO_LAB_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

import mbo_lab
from mbo_lab.serve import run

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

# Debian's launcher, else the binary it starts (some images ship only the latter)
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
                 if os.path.exists(p)), "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("MBO_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MBO_LAB_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("MBO_LAB_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def served(request):
    """A session served from a background thread; the replay plays at 20x."""
    session = mbo_lab.open(mbo_lab.synth_records(60_000, seed=4))
    box: dict = {}
    ready = threading.Event()

    def announce(srv):
        box["srv"] = srv
        ready.set()

    extra = getattr(request, "param", {})
    t = threading.Thread(target=run, args=(session, "127.0.0.1", 0, "browser-test-token"),
                         kwargs={"speed": 20, "announce": announce, **extra}, daemon=True)
    t.start()
    assert ready.wait(60), "the server did not start"
    srv = box["srv"]
    try:
        yield session, srv
    finally:
        srv.stop().result(10)  # from this thread: a concurrent future
        t.join(10)
        assert not t.is_alive()


def _text(page, sel: str) -> str:
    return page.locator(sel).inner_text().strip()


def test_page_shows_the_live_ladder_and_controls_the_replay(chromium, served):
    session, srv = served
    page = chromium.new_page(viewport={"width": 1100, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(srv.page_url, wait_until="domcontentloaded", timeout=30_000)
        page.wait_for_function("document.getElementById('status').textContent === 'live'",
                               timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#ladder-body tr').length === 20",
                               timeout=15_000)
        seq1 = int(_text(page, "#seq"))
        # the ladder updates while the replay plays
        page.wait_for_function(f"Number(document.getElementById('seq').textContent) > {seq1}",
                               timeout=15_000)
        seq2 = int(_text(page, "#seq"))
        assert seq2 > seq1
        prices = page.locator("#ladder-body td.px").all_inner_texts()
        number = r"\d+(\.\d+)?"
        assert sum(bool(re.fullmatch(number, p.strip())) for p in prices) >= 10
        assert re.fullmatch(number, _text(page, "#bid"))
        assert re.fullmatch(number, _text(page, "#ask"))
        assert int(_text(page, "#records").replace(",", "")) == len(session)
        page.wait_for_function("document.querySelectorAll('#trades-body tr').length > 0",
                               timeout=15_000)

        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / "serve_page.png"), full_page=True)

        # player controls (token from the URL fragment, sent as a Bearer header)
        page.click("#pause")
        t_end = time.monotonic() + 10
        while session.playing and time.monotonic() < t_end:
            time.sleep(0.05)
        assert not session.playing
        page.wait_for_function("document.getElementById('play').disabled === false",
                               timeout=10_000)
        pos = session.position
        page.click("#fwd")
        t_end = time.monotonic() + 10
        while session.position == pos and time.monotonic() < t_end:
            time.sleep(0.05)
        assert session.position > pos
        page.click("#play")
        t_end = time.monotonic() + 10
        while not session.playing and time.monotonic() < t_end:
            time.sleep(0.05)
        assert session.playing
        assert _text(page, "#msg") == ""
        assert not errors, errors
    finally:
        page.close()


@pytest.mark.parametrize("served", [{"max_streams": 1, "retry_ms": 300}], indirect=True)
def test_page_recovers_when_the_server_was_at_its_stream_limit(chromium, served):
    """At max_streams the page's EventSource gets `event: busy` + `retry:` and keeps
    retrying (a 503 would end EventSource for good); once a slot frees, it goes live."""
    import socket

    session, srv = served
    hold = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    hold.sendall(b"GET /v1/stream/book?max_hz=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Accept: text/event-stream\r\n\r\n")
    t_end = time.monotonic() + 10
    while len(srv.streams) < 1 and time.monotonic() < t_end:
        time.sleep(0.05)
    assert len(srv.streams) == 1
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(srv.page_url, wait_until="domcontentloaded", timeout=30_000)
        page.wait_for_function(
            "document.getElementById('status').textContent === 'server busy, retrying'",
            timeout=20_000)
        time.sleep(2.0)  # several busy answers and retries meanwhile
        assert _text(page, "#status") == "server busy, retrying"
        hold.close()  # the slot frees: the next retry gets the stream
        page.wait_for_function("document.getElementById('status').textContent === 'live'",
                               timeout=20_000)
        page.wait_for_function("document.querySelectorAll('#ladder-body tr').length === 20",
                               timeout=15_000)
        assert not errors, errors
    finally:
        hold.close()
        page.close()
