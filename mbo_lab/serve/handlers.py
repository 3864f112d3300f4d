"""Tornado request handlers: JSON endpoints, the two SSE streams, metrics, the page."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from .. import metrics
from ..errors import MboLabError
from ..replay.session import SPEED_MAX
from .feeds import dumps, http_chunk, sse_event
from .net import abort as reset_socket
from .net import bytes_acked, not_sent, set_sndbuf, unsent_bytes
from .openapi import openapi

if TYPE_CHECKING:
    from .server import Server

__all__ = ["make_app", "cookie_name", "Pacer"]

log = logging.getLogger("mbo_lab.serve")

_PREFIX_OK = re.compile(r"^/[A-Za-z0-9/_.~%@+-]{0,400}$")


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets), lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class Pacer:
    """Cooperative pacing of the heavy record streams: together they write for at most
    ``budget`` seconds per event-loop iteration, then wait for the next one, so timers
    (the replay's frames), new connections and the book streams' writes run in between."""

    def __init__(self, budget: float = 0.002):
        self.budget = budget
        self._start: float | None = None
        self._gate: asyncio.Future | None = None

    async def turn(self) -> None:
        while True:
            now = time.perf_counter()
            if self._start is None:
                self._start = now
                asyncio.get_running_loop().call_soon(self._next_iteration)
                return
            if now - self._start < self.budget:
                return
            if self._gate is None:
                self._gate = asyncio.get_running_loop().create_future()
            await self._gate

    def _next_iteration(self) -> None:
        self._start = None
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)



def cookie_name(port: int) -> str:
    """The token cookie set by ``POST /v1/auth`` (read on GET requests only). Cookies don't
    separate ports, so the name carries the port: two servers on one host don't clash."""
    return f"mbo_lab_token_{port}"


class ApiError(tornado.web.HTTPError):
    """An HTTP error with a message for the JSON body (never logged with the URL)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.message = message
        self.headers = headers or {}


class BaseHandler(tornado.web.RequestHandler):
    endpoint = "other"
    #: "none": open; "read": token if the server requires it for reads; "control": always.
    auth = "read"

    def initialize(self, server: Server) -> None:
        self.server = server

    # -- never log the query string (it may hold ?token=) -----------------------------
    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # 4xx/5xx answers are reported in the JSON body and the metrics
        log.error("uncaught exception in %s", self._request_summary(), exc_info=(typ, value, tb))

    # -- common headers, CORS, auth ---------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        if hasattr(self, "server"):  # not yet set during __init__
            self._cors()

    def _cors(self) -> None:
        origin = self.server.cors_origin
        if not origin:
            return
        req_origin = self.request.headers.get("Origin")
        if origin == "*":
            self.set_header("Access-Control-Allow-Origin", "*")
        elif req_origin and req_origin in [o.strip() for o in origin.split(",")]:
            self.set_header("Access-Control-Allow-Origin", req_origin)
            self.set_header("Vary", "Origin")

    def options(self, *args: Any) -> None:
        if not self.server.cors_origin:
            raise ApiError(405, "CORS is not enabled on this server (start it with "
                           "cors_origin=...)")
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers",
                        "Authorization, Content-Type, Last-Event-ID, Cache-Control")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    def prepare(self) -> None:
        self._cors()
        method = (self.request.method or "").lower()
        if method == "options":
            return
        if getattr(type(self), method, None) is getattr(tornado.web.RequestHandler, method, None):
            allowed = [m.upper() for m in ("get", "head", "post") if getattr(type(self), m)
                       is not getattr(tornado.web.RequestHandler, m)]
            raise ApiError(405, f"{self.request.method} is not allowed on {self.request.path}; "
                           f"use {', '.join(allowed)}", {"Allow": ", ".join(allowed)})
        if self.auth != "none":
            self._check_host()
        if self.auth == "control" or (self.auth == "read" and self.server.require_token):
            self._check_token(allow_cookie=self.request.method in ("GET", "HEAD"))

    def _check_host(self) -> None:
        """DNS-rebinding guard: a page on an attacker's name that resolves to 127.0.0.1
        sends that name as Host. Loopback names, the bound address and ``allowed_hosts``
        pass; any other Host needs the token (which such a page doesn't have)."""
        name = host_name(self.request.headers.get("Host", ""))
        from .server import is_loopback
        if name and (is_loopback(name) or name in self.server.allowed_hosts
                     or "*" in self.server.allowed_hosts):
            return
        given = self._given_token(allow_cookie=self.request.method in ("GET", "HEAD"))
        if given and secrets.compare_digest(given.encode(), self.server.token.encode()):
            return
        metrics.M.http_refused.labels("host").inc()
        raise ApiError(421, f"this server does not answer for Host {name!r}: use a loopback "
                       "name, start it with allowed_hosts=[...] (MBO_LAB_ALLOWED_HOSTS), or "
                       "send the token")

    def _given_token(self, allow_cookie: bool) -> str | None:
        authz = self.request.headers.get("Authorization", "")
        if authz:
            scheme, _, value = authz.partition(" ")
            return value.strip() if scheme.lower() == "bearer" else None
        if allow_cookie:
            return (self.get_cookie(cookie_name(self.server.port))
                    or self.get_query_argument("token", None))
        return None

    def proxy_prefix(self) -> str | None:
        """The path prefix jupyter-server-proxy serves us under (``X-Forwarded-Prefix``,
        e.g. ``/user/x/proxy/8765``), None when the request came directly."""
        p = (self.request.headers.get("X-Forwarded-Prefix")
             or self.request.headers.get("X-Forwarded-Context"))
        if p and _PREFIX_OK.match(p):
            return p.rstrip("/")
        return None

    def _check_token(self, allow_cookie: bool) -> None:
        given = None
        authz = self.request.headers.get("Authorization", "")
        if authz:
            scheme, _, value = authz.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "the Authorization header must be 'Bearer <token>'",
                               {"WWW-Authenticate": 'Bearer realm="mbo_lab"'})
            given = value.strip()
        elif allow_cookie:
            given = (self.get_cookie(cookie_name(self.server.port))
                     or self.get_query_argument("token", None))
        if not given:
            how = ("send 'Authorization: Bearer <token>'" if not allow_cookie else
                   "send 'Authorization: Bearer <token>' (or the token cookie that POST "
                   "/v1/auth sets, or ?token=)")
            raise ApiError(401, f"this endpoint needs the server's token: {how}",
                           {"WWW-Authenticate": 'Bearer realm="mbo_lab"'})
        if not secrets.compare_digest(given.encode(), self.server.token.encode()):
            raise ApiError(403, "wrong token")

    # -- JSON answers -----------------------------------------------------------------
    def send_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or self._reason
        for k, v in getattr(exc, "headers", {}).items():
            self.set_header(k, v)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps({"error": {"status": status_code, "reason": self._reason,
                                     "message": message}}))

    def int_arg(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name}={raw!r} is not an integer") from None
        if not lo <= v <= hi:
            raise ApiError(400, f"query parameter {name}={v} is outside {lo}..{hi}")
        return v

    def levels_arg(self) -> int:
        n = self.server.session.levels
        return self.int_arg("levels", n, 1, n)  # type: ignore[return-value]


