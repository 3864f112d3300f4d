"""Parquet datasets of records, BBO, MBP-N book states and trades, partitioned by UTC day.

:func:`export` replays a source (DBN path, :class:`~mbo_lab.io.dbn.MboData` or an MBO record
array) chunk by chunk through a book engine and writes, under ``out_dir``, one Hive-style
dataset per table, plus a manifest::

    out_dir/_mbo_lab_store.json                       the manifest (which files are current)
    out_dir/records/date=2025-01-02/part-<run>-00000.parquet
    out_dir/bbo/...     out_dir/mbp/...     out_dir/trades/...

Tables (every row carries ``ts_recv`` and ``ts_event`` as ``timestamp[ns, UTC]``, exact ns,
``record_index`` = position of the row's record in the source, ``instrument_id``,
``publisher_id`` and ``symbol``; ``date`` (UTC day of ``ts_recv``) is the partition key):

``records``
    every MBO record, decoded: ``action``/``side`` as one-letter strings (a byte that is not
    printable ASCII is shown as ``\\xff``), ``price`` as float (currency units, NaN for
    ``UNDEF_PRICE``) **and** ``price_fixed`` (exact int64, 1e-9 units, ``UNDEF_PRICE``
    kept), ``size``, ``order_id`` (uint64), ``flags``, ``sequence``, ...
``bbo``
    best bid/offer at every F_LAST record (Databento MBP naming: ``bid_px_00``, ``ask_px_00``,
    ``bid_sz_00``, ``ask_sz_00``, ``bid_ct_00``, ``ask_ct_00``), plus ``bid_px_00_fixed`` /
    ``ask_px_00_fixed`` (exact int64; ``UNDEF_PRICE`` for an empty side), ``crossed``,
    ``locked``.
``mbp``
    top-``levels`` book in the same layout, at every F_LAST record or, with ``grid="100ms"``,
    the last state per grid bin per book (extra column ``ts_bin``: the bin's start; bins
    without any F_LAST record of the book have no row).
``trades``
    Trade (``T``) records: ``price``, ``price_fixed``, ``size``, ``side`` (aggressor:
    ``B`` buy, ``A`` sell, ``N`` none/implied), ``order_id``, ``sequence``, ``flags``.

**File count.** One export writes one file per table and UTC day (a new file only when more
than 64 days are open at once, when rows of an earlier day come after a later day's, or
after 256 row groups = 32Mi rows, which bounds the writer's memory), whatever the number
of instruments. Inside a
file, each chunk's rows are sorted by ``instrument_id`` (then source order) and written in
row groups of at most 128Ki rows, so the row-group statistics let pyarrow, DuckDB and Dask
skip row groups when filtering on ``instrument_id``.

**One atomic step.** Files are written under ``out_dir/.staging/`` while the export runs.
The commit, under a lock file (``out_dir/.lock``, so concurrent exports such as
:func:`mbo_lab.batch` workers queue), moves them into the table folders under new names and
then replaces the manifest (write, fsync, rename): that rename is the switch. Only then are
the files of the replaced export deleted. :func:`read` reads exactly the files the current
manifest lists, so it sees the old store or the new one, never a mix, even when an export is
killed at any point; files left by a killed export are not listed and the next export
removes them. Tools that read the folders directly (``pandas.read_parquet(out/"bbo")``,
DuckDB's ``read_parquet('out/bbo/**/*.parquet')``, Dask) see the same data whenever no
export is running or was killed mid-commit; for a store that is written while you read, pass
them :func:`files` (the manifest's list).

**Sources.** Every export is recorded under a source key: the resolved path of a file
source (also for :class:`MboData` loaded from a file), ``name=`` if given, else
``"<memory>"``. Exporting a source again replaces everything that source wrote before
(also days and tables the new export no longer has), so a re-export leaves exactly what a
clean export of it leaves. Different sources add up (e.g. one file per day, or one file per
instrument for the same day); exporting the same data under two keys duplicates rows.

>>> summary = export(mbo_lab.demo_path(), "store/", levels=5, grid="100ms")   # doctest: +SKIP
>>> read("store/", "bbo", instrument_id=1001).head()                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date as _date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .book.build import Source, as_data
from .book.engine import make_engine
from .book.frames import CROSS_CROSSED, CROSS_LOCKED, BookFrames
from .config import get_settings
from .errors import DataError, MboLabError, OutputError
from .io.dbn import MboData, iter_chunks
from .io.records import (
    ACTION_TRADE,
    FIXED_PRICE_SCALE,
    LENGTH_MBO,
    MBO_DTYPE,
    RECORD_SIZE,
    RTYPE_MBO,
    UNDEF_PRICE,
    empty_records,
    to_ns,
)

__all__ = ["export", "read", "files", "records_from_frame", "tables", "StoreError",
           "OutputError", "TABLES", "check_input", "check_output_file", "stream_source"]

log = logging.getLogger(__name__)

#: Tables :func:`export` can write.
TABLES = ("records", "bbo", "mbp", "trades")

MANIFEST = "_mbo_lab_store.json"
_LOCK = ".lock"
_STAGING = ".staging"
_NS_PER_DAY = 86_400_000_000_000
_MAX_OPEN_WRITERS = 64
#: row groups per file (32Mi rows): a writer holds the metadata of its row groups (about
#: 1 KB per column chunk) until it closes, so a longer day goes on in a new file
_MAX_FILE_ROW_GROUPS = 256
_PROGRESS_MIN_RECORDS = 2_000_000
_FORMAT_VERSION = 2
#: rows per Parquet row group (clustered by instrument, for predicate pushdown)
ROW_GROUP_ROWS = 1 << 17
#: Parquet options of the store's records and trades tables (bbo, mbp: parquet_options)
STORE_PARQUET = {"compression": "zstd", "compression_level": 1}
#: codecs of :func:`parquet_options` (``mbo-lab mbp --compression``)
COMPRESSIONS = ("zstd", "lz4", "snappy", "none")
#: columns of ids, times and positions: delta-encoded, compressed, with statistics
_KEY_COLUMNS = frozenset(("ts_recv", "ts_event", "ts_bin", "record_index", "instrument_id",
                          "publisher_id", "sequence"))
_LEVEL_RE = re.compile(r"^(bid|ask)_(px|sz|ct)_\d+(_fixed)?$")


def parquet_options(names: Sequence[str], compression: str = "zstd") -> dict[str, Any]:
    """``pyarrow.parquet.ParquetWriter`` options for a book-state table (the columns of
    :func:`book_columns`, named ``names``), chosen per column by what pays (measured in
    benchmarks/bench_cli.py: half the encoding CPU time of zstd-1 with dictionaries
    everywhere, for a file of about the same size):

    * prices (``<side>_px_<k>``, ``..._fixed``): dictionary pages (few distinct prices
      per row group), then ``compression``;
    * sizes and counts: DELTA_BINARY_PACKED, never compressed (the bit-packed deltas are
      already small; zstd saved ~2 % for ~15 % more time);
    * ids, times, positions (``ts_recv``, ``record_index``, ...): DELTA_BINARY_PACKED, then
      ``compression``, with column statistics (min/max per row group, for pruning);
    * ``symbol``: dictionary; other columns (``crossed``, ``locked``): ``compression``.

    Level columns get no statistics (never filtered on; computing them costs ~10 %).
    ``compression``: ``"zstd"`` (level 1), ``"lz4"``, ``"snappy"`` or ``"none"``. Every
    encoding is standard Parquet (pandas, DuckDB, Spark read it).
    """
    if compression not in COMPRESSIONS:
        raise StoreError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    codec, dictionary, encoding, stats = {}, [], {}, []
    for name in names:
        m = _LEVEL_RE.match(name)
        if m and m.group(2) == "px":
            dictionary.append(name)
            codec[name] = compression
        elif m:
            encoding[name] = "DELTA_BINARY_PACKED"
            codec[name] = "none"
        elif name in _KEY_COLUMNS:
            encoding[name] = "DELTA_BINARY_PACKED"
            codec[name] = compression
            stats.append(name)
        else:
            if name == "symbol":
                dictionary.append(name)
                stats.append(name)
            codec[name] = compression
    opts: dict[str, Any] = {"compression": codec, "use_dictionary": dictionary,
                            "column_encoding": encoding, "write_statistics": stats}
    if compression == "zstd":
        opts["compression_level"] = {n: 1 for n, c in codec.items() if c == "zstd"}
    return opts
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PART_RE = re.compile(r"^part-[0-9a-f]+-[0-9a-f]+-\d{5}\.parquet$")
#: test hook: name of a commit step at which the process kills itself (SIGKILL)
_CRASH_ENV = "MBO_LAB_TEST_STORE_CRASH_AT"


class StoreError(MboLabError):
    """A Parquet store could not be written or read (bad arguments, missing table)."""




# --------------------------------------------------------------------------- edges: input


def check_input(path: str | os.PathLike) -> Path:
    """The path of a readable regular file, or a :class:`~mbo_lab.errors.DataError` that
    names the real cause (missing, a directory, a symlink loop, unreadable, a fifo or other
    special file). Never opens a fifo, so it never hangs."""
    try:
        from .io.dbn import check_input_path  # the io layer's check, when present
    except ImportError:
        check_input_path = None
    if check_input_path is not None:
        return Path(check_input_path(path))
    p = Path(path)
    what = "Pass the path of a Databento MBO file (.dbn or .dbn.zst)."
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise DataError(f"{p} is a symbolic link to a missing file "
                            f"({os.readlink(p)}). {what}") from None
        raise DataError(f"file not found: {p}. {what} For demo data call "
                        "mbo_lab.demo_path().") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{p} is a symbolic link loop (too many levels of links). "
                            f"{what}") from None
        if exc.errno == errno.ENOTDIR:
            raise DataError(f"{p}: a part of the path is a file, not a folder. {what}") \
                from None
        if exc.errno == errno.EACCES:
            raise DataError(f"{p} cannot be reached: permission denied on a folder of its "
                            "path. Fix the permissions.") from None
        raise DataError(f"{p} cannot be read: {exc.strerror}. {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{p} is a directory, not a file. {what} (mbo-lab batch takes "
                        "folders and glob patterns.)")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a fifo (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a special file")
        raise DataError(f"{p} is {kind}, not a regular file; mbo_lab reads regular files "
                        "(save the stream to a file first).")
    if not os.access(p, os.R_OK):
        raise DataError(f"{p} is not readable (permission denied). Fix its permissions "
                        "(e.g. chmod u+r) or copy it somewhere readable.")
    return p


# --------------------------------------------------------------------------- edges: output


def _os_error(exc: OSError, target: Path, what: str) -> OutputError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOENT: "a folder of the path does not exist",
        errno.EISDIR: "it is a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write {what} {target}: {reason}. Nothing was left half-written"
                       "; free space, fix permissions or choose another output, then retry.")


def check_output_file(path: str | os.PathLike, *, force: bool = False,
                      suffixes: Sequence[str] = ()) -> tuple[Path, bool]:
    """Validate an output file path before any work: returns ``(path, replaces)``.

    Refuses a folder, a missing or non-folder parent, a read-only parent, and an existing
    file unless ``force`` (then ``replaces`` is True and the file is replaced atomically at
    the end). ``suffixes``: accepted endings (lower case), e.g. ``(".parquet", ".csv")``.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output {p} is a folder; give a file name inside it, e.g. "
                          f"{p / ('out' + (suffixes[0] if suffixes else ''))}")
    if suffixes and not any(p.name.lower().endswith(s) for s in suffixes):
        raise OutputError(f"output {p} must end in {' or '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist; create it first "
                          f"(mkdir -p {parent}) or choose another output.")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} is a file, not a folder.")
    replaces = p.exists() or p.is_symlink()
    if replaces and not force:
        raise OutputError(f"output {p} exists and would be replaced; pass --force "
                          "(force=True) to replace it, or choose another name.")
    if replaces and not (p.is_file() or p.is_symlink()):
        raise OutputError(f"output {p} exists and is not a regular file; it is not replaced.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {parent}: permission denied (read-only folder)."
                          " Choose another output folder.")
    return p, replaces


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a folder: the store is a folder. "
                          "Choose another path or delete the file.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"output {out}: a part of the path is a file, not a folder.") \
            from None
    except OSError as exc:
        raise _os_error(exc, out, "the store folder") from None


