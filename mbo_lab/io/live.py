"""Databento Live MBO records into a growing, replay-able record array.

:class:`LiveRecorder` is a ``databento.Live`` record callback: every ``MBOMsg`` is appended
(56 bytes, Databento's layout, no per-record Python objects kept) to a NumPy array that
doubles when full. At any time :meth:`LiveRecorder.data` gives an
:class:`~mbo_lab.io.dbn.MboData` of everything received so far (a zero-copy, read-only
view), and :meth:`LiveRecorder.since` the records after a given index, so a book engine or
a replay session can follow the stream incrementally. ``SymbolMappingMsg`` fills the
instrument -> symbol map, ``ErrorMsg`` texts are kept in :attr:`LiveRecorder.errors`,
``SystemMsg`` texts (heartbeats aside) in :attr:`LiveRecorder.system`.

:func:`start_live` connects, subscribes and starts a :class:`LiveFeed` (client + recorder)::

    >>> feed = start_live("GLBX.MDP3", "CLZ5", snapshot=True)     # doctest: +SKIP
    >>> feed.recorder.wait_for(1000, timeout=30)                   # doctest: +SKIP
    >>> mbo_lab.bbo(feed.data()).tail()                            # doctest: +SKIP
    >>> feed.stop(); feed.save("clz5_live.dbn.zst")                # doctest: +SKIP

The API key comes only from ``DATABENTO_API_KEY`` and is never logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import databento_api_key
from .dbn import DbnMetadata, MboData, instrument_mappings, write_dbn
from .fetch import FetchError, MissingApiKeyError
from .records import MBO_DTYPE, RECORD_SIZE, RTYPE_MBO

__all__ = ["LiveRecorder", "LiveFeed", "start_live"]

log = logging.getLogger(__name__)


def _dbn():
    global _DBN
    if _DBN is None:
        import databento_dbn

        _DBN = databento_dbn
    return _DBN


_DBN = None


class LiveRecorder:
    """Collects live MBO records in a growing ``MBO_DTYPE`` array (thread-safe).

    Parameters
    ----------
    dataset : recorded in the metadata of :meth:`data`.
    capacity : initial room (records); doubles when full.
    max_records : optional cap; records past it are counted in :attr:`dropped`, not kept.

    Use as ``live.add_callback(recorder)`` (it is callable) or feed records to
    :meth:`on_record` yourself.
    """

    def __init__(self, dataset: str = "", capacity: int = 1 << 16,
                 max_records: int | None = None):
        self.dataset = dataset
        self._buf = np.zeros(max(int(capacity), 16), MBO_DTYPE)
        self._n = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.max_records = max_records
        self.dropped = 0
        self.other_records = 0
        self.symbols: dict[int, str] = {}
        self.errors: list[str] = []
        self.system: list[str] = []
        self.started_ns = time.time_ns()

    # ---- callback side (the client's event-loop thread)
    def __call__(self, record: Any) -> None:
        self.on_record(record)

    def on_record(self, record: Any) -> None:
        """Handle one record from ``databento.Live`` (MBOMsg, SymbolMappingMsg, ...)."""
        dbn = _dbn()
        if isinstance(record, dbn.MBOMsg):
            self.append_bytes(bytes(record)[:RECORD_SIZE])
        elif isinstance(record, dbn.SymbolMappingMsg):
            sym = getattr(record, "stype_in_symbol", "") or record.stype_out_symbol
            with self._lock:
                self.symbols[int(record.instrument_id)] = str(sym)
        elif isinstance(record, dbn.ErrorMsg):
            self.errors.append(str(record.err))
            log.error("live gateway error: %s", record.err)
        elif isinstance(record, dbn.SystemMsg):
            if not record.is_heartbeat():
                self.system.append(str(record.msg))
        else:
            self.other_records += 1

    def append_bytes(self, raw: bytes) -> None:
        """Append one or more raw 56-byte MBO records."""
        recs = np.frombuffer(raw, MBO_DTYPE)
        if len(recs) and (recs["rtype"] != RTYPE_MBO).any():
            self.other_records += int(np.count_nonzero(recs["rtype"] != RTYPE_MBO))
            recs = recs[recs["rtype"] == RTYPE_MBO]
        self.append(recs)

    def append(self, records: np.ndarray) -> None:
        """Append MBO records (``MBO_DTYPE``)."""
        k = len(records)
        if k == 0:
            return
        with self._cond:
            if self.max_records is not None and self._n + k > self.max_records:
                keep = max(0, self.max_records - self._n)
                self.dropped += k - keep
                records = records[:keep]
                k = keep
                if k == 0:
                    return
            need = self._n + k
            if need > len(self._buf):
                cap = len(self._buf)
                while cap < need:
                    cap *= 2
                new = np.zeros(cap, MBO_DTYPE)
                new[: self._n] = self._buf[: self._n]
                self._buf = new  # views handed out earlier keep the old buffer alive
            self._buf[self._n: need] = records
            self._n = need
            self._cond.notify_all()

    # ---- reader side
    def __len__(self) -> int:
        return self._n

    def _view(self, lo: int) -> tuple[np.ndarray, int]:
        with self._lock:
            n = self._n
            v = self._buf[lo:n]
        v = v.view()
        v.flags.writeable = False
        return v, n

    def metadata(self) -> DbnMetadata:
        """Metadata for the records so far (dataset, symbols as mappings)."""
        with self._lock:
            syms = dict(self.symbols)
            n = self._n
            t0 = int(self._buf["ts_recv"][0]) if n else self.started_ns
            t1 = int(self._buf["ts_recv"][n - 1]) if n else self.started_ns
        return DbnMetadata(dataset=self.dataset, schema="mbo", start=t0, end=t1 + 1,
                           stype_in="raw_symbol", stype_out="instrument_id",
                           symbols=sorted(set(syms.values())),
                           mappings=instrument_mappings(syms, t0, t1))

    def data(self) -> MboData:
        """Everything received so far as :class:`MboData` (read-only view, no copy)."""
        v, _ = self._view(0)
        return MboData(v, self.metadata(), 0)

    def since(self, index: int) -> MboData:
        """Records from ``index`` (inclusive) to now; ``first_index == index``."""
        v, _ = self._view(int(index))
        return MboData(v, self.metadata(), int(index))

    def wait_for(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least ``n`` records arrived (True) or ``timeout`` s passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._n >= n, timeout)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the records so far as a DBN file (``.zst`` suffix: compressed)."""
        d = self.data()
        return write_dbn(path, np.ascontiguousarray(d.records),
                         dataset=self.dataset or "LIVE", symbols=dict(self.symbols))


