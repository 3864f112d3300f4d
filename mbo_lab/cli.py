"""The ``mbo-lab`` command: a thin layer over the public API.

Verbs::

    mbo-lab demo                       book summary of the built-in demo data
    mbo-lab info FILE                  records, span, symbols, actions, unknown-order counts
    mbo-lab synth -o FILE --records N --seed S
    mbo-lab mbp FILE --levels N -o OUT.parquet|OUT.csv [--force] [--engine numba|reference]
    mbo-lab export FILE -o DIR [--levels N] [--grid 100ms]   Parquet store (records, bbo, ...)
    mbo-lab batch FILES... -o DIR [--workers N | --scheduler tcp://host:8786]
    mbo-lab serve [FILE] [--host H] [--port P] [--token T] [--speed S]   HTTP/SSE server
    mbo-lab lab [FILE] [--port N] [--no-browser]   JupyterLab with the dashboard

Exit status: 0 on success, 2 for bad input, arguments or output (one line says what and what
to do; nothing half-written is left), 130 after Ctrl-C, 143 after SIGTERM (partial
``OUT.part`` files and staged store files are removed). ``mbp`` and ``synth`` refuse to
replace an existing output unless ``--force``; ``export`` says whether it replaced an earlier
export of the same file. ``mbp`` and ``export`` stream: memory is bounded by
``--chunk-records`` whatever the file size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import MboLabError

log = logging.getLogger("mbo_lab.cli")


def _fmt_ts(ns: int | None) -> str:
    import pandas as pd

    return "-" if ns is None else str(pd.Timestamp(int(ns), tz="UTC"))


def _summary(path: str, engine: str) -> dict:
    """File facts plus a full book pass (counters, crossed states, final BBO per book)."""
    from .book.engine import make_engine
    from .io.dbn import load
    from .io.records import px_to_float

    data = load(path)
    s = data.summary()
    eng = make_engine(engine, levels=1)
    t0 = time.perf_counter()
    frames = eng.apply(data.records)
    dt = time.perf_counter() - t0
    books = []
    for iid, pub in _book_keys(data):
        top = eng.top(iid, pub, 1)
        books.append({
            "instrument_id": iid,
            "publisher_id": pub,
            "symbol": data.symbols.get(iid, ""),
            "bid": px_to_float(int(top.bid_px[0, 0])),
            "bid_size": int(top.bid_sz[0, 0]),
            "ask": px_to_float(int(top.ask_px[0, 0])),
            "ask_size": int(top.ask_sz[0, 0]),
        })
    return {
        "path": str(path),
        "records": s["records"],
        "dataset": s["dataset"],
        "start": str(s["start"]),
        "end": str(s["end"]),
        "symbols": s["symbols"],
        "actions": s["actions"],
        "f_last_states": len(frames),
        "crossed_states": int(np.count_nonzero(frames.cross == 2)),
        "locked_states": int(np.count_nonzero(frames.cross == 1)),
        "counters": eng.counters,
        "engine": engine,
        "engine_seconds": round(dt, 4),
        "books_at_end": books,
    }


def _book_keys(data) -> list[tuple[int, int]]:
    keys = (data.records["instrument_id"].astype(np.int64) << 16) | data.records["publisher_id"]
    return [(int(k >> 16), int(k & 0xFFFF)) for k in np.unique(keys)]


def _print_summary(info: dict) -> None:
    print(f"file        {info['path']}")
    print(f"records     {info['records']:,}  ({info['dataset']})")
    print(f"span        {info['start']} .. {info['end']}")
    print(f"symbols     {', '.join(info['symbols']) or '-'}")
    print("actions     " + ", ".join(f"{k}={v:,}" for k, v in info["actions"].items()))
    print(f"F_LAST      {info['f_last_states']:,} book states "
          f"({info['crossed_states']:,} crossed, {info['locked_states']:,} locked)")
    c = info["counters"]
    print(f"unknown     cancels={c['unknown_cancel']:,} modifies={c['unknown_modify']:,} "
          "(orders placed before the first record; cancels ignored, modifies added)")
    other = {k: v for k, v in c.items() if k not in ("unknown_cancel", "unknown_modify") and v}
    if other:
        print("anomalies   " + ", ".join(f"{k}={v:,}" for k, v in other.items()))
    print(f"engine      {info['engine']}: {info['engine_seconds']} s")
    for b in info["books_at_end"]:
        print(f"book        {b['symbol'] or b['instrument_id']}@{b['publisher_id']}: "
              f"bid {b['bid_size']} x {b['bid']}  |  ask {b['ask']} x {b['ask_size']}")


def _engine(args: argparse.Namespace) -> str:
    """``--engine``, else ``MBO_LAB_ENGINE``, else the default (the README's order)."""
    from .config import get_settings

    return get_settings(engine=getattr(args, "engine", None)).engine


def cmd_info(args: argparse.Namespace) -> int:
    info = _summary(args.file, _engine(args))
    if args.json:
        print(json.dumps(info, default=str, indent=2))
    else:
        _print_summary(info)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .io.synth import demo_path

    path = demo_path()
    print(f"demo data: {path} (synthetic, deterministic)")
    _print_summary(_summary(str(path), _engine(args)))
    print("\nNext: `mbo-lab lab` (or `make demo` in a checkout) for the dashboard notebook, or "
          "`mbo-lab mbp FILE --levels 10 -o out.parquet`.")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .config import check_positive
    from .io.synth import write_synth
    from .store import check_output_file

    records = check_positive("--records", args.records, maximum=10**10)
    check_positive("--seed", args.seed, minimum=0, maximum=2**63 - 1)
    if args.clear_every is not None:
        check_positive("--clear-every", args.clear_every)
    out, replaces = check_output_file(args.output, force=args.force,
                                      suffixes=(".dbn", ".dbn.zst"))
    t0 = time.perf_counter()
    try:
        path = write_synth(out, records, seed=args.seed,
                           clear_snapshot_every=args.clear_every, progress=None)
    except OSError as exc:
        from .store import _os_error

        raise _os_error(exc, out, "the output") from None
    dt = time.perf_counter() - t0
    note = " (replaced the existing file)" if replaces else ""
    print(f"wrote {records:,} records to {path}{note} in {dt:.1f} s")
    return 0


class _Terminated(BaseException):
    """Raised by the SIGTERM handler so cleanups (``finally``) run as for Ctrl-C."""


def _on_sigterm(signum, frame) -> None:  # pragma: no cover - exercised in a subprocess
    raise _Terminated()


def _mbp_schema(levels: int, symbols: dict[int, str]):
    """Arrow schema of the CLI's MBP table (from an empty frame, so every chunk, even one
    without any F_LAST record, has exactly these column types), with pandas metadata that
    makes ``pandas.read_parquet`` restore the ``ts_recv`` index."""
    import pyarrow as pa

    from .book.frames import BookFrames
    from .io.records import MBO_DTYPE
    from .store import book_columns

    empty = pa.table(book_columns(BookFrames.empty(0, levels), None,
                                  np.zeros(0, MBO_DTYPE), levels, symbols, fixed=False))
    pdmeta = pa.Schema.from_pandas(empty.to_pandas().set_index("ts_recv"),
                                   preserve_index=True).metadata
    return empty.schema.with_metadata({b"pandas": pdmeta[b"pandas"]})


#: ``--compression`` choices (mbo_lab.store.COMPRESSIONS; not imported to parse arguments)
_COMPRESSIONS = ("zstd", "lz4", "snappy", "none")


def _writer_threads() -> int:
    """Threads that encode Parquet row groups: the CPUs this process may use, 2..4."""
    from .book.build import _usable_cpus

    return max(2, min(4, _usable_cpus()))


def _mbp_tables(chunk, fr, levels: int, schema=None, *, rows: int | None = None,
                fixed: bool = False):
    """Arrow tables of the book states ``fr`` of ``chunk`` (an :func:`iter_frames` pair, or
    anything with ``records``, ``first_index`` and ``symbols``) as ``mbo-lab mbp`` writes
    them: one table per row group of at most ``rows`` states (default ``ROW_GROUP_ROWS``,
    128Ki), built only when the next one is asked for, with the F_LAST records' fields from
    ``fr.fields`` (else from ``chunk.records``), the columns of
    :func:`mbo_lab.store.book_columns` (``fixed``: also the exact fixed-point prices) and
    cast to ``schema`` when given and different. The tables are views of ``fr``'s
    buffers: valid while those are."""
    import pyarrow as pa

    from .store import ROW_GROUP_ROWS, book_columns

    step = ROW_GROUP_ROWS if rows is None else int(rows)
    for lo in range(0, len(fr), step):
        r = slice(lo, min(len(fr), lo + step))
        if fr.fields is not None:
            rec = {k: v[r] for k, v in fr.fields.items()}
        else:
            rec = chunk.records[fr.index[r] - chunk.first_index]
        tbl = pa.table(book_columns(fr, r, rec, levels, chunk.symbols, fixed=fixed))
        if schema is not None and tbl.schema != schema:
            tbl = tbl.cast(schema)
        yield tbl


def cmd_mbp(args: argparse.Namespace) -> int:
    from .book.build import every_ns, iter_frames
    from .config import check_levels, get_settings
    from .store import ParallelParquetWriter, check_input, check_output_file
    from .store import parquet_options as pq_options

    s = get_settings(engine=args.engine, chunk_records=args.chunk_records)
    levels = check_levels(args.levels, s.chunk_records)
    try:
        every = every_ns(args.every)
    except MboLabError as exc:
        raise MboLabError(f"--every: {exc}") from None
    sampled = every is not None or args.changes_only
    if sampled and s.engine != "numba":
        raise MboLabError("--every/--changes-only sample in the numba engine; drop "
                          "--engine reference (or MBO_LAB_ENGINE=reference)")
    out, replaces = check_output_file(args.output, force=args.force,
                                      suffixes=(".parquet", ".csv"))
    fmt = ".csv" if out.name.lower().endswith(".csv") else ".parquet"
    path = check_input(args.file)  # before anything opens it (no fifo hangs)
    tmp = out.with_name(out.name + ".part")
    writer = bg = None
    rows = 0
    t0 = time.perf_counter()
    try:
        schema = _mbp_schema(levels, {})
        if fmt == ".csv":
            import pyarrow.csv as pacsv

            writer = pacsv.CSVWriter(str(tmp), schema)
            bg = _BackgroundWriter(writer)
        else:  # row groups encoded in threads, appended in order to one file
            bg = ParallelParquetWriter(tmp, schema, threads=_writer_threads(),
                                       **pq_options(schema.names, args.compression))
        # the kernel writes column-major float prices and the records' fields into two
        # buffers reused for every chunk (nothing grows with the file): it fills one while
        # the writer threads encode the other
        frames = iter_frames(path, levels, s.engine, s.chunk_records, progress=False,
                             every=every, changes_only=args.changes_only, reuse=True,
                             price_type="float", buffers=2)
        written_by_slot: dict[int, int] = {}
        for i, (chunk, fr) in enumerate(frames):
            slot = i % 2
            for tbl in _mbp_tables(chunk, fr, levels, schema):  # row groups, built lazily
                bg.write(tbl)  # encoded in a second thread while the next slice is built
                rows += tbl.num_rows
            del fr
            written_by_slot[slot] = bg.queued
            # the next chunk goes into the other buffer: its tables must be written
            bg.wait_written(written_by_slot.get(1 - slot, 0))
        bg.close()
        writer = None
        os.replace(tmp, out)
    except OSError as exc:
        _discard(bg, writer, tmp)
        from .store import _os_error

        raise _os_error(exc, out, "the output") from None
    except BaseException:
        _discard(bg, writer, tmp)
        raise
    note = " (replaced the existing file)" if replaces else ""
    how = ("every F_LAST" if not sampled else
           ", ".join(x for x in (f"last per {args.every}" if every else "",
                                 "changes only" if args.changes_only else "") if x))
    print(f"wrote {rows:,} book states ({levels} levels, {how}) to {out}{note} "
          f"in {time.perf_counter() - t0:.2f} s")
    return 0


class _BackgroundWriter:
    """Writes Arrow tables with ``writer`` in one background thread (Parquet encoding and
    compression release the GIL). The queue holds tables that are views of the caller's
    buffers, so it costs no memory of its own; the caller bounds it by waiting before it
    reuses a buffer (:meth:`wait_written`). An error of the thread is
    raised by the next :meth:`write`, :meth:`wait_written` or by :meth:`close`."""

    def __init__(self, writer):
        import queue

        self.writer = writer
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.stopped = False
        self.queued = 0  # tables handed to write()
        self.written = 0  # tables written (or skipped after an error)
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="mbo-lab-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            tbl = self.q.get()
            try:
                if tbl is None:
                    return
                if self.error is None and not self.stopped:
                    try:
                        self.writer.write_table(tbl)
                    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                        self.error = exc
            finally:
                del tbl
                with self._cond:
                    self.written += 1
                    self._cond.notify_all()

    def wait_written(self, n: int) -> None:
        """Wait until the first ``n`` tables given to :meth:`write` are written."""
        with self._cond:
            self._cond.wait_for(lambda: self.written >= n or self.error is not None)
        if self.error is not None:
            raise self.error

    def write(self, tbl) -> None:
        if self.error is not None:
            raise self.error
        self.queued += 1
        self.q.put(tbl)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.writer.close()

    def abort(self) -> None:
        self.stopped = True
        while True:  # drop the tables not written yet
            try:
                self.q.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                break
        self.q.put(None)
        self.thread.join(timeout=60)


def _discard(bg: _BackgroundWriter | None, writer, tmp: Path) -> None:
    """Best effort on the error path: stop the writers, and always remove the partial
    output (the error being handled may be a full disk, which closing hits again)."""
    try:
        if bg is not None:
            bg.abort()
        if writer is not None:
            writer.close()
    except Exception:  # noqa: BLE001 - the original error is the one raised
        pass
    finally:
        tmp.unlink(missing_ok=True)


def cmd_export(args: argparse.Namespace) -> int:
    from .config import check_levels, get_settings
    from .store import export

    s = get_settings(engine=args.engine, chunk_records=args.chunk_records)
    check_levels(args.levels, s.chunk_records)
    what = tuple(w.strip() for w in args.tables.split(",") if w.strip())
    summary = export(args.file, args.output, levels=args.levels, grid=args.grid, what=what,
                     engine=args.engine, chunk_records=args.chunk_records, progress=None,
                     changes_only=args.changes_only)
    how = ("replaced its previous export" if summary["replaced"] else "added it")
    print(f"exported {summary['records']:,} records from {summary['source']} to "
          f"{summary['out_dir']} in {summary['seconds']:.2f} s ({how})")
    for name, t in summary["tables"].items():
        print(f"  {name:<8} {t['rows']:>12,} rows in {len(t['partitions'])} file(s)")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import batch
    from .config import check_levels, check_positive

    check_levels(args.levels)
    workers = None if args.workers is None else check_positive("--workers", args.workers,
                                                               maximum=1024)
    client = None
    if args.scheduler:
        client = _connect(args.scheduler, args.scheduler_timeout)
    try:
        res = batch(args.files, args.output, client=client, levels=args.levels,
                    grid=args.grid, overwrite=args.overwrite, n_workers=workers,
                    progress=True)
    finally:
        if client is not None:
            client.close()
    counts = res.report["status"].value_counts().to_dict()
    print(f"batch: {len(res.report)} files in {res.seconds:.1f} s -> {res.out_dir} {counts}")
    for _, r in res.failed.iterrows():
        print(f"  failed: {r['file']}: {r['error']}")
    if res.dashboard_link:
        print(f"dashboard was: {res.dashboard_link}")
    return 0 if res.failed.empty else 1


def _connect(address: str, timeout: float):
    """A ``distributed.Client`` for ``address``, or a package error within ``timeout`` s."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise MboLabError(
            f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}). Check the address (tcp://host:8786) and that "
            "the scheduler runs, or omit --scheduler to use a local cluster.") from None


def cmd_lab(args: argparse.Namespace) -> int:
    from .config import check_positive

    port = None if args.port is None else check_positive("--port", args.port,
                                                         maximum=65535)
    try:
        from . import launch
    except ImportError as exc:
        raise MboLabError(f"`mbo-lab lab` is not available in this installation ({exc}); "
                          "install the `lab` extra (pip install 'mbo_lab[lab]').") from None
    if args.file is not None and not str(args.file).endswith(".ipynb"):
        from .store import check_input

        check_input(args.file)
    return int(launch.main(args.file, port=port, open_browser=not args.no_browser) or 0)


def cmd_serve(args: argparse.Namespace) -> int:
    from .replay.session import SPEED_MAX, open_session
    from .serve import run

    try:
        speed = SPEED_MAX if args.speed == "max" else float(args.speed)
    except ValueError:
        raise MboLabError(f"--speed must be a number or 'max', got {args.speed!r}") from None
    session = open_session(args.file)

    def announce(srv) -> None:
        print(f"serving {len(session):,} records on {srv.url}")
        print(f"page:   {srv.page_url}")
        print(f"API:    {srv.url}openapi.json   (Ctrl-C stops)", flush=True)

    return run(session, host=args.host, port=args.port, token=args.token, speed=speed,
               announce=announce, token_file=args.token_file,
               allowed_hosts=args.allowed_host)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mbo-lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"mbo-lab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = p.add_subparsers(dest="cmd", required=True)
    engine_help = "book engine (default: MBO_LAB_ENGINE, else numba)"

    d = sub.add_parser("demo", help="book summary of the built-in synthetic demo data")
    d.add_argument("--engine", default=None, choices=["numba", "reference"], help=engine_help)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="records, span, symbols, actions, unknown-order counts")
    i.add_argument("file")
    i.add_argument("--engine", default=None, choices=["numba", "reference"], help=engine_help)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write a deterministic synthetic MBO file")
    s.add_argument("-o", "--output", required=True, help="FILE.dbn or FILE.dbn.zst")
    s.add_argument("--records", type=int, default=1_000_000, help="records (>= 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clear-every", type=int, default=None,
                   help="about every N records (>= 1), a Clear + F_SNAPSHOT re-adds for one "
                        "book")
    s.add_argument("-f", "--force", action="store_true", help="replace an existing output")
    s.set_defaults(func=cmd_synth)

    m = sub.add_parser("mbp", help="MBP-N table at every F_LAST to Parquet or CSV (streamed)")
    m.add_argument("file")
    m.add_argument("--levels", type=int, default=10, help="levels per side, 1..1000")
    m.add_argument("-o", "--output", required=True, help="OUT.parquet or OUT.csv")
    m.add_argument("-f", "--force", action="store_true",
                   help="replace OUT if it exists (atomically, at the end)")
    m.add_argument("--engine", default=None, choices=["numba", "reference"], help=engine_help)
    m.add_argument("--chunk-records", type=int, default=None,
                   help="records per chunk (memory is bounded by it; default 1Mi)")
    m.add_argument("--every", default=None,
                   help="keep the last state of each book per time bin (ts_recv), e.g. "
                        "100ms, 1s (sampled in the kernel)")
    m.add_argument("--changes-only", action="store_true",
                   help="keep only states whose published top-N (prices, sizes, counts, "
                        "cross) changed for that book")
    m.add_argument("--compression", default="zstd", choices=list(_COMPRESSIONS),
                   help="Parquet codec of prices, ids and times: zstd (default, level 1), "
                        "lz4, snappy or none (sizes and counts are delta bit-packed, prices "
                        "dictionary-encoded with any of them)")
    m.set_defaults(func=cmd_mbp)

    ex = sub.add_parser("export", help="Parquet store partitioned by UTC day")
    ex.add_argument("file")
    ex.add_argument("-o", "--output", required=True,
                    help="store folder (created; exporting the same file again replaces "
                         "what it wrote before)")
    ex.add_argument("--levels", type=int, default=10, help="levels of the mbp table")
    ex.add_argument("--grid", "--every", dest="grid", default=None,
                    help="mbp: last state of each book per time bin, e.g. 100ms")
    ex.add_argument("--changes-only", action="store_true",
                    help="mbp: only states whose top-N changed (not with --grid/--every)")
    ex.add_argument("--tables", default="records,bbo,mbp,trades",
                    help="comma-separated subset of records,bbo,mbp,trades")
    ex.add_argument("--engine", default=None, choices=["numba", "reference"], help=engine_help)
    ex.add_argument("--chunk-records", type=int, default=None)
    ex.set_defaults(func=cmd_export)

    bt = sub.add_parser("batch", help="replay many files on Dask into a Parquet store")
    bt.add_argument("files", nargs="+", help="files, folders or glob patterns")
    bt.add_argument("-o", "--output", required=True, help="store folder")
    bt.add_argument("--levels", type=int, default=10)
    bt.add_argument("--grid", default=None, help="MBP time grid, e.g. 100ms")
    bt.add_argument("--workers", type=int, default=None, help="LocalCluster workers (>= 1)")
    bt.add_argument("--scheduler", default=None, help="tcp://host:8786 of a running cluster")
    bt.add_argument("--scheduler-timeout", type=float, default=5.0,
                    help="seconds to wait for --scheduler (default 5)")
    bt.add_argument("--overwrite", action="store_true", help="redo files already done")
    bt.set_defaults(func=cmd_batch)

    sv = sub.add_parser("serve", help="serve a replay over HTTP/SSE (demo data without FILE)")
    sv.add_argument("file", nargs="?", default=None)
    sv.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    sv.add_argument("--token", default=None, help="API token; visible in `ps`: prefer "
                    "MBO_LAB_TOKEN or --token-file (default: those, else generated)")
    sv.add_argument("--token-file", default=None,
                    help="read the API token from this file (or MBO_LAB_TOKEN_FILE)")
    sv.add_argument("--allowed-host", action="append", default=None, metavar="HOST",
                    help="Host header to accept besides loopback names (repeatable)")
    sv.add_argument("--speed", default="1", help="replay speed, 0.1..1000 or 'max'")
    sv.set_defaults(func=cmd_serve)

    lb = sub.add_parser("lab", help="JupyterLab with the dashboard notebook (FILE optional)")
    lb.add_argument("file", nargs="?", default=None)
    lb.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    lb.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lb.set_defaults(func=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 ok, 2 bad input or output (one-line message),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); partial outputs are removed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except MboLabError as exc:
        print(f"mbo-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbo-lab: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("mbo-lab: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `mbo-lab info f | head`
        return 0
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