# --------------------------------------------------------------------------- input streaming


@dataclass
class _Stream:
    """A source opened for streaming: its chunks, record count (or None), name and key."""

    chunks: Iterator[MboData]
    total: int | None
    name: str
    key: str
    symbols: dict[int, str]


def stream_source(source: Source, chunk_records: int, *, name: str | None = None) -> _Stream:
    """Open ``source`` for chunked reading with memory bounded by ``chunk_records``.

    Paths are checked first (:func:`check_input`), then read with
    :func:`~mbo_lab.io.dbn.iter_chunks`: a plain ``.dbn`` is mapped once and the pages of
    passed chunks are released, a ``.dbn.zst`` is decompressed as a stream; symbols come
    from the metadata header (no pass over the file first). In-memory data is sliced.
    """
    if isinstance(source, (str, os.PathLike)):
        p = check_input(source)
        key = name or str(p.resolve())
        size = p.stat().st_size
        with open(p, "rb") as fh:
            compressed = fh.read(4) == _ZSTD_MAGIC
        total = None if compressed else max(0, (size - 8) // RECORD_SIZE)  # about (header)
        chunks = iter_chunks(p, chunk_records, progress=False)
        return _Stream(chunks, total, str(p), key, {})
    data = as_data(source)

    def gen_mem() -> Iterator[MboData]:
        for lo in range(0, len(data), chunk_records):
            yield data[lo: lo + chunk_records]

    key = name or (str(Path(data.path).resolve()) if data.path else "<memory>")
    return _Stream(gen_mem(), len(data), data.path or "<memory>", key, data.symbols)


# --------------------------------------------------------------------------- arrow columns


def _pa():
    import pyarrow as pa

    return pa


def _ts(ns: np.ndarray):
    """uint64 ns since the epoch -> arrow timestamp[ns, UTC] (zero copy when contiguous)."""
    pa = _pa()
    a = np.ascontiguousarray(ns).view(np.int64).view("datetime64[ns]")
    return pa.array(a, type=pa.timestamp("ns", tz="UTC"))


def _symbols_for(iids: np.ndarray, symbols: dict[int, str]):
    """Arrow string column of the symbols of ``iids`` (one vectorised take)."""
    pa = _pa()
    import pyarrow.compute as pc

    if len(iids) == 0:
        return pa.array([], type=pa.string())
    if not symbols:
        return pa.nulls(len(iids), pa.string()).fill_null("")
    uniq, inv = np.unique(iids, return_inverse=True)
    names = pa.array([symbols.get(int(u), "") for u in uniq], type=pa.string())
    return pc.take(names, pa.array(inv.astype(np.int32, copy=False)))


_BYTE_TEXT = [chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in range(256)]


def _byte_column(codes: np.ndarray):
    """One-letter strings for action/side bytes; a non-printable byte shows as ``\\xff``."""
    pa = _pa()
    import pyarrow.compute as pc

    return pc.take(pa.array(_BYTE_TEXT, type=pa.string()),
                   pa.array(np.ascontiguousarray(codes).view(np.uint8)))


def _col(a: np.ndarray):
    return _pa().array(np.ascontiguousarray(a))


def _common_columns(rec: np.ndarray, index: np.ndarray, symbols: dict[int, str]) -> dict:
    return {
        "ts_recv": _ts(rec["ts_recv"]),
        "ts_event": _ts(rec["ts_event"]),
        "record_index": _col(np.asarray(index, np.int64)),
        "instrument_id": _col(rec["instrument_id"]),
        "publisher_id": _col(rec["publisher_id"]),
        "sequence": _col(rec["sequence"]),
        "symbol": _symbols_for(rec["instrument_id"], symbols),
    }


def _float_px(px: np.ndarray) -> np.ndarray:
    out = px.astype(np.float64)
    out /= FIXED_PRICE_SCALE
    out[px == UNDEF_PRICE] = np.nan
    return out


def _records_columns(rec: np.ndarray, index: np.ndarray, symbols: dict[int, str]) -> dict:
    """Columns of the records ``rec`` whose positions in the source are ``index``."""
    cols = _common_columns(rec, index, symbols)
    cols.update({
        "rtype": _col(rec["rtype"]),
        "channel_id": _col(rec["channel_id"]),
        "action": _byte_column(rec["action"]),
        "side": _byte_column(rec["side"]),
        "price": _col(_float_px(rec["price"])),
        "price_fixed": _col(rec["price"]),
        "size": _col(rec["size"]),
        "order_id": _col(rec["order_id"]),
        "flags": _col(rec["flags"]),
        "ts_in_delta": _col(rec["ts_in_delta"]),
    })
    return cols


def _trades_columns(rec: np.ndarray, index: np.ndarray, symbols: dict[int, str]) -> dict:
    cols = _common_columns(rec, index, symbols)
    cols.update({
        "price": _col(_float_px(rec["price"])),
        "price_fixed": _col(rec["price"]),
        "size": _col(rec["size"]),
        "side": _byte_column(rec["side"]),
        "order_id": _col(rec["order_id"]),
        "flags": _col(rec["flags"]),
    })
    return cols


def book_columns(fr: BookFrames, rows: np.ndarray | slice | None, rec: np.ndarray,
                 levels: int, symbols: dict[int, str], *, fixed: bool = True,
                 ts_bin: np.ndarray | None = None) -> dict:
    """Arrow columns of book states ``rows`` of ``fr`` (positions or a slice; all when
    None), whose F_LAST records are ``rec``: Databento MBP naming, float prices (NaN =
    empty level), sizes and counts; with ``fixed`` also ``<side>_px_<k>_fixed`` (exact
    int64, 1e-9)."""
    cols = _common_columns(rec, fr.index if rows is None else fr.index[rows], symbols)
    if ts_bin is not None:
        cols["ts_bin"] = _ts(ts_bin)

    def pick(a: np.ndarray) -> list[np.ndarray]:
        """One array per level (zero-copy views of column-major kernel output)."""
        a = a if rows is None else a[rows]
        if a.flags.c_contiguous and a.shape[1] > 1:  # row-major: one transpose
            a = np.ascontiguousarray(a[:, :levels].T).T
        return [a[:, k] for k in range(levels)]

    sides = []
    for side in ("bid", "ask"):
        px = pick(getattr(fr, f"{side}_px"))
        if px and px[0].dtype.kind == "f":  # the kernel wrote float prices already
            if fixed:
                raise StoreError("book_columns(fixed=True) needs int64 fixed-point prices")
            pxf = px
        else:
            pxf = [_float_px(p) for p in px]
        sides.append((side, px, pxf, pick(getattr(fr, f"{side}_sz")),
                      pick(getattr(fr, f"{side}_ct"))))
    for k in range(levels):
        for side, _, pxf, _, _ in sides:
            cols[f"{side}_px_{k:02d}"] = _col(pxf[k])
        for side, _, _, sz, _ in sides:
            cols[f"{side}_sz_{k:02d}"] = _col(sz[k])
        for side, _, _, _, ct in sides:
            cols[f"{side}_ct_{k:02d}"] = _col(ct[k])
    if fixed:
        for k in range(levels):
            for side, px, _, _, _ in sides:
                cols[f"{side}_px_{k:02d}_fixed"] = _col(px[k])
    cross = fr.cross if rows is None else fr.cross[rows]
    cols["crossed"] = _col(cross == CROSS_CROSSED)
    cols["locked"] = _col(cross == CROSS_LOCKED)
    return cols


# --------------------------------------------------------------------------- manifest


def _manifest_path(out: Path) -> Path:
    return out / MANIFEST


def _read_manifest(out: Path) -> dict | None:
    try:
        text = _manifest_path(out).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the store manifest {_manifest_path(out)}: "
                         f"{exc.strerror}") from None
    try:
        m = json.loads(text)
        if m.get("format") != _FORMAT_VERSION:
            raise ValueError(f"format {m.get('format')!r}")
    except (ValueError, AttributeError) as exc:
        raise StoreError(f"{_manifest_path(out)} is not an mbo_lab store manifest ({exc}); "
                         "export into another folder.") from None
    return m


