"""Mutational fuzzing of the DBN readers (issue #12).

A fixed-seed set of mutants of the CLX5 sample (plain ``.dbn``) and of a generated small
``.dbn.zst``: byte flips, truncations, insertions, deletions, header field edits, record
header edits, Zstandard frame damage (frame header, block headers, checksum, appended
data) and mutated content re-compressed. Every mutant must end either in a package error
(:class:`mbo_lab.errors.MboLabError`) or in accepted data whose records are byte for byte
the ones Databento's own decoder (``databento.DBNStore``) reads -- never a raw exception,
a hang or a crash.

The decoding runs in one subprocess (this file run as a script), so a crash (signal) or
hang shows up as a failing test naming the case instead of killing pytest; inside it each
case has its own time guard (SIGALRM).
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SEED = 20251127
CLX5_MUTANTS = 150
ZST_MUTANTS = 170
CASE_SECONDS = 10          # per-case guard inside the worker (loaded 2-core machine)
TOTAL_SECONDS = 240        # the whole worker


# --------------------------------------------------------------------------- mutations


def _prelude_len(raw: bytes) -> int:
    return 8 + struct.unpack("<I", raw[4:8])[0] if raw[:3] == b"DBN" else 0


def _flip(raw: bytes, rng, lo: int = 0, hi: int | None = None, count: int | None = None) -> bytes:
    b = bytearray(raw)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(count or int(rng.integers(1, 9))):
        pos = int(rng.integers(lo, max(lo + 1, hi)))
        if pos < len(b):
            b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _set(raw: bytes, pos: int, value: bytes) -> bytes:
    return raw[:pos] + value + raw[pos + len(value):]


def mutate_plain(raw: bytes, rng) -> tuple[str, bytes]:
    """One mutation of a plain DBN file's bytes."""
    pre = _prelude_len(raw)
    n_rec = (len(raw) - pre) // 56
    kind = str(rng.choice(["flip", "flip_header", "truncate", "insert", "delete",
                           "header_field", "record_header", "record_field"]))
    if kind == "flip":
        return kind, _flip(raw, rng)
    if kind == "flip_header":
        return kind, _flip(raw, rng, 0, pre + 56, count=int(rng.integers(1, 4)))
    if kind == "truncate":
        return kind, raw[: int(rng.integers(0, len(raw)))]
    if kind == "insert":
        pos = int(rng.integers(0, len(raw)))
        return kind, raw[:pos] + rng.bytes(int(rng.choice([1, 3, 56, 100]))) + raw[pos:]
    if kind == "delete":
        pos = int(rng.integers(0, len(raw)))
        return kind, raw[:pos] + raw[pos + int(rng.choice([1, 8, 56, 1000])):]
    if kind == "header_field":
        which = str(rng.choice(["version", "meta_len", "dataset", "schema", "start_end",
                                "stype", "counts", "any"]))
        if which == "version":
            return f"{kind}:{which}", _set(raw, 3, bytes([int(rng.integers(0, 6))]))
        if which == "meta_len":
            v = int(rng.choice([0, 1, pre - 9, pre - 7, pre + 56, 2**31, 2**32 - 1,
                                int(rng.integers(0, 2**32))]))
            return f"{kind}:{which}", _set(raw, 4, struct.pack("<I", max(v, 0) % 2**32))
        if which == "dataset":
            return f"{kind}:{which}", _set(raw, 8, rng.bytes(16))
        if which == "schema":
            return f"{kind}:{which}", _set(raw, 24, struct.pack("<H", int(rng.choice(
                [0, 1, 2, 0xFFFF, int(rng.integers(0, 0x10000))]))))
        if which == "start_end":
            return f"{kind}:{which}", _set(raw, 26 + 8 * int(rng.integers(0, 3)), rng.bytes(8))
        if which == "stype":
            return f"{kind}:{which}", _set(raw, 50 + int(rng.integers(0, 3)),
                                           bytes([int(rng.integers(0, 256))]))
        if which == "counts":   # lengths/counts inside the variable part of the metadata
            pos = int(rng.integers(53, max(54, pre - 4)))
            return f"{kind}:{which}", _set(raw, pos, struct.pack("<I", int(rng.choice(
                [0, 0xFFFFFFFF, 0x7FFFFFFF, int(rng.integers(0, 2**32))]))))
        pos = int(rng.integers(8, max(9, pre)))
        return f"{kind}:{which}", _set(raw, pos, bytes([int(rng.integers(0, 256))]))
    i = int(rng.integers(0, max(1, n_rec)))
    base = pre + 56 * i
    if kind == "record_header":
        return kind, _set(raw, base + int(rng.integers(0, 2)), bytes([int(rng.integers(0, 256))]))
    # record_field: action/side to any byte (non-ASCII included), or other fields
    pos = base + int(rng.choice([38, 39, 2, 4, 8, 15, 16, 24, 31, 32, 36, 40, 47, 52]))
    return kind, _set(raw, pos, bytes([int(rng.integers(0, 256))]))


