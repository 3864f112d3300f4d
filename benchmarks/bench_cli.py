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
    """Write the same MBP-10 tables (the F_LAST states of the first ``n`` records, built
    by the CLI's own ``mbo_lab.cli._mbp_tables``: float prices, row groups of 128Ki states)
    with several Parquet options; print file size, write time (wall and CPU of the process)
    and rows/s."""
    import pyarrow.parquet as pq

    from mbo_lab.book.build import iter_frames
    from mbo_lab.cli import _mbp_schema, _mbp_tables
    from mbo_lab.store import COMPRESSIONS, ParallelParquetWriter, parquet_options

    schema = _mbp_schema(levels, {})
    tables, seen = [], 0
    # reuse=False: every chunk's frames stay valid while all the tables are held
    for chunk, fr in iter_frames(path, levels, "numba", 1 << 20, progress=False,
                                 reuse=False, price_type="float"):
        tables.extend(_mbp_tables(chunk, fr, levels, schema))
        seen += len(chunk.records)
        if seen >= n:
            break
    rows = sum(t.num_rows for t in tables)
    raw = sum(t.nbytes for t in tables)
    names = schema.names
    px = [c for c in names if "_px_" in c]
    options = [
        ("zstd-1, dict on (before)", {"compression": "zstd", "compression_level": 1}, 0),
        ("none, dict off (before: --compression none)",
         {"compression": "none", "use_dictionary": False}, 0),
        ("snappy, dict on", {"compression": "snappy"}, 0),
        ("lz4, dict off", {"compression": "lz4", "use_dictionary": False}, 0),
        ("zstd-1, dict off", {"compression": "zstd", "compression_level": 1,
                              "use_dictionary": False}, 0),
        ("zstd-1, dict off, BYTE_STREAM_SPLIT px", {
            "compression": "zstd", "compression_level": 1, "use_dictionary": False,
            "use_byte_stream_split": px}, 0),
        ("zstd-3, dict on", {"compression": "zstd", "compression_level": 3}, 0),
    ]
    for c in COMPRESSIONS:
        options.append((f"per column, {c}", parquet_options(names, c), 0))
    options.append(("per column, zstd + all statistics",
                    dict(parquet_options(names, "zstd"), write_statistics=True), 0))
    options.append(("per column, zstd, 2 threads (CLI default)",
                    parquet_options(names, "zstd"), 2))
    options.append(("per column, lz4, 2 threads", parquet_options(names, "lz4"), 2))
    print(f"\n## Parquet encodings: MBP-{levels} of {seen:,} records = {rows:,} rows, "
          f"{raw / 2**20:,.0f} MiB in Arrow ({_load()})")
    print("per column = mbo_lab.store.parquet_options: prices dictionary + codec, sizes/counts "
          "DELTA_BINARY_PACKED uncompressed,\nids/times DELTA_BINARY_PACKED + codec with "
          "statistics, no statistics on levels; threads = ParallelParquetWriter")
    print(f"| {'options':<46} | {'MiB':>7} | {'wall s':>7} | {'CPU s':>6} | "
          f"{'Mrows/s':>7} | load |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 9}|------|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("MBO_LAB_BENCH_TMP")) as tmp:
        for label, opts, threads in options:
            out = Path(tmp) / "t.parquet"
            c0, t0 = time.process_time(), time.perf_counter()
            if threads:
                w = ParallelParquetWriter(out, schema, threads=threads, **opts)
            else:
                w = pq.ParquetWriter(out, schema, **opts)
            for t in tables:
                w.write_table(t)
            w.close()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            size = out.stat().st_size
            print(f"| {label:<46} | {size / 2**20:>7,.1f} | {dt:>7.2f} | {cpu:>6.2f} | "
                  f"{rows / dt / 1e6:>7.2f} | {os.getloadavg()[0]:.2f} |", flush=True)
            out.unlink()


def _run(cmd: list[str], lock: str | None, big: bool) -> tuple[float, int, int, str]:
    """(seconds, peak RSS bytes, exit code, stdout) of one child process (its own
    ru_maxrss from wait4; stdout and stderr go to temporary files, so nothing blocks)."""
    if big and lock:
        cmd = ["flock", lock, *cmd]
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = code = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    if code:
        print(f"  ! {' '.join(cmd)} -> {code}: {err.strip()[-400:]}")
    return dt, ru.ru_maxrss * 1024, code, out


def cli(files: list[Path], lock: str | None, tables: str, chunk: int | None,
        only: str | None = None) -> None:
    import re
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"(this process: peak RSS {own:.2f} GiB; children report their own, at least "
          "this process's RSS when they were forked)")
    exe = [sys.executable, "-m", "mbo_lab.cli"]
    extra = [] if chunk is None else ["--chunk-records", str(chunk)]
    dt, _, _, _ = _run([*exe, "--version"], None, False)
    print(f"\n## mbo-lab mbp / export (default chunk unless --chunk) ({_load()})")
    print(f"start-up of `mbo-lab --version` (interpreter + import mbo_lab): {dt:.2f} s; "
          "'s' is the whole child, 'in-cmd s' what the command reports (without start-up)")
    print(f"| {'command':<30} | {'records':>12} | {'input GiB':>9} | {'s':>7} | "
          f"{'in-cmd s':>8} | {'Mrec/s':>6} | {'in-cmd':>6} | {'peak RSS GiB':>12} | "
          f"{'out MiB':>7} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 8}|"
          f"{'-' * 14}|{'-' * 9}|")
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
                dt, rss, rc, text = _run(cmd, lock, big)
                # the command's own time, from the summary line mbo_lab/cli.py prints:
                # cmd_mbp's print(f"wrote {rows:,} book states ... in {...:.2f} s") and
                # cmd_export's print(f"exported ... to {out_dir} in {seconds:.2f} s (...)");
                # change this pattern with those prints
                m = re.search(r" in ([0-9.]+) s", text)
                inner = float(m.group(1)) if m else float("nan")
                size = (target.stat().st_size if target.is_file() else
                        sum(p.stat().st_size for p in target.rglob("*.parquet"))
                        if target.exists() else 0)
                rate = n / dt / 1e6 if n > 0 else float("nan")
                irate = n / inner / 1e6 if n > 0 else float("nan")
                print(f"| {label:<30} | {n:>12,} | {f.stat().st_size / 2**30:>9.2f} | "
                      f"{dt:>7.1f} | {inner:>8.1f} | {rate:>6.2f} | {irate:>6.2f} | "
                      f"{rss / 2**30:>12.2f} | {size / 2**20:>7,.0f} |"
                      f"{'' if rc == 0 else ' FAILED'} {_load()}", flush=True)
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
    ap.add_argument("--encoding-records", type=int, default=2_000_000,
                    help="records whose MBP-10 states the encodings table writes")
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
        if not args.skip_cli:  # first: a child's ru_maxrss can include a big parent's RSS
            cli(files, args.lock, args.export_tables, args.chunk, args.only)
        if not args.skip_encodings and plain:
            encodings(plain[0], args.encoding_records)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _ = np  # numpy imported for the file generator's sake


if __name__ == "__main__":
    main()