def _new_manifest() -> dict:
    return {"format": _FORMAT_VERSION, "generation": 0, "sources": {}}


def _write_manifest(out: Path, m: dict) -> None:
    path = _manifest_path(out)
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(m, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(out)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(out: Path):
    """Exclusive lock of the store (commits queue; readers never lock)."""
    import fcntl

    fd = os.open(out / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _crash_point(step: str) -> None:
    """Test hook: ``MBO_LAB_TEST_STORE_CRASH_AT=<step>`` kills the process (SIGKILL) there."""
    if os.environ.get(_CRASH_ENV) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _listed(m: dict) -> set[str]:
    out: set[str] = set()
    for src in m["sources"].values():
        for fs in src["files"].values():
            out.update(fs)
    return out


def _gc(out: Path, m: dict) -> int:
    """Remove part files that the manifest does not list (left by killed exports)."""
    keep = _listed(m)
    removed = 0
    for table in TABLES:
        tdir = out / table
        if not tdir.is_dir():
            continue
        for f in tdir.glob("date=*/part-*.parquet"):
            rel = f.relative_to(out).as_posix()
            if rel not in keep and _PART_RE.match(f.name):
                f.unlink(missing_ok=True)
                removed += 1
        _prune_empty(tdir)
    return removed


def _prune_empty(tdir: Path) -> None:
    for d in tdir.glob("date=*"):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty
    with contextlib.suppress(OSError):
        tdir.rmdir()


def _layout_conflict(m: dict | None, key: str, meta: dict[str, Any]) -> str | None:
    if m is None or meta.get("levels") is None:
        return None
    for k, src in m["sources"].items():
        old = src.get("mbp_layout")
        if k == key or not old or not src["files"].get("mbp"):
            continue
        for f in ("levels", "grid"):
            if old.get(f) != meta.get(f):
                return (f"holds mbp with {f}={old.get(f)!r} (from {src['source']}), this "
                        f"export has {f}={meta.get(f)!r}; one folder keeps one layout. "
                        "Export into another out_dir or delete the folder first.")
    return None


def _legacy_check(out: Path) -> None:
    if _manifest_path(out).exists():
        return
    for table in TABLES:
        if (out / table).is_dir() and any((out / table).rglob("*.parquet")):
            raise StoreError(
                f"{out} holds Parquet files but no {MANIFEST} (written by an older mbo_lab or "
                "another program); export into a new folder or delete that one first.")


# --------------------------------------------------------------------------- staging


def _clean_stale_staging(root: Path) -> None:
    """Remove staging folders left by dead exports of this host (name host-pid-uuid)."""
    host = socket.gethostname()
    if not root.is_dir():
        return
    for d in root.iterdir():
        parts = d.name.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)


class _Staging:
    """Parquet files of one export under ``out_dir/.staging/<run>/``, then the commit."""

    def __init__(self, out_dir: Path, meta: dict[str, Any], key: str, source: str):
        self.out_dir = out_dir
        root = out_dir / _STAGING
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(root)
        self.run = f"{time.time_ns() // 1000:x}-{uuid.uuid4().hex[:8]}"
        self.dir = root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir()
        self.meta = meta
        self.key = key
        self.source = source
        self.writers: dict[tuple[str, str], Any] = {}
        self.part_no: dict[tuple[str, str], int] = {}
        self.groups: dict[tuple[str, str], int] = {}  # row groups written per (table, day)
        self.staged: list[tuple[str, str, Path]] = []  # (table, day, staged file)
        self.rows: dict[str, int] = {}
        self.schemas: dict[str, Any] = {}
        self.committed = False
        self.replaced = False

    def write(self, table: str, build, ts_recv: np.ndarray, iid: np.ndarray,
              time_ordered: bool = True) -> None:
        """Write ``len(ts_recv)`` rows into the file of their UTC day, clustered by
        instrument. ``build(rows)`` returns the Arrow columns (dict or Table) of the given
        row positions; it is called per row group (at most ``ROW_GROUP_ROWS`` rows), so
        the temporary columns stay small whatever the chunk size. ``time_ordered``: no
        later call brings rows of an earlier day (their files can close); False for rows
        held back across chunks (the grid sampler)."""
        pa = _pa()
        import pyarrow.parquet as pq

        n = len(ts_recv)
        if n == 0:
            return
        day = (np.asarray(ts_recv, np.uint64) // np.uint64(_NS_PER_DAY)).astype(np.int64)
        key = (day << 32) | np.asarray(iid, np.int64)
        if n > 1 and not (key[1:] >= key[:-1]).all():
            order = np.argsort(key, kind="stable")  # by day, instrument; source order kept
            key = key[order]
        else:
            order = np.arange(n)
        days = key >> 32
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(days)) + 1, [n]))
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            d = str(np.datetime64(int(days[lo]), "D"))
            wkey = (table, d)
            for slo in range(lo, hi, ROW_GROUP_ROWS):
                cols = build(order[slo: min(hi, slo + ROW_GROUP_ROWS)])
                tbl = cols if isinstance(cols, pa.Table) else pa.table(cols)
                if table not in self.schemas:
                    meta = dict(self.meta, table=table)
                    self.schemas[table] = tbl.schema.with_metadata(
                        {"mbo_lab": json.dumps(meta, default=str)})
                schema = self.schemas[table]
                if tbl.schema != schema:
                    tbl = tbl.cast(schema)
                writer = self.writers.get(wkey)
                if writer is None:
                    if len(self.writers) >= _MAX_OPEN_WRITERS:
                        self._close_writers()
                    no = self.part_no.get(wkey, 0)
                    self.part_no[wkey] = no + 1
                    path = self.dir / table / f"date={d}" / f"{no:05d}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    opts = (parquet_options(schema.names) if table in ("bbo", "mbp")
                            else STORE_PARQUET)
                    writer = pq.ParquetWriter(path, schema, **opts)
                    self.writers[wkey] = writer
                    self.staged.append((table, d, path))
                writer.write_table(tbl, row_group_size=ROW_GROUP_ROWS)
                groups = self.groups[wkey] = self.groups.get(wkey, 0) + 1
                if groups % _MAX_FILE_ROW_GROUPS == 0:  # its footer metadata stays bounded
                    self.writers.pop(wkey).close()
            # an earlier day of this table gets no more rows in a time-ordered source:
            # close its file (the metadata of its row groups leaves memory)
            if time_ordered:
                for old in [k for k in self.writers if k[0] == table and k[1] < d]:
                    self.writers.pop(old).close()
        self.rows[table] = self.rows.get(table, 0) + n

    def _close_writers(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()

    def commit(self, tables_written: Sequence[str], summary: dict[str, Any]
               ) -> dict[str, list[str]]:
        """Move the staged files into place and switch the manifest (one atomic step)."""
        self._close_writers()
        out = self.out_dir
        _crash_point("before-lock")
        with _locked(out):
            m = _read_manifest(out)
            if m is None:
                _legacy_check(out)
                m = _new_manifest()
            conflict = _layout_conflict(m, self.key, self.meta)
            if conflict:
                raise StoreError(f"{out} {conflict}")
            _gc(out, m)
            gen = int(m["generation"]) + 1
            files: dict[str, list[str]] = {t: [] for t in tables_written}
            seq: dict[str, int] = {}
            for i, (table, d, staged) in enumerate(self.staged):
                n = seq.get(table, 0)
                seq[table] = n + 1
                rel = f"{table}/date={d}/part-{gen:x}-{self.run.split('-')[1]}-{n:05d}.parquet"
                dest = out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, dest)
                files.setdefault(table, []).append(rel)
                if i == 0:
                    _crash_point("moving")
            _crash_point("before-manifest")
            old = m["sources"].get(self.key)
            self.replaced = old is not None
            m["generation"] = gen
            m["sources"][self.key] = {
                "source": self.source,
                "generation": gen,
                "written": pd.Timestamp.now(tz="UTC").isoformat(),
                "records": summary.get("records"),
                "mbp_layout": ({"levels": self.meta["levels"], "grid": self.meta["grid"]}
                               if "mbp" in tables_written else None),
                "rows": {t: self.rows.get(t, 0) for t in tables_written},
                "files": files,
            }
            _write_manifest(out, m)  # <- the switch
            self.committed = True
            _crash_point("after-manifest")
            if old is not None:
                keep = _listed(m)
                for fs in old["files"].values():
                    for rel in fs:
                        if rel not in keep:
                            (out / rel).unlink(missing_ok=True)
                for table in TABLES:
                    if (out / table).is_dir():
                        _prune_empty(out / table)
        shutil.rmtree(self.dir, ignore_errors=True)
        return {t: [str(out / r) for r in fs] for t, fs in files.items()}

    def abort(self) -> None:
        for w in self.writers.values():
            with contextlib.suppress(Exception):
                w.close()
        self.writers.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- grid sampling


