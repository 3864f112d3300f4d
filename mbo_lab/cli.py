"""The ``mbo-lab`` command: a thin layer over the public API.

Verbs::

    mbo-lab demo                       book summary of the built-in demo data
    mbo-lab info FILE                  records, span, symbols, actions, unknown-order counts
    mbo-lab synth -o FILE --records N --seed S
    mbo-lab mbp FILE --levels N -o OUT.parquet|OUT.csv [--engine numba|reference]
    mbo-lab export FILE -o DIR [--levels N] [--grid 100ms]   Parquet store (records, bbo, ...)
    mbo-lab serve [FILE] [--host H] [--port P] [--token T] [--speed S]   HTTP/SSE server

Exit status: 0 on success, 2 for bad input (the message says what and what to do).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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


def cmd_info(args: argparse.Namespace) -> int:
    info = _summary(args.file, args.engine)
    if args.json:
        print(json.dumps(info, default=str, indent=2))
    else:
        _print_summary(info)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .io.synth import demo_path

    path = demo_path()
    print(f"demo data: {path} (synthetic, deterministic)")
    _print_summary(_summary(str(path), args.engine))
    print("\nNext: `jupyter lab notebooks/` for the notebooks, or "
          "`mbo-lab mbp FILE --levels 10 -o out.parquet`.")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .io.synth import write_synth

    t0 = time.perf_counter()
    path = write_synth(args.output, args.records, seed=args.seed,
                       clear_snapshot_every=args.clear_every, progress=None)
    dt = time.perf_counter() - t0
    print(f"wrote {args.records:,} records to {path} in {dt:.1f} s")
    return 0


def cmd_mbp(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .book.build import iter_frames
    from .io.dbn import load

    out = Path(args.output)
    fmt = out.suffix.lower()
    if fmt not in (".parquet", ".csv"):
        raise MboLabError(f"output {out} must end in .parquet or .csv")
    meta = load(args.file) if not str(args.file).endswith(".zst") else None
    symbols = meta.symbols if meta is not None else None
    tmp = out.with_name(out.name + ".part")
    writer = None
    rows = 0
    t0 = time.perf_counter()
    try:
        for chunk, frames in iter_frames(args.file, args.levels, args.engine,
                                         args.chunk_records, progress=None):
            if symbols is None:
                symbols = chunk.symbols
            frames.index -= chunk.first_index  # chunk-local for to_df
            df = frames.to_df(chunk.records, symbols)
            df["record_index"] += chunk.first_index
            rows += len(df)
            if fmt == ".csv":
                df.to_csv(tmp, mode="a" if writer else "w", header=writer is None)
                writer = True
            else:
                table = pa.Table.from_pandas(df, preserve_index=True)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        if fmt == ".parquet" and writer is not None:
            writer.close()
        if writer is None:  # no F_LAST at all: still write an empty, well-formed table
            from .book.frames import BookFrames

            empty = BookFrames.empty(0, args.levels).to_df(np.zeros(0, dtype=load(
                args.file).records.dtype), symbols)
            if fmt == ".csv":
                empty.to_csv(tmp)
            else:
                empty.to_parquet(tmp)
        tmp.replace(out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    print(f"wrote {rows:,} book states ({args.levels} levels) to {out} "
          f"in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .store import export

    what = tuple(w.strip() for w in args.tables.split(",") if w.strip())
    summary = export(args.file, args.output, levels=args.levels, grid=args.grid, what=what,
                     engine=args.engine, chunk_records=args.chunk_records, progress=None)
    print(f"exported {summary['records']:,} records from {summary['source']} to "
          f"{summary['out_dir']} in {summary['seconds']:.2f} s")
    for name, t in summary["tables"].items():
        print(f"  {name:<8} {t['rows']:>12,} rows in {len(t['partitions'])} partition(s)")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import batch

    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    res = batch(args.files, args.output, client=client, levels=args.levels, grid=args.grid,
                overwrite=args.overwrite, n_workers=args.workers, progress=True)
    counts = res.report["status"].value_counts().to_dict()
    print(f"batch: {len(res.report)} files in {res.seconds:.1f} s -> {res.out_dir} {counts}")
    for _, r in res.failed.iterrows():
        print(f"  failed: {r['file']}: {r['error']}")
    if res.dashboard_link:
        print(f"dashboard was: {res.dashboard_link}")
    return 0 if res.failed.empty else 1


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
               announce=announce)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mbo-lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"mbo-lab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="book summary of the built-in synthetic demo data")
    d.add_argument("--engine", default="numba", choices=["numba", "reference"])
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="records, span, symbols, actions, unknown-order counts")
    i.add_argument("file")
    i.add_argument("--engine", default="numba", choices=["numba", "reference"])
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write a deterministic synthetic MBO file")
    s.add_argument("-o", "--output", required=True, help="FILE.dbn or FILE.dbn.zst")
    s.add_argument("--records", type=int, default=1_000_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clear-every", type=int, default=None,
                   help="about every N records, a Clear + F_SNAPSHOT re-adds for one book")
    s.set_defaults(func=cmd_synth)

    m = sub.add_parser("mbp", help="MBP-N table at every F_LAST to Parquet or CSV")
    m.add_argument("file")
    m.add_argument("--levels", type=int, default=10)
    m.add_argument("-o", "--output", required=True, help="OUT.parquet or OUT.csv")
    m.add_argument("--engine", default=None, choices=["numba", "reference"])
    m.add_argument("--chunk-records", type=int, default=None)
    m.set_defaults(func=cmd_mbp)

    ex = sub.add_parser("export", help="Parquet store partitioned by date and instrument")
    ex.add_argument("file")
    ex.add_argument("-o", "--output", required=True, help="output folder (created)")
    ex.add_argument("--levels", type=int, default=10, help="levels of the mbp table")
    ex.add_argument("--grid", default=None, help="mbp: last state per bin, e.g. 100ms")
    ex.add_argument("--tables", default="records,bbo,mbp,trades",
                    help="comma-separated subset of records,bbo,mbp,trades")
    ex.add_argument("--engine", default=None, choices=["numba", "reference"])
    ex.add_argument("--chunk-records", type=int, default=None)
    ex.set_defaults(func=cmd_export)

    bt = sub.add_parser("batch", help="replay many files on Dask into a Parquet store")
    bt.add_argument("files", nargs="+", help="files, folders or glob patterns")
    bt.add_argument("-o", "--output", required=True, help="store folder")
    bt.add_argument("--levels", type=int, default=10)
    bt.add_argument("--grid", default=None, help="MBP time grid, e.g. 100ms")
    bt.add_argument("--workers", type=int, default=None, help="LocalCluster workers")
    bt.add_argument("--scheduler", default=None, help="tcp://host:8786 of a running cluster")
    bt.add_argument("--overwrite", action="store_true", help="redo files already done")
    bt.set_defaults(func=cmd_batch)

    sv = sub.add_parser("serve", help="serve a replay over HTTP/SSE (demo data without FILE)")
    sv.add_argument("file", nargs="?", default=None)
    sv.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    sv.add_argument("--token", default=None, help="API token (default: MBO_LAB_TOKEN or "
                    "generated)")
    sv.add_argument("--speed", default="1", help="replay speed, 0.1..1000 or 'max'")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MboLabError as exc:
        print(f"mbo-lab: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `mbo-lab info f | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
