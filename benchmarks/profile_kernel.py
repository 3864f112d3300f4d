"""Instruction-level profile of the book kernel (``kernel.apply_records``) with ``perf``.

A developer's tool, not a test. Numba's JIT code has no symbols for ``perf report`` and
VMs often have no hardware counters, but the software ``cpu-clock`` event still samples
instruction addresses. This script finds the address of the compiled kernel, samples the
process while the kernel applies a stream again and again, and maps every sample onto the
kernel's disassembly:

* the share of samples inside ``apply_records`` (the rest is Python and other calls),
* the hottest instructions and the hottest 256-byte windows of the function,
* an annotated disassembly (``--out``, default ``test-output/kernel_profile.txt``, a
  git-ignored folder): every instruction with its share of samples, to read next to
  ``mbo_lab/book/kernel.py``.

``cpu-clock`` samples land on the instruction *after* a stall (skid), and without branch
counters a mispredict shows up as time on the work that follows it; read windows, not
single instructions. Needs ``perf`` (Debian: ``linux-perf``) and ``objdump``
(``binutils``), and ``/proc/sys/kernel/perf_event_paranoid`` <= 2.

Usage::

    python benchmarks/profile_kernel.py                        # 10M generated records
    python benchmarks/profile_kernel.py --data path/to/file.dbn --levels 10 --seconds 8
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _kernel, also when not run as a script

from _kernel import kernel_buffer  # noqa: E402

import mbo_lab  # noqa: E402
from mbo_lab.book import kernel as K  # noqa: E402
from mbo_lab.book.engine import NumbaEngine, _readonly  # noqa: E402

CODE_BYTES = 1 << 16  # the kernel's machine code is ~40 KiB; read this much of it


def _records(path: str | None, n: int) -> np.ndarray:
    """Kernel view of the file's records, or of ``n`` generated ones (seed 1)."""
    recs = mbo_lab.load(path).records if path else mbo_lab.synth_records(n, seed=1)
    return _readonly(recs)


def _code_bytes(addr: int) -> int:
    """Bytes readable from ``addr`` within its executable mapping (``/proc/self/maps``),
    at most ``CODE_BYTES``: reading past it would take data bytes or fault."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= addr < hi and "x" in perms:
                return min(CODE_BYTES, hi - addr)
    sys.exit(f"profile_kernel: address {addr:#x} is in no executable mapping")


def _kernel_addresses() -> list[int]:
    """Entry addresses of every compiled signature of ``apply_records``."""
    out = []
    for cres in K.apply_records.overloads.values():
        out.append(cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a .dbn file (default: generated records)")
    ap.add_argument("--records", type=float, default=1e7, help="generated stream length")
    ap.add_argument("--levels", type=int, default=1, help="levels published (1 = BBO)")
    ap.add_argument("--seconds", type=float, default=8.0, help="sampling time")
    ap.add_argument("--freq", type=int, default=4000, help="samples per second")
    ap.add_argument("--top", type=int, default=30, help="hottest instructions shown")
    ap.add_argument("--out", default=str(ROOT / "test-output" / "kernel_profile.txt"),
                    help="annotated disassembly (its folder is created)")
    args = ap.parse_args()
    for tool in ("perf", "objdump"):
        if shutil.which(tool) is None:
            sys.exit(f"profile_kernel: '{tool}' is not installed (Debian: "
                     f"{'linux-perf' if tool == 'perf' else 'binutils'})")

    recs = _records(args.data, int(args.records))
    buf, _ = kernel_buffer(recs, args.levels, warm=10_000)  # pre-touched, compiled
    none = np.zeros(0, np.int64)
    addrs = _kernel_addresses()
    if len(addrs) != 1:
        print(f"note: {len(addrs)} compiled signatures; profiling the first", file=sys.stderr)
    base = addrs[0]

    stop = threading.Event()
    passes = [0]

    def spin() -> None:
        while not stop.is_set():
            NumbaEngine(args.levels, trades=False).run(recs, buf, 0, none, 0)
            passes[0] += 1

    worker = threading.Thread(target=spin, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        t0 = time.perf_counter()
        worker.start()
        time.sleep(0.5)
        rec = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F",
                              str(args.freq), "-p", str(os.getpid()), "-o", data, "--",
                              "sleep", str(args.seconds)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stop.set()
        worker.join()
        elapsed = time.perf_counter() - t0
        if rec.returncode != 0:
            sys.exit(f"profile_kernel: perf record failed ({rec.stderr.strip()[-300:]}); "
                     "check /proc/sys/kernel/perf_event_paranoid (<= 2 needed)")
        ips = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], check=True,
                             capture_output=True, text=True).stdout.split()
        code = os.path.join(tmp, "code.bin")
        size = _code_bytes(base)
        Path(code).write_bytes(ctypes.string_at(base, size))
        dis = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", code],
                             check=True, capture_output=True, text=True).stdout

    hist: collections.Counter[int] = collections.Counter()
    for s in ips:
        ip = int(s, 16)
        if base <= ip < base + size:
            hist[ip - base] += 1
    total = len(ips)
    inside = sum(hist.values())
    rate = passes[0] * len(recs) / elapsed / 1e6
    print(f"{total} samples, {inside / max(total, 1):.1%} inside apply_records "
          f"({len(recs):,} records x {passes[0]} passes, ~{rate:.1f}M rec/s while sampled)")
    lines = {}
    annotated = []
    for line in dis.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t", line)
        if m:
            off = int(m.group(1), 16)
            lines[off] = line.strip()
            share = hist.get(off, 0) / max(inside, 1)
            annotated.append(f"{share:6.2%} {line}" if share else f"{'':7s}{line}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(annotated) + "\n")
    print("\nhottest instructions (share of kernel samples; offset from the entry):")
    for off, c in hist.most_common(args.top):
        print(f"  {c / inside:6.2%}  {lines.get(off, hex(off))}")
    windows: collections.Counter[int] = collections.Counter()
    for off, c in hist.items():
        windows[off // 256 * 256] += c
    print("\nhottest 256-byte windows:")
    for off, c in windows.most_common(12):
        print(f"  {off:#06x}-{off + 255:#06x}  {c / inside:6.2%}")
    print(f"\nannotated disassembly: {args.out}")


if __name__ == "__main__":
    main()