class NotFoundHandler(BaseHandler):
    endpoint = "not_found"
    auth = "none"

    def prepare(self) -> None:
        raise ApiError(404, f"no endpoint {self.request.method} {self.request.path}; the API "
                       "is described at /openapi.json")


class HealthHandler(BaseHandler):
    endpoint = "health"
    auth = "none"

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    endpoint = "ready"

    def get(self) -> None:
        if self.server.stopping:
            raise ApiError(503, "the server is stopping")
        self.send_json({"status": "ready", "records": len(self.server.session.data)})


class OpenApiHandler(BaseHandler):
    endpoint = "openapi"

    def get(self) -> None:
        self.send_json(openapi(self.server.session.levels, self.server.feed.batch))


class MetricsHandler(BaseHandler):
    endpoint = "metrics"

    def get(self) -> None:
        self.server.tally.flush()
        body, ctype = metrics.encode(self.request.headers.get("Accept"))
        self.set_header("Content-Type", ctype)
        self.finish(body)


class InfoHandler(BaseHandler):
    endpoint = "info"

    def get(self) -> None:
        self.send_json(self.server.info())


class BookHandler(BaseHandler):
    endpoint = "book"

    def get(self) -> None:
        levels = self.levels_arg()
        self.send_json(self.server.session.frame().to_dict(levels))