def zstd_block_ends(comp: bytes) -> list[int]:
    """Offsets where the frame header, each block and the checksum end."""
    from mbo_lab.io.dbn import _ZstdBlocks

    z = _ZstdBlocks(io.BytesIO(comp), "<fuzz>")
    ends: list[int] = []
    take = z._take

    def spy(n):
        out = take(n)
        ends.append(z.offset)
        return out

    z._take = spy
    for _ in z.pieces():
        pass
    return ends


def mutate_zst(comp: bytes, plain: bytes, ends: list[int], rng) -> tuple[str, bytes]:
    """One mutation of a .dbn.zst file (frame damage or mutated content)."""
    import zstandard

    kind = str(rng.choice(["flip", "truncate", "truncate_block", "insert", "delete",
                           "frame_header", "block_header", "checksum", "append",
                           "content", "content_nosum", "two_frames"]))
    if kind == "flip":
        return kind, _flip(comp, rng)
    if kind == "truncate":
        return kind, comp[: int(rng.integers(0, len(comp)))]
    if kind == "truncate_block":
        return kind, comp[: int(rng.choice(ends[:-1]))]
    if kind == "insert":
        pos = int(rng.integers(0, len(comp)))
        return kind, comp[:pos] + rng.bytes(int(rng.choice([1, 4, 64]))) + comp[pos:]
    if kind == "delete":
        pos = int(rng.integers(0, len(comp)))
        return kind, comp[:pos] + comp[pos + int(rng.choice([1, 3, 100])):]
    if kind == "frame_header":
        pos = int(rng.integers(4, ends[0]))
        return kind, _set(comp, pos, bytes([int(rng.integers(0, 256))]))
    if kind == "block_header":
        pos = int(rng.choice(ends[:-2])) + int(rng.integers(0, 3))
        return kind, _set(comp, pos, bytes([int(rng.integers(0, 256))]))
    if kind == "checksum":
        return kind, _flip(comp, rng, len(comp) - 4, len(comp), count=1)
    if kind == "append":
        extra = [rng.bytes(int(rng.integers(1, 40))), comp[ends[0]: ends[1]],
                 struct.pack("<II", 0x184D2A50, 4) + b"skip", comp[:ends[0]]]
        return kind, comp + extra[int(rng.integers(0, len(extra)))]
    # content: mutate the decompressed DBN, compress again
    sub_kind, data = mutate_plain(plain, rng)
    if kind == "two_frames":
        cut = int(rng.integers(0, len(data) + 1))
        c = zstandard.ZstdCompressor(write_checksum=True)
        return f"{kind}:{sub_kind}", c.compress(data[:cut]) + c.compress(data[cut:])
    c = zstandard.ZstdCompressor(write_checksum=(kind == "content"))
    return f"{kind}:{sub_kind}", c.compress(data)


# --------------------------------------------------------------------------- the worker


def _theirs(path: Path) -> np.ndarray:
    import databento

    return databento.DBNStore.from_file(path).to_ndarray()


def _zstd_complete(raw: bytes) -> bool:
    """Independent oracle: libzstd decodes every frame of ``raw`` to its end."""
    import zstandard

    rest = raw
    while rest:
        if len(rest) >= 8 and int.from_bytes(rest[:4], "little") & 0xFFFFFFF0 == 0x184D2A50:
            size = int.from_bytes(rest[4:8], "little")
            if len(rest) < 8 + size:
                return False
            rest = rest[8 + size:]
            continue
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            d.decompress(rest)
        except zstandard.ZstdError:
            return False
        if not d.eof:
            return False
        rest = d.unused_data
    return True


