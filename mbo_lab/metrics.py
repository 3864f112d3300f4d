"""The one prometheus-client registry of the process.

Every mbo_lab metric lives in :data:`REGISTRY`, a private ``CollectorRegistry`` (not the
client's global default one). Metrics are created once per process: re-running a notebook
cell, re-importing, even ``importlib.reload(mbo_lab.metrics)`` reuses them, so there's never a
``DuplicateTimeseries`` error. The SSE server exposes the registry at ``GET /metrics``.

Metrics (no per-client labels; every label has a small fixed set of values):

===================================== ========= =============================================
name                                  type      labels / meaning
===================================== ========= =============================================
``mbo_records_applied_total``         counter   records applied by served sessions' engines
``mbo_apply_seconds``                 histogram time of one engine ``apply`` call (µs buckets)
``mbo_frames_published_total``        counter   frames the served sessions published
``mbo_sse_connections``               gauge     ``stream`` (mbo, book): open SSE streams
``mbo_sse_events_sent_total``         counter   ``stream``: SSE events written
``mbo_sse_bytes_sent_total``          counter   ``stream``: bytes written on SSE streams
``mbo_sse_records_sent_total``        counter   MBO records written on the record stream
``mbo_sse_clients_dropped_total``     counter   ``stream``, ``reason`` (slow, disconnected,
                                                shutdown, error, max_age: stream ended at its
                                                maximum age/bytes with a ``retry:``)
``mbo_http_refused_total``            counter   ``reason`` (max_connections, header_timeout,
                                                accept_error, header_too_large, host, busy):
                                                connections/requests turned away
``mbo_sse_send_wait_seconds``         histogram ``stream``: how long an event the socket didn't
                                                take at once waited for it (backpressure)
``mbo_http_request_duration_seconds`` histogram ``endpoint``, ``method``, ``code``
``mbo_book_anomalies``                gauge     ``kind``: the engine's anomaly counters at the
                                                current replay position (go down on seek back)
``mbo_replay_position``               gauge     records applied by the served session
``mbo_replay_records``                gauge     records in the served session's data
``mbo_replay_playing``                gauge     1 while the replay clock runs
===================================== ========= =============================================

Quantiles come from the histograms in Prometheus, e.g.
``histogram_quantile(0.99, rate(mbo_sse_send_wait_seconds_bucket[1m]))``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

__all__ = [
    "REGISTRY", "M", "STREAMS", "DROP_REASONS", "track_session", "untrack_session",
    "observe_apply", "encode", "sample",
]

#: Values of the ``stream`` label.
STREAMS = ("mbo", "book")
#: Values of the ``reason`` label of ``mbo_sse_clients_dropped_total``.
DROP_REASONS = ("slow", "disconnected", "shutdown", "error", "max_age")
#: Values of the ``reason`` label of ``mbo_http_refused_total``.
REFUSE_REASONS = ("max_connections", "header_timeout", "accept_error", "header_too_large",
                  "host", "busy")

APPLY_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0)
SEND_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0)
HTTP_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
                0.5, 1.0, 2.5, 10.0)


class _SessionCollector:
    """Reads the served sessions' state at scrape time (anomaly counters, position)."""

    def __init__(self) -> None:
        self.sessions: weakref.WeakSet = weakref.WeakSet()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(list(self.sessions)))

    @staticmethod
    def _families(sessions: list | None = None) -> list[GaugeMetricFamily]:
        anomalies = GaugeMetricFamily(
            "mbo_book_anomalies",
            "Book anomaly counters of the served sessions' engines at the current replay "
            "position (unknown cancels/modifies, ...); they go down when the replay seeks back",
            labels=["kind"])
        position = GaugeMetricFamily("mbo_replay_position",
                                     "Records applied by the served sessions (replay position)")
        records = GaugeMetricFamily("mbo_replay_records", "Records in the served sessions' data")
        playing = GaugeMetricFamily("mbo_replay_playing", "Served sessions whose clock runs")
        fams = [anomalies, position, records, playing]
        if sessions is None:
            return fams
        totals: dict[str, int] = {}
        pos = n = play = 0
        for s in sessions:
            try:
                for k, v in s.engine.counters.items():
                    totals[k] = totals.get(k, 0) + int(v)
                pos += int(s.position)
                n += len(s.data)
                play += bool(s.playing)
            except Exception:  # a half-built session must not break the scrape
                continue
        for k in sorted(totals):
            anomalies.add_metric([k], totals[k])
        position.add_metric([], pos)
        records.add_metric([], n)
        playing.add_metric([], play)
        return fams