class AuthHandler(BaseHandler):
    endpoint = "auth"
    auth = "control"

    def post(self) -> None:
        # Scoped to this server's API paths: behind jupyter-server-proxy the origin is
        # Jupyter's, and Path=/ would send the token with every Jupyter request.
        name = cookie_name(self.server.port)
        path = (self.proxy_prefix() or "") + "/v1/"
        self.set_cookie(name, self.server.token, httponly=True, samesite="Strict", path=path)
        self.send_json({"ok": True, "cookie": name, "path": path})


class PlayerHandler(BaseHandler):
    endpoint = "player"
    auth = "control"
    ACTIONS = ("play", "pause", "seek", "speed", "step")

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("action") not in self.ACTIONS:
            raise ApiError(400, "send a JSON object {\"action\": ...} with action one of "
                           f"{list(self.ACTIONS)}")
        s = self.server.session
        action = body["action"]
        try:
            if action == "play":
                s.play(self._speed(body) if "speed" in body else None)
            elif action == "pause":
                s.pause()
            elif action == "speed":
                if "speed" not in body:
                    raise ApiError(400, "action 'speed' needs \"speed\": a number or \"max\"")
                s.set_speed(self._speed(body))
            elif action == "step":
                n = body.get("n", 1)
                if not isinstance(n, int) or isinstance(n, bool) or abs(n) > 10_000_000:
                    raise ApiError(400, "\"n\" must be an integer (events to step)")
                s.step(n)
            elif action == "seek":
                if ("index" in body) == ("time" in body):
                    raise ApiError(400, "action 'seek' needs exactly one of \"index\" (record "
                                   "index) or \"time\" (timestamp)")
                if "index" in body:
                    idx = body["index"]
                    if not isinstance(idx, int) or isinstance(idx, bool):
                        raise ApiError(400, "\"index\" must be an integer record index")
                    s.seek(idx)
                else:
                    if not isinstance(body["time"], str):
                        raise ApiError(400, "\"time\" must be a timestamp string")
                    s.seek(time=body["time"])
        except MboLabError as exc:
            raise ApiError(400, str(exc)) from None
        except ValueError as exc:  # e.g. an unparseable time
            raise ApiError(400, f"bad value: {exc}") from None
        self.send_json({"ok": True, "action": action, "state": self.server.state()})

    @staticmethod
    def _speed(body: dict) -> float:
        sp = body.get("speed")
        if sp in ("max", None):
            return SPEED_MAX
        if isinstance(sp, bool) or not isinstance(sp, (int, float)):
            raise ApiError(400, "\"speed\" must be a number (0.1..1000) or \"max\"")
        return float(sp)


class PageHandler(BaseHandler):
    """The static page. Open on purpose (it holds no data); its API calls carry the token
    it reads from the URL fragment (``#token=``), which browsers never send to servers."""

    endpoint = "page"
    auth = "none"
    _html: bytes | None = None

    def get(self) -> None:
        if PageHandler._html is None:
            PageHandler._html = (resources.files("mbo_lab.serve") / "static" / "index.html"
                                 ).read_bytes()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PageHandler._html)


