"""Parquet datasets of records, BBO, MBP-N book states and trades, partitioned by day and instrument.

:func:`export` replays a source (DBN path, :class:`~mbo_lab.io.dbn.MboData` or an MBO record
array) chunk by chunk through a book engine and writes, under ``out_dir``, one Hive-style
dataset per table::

    out_dir/records/date=2025-01-02/instrument_id=1001/part-00000.parquet
    out_dir/bbo/...     out_dir/mbp/...     out_dir/trades/...

Tables (every row carries ``ts_recv`` and ``ts_event`` as ``timestamp[ns, UTC]``, exact ns,
``record_index`` = position of the row's record in the source, ``publisher_id`` and
``symbol``; ``date`` (UTC day of ``ts_recv``) and ``instrument_id`` are the partition keys):

``records``
    every MBO record, decoded: ``action``/``side`` as one-letter strings, ``price`` as float
    (currency units, NaN for ``UNDEF_PRICE``) **and** ``price_fixed`` (exact int64, 1e-9
    units, ``UNDEF_PRICE`` kept), ``size``, ``order_id`` (uint64), ``flags``, ``sequence``, ...
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

Files are plain Parquet (zstd): ``pandas.read_parquet(out_dir / "bbo")``,
``duckdb.sql("select * from read_parquet('out/bbo/**/*.parquet', hive_partitioning=true)")``
and ``dask.dataframe.read_parquet`` read them as they are; :func:`read` adds filters and
typed partition columns.

Re-running is safe: every partition is first written under ``out_dir/.staging/`` and only
when the whole export succeeded is each partition swapped into place (Linux
``renameat2(RENAME_EXCHANGE)``, else two renames), replacing the previous content of that
partition. Readers never see a half-written partition. The unit of replacement is the
partition: a second source covering the same UTC day and instrument replaces the first
one's rows (export one file per day, as Databento delivers them).

>>> summary = export(mbo_lab.demo_path(), "store/", levels=5, grid="100ms")   # doctest: +SKIP
>>> read("store/", "bbo", instrument_id=1001).head()                          # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import date as _date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .book.build import Source, as_data
from .book.engine import make_engine
from .book.frames import CROSS_CROSSED, CROSS_LOCKED, BookFrames
from .config import get_settings
from .errors import MboLabError
from .io.dbn import MboData, iter_chunks
from .io.records import (
    ACTION_TRADE,
    LENGTH_MBO,
    MBO_DTYPE,
    RTYPE_MBO,
    empty_records,
    ns_to_datetime,
    px_to_float,
)

__all__ = ["export", "read", "records_from_frame", "tables", "StoreError", "TABLES"]

log = logging.getLogger(__name__)

#: Tables :func:`export` can write.
TABLES = ("records", "bbo", "mbp", "trades")

_STAGING = ".staging"
_NS_PER_DAY = 86_400_000_000_000
_MAX_OPEN_WRITERS = 64
_PROGRESS_MIN_RECORDS = 2_000_000
_FORMAT_VERSION = 1


class StoreError(MboLabError):
    """A Parquet store could not be written or read (bad arguments, missing table)."""


# --------------------------------------------------------------------------- arrow columns


def _pa():
    import pyarrow as pa

    return pa


def _ts(ns: np.ndarray):
    """uint64 ns -> arrow timestamp[ns, UTC] (via the one time helper)."""
    pa = _pa()
    return pa.array(ns_to_datetime(ns), type=pa.timestamp("ns", tz="UTC"))


def _symbols_for(iids: np.ndarray, symbols: dict[int, str]) -> np.ndarray:
    if len(iids) == 0:
        return np.zeros(0, dtype=object)
    uniq, inv = np.unique(iids, return_inverse=True)
    return np.array([symbols.get(int(u), "") for u in uniq], dtype=object)[inv]


def _common_columns(rec: np.ndarray, index: np.ndarray, symbols: dict[int, str]) -> dict:
    pa = _pa()
    return {
        "ts_recv": _ts(rec["ts_recv"]),
        "ts_event": _ts(rec["ts_event"]),
        "record_index": pa.array(np.asarray(index, np.int64)),
        "publisher_id": pa.array(rec["publisher_id"]),
        "sequence": pa.array(rec["sequence"]),
        "symbol": pa.array(_symbols_for(rec["instrument_id"], symbols), type=pa.string()),
    }


def _records_columns(rec: np.ndarray, first_index: int, symbols: dict[int, str]) -> dict:
    pa = _pa()
    cols = _common_columns(rec, first_index + np.arange(len(rec), dtype=np.int64), symbols)
    cols.update({
        "rtype": pa.array(rec["rtype"]),
        "channel_id": pa.array(rec["channel_id"]),
        "action": pa.array(rec["action"].astype("U1"), type=pa.string()),
        "side": pa.array(rec["side"].astype("U1"), type=pa.string()),
        "price": pa.array(px_to_float(rec["price"])),
        "price_fixed": pa.array(rec["price"]),
        "size": pa.array(rec["size"]),
        "order_id": pa.array(rec["order_id"]),
        "flags": pa.array(rec["flags"]),
        "ts_in_delta": pa.array(rec["ts_in_delta"]),
    })
    return cols


def _trades_columns(rec: np.ndarray, index: np.ndarray, symbols: dict[int, str]) -> dict:
    pa = _pa()
    cols = _common_columns(rec, index, symbols)
    cols.update({
        "price": pa.array(px_to_float(rec["price"])),
        "price_fixed": pa.array(rec["price"]),
        "size": pa.array(rec["size"]),
        "side": pa.array(rec["side"].astype("U1"), type=pa.string()),
        "order_id": pa.array(rec["order_id"]),
        "flags": pa.array(rec["flags"]),
    })
    return cols


def _book_columns(fr: BookFrames, rows: np.ndarray, rec: np.ndarray, levels: int,
                  symbols: dict[int, str], ts_bin: np.ndarray | None = None) -> dict:
    """Columns of book states ``rows`` of ``fr`` (their F_LAST records are ``rec``)."""
    pa = _pa()
    cols = _common_columns(rec, fr.index[rows], symbols)
    if ts_bin is not None:
        cols["ts_bin"] = _ts(ts_bin)
    sides = (("bid", fr.bid_px, fr.bid_sz, fr.bid_ct), ("ask", fr.ask_px, fr.ask_sz, fr.ask_ct))
    for k in range(levels):
        for side, px, _, _ in sides:
            cols[f"{side}_px_{k:02d}"] = pa.array(px_to_float(px[rows, k]))
        for side, _, sz, _ in sides:
            cols[f"{side}_sz_{k:02d}"] = pa.array(np.ascontiguousarray(sz[rows, k]))
        for side, _, _, ct in sides:
            cols[f"{side}_ct_{k:02d}"] = pa.array(np.ascontiguousarray(ct[rows, k]))
    for k in range(levels):
        for side, px, _, _ in sides:
            cols[f"{side}_px_{k:02d}_fixed"] = pa.array(np.ascontiguousarray(px[rows, k]))
    cross = fr.cross[rows]
    cols["crossed"] = pa.array(cross == CROSS_CROSSED)
    cols["locked"] = pa.array(cross == CROSS_LOCKED)
    return cols


# --------------------------------------------------------------------------- staging


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_dir(new: Path, final: Path, trash: Path) -> None:
    """Put directory ``new`` at ``final``, replacing what is there, never half-written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        try:
            os.rename(new, final)
            return
        except OSError:
            if not final.exists():
                raise
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old content
        return
    os.rename(final, trash)
    os.rename(new, final)
    shutil.rmtree(trash, ignore_errors=True)


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
    """Parquet part files of one export, written under ``out_dir/.staging/<run>/``."""

    def __init__(self, out_dir: Path, meta: dict[str, Any]):
        self.out_dir = out_dir
        root = out_dir / _STAGING
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(root)
        self.dir = root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir()
        self.meta = meta
        self.writers: dict[tuple[str, str, int], Any] = {}
        self.part_no: dict[tuple[str, str, int], int] = {}
        self.rows: dict[str, int] = {}
        self.schemas: dict[str, Any] = {}

    def _partition(self, table: str, day: str, iid: int) -> Path:
        return Path(table) / f"date={day}" / f"instrument_id={iid}"

    def write(self, table: str, columns: dict, day_ns: np.ndarray, iid: np.ndarray) -> None:
        """Write rows, split into (UTC day, instrument) partitions."""
        pa = _pa()
        import pyarrow.parquet as pq

        n = len(iid)
        if n == 0:
            return
        tbl = pa.table(columns)
        if table not in self.schemas:
            meta = dict(self.meta, table=table)
            self.schemas[table] = tbl.schema.with_metadata(
                {"mbo_lab": json.dumps(meta, default=str)})
        schema = self.schemas[table]
        day = (np.asarray(day_ns, np.uint64) // np.uint64(_NS_PER_DAY)).astype(np.int64)
        key = (day << 32) | np.asarray(iid, np.int64)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(sk)) + 1, [n]))
        tbl = tbl.take(pa.array(order))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            k = int(sk[lo])
            d = str(np.datetime64(k >> 32, "D"))
            i = k & 0xFFFFFFFF
            wkey = (table, d, i)
            writer = self.writers.get(wkey)
            if writer is None:
                if len(self.writers) >= _MAX_OPEN_WRITERS:
                    self._close_writers()
                no = self.part_no.get(wkey, 0)
                self.part_no[wkey] = no + 1
                path = self.dir / self._partition(table, d, i) / f"part-{no:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, schema, compression="zstd")
                self.writers[wkey] = writer
            writer.write_table(tbl.slice(int(lo), int(hi - lo)))
        self.rows[table] = self.rows.get(table, 0) + n

    def _close_writers(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()

    def commit(self) -> dict[str, list[str]]:
        """Swap every staged partition into place; returns table -> partition paths."""
        self._close_writers()
        done: dict[str, list[str]] = {}
        for table, d, i in sorted(self.part_no):
            rel = self._partition(table, d, i)
            trash = self.dir / "_old" / rel
            trash.parent.mkdir(parents=True, exist_ok=True)
            _replace_dir(self.dir / rel, self.out_dir / rel, trash)
            done.setdefault(table, []).append(str(self.out_dir / rel))
        shutil.rmtree(self.dir, ignore_errors=True)
        return done

    def abort(self) -> None:
        for w in self.writers.values():
            try:
                w.close()
            except Exception:  # pragma: no cover - best effort on the error path
                pass
        self.writers.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- grid sampling


class _GridSampler:
    """Last book state per (book, grid bin), carried across chunks.

    The last bin of each book in a chunk may go on in the next chunk, so it is held back
    (``pending``) until a later state of that book falls into another bin, or the end.
    """

    def __init__(self, grid_ns: int):
        self.grid_ns = np.uint64(grid_ns)
        #: book key -> (bin start ns, one-row columns, ts_recv ns, instrument_id)
        self.pending: dict[int, tuple[int, dict, int, int]] = {}

    def select(self, fr: BookFrames, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """Rows of ``fr`` that are final last-per-bin states, the held-back rows, and the
        bin start (ns) of every state."""
        bins = rec["ts_recv"] // self.grid_ns * self.grid_ns
        key = (rec["instrument_id"].astype(np.int64) << 16) | rec["publisher_id"]
        n = len(key)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), bins
        order = np.argsort(key, kind="stable")
        k, b = key[order], bins[order]
        same_next = np.zeros(n, bool)
        same_next[:-1] = (k[1:] == k[:-1]) & (b[1:] == b[:-1])
        last_of_group = order[~same_next]
        book_next = np.zeros(n, bool)
        book_next[:-1] = k[1:] == k[:-1]
        last_of_book = order[~book_next]
        final = np.setdiff1d(last_of_group, last_of_book, assume_unique=True)
        return np.sort(final), last_of_book, bins

    def flush_superseded(self, rec: np.ndarray, bins: np.ndarray) -> list[tuple]:
        """Pending rows whose book has a state in this chunk: emitted unless the chunk's
        first state of that book is in the same bin (then it supersedes them)."""
        if not self.pending or len(rec) == 0:
            return []
        key = (rec["instrument_id"].astype(np.int64) << 16) | rec["publisher_id"]
        uk, first = np.unique(key, return_index=True)
        out = []
        for kk, f in zip(uk.tolist(), first.tolist()):
            p = self.pending.pop(kk, None)
            if p is not None and p[0] != int(bins[f]):
                out.append(p)
        return out


def _concat_columns(parts: list[dict]) -> dict:
    pa = _pa()
    if len(parts) == 1:
        return parts[0]
    return {name: pa.concat_arrays([p[name] for p in parts]) for name in parts[0]}


def _slice_columns(cols: dict, i: int) -> dict:
    return {name: arr.slice(i, 1) for name, arr in cols.items()}


# --------------------------------------------------------------------------- export


def _chunks(source: Source, chunk_records: int) -> tuple[Iterator[MboData], int | None, str]:
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        total = None
        with open(p, "rb") as fh:
            compressed = fh.read(4) == b"\x28\xb5\x2f\xfd"
        if not compressed:
            from .io.dbn import load

            total = len(load(p))
        return iter_chunks(p, chunk_records, progress=False), total, str(p)
    data = as_data(source)

    def gen() -> Iterator[MboData]:
        for lo in range(0, len(data), chunk_records):
            yield data[lo: lo + chunk_records]

    return gen(), len(data), data.path or "<memory>"


def _check_existing(out_dir: Path, table: str, meta: dict[str, Any]) -> None:
    """Refuse to mix MBP tables of different levels / grid in one folder."""
    import pyarrow.parquet as pq

    tdir = out_dir / table
    if not tdir.is_dir():
        return
    for f in tdir.rglob("*.parquet"):
        try:
            old = json.loads(pq.read_schema(f).metadata.get(b"mbo_lab", b"{}"))
        except Exception:  # unreadable or foreign file: leave the decision to the user
            return
        for k in ("levels", "grid"):
            if k in old and old[k] != meta[k]:
                raise StoreError(
                    f"{tdir} holds {table} with {k}={old[k]!r}, this export has "
                    f"{k}={meta[k]!r}; one folder keeps one layout. Export into another "
                    f"out_dir or delete {tdir} first."
                )
        return


def export(source: Source, out_dir: str | os.PathLike, levels: int = 10,
           grid: str | None = None, what: Sequence[str] = TABLES, *,
           engine: str | None = None, chunk_records: int | None = None,
           symbols: dict[int, str] | None = None, progress: bool | None = None
           ) -> dict[str, Any]:
    """Replay ``source`` and write Parquet tables partitioned by UTC day and instrument.

    Parameters
    ----------
    source : path, MboData or MBO record array
        A ``.dbn``/``.dbn.zst`` file is streamed in chunks (memory bounded by the chunk
        size); in-memory data is processed in chunks too.
    out_dir : folder of the dataset (created); tables go to ``out_dir/<table>/``.
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

    Returns
    -------
    dict
        ``out_dir``, ``source``, ``records`` (count), ``levels``, ``grid``, ``seconds``,
        ``tables``: ``{name: {"rows": n, "partitions": [paths]}}``, ``counters``.

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
    if levels < 1:
        raise StoreError(f"levels must be >= 1, got {levels}")
    grid_ns = None
    if grid is not None:
        try:
            grid_ns = int(pd.Timedelta(grid).value)
        except ValueError as exc:
            raise StoreError(f"grid {grid!r} is not a duration such as '100ms' or '1s'") \
                from exc
        if grid_ns <= 0:
            raise StoreError(f"grid must be a positive duration, got {grid!r}")
    s = get_settings(engine=engine, chunk_records=chunk_records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT_VERSION, "levels": levels if "mbp" in what else None,
            "grid": grid, "price_scale": 1_000_000_000}
    if "mbp" in what:
        _check_existing(out, "mbp", meta)
    book_levels = levels if "mbp" in what else 1
    need_book = "bbo" in what or "mbp" in what
    eng = make_engine(s.engine, levels=book_levels, trades=False)
    chunks, total, name = _chunks(source, s.chunk_records)
    if progress is None:
        progress = total is None or total >= _PROGRESS_MIN_RECORDS
        if total is None and isinstance(source, (str, os.PathLike)):
            progress = Path(source).stat().st_size >= 64 << 20
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="rec", unit_scale=True, desc=f"export {Path(name).name}",
                   leave=False)
    sampler = _GridSampler(grid_ns) if grid_ns else None
    stage = _Staging(out, meta)
    t0 = time.perf_counter()
    n_records = 0
    try:
        for chunk in chunks:
            recs = chunk.records
            base = chunk.first_index
            symbols = chunk.symbols if symbols_arg is None else {**chunk.symbols,
                                                                  **symbols_arg}
            n_records += len(recs)
            if "records" in what and len(recs):
                stage.write("records", _records_columns(recs, base, symbols), recs["ts_recv"],
                            recs["instrument_id"])
            if "trades" in what and len(recs):
                ti = np.flatnonzero(recs["action"].view(np.uint8) == ACTION_TRADE)
                tr = recs[ti]
                stage.write("trades", _trades_columns(tr, base + ti, symbols), tr["ts_recv"],
                            tr["instrument_id"])
            if need_book and len(recs):
                fr = eng.apply(recs, base_index=base)
                local = fr.index - base
                rec_l = recs[local]
                allrows = np.arange(len(fr))
                if "bbo" in what:
                    stage.write("bbo", _book_columns(fr, allrows, rec_l, 1, symbols),
                                rec_l["ts_recv"], rec_l["instrument_id"])
                if "mbp" in what and sampler is None:
                    stage.write("mbp", _book_columns(fr, allrows, rec_l, levels, symbols),
                                rec_l["ts_recv"], rec_l["instrument_id"])
                elif "mbp" in what:
                    _write_grid(stage, sampler, fr, rec_l, levels, symbols)
            if bar is not None:
                bar.update(len(recs))
        if sampler is not None:
            _write_pending(stage, list(sampler.pending.values()))
            sampler.pending.clear()
        partitions = stage.commit()
    except BaseException:
        stage.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    log.info("exported %s records from %s to %s in %.2f s", f"{n_records:,}", name, out, dt)
    return {
        "out_dir": str(out),
        "source": name,
        "records": n_records,
        "levels": levels,
        "grid": grid,
        "seconds": round(dt, 3),
        "tables": {t: {"rows": stage.rows.get(t, 0), "partitions": partitions.get(t, [])}
                   for t in what},
        "counters": eng.counters if need_book else {},
    }


def _write_pending(stage: _Staging, rows: list[tuple[int, dict, int, int]]) -> None:
    if not rows:
        return
    cols = _concat_columns([r[1] for r in rows])
    ts = np.array([r[2] for r in rows], np.uint64)
    iid = np.array([r[3] for r in rows], np.uint32)
    stage.write("mbp", cols, ts, iid)


def _write_grid(stage: _Staging, sampler: _GridSampler, fr: BookFrames, rec: np.ndarray,
                levels: int, symbols: dict[int, str]) -> None:
    final, held, bins = sampler.select(fr, rec)
    _write_pending(stage, sampler.flush_superseded(rec, bins))
    if len(final):
        r = rec[final]
        stage.write("mbp", _book_columns(fr, final, r, levels, symbols, ts_bin=bins[final]),
                    r["ts_recv"], r["instrument_id"])
    if len(held):
        r = rec[held]
        cols = _book_columns(fr, held, r, levels, symbols, ts_bin=bins[held])
        for j in range(len(held)):
            bk = (int(r["instrument_id"][j]) << 16) | int(r["publisher_id"][j])
            sampler.pending[bk] = (int(bins[held[j]]), _slice_columns(cols, j),
                                   int(r["ts_recv"][j]), int(r["instrument_id"][j]))


# --------------------------------------------------------------------------- reading


def tables(out_dir: str | os.PathLike) -> list[str]:
    """Names of the tables present under ``out_dir``."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(d.name for d in out.iterdir()
                  if d.is_dir() and not d.name.startswith((".", "_"))
                  and any(d.rglob("*.parquet")))


