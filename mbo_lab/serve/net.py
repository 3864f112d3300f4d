"""Connection guard under the HTTP layer: accept loop, connection cap, timeouts, socket state.

Tornado's own accept loop logs a traceback per failed ``accept()`` and spins when the
process runs out of file descriptors, holds a connection that never sends a request for
``idle_connection_timeout`` and has no connection cap. :class:`GuardedHTTPServer` replaces
the accept loop:

* at most ``max_connections`` connections (default: below the soft ``RLIMIT_NOFILE`` with
  room left for the kernel's other files); beyond it a new connection gets a short
  ``503`` and is closed at once, before any parsing;
* a connection must deliver its first request's headers within ``header_timeout`` s;
  between requests (keep-alive) it may idle ``idle_timeout`` s;
* ``accept()`` errors (EMFILE, ENFILE, ENOBUFS, ...) are logged once per ``log_every``
  seconds, accepting pauses for a moment (no busy loop) and serving goes on;
* headers larger than ``max_header_size`` get ``431`` instead of a silent close.

Socket helpers (Linux): :func:`unsent_bytes` (``SIOCOUTQ``: bytes the peer has not
acknowledged yet), :func:`bytes_acked` (``TCP_INFO``), :func:`abort` (RST, frees the
kernel's send buffer at once).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import resource
import socket
import struct
import termios
import time
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError

from .. import metrics

__all__ = ["Limits", "GuardedHTTPServer", "unsent_bytes", "not_sent", "bytes_acked", "abort",
           "default_max_connections", "set_sndbuf"]

log = logging.getLogger("mbo_lab.serve")

_TCP_INFO_LEN = 232  # up to tcpi_snd_wnd (Linux >= 5.4); shorter answers are fine


@dataclass
class Limits:
    """Connection limits of one server (seconds, counts, bytes)."""

    max_connections: int
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    backlog: int = 2048
    max_header_size: int = 65536
    log_every: float = 10.0
    accept_pause: float = 0.05


def default_max_connections() -> int:
    """Below the soft file-descriptor limit, leaving room (max(64, limit/8)) for files,
    the kernel's own sockets and Jupyter."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    room = max(64, soft // 8)
    return max(8, min(16384, soft - room))


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged (``SIOCOUTQ``); 0 if
    unknown."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]
    except (OSError, ValueError):
        return 0


def not_sent(sock: socket.socket) -> int:
    """Bytes in the kernel's send queue that were not even sent, because the peer's
    receive window (or the congestion window) is full (``tcpi_notsent_bytes``); 0 if
    unknown. Unlike :func:`unsent_bytes` this ignores data merely waiting for a
    (possibly delayed) acknowledgement."""
    try:
        b = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        return struct.unpack_from("I", b, 144)[0] if len(b) >= 148 else 0
    except (OSError, ValueError, AttributeError):
        return 0


def bytes_acked(sock: socket.socket) -> int:
    """Bytes the peer acknowledged since the connection opened (``TCP_INFO``); -1 if
    unknown."""
    try:
        b = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        return struct.unpack_from("Q", b, 120)[0] if len(b) >= 128 else -1
    except (OSError, ValueError, AttributeError):
        return -1


def set_sndbuf(sock: socket.socket, nbytes: int) -> None:
    """Cap the kernel send buffer (Linux doubles the value for bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(nbytes))
    except (OSError, ValueError):
        pass


def abort(sock: socket.socket | None) -> None:
    """Close with RST (``SO_LINGER`` 0): unsent data is discarded and the kernel frees
    the send buffer now instead of trying to deliver it to a client that doesn't read."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, ValueError):
        pass