# ------------------------------------------------------------------------------------ SSE
class SSEHandler(BaseHandler):
    """Base of the two streams: headers, registration, awaited flush with timeout,
    the stream's age/byte limits and the ``busy`` answer at ``max_streams``.

    Waiting uses bare loop futures and ``call_later`` (no task per wait): ``_waiter`` is
    resolved by :meth:`notify` (new data) or its timeout, ``_sleeper`` only by its timeout
    or :meth:`close`. SSE responses never keep the connection alive: when a stream ends,
    for whatever reason, the TCP connection closes.
    """

    stream = "?"

    def initialize(self, server: Server) -> None:
        super().initialize(server)
        self.closing = False
        self.close_reason: str | None = None
        self.last_written: int | None = None
        self.sent_bytes = 0
        self.deadline = float("inf")
        self.byte_budget = 1 << 62
        self._waiter: asyncio.Future | None = None
        self._sleeper: asyncio.Future | None = None

    def sock(self):
        stream = getattr(self.request.connection, "stream", None)
        return None if stream is None else stream.socket

    def start_stream(self) -> bool:
        """Headers and ``retry:``; False (the answer is already sent) when the server is
        at ``max_streams``."""
        if self.server.stopping:
            raise ApiError(503, "the server is stopping")
        conn = self.request.connection
        if conn is not None and hasattr(conn, "_disconnect_on_finish"):
            # Tornado then sends 'Connection: close' and closes after the response.
            conn._disconnect_on_finish = True
        if len(self.server.streams) >= self.server.max_streams:
            self._busy()
            return False
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        self.set_header("X-Accel-Buffering", "no")
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            # Events are small and spaced: without TCP_NODELAY, Nagle holds each one until
            # the client ACKs the previous one (delayed ACK: up to 40 ms).
            stream.set_nodelay(True)
        if self.proxy_prefix() is not None:
            age, budget = self.server.proxy_stream_age, self.server.proxy_stream_bytes
        else:
            age, budget = self.server.max_stream_age, self.server.max_stream_bytes
        self.deadline = time.monotonic() + min(age, self.server.max_stream_age)
        self.byte_budget = min(budget, self.server.max_stream_bytes)
        self.server.streams.add(self)
        metrics.M.sse_connections.labels(self.stream).inc()
        self.write(f"retry: {self.server.retry_ms}\n\n".encode())
        return True

    def _busy(self) -> None:
        """At ``max_streams``. EventSource gives up for good on a 503, so a client that
        accepts ``text/event-stream`` gets a 200 stream holding ``retry:`` (jittered) and
        ``event: busy``, which then ends: EventSource reconnects after the retry time."""
        metrics.M.http_refused.labels("busy").inc()
        msg = f"too many open streams ({self.server.max_streams}); retry later"
        if "text/event-stream" not in self.request.headers.get("Accept", ""):
            raise ApiError(503, msg, {"Retry-After": "5"})
        retry = int(self.server.retry_ms * (1.5 + random.random()) + 1000)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        self.finish(f"retry: {retry}\n\n".encode() + sse_event(
            "busy", dumps({"reason": msg, "retry_ms": retry})))

    def expired(self) -> bool:
        """The stream reached its maximum age or bytes (see :meth:`end_cleanly`)."""
        return self.sent_bytes >= self.byte_budget or time.monotonic() >= self.deadline

    def end_cleanly(self, last_id: int | None = None) -> bytes:
        """The bytes that end a stream at its age/byte limit: a short ``retry:`` and
        ``event: reconnect``; EventSource reconnects (with Last-Event-ID) at once."""
        self.close_reason = "max_age"
        body = {"reason": "the stream reached its maximum age or size; reconnect"}
        if last_id is not None:
            body["last_id"] = last_id
        return b"retry: 250\n\n" + sse_event("reconnect", dumps(body))

    def end_stream(self) -> None:
        if self in self.server.streams:
            self.server.streams.discard(self)
            metrics.M.sse_connections.labels(self.stream).dec()
            if self.close_reason is not None:
                metrics.M.sse_dropped.labels(self.stream, self.close_reason).inc()

    def head(self, *args: Any) -> None:
        # Headers only: an endless HEAD would wedge keep-alive connections.
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        self.finish()

    def on_connection_close(self) -> None:
        self.close("disconnected")

    def close(self, reason: str, abort: bool = True, reset: bool = False) -> None:
        """End the stream now: wake the handler and (``abort``) close the socket (with RST
        if ``reset``: the kernel drops what the client never took); else the handler ends
        the response normally (and the connection closes after it)."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        for fut in (self._waiter, self._sleeper):
            if fut is not None and not fut.done():
                fut.set_result(False)
        conn = self.request.connection
        if abort and reason != "disconnected" and conn is not None:
            if reset:
                reset_socket(self.sock())
            conn.close()

    def notify(self) -> None:
        """New data: wake the handler if it waits in :meth:`wait`."""
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(True)

    async def _park(self, attr: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        setattr(self, attr, fut)
        handle = loop.call_later(timeout, _resolve, fut, False)
        try:
            return await fut
        finally:
            handle.cancel()
            setattr(self, attr, None)

    async def wait(self, timeout: float) -> bool:
        """Wait for :meth:`notify` (True) or ``timeout`` / close (False)."""
        if self.closing:
            return False
        return await self._park("_waiter", timeout)

    async def sleep(self, seconds: float) -> None:
        """Sleep, cut short only if the stream closes."""
        if seconds > 0 and not self.closing:
            await self._park("_sleeper", seconds)

    async def send(self, data: bytes, last_id: int | None = None) -> bool:
        """Write one event and wait (at most send_timeout) until the socket took it."""
        if self.closing:
            return False
        self.sent_bytes += len(data)
        stream = getattr(self.request.connection, "stream", None)
        direct = self._headers_written and isinstance(stream, IOStream) and \
            getattr(self.request.connection, "_chunking_output", False)
        if not direct:
            self.write(data)
        if last_id is not None:
            self.last_written = last_id  # on the wire in order, whatever happens next
        t0 = time.perf_counter()
        waited = False
        try:
            if direct:
                # Straight to the IOStream as one HTTP/1.1 chunk: the IOStream keeps large
                # buffers by reference, where RequestHandler.write + flush would copy a
                # 140 kB event twice per client.
                stream.write(b"%x\r\n" % len(data))
                stream.write(data)
                fut = stream.write(b"\r\n")
            else:
                fut = self.flush()
            if fut.done():
                fut.result()  # raises if the stream is closed
            elif self.socket_busy():
                waited = True
                await asyncio.wait_for(fut, self.server.send_timeout)
        except TimeoutError:
            if not self.closing:
                drained = await self.on_slow()
                # drained: the response ends normally (the connection then closes, see
                # start_stream); else the connection is reset now
                self.close("slow", abort=not drained, reset=not drained)
            return False
        except StreamClosedError:
            self.close("disconnected")
            return False
        tally = self.server.tally
        tally.add(self.stream, len(data))
        tally.flush()  # (big events: no need to batch)
        if waited:
            _send_wait(self.stream).observe(time.perf_counter() - t0)
        return not self.closing

    def socket_busy(self) -> bool:
        """True while the socket hasn't taken everything written (bytes wait in the
        IOStream's buffer). Tornado resolves the flush future one loop iteration after a
        write the kernel took at once; checking the stream avoids awaiting that."""
        stream = getattr(self.request.connection, "stream", None)
        return stream is None or stream.writing()

    async def on_slow(self) -> bool:
        """Called when a send times out, before the stream is closed; True if the client
        took everything meanwhile (the connection then closes with a normal FIN)."""
        return False

    def finish_stream(self) -> None:
        self.end_stream()
        if not self._finished:
            try:
                self.finish()
            except Exception:  # the socket may already be gone
                pass


@functools.cache
def _send_wait(stream: str) -> Any:
    """The labelled histogram child of one stream (``labels()`` costs a lock and lookups)."""
    return metrics.M.sse_send_wait_seconds.labels(stream)


class Tally:
    """Events and bytes written, added to the Prometheus counters in batches (after each
    fan-out, and before each scrape) instead of two locked increments per write."""

    def __init__(self) -> None:
        self.counts = {s: [0, 0] for s in metrics.STREAMS}

    def add(self, stream: str, nbytes: int) -> None:
        c = self.counts[stream]
        c[0] += 1
        c[1] += nbytes

    def flush(self) -> None:
        m = metrics.M
        for stream, c in self.counts.items():
            if c[0]:
                n, b = c
                c[0] = c[1] = 0
                m.sse_events.labels(stream).inc(n)
                m.sse_bytes.labels(stream).inc(b)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class RecordStreamHandler(SSEHandler):
    """``GET /v1/stream/mbo``: the session's records from ``from`` to ``to``, full speed."""

    endpoint = "stream_mbo"
    stream = "mbo"

    def _range(self) -> tuple[int, int]:
        n = self.server.feed.n
        start = self.int_arg("from", 0, 0, n)
        stop = self.int_arg("to", n, 0, n)
        last = self.request.headers.get("Last-Event-ID") or \
            self.get_query_argument("lastEventId", None)
        if last:
            try:
                lid = int(last)
            except ValueError:
                raise ApiError(400, f"Last-Event-ID {last!r} is not a record index") from None
            if not -1 <= lid < n:
                raise ApiError(400, f"Last-Event-ID {lid} is outside -1..{n - 1}")
            start = lid + 1
        return start, stop  # type: ignore[return-value]

    async def get(self) -> None:
        start, stop = self._range()
        if start >= stop:
            self.set_status(204)  # nothing left: EventSource stops reconnecting
            return
        feed = self.server.feed
        if not self.start_stream():
            return
        sock = self.sock()
        if sock is not None:
            # What a stalled client can hold in the kernel's send buffer (else it grows
            # to tcp_wmem's maximum, 4 MB).
            set_sndbuf(sock, self.server.record_sndbuf)
        pacer = self.server.pacer
        try:
            pos = start
            while pos < stop and not self.closing:
                if self.expired() and pos > start:
                    await self.send(self.end_cleanly(pos - 1))
                    break
                data, last = await feed.aevent(pos, stop)
                await pacer.turn()  # heavy streams share the loop in slices
                if not await self.send(data, last):
                    break
                metrics.M.sse_records.inc(last + 1 - pos)
                pos = last + 1
            if pos >= stop and not self.closing:
                await self.send(sse_event("end", dumps({"last": stop - 1, "records": stop})))
        except Exception:
            log.exception("record stream failed")
            self.close_reason = self.close_reason or "error"
        finally:
            self.finish_stream()

    async def on_slow(self) -> bool:
        # The bytes before this event on the wire end with event last_written, so a client
        # that reads it has every record up to that id. It gets overflow_grace seconds to
        # take everything (its kernel acknowledges the last byte: nothing unsent is left),
        # else the connection is reset, which frees the kernel's send buffer at once.
        last = -1 if self.last_written is None else self.last_written
        self.write(sse_event("overflow", dumps({
            "last_id": last, "reason": f"the client took no data for "
            f"{self.server.send_timeout:g} s", "resume": "reconnect with Last-Event-ID"})))
        t_end = time.monotonic() + self.server.overflow_grace
        try:
            await asyncio.wait_for(self.flush(), self.server.overflow_grace)
            sock = self.sock()
            while sock is not None and unsent_bytes(sock) > 0:
                if time.monotonic() >= t_end or self.closing:
                    return False
                await asyncio.sleep(0.05)
            return True
        except Exception:
            return False