def _dataset(out_dir: str | os.PathLike, table: str):
    import pyarrow as pa
    import pyarrow.dataset as ds

    path = Path(out_dir) / table
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        raise StoreError(
            f"no table {table!r} under {out_dir} (tables there: {tables(out_dir) or 'none'}); "
            "write it with mbo_lab.store.export(source, out_dir, what=(...))"
        )
    part = ds.partitioning(pa.schema([("date", pa.string()), ("instrument_id", pa.uint32())]),
                           flavor="hive")
    return ds.dataset(path, format="parquet", partitioning=part)


def _day(value: Any) -> str:
    if isinstance(value, str) and len(value) == 10:
        return value
    if isinstance(value, _date) and not isinstance(value, pd.Timestamp):
        return value.isoformat()
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _ts_scalar(value: Any):
    pa = _pa()
    if isinstance(value, (int, np.integer)):
        ns = int(value)
    else:
        t = pd.Timestamp(value)
        ns = int((t if t.tzinfo else t.tz_localize("UTC")).value)
    return pa.scalar(ns_to_datetime(np.array([ns], np.uint64))[0], type=pa.timestamp("ns", "UTC"))


def read(out_dir: str | os.PathLike, table: str, *, columns: Sequence[str] | None = None,
         start: Any = None, end: Any = None, **filters: Any) -> pd.DataFrame:
    """Read a table written by :func:`export` as a DataFrame indexed by ``ts_recv``.

    Parameters
    ----------
    out_dir, table : the dataset folder and a table name (``records``, ``bbo``, ``mbp``,
        ``trades``).
    columns : columns to read (default all); ``ts_recv`` is always read.
    start, end : keep rows with ``start <= ts_recv < end`` (ns integers or anything
        ``pandas.Timestamp`` accepts; naive values are UTC).
    **filters : column = value or column = list of values, e.g. ``instrument_id=1001``,
        ``date="2025-01-02"``, ``side=["A", "B"]``. Partition keys prune files.

    Returns
    -------
    DataFrame indexed by ``ts_recv`` (``datetime64[ns, UTC]``), rows in time order (ties in
    source order), with ``instrument_id`` (uint32) and ``date`` (``"YYYY-MM-DD"``) columns.

    Example
    -------
    >>> read("store", "trades", instrument_id=1001, start="2025-01-02 14:30").head()  # doctest: +SKIP
    """
    import pyarrow.dataset as ds

    dset = _dataset(out_dir, table)
    names = dset.schema.names
    expr = None
    for name, value in filters.items():
        if name not in names:
            raise StoreError(f"{table} has no column {name!r}; columns: {names}")
        vals = value if isinstance(value, (list, tuple, set, np.ndarray, pd.Index)) else [value]
        if name == "date":
            vals = [_day(v) for v in vals]
        cond = ds.field(name).isin(list(vals)) if len(vals) != 1 else \
            ds.field(name) == list(vals)[0]
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
    return df.set_index("ts_recv")


def _ns(values: Any) -> np.ndarray:
    """Datetimes (tz-aware or naive UTC) back to uint64 ns since the epoch."""
    return pd.DatetimeIndex(values).as_unit("ns").asi8.view(np.uint64)


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
    out["action"] = df["action"].to_numpy(dtype=str).astype("S1")
    out["side"] = df["side"].to_numpy(dtype=str).astype("S1")
    assert out.dtype == MBO_DTYPE
    return out