class _Stream(IOStream):
    """IOStream that answers an oversized request head with 431 (best effort) and closes
    quietly instead of logging a traceback."""

    max_header_size = 65536

    def _handle_read(self) -> None:
        try:
            super()._handle_read()
        except UnsatisfiableReadError as exc:
            self.close(exc_info=exc)

    def close(self, exc_info: Any = False) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, UnsatisfiableReadError) and not self.closed():
            body = (b'{"error":{"status":431,"reason":"Request Header Fields Too Large",'
                    b'"message":"request headers over %d bytes"}}' % self.max_header_size)
            try:
                self.socket.send(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: "
                    b"application/json; charset=utf-8\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            metrics.M.http_refused.labels("header_too_large").inc()
            exc_info = False  # nothing to log: it's the client's fault
        super().close(exc_info=exc_info)


class _Conn:
    __slots__ = ("stream", "t0", "requests", "timer")

    def __init__(self, stream: IOStream):
        self.stream = stream
        self.t0 = time.monotonic()
        self.requests = 0
        self.timer: Any = None


class _Watch(tornado.httputil.HTTPMessageDelegate):
    """Counts requests whose headers arrived on a connection (for the header timeout)."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, conn: _Conn | None):
        self.inner = inner
        self.conn = conn

    def headers_received(self, start_line, headers):  # type: ignore[override]
        if self.conn is not None:
            self.conn.requests += 1
            if self.conn.timer is not None:
                IOLoop.current().remove_timeout(self.conn.timer)
                self.conn.timer = None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):  # type: ignore[override]
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; "
         b"charset=utf-8\r\nRetry-After: 2\r\nConnection: close\r\nContent-Length: %d\r\n\r\n")
_BUSY_BODY = (b'{"error":{"status":503,"reason":"Service Unavailable","message":'
              b'"too many open connections; retry later"}}')
_BUSY_MSG = _BUSY % len(_BUSY_BODY) + _BUSY_BODY


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with the guard described in the module docstring.

    Use :meth:`guard` once after construction, then :meth:`add_guarded_sockets`."""

    def guard(self, limits: Limits) -> None:
        self.limits = limits
        self.conns: dict[IOStream, _Conn] = {}
        self._accept_errors = 0
        self._last_accept_log = 0.0
        self.refused = 0

    # -------------------------------------------------------------------- accept loop
    def add_guarded_sockets(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._add_accept(sock)

    def _add_accept(self, sock: socket.socket):
        loop = IOLoop.current()
        state = {"removed": False, "paused": False}

        def resume() -> None:
            if not state["removed"] and state["paused"]:
                state["paused"] = False
                loop.add_handler(sock, on_ready, IOLoop.READ)

        def on_ready(fd: Any, events: int) -> None:
            for _ in range(128):  # bounded per wake-up: other callbacks run in between
                if state["removed"]:
                    return
                try:
                    conn, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    self._accept_failed(exc)
                    # Pause accepting: the fd stays readable, so retrying at once spins.
                    state["paused"] = True
                    loop.remove_handler(sock)
                    loop.call_later(self.limits.accept_pause, resume)
                    return
                self._on_accept(conn, address)

        def remove() -> None:
            state["removed"] = True
            if not state["paused"]:
                loop.remove_handler(sock)

        loop.add_handler(sock, on_ready, IOLoop.READ)
        return remove

    def _accept_failed(self, exc: OSError) -> None:
        self._accept_errors += 1
        metrics.M.http_refused.labels("accept_error").inc()
        now = time.monotonic()
        if now - self._last_accept_log >= self.limits.log_every:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log.error("accept() failed %d time(s) since the last report (%s: %s); open "
                      "connections: %d. Accepting pauses %.0f ms per failure; serving "
                      "goes on.", self._accept_errors, name, exc.strerror,
                      len(self.conns), self.limits.accept_pause * 1000)
            self._accept_errors = 0
            self._last_accept_log = now

    def _on_accept(self, conn: socket.socket, address: Any) -> None:
        if len(self.conns) >= self.limits.max_connections:
            self.refused += 1
            metrics.M.http_refused.labels("max_connections").inc()
            try:
                conn.setblocking(False)
                conn.send(_BUSY_MSG)
                conn.shutdown(socket.SHUT_WR)
                try:
                    conn.recv(65536)  # drain a request already sent (else close -> RST)
                except OSError:
                    pass
            except OSError:
                pass
            conn.close()
            return
        try:
            stream = _Stream(conn, max_buffer_size=self.max_buffer_size,
                             read_chunk_size=self.read_chunk_size)
        except Exception:
            conn.close()
            return
        stream.max_header_size = self.limits.max_header_size
        rec = _Conn(stream)
        self.conns[stream] = rec
        rec.timer = IOLoop.current().call_later(self.limits.header_timeout,
                                                self._header_timeout, rec)
        self.handle_stream(stream, address)

    def _header_timeout(self, rec: _Conn) -> None:
        rec.timer = None
        if rec.requests == 0 and not rec.stream.closed():
            metrics.M.http_refused.labels("header_timeout").inc()
            rec.stream.close()

    # -------------------------------------------------------------------- HTTP hooks
    def start_request(self, server_conn: object, request_conn: Any):
        inner = super().start_request(server_conn, request_conn)
        stream = getattr(server_conn, "stream", None)
        return _Watch(inner, self.conns.get(stream))  # type: ignore[arg-type]

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        rec = self.conns.pop(getattr(server_conn, "stream", None), None)  # type: ignore
        if rec is not None and rec.timer is not None:
            IOLoop.current().remove_timeout(rec.timer)
