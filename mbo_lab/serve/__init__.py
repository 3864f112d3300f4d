"""HTTP/SSE server over a replay session: outside programs subscribe to the live book.

Start it from a notebook cell (it runs on Jupyter's event loop; the cell returns at once)::

    srv = session.serve()        # or mbo_lab.serve.start(session); 127.0.0.1, free port
    srv.url, srv.page_url        # page_url carries the token in '#token=' (never sent)
    await srv.stop()             # or just srv.stop(); re-running serve() also replaces it

From a shell: ``mbo-lab serve [FILE] [--host H] [--port P] [--speed S]`` with the token in
``MBO_LAB_TOKEN`` or in a file named by ``MBO_LAB_TOKEN_FILE`` (``--token T`` still works
but shows in ``ps``).

Endpoints (described in ``GET /openapi.json``)
-----------------------------------------------
``GET /v1/stream/mbo?from=&to=``
    SSE. Every record of the session's data in file order, **at the client's pace,
    independent of the replay position** (the whole file, or ``[from, to)``), in
    ``event: mbo`` batches of ``record_batch`` records (aligned to multiples of it). Each
    event's ``id:`` is the index of its last record, so reconnecting with
    ``Last-Event-ID`` (or ``?lastEventId=``) resumes exactly: nothing lost or repeated.
    ``data`` is ``{"first", "last", "count", "fields", "rows"}``, one row per record with
    its fields and ``effect`` (what the record does to the book). Ends with ``event: end``;
    a reconnect after the end gets 204, which stops EventSource.
``GET /v1/stream/book?levels=10&max_hz=30``
    SSE. The frames the replay publishes, conflated: the current frame at once, then
    each new one, at least ``0.8 / max_hz`` seconds apart (the allowance absorbs
    publication jitter; the rate stays below ``1.25 x max_hz``). Frames published
    meanwhile are skipped: a slow client gets the newest frame, never a queue.
    ``published_at`` in each frame is the server's publication time. At publication the
    frame goes out to every idle client synchronously (the same bytes, no task wake-up).
``GET /v1/book?levels=``, ``GET /v1/info``, ``GET /health``, ``GET /ready``,
``GET /metrics`` (Prometheus, see :mod:`mbo_lab.metrics`), ``POST /v1/player``
(``{"action": "play"|"pause"|"seek"|"speed"|"step", ...}``, token required),
``POST /v1/auth`` (sets the token cookie for EventSource, ``Path=<prefix>/v1/``),
``GET /`` (the live page).

Each event is serialized once and the same bytes go to every subscriber.

Slow, stalled, idle and hostile clients
---------------------------------------
* Book stream: conflated before the socket. A frame goes out only when the kernel sent
  everything written before (the client's receive window is open) and at most
  ``book_unsent`` bytes (8 kB) await its acknowledgement; the kernel send buffer is
  small. Otherwise only the newest frame waits. A client that acknowledges nothing for
  ``send_timeout`` s while data waits is reset (buffers freed at once). The server cannot
  see bytes a client's kernel already accepted: a client that reads slowly from a large
  receive buffer sees that backlog (browsers read as fast as they can).
* Record stream: a client that takes nothing for ``send_timeout`` s gets ``event:
  overflow`` and the connection is closed (reset if it doesn't take even that within
  ``overflow_grace``); it leaves the ``max_streams`` count at once. SSE responses never
  keep the connection alive. Record events are serialized once, in a worker thread, two
  events ahead; record streams write in 2 ms slices per loop iteration (``Pacer``) so
  book frames and new connections are served in between.
* Connections: at most ``max_connections`` (below the fd limit, with room); more get a
  503 and are closed at once. The first request's headers must arrive within
  ``header_timeout`` s (10), keep-alive connections idle at most ``idle_timeout`` s (75);
  ``accept()`` errors are logged once per 10 s and accepting pauses 50 ms (no busy loop);
  listen backlog 2048; headers over 64 kB get 431.
* ``max_streams``: an EventSource client (``Accept: text/event-stream``) gets a 200 with
  a jittered ``retry:`` and ``event: busy`` and reconnects later; other clients get 503.
* Every stream ends cleanly after ``max_stream_age`` s / ``max_stream_bytes`` (900 s,
  256 MB; behind jupyter-server-proxy 120 s, 32 MB) with ``retry: 250`` and
  ``event: reconnect``: EventSource reconnects, the record stream resumes exactly with
  Last-Event-ID.
* Host check (DNS rebinding): loopback names, the bound address and ``allowed_hosts``
  (``MBO_LAB_ALLOWED_HOSTS``) pass; other Host values get 421 unless the request carries
  the token. The page and ``/health`` answer any Host.

Backpressure
------------
Nothing is queued per client beyond one event. A record stream writes an event, and if
the socket doesn't take it at once awaits ``flush()`` with ``send_timeout`` (it pulls the
next event from the shared cache only then). A book stream holds "the newest frame" only
(a queue of one, latest wins); at publication the shared bytes go to every idle client
at once, and a write the socket doesn't take is awaited with ``send_timeout``. A client
that takes no data for ``send_timeout`` seconds is dropped (``mbo_sse_clients_dropped_total``
reason ``slow``); on the record stream it first gets ``event: overflow`` with ``last_id``,
the last id written before it (``overflow_grace`` seconds to read it), and resumes from
the id it last received. Disconnects are seen at once (the socket is watched), so the
``mbo_sse_connections`` gauge stays exact.

Auth
----
Loopback by default. A token (``token=`` / ``MBO_LAB_TOKEN``, else generated with
``secrets.token_urlsafe``) is always required by ``POST`` endpoints, as
``Authorization: Bearer <token>``. Binding a non-loopback address requires it on every
endpoint except ``/health`` and the static page (which holds no data). GET requests may
send it as the ``mbo_lab_token_<port>`` cookie (HttpOnly, SameSite=Strict, set by
``POST /v1/auth``; the page uses it for EventSource, which can't send headers) or as
``?token=``. Trade-off: the server never logs query strings, but a proxy in front of it
(or browser history) may keep URLs, so prefer the header or the cookie; cookies are never
accepted on POST (no cross-site request forgery). ``page_url`` passes the token to the page
in the URL fragment (``#token=``), which browsers never send to servers.

Binder / JupyterHub
-------------------
The server is reachable through jupyter-server-proxy at
``{JUPYTERHUB_SERVICE_PREFIX}proxy/<port>/`` (``Server.proxy_url``), e.g.
``/user/<name>/proxy/8765/v1/stream/book``; on a plain Jupyter server (no hub) at
``http://localhost:8888/proxy/<port>/``. The proxy streams a response only when the
request's ``Accept`` header is exactly ``text/event-stream`` (EventSource sends that;
curl needs ``-H 'Accept: text/event-stream'``); anything else is buffered whole. Jupyter
checks its own token first (``?token=<jupyter token>`` or ``Authorization: token ...``;
the browser session's cookie for pages inside JupyterLab). The proxy forwards Jupyter's
Host header, so requests through it need this server's token (the page gets it from the
``#token=`` link the notebook shows; the cookie is scoped to ``<prefix>/v1/``). The proxy
never notices a client that went away and buffers without limit for a stalled one, so
streams behind it end after 120 s / 32 MB and EventSource reconnects; the proxy itself
cuts responses at 7200 s and 100 MB.
"""

from __future__ import annotations

from .server import Server, is_loopback, run, running, start, stop_all

__all__ = ["Server", "start", "stop_all", "running", "run", "is_loopback"]
