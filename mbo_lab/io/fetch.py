"""Download Databento historical data once, then read it from a local cache.

:func:`fetch` asks ``databento.Historical`` for a time range and keeps the response as a
Zstandard-compressed DBN file named after a hash of the request (dataset, schema, symbols,
stype, start, end) under ``<cache_dir>/databento/<dataset>/``; the same request later reads
that file without any network access (and without an API key).

Before a download it asks Databento for the record count and the cost
(``metadata.get_record_count`` / ``metadata.get_cost``); above ``cost_threshold`` US dollars
it needs a confirmation: ``confirm=True`` (or a callable receiving the estimate), or, when
standard input is a terminal, a ``[y/N]`` prompt.

The API key comes only from the ``DATABENTO_API_KEY`` environment variable
(:func:`mbo_lab.config.databento_api_key`); it is never logged or stored.

>>> data = fetch("GLBX.MDP3", "CLX5", "2025-09-24T19:30", "2025-09-24T22:00")   # doctest: +SKIP
>>> mbo_lab.bbo(data).tail()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import databento_api_key, get_settings
from ..errors import MboLabError

__all__ = [
    "fetch",
    "cache_path",
    "request_key",
    "FetchError",
    "MissingApiKeyError",
    "DownloadCancelled",
    "DEFAULT_COST_THRESHOLD",
]

log = logging.getLogger(__name__)

#: Downloads estimated above this many US dollars need a confirmation.
DEFAULT_COST_THRESHOLD = 1.0

_KEY_VERSION = 1


class FetchError(MboLabError):
    """A Databento download failed or was refused."""


class MissingApiKeyError(FetchError):
    """No Databento API key in ``DATABENTO_API_KEY``."""


class DownloadCancelled(FetchError):
    """A download above the cost threshold was not confirmed."""


def _no_key_error() -> MissingApiKeyError:
    return MissingApiKeyError(
        "no Databento API key: set the DATABENTO_API_KEY environment variable (create a key "
        "at https://databento.com/portal/keys; new accounts get free credit). Without an "
        "account, explore the synthetic demo data: mbo_lab.load(mbo_lab.demo_path()); or "
        "pass a DBN file you already have to mbo_lab.load(path)."
    )


def _ts(value: Any, name: str = "time") -> pd.Timestamp | None:
    """A UTC timestamp from a date/time string, datetime or ns integer (parsed by
    :func:`~mbo_lab.io.records.to_ns`, the package's one time parser); FetchError if not."""
    from ..errors import ArgumentError
    from .records import to_ns

    if value is None:
        return None
    if isinstance(value, bool):
        raise FetchError(f"{name} must be a date, timestamp or ns integer, got {value!r}")
    try:
        return pd.Timestamp(to_ns(value), unit="ns", tz="UTC")
    except (ArgumentError, ValueError, OverflowError) as exc:  # (ns out of range)
        raise FetchError(
            f"{name} {value!r} is not a date or time: pass e.g. '2025-09-24', "
            f"'2025-09-24T19:30', a pandas Timestamp or an ns integer (UTC) ({exc})"
        ) from None


def _symbols(symbols: str | Iterable[str | int]) -> list[str]:
    if isinstance(symbols, (str, int)):
        symbols = [symbols]
    out = sorted({str(s).strip() for s in symbols if str(s).strip()})
    if not out:
        raise FetchError("symbols is empty: pass e.g. 'CLX5' or ['ESZ5', 'NQZ5']")
    return out


def _request(dataset: str, symbols, start, end, schema: str, stype_in: str) -> dict[str, Any]:
    s, e = _ts(start, "start"), _ts(end, "end")
    if s is None:
        raise FetchError("start is required (a date, timestamp or ns integer, UTC)")
    if e is not None and e <= s:
        raise FetchError(f"end {e} is not after start {s}")
    return {
        "v": _KEY_VERSION,
        "dataset": str(dataset).strip().upper(),
        "schema": str(schema).strip().lower(),
        "symbols": _symbols(symbols),
        "stype_in": str(stype_in).strip().lower(),
        "start": s.isoformat(),
        "end": None if e is None else e.isoformat(),
    }


def request_key(dataset: str, symbols: str | Iterable[str | int], start: Any, end: Any = None,
                *, schema: str = "mbo", stype_in: str = "raw_symbol") -> str:
    """24-hex-digit hash identifying a request (symbol order and time formats don't matter).

    >>> request_key("GLBX.MDP3", ["ESZ5", "CLX5"], "2025-09-24", "2025-09-25") == \\
    ...     request_key("glbx.mdp3", "CLX5 ESZ5".split(), "2025-09-24T00:00Z", "2025-09-25")
    True
    """
    req = _request(dataset, symbols, start, end, schema, stype_in)
    blob = json.dumps(req, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(dataset: str, symbols: str | Iterable[str | int], start: Any, end: Any = None,
               *, schema: str = "mbo", stype_in: str = "raw_symbol",
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch` keeps (or would keep) the file of this request."""
    req = _request(dataset, symbols, start, end, schema, stype_in)
    folder = Path(cache_dir or get_settings().cache_dir) / "databento" / req["dataset"]
    key = request_key(dataset, symbols, start, end, schema=schema, stype_in=stype_in)
    return folder / f"{req['schema']}-{key}.dbn.zst"


def _open(path: Path, schema: str):
    if schema == "mbo":
        from .dbn import load

        return load(path)
    import databento

    return databento.DBNStore.from_file(path)


def _confirm(confirm: bool | Callable[[dict], bool] | None, info: dict[str, Any]) -> bool:
    if isinstance(confirm, bool):
        return confirm
    if callable(confirm):
        return bool(confirm(info))
    question = (f"Download {info['record_count']:,} {info['schema']} records of "
                f"{', '.join(info['symbols'])} ({info['dataset']}) for "
                f"${info['cost']:.2f}? [y/N] ")
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return input(question).strip().lower() in ("y", "yes")
    raise DownloadCancelled(
        f"this download costs ${info['cost']:.2f} ({info['record_count']:,} records), above "
        f"cost_threshold=${info['cost_threshold']:.2f}, and there is no terminal to ask: pass "
        "confirm=True (or a function that receives the estimate and returns True) to go on, "
        "or raise cost_threshold."
    )


def fetch(dataset: str, symbols: str | Iterable[str | int], start: Any, end: Any = None, *,
          schema: str = "mbo", stype_in: str = "raw_symbol",
          cache_dir: str | os.PathLike | None = None,
          confirm: bool | Callable[[dict], bool] | None = None,
          cost_threshold: float | None = DEFAULT_COST_THRESHOLD,
          gateway: str | None = None, refresh: bool = False):
    """Historical Databento data for ``symbols`` in ``[start, end)``, cached locally.

    Parameters
    ----------
    dataset : e.g. ``"GLBX.MDP3"`` (CME), ``"XNAS.ITCH"`` (Nasdaq).
    symbols : one symbol or several (``stype_in`` symbology, raw symbols by default).
    start, end : dates, timestamps (naive = UTC) or ns integers; ``end`` is exclusive.
        For full books start at 00:00 UTC (Databento sends the book as a snapshot there).
    schema : ``"mbo"`` (default; returns :class:`~mbo_lab.io.dbn.MboData`) or any other
        Databento schema (returns a ``databento.DBNStore``).
    cache_dir : cache root (default: the ``cache_dir`` setting).
    confirm : for downloads above ``cost_threshold``: True / False, or a callable receiving
        ``{"dataset", "schema", "symbols", "start", "end", "record_count", "cost",
        "cost_threshold"}`` and returning True to download. None asks on a terminal and
        refuses elsewhere.
    cost_threshold : US dollars; None skips the estimate (no confirmation ever).
    gateway : Historical API base URL (tests and private gateways); Databento's default
        otherwise.
    refresh : download again even when the file is cached.

    Raises
    ------
    MissingApiKeyError : no ``DATABENTO_API_KEY`` (and the request is not cached).
    DownloadCancelled : the cost was not confirmed.
    FetchError : Databento refused the request or the transfer failed (nothing is cached).

    Example
    -------
    >>> data = fetch("GLBX.MDP3", "CLX5", "2025-09-24", "2025-09-25", cost_threshold=5)  # doctest: +SKIP
    """
    req = _request(dataset, symbols, start, end, schema, stype_in)
    path = cache_path(dataset, symbols, start, end, schema=schema, stype_in=stype_in,
                      cache_dir=cache_dir)
    if path.is_file() and not refresh:
        log.info("cache hit: %s", path)
        return _open(path, req["schema"])
    key = databento_api_key()
    if key is None:
        raise _no_key_error()
    import databento
    from databento.common.error import BentoError

    kwargs = {} if gateway is None else {"gateway": gateway}
    client = databento.Historical(key=key, **kwargs)
    params = dict(dataset=req["dataset"], symbols=req["symbols"], schema=req["schema"],
                  stype_in=req["stype_in"], start=req["start"], end=req["end"])
    info: dict[str, Any] = {k: params[k] for k in ("dataset", "schema", "symbols", "start",
                                                     "end")}
    try:
        if cost_threshold is not None:
            info["record_count"] = int(client.metadata.get_record_count(**params))
            info["cost"] = float(client.metadata.get_cost(**params))
            info["cost_threshold"] = float(cost_threshold)
            log.info("Databento estimate: %s records, $%.4f", f"{info['record_count']:,}",
                     info["cost"])
            if info["cost"] > cost_threshold and not _confirm(confirm, info):
                raise DownloadCancelled(
                    f"download of {info['record_count']:,} records (${info['cost']:.2f}) "
                    "not confirmed; nothing was downloaded"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        t0 = time.perf_counter()
        try:
            client.timeseries.get_range(**params, path=tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    except BentoError as exc:
        raise FetchError(f"Databento request failed: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise FetchError(f"download of {req['dataset']} {req['symbols']} failed: {exc}") \
            from exc
    meta = dict(req, downloaded_at=pd.Timestamp.now(tz="UTC").isoformat(),
                bytes=path.stat().st_size, seconds=round(time.perf_counter() - t0, 3),
                **{k: info[k] for k in ("record_count", "cost") if k in info})
    side = path.with_name(path.name[: -len(".dbn.zst")] + ".json")
    side.write_text(json.dumps(meta, indent=2))
    log.info("downloaded %s (%s bytes)", path, f"{meta['bytes']:,}")
    return _open(path, req["schema"])
