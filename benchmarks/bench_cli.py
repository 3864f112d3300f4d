"""CLI streaming figures: Parquet encodings for ``mbo-lab mbp``, then time and peak RSS of
``mbo-lab mbp`` and ``mbo-lab export`` on files of several sizes.

    python benchmarks/bench_cli.py [--files F1 F2 ...] [--records 10000000] [--lock FILE]
                                   [--skip-encodings] [--skip-cli] [--export-tables T]

Files come from ``--files`` or ``MBO_LAB_BENCH_FILES`` (space separated); without them a
synthetic file of ``--records`` records is generated in a temporary folder
(``mbo_lab.write_synth``). Commands on files of 50M records or more run under
``flock LOCK`` when ``--lock`` (or ``MBO_LAB_BENCH_LOCK``) is given, so only one big job
runs at a time. Peak RSS is each child's own ``ru_maxrss`` (``os.wait4``). Timings are
noisy on a shared machine: the script prints the load average with every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _records_in(path: Path) -> int:
    """Records of a plain DBN file from its size and header (nothing loaded here: a child's
    ru_maxrss includes this process's RSS at fork time, so the parent stays small)."""
    if str(path).endswith(".zst"):
        return -1
    with open(path, "rb") as fh:
        head = fh.read(8)
    meta_len = int.from_bytes(head[4:8], "little")
    return (path.stat().st_size - 8 - meta_len) // 56


def encodings(path: Path, n: int, levels: int = 10) -> None:
    """Write the same MBP-10 tables (the first ``n`` records' F_LAST states) with several
    Parquet options; print file size and write time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import mbo_lab
    from mbo_lab.book.engine import make_engine
    from mbo_lab.store import book_columns

    data = mbo_lab.load(path)[:n]
    eng = make_engine("numba", levels=levels, trades=False)
    tables = []
    for lo in range(0, len(data), 1 << 20):
        ch = data[lo: lo + (1 << 20)]
        fr = eng.apply(ch.records, base_index=lo)
        rec = ch.records[fr.index - lo]
        tables.append(pa.table(book_columns(fr, None, rec, levels, data.symbols, fixed=False)))
    rows = sum(t.num_rows for t in tables)
    raw = sum(t.nbytes for t in tables)
    schema = tables[0].schema

    def narrow(s: pa.Schema) -> pa.Schema:
        fields = []
        for f in s:
            if "_sz_" in f.name or "_ct_" in f.name:
                f = f.with_type(pa.uint32())
            fields.append(f)
        return pa.schema(fields, metadata=s.metadata)

    options = [
        ("none, dict on", {"compression": "none"}, None),
        ("none, dict off", {"compression": "none", "use_dictionary": False}, None),
        ("snappy, dict on", {"compression": "snappy"}, None),
        ("snappy, dict off", {"compression": "snappy", "use_dictionary": False}, None),
        ("lz4, dict off", {"compression": "lz4", "use_dictionary": False}, None),
        ("zstd-1, dict on", {"compression": "zstd", "compression_level": 1}, None),
        ("zstd-1, dict off", {"compression": "zstd", "compression_level": 1,
                              "use_dictionary": False}, None),
        ("zstd-1, dict off, uint32 sz/ct", {"compression": "zstd", "compression_level": 1,
                                            "use_dictionary": False}, narrow(schema)),
        ("zstd-3, dict off", {"compression": "zstd", "compression_level": 3,
                              "use_dictionary": False}, None),
        ("zstd-9, dict off", {"compression": "zstd", "compression_level": 9,
                              "use_dictionary": False}, None),
        ("zstd-1, dict off, BYTE_STREAM_SPLIT px", {
            "compression": "zstd", "compression_level": 1, "use_dictionary": False,
            "use_byte_stream_split": [f.name for f in schema if "_px_" in f.name]}, None),
    ]
    print(f"\n## Parquet encodings: MBP-{levels} of {len(data):,} records = {rows:,} rows, "
          f"{raw / 2**20:,.0f} MiB in Arrow ({_load()})")
    print(f"| {'options':<40} | {'MiB':>8} | {'write s':>8} | {'rows/s':>12} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 14}|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, opts, sch in options:
            out = Path(tmp) / "t.parquet"
            t0 = time.perf_counter()
            w = pq.ParquetWriter(out, sch or schema, **opts)
            for t in tables:
                w.write_table(t.cast(sch) if sch is not None else t)
            w.close()
            dt = time.perf_counter() - t0
            size = out.stat().st_size
            print(f"| {label:<40} | {size / 2**20:>8,.1f} | {dt:>8.2f} | {rows / dt:>12,.0f} |")
            out.unlink()


def _run(cmd: list[str], lock: str | None, big: bool) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit code) of one child process."""
    if big and lock:
        cmd = ["flock", lock, *cmd]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.returncode:
        print(f"  ! {' '.join(cmd)} -> {p.returncode}: {err.strip()[-400:]}")
    return dt, ru.ru_maxrss * 1024, p.returncode


def cli(files: list[Path], lock: str | None, tables: str, chunk: int | None,
        only: str | None = None) -> None:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"(this process: peak RSS {own:.2f} GiB; children report their own, at least "
          "this process's RSS when they were forked)")
    exe = [sys.executable, "-m", "mbo_lab.cli"]
    extra = [] if chunk is None else ["--chunk-records", str(chunk)]
    print(f"\n## mbo-lab mbp / export (default chunk unless --chunk) ({_load()})")
    print(f"| {'command':<30} | {'records':>12} | {'input GiB':>9} | {'s':>8} | "
          f"{'Mrec/s':>7} | {'peak RSS GiB':>12} | {'out MiB':>8} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 11}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 10}|")
    for f in files:
        n = _records_in(f)
        big = n < 0 or n >= 50_000_000
        with tempfile.TemporaryDirectory(dir=os.environ.get("MBO_LAB_BENCH_TMP")) as tmp:
            out = Path(tmp) / "book.parquet"
            runs = [
                ("mbp --levels 10 -> parquet", [*exe, "mbp", str(f), "-o", str(out), "--force",
                                                 *extra], out),
                (f"export --tables {tables}", [*exe, "export", str(f), "-o",
                                               str(Path(tmp) / "store"), "--tables", tables,
                                               *extra], Path(tmp) / "store"),
            ]
            for label, cmd, target in runs:
                if only and not label.startswith(only):
                    continue
                dt, rss, rc = _run(cmd, lock, big)
                size = (target.stat().st_size if target.is_file() else
                        sum(p.stat().st_size for p in target.rglob("*.parquet"))
                        if target.exists() else 0)
                rate = n / dt / 1e6 if n > 0 else float("nan")
                print(f"| {label:<30} | {n:>12,} | {f.stat().st_size / 2**30:>9.2f} | "
                      f"{dt:>8.1f} | {rate:>7.2f} | {rss / 2**30:>12.2f} | "
                      f"{size / 2**20:>8,.0f} |{'' if rc == 0 else ' FAILED'} {_load()}",
                      flush=True)
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="*",
                    default=os.environ.get("MBO_LAB_BENCH_FILES", "").split() or None)
    ap.add_argument("--records", type=int, default=10_000_000,
                    help="records of the generated file when no --files")
    ap.add_argument("--encoding-records", type=int, default=2_000_000)
    ap.add_argument("--lock", default=os.environ.get("MBO_LAB_BENCH_LOCK"))
    ap.add_argument("--export-tables", default="records,bbo,mbp,trades")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--skip-encodings", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--only", choices=["mbp", "export"], default=None)
    args = ap.parse_args()
    tmp = None
    if args.files:
        files = [Path(f) for f in args.files]
    else:
        import mbo_lab

        tmp = tempfile.mkdtemp(prefix="bench_cli")
        files = [mbo_lab.write_synth(Path(tmp) / f"synth_{args.records}.dbn", args.records,
                                     seed=1)]
    try:
        plain = [f for f in files if not str(f).endswith(".zst")]
        if not args.skip_encodings and plain:
            encodings(plain[0], args.encoding_records)
        if not args.skip_cli:
            cli(files, args.lock, args.export_tables, args.chunk, args.only)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _ = np  # numpy imported for the file generator's sake


if __name__ == "__main__":
    main()