class LiveFeed:
    """A running ``databento.Live`` client with its :class:`LiveRecorder`."""

    def __init__(self, client: Any, recorder: LiveRecorder):
        self.client = client
        self.recorder = recorder

    def data(self) -> MboData:
        """Records so far (see :meth:`LiveRecorder.data`)."""
        return self.recorder.data()

    def since(self, index: int) -> MboData:
        return self.recorder.since(index)

    def save(self, path: str | os.PathLike) -> Path:
        return self.recorder.save(path)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the session and wait (at most ``timeout`` s) until it is closed."""
        try:
            self.client.stop()
        except ValueError:
            pass
        self.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the gateway closes the session (or ``timeout``: then terminate)."""
        self.client.block_for_close(timeout=timeout)

    def __enter__(self) -> LiveFeed:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_live(dataset: str, symbols: str | Iterable[str | int], *, schema: str = "mbo",
               stype_in: str = "raw_symbol", start: Any = None, snapshot: bool = False,
               gateway: str | None = None, port: int | None = None,
               recorder: LiveRecorder | None = None) -> LiveFeed:
    """Subscribe to Databento Live MBO and start recording.

    Parameters
    ----------
    dataset, symbols, stype_in : as for ``databento.Live.subscribe``.
    start : intraday replay start (ns, timestamp; ``0`` = as far back as available);
        cannot be combined with ``snapshot``.
    snapshot : True asks for a book snapshot first (MBO only), so books are full from the
        first F_LAST.
    gateway, port : live gateway host and port (default: Databento's for the dataset).
    recorder : an existing :class:`LiveRecorder` to append to.

    Raises :class:`~mbo_lab.io.fetch.MissingApiKeyError` without ``DATABENTO_API_KEY`` and
    :class:`~mbo_lab.io.fetch.FetchError` when the gateway refuses the connection.
    """
    key = databento_api_key()
    if key is None:
        raise MissingApiKeyError(
            "no Databento API key: set the DATABENTO_API_KEY environment variable for live "
            "data (keys at https://databento.com/portal/keys). To try the tools without an "
            "account, replay the demo data: mbo_lab.open(mbo_lab.demo_path())."
        )
    import databento

    kwargs: dict[str, Any] = {}
    if gateway is not None:
        kwargs["gateway"] = gateway
    if port is not None:
        kwargs["port"] = int(port)
    from databento.common.error import BentoError

    rec = recorder if recorder is not None else LiveRecorder(dataset)
    rec.dataset = rec.dataset or dataset
    try:
        client = databento.Live(key=key, **kwargs)
        client.add_callback(rec.on_record, _log_callback_error)
        client.subscribe(dataset=dataset, schema=schema, symbols=symbols, stype_in=stype_in,
                         start=start, snapshot=snapshot)
        client.start()
    except (BentoError, OSError, ValueError) as exc:
        raise FetchError(f"live subscription to {dataset} failed: {exc}") from exc
    return LiveFeed(client, rec)


def _log_callback_error(exc: Exception) -> None:
    log.error("live record callback failed: %s", exc)
