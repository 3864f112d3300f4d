"""What the streams send: serialized once, shared by every subscriber.

:class:`RecordFeed` turns the session's record array into ``mbo`` events of ``batch``
records each (aligned to multiples of ``batch``, cached as bytes in a bounded LRU), so 100
clients reading the same part of the file cost one serialization.

:class:`BookHub` holds the latest frame the session published (latest wins) and its
serialization per ``levels`` value, computed on first demand and shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import metrics
from ..io.records import byte_char, px_to_float
from ..replay.session import Frame, Session, record_effect

__all__ = ["RecordFeed", "BookHub", "RECORD_FIELDS", "sse_event", "http_chunk", "dumps"]

#: Column order of the rows in an ``mbo`` event.
RECORD_FIELDS = ("index", "ts_recv", "ts_event", "instrument_id", "publisher_id", "action",
                 "side", "price", "size", "order_id", "flags", "channel_id", "sequence",
                 "effect")
_FIELDS_JSON = json.dumps(RECORD_FIELDS, separators=(",", ":"))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON; NaN/inf become null (browsers' JSON.parse rejects NaN)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False)


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse_event(event: str, data: str, id: int | str | None = None) -> bytes:
    """One SSE event. ``data`` must be a single line (compact JSON). ``id:`` comes last so a
    client that sees it has already received the whole event."""
    out = f"event: {event}\ndata: {data}\n"
    if id is not None:
        out += f"id: {id}\n"
    return (out + "\n").encode()


class RecordFeed:
    """Serialized ``mbo`` events over ``session.data.records``.

    Event ``k`` (aligned) holds records ``[k*batch, (k+1)*batch)``; a stream that starts or
    stops mid-batch gets one unaligned event at that edge (serialized for it alone).
    """

    def __init__(self, session: Session, batch: int = 1000, cache_bytes: int = 64 << 20):
        self.records = session.data.records
        self.n = len(self.records)
        self.batch = int(batch)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self.serialized = 0  # events serialized (for tests and tuning)
        self._pending: dict[int, asyncio.Future] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def serialize(self, lo: int, hi: int) -> bytes:
        r = self.records[lo:hi]
        px = px_to_float(r["price"]).tolist()
        action_b, side_b = r["action"].tolist(), r["side"].tolist()
        price_i, size, oid = r["price"].tolist(), r["size"].tolist(), r["order_id"].tolist()
        # record_effect only indexes its argument by field name: plain dicts are ~5x
        # faster to index than numpy records, and the wording stays the session's.
        effects = [record_effect({"action": a, "side": sd, "price": p, "size": z,
                                  "order_id": o})
                   for a, sd, p, z, o in zip(action_b, side_b, price_i, size, oid)]
        cols = [
            range(lo, hi), r["ts_recv"].tolist(), r["ts_event"].tolist(),
            r["instrument_id"].tolist(), r["publisher_id"].tolist(),
            [byte_char(a) for a in action_b], [byte_char(sd) for sd in side_b],
            [None if p != p else p for p in px], size, oid,
            r["flags"].tolist(), r["channel_id"].tolist(), r["sequence"].tolist(), effects,
        ]
        # Encoded in pieces: one json.dumps call holds the GIL throughout, and this runs in
        # a worker thread next to the event loop (the loop gets the GIL between pieces).
        tuples = list(zip(*cols))
        rows = "[" + ",".join(json.dumps(tuples[i:i + 100], separators=(",", ":"))[1:-1]
                              for i in range(0, len(tuples), 100)) + "]"
        data = (f'{{"first":{lo},"last":{hi - 1},"count":{hi - lo},'
                f'"fields":{_FIELDS_JSON},"rows":{rows}}}')
        self.serialized += 1
        return sse_event("mbo", data, hi - 1)

    def event(self, pos: int, stop: int) -> tuple[bytes, int]:
        """The event starting at record ``pos`` (ending at a batch edge or ``stop``):
        (bytes, index of its last record)."""
        k, off = divmod(pos, self.batch)
        hi = min((k + 1) * self.batch, self.n)
        if off or hi > stop:
            hi = min(hi, stop)
            return self.serialize(pos, hi), hi - 1
        data = self._cache.get(k)
        if data is None:
            data = self.serialize(pos, hi)
            self._store(k, data)
        else:
            self._cache.move_to_end(k)
        return data, hi - 1

    def _store(self, k: int, data: bytes) -> None:
        if k in self._cache:
            return
        self._cache[k] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    # ------------------------------------------------------------------ off the loop
    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="mbo_lab-serialize")
        return self._executor

    def _load(self, k: int) -> asyncio.Future:
        """Future of aligned event ``k``'s bytes, serialized once in the worker thread
        however many streams ask for it meanwhile."""
        fut = self._pending.get(k)
        if fut is None:
            lo = k * self.batch
            hi = min(lo + self.batch, self.n)
            fut = asyncio.get_running_loop().run_in_executor(self._pool(), self.serialize,
                                                             lo, hi)
            self._pending[k] = fut

            def done(f: asyncio.Future, k: int = k) -> None:
                self._pending.pop(k, None)
                if not f.cancelled() and f.exception() is None:
                    self._store(k, f.result())

            fut.add_done_callback(done)
        return fut

    async def aevent(self, pos: int, stop: int, prefetch: int = 2) -> tuple[bytes, int]:
        """:meth:`event` for streams: serialization runs in a worker thread (the event
        loop keeps serving book frames meanwhile) and the next ``prefetch`` aligned events
        are prepared ahead."""
        k, off = divmod(pos, self.batch)
        hi = min((k + 1) * self.batch, self.n)
        if off or hi > stop:
            hi = min(hi, stop)
            data = await asyncio.get_running_loop().run_in_executor(
                self._pool(), self.serialize, pos, hi)
            return data, hi - 1
        data = self._cache.get(k)
        if data is None:
            data = await asyncio.shield(self._load(k))
        else:
            self._cache.move_to_end(k)
        last_k = (self.n - 1) // self.batch
        for j in range(k + 1, min(k + 1 + prefetch, last_k + 1)):
            if min((j + 1) * self.batch, self.n) > stop:
                break  # this stream won't read it (aligned events only)
            if j not in self._cache and j not in self._pending:
                self._load(j)
        return data, hi - 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class BookHub:
    """The latest published frame, shared by every book stream (latest wins, no backlog)."""

    def __init__(self, session: Session, after_fanout: Callable[[], None] | None = None):
        self.session = session
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._thread = threading.get_ident()
        self.after_fanout = after_fanout
        self.clients: set[Callable[[], None]] = set()
        self.frame: Frame = session.frame()
        self.published_at = time.time()
        self.version = 0
        self._payload: dict[tuple[int, bool], bytes] = {}
        self._unsubscribe = session.subscribe(self._on_frame)

    def _on_frame(self, frame: Frame) -> None:
        # Runs inside Session._publish. Sockets belong to the server's loop: a frame
        # published from another thread (e.g. a widget callback) is handed over to it.
        if threading.get_ident() != self._thread and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._on_frame, frame)
            return
        self.frame = frame
        self.published_at = time.time()
        self.version += 1
        self._payload.clear()
        metrics.M.frames_published.inc()
        for notify in list(self.clients):
            notify()
        if self.after_fanout is not None:
            self.after_fanout()

    def add(self, notify: Callable[[], None]) -> None:
        """Call ``notify()`` at every new frame (synchronously, inside the session's
        publication: it must be quick, e.g. write the shared bytes or wake a waiter)."""
        self.clients.add(notify)

    def remove(self, notify: Callable[[], None]) -> None:
        self.clients.discard(notify)

    def payload(self, levels: int, chunked: bool = False) -> tuple[int, bytes]:
        """(version, event bytes) of the latest frame with ``levels`` levels, serialized
        once per frame and levels value; ``chunked``: framed as one HTTP/1.1 chunk, ready
        for the socket."""
        data = self._payload.get((levels, chunked))
        if data is None:
            plain = self._payload.get((levels, False))
            if plain is None:
                d = self.frame.to_dict(levels)
                d["published_at"] = self.published_at
                plain = sse_event("book", dumps(d), self.frame.seq)
                self._payload[(levels, False)] = plain
            data = http_chunk(plain) if chunked else plain
            self._payload[(levels, chunked)] = data
        return self.version, data

    def close(self) -> None:
        self._unsubscribe()
        self.clients.clear()
