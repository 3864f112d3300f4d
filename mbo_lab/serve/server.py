"""Start and stop the Tornado server on the running event loop (Jupyter's, or your own)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.netutil

from .. import __version__, metrics
from ..config import get_settings
from ..errors import ConfigError, MboLabError
from ..replay.session import SPEED_MAX, Session
from .feeds import BookHub, RecordFeed
from .handlers import Pacer, Tally, make_app
from .net import GuardedHTTPServer, Limits, default_max_connections

__all__ = ["Server", "start", "stop_all", "running", "run", "is_loopback"]

log = logging.getLogger("mbo_lab.serve")

# Running servers of this process, by id(session) and by (host, port). Module-level, so a
# re-run notebook cell finds the server its previous run started.
_BY_SESSION: dict[int, Server] = {}
_BY_ADDR: dict[tuple[str, int], Server] = {}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, 'localhost' and names under '.localhost'."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_token_file(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        log.warning("the token file %s is readable by other users (chmod 600 it)", path)
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


class Server:
    """A running server: ``url``, ``port``, ``token``, ``stop()``.

    Don't construct it yourself; :func:`start` (or ``session.serve()``) returns it.
    """

    def __init__(self, session: Session, host: str, token: str, *, require_token: bool,
                 cors_origin: str | None, heartbeat: float, send_timeout: float,
                 retry_ms: int, record_batch: int, cache_bytes: int, max_streams: int,
                 overflow_grace: float | None = None, token_source: str = "argument",
                 limits: Limits | None = None, allowed_hosts: tuple[str, ...] = (),
                 max_stream_age: float = 900.0, max_stream_bytes: int = 256 << 20,
                 proxy_stream_age: float = 120.0, proxy_stream_bytes: int = 32 << 20,
                 book_unsent: int = 8192, book_sndbuf: int = 16384,
                 record_sndbuf: int = 256 << 10, min_hz: float = 0.1):
        self.session = session
        self.host = host
        self.port = 0
        self.token = token
        self.require_token = require_token
        self.cors_origin = cors_origin
        self.heartbeat = float(heartbeat)
        self.send_timeout = float(send_timeout)
        self.overflow_grace = float(send_timeout if overflow_grace is None else overflow_grace)
        self.retry_ms = int(retry_ms)
        self.max_streams = int(max_streams)
        self.token_source = token_source
        self.limits = limits or Limits(max_connections=default_max_connections())
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        self.max_stream_age = float(max_stream_age)
        self.max_stream_bytes = int(max_stream_bytes)
        self.proxy_stream_age = float(proxy_stream_age)
        self.proxy_stream_bytes = int(proxy_stream_bytes)
        self.book_unsent = int(book_unsent)
        self.book_sndbuf = int(book_sndbuf)
        self.record_sndbuf = int(record_sndbuf)
        self.min_hz = float(min_hz)
        self.pacer = Pacer()
        self.feed = RecordFeed(session, record_batch, cache_bytes)
        self.hub: BookHub | None = None
        self.streams: set = set()
        self.tally = Tally()
        self.stopping = False
        self._http: GuardedHTTPServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._closed: asyncio.Future | None = None
        self._on_stop: list[Callable[[], Any]] = []
        self._summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """Base URL (ends with '/'); no credentials in it."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::", ""):
            h = socket.gethostname()
        return f"http://{h}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The live page. On a loopback bind with a token that was generated or passed as
        an argument, the token rides in the URL fragment (``#token=``; browsers never send
        fragments to servers, so it stays out of every log). A token from
        ``MBO_LAB_TOKEN`` / a token file, or any token on a non-loopback bind, is never
        part of it: the page asks for it."""
        if self.token_source in ("generated", "argument") and is_loopback(self.host):
            return f"{self.url}#token={self.token}"
        return self.url

    @property
    def proxy_url(self) -> str | None:
        """On JupyterHub/Binder: ``{JUPYTERHUB_SERVICE_PREFIX}proxy/<port>/`` (a path on the
        hub's host, through jupyter-server-proxy); None elsewhere. Stream clients must send
        ``Accept: text/event-stream`` exactly, or the proxy buffers the stream."""
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if not prefix:
            return None
        return f"{prefix.rstrip('/')}/proxy/{self.port}/"

    def connections(self) -> int:
        """Open TCP connections (all endpoints)."""
        return len(self._http.conns) if self._http is not None else 0

    @property
    def running(self) -> bool:
        return self._http is not None and not self.stopping

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        s = self.session
        return {
            "position": s.position, "record_index": s.record_index, "time": str(s.time),
            "playing": s.playing, "speed": None if s.clock.speed == SPEED_MAX else
            s.clock.speed, "progress": s.position / len(s.data),
        }

    def info(self) -> dict[str, Any]:
        s = self.session
        d = s.data
        if self._summary is None:
            sm = d.summary()
            self._summary = {"start": str(sm["start"]), "end": str(sm["end"]),
                             "dataset": sm.get("dataset")}
        counts: dict[str, int] = {"mbo": 0, "book": 0}
        for h in self.streams:
            counts[h.stream] = counts.get(h.stream, 0) + 1
        return {
            "version": __version__,
            "records": len(d), **self._summary,
            "symbols": d.symbols, "books": s.books,
            "book": {"instrument_id": s.instrument_id, "publisher_id": s.publisher_id,
                     "symbol": d.symbols.get(s.instrument_id, "")},
            "levels": s.levels, "fps": s.settings.fps, "replay": self.state(),
            "record_stream": {
                "batch": self.feed.batch,
                "semantics": "every record of the session's data in file order from ?from= "
                             "(or after Last-Event-ID) at the client's pace, independent of "
                             "the replay position; id = index of the event's last record",
            },
            "streams": counts, "auth": {"token_required_for_reads": self.require_token},
        }

    # ------------------------------------------------------------------ lifecycle
    def _listen(self, port: int) -> None:
        lim = self.limits
        socks = tornado.netutil.bind_sockets(port, self.host, backlog=lim.backlog)
        self.port = socks[0].getsockname()[1]
        self.hub = BookHub(self.session, after_fanout=self.tally.flush)
        http = GuardedHTTPServer(
            make_app(self), idle_connection_timeout=lim.idle_timeout,
            max_body_size=1 << 16, body_timeout=lim.header_timeout,
            max_header_size=lim.max_header_size, xheaders=False)
        http.guard(lim)
        http.add_guarded_sockets(socks)
        self._http = http
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        metrics.track_session(self.session)

    def stop(self) -> Any:
        """Stop now: free the port, close every stream; idempotent.

        Returns an awaitable (``await server.stop()`` waits until every connection is
        closed); ignoring it is fine. From another thread it returns a
        ``concurrent.futures.Future``.
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread and loop.is_running():
            return asyncio.run_coroutine_threadsafe(self._astop(), loop)
        return _Stopping(self._stop_now())

    async def _astop(self) -> None:
        await _Stopping(self._stop_now())

    def _stop_now(self) -> asyncio.Future | None:
        if self.stopping:
            return self._closed
        self.stopping = True
        if _BY_SESSION.get(id(self.session)) is self:
            del _BY_SESSION[id(self.session)]
        if _BY_ADDR.get((self.host, self.port)) is self:
            del _BY_ADDR[(self.host, self.port)]
        metrics.untrack_session(self.session)
        for cb in self._on_stop:
            cb()
        if self.hub is not None:
            self.hub.close()
        self.feed.close()
        http, self._http = self._http, None
        if http is None:
            return None
        try:
            http.stop()  # closes the listening sockets: the port is free at once
        except Exception:  # e.g. its loop is already closed: close the sockets anyway
            log.debug("stopping the listener failed", exc_info=True)
            for sock in list(getattr(http, "_sockets", {}).values()):
                sock.close()
        for h in list(self.streams):
            try:
                h.close("shutdown")
            except Exception:  # its loop may be closed already
                self.streams.discard(h)
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        self._closed = loop.create_task(_close_all(http))
        return self._closed

    def __repr__(self) -> str:
        state = "stopped" if self.stopping else f"{len(self.streams)} streams"
        extra = f", proxy_url={self.proxy_url!r}" if self.proxy_url else ""
        return f"<mbo_lab server url={self.url!r}{extra} ({state})>"

    def _repr_html_(self) -> str:
        import html

        if self.stopping:
            return f"<b>mbo_lab server</b> {html.escape(self.url)} (stopped)"
        # The token only gates player controls on loopback; elsewhere keep it out of
        # saved outputs.
        link = self.page_url if is_loopback(self.host) else self.url
        out = (f"<b>mbo_lab server</b> <a href='{html.escape(link)}' target='_blank'>"
               f"{html.escape(self.url)}</a> &mdash; streams: <code>v1/stream/mbo</code>, "
               f"<code>v1/stream/book</code>; API: <code>openapi.json</code>")
        if self.proxy_url:
            # Behind the proxy the Host is Jupyter's: the page needs the token (the
            # fragment never reaches a server) to pass the DNS-rebinding guard.
            plink = self.proxy_url + self.page_url[len(self.url):]
            out += (f"<br>via Jupyter: <a href='{html.escape(plink)}' "
                    f"target='_blank'>{html.escape(self.proxy_url)}</a>")
        return out


async def _close_all(http: tornado.httpserver.HTTPServer) -> None:
    try:
        await asyncio.wait_for(http.close_all_connections(), 5)
    except Exception:
        log.debug("closing connections failed", exc_info=True)


class _Stopping:
    """What :meth:`Server.stop` returns: awaitable, harmless to ignore."""

    def __init__(self, fut: asyncio.Future | None):
        self._fut = fut

    def __await__(self):
        if self._fut is not None:
            yield from asyncio.shield(self._fut).__await__()

    def done(self) -> bool:
        return self._fut is None or self._fut.done()

    def __repr__(self) -> str:
        return "<mbo_lab server stopped>"


def start(session: Session, host: str | None = None, port: int | None = None,
          token: str | None = None, *, require_token: bool | None = None,
          cors_origin: str | None = None, heartbeat: float = 15.0,
          send_timeout: float = 10.0, overflow_grace: float | None = None,
          retry_ms: int = 2000, record_batch: int = 1000, cache_bytes: int = 64 << 20,
          max_streams: int = 1024, token_file: str | None = None,
          allowed_hosts: str | list[str] | tuple[str, ...] | None = None,
          max_connections: int | None = None, header_timeout: float = 10.0,
          idle_timeout: float = 75.0, backlog: int = 2048,
          max_stream_age: float = 900.0, max_stream_bytes: int = 256 << 20,
          proxy_stream_age: float = 120.0, proxy_stream_bytes: int = 32 << 20,
          book_unsent: int = 8192, min_hz: float = 0.1) -> Server:
    """Serve ``session`` over HTTP/SSE on the running event loop; returns a :class:`Server`.

    Call it from a notebook cell (Jupyter's loop runs it; the cell returns at once) or
    from a coroutine. Re-running it for the same session stops the previous server and
    reuses its port (so the URL stays the same); a server of this process on the requested
    port is stopped too.

    Parameters
    ----------
    host, port, token
        ``MBO_LAB_HOST`` / ``MBO_LAB_PORT`` / ``MBO_LAB_TOKEN`` or 127.0.0.1, 0 (a free
        port) and a generated ``secrets.token_urlsafe`` token.
    require_token
        Token needed on every endpoint but ``/health`` and the static page; default: only
        when ``host`` is not loopback. ``POST`` endpoints always need it.
    cors_origin
        ``Access-Control-Allow-Origin``: ``"*"`` or comma-separated origins; none by
        default.
    heartbeat, send_timeout, retry_ms
        Seconds between ``: ka`` comments on idle streams; seconds a client may take to
        accept one event before it's dropped; the ``retry:`` hint.
    overflow_grace
        Seconds a record-stream client that timed out gets to read the ``overflow`` event
        before the socket is closed (default: ``send_timeout``).
    record_batch, cache_bytes
        Records per ``mbo`` event; bytes of serialized events kept for all clients.
    max_streams
        Open streams beyond this get ``event: busy`` with a ``retry:`` (EventSource
        reconnects later) when they accept ``text/event-stream``, else 503.
    token_file
        Read the token from this file (or ``MBO_LAB_TOKEN_FILE``) instead of passing it on
        a command line (visible in ``ps``). Tokens from a file or ``MBO_LAB_TOKEN`` are
        never printed nor put in :attr:`Server.page_url`.
    allowed_hosts
        Host names (``Host`` header, without port) accepted besides loopback names and the
        bound address (DNS-rebinding guard); comma-separated or a list;
        ``MBO_LAB_ALLOWED_HOSTS``. Other hosts get 421 unless the request carries the
        token.
    max_connections, header_timeout, idle_timeout, backlog
        TCP connections held at most (default below the file-descriptor limit; more are
        answered 503 and closed at once); seconds to deliver the first request's headers;
        seconds a keep-alive connection may idle; listen backlog.
    max_stream_age, max_stream_bytes, proxy_stream_age, proxy_stream_bytes
        A stream ends cleanly (``retry:`` then close; EventSource reconnects, the record
        stream resumes exactly with Last-Event-ID) after this many seconds or bytes; the
        ``proxy_`` values apply behind jupyter-server-proxy (``X-Forwarded-Prefix``),
        which never notices a client that went away and buffers for a stalled one.
    book_unsent
        A book stream holds frames back (only the newest goes out when the client catches
        up) while the kernel could not send everything written (the client's receive
        window is full) or more than this many bytes await the client's acknowledgement
        (a slow path).
    min_hz
        Lowest ``max_hz`` a book stream accepts.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise MboLabError(
            "start the server from a running event loop: a notebook cell, or a coroutine "
            "(await-able code); from a script use mbo_lab.serve.run(session) or "
            "`mbo-lab serve FILE`") from None
    settings = get_settings(host=host, port=port, token=token)
    token_source = "argument"
    if token is None and token_file:
        token, token_source = _read_token_file(token_file), "file"
    elif token is None and settings.token:
        token, token_source = settings.token, "env"
    elif token is None and os.environ.get("MBO_LAB_TOKEN_FILE"):
        token, token_source = _read_token_file(os.environ["MBO_LAB_TOKEN_FILE"]), "file"
    host, port = settings.host, int(settings.port)
    loopback = is_loopback(host)
    if token is None:
        if not loopback:
            raise ConfigError(
                f"serving on {host} (not loopback) needs a token you choose: set "
                "MBO_LAB_TOKEN or MBO_LAB_TOKEN_FILE (a file holding it), or pass "
                "token_file=; a generated token would have to be printed")
        token, token_source = secrets.token_urlsafe(24), "generated"
    elif len(token) < 8:
        raise ConfigError("the token must be at least 8 characters long")
    if allowed_hosts is None:
        allowed_hosts = os.environ.get("MBO_LAB_ALLOWED_HOSTS", "")
    if isinstance(allowed_hosts, str):
        allowed_hosts = allowed_hosts.split(",")
    hosts = tuple(allowed_hosts)
    if host not in ("0.0.0.0", "::", ""):
        hosts += (host,)
    fd_cap = default_max_connections()
    if max_connections is None:
        max_connections = fd_cap
    elif max_connections > fd_cap:
        log.warning("max_connections=%d is above what the file-descriptor limit allows "
                    "with room left; using %d", max_connections, fd_cap)
        max_connections = fd_cap
    if header_timeout <= 0 or idle_timeout <= 0 or max_connections < 1 or backlog < 1:
        raise ConfigError("header_timeout and idle_timeout must be > 0; max_connections "
                          "and backlog >= 1")
    if max_stream_age <= 0 or max_stream_bytes <= 0 or min_hz <= 0:
        raise ConfigError("max_stream_age, max_stream_bytes and min_hz must be > 0")
    limits = Limits(max_connections=int(max_connections), header_timeout=header_timeout,
                    idle_timeout=idle_timeout, backlog=int(backlog))
    if require_token is None:
        require_token = not loopback
    if heartbeat <= 0 or send_timeout <= 0 or record_batch < 1 or max_streams < 1:
        raise ConfigError("heartbeat and send_timeout must be > 0; record_batch and "
                          "max_streams >= 1")

    reuse = False
    old = _BY_SESSION.get(id(session))
    if old is not None:
        if port == 0 and old.host == host and old._loop is loop:
            port, reuse = old.port, True
        _stop_previous(old, loop)
    if port and (host, port) in _BY_ADDR:
        _stop_previous(_BY_ADDR[(host, port)], loop)

    srv = Server(session, host, token, require_token=require_token, cors_origin=cors_origin,
                 heartbeat=heartbeat, send_timeout=send_timeout, retry_ms=retry_ms,
                 record_batch=record_batch, cache_bytes=cache_bytes, max_streams=max_streams,
                 overflow_grace=overflow_grace, token_source=token_source, limits=limits,
                 allowed_hosts=hosts, max_stream_age=max_stream_age,
                 max_stream_bytes=max_stream_bytes, proxy_stream_age=proxy_stream_age,
                 proxy_stream_bytes=proxy_stream_bytes, book_unsent=book_unsent,
                 min_hz=min_hz)
    try:
        srv._listen(port)
    except OSError as exc:
        if reuse and exc.errno == errno.EADDRINUSE:
            srv._listen(0)  # another program took the old port meanwhile
        elif exc.errno == errno.EADDRINUSE:
            raise MboLabError(
                f"port {port} on {host} is in use by another program; pick another port "
                "or port=0 (a free one)") from None
        else:
            raise MboLabError(f"cannot listen on {host}:{port}: {exc}") from None
    _BY_SESSION[id(session)] = srv
    _BY_ADDR[(host, srv.port)] = srv
    log.info("serving on %s", srv.url)
    return srv


def _stop_previous(old: Server, loop: asyncio.AbstractEventLoop) -> None:
    """Stop a server this process started before (on this loop, or on another thread's)."""
    other = old._loop
    if other is not None and other is not loop and other.is_running() and \
            old._thread != threading.get_ident():
        try:
            old.stop().result(5)  # runs on its own loop's thread
        except Exception:
            log.warning("could not stop the previous server on %s", old.url, exc_info=True)
    else:
        old._stop_now()


def running() -> list[Server]:
    """The servers running in this process."""
    return list(_BY_SESSION.values())


def stop_all() -> None:
    """Stop every server of this process (without waiting)."""
    for srv in running():
        srv._stop_now()


def run(session: Session, host: str | None = None, port: int | None = None,
        token: str | None = None, *, speed: float | None = 1.0, play: bool = True,
        announce: Callable[[Server], None] | None = None, **kw: Any) -> int:
    """Serve ``session`` until SIGINT/SIGTERM (or until the server is stopped), running the
    event loop itself (scripts and ``mbo-lab serve``); plays the replay at ``speed`` unless
    ``play=False``. Returns 0."""
    stop_event: asyncio.Event

    async def main() -> None:
        nonlocal stop_event
        stop_event = asyncio.Event()
        srv = start(session, host, port, token, **kw)
        srv._on_stop.append(stop_event.set)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop_event.set)
            except (NotImplementedError, RuntimeError):  # not the main thread / Windows
                pass
        if announce is not None:
            announce(srv)
        if play:
            session.play(speed)
        try:
            await stop_event.wait()
        finally:
            session.pause()
            await srv.stop()

    asyncio.run(main())
    return 0

