"""Batch replay on Dask: many files (one day and instrument set each) on many workers.

``mbo_lab.batch(files_or_pattern, out_dir)`` replays each file through the book kernel and
the chosen analytics inside ``dask.distributed`` workers, writing the Parquet store of
:mod:`mbo_lab.store` under ``out_dir``, and returns a :class:`BatchResult` (a per-file
report plus the written tables as Dask DataFrames).

* ``client=None`` starts a ``LocalCluster`` sized to the machine (one single-threaded worker
  process per core) and closes it afterwards; pass ``Client("tcp://scheduler:8786")`` to run
  the same call on a real cluster (every worker needs mbo_lab installed and ``out_dir`` on
  a shared file system or object store path that pyarrow can write).
* The Numba kernel is compiled (or loaded from the on-disk cache) once per worker process
  by :func:`mbo_lab.warmup` before any task, never per task.
* A failing file is reported with its error and does not stop the others.
* A file already done (same path, size, mtime and parameters) is skipped unless
  ``overwrite=True``; the marker is written only after its partitions are in place.

>>> res = mbo_lab.batch("data/*.dbn.zst", "store/")      # doctest: +SKIP
>>> res.report                                             # doctest: +SKIP
>>> res.table("bbo").groupby("instrument_id").size().compute()   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import MboLabError

__all__ = ["batch", "BatchResult", "process_file", "resolve_files"]

log = logging.getLogger(__name__)

_DONE_DIR = "_batch_done"


def resolve_files(files_or_pattern: str | os.PathLike | Iterable[str | os.PathLike]
                  ) -> list[Path]:
    """Expand a glob pattern, a folder (its ``*.dbn`` and ``*.dbn.zst``) or a list of paths."""
    if isinstance(files_or_pattern, (str, os.PathLike)):
        p = str(files_or_pattern)
        if any(ch in p for ch in "*?["):
            out = sorted(Path(x) for x in glob.glob(p, recursive=True))
        elif Path(p).is_dir():
            out = sorted(list(Path(p).glob("*.dbn")) + list(Path(p).glob("*.dbn.zst")))
        else:
            out = [Path(p)]
    else:
        out = []
        for x in files_or_pattern:
            sx = str(x)
            out.extend(resolve_files(sx) if any(ch in sx for ch in "*?[") or Path(sx).is_dir()
                       else [Path(sx)])
    if not out:
        raise MboLabError(f"no DBN files match {files_or_pattern!r}")
    return out


def _file_key(path: Path, params: dict[str, Any]) -> str:
    try:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except (OSError, RuntimeError):  # missing, or a symlink loop (checked per file later)
        ident = str(path)
    blob = ident + "|" + json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def process_file(path: str | os.PathLike, out_dir: str | os.PathLike, *, levels: int = 10,
                 grid: str | None = None, what: Sequence[str] = ("bbo", "trades"),
                 done_key: str | None = None) -> dict[str, Any]:
    """Replay one file and write its partitions (runs inside a worker; never raises).

    Returns a report row: file, status (``"ok"``/``"error"``), seconds, records, error.
    """
    from .store import export

    t0 = time.perf_counter()
    row: dict[str, Any] = {"file": str(path), "status": "ok", "seconds": 0.0,
                           "records": 0, "error": "", "worker_pid": os.getpid()}
    try:
        summary = export(path, out_dir, levels=levels, grid=grid, what=tuple(what),
                         progress=False)
        row["records"] = int(summary.get("records", 0)) if isinstance(summary, dict) else 0
        if done_key is not None:
            done = Path(out_dir) / _DONE_DIR
            done.mkdir(parents=True, exist_ok=True)
            tmp = done / f".{done_key}.tmp"
            tmp.write_text(json.dumps({"file": str(path), "records": row["records"]}))
            os.replace(tmp, done / f"{done_key}.json")
    except Exception as exc:  # reported, so the other files go on
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"
        log.debug("batch file %s failed:\n%s", path, traceback.format_exc())
    row["seconds"] = time.perf_counter() - t0
    return row


def _task(path: str, done_key: str, **kw: Any) -> dict[str, Any]:
    """``client.map`` maps positional iterables only: path and marker key go positionally."""
    return process_file(path, done_key=done_key, **kw)


def _warm_worker() -> float:
    import mbo_lab

    return mbo_lab.warmup()


@dataclass
class BatchResult:
    """What :func:`batch` did: ``report`` (one row per file) and the output folder."""

    out_dir: Path
    report: pd.DataFrame
    dashboard_link: str | None = None
    seconds: float = 0.0
    tables: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> pd.DataFrame:
        return self.report[self.report["status"] == "error"]

    def table(self, name: str = "bbo"):
        """A written table as a Dask DataFrame (``dask.dataframe.read_parquet``)."""
        import dask.dataframe as dd

        from .store import files

        paths = files(self.out_dir, name)
        if not paths:
            raise MboLabError(f"no table {name!r} under {self.out_dir}; written: {self.tables}")
        return dd.read_parquet(paths)

    def paths(self) -> list[Path]:
        """The current Parquet files of the store (its manifest's list)."""
        from .store import TABLES, files

        return sorted(Path(p) for t in TABLES for p in files(self.out_dir, t))


def batch(files_or_pattern: str | os.PathLike | Iterable[str | os.PathLike],
          out_dir: str | os.PathLike, *, client: Any = None, levels: int = 10,
          grid: str | None = None, what: Sequence[str] = ("bbo", "trades"),
          overwrite: bool = False, n_workers: int | None = None,
          progress: bool | None = None) -> BatchResult:
    """Replay many DBN files on a Dask cluster, writing the Parquet store under ``out_dir``.

    Parameters
    ----------
    files_or_pattern : glob pattern, folder, path or list of paths
    out_dir : folder of the Parquet store (tables ``bbo``, ``trades``, ``mbp``, ``records``)
    client : ``distributed.Client`` or None (a LocalCluster sized to the machine)
    levels, grid, what : passed to :func:`mbo_lab.store.export` per file
    overwrite : redo files already done
    n_workers : workers of the LocalCluster (default: CPU count)
    progress : progress bar (default: when interactive)
    """
    from distributed import Client, LocalCluster, as_completed

    from .config import check_levels, check_positive
    from .store import _check_output_dir, check_input

    check_levels(levels)
    if n_workers is not None:
        n_workers = check_positive("n_workers", n_workers, maximum=1024)
    files = resolve_files(files_or_pattern)
    out = Path(out_dir)
    _check_output_dir(out)
    params = {"levels": levels, "grid": grid, "what": sorted(what)}
    rows: list[dict[str, Any]] = []
    good = []
    for f in files:  # inputs are checked here, before any worker opens them (no fifo hangs)
        try:
            check_input(f)
            good.append(f)
        except MboLabError as exc:
            rows.append({"file": str(f), "status": "error", "seconds": 0.0, "records": 0,
                         "error": f"{type(exc).__name__}: {exc}", "worker_pid": None})
    keys = {f: _file_key(f, params) for f in good}
    todo = [f for f in good
            if overwrite or not (out / _DONE_DIR / f"{keys[f]}.json").exists()]
    rows += [
        {"file": str(f), "status": "skipped", "seconds": 0.0, "records": None, "error": "",
         "worker_pid": None}
        for f in good if f not in todo
    ]
    t0 = time.perf_counter()
    own_cluster = None
    if client is None and todo:
        n = n_workers or os.cpu_count() or 1
        own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        client = Client(own_cluster)
    link = getattr(client, "dashboard_link", None) if client is not None else None
    if link:
        log.info("Dask dashboard: %s", link)
    try:
        if todo:
            client.run(_warm_worker)  # compile/load the kernel once per worker process
            futures = client.map(_task, [str(f) for f in todo], [keys[f] for f in todo],
                                 out_dir=str(out), levels=levels, grid=grid,
                                 what=tuple(what), pure=False)
            bar = None
            if progress or (progress is None and _interactive()):
                from tqdm.auto import tqdm

                bar = tqdm(total=len(futures), unit="file", desc="batch")
            for fut in as_completed(futures):
                try:
                    rows.append(fut.result())
                except Exception as exc:  # the worker itself died
                    rows.append({"file": "?", "status": "error", "seconds": 0.0,
                                 "records": 0, "error": f"{type(exc).__name__}: {exc}",
                                 "worker_pid": None})
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    report = pd.DataFrame(rows).sort_values("file").reset_index(drop=True)
    from .store import tables as store_tables

    tables = tuple(store_tables(out))
    res = BatchResult(out, report, link, time.perf_counter() - t0, tables)
    for _, r in res.failed.iterrows():
        log.warning("batch: %s failed: %s", r["file"], r["error"])
    return res


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:  # pragma: no cover
        return False