class BookStreamHandler(SSEHandler):
    """``GET /v1/stream/book``: the newest frame, frames at least 0.8/``max_hz`` s apart.

    Conflation happens before the socket: a frame goes out only when the client has
    acknowledged all but ``book_unsent`` bytes of what it was sent (``SIOCOUTQ``) and the
    IOStream holds nothing; otherwise the frame waits as "the newest" and frames published
    meanwhile replace it. The kernel send buffer is small (``book_sndbuf``). A client that
    acknowledges nothing for ``send_timeout`` seconds while data waits is dropped with a
    reset (its buffers are freed at once).

    Fast path: at each publication the hub calls :meth:`on_frame`, which writes the shared
    bytes to this client at once if it may; otherwise the handler's task sends the newest
    frame when it may. Heartbeats (``: ka``) go out whenever nothing was sent for
    ``heartbeat`` seconds, also while the client is rate-limited.
    """

    endpoint = "stream_book"
    stream = "book"
    POLL = 0.02  # s between checks while the client still holds unacknowledged bytes

    async def get(self) -> None:
        self.levels = self.levels_arg()
        raw = self.get_query_argument("max_hz", None)
        max_hz = float(self.server.session.settings.fps)
        lo = self.server.min_hz
        if raw:
            try:
                max_hz = float(raw)
            except ValueError:
                raise ApiError(400, f"query parameter max_hz={raw!r} is not a number") from None
            if not lo <= max_hz <= 1000:
                raise ApiError(400, f"query parameter max_hz={max_hz:g} is outside "
                               f"[{lo:g}, 1000]")
        # Rate limit: consecutive frames at least 0.8/max_hz apart. The 20% allowance
        # absorbs publication jitter, so a replay publishing at max_hz isn't delayed, and
        # the rate never exceeds 1.25 x max_hz. (A long-memory limiter such as GCRA would
        # anchor its schedule on some delayed publication and then hold back every
        # later frame by that delay when the publication rate equals max_hz.)
        self.spacing = 0.8 / max_hz
        self.next_ok = 0.0  # earliest time of the next frame
        self.sent_version = -1
        self.last_send = time.perf_counter()
        self.inflight: asyncio.Future | None = None
        self.inflight_t0 = 0.0
        self.acked = (-1, time.monotonic())  # (bytes acknowledged, since when)
        self._timer: asyncio.TimerHandle | None = None
        # Our SSE responses are chunked exactly when the request is HTTP/1.1 (status 200,
        # no Content-Length): then the shared bytes are pre-framed as one chunk.
        self.chunked = self.request.version == "HTTP/1.1"
        hub = self.server.hub
        if not self.start_stream():
            return
        self._sock = self.sock()
        if self._sock is not None:
            set_sndbuf(self._sock, self.server.book_sndbuf)
        hb = self.server.heartbeat
        hub.add(self.on_frame)
        try:
            while not self.closing:
                if self.inflight is not None:
                    if not await self._await_inflight():
                        break
                    continue
                now = time.perf_counter()
                if self.expired():
                    data = self.end_cleanly()
                    self._write_direct(http_chunk(data) if self.chunked else data)
                    break
                if hub.version == self.sent_version or now < self.next_ok:
                    # nothing new, or rate-limited: sleep until the next frame may go,
                    # new data, or the next heartbeat is due
                    due = self.last_send + hb - now
                    if hub.version == self.sent_version:
                        await self.wait(max(0.0, due))
                    else:
                        await self.sleep(max(0.0, min(self.next_ok - now, due)))
                    self._heartbeat()
                    continue
                if not self.can_send():
                    if self._stalled():
                        self.close("slow", reset=True)
                        break
                    await self.sleep(self.POLL)
                    continue
                self._push(now)
                self.server.tally.flush()
        except Exception:
            log.exception("book stream failed")
            self.close_reason = self.close_reason or "error"
        finally:
            hub.remove(self.on_frame)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.finish_stream()

    def _heartbeat(self) -> None:
        if self.closing or self.inflight is not None:
            return
        if time.perf_counter() - self.last_send >= self.server.heartbeat:
            if not self.can_send():
                return  # unacknowledged data: _stalled() watches this client
            ka = b": ka\n\n"
            self._write_direct(http_chunk(ka) if self.chunked else ka)
            self.server.tally.flush()

    def can_send(self) -> bool:
        """Nothing waits in the IOStream, the kernel sent everything (the client's receive
        window is open) and at most ``book_unsent`` bytes await its acknowledgement: a
        frame written now is the next thing it reads. (Bytes that only wait for a delayed
        ACK don't hold frames back.)"""
        sock = self._sock
        if sock is None:
            return True
        stream = self.request.connection.stream
        return not stream.writing() and not_sent(sock) == 0 and \
            unsent_bytes(sock) <= self.server.book_unsent

    def _stalled(self) -> bool:
        """True when the client acknowledged nothing for ``send_timeout`` seconds while
        bytes wait for it."""
        a = bytes_acked(self._sock) if self._sock is not None else -1
        now = time.monotonic()
        if a != self.acked[0]:
            self.acked = (a, now)
            return False
        return now - self.acked[1] >= self.server.send_timeout

    def on_frame(self) -> None:
        """A new frame was published (called synchronously by the hub)."""
        if self.closing:
            return
        now = time.perf_counter()
        if self.inflight is None and self.sent_version >= 0 and self.can_send():
            if now >= self.next_ok:
                self._push(now)
                return
            if self._timer is None:
                # rate-limited: a timer pushes it when allowed (no task wake-up, which
                # waits behind the heavy record streams on a busy loop)
                loop = asyncio.get_running_loop()
                self._timer = loop.call_at(loop.time() + (self.next_ok - now),
                                           self._timed_push)
                return
        self.notify()  # the task sends the newest frame when it may

    def _timed_push(self) -> None:
        self._timer = None
        if self.closing or self.inflight is not None or \
                self.server.hub.version == self.sent_version:
            return
        now = time.perf_counter()
        if now >= self.next_ok and self.can_send():
            self._push(now)
            self.server.tally.flush()
        else:
            self.notify()

    def _push(self, now: float) -> None:
        first = self.sent_version < 0
        version, data = self.server.hub.payload(self.levels, chunked=self.chunked and not first)
        # the snapshot sent at connect doesn't count
        self.next_ok = now if first else now + self.spacing
        self.sent_version = version
        self.acked = (self.acked[0], time.monotonic())  # new data: the stall clock starts
        if first:
            self._write(data)
        else:
            self._write_direct(data)

    def _write(self, data: bytes) -> None:
        """Through Tornado's response machinery (the first write: it sends the headers)."""
        self.write(data)
        self.sent_bytes += len(data)
        self.last_send = t0 = time.perf_counter()
        fut = self.flush()
        self.server.tally.add(self.stream, len(data))  # flushed after the fan-out
        if fut.done():
            if fut.exception() is not None:
                self.close("disconnected")
        elif self.socket_busy():  # the task awaits it with send_timeout
            self.inflight, self.inflight_t0 = fut, t0
            self.notify()

    def _write_direct(self, data: bytes) -> None:
        """Bytes already framed for the wire (one HTTP/1.1 chunk, shared by every client)
        straight to the socket when the connection's IOStream has nothing pending, else
        appended to the IOStream. Order is kept: the IOStream is empty when we bypass it,
        and the handler's own buffer always is (every write is flushed at once).

        Why: Tornado's RequestHandler.write + flush cost ~8x a bare send per client, and
        in a VM each gap between sends lets the reader sleep again, so every send pays a
        wake-up: a 100-client fan-out took ~10 ms instead of ~1.5 ms."""
        stream = self.request.connection.stream
        self.last_send = t0 = time.perf_counter()
        if stream.closed():
            self.close("disconnected")
            return
        self.server.tally.add(self.stream, len(data))
        self.sent_bytes += len(data)
        if not stream.writing() and isinstance(stream, IOStream) and \
                not isinstance(stream, SSLIOStream):  # plain TCP, nothing queued
            try:
                n = stream.socket.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close("disconnected")
                return
            if n == len(data):
                return
            data = data[n:]
        try:
            fut = stream.write(data)
        except StreamClosedError:
            self.close("disconnected")
            return
        if stream.writing():  # the socket didn't take it all: the task awaits it
            self.inflight, self.inflight_t0 = fut, t0
            self.notify()

    async def _await_inflight(self) -> bool:
        fut = self.inflight
        try:
            await asyncio.wait_for(fut, self.server.send_timeout)
        except TimeoutError:
            self.close("slow", reset=True)
            return False
        except StreamClosedError:
            self.close("disconnected")
            return False
        finally:
            self.inflight = None
        _send_wait(self.stream).observe(time.perf_counter() - self.inflight_t0)
        return not self.closing