class _ChunkBook:
    """Applies chunks with ``eng``; the Numba engine writes each chunk's book states into
    one buffer reused for every chunk (``chunk_records`` states: no F_LAST record more than
    records; rows never written stay untouched virtual memory), so memory does not follow
    the input. The frames of a chunk are valid until the next :meth:`apply`."""

    def __init__(self, eng, levels: int, chunk_records: int):
        self.eng = eng
        self.levels = levels
        self.chunk_records = chunk_records
        self.buf = None

    def apply(self, recs: np.ndarray, base: int) -> BookFrames:
        from .book.engine import NumbaEngine, _readonly
        from .book.frames import FrameBuffer

        if not isinstance(self.eng, NumbaEngine):
            return self.eng.apply(recs, base_index=base)
        if self.buf is None or self.buf.capacity < len(recs):
            self.buf = FrameBuffer(max(self.chunk_records, len(recs), 1), self.levels,
                                   column_major=True)
        self.buf, n, _, _ = self.eng.run(_readonly(recs), self.buf, 0, _NO_TRADES, base)
        fr = self.buf.frames(n)
        fr.counters = self.eng.counters
        return fr


_NO_TRADES = np.zeros(0, np.int64)


class _GridSampler:
    """Last book state per (book, grid bin), carried across chunks (vectorised).

    The last bin of each book in a chunk may go on in the next chunk, so its row is held
    back (``pending``, one row per book at most) until a later state of that book falls
    into another bin, or the end.
    """

    def __init__(self, grid_ns: int):
        self.grid_ns = np.uint64(grid_ns)
        self.pending = None  # arrow Table of held rows
        self.p_key = np.zeros(0, np.int64)
        self.p_bin = np.zeros(0, np.uint64)
        self.p_ts = np.zeros(0, np.uint64)

    def step(self, fr: BookFrames, rec: np.ndarray, levels: int, symbols: dict[int, str]):
        """Feed one chunk's states; returns ``(table, ts_recv)`` of the final rows."""
        pa = _pa()
        bins = rec["ts_recv"] // self.grid_ns * self.grid_ns
        key = (rec["instrument_id"].astype(np.int64) << 16) | rec["publisher_id"]
        n = len(key)
        if n:  # candidates: the last state of each (book, bin) run inside this chunk
            order = np.argsort(key, kind="stable")
            k, b = key[order], bins[order]
            last = np.ones(n, bool)
            last[:-1] = (k[1:] != k[:-1]) | (b[1:] != b[:-1])
            cand = np.sort(order[last])
        else:
            cand = np.zeros(0, np.int64)
        cols = book_columns(fr, cand, rec[cand], levels, symbols, ts_bin=bins[cand])
        new = pa.table(cols)
        all_tbl = new if self.pending is None else pa.concat_tables([self.pending, new])
        ck = np.concatenate([self.p_key, key[cand]])
        cb = np.concatenate([self.p_bin, bins[cand]])
        cts = np.concatenate([self.p_ts, rec["ts_recv"][cand]])
        m = len(ck)
        if m == 0:
            return None, None
        order = np.argsort(ck, kind="stable")  # pending rows precede the chunk's (time)
        k, b = ck[order], cb[order]
        last_group = np.ones(m, bool)
        last_group[:-1] = (k[1:] != k[:-1]) | (b[1:] != b[:-1])
        last_book = np.ones(m, bool)
        last_book[:-1] = k[1:] != k[:-1]
        emit = np.sort(order[last_group & ~last_book])
        held = np.sort(order[last_book])
        self.pending = all_tbl.take(pa.array(held)).combine_chunks()
        self.p_key, self.p_bin, self.p_ts = ck[held], cb[held], cts[held]
        if not len(emit):
            return None, None
        return all_tbl.take(pa.array(emit)), cts[emit]

    def flush(self):
        if self.pending is None or self.pending.num_rows == 0:
            return None, None
        tbl, ts = self.pending, self.p_ts
        self.pending = None
        return tbl, ts