def _decode_case(path: Path) -> dict:
    """Run the package's readers on one file; classify the outcome."""
    from mbo_lab.errors import MboLabError
    from mbo_lab.io.dbn import iter_chunks, load

    out: dict = {}
    try:
        data = load(path)
        repr(data)
        data._repr_html_()
        data.summary()
        data[:300].to_df()
        ours = data.records
        out["load"] = "ok"
    except MboLabError as exc:
        out["load"] = type(exc).__name__
        ours = None
    try:
        chunks = list(iter_chunks(path, 4_096))
        out["chunks"] = "ok"
        if ours is not None:
            joined = (np.concatenate([c.records for c in chunks]) if chunks
                      else np.zeros(0, ours.dtype))
            out["chunks_equal_load"] = joined.tobytes() == ours.tobytes()
    except MboLabError as exc:
        out["chunks"] = type(exc).__name__
    if ours is not None:
        out["records"] = len(ours)
        raw = path.read_bytes()
        if raw[:4] == b"\x28\xb5\x2f\xfd":
            out["zstd_complete"] = _zstd_complete(raw)
        try:
            theirs = _theirs(path)
            out["databento_records"] = len(theirs)
            out["databento_equal"] = (len(theirs) == len(ours)
                                      and theirs.tobytes() == ours.tobytes())
        except BaseException as exc:  # noqa: BLE001 -- their decoder may panic
            if isinstance(exc, KeyboardInterrupt):
                raise
            out["databento_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


class _CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _CaseTimeout()


def worker(clx5: str, workdir: str, seed: int, n_clx5: int, n_zst: int) -> None:
    """Generate and decode every mutant; print one JSON line per case (flushed)."""
    import mbo_lab

    rng = np.random.default_rng(seed)
    wd = Path(workdir)
    bases: list[tuple[str, int]] = []
    if clx5:
        bases.append(("clx5", n_clx5))
    bases.append(("zst", n_zst))
    clx5_raw = Path(clx5).read_bytes() if clx5 else b""
    zpath = mbo_lab.write_synth(wd / "base.dbn.zst", 3_000, seed=seed % 1000,
                                clear_snapshot_every=1_000, progress=False)
    comp = zpath.read_bytes()
    import zstandard

    plain = zstandard.ZstdDecompressor().decompressobj().decompress(comp)
    ends = zstd_block_ends(comp)
    signal.signal(signal.SIGALRM, _alarm)
    case = 0
    for base, count in bases:
        for _ in range(count):
            if base == "clx5":
                kind, raw = mutate_plain(clx5_raw, rng)
                path = wd / f"m{case}.dbn"
            else:
                kind, raw = mutate_zst(comp, plain, ends, rng)
                path = wd / f"m{case}.dbn.zst"
            path.write_bytes(raw)
            print(json.dumps({"start": case, "base": base, "kind": kind}), flush=True)
            t0 = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                res = _decode_case(path)
            except _CaseTimeout:
                res = {"raw": "timeout"}
            except BaseException as exc:  # noqa: BLE001 -- what the test is looking for
                if isinstance(exc, KeyboardInterrupt):
                    raise
                import traceback

                res = {"raw": f"{type(exc).__name__}: {exc}"[:300],
                       "where": traceback.format_exc()[-1500:]}
            finally:
                signal.alarm(0)
            res.update(case=case, base=base, kind=kind, size=len(raw),
                       seconds=round(time.perf_counter() - t0, 3))
            print(json.dumps(res, default=str), flush=True)
            path.unlink()
            case += 1
    print(json.dumps({"done": case}), flush=True)


# --------------------------------------------------------------------------- the test


def test_fuzz_readers_package_errors_or_databento_agreement(tmp_path, request):
    import mbo_lab

    clx5 = Path(mbo_lab.get_settings().data_path)
    have_clx5 = clx5.is_file()
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(mbo_lab.__file__).parent.parent / ".numba_cache"))
    cmd = [sys.executable, __file__, str(clx5) if have_clx5 else "", str(tmp_path),
           str(SEED), str(CLX5_MUTANTS), str(ZST_MUTANTS)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TOTAL_SECONDS,
                              env=env)
        out, rc, err = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc, err = "timeout", ""
    elapsed = time.perf_counter() - t0
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    started = [x for x in lines if "start" in x]
    results = [x for x in lines if "case" in x]
    done = [x for x in lines if "done" in x]
    if not done:
        last = started[-1] if started else None
        pytest.fail(f"the fuzz worker stopped (exit {rc}) in case {last} after "
                    f"{len(results)} cases:\n{err[-3000:]}")
    assert rc == 0, err[-3000:]
    assert len(results) == done[0]["done"] == (CLX5_MUTANTS if have_clx5 else 0) + ZST_MUTANTS

    bad = []
    for r in results:
        if "raw" in r:
            bad.append(r)
            continue
        accepted = r["load"] == "ok"
        if r["chunks"] != r["load"]:           # both readers give the same verdict
            bad.append({**r, "why": "load and iter_chunks disagree"})
        elif accepted and not r.get("chunks_equal_load", False):
            bad.append({**r, "why": "iter_chunks records differ from load"})
        elif accepted and r.get("zstd_complete") is False:
            bad.append({**r, "why": "accepted a .zst that libzstd finds cut or damaged"})
        elif accepted and not r.get("databento_equal", False):
            bad.append({**r, "why": "accepted, but Databento's decoder reads other records"})
        elif r["seconds"] > CASE_SECONDS / 2:
            bad.append({**r, "why": "slow case"})
    summary: dict[str, int] = {}
    for r in results:
        key = f"{r['base']}:{'accepted' if r.get('load') == 'ok' else r.get('load', 'RAW')}"
        summary[key] = summary.get(key, 0) + 1
    msg = json.dumps(bad[:10], indent=1, default=str)
    assert not bad, f"{len(bad)} bad outcomes of {len(results)} ({summary}):\n{msg}"
    # the mutants reached every verdict: both accepted files and several error types
    assert any(k.endswith(":accepted") for k in summary)
    assert len({k.split(":")[1] for k in summary}) >= 4, summary
    if not have_clx5:
        pytest.skip(f"CLX5 sample not found at {clx5} (MBO_LAB_DATA_PATH): only the "
                    f"{ZST_MUTANTS} .dbn.zst mutants ran ({elapsed:.0f} s)")


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