def _create() -> SimpleNamespace:
    reg = CollectorRegistry()
    m = SimpleNamespace(registry=reg)
    m.records_applied = Counter(
        "mbo_records_applied", "MBO records applied by the served sessions' book engines",
        registry=reg)
    m.apply_seconds = Histogram(
        "mbo_apply_seconds", "Duration of one book engine apply() call in seconds",
        buckets=APPLY_BUCKETS, registry=reg)
    m.frames_published = Counter(
        "mbo_frames_published", "Frames published by the served sessions", registry=reg)
    m.sse_connections = Gauge(
        "mbo_sse_connections", "Open SSE streams", ["stream"], registry=reg)
    m.sse_events = Counter(
        "mbo_sse_events_sent", "SSE events written", ["stream"], registry=reg)
    m.sse_bytes = Counter(
        "mbo_sse_bytes_sent", "Bytes written on SSE streams", ["stream"], registry=reg)
    m.sse_records = Counter(
        "mbo_sse_records_sent", "MBO records written on the record stream", registry=reg)
    m.sse_dropped = Counter(
        "mbo_sse_clients_dropped", "SSE streams ended by the server or by the client before "
        "their end, by reason", ["stream", "reason"], registry=reg)
    m.sse_send_wait_seconds = Histogram(
        "mbo_sse_send_wait_seconds", "How long an SSE event that the socket didn't take at "
        "once waited until it did (awaited flush)",
        ["stream"], buckets=SEND_BUCKETS, registry=reg)
    m.http_seconds = Histogram(
        "mbo_http_request_duration_seconds", "HTTP request duration by endpoint (streams: "
        "the stream's lifetime)", ["endpoint", "method", "code"], buckets=HTTP_BUCKETS,
        registry=reg)
    for s in STREAMS:  # export zeros from the start
        m.sse_connections.labels(s)
        m.sse_events.labels(s)
        m.sse_bytes.labels(s)
        m.sse_send_wait_seconds.labels(s)
        for r in DROP_REASONS:
            m.sse_dropped.labels(s, r)
    m.sessions = _SessionCollector()
    reg.register(m.sessions)
    _extend(m)
    return m


def _extend(m: SimpleNamespace) -> None:
    """Metrics added after the first release of this module (also run on an existing
    namespace after ``importlib.reload``)."""
    if not hasattr(m, "http_refused"):
        m.http_refused = Counter(
            "mbo_http_refused", "Connections or requests turned away by the server's guard, "
            "by reason", ["reason"], registry=m.registry)
        for r in REFUSE_REASONS:
            m.http_refused.labels(r)
    for s in STREAMS:
        for r in DROP_REASONS:
            m.sse_dropped.labels(s, r)


# Created once per process; importlib.reload re-executes this module in the same globals,
# so the existing namespace is kept.
M: SimpleNamespace = globals().get("M") or _create()
_extend(M)
#: The process-wide registry served at ``/metrics``.
REGISTRY: CollectorRegistry = M.registry


def observe_apply(n_records: int, seconds: float) -> None:
    """Count ``n_records`` applied in ``seconds`` (one engine ``apply`` call)."""
    M.records_applied.inc(n_records)
    M.apply_seconds.observe(seconds)


def _timed_apply(engine: Any) -> Any:
    orig = engine.apply

    def apply(records, base_index=None):
        t0 = time.perf_counter()
        try:
            return orig(records, base_index)
        finally:
            observe_apply(len(records), time.perf_counter() - t0)

    apply._mbo_lab_timed = True  # type: ignore[attr-defined]
    return apply


def track_session(session: Any) -> None:
    """Report ``session`` in the session gauges and time its engine's ``apply`` calls.

    The timing wraps the engine *instance's* ``apply`` (the class is untouched) until
    :func:`untrack_session`. Idempotent.
    """
    M.sessions.sessions.add(session)
    eng = getattr(session, "engine", None)
    if eng is not None and not getattr(eng.__dict__.get("apply"), "_mbo_lab_timed", False):
        eng.apply = _timed_apply(eng)


def untrack_session(session: Any) -> None:
    """Undo :func:`track_session`. Idempotent."""
    M.sessions.sessions.discard(session)
    eng = getattr(session, "engine", None)
    if eng is not None and getattr(eng.__dict__.get("apply"), "_mbo_lab_timed", False):
        del eng.apply


def encode(accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the ``Accept`` header asks for: (body, content type)."""
    encoder, ctype = choose_encoder(accept or "")
    return encoder(REGISTRY), ctype


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    """Current value of one sample (e.g. ``sample("mbo_sse_records_sent_total")``)."""
    return REGISTRY.get_sample_value(name, labels or {})