class _ChangeFilter:
    """Keeps a book state only when its published top-N (prices, sizes, counts, cross)
    differs from that book's previous state (so from its previous kept one), across
    chunks: the ``changes_only`` rule of :func:`mbo_lab.mbp`."""

    def __init__(self, levels: int):
        self.levels = levels
        self.last: dict[int, bytes] = {}  # book key -> values of its last state

    def keep(self, fr: BookFrames, iid: np.ndarray, pub: np.ndarray) -> np.ndarray:
        n = len(fr)
        if n == 0:
            return np.zeros(0, np.int64)
        L = self.levels
        vals = np.concatenate([np.asarray(getattr(fr, a))[:, :L].astype(np.int64, copy=False)
                               for a in ("bid_px", "ask_px", "bid_sz", "ask_sz", "bid_ct",
                                         "ask_ct")] +
                              [fr.cross.astype(np.int64)[:, None]], axis=1)
        row = np.ascontiguousarray(vals).view(np.dtype((np.void, vals.shape[1] * 8))).ravel()
        key = (iid.astype(np.int64) << 16) | pub
        order = np.argsort(key, kind="stable")
        k, r = key[order], row[order]
        same = k[1:] == k[:-1]
        changed = np.ones(n, bool)
        changed[1:] = ~(same & (r[1:] == r[:-1]))
        for f in np.flatnonzero(np.r_[True, ~same]).tolist():  # first state of each book
            if self.last.get(int(k[f])) == r[f].tobytes():
                changed[f] = False
        for j in np.flatnonzero(np.r_[~same, True]).tolist():  # last state of each book
            self.last[int(k[j])] = r[j].tobytes()
        return np.sort(order[changed])


# --------------------------------------------------------------------------- export


def export(source: Source, out_dir: str | os.PathLike, levels: int = 10,
           grid: str | None = None, what: Sequence[str] = TABLES, *,
           engine: str | None = None, chunk_records: int | None = None,
           symbols: dict[int, str] | None = None, progress: bool | None = None,
           name: str | None = None, changes_only: bool = False) -> dict[str, Any]:
    """Replay ``source`` and write Parquet tables partitioned by UTC day, in one atomic step.

    Parameters
    ----------
    source : path, MboData or MBO record array
        A ``.dbn``/``.dbn.zst`` file is streamed in chunks (memory bounded by the chunk
        size, whatever the file size); in-memory data is processed in chunks too.
    out_dir : folder of the store (created); tables go to ``out_dir/<table>/``.
    levels : int
        Levels per side of the ``mbp`` table (the ``bbo`` table always has one).
    grid : str, optional
        A pandas frequency ("100ms", "1s"): ``mbp`` holds the last state per bin per book
        instead of every F_LAST state.
    what : tables to write, any of ``"records"``, ``"bbo"``, ``"mbp"``, ``"trades"``.
    engine : ``"numba"`` (default setting) or ``"reference"``.
    chunk_records : records per chunk (default: the ``chunk_records`` setting).
    symbols : ``{instrument_id: symbol}`` for the ``symbol`` column; default: the file's
        symbol mappings (a bare record array has none: empty strings).
    progress : tqdm bar; None shows it for sources of 2M records or more.
    name : source key in the store (default: the file's resolved path, or ``"<memory>"``);
        exporting the same key again replaces all that it wrote before.
    changes_only : ``mbp`` keeps only the states whose top-``levels`` (prices, sizes,
        counts, cross) differ from the book's previous state (as :func:`mbo_lab.mbp`'s
        ``changes_only``); not combined with ``grid``.

    Returns
    -------
    dict
        ``out_dir``, ``source``, ``key``, ``replaced`` (True when an earlier export of the
        same source was replaced), ``records`` (count), ``levels``, ``grid``, ``seconds``,
        ``tables``: ``{name: {"rows": n, "partitions": [file paths]}}``, ``counters``.

    Raises
    ------
    StoreError (bad arguments, another mbp layout in the folder), OutputError (the folder
    cannot be written: read-only, full disk, a file), DataError (the input). On any error,
    the store is left exactly as it was.

    Example
    -------
    >>> export("CLX5_mbo.dbn", "store", levels=10, grid="1s")["tables"]["bbo"]["rows"]  # doctest: +SKIP
    32053
    """
    what = (what,) if isinstance(what, str) else tuple(what)
    symbols_arg = symbols
    bad = [w for w in what if w not in TABLES]
    if bad or not what:
        raise StoreError(f"unknown table(s) {bad or what!r}; choose from {TABLES}")
    if not isinstance(levels, (int, np.integer)) or levels < 1:
        raise StoreError(f"levels must be an integer >= 1, got {levels!r}")
    grid_ns = None
    if grid is not None:
        try:
            grid_ns = int(pd.Timedelta(grid).value)
        except ValueError as exc:
            raise StoreError(f"grid {grid!r} is not a duration such as '100ms' or '1s'") \
                from exc
        if grid_ns <= 0:
            raise StoreError(f"grid must be a positive duration, got {grid!r}")
    if changes_only and grid is not None:
        raise StoreError("changes_only and grid cannot be combined in export (yet); use one, "
                         "or mbo-lab mbp --every ... --changes-only for a single table")
    s = get_settings(engine=engine, chunk_records=chunk_records)
    from .config import check_levels

    check_levels(levels, s.chunk_records)
    out = Path(out_dir)
    stream = stream_source(source, s.chunk_records, name=name)  # input checked first
    _check_output_dir(out)
    meta = {"format": _FORMAT_VERSION, "levels": levels if "mbp" in what else None,
            "grid": grid if not changes_only else "changes_only",
            "price_scale": 1_000_000_000}
    with _locked(out):  # not while another export's commit has moved files in but not
        m0 = _read_manifest(out)  # yet written the manifest (parallel batch workers)
        if m0 is None:
            _legacy_check(out)
    conflict = _layout_conflict(m0, stream.key, meta)
    if conflict:
        raise StoreError(f"{out} {conflict}")
    book_levels = levels if "mbp" in what else 1
    need_book = "bbo" in what or "mbp" in what
    eng = make_engine(s.engine, levels=book_levels, trades=False)
    book = _ChunkBook(eng, book_levels, s.chunk_records)
    total = stream.total
    if progress is None:
        progress = total is None or total >= _PROGRESS_MIN_RECORDS
        if total is None and isinstance(source, (str, os.PathLike)):
            progress = Path(source).stat().st_size >= 64 << 20
    bar = None
    sampler = _GridSampler(grid_ns) if grid_ns else None
    changes = _ChangeFilter(levels) if changes_only and "mbp" in what else None
    try:
        stage = _Staging(out, meta, stream.key, stream.name)
    except OSError as exc:
        raise _os_error(exc, out, "the store folder") from None
    t0 = time.perf_counter()
    n_records = 0
    summary: dict[str, Any] = {}
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="rec", unit_scale=True,
                       desc=f"export {Path(stream.name).name}", leave=False)
        for chunk in stream.chunks:
            recs = chunk.records
            base = chunk.first_index
            syms = chunk.symbols or stream.symbols
            symbols = syms if symbols_arg is None else {**syms, **symbols_arg}
            n_records += len(recs)
            if "records" in what and len(recs):
                stage.write("records", lambda r, recs=recs, base=base, symbols=symbols:
                            _records_columns(recs[r], base + r, symbols),
                            recs["ts_recv"], recs["instrument_id"])
            if "trades" in what and len(recs):
                ti = np.flatnonzero(recs["action"].view(np.uint8) == ACTION_TRADE)
                tr = recs[ti]
                stage.write("trades", lambda r, tr=tr, ti=ti, base=base, symbols=symbols:
                            _trades_columns(tr[r], base + ti[r], symbols),
                            tr["ts_recv"], tr["instrument_id"])
            if need_book and len(recs):
                fr = book.apply(recs, base)  # valid until the next chunk
                local = fr.index - base
                ts_l = recs["ts_recv"][local]
                iid_l = recs["instrument_id"][local]

                def states(r, lv, fr=fr, local=local, recs=recs, symbols=symbols):
                    return book_columns(fr, r, recs[local[r]], lv, symbols)

                if "bbo" in what:
                    stage.write("bbo", lambda r: states(r, 1), ts_l, iid_l)
                if "mbp" in what and changes is not None:
                    kept = changes.keep(fr, iid_l, recs["publisher_id"][local])
                    stage.write("mbp", lambda r, kept=kept: states(kept[r], levels),
                                ts_l[kept], iid_l[kept])
                elif "mbp" in what and sampler is None:
                    stage.write("mbp", lambda r: states(r, levels), ts_l, iid_l)
                elif "mbp" in what:
                    tbl, ts = sampler.step(fr, recs[local], levels, symbols)
                    if tbl is not None:
                        _write_table(stage, "mbp", tbl, ts, time_ordered=False)
                del fr, local
            if bar is not None:
                bar.update(len(recs))
        if sampler is not None:
            tbl, ts = sampler.flush()
            if tbl is not None:
                _write_table(stage, "mbp", tbl, ts, time_ordered=False)
        summary["records"] = n_records
        partitions = stage.commit(what, summary)
    except OSError as exc:
        stage.abort()
        if stage.committed:
            raise
        raise _os_error(exc, out, "the store") from None
    except BaseException:
        stage.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    log.info("exported %s records from %s to %s in %.2f s", f"{n_records:,}", stream.name,
             out, dt)
    return {
        "out_dir": str(out),
        "source": stream.name,
        "key": stream.key,
        "replaced": stage.replaced,
        "records": n_records,
        "levels": levels,
        "grid": grid,
        "seconds": round(dt, 3),
        "tables": {t: {"rows": stage.rows.get(t, 0), "partitions": partitions.get(t, [])}
                   for t in what},
        "counters": eng.counters if need_book else {},
    }


