"""The HTTP/SSE server (mbo_lab.serve): real server on 127.0.0.1:0, real HTTP clients.

Every test runs its own event loop (asyncio.run), starts the server inside it and stops it
before the loop ends. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import aiohttp
import numpy as np
import pytest

import mbo_lab
from mbo_lab import metrics
from mbo_lab.errors import MboLabError
from mbo_lab.io.records import FIXED_PRICE_SCALE, UNDEF_PRICE
from mbo_lab.replay.session import record_effect
from mbo_lab.serve import is_loopback, start

pytestmark = pytest.mark.timeout(120)

TOKEN = "test-token-0123456789"
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth_session():
    return mbo_lab.open(mbo_lab.synth_records(30_000, seed=3))


@pytest.fixture(scope="module")
def big_session():
    # ~20 MB of serialized events: more than the kernel buffers of a stalled socket hold
    return mbo_lab.open(mbo_lab.synth_records(150_000, seed=5))


@pytest.fixture(scope="module")
def clx5_path():
    path = mbo_lab.get_settings().data_path
    if not os.path.exists(path):
        pytest.skip(f"the CLX5 sample is missing at {path} (set MBO_LAB_DATA_PATH)")
    return path


def run(coro, timeout: float = 60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(session, **kw):
    kw.setdefault("token", TOKEN)
    srv = start(session, "127.0.0.1", 0, **kw)
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=60, sock_read=20)) as http:
            yield srv, http
    finally:
        session.pause()
        await srv.stop()


async def sse_events(resp, limit: int | None = None):
    """Parse an SSE response into dicts {event, data, id, comment} (bytes-level parser)."""
    buf = b""
    n = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return
        buf += chunk
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            block, buf = buf[:cut], buf[cut + 2:]
            ev: dict = {"event": "message", "data": None, "id": None, "comment": None,
                        "retry": None}
            for line in block.split(b"\n"):
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"":
                    ev["comment"] = value.decode()
                elif field == b"data":
                    ev["data"] = value.decode()
                elif field in (b"event", b"id", b"retry"):
                    ev[field.decode()] = value.decode()
            if ev["data"] is None and ev["comment"] is None and ev["retry"] is None:
                continue
            yield ev
            n += 1
            if limit is not None and n >= limit:
                return


async def read_records(http, url, headers=None, stop_after_events=None):
    """Rows and events of a record stream (stops after N mbo events if asked)."""
    rows, events = [], []
    async with http.get(url, headers=headers or {}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for ev in sse_events(resp):
            events.append(ev)
            if ev["event"] == "mbo":
                d = json.loads(ev["data"])
                assert int(ev["id"]) == d["last"] == d["first"] + d["count"] - 1
                assert len(d["rows"]) == d["count"]
                rows.extend(d["rows"])
                if stop_after_events and sum(e["event"] == "mbo" for e in events) >= \
                        stop_after_events:
                    break
            elif ev["event"] in ("end", "overflow"):
                break
    return rows, events


def check_rows(rows, records, first=0):
    fields = list(mbo_lab.serve.feeds.RECORD_FIELDS)
    cols = {f: [r[i] for r in rows] for i, f in enumerate(fields)}
    n = len(rows)
    assert cols["index"] == list(range(first, first + n))
    rec = records[first:first + n]
    for f in ("ts_recv", "ts_event", "instrument_id", "publisher_id", "size", "order_id",
              "flags", "channel_id", "sequence"):
        assert np.array_equal(np.array(cols[f], dtype=rec[f].dtype), rec[f]), f
    assert cols["action"] == rec["action"].astype("U1").tolist()
    assert cols["side"] == rec["side"].astype("U1").tolist()
    px = np.array([UNDEF_PRICE if p is None else round(p * FIXED_PRICE_SCALE)
                   for p in cols["price"]], dtype=np.int64)
    assert np.array_equal(px, rec["price"])
    # the effect is the session's own wording (record_effect), checked on a sample
    step = max(1, n // 500)
    for i in range(0, n, step):
        assert cols["effect"][i] == record_effect(rec[i])


def gauge(stream: str) -> float:
    return metrics.sample("mbo_sse_connections", {"stream": stream}) or 0.0


def dropped(stream: str, reason: str) -> float:
    return metrics.sample("mbo_sse_clients_dropped_total",
                          {"stream": stream, "reason": reason}) or 0.0


async def until(cond, timeout: float = 10.0, step: float = 0.02) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        await asyncio.sleep(step)
    return cond()


# ----------------------------------------------------------------------------- records
def test_clx5_record_stream_complete_and_in_order(clx5_path):
    session = mbo_lab.open(clx5_path)
    records = session.data.records

    async def main():
        async with serving(session) as (srv, http):
            rows, events = await read_records(http, srv.url + "v1/stream/mbo")
            assert events[-1]["event"] == "end"
            assert json.loads(events[-1]["data"]) == {"last": len(records) - 1,
                                                      "records": len(records)}
            ids = [int(e["id"]) for e in events if e["event"] == "mbo"]
            assert ids == sorted(ids) and ids[-1] == len(records) - 1
            return rows

    rows = run(main())
    assert len(rows) == len(records) == 38_212 or len(rows) == len(records)
    check_rows(rows, records)


def test_resume_with_last_event_id_loses_and_repeats_nothing(synth_session):
    records = synth_session.data.records
    n = len(records)

    async def main():
        async with serving(synth_session, record_batch=700) as (srv, http):
            url = srv.url + "v1/stream/mbo"
            got, _ = await read_records(http, url, stop_after_events=5)  # drop mid-stream
            last = got[-1][0]
            assert last == 5 * 700 - 1
            rest, ev = await read_records(http, url, {"Last-Event-ID": str(last)})
            assert ev[-1]["event"] == "end"
            # resume from an unaligned id (mid-batch), via ?from= and ?lastEventId=
            part, _ = await read_records(http, url + "?from=1234&to=2000")
            assert [r[0] for r in part] == list(range(1234, 2000))
            part2, _ = await read_records(http, url + "?lastEventId=1999&to=2100")
            assert [r[0] for r in part2] == list(range(2000, 2100))
            # the header wins over ?from= (EventSource keeps the URL when reconnecting)
            part3, _ = await read_records(http, url + "?from=0&to=3000",
                                          {"Last-Event-ID": "2899"})
            assert [r[0] for r in part3] == list(range(2900, 3000))
            # nothing left: 204 makes EventSource stop reconnecting
            async with http.get(url, headers={"Last-Event-ID": str(n - 1)}) as r:
                assert r.status == 204
            return got + rest

    rows = run(main())
    assert [r[0] for r in rows] == list(range(n))
    check_rows(rows, records)


def test_record_events_serialized_once_for_all_clients(synth_session):
    async def main():
        async with serving(synth_session, record_batch=1000) as (srv, http):
            before = srv.feed.serialized
            results = await asyncio.gather(*[
                read_records(http, srv.url + "v1/stream/mbo?to=10000") for _ in range(5)])
            for rows, _ in results:
                assert [r[0] for r in rows] == list(range(10_000))
            assert srv.feed.serialized - before == 10  # 10 events, each serialized once

    run(main())


def warm(srv):
    """Serialize the whole record stream now, so it is served at socket speed."""
    pos = 0
    while pos < srv.feed.n:
        pos = srv.feed.event(pos, srv.feed.n)[1] + 1


def _stalled_socket(port: int, path: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def test_stalled_client_is_dropped_while_fast_client_continues(big_session):
    records = big_session.data.records

    async def main():
        async with serving(big_session, send_timeout=0.5) as (srv, http):
            warm(srv)
            base_slow = dropped("mbo", "slow")
            base_gauge = gauge("mbo")
            stalled = _stalled_socket(srv.port, "/v1/stream/mbo")
            try:
                assert await until(lambda: len(srv.streams) == 1, 5)
                t0 = time.monotonic()
                rows, ev = await read_records(http, srv.url + "v1/stream/mbo")
                t_fast = time.monotonic() - t0
                assert ev[-1]["event"] == "end"
                assert len(rows) == len(records)
                assert await until(lambda: dropped("mbo", "slow") == base_slow + 1, 10)
                assert await until(lambda: gauge("mbo") == base_gauge and not srv.streams, 5)
                # the stalled socket's buffered data is bounded (one event + kernel buffers)
                stalled.setblocking(False)
                return t_fast
            finally:
                stalled.close()

    t_fast = run(main())
    assert t_fast < 30


def test_paused_client_gets_overflow_and_resumes_exactly(big_session):
    records = big_session.data.records
    n = len(records)

    async def main():
        async with serving(big_session, send_timeout=0.3, overflow_grace=10) as (srv, http):
            warm(srv)
            url = srv.url + "v1/stream/mbo"
            rows, last_id, overflow = [], None, None
            reader_limit = 2 ** 16
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, read_bufsize=reader_limit) as c:
                async with c.get(url) as resp:
                    it = sse_events(resp)
                    async for ev in it:
                        if ev["event"] == "mbo":
                            d = json.loads(ev["data"])
                            rows.extend(d["rows"])
                            last_id = int(ev["id"])
                            if len(rows) == 2000:
                                await asyncio.sleep(1.0)  # stop reading: fall behind
                        elif ev["event"] == "overflow":
                            overflow = json.loads(ev["data"])
                            break
                    # after an overflow the server closes the stream
                    async for _ in it:
                        pytest.fail("data after the overflow event")
            assert overflow is not None, "no overflow event"
            assert overflow["last_id"] == last_id
            rest, ev = await read_records(http, url, {"Last-Event-ID": str(last_id)})
            assert ev[-1]["event"] == "end"
            return rows + rest

    rows = run(main())
    assert [r[0] for r in rows] == list(range(n))


# ----------------------------------------------------------------------------- book stream
def test_book_stream_is_conflated_latest_wins(synth_session):
    s = synth_session

    async def drive(stop: asyncio.Event):
        # publish a frame every ~10 ms (step() always publishes)
        s.to_start()
        while not stop.is_set():
            s.step(1)
            await asyncio.sleep(0.01)

    async def main():
        async with serving(s) as (srv, http):
            stop = asyncio.Event()
            driver = asyncio.create_task(drive(stop))
            seqs, t0 = [], time.monotonic()
            v0 = srv.hub.version
            async with http.get(srv.url + "v1/stream/book?levels=3&max_hz=4") as resp:
                assert resp.status == 200
                async for ev in sse_events(resp):
                    if ev["event"] != "book":
                        continue
                    d = json.loads(ev["data"])
                    assert int(ev["id"]) == d["seq"]
                    assert len(d["bids"]) <= 3 and len(d["asks"]) <= 3
                    assert d["published_at"] <= time.time()
                    seqs.append(d["seq"])
                    if time.monotonic() - t0 > 2.0:
                        break
            published = srv.hub.version - v0
            assert seqs == sorted(set(seqs)), seqs
            # rate-limited: frames >= 0.8/max_hz apart (+ the snapshot at connect)
            assert len(seqs) <= 2.0 * 4 / 0.8 + 2, seqs
            assert published > len(seqs) + 5, (published, seqs)
            assert max(np.diff(seqs)) > 1, seqs  # frames were skipped, not queued
            # a client that doesn't read for a while gets the newest frame, not a backlog
            async with http.get(srv.url + "v1/stream/book?levels=1&max_hz=1000") as resp:
                await asyncio.sleep(1.0)
                stop.set()
                await driver
                s.pause()  # publishes the final frame
                final = s.seq
                got = []
                async for ev in sse_events(resp):
                    if ev["event"] == "book":
                        got.append(json.loads(ev["data"])["seq"])
                        if got[-1] == final:
                            break
                assert got[-1] == final
            assert len(srv.hub.clients) <= 1

    run(main())


def test_frames_published_from_another_thread_reach_the_stream(synth_session):
    import threading

    s = synth_session

    async def main():
        async with serving(s) as (srv, http):
            async with http.get(srv.url + "v1/stream/book?levels=1") as resp:
                it = sse_events(resp)
                first = None
                async for ev in it:
                    if ev["event"] == "book":
                        first = int(ev["id"])
                        break
                t = threading.Thread(target=s.step, args=(1,))  # e.g. a widget callback
                t.start()
                t.join()
                async for ev in it:
                    if ev["event"] == "book":
                        assert int(ev["id"]) > first
                        break

    run(main())


def test_too_many_streams_get_503(synth_session):
    async def main():
        async with serving(synth_session, max_streams=2) as (srv, http):
            r1 = await http.get(srv.url + "v1/stream/book")
            r2 = await http.get(srv.url + "v1/stream/book")
            try:
                async with http.get(srv.url + "v1/stream/mbo") as r3:
                    assert r3.status == 503
                    assert r3.headers["Retry-After"] == "5"
                    assert "too many" in (await r3.json())["error"]["message"]
            finally:
                r1.close()
                r2.close()

    run(main())


def test_book_and_info_json(synth_session):
    async def main():
        async with serving(synth_session) as (srv, http):
            async with http.get(srv.url + "v1/book?levels=2") as r:
                assert r.status == 200
                d = await r.json()
                assert len(d["bids"]) <= 2 and d["position"] == synth_session.position
            async with http.get(srv.url + "v1/info") as r:
                d = await r.json()
                assert d["records"] == len(synth_session)
                assert d["record_stream"]["batch"] == 1000
            async with http.get(srv.url + "ready") as r:
                assert r.status == 200
            async with http.get(srv.url) as r:
                assert r.status == 200 and "EventSource" in await r.text()
            async with http.head(srv.url + "v1/stream/book") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")

    run(main())


# ----------------------------------------------------------------------------- connections
def test_connect_disconnect_cycles_leave_nothing_behind(synth_session):
    async def cycle(http, srv, i):
        if i % 2:
            async with http.get(srv.url + "v1/stream/book?levels=1") as resp:
                async for ev in sse_events(resp):
                    if ev["event"] == "book":
                        break
        else:  # abrupt: request, read a little, reset
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            path = "/v1/stream/mbo" if i % 4 == 0 else "/v1/stream/book"
            w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await w.drain()
            await r.read(100)
            w.transport.abort()

    async def batch(http, srv, lo, hi):
        await asyncio.gather(*[cycle(http, srv, i) for i in range(lo, hi)])

    async def main():
        async with serving(synth_session) as (srv, http):
            g0 = gauge("mbo") + gauge("book")
            for lo in range(0, 200, 50):  # warm-up
                await batch(http, srv, lo, lo + 50)
            assert await until(lambda: not srv.streams, 10)
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for lo in range(200, 1000, 50):
                    await batch(http, srv, lo, lo + 50)
                assert await until(lambda: not srv.streams, 10)
                assert await until(lambda: gauge("mbo") + gauge("book") == g0, 5)
                await asyncio.sleep(0.2)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            assert grown < 1_000_000, f"memory grew by {grown} bytes over 800 cycles"
            assert not srv.hub.clients

    run(main(), timeout=100)


def test_stop_closes_streams_promptly_and_restart_same_port(synth_session):
    async def main():
        srv = start(synth_session, "127.0.0.1", 0, token=TOKEN)
        port = srv.port
        async with aiohttp.ClientSession() as http:
            async with http.get(srv.url + "v1/stream/book") as resp:
                it = sse_events(resp)
                async for ev in it:
                    if ev["event"] == "book":
                        break
                t0 = time.monotonic()
                await asyncio.wait_for(srv.stop(), 5)
                with contextlib.suppress(aiohttp.ClientError):
                    async for _ in it:
                        pass
                assert time.monotonic() - t0 < 2
            assert not srv.streams and not srv.running
            srv.stop()  # idempotent
            # the same port again
            srv2 = start(synth_session, "127.0.0.1", port, token=TOKEN)
            assert srv2.port == port
            # re-running "the cell" (same session, port 0) reuses the port, no EADDRINUSE
            srv3 = synth_session.serve("127.0.0.1", 0, token=TOKEN)
            assert srv3.port == port and not srv2.running and srv3.running
            async with http.get(srv3.url + "health") as r:
                assert r.status == 200
            # a port taken by another program gives a clear error
            other = socket.socket()
            other.bind(("127.0.0.1", 0))
            other.listen()
            try:
                with pytest.raises(MboLabError, match="in use"):
                    start(mbo_lab.open(mbo_lab.synth_records(2000, seed=1)), "127.0.0.1",
                          other.getsockname()[1])
            finally:
                other.close()
            await srv3.stop()

    run(main())


def test_start_needs_a_running_loop(synth_session):
    with pytest.raises(MboLabError, match="running event loop"):
        start(synth_session)


# ----------------------------------------------------------------------------- errors, auth
def test_bad_requests_get_json_4xx(synth_session):
    async def expect(http, method, url, status, **kw):
        async with http.request(method, url, **kw) as r:
            assert r.status == status, (url, r.status, await r.text())
            assert r.headers["Content-Type"].startswith("application/json")
            body = await r.json()
            assert body["error"]["status"] == status and body["error"]["message"]
            return r, body

    async def main():
        async with serving(synth_session) as (srv, http):
            u = srv.url
            _, b = await expect(http, "GET", u + "nope", 404)
            assert "openapi.json" in b["error"]["message"]
            await expect(http, "GET", u + "v1/book?levels=abc", 400)
            await expect(http, "GET", u + "v1/book?levels=0", 400)
            _, b = await expect(http, "GET", u + "v1/stream/book?levels=99", 400)
            assert "1..10" in b["error"]["message"]
            await expect(http, "GET", u + "v1/stream/book?max_hz=0", 400)
            await expect(http, "GET", u + "v1/stream/book?max_hz=fast", 400)
            await expect(http, "GET", u + "v1/stream/mbo?from=-1", 400)
            await expect(http, "GET", u + "v1/stream/mbo", 400, headers={"Last-Event-ID": "x"})
            await expect(http, "GET", u + "v1/stream/mbo?to=99999999", 400)
            await expect(http, "GET", u + "v1/player", 405)
            # player: token required even on loopback
            r, _ = await expect(http, "POST", u + "v1/player", 401, json={"action": "pause"})
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            await expect(http, "POST", u + "v1/player", 403, json={"action": "pause"},
                         headers={"Authorization": "Bearer wrong-token-xxxx"})
            await expect(http, "POST", u + "v1/player", 401, json={"action": "pause"},
                         headers={"Authorization": "Basic abc"})
            auth = {"Authorization": f"Bearer {TOKEN}"}
            await expect(http, "POST", u + "v1/player", 400, data=b"{", headers=auth)
            await expect(http, "POST", u + "v1/player", 400, json={"action": "dance"},
                         headers=auth)
            await expect(http, "POST", u + "v1/player", 400, json={"action": "seek"},
                         headers=auth)
            _, b = await expect(http, "POST", u + "v1/player", 400,
                                json={"action": "speed", "speed": 5000}, headers=auth)
            assert "speed" in b["error"]["message"]
            await expect(http, "POST", u + "v1/player", 400,
                         json={"action": "seek", "index": 10 ** 9}, headers=auth)
            await expect(http, "POST", u + "v1/player", 400,
                         json={"action": "seek", "time": "not a time"}, headers=auth)
            # reads are open on loopback
            async with http.get(u + "v1/info") as r:
                assert r.status == 200

    run(main())


def test_token_required_for_reads_when_asked(synth_session):
    async def main():
        async with serving(synth_session, require_token=True) as (srv, http):
            u = srv.url
            async with http.get(u + "health") as r:
                assert r.status == 200
            for path in ("v1/info", "v1/book", "metrics", "openapi.json", "ready",
                         "v1/stream/book", "v1/stream/mbo"):
                async with http.get(u + path) as r:
                    assert r.status == 401, path
                    assert (await r.json())["error"]["status"] == 401
                async with http.get(u + path, headers={"Authorization": "Bearer nope-nope"}
                                    ) as r:
                    assert r.status == 403, path
            async with http.get(u + "v1/info", headers={"Authorization": f"Bearer {TOKEN}"}
                                ) as r:
                assert r.status == 200
            async with http.get(u + f"v1/info?token={TOKEN}") as r:
                assert r.status == 200
            # the page's way: POST /v1/auth sets an HttpOnly cookie that EventSource sends
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as c:
                async with c.post(u + "v1/auth", headers={"Authorization": f"Bearer {TOKEN}"}
                                  ) as r:
                    assert r.status == 200
                    assert "httponly" in r.headers["Set-Cookie"].lower()
                async with c.get(u + "v1/stream/book") as r:
                    assert r.status == 200
                    async for ev in sse_events(r):
                        if ev["event"] == "book":
                            break
                # a cookie never authorizes POST (CSRF): the header is required
                async with c.post(u + "v1/player", json={"action": "pause"}) as r:
                    assert r.status == 401

    run(main())


def test_token_never_logged(synth_session, caplog):
    import logging

    secret = "never-log-this-token-123"

    async def main():
        async with serving(synth_session, token=secret, require_token=True) as (srv, http):
            for path in (f"v1/info?token={secret}", f"v1/book?levels=x&token={secret}",
                         f"nope?token={secret}", f"v1/stream/mbo?to=5&token={secret}",
                         "v1/info?token=wrong-token-xyz"):
                async with http.get(srv.url + path) as r:
                    await r.read()
            async with http.post(srv.url + f"v1/player?token={secret}",
                                 json={"action": "pause"}) as r:
                assert r.status == 401  # POST: header only

    with caplog.at_level(logging.DEBUG):
        run(main())
    assert "v1/info" in caplog.text  # the debug access log ran...
    assert secret not in caplog.text  # ...without the query string


def test_cors_off_by_default_and_configurable(synth_session):
    async def main():
        async with serving(synth_session) as (srv, http):
            async with http.get(srv.url + "v1/info", headers={"Origin": "http://a.example"}
                                ) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
        async with serving(synth_session, cors_origin="http://a.example") as (srv, http):
            h = {"Origin": "http://a.example"}
            async with http.get(srv.url + "v1/info", headers=h) as r:
                assert r.headers["Access-Control-Allow-Origin"] == "http://a.example"
            async with http.options(srv.url + "v1/stream/mbo", headers={
                    **h, "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "last-event-id"}) as r:
                assert r.status == 204
                assert "Last-Event-ID" in r.headers["Access-Control-Allow-Headers"]
            async with http.get(srv.url + "v1/info", headers={"Origin": "http://b.example"}
                                ) as r:
                assert "Access-Control-Allow-Origin" not in r.headers

    run(main())


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_openapi_lists_the_paths(synth_session):
    async def main():
        async with serving(synth_session) as (srv, http):
            async with http.get(srv.url + "openapi.json") as r:
                assert r.status == 200
                return json.loads(await r.text())

    spec = run(main())
    assert spec["openapi"].startswith("3.")
    for p in ("/v1/stream/mbo", "/v1/stream/book", "/v1/book", "/v1/info", "/v1/player",
              "/health", "/ready", "/metrics", "/openapi.json", "/"):
        assert p in spec["paths"], p
    assert "post" in spec["paths"]["/v1/player"]


# ----------------------------------------------------------------------------- player
def test_player_control_with_token(synth_session):
    s = synth_session
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def post(http, srv, body):
        async with http.post(srv.url + "v1/player", json=body, headers=auth) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["state"]

    async def main():
        async with serving(s) as (srv, http):
            st = await post(http, srv, {"action": "seek", "index": 10_000})
            assert st["record_index"] <= 10_000 and s.position == st["position"]
            pos = s.position
            st = await post(http, srv, {"action": "step", "n": 3})
            assert st["position"] > pos
            st = await post(http, srv, {"action": "step", "n": -3})
            assert st["position"] == pos
            st = await post(http, srv, {"action": "speed", "speed": 100})
            assert st["speed"] == 100
            st = await post(http, srv, {"action": "play"})
            assert st["playing"] and s.playing
            await asyncio.sleep(0.3)
            assert s.position > pos
            st = await post(http, srv, {"action": "pause"})
            assert not st["playing"] and not s.playing
            st = await post(http, srv, {"action": "speed", "speed": "max"})
            assert st["speed"] is None
            st = await post(http, srv, {"action": "seek", "time": str(s.data.summary()["start"])})
            assert st["position"] >= 1
            s.set_speed(1)

    run(main())


# ----------------------------------------------------------------------------- metrics
def test_metrics_endpoint(synth_session):
    async def main():
        async with serving(synth_session) as (srv, http):
            async with http.get(srv.url + "v1/stream/mbo?to=100") as r:
                await r.read()
            async with http.get(srv.url + "metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            for name in ("mbo_sse_connections", "mbo_sse_events_sent_total",
                         "mbo_sse_records_sent_total", "mbo_http_request_duration_seconds",
                         "mbo_book_anomalies", "mbo_apply_seconds", "mbo_records_applied_total",
                         "mbo_frames_published_total", "mbo_sse_clients_dropped_total"):
                assert name in text, name
            async with http.get(srv.url + "metrics", headers={
                    "Accept": "application/openmetrics-text; version=1.0.0"}) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await r.text()).rstrip().endswith("# EOF")

    run(main())


def test_metrics_registry_is_a_singleton():
    import importlib

    reg = metrics.REGISTRY
    importlib.reload(metrics)  # like re-running a notebook cell that imports it
    assert metrics.REGISTRY is reg


# ----------------------------------------------------------------------------- standalone
def test_cli_serve_standalone(tmp_path):
    path = tmp_path / "s.dbn"
    mbo_lab.write_dbn(path, mbo_lab.synth_records(5000, seed=2))
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    env = {**os.environ, "MBO_LAB_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbo_lab.cli", "serve", str(path), "--port", str(port),
         "--speed", "max"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        cwd=ROOT)

    async def main():
        async with aiohttp.ClientSession() as http:
            for _ in range(1200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            rows, ev = await read_records(http, f"http://127.0.0.1:{port}/v1/stream/mbo")
            assert len(rows) == 5000 and ev[-1]["event"] == "end"
            async with http.get(f"http://127.0.0.1:{port}/v1/info") as r:
                info = await r.json()
            return info

    try:
        info = run(main())
        assert info["records"] == 5000
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"http://127.0.0.1:{port}/" in text
    assert TOKEN not in text and "#token=" not in text  # it came from MBO_LAB_TOKEN


def test_cli_serve_token_file_and_allowed_host(tmp_path):
    """`serve --token-file F --allowed-host H`: the token comes from the file (never printed,
    never on the command line) and Host H is accepted without it, other names are not."""
    path = tmp_path / "s.dbn"
    mbo_lab.write_dbn(path, mbo_lab.synth_records(2000, seed=3))
    secret = "file-token-0123456789"
    (tmp_path / "tok").write_text(secret + "\n")
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBO_LAB_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbo_lab.cli", "serve", str(path), "--port", str(port),
         "--token-file", str(tmp_path / "tok"), "--allowed-host", "book.example.test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"

    async def main():
        async with aiohttp.ClientSession() as http:
            for _ in range(1200):
                try:
                    async with http.get(base + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            async with http.get(base + "/v1/info",
                                headers={"Host": "book.example.test"}) as r:
                allowed = r.status
            async with http.get(base + "/v1/info", headers={"Host": "evil.example"}) as r:
                other = r.status
            async with http.post(base + "/v1/player", json={"action": "pause"},
                                 headers={"Authorization": "Bearer " + secret}) as r:
                with_token = r.status
            async with http.post(base + "/v1/player", json={"action": "pause"},
                                 headers={"Authorization": "Bearer wrong-token-xxxx"}) as r:
                wrong = r.status
            return allowed, other, with_token, wrong

    try:
        allowed, other, with_token, wrong = run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert allowed == 200 and other == 421
    assert with_token == 200 and wrong in (401, 403)
    assert secret not in out.decode() and secret not in err.decode()
