"""Reading and writing Databento MBO files (``.dbn`` and ``.dbn.zst``, DBN versions 1-3).

``load(path)`` returns :class:`MboData`: the records as a NumPy structured array in
Databento's MBO layout (:data:`~mbo_lab.io.records.MBO_DTYPE`) plus :class:`DbnMetadata`.
Plain ``.dbn`` files are memory-mapped (no copy of the records); ``.dbn.zst`` files are
decompressed once into memory. :func:`iter_chunks` streams any file in fixed-size chunks
for files larger than memory. :class:`DbnWriter` writes MBO records as real DBN files
(the metadata is encoded by ``databento_dbn``), so every file mbo_lab writes is readable
by Databento's own tools.

>>> data = load(demo_path())          # doctest: +SKIP
>>> len(data), data.metadata.schema   # doctest: +SKIP
(200000, 'mbo')
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import logging
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from ..errors import (
    DataError,
    NotDbnError,
    TruncatedFileError,
    UnsupportedVersionError,
    WrongSchemaError,
)
from .records import (
    FIXED_PRICE_SCALE,
    MBO_DTYPE,
    RECORD_SIZE,
    RTYPE_MBO,
    UNDEF_PRICE,
    ns_to_datetime,
)

__all__ = [
    "DbnMetadata",
    "MboData",
    "DbnWriter",
    "load",
    "iter_chunks",
    "write_dbn",
    "SUPPORTED_VERSIONS",
]

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (1, 2, 3)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PROGRESS_MIN_BYTES = 64 << 20


@dataclass(frozen=True)
class DbnMetadata:
    """What a DBN file says about its content.

    Attributes
    ----------
    path : str | None
        Source file (None for data built in memory).
    version : int
        DBN version of the file (1-3).
    dataset, schema : str
        e.g. ``"GLBX.MDP3"`` and ``"mbo"``.
    start, end : int | None
        Requested time range, ns since the epoch (UTC).
    stype_in, stype_out : str | None
        Symbology types of the request.
    symbols : list[str]
        Requested symbols.
    mappings : dict[str, list[dict]]
        Raw symbol -> intervals ``{"start_date", "end_date", "symbol"}``; with
        ``stype_out == "instrument_id"`` the interval's symbol is the instrument id.
    compressed : bool
        True for Zstandard (``.dbn.zst``) files.
    """

    path: str | None = None
    version: int = 3
    dataset: str = ""
    schema: str = "mbo"
    start: int | None = None
    end: int | None = None
    stype_in: str | None = None
    stype_out: str | None = None
    symbols: list[str] = field(default_factory=list)
    mappings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    compressed: bool = False

    @property
    def instrument_symbols(self) -> dict[int, str]:
        """instrument_id -> raw symbol, from the mappings (later intervals win)."""
        out: dict[int, str] = {}
        for raw, intervals in self.mappings.items():
            for iv in intervals:
                sym = str(iv.get("symbol", ""))
                if sym.isdigit():
                    out[int(sym)] = raw
        return out


# --------------------------------------------------------------------------- reading


def _open_error(path: Path) -> DataError:
    return DataError(
        f"file not found: {path}. Pass the path of a Databento MBO file (.dbn or .dbn.zst); "
        "for demo data call mbo_lab.demo_path() or mbo_lab.load(mbo_lab.demo_path())."
    )


def _parse_prelude(head: bytes, where: str) -> tuple[int, int]:
    """Return (version, metadata_length) from the first 8 bytes; raise on bad input."""
    if len(head) < 8 or head[:3] != b"DBN":
        got = head[:8]
        raise NotDbnError(
            f"{where} is not a DBN file: it starts with {got!r}, not b'DBN'. Pass a "
            "Databento Binary Encoding file (.dbn, or .dbn.zst compressed)."
        )
    version = head[3]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"{where} is DBN version {version}; mbo_lab reads versions "
            f"{SUPPORTED_VERSIONS[0]}-{SUPPORTED_VERSIONS[-1]}. Convert it with Databento's "
            "`dbn` tool (e.g. `dbn --upgrade`) or upgrade mbo_lab."
        )
    (meta_len,) = struct.unpack("<I", head[4:8])
    return version, meta_len


def _decode_metadata(prelude: bytes, where: str, version: int, compressed: bool) -> DbnMetadata:
    import databento_dbn

    try:
        m = databento_dbn.Metadata.decode(prelude)
    except Exception as exc:  # the decoder's own error type varies by version
        raise NotDbnError(
            f"{where}: the DBN metadata header could not be decoded ({exc}). The file is "
            "damaged or not DBN; download it again."
        ) from exc
    # databento_dbn gives enums; their value is e.g. 'mbo' / 'raw_symbol'
    schema = _enum_name(m.schema)
    if schema != "mbo":
        what = "several schemas (no single schema)" if schema is None else f"schema '{schema}'"
        raise WrongSchemaError(
            f"{where} holds {what}, not 'mbo' (market by order). Request the data with "
            "schema='mbo' from Databento; mbo_lab rebuilds books from MBO records only."
        )
    mappings = {
        raw: [
            {"start_date": iv["start_date"], "end_date": iv["end_date"], "symbol": iv["symbol"]}
            for iv in ivs
        ]
        for raw, ivs in (m.mappings or {}).items()
    }
    return DbnMetadata(
        path=None if where == "<memory>" else where,
        version=version,
        dataset=str(m.dataset),
        schema=schema,
        start=int(m.start) if m.start is not None else None,
        end=int(m.end) if m.end is not None else None,
        stype_in=_enum_name(m.stype_in),
        stype_out=_enum_name(m.stype_out),
        symbols=list(m.symbols or []),
        mappings=mappings,
        compressed=compressed,
    )


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    v = getattr(value, "value", value)
    return str(v).lower()


def _progress(total: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = total >= _PROGRESS_MIN_BYTES
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _check_body(body_len: int, offset: int, where: str, allow_truncated: bool,
                records_before: int = 0) -> int:
    """Number of whole records in a body of ``body_len`` bytes; raise if cut mid-record.

    ``records_before`` counts the records that precede this body in the file (chunked
    reads), so messages give file-wide counts.
    """
    n = body_len // RECORD_SIZE
    rest = body_len - n * RECORD_SIZE
    if rest:
        stop = offset + n * RECORD_SIZE
        total = records_before + n
        msg = (
            f"{where} is truncated: {total:,} whole records were read, then {rest} bytes of "
            f"an incomplete record at byte offset {stop:,} (record index {total:,}). Download "
            "the file again, or pass allow_truncated=True to keep the whole records."
        )
        if not allow_truncated:
            raise TruncatedFileError(msg, records_read=total, byte_offset=stop)
        log.warning(msg)
    return n


def _check_rtypes(records: np.ndarray, where: str, first_index: int = 0) -> None:
    """Every record must be MBO (rtype 0xA0, 56 bytes); ``first_index`` = file position."""
    if len(records) == 0:
        return
    bad = np.flatnonzero((records["rtype"] != RTYPE_MBO) | (records["length"] != 14))
    if len(bad):
        idx = int(bad[0])
        rt = int(records["rtype"][idx])
        raise WrongSchemaError(
            f"{where}: record {first_index + idx:,} has rtype 0x{rt:02x} and length "
            f"{int(records['length'][idx]) * 4} bytes, not an MBO record (rtype 0xa0, "
            "56 bytes). The file mixes record types; mbo_lab reads MBO-only files."
        )


class MboData:
    """MBO records (NumPy structured array, Databento layout) with their metadata.

    Supports ``len()``, integer-range slicing (``data[100:200]``), time slicing with
    :meth:`between`, :meth:`to_df` and notebook display. The records of a plain ``.dbn``
    file are a read-only memory map: no copy is made.

    >>> data = mbo_lab.load("CLX5_mbo.dbn")     # doctest: +SKIP
    >>> data[:1000].to_df().head()              # doctest: +SKIP
    """

    def __init__(self, records: np.ndarray, metadata: DbnMetadata | None = None,
                 first_index: int = 0):
        if records.dtype != MBO_DTYPE:
            try:
                records = records.view(MBO_DTYPE) if records.dtype.itemsize == 56 else None
            except (TypeError, ValueError):
                records = None
            if records is None:
                raise DataError(
                    "records must be a NumPy structured array in Databento's MBO layout "
                    "(mbo_lab.MBO_DTYPE, 56 bytes per record)"
                )
        self.records: np.ndarray = records
        self.metadata: DbnMetadata = metadata or DbnMetadata()
        #: Index of ``records[0]`` in the source file (kept through slicing).
        self.first_index: int = first_index

    # ---- container protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: slice) -> MboData:
        if not isinstance(key, slice):
            raise TypeError("index MboData with a slice, e.g. data[1000:2000]; "
                            "use data.records[i] for one record")
        start, _, step = key.indices(len(self.records))
        if step != 1:
            raise ValueError("MboData slices must be contiguous (step 1)")
        return MboData(self.records[key], self.metadata, self.first_index + start)

    @property
    def path(self) -> str | None:
        return self.metadata.path

    @property
    def start_ns(self) -> int | None:
        """ts_recv of the first record (ns), or None when empty."""
        return int(self.records["ts_recv"][0]) if len(self.records) else None

    @property
    def end_ns(self) -> int | None:
        """ts_recv of the last record (ns), or None when empty."""
        return int(self.records["ts_recv"][-1]) if len(self.records) else None

    def between(self, start: Any = None, end: Any = None) -> MboData:
        """Records with ``start <= ts_recv < end``.

        ``start``/``end`` are ns integers, or anything ``pandas.Timestamp`` accepts
        (naive values are taken as UTC). Records are assumed in file (ts_recv) order.
        """
        ts = self.records["ts_recv"]
        lo = 0 if start is None else int(np.searchsorted(ts, _to_ns(start), "left"))
        hi = len(ts) if end is None else int(np.searchsorted(ts, _to_ns(end), "left"))
        return self[lo:max(lo, hi)]

    @property
    def symbols(self) -> dict[int, str]:
        """instrument_id -> symbol, from the file's mappings."""
        return self.metadata.instrument_symbols

    def to_df(self, price_type: str = "float") -> pd.DataFrame:
        """The records as a DataFrame indexed by ``ts_recv`` (``datetime64[ns, UTC]``).

        ``price_type="float"`` gives prices in currency units (NaN for undefined prices),
        ``"fixed"`` keeps the int64 fixed-point values (1e-9 units). Actions and sides
        are one-letter strings; ``symbol`` comes from the file's symbol mappings.
        """
        r = self.records
        if price_type == "float":
            price = r["price"].astype(np.float64) / FIXED_PRICE_SCALE
            price[r["price"] == UNDEF_PRICE] = np.nan
        elif price_type == "fixed":
            price = r["price"].copy()
        else:
            raise ValueError("price_type must be 'float' or 'fixed'")
        symbols = self.symbols
        inst = r["instrument_id"]
        if symbols:
            uniq, inv = np.unique(inst, return_inverse=True)
            sym = np.array([symbols.get(int(u), "") for u in uniq], dtype=object)[inv]
        else:
            sym = np.full(len(r), "", dtype=object)
        df = pd.DataFrame(
            {
                "ts_event": ns_to_datetime(r["ts_event"]),
                "rtype": r["rtype"],
                "publisher_id": r["publisher_id"],
                "instrument_id": inst,
                "action": pd.Categorical(r["action"].astype("U1")),
                "side": pd.Categorical(r["side"].astype("U1")),
                "price": price,
                "size": r["size"],
                "channel_id": r["channel_id"],
                "order_id": r["order_id"],
                "flags": r["flags"],
                "ts_in_delta": r["ts_in_delta"],
                "sequence": r["sequence"],
                "symbol": sym,
            },
            index=ns_to_datetime(r["ts_recv"]).rename("ts_recv"),
        )
        return df

    # ---- display
    def summary(self) -> dict[str, Any]:
        """Counts and span as a plain dict (records, span, symbols, actions)."""
        r = self.records
        actions = {}
        if len(r):
            codes, counts = np.unique(r["action"], return_counts=True)
            actions = {c.decode(): int(n) for c, n in zip(codes, counts)}
        return {
            "path": self.path,
            "records": len(r),
            "dataset": self.metadata.dataset,
            "schema": self.metadata.schema,
            "start": None if not len(r) else ns_to_datetime(r["ts_recv"][:1])[0],
            "end": None if not len(r) else ns_to_datetime(r["ts_recv"][-1:])[0],
            "instruments": sorted({int(x) for x in np.unique(r["instrument_id"])}) if len(r) else [],
            "publishers": sorted({int(x) for x in np.unique(r["publisher_id"])}) if len(r) else [],
            "symbols": self.metadata.symbols,
            "actions": actions,
        }

    def __repr__(self) -> str:
        s = self.summary()
        name = os.path.basename(s["path"]) if s["path"] else "<memory>"
        span = f"{s['start']} .. {s['end']}" if s["records"] else "empty"
        return (
            f"MboData({name}: {s['records']:,} records, {s['dataset'] or '?'}, "
            f"{span}, symbols={s['symbols']}, actions={s['actions']})"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in s.items()
        )
        return f"<b>MboData</b><table>{rows}</table>"