def _log_request(handler: tornado.web.RequestHandler) -> None:
    endpoint = getattr(handler, "endpoint", "other")
    status = handler.get_status()
    dt = handler.request.request_time()
    metrics.M.http_seconds.labels(endpoint, handler.request.method or "?", str(status)
                                  ).observe(dt)
    if log.isEnabledFor(logging.DEBUG):  # path only: the query may hold a token
        log.debug("%d %s %s %.1f ms", status, handler.request.method, handler.request.path,
                  dt * 1000)


def make_app(server: Server) -> tornado.web.Application:
    kw = {"server": server}
    routes = [
        (r"/", PageHandler, kw),
        (r"/health", HealthHandler, kw),
        (r"/ready", ReadyHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/openapi.json", OpenApiHandler, kw),
        (r"/v1/info", InfoHandler, kw),
        (r"/v1/book", BookHandler, kw),
        (r"/v1/player", PlayerHandler, kw),
        (r"/v1/auth", AuthHandler, kw),
        (r"/v1/stream/mbo", RecordStreamHandler, kw),
        (r"/v1/stream/book", BookStreamHandler, kw),
    ]
    return tornado.web.Application(
        routes, default_handler_class=NotFoundHandler, default_handler_args=kw,
        log_function=_log_request, compress_response=False, debug=False, autoreload=False,
        xsrf_cookies=False)