def _write_table(stage: _Staging, table: str, tbl, ts: np.ndarray,
                 time_ordered: bool = True) -> None:
    pa = _pa()
    iid = tbl.column("instrument_id").to_numpy()
    stage.write(table, lambda r: tbl.take(pa.array(r)), ts, iid, time_ordered)


# --------------------------------------------------------------------------- reading


def tables(out_dir: str | os.PathLike) -> list[str]:
    """Names of the tables present under ``out_dir`` (per its manifest)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    m = _read_manifest(out)
    if m is None:  # a store of an older version: look at the folders
        return sorted(d.name for d in out.iterdir()
                      if d.is_dir() and not d.name.startswith((".", "_"))
                      and any(d.rglob("*.parquet")))
    return sorted({t for src in m["sources"].values() for t, fs in src["files"].items()
                   if fs})


def files(out_dir: str | os.PathLike, table: str) -> list[str]:
    """Absolute paths of the current files of ``table`` (the manifest's list).

    Pass them to other tools to read a store that may be written meanwhile, e.g.
    ``duckdb.read_parquet(files(out, "bbo"), hive_partitioning=True)`` or
    ``dask.dataframe.read_parquet(files(out, "bbo"))``.
    """
    out = Path(out_dir)
    m = _read_manifest(out) if out.is_dir() else None
    if m is None:
        path = out / table
        return sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else []
    return sorted(str(out / rel) for src in m["sources"].values()
                  for rel in src["files"].get(table, []))


def _dataset(out_dir: str | os.PathLike, table: str):
    import pyarrow as pa
    import pyarrow.dataset as ds

    paths = files(out_dir, table)
    if not paths:
        raise StoreError(
            f"no table {table!r} under {out_dir} (tables there: {tables(out_dir) or 'none'}); "
            "write it with mbo_lab.store.export(source, out_dir, what=(...))"
        )
    part = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    base = str(Path(out_dir) / table)
    if not _manifest_path(Path(out_dir)).exists():  # older layout with instrument folders
        part = ds.partitioning(pa.schema([("date", pa.string()),
                                          ("instrument_id", pa.uint32())]), flavor="hive")
    return ds.dataset(paths, format="parquet", partitioning=part, partition_base_dir=base)


def _day(value: Any) -> str:
    if isinstance(value, str) and len(value) == 10:
        return value
    if isinstance(value, _date) and not isinstance(value, pd.Timestamp):
        return value.isoformat()
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _ts_scalar(value: Any):
    pa = _pa()
    return pa.scalar(to_ns(value), type=pa.int64()).cast(pa.timestamp("ns", "UTC"))


def read(out_dir: str | os.PathLike, table: str, *, columns: Sequence[str] | None = None,
         start: Any = None, end: Any = None, **filters: Any) -> pd.DataFrame:
    """Read a table written by :func:`export` as a DataFrame indexed by ``ts_recv``.

    Reads exactly the files the store's current manifest lists (never a half-done export).

    Parameters
    ----------
    out_dir, table : the dataset folder and a table name (``records``, ``bbo``, ``mbp``,
        ``trades``).
    columns : columns to read (default all); ``ts_recv`` is always read.
    start, end : keep rows with ``start <= ts_recv < end`` (ns integers or anything
        ``pandas.Timestamp`` accepts; naive values are UTC).
    **filters : column = value or column = list of values, e.g. ``instrument_id=1001``,
        ``date="2025-01-02"``, ``side=["A", "B"]``. ``date`` prunes files; other filters
        (``instrument_id``) skip row groups by their statistics.

    Returns
    -------
    DataFrame indexed by ``ts_recv`` (``datetime64[ns, UTC]``), rows in time order (ties in
    source order), with ``instrument_id`` (uint32) and ``date`` (``"YYYY-MM-DD"``) columns.

    Example
    -------
    >>> read("store", "trades", instrument_id=1001, start="2025-01-02 14:30").head()  # doctest: +SKIP
    """
    for attempt in range(3):
        try:
            return _read(out_dir, table, columns, start, end, filters)
        except FileNotFoundError:
            if attempt == 2:  # pragma: no cover - a writer replaced files three times
                raise StoreError(f"the store {out_dir} kept changing while it was read; "
                                 "retry") from None
    raise AssertionError  # pragma: no cover


def _read(out_dir, table, columns, start, end, filters) -> pd.DataFrame:
    import pyarrow.dataset as ds

    dset = _dataset(out_dir, table)
    names = dset.schema.names
    expr = None
    for name, value in filters.items():
        if name not in names:
            raise StoreError(f"{table} has no column {name!r}; columns: {names}")
        vals = value if isinstance(value, (list, tuple, set, np.ndarray, pd.Index)) else [value]
        vals = list(vals)
        if name == "date":
            vals = [_day(v) for v in vals]
        cond = ds.field(name).isin(vals) if len(vals) != 1 else ds.field(name) == vals[0]
        expr = cond if expr is None else expr & cond
    if start is not None:
        c = ds.field("ts_recv") >= _ts_scalar(start)
        expr = c if expr is None else expr & c
    if end is not None:
        c = ds.field("ts_recv") < _ts_scalar(end)
        expr = c if expr is None else expr & c
    cols = None
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise StoreError(f"{table} has no column(s) {missing}; columns: {names}")
        cols = list(dict.fromkeys(["ts_recv", *columns,
                                   *(["record_index"] if "record_index" in names else []),
                                   "date", "instrument_id"]))
    df = dset.to_table(columns=cols, filter=expr).to_pandas()
    sort = ["ts_recv"] + (["record_index"] if "record_index" in df.columns else [])
    df = df.sort_values(sort, kind="stable")
    if columns is not None and "record_index" not in columns and "record_index" in df.columns:
        df = df.drop(columns="record_index")
    if columns is not None:  # requested columns first, then date, instrument_id
        df = df[["ts_recv"] + [c for c in dict.fromkeys([*columns, "date", "instrument_id"])
                               if c in df.columns and c != "ts_recv"]]
    return df.set_index("ts_recv")


def _ns(values: Any) -> np.ndarray:
    """Datetimes (tz-aware or naive UTC) back to uint64 ns since the epoch."""
    return pd.DatetimeIndex(values).as_unit("ns").asi8.view(np.uint64)


def _text_bytes(values: Any) -> np.ndarray:
    """One-letter strings (or ``\\xff`` escapes written by export) back to bytes."""
    vals = pd.Series(np.asarray(values, dtype=object))
    uniq = pd.unique(vals)
    table = {}
    for u in uniq:
        u = str(u)
        table[u] = (int(u[2:], 16) if len(u) == 4 and u.startswith("\\x")
                    else ord(u) if len(u) == 1 else 0)
    return vals.map(table).to_numpy(np.uint8).view("S1")


def records_from_frame(df: pd.DataFrame) -> np.ndarray:
    """MBO records (``MBO_DTYPE``) back from a ``records`` table read with :func:`read`.

    Rows are taken in ``record_index`` order; every field round-trips exactly.
    """
    if "record_index" in df.columns:
        df = df.sort_values("record_index", kind="stable")
    out = empty_records(len(df))
    out["length"] = LENGTH_MBO
    out["rtype"] = df["rtype"].to_numpy() if "rtype" in df.columns else RTYPE_MBO
    recv = df.index if df.index.name == "ts_recv" else df["ts_recv"]
    out["ts_recv"] = _ns(recv)
    out["ts_event"] = _ns(df["ts_event"])
    for name in ("publisher_id", "instrument_id", "order_id", "size", "flags", "channel_id",
                 "ts_in_delta", "sequence"):
        out[name] = df[name].to_numpy()
    out["price"] = df["price_fixed"].to_numpy()
    out["action"] = _text_bytes(df["action"])
    out["side"] = _text_bytes(df["side"])
    assert out.dtype == MBO_DTYPE
    return out


# --------------------------------------------------------------------------- parallel writer
#
# pyarrow's ParquetWriter encodes one row group at a time in one thread (Arrow C++ can
# encode columns in threads, but pyarrow 26 does not expose ArrowWriterProperties'
# use_threads). ParallelParquetWriter encodes row groups in several threads, each into a
# complete small Parquet file in memory, and appends their column chunks to one file in
# order; its footer is the row groups' metadata with their file offsets moved to where the
# chunks landed (Thrift compact protocol, the fields of parquet.thrift listed below).

_FMD_ROW_GROUPS, _FMD_NUM_ROWS = 4, 3  # FileMetaData
_RG_COLUMNS, _RG_FILE_OFFSET, _RG_ORDINAL = 1, 5, 7  # RowGroup
_CC_FILE_OFFSET, _CC_META, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX = 2, 3, 4, 6  # ColumnChunk
_CMD_OFFSETS = (9, 10, 11, 14)  # ColumnMetaData: data, index, dictionary page, bloom filter
_T_TRUE, _T_FALSE, _T_BYTE, _T_DOUBLE, _T_BINARY = 1, 2, 3, 7, 8
_T_LIST, _T_SET, _T_MAP, _T_STRUCT = 9, 10, 11, 12


class _ThriftReader:
    """Thrift compact protocol to nested lists: a struct is ``[[field id, type, value],
    ...]``, a list ``(element type, [values])``, a map ``(key type, value type, [(k, v)])``;
    doubles and bytes of bool lists are kept raw."""

    def __init__(self, data: bytes):
        self.b = data
        self.i = 0

    def _byte(self) -> int:
        v = self.b[self.i]
        self.i += 1
        return v

    def _varint(self) -> int:
        out = shift = 0
        while True:
            x = self._byte()
            out |= (x & 0x7F) << shift
            shift += 7
            if not x & 0x80:
                return out

    def _zigzag(self) -> int:
        v = self._varint()
        return (v >> 1) ^ -(v & 1)

    def value(self, t: int):
        if t in (_T_TRUE, _T_FALSE):  # inside lists: one byte
            return self._byte()
        if t == _T_BYTE:
            return self._byte()
        if t in (4, 5, 6):  # i16, i32, i64
            return self._zigzag()
        if t == _T_DOUBLE:
            self.i += 8
            return self.b[self.i - 8: self.i]
        if t == _T_BINARY:
            n = self._varint()
            self.i += n
            return self.b[self.i - n: self.i]
        if t in (_T_LIST, _T_SET):
            h = self._byte()
            n, et = h >> 4, h & 0x0F
            if n == 15:
                n = self._varint()
            return (et, [self.value(et) for _ in range(n)])
        if t == _T_MAP:
            n = self._varint()
            if n == 0:
                return (0, 0, [])
            h = self._byte()
            kt, vt = h >> 4, h & 0x0F
            return (kt, vt, [(self.value(kt), self.value(vt)) for _ in range(n)])
        if t == _T_STRUCT:
            return self.struct()
        raise StoreError(f"unexpected Thrift type {t} in a Parquet footer at byte {self.i}")

    def struct(self) -> list:
        fields, last = [], 0
        while True:
            h = self._byte()
            if h == 0:
                return fields
            t, delta = h & 0x0F, h >> 4
            fid = last + delta if delta else self._zigzag()
            last = fid
            if t in (_T_TRUE, _T_FALSE):
                fields.append([fid, t, t == _T_TRUE])
            else:
                fields.append([fid, t, self.value(t)])


def _thrift_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _thrift_value(out: bytearray, t: int, v) -> None:
    if t in (_T_TRUE, _T_FALSE, _T_BYTE):
        out.append(v & 0xFF)
    elif t in (4, 5, 6):
        _thrift_varint(out, (v << 1) ^ (v >> 63))
    elif t == _T_DOUBLE:
        out += v
    elif t == _T_BINARY:
        _thrift_varint(out, len(v))
        out += v
    elif t in (_T_LIST, _T_SET):
        et, items = v
        if len(items) < 15:
            out.append((len(items) << 4) | et)
        else:
            out.append(0xF0 | et)
            _thrift_varint(out, len(items))
        for x in items:
            if et == _T_STRUCT and isinstance(x, (bytes, bytearray)):
                out += x  # a struct serialized before
            else:
                _thrift_value(out, et, x)
    elif t == _T_MAP:
        kt, vt, pairs = v
        _thrift_varint(out, len(pairs))
        if pairs:
            out.append((kt << 4) | vt)
            for k, x in pairs:
                _thrift_value(out, kt, k)
                _thrift_value(out, vt, x)
    elif t == _T_STRUCT:
        _thrift_struct(out, v)
    else:  # pragma: no cover - the reader refuses other types
        raise StoreError(f"unexpected Thrift type {t}")


def _thrift_struct(out: bytearray, fields: list) -> None:
    last = 0
    for fid, t, v in fields:
        if t in (_T_TRUE, _T_FALSE):
            t = _T_TRUE if v else _T_FALSE
        delta = fid - last
        if 0 < delta <= 15:
            out.append((delta << 4) | t)
        else:
            out.append(t)
            _thrift_varint(out, (fid << 1) ^ (fid >> 63))
        if t not in (_T_TRUE, _T_FALSE):
            _thrift_value(out, t, v)
        last = fid
    out.append(0)


def _field(fields: list, fid: int) -> list | None:
    for f in fields:
        if f[0] == fid:
            return f
    return None


def _shift_row_group(rg: list, shift: int, ordinal: int) -> None:
    """Move the file offsets of a RowGroup struct by ``shift`` bytes; set its ordinal."""
    f = _field(rg, _RG_FILE_OFFSET)
    if f is not None:
        f[2] += shift
    f = _field(rg, _RG_ORDINAL)
    if f is not None:
        if ordinal < 2**15:
            f[2] = ordinal
        else:
            rg.remove(f)
    for cc in _field(rg, _RG_COLUMNS)[2][1]:
        for fid in (_CC_FILE_OFFSET, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX):
            f = _field(cc, fid)
            if f is not None and f[2] != 0:  # 0: not set (file_offset is deprecated)
                f[2] += shift
        meta = _field(cc, _CC_META)
        if meta is not None:
            for fid in _CMD_OFFSETS:
                f = _field(meta[2], fid)
                if f is not None:
                    f[2] += shift


def _footer(data) -> tuple[int, bytes]:
    """``(length of the column chunk bytes after the magic, footer)`` of a Parquet file."""
    mv = memoryview(data)
    n = len(mv)
    if n < 12 or bytes(mv[:4]) != b"PAR1" or bytes(mv[n - 4:]) != b"PAR1":
        raise StoreError("internal: an encoded row group is not a Parquet file")
    flen = int.from_bytes(mv[n - 8: n - 4], "little")
    return n - 8 - flen - 4, bytes(mv[n - 8 - flen: n - 8])


class ParallelParquetWriter:
    """A Parquet file whose row groups are encoded in ``threads`` threads at once.

    Each table given to :meth:`write` becomes one row group, encoded (with the
    ``ParquetWriter`` ``options``) in a worker thread into a Parquet file in memory; the
    column chunks are appended to ``path`` in the order of the calls, and :meth:`close`
    writes the footer (the row groups' own metadata, offsets moved). The result is the file
    ``ParquetWriter`` would write row group by row group, byte for byte in the chunks.

    Tables may be views of buffers the caller reuses: :meth:`wait_written` (``n``) returns
    when the first ``n`` tables are encoded (their memory may then change); :attr:`queued`
    counts the tables given. At most ``max_pending`` tables wait or are being encoded:
    :meth:`write` blocks beyond that, so the tables held stay bounded whatever the caller
    does. An error of a worker is raised by the next call.
    """

    def __init__(self, path: str | os.PathLike, schema, threads: int = 2,
                 max_pending: int = 16, **options: Any):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        pa = _pa()
        import pyarrow.parquet as pq

        if options.get("write_page_index") or options.get("bloom_filter_options"):
            raise StoreError("ParallelParquetWriter writes no page index or bloom filter "
                             "(their page offsets would need moving too)")
        self.schema = schema
        self.options = options
        sink = pa.BufferOutputStream()
        pq.ParquetWriter(sink, schema, **options).close()  # no row group: the base footer
        _, base = _footer(sink.getvalue())
        self.meta = _ThriftReader(base).struct()
        self.row_groups: list[bytes] = []  # RowGroup structs, offsets moved, serialized
        self.num_rows = 0
        self.fh = open(path, "wb")
        self.fh.write(b"PAR1")
        self.pos = 4
        self.queued = 0
        self.written = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._local = threading.local()
        try:  # returns freed pages to the OS later than mimalloc: fewer fresh-page faults
            self.pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # pragma: no cover - a pyarrow built without it
            self.pool = pa.default_memory_pool()
        self._pool = ThreadPoolExecutor(max(1, int(threads)), thread_name_prefix="mbo-lab-pq")
        self._slots = threading.BoundedSemaphore(max(1, int(max_pending)))

    def _encode(self, seq: int, tbl) -> None:
        try:
            self._encode_one(seq, tbl)
        finally:
            del tbl
            self._slots.release()

    def _encode_one(self, seq: int, tbl) -> None:
        pa = _pa()
        import pyarrow.parquet as pq

        def encode(sink, tbl) -> None:
            w = pq.ParquetWriter(sink, self.schema, memory_pool=self.pool, **self.options)
            w.write_table(tbl, row_group_size=max(1, tbl.num_rows))
            w.close()

        try:
            data = None
            mem = getattr(self._local, "buf", None)
            need = tbl.nbytes + (1 << 20)
            if mem is None or mem.size < need:  # one output buffer per thread, reused
                mem = self._local.buf = pa.allocate_buffer(need + need // 4,
                                                           memory_pool=self.pool)
            try:
                sink = pa.FixedSizeBufferWriter(mem)
                encode(sink, tbl)
                data = mem.slice(0, sink.tell())
            except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowCapacityError):
                data = None  # larger than the table: a growing buffer
            if data is None:
                sink = pa.BufferOutputStream(memory_pool=self.pool)
                encode(sink, tbl)
                data = sink.getvalue()
            body_len, footer = _footer(data)
            meta = _ThriftReader(footer).struct()
            groups = _field(meta, _FMD_ROW_GROUPS)[2][1]
            rows = _field(meta, _FMD_NUM_ROWS)[2]
            del tbl
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            with self._cond:
                self.error = self.error or exc
                self._cond.notify_all()
            return
        with self._cond:
            self._cond.wait_for(lambda: self.written == seq or self.error is not None)
            try:
                if self.error is None:
                    self.fh.write(memoryview(data)[4: 4 + body_len])
                    for rg in groups:  # kept serialized: ~0.3 KB per column chunk
                        _shift_row_group(rg, self.pos - 4, len(self.row_groups))
                        out = bytearray()
                        _thrift_struct(out, rg)
                        self.row_groups.append(bytes(out))
                    self.pos += body_len
                    self.num_rows += rows
            except BaseException as exc:  # noqa: BLE001 - e.g. a full disk
                self.error = exc
            self.written += 1
            self._cond.notify_all()

    def write(self, tbl) -> None:
        """Encode ``tbl`` as one row group (in a worker thread)."""
        if self.error is not None:
            raise self.error
        while not self._slots.acquire(timeout=0.5):  # a failed worker frees no slot soon
            if self.error is not None:
                raise self.error
        seq = self.queued
        self.queued += 1
        self._pool.submit(self._encode, seq, tbl)

    write_table = write

    def wait_written(self, n: int) -> None:
        """Wait until the first ``n`` tables are encoded and appended."""
        with self._cond:
            self._cond.wait_for(lambda: self.written >= n or self.error is not None)
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        self.wait_written(self.queued)

    def close(self) -> None:
        """Wait for every row group, write the footer and close the file."""
        try:
            self.drain()
            meta = [list(f) for f in self.meta]
            _field(meta, _FMD_NUM_ROWS)[2] = self.num_rows
            _field(meta, _FMD_ROW_GROUPS)[2] = (_T_STRUCT, self.row_groups)
            out = bytearray()
            _thrift_struct(out, meta)
            self.fh.write(out)
            self.fh.write(len(out).to_bytes(4, "little"))
            self.fh.write(b"PAR1")
        finally:
            # after an error the queued row groups are dropped, not encoded for nothing
            self._pool.shutdown(wait=True, cancel_futures=self.error is not None)
            self.fh.close()

    def abort(self) -> None:
        """Stop: pending row groups are dropped, the file is closed (the caller removes
        it)."""
        with self._cond:
            self.error = self.error or OutputError("the Parquet output was aborted")
            self._cond.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.fh.close()  # flushes buffered bytes: may fail again (disk full)
        except OSError:
            pass