def _to_ns(value: Any) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value)


def _read_zst(path: Path, progress: bool | None) -> bytes:
    import zstandard

    size = path.stat().st_size
    bar = _progress(size, f"decompress {path.name}", progress)
    out = io.BytesIO()
    try:
        with open(path, "rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            while True:
                block = reader.read(8 << 20)
                if not block:
                    break
                out.write(block)
                if bar is not None:
                    bar.n = fh.tell()
                    bar.refresh()
    except zstandard.ZstdError as exc:
        raise NotDbnError(
            f"{path}: Zstandard decompression failed after {out.tell():,} bytes ({exc}). "
            "The file is damaged or truncated; download it again."
        ) from exc
    finally:
        if bar is not None:
            bar.close()
    return out.getvalue()


def load(path: str | os.PathLike, *, allow_truncated: bool = False,
         progress: bool | None = None) -> MboData:
    """Load a Databento MBO file (``.dbn`` or ``.dbn.zst``, DBN versions 1-3).

    Parameters
    ----------
    path : str or PathLike
        The file. Compression is detected from the content, not the name.
    allow_truncated : bool
        Keep the whole records of a file cut mid-record (logs a warning) instead of
        raising :class:`~mbo_lab.errors.TruncatedFileError`.
    progress : bool or None
        Show a progress bar; None shows one for files over 64 MiB.

    Returns
    -------
    MboData
        Records (memory-mapped for plain files) and metadata.

    Raises
    ------
    DataError, NotDbnError, WrongSchemaError, UnsupportedVersionError, TruncatedFileError
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise _open_error(p)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == _ZSTD_MAGIC:
        raw = _read_zst(p, progress)
        version, meta_len = _parse_prelude(raw[:8], where)
        if len(raw) < 8 + meta_len:
            raise TruncatedFileError(
                f"{where} ends inside its metadata header; download it again.", 0, len(raw)
            )
        meta = _decode_metadata(raw[: 8 + meta_len], where, version, compressed=True)
        offset = 8 + meta_len
        n = _check_body(len(raw) - offset, offset, where, allow_truncated)
        records = np.frombuffer(raw, dtype=MBO_DTYPE, count=n, offset=offset)
    else:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            version, meta_len = _parse_prelude(head, where)
            prelude = head + fh.read(meta_len)
        if len(prelude) < 8 + meta_len:
            raise TruncatedFileError(
                f"{where} ends inside its metadata header; download it again.", 0, size
            )
        meta = _decode_metadata(prelude, where, version, compressed=False)
        offset = 8 + meta_len
        n = _check_body(size - offset, offset, where, allow_truncated)
        if n == 0:
            records = np.zeros(0, dtype=MBO_DTYPE)
        else:
            with open(p, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            records = np.frombuffer(mm, dtype=MBO_DTYPE, count=n, offset=offset)
    _check_rtypes(records, where)
    return MboData(records, meta)


def iter_chunks(path: str | os.PathLike, chunk_records: int = 1 << 20, *,
                allow_truncated: bool = False, progress: bool | None = None
                ) -> Iterator[MboData]:
    """Stream a DBN file as :class:`MboData` chunks of at most ``chunk_records`` records.

    Memory stays bounded by the chunk size for ``.dbn.zst`` files (streaming
    decompression); plain files are memory-mapped and chunks are views.
    Each chunk's ``first_index`` is its position in the file.
    """
    if chunk_records < 1:
        raise ValueError("chunk_records must be >= 1")
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise _open_error(p)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != _ZSTD_MAGIC:
        data = load(p, allow_truncated=allow_truncated, progress=False)
        bar = _progress(len(data) * RECORD_SIZE, f"read {p.name}", progress)
        for lo in range(0, len(data), chunk_records):
            chunk = data[lo: lo + chunk_records]
            if bar is not None:
                bar.update(len(chunk) * RECORD_SIZE)
            yield chunk
        if bar is not None:
            bar.close()
        return

    import zstandard

    bar = _progress(p.stat().st_size, f"read {p.name}", progress)
    with open(p, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        index = 0
        try:
            head = _read_exact(reader, 8)
            version, meta_len = _parse_prelude(head, where)
            prelude = head + _read_exact(reader, meta_len)
            if len(prelude) < 8 + meta_len:
                raise TruncatedFileError(
                    f"{where} ends inside its metadata header; download it again.", 0,
                    len(prelude))
            meta = _decode_metadata(prelude, where, version, compressed=True)
            offset = 8 + meta_len
            want = chunk_records * RECORD_SIZE
            while True:
                buf = _read_exact(reader, want)
                if not buf:
                    break
                n = _check_body(len(buf), offset, where, allow_truncated, index)
                if n:
                    recs = np.frombuffer(buf, dtype=MBO_DTYPE, count=n)
                    _check_rtypes(recs, where, index)
                    yield MboData(recs, meta, index)
                index += n
                offset += len(buf)
                if bar is not None:
                    bar.n = fh.tell()
                    bar.refresh()
                if len(buf) < want:
                    break
        except zstandard.ZstdError as exc:
            raise NotDbnError(
                f"{where}: Zstandard decompression failed after record {index:,} ({exc}). "
                "The file is damaged or truncated; download it again."
            ) from exc
        finally:
            if bar is not None:
                bar.close()


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        b = reader.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


# --------------------------------------------------------------------------- writing


def _metadata_bytes(*, dataset: str, start: int, end: int | None, symbols: Sequence[str],
                    mappings: dict[str, list[dict[str, Any]]] | None, version: int) -> bytes:
    import databento_dbn

    maps = []
    for raw, ivs in (mappings or {}).items():
        maps.append(
            SimpleNamespace(
                raw_symbol=raw,
                intervals=[
                    SimpleNamespace(
                        start_date=iv["start_date"], end_date=iv["end_date"],
                        symbol=str(iv["symbol"]),
                    )
                    for iv in ivs
                ],
            )
        )
    m = databento_dbn.Metadata(
        dataset=dataset,
        schema=databento_dbn.Schema.MBO,
        start=int(start),
        end=None if end is None else int(end),
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        symbols=list(symbols),
        partial=[],
        not_found=[],
        mappings=maps,
        version=version,
    )
    return bytes(m.encode())


def instrument_mappings(symbols: dict[int, str], start_ns: int, end_ns: int
                        ) -> dict[str, list[dict[str, Any]]]:
    """Build DBN symbol mappings ``raw_symbol -> [interval]`` from ``{instrument_id: symbol}``."""
    d0 = _dt.datetime.fromtimestamp(start_ns / 1e9, _dt.UTC).date()
    d1 = _dt.datetime.fromtimestamp(max(end_ns, start_ns) / 1e9, _dt.UTC).date()
    d1 = d1 + _dt.timedelta(days=1)
    return {
        sym: [{"start_date": d0, "end_date": d1, "symbol": str(iid)}]
        for iid, sym in symbols.items()
    }


class DbnWriter:
    """Write MBO records to a DBN file in chunks (``.zst`` suffix: Zstandard-compressed).

    >>> with DbnWriter("out.dbn", dataset="SYNTH", start=0, symbols={1: "AAA"}) as w:  # doctest: +SKIP
    ...     w.write(records)
    """

    def __init__(self, path: str | os.PathLike, *, dataset: str = "SYNTH.MBO",
                 start: int = 0, end: int | None = None,
                 symbols: dict[int, str] | None = None, version: int = 3,
                 compress: bool | None = None):
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(
                f"cannot write DBN version {version}; choose one of {SUPPORTED_VERSIONS}"
            )
        self.path = Path(path)
        self.records_written = 0
        compress = self.path.name.endswith(".zst") if compress is None else compress
        symbols = symbols or {}
        meta = _metadata_bytes(
            dataset=dataset, start=start, end=end, symbols=sorted(set(symbols.values())),
            mappings=instrument_mappings(symbols, start, end or start), version=version,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._fh = open(self._tmp, "wb")
        if compress:
            import zstandard

            self._out = zstandard.ZstdCompressor(level=3).stream_writer(self._fh, closefd=False)
        else:
            self._out = self._fh
        self._out.write(meta)

    def write(self, records: np.ndarray) -> None:
        """Append records (MBO_DTYPE, or any 56-byte structured array with that layout)."""
        if records.dtype.itemsize != RECORD_SIZE:
            raise DataError("DbnWriter.write takes MBO records (56-byte structured array)")
        self._out.write(np.ascontiguousarray(records).tobytes())
        self.records_written += len(records)

    def close(self) -> None:
        """Finish the file (renamed into place only when complete)."""
        if self._fh.closed:
            return
        if self._out is not self._fh:
            self._out.close()
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop a partly written file."""
        if not self._fh.closed:
            self._fh.close()
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> DbnWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dbn(path: str | os.PathLike, records: np.ndarray, *, dataset: str = "SYNTH.MBO",
              symbols: dict[int, str] | None = None, version: int = 3,
              compress: bool | None = None) -> Path:
    """Write ``records`` (MBO layout) as one DBN file; returns the path."""
    start = int(records["ts_recv"][0]) if len(records) else 0
    end = int(records["ts_recv"][-1]) + 1 if len(records) else None
    with DbnWriter(path, dataset=dataset, start=start, end=end, symbols=symbols,
                   version=version, compress=compress) as w:
        w.write(records)
    return Path(path)

