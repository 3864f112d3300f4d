"""HTTP/SSE server over a replay session: outside programs subscribe to the live book.

Start it from a notebook cell (it runs on Jupyter's event loop; the cell returns at once)::

    srv = session.serve()        # or mbo_lab.serve.start(session); 127.0.0.1, free port
    srv.url, srv.page_url        # page_url carries the token in '#token=' (never sent)
    await srv.stop()             # or just srv.stop(); re-running serve() also replaces it

From a shell: ``mbo-lab serve [FILE] [--host H] [--port P] [--token T] [--speed S]``.

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
``POST /v1/auth`` (sets the token cookie for EventSource), ``GET /`` (the live page).

Each event is serialized once and the same bytes go to every subscriber.

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
``/user/<name>/proxy/8765/v1/stream/book``. The proxy streams a response only when the
request's ``Accept`` header is exactly ``text/event-stream`` (EventSource sends that;
curl needs ``-H 'Accept: text/event-stream'``), and cuts streams after 7200 s: clients
reconnect with ``Last-Event-ID``. External clients also need the Jupyter token.
"""

from __future__ import annotations

from .server import Server, is_loopback, run, running, start, stop_all

__all__ = ["Server", "start", "stop_all", "running", "run", "is_loopback"]
