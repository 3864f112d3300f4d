"""Whole-stream book building: ``mbp()``, ``bbo()``, ``replay_frames()``, ``iter_frames()``.

These run an engine over a source (a path, an :class:`~mbo_lab.io.dbn.MboData` or a
record array) and return book states at F_LAST records: every one, or sampled in the
kernel (``every=``: the last state of each book per time bin; ``changes_only=True``: only
states whose published top-N changed).

>>> df = mbo_lab.mbp("CLX5_mbo.dbn", levels=10)     # doctest: +SKIP
>>> df[["bid_px_00", "ask_px_00", "crossed"]].head() # doctest: +SKIP
>>> mbo_lab.mbp(day, levels=10, every="100ms")        # doctest: +SKIP

Memory: a whole day (10-100M records) of MBP-10 at every F_LAST does not fit in memory
(about 330 bytes per state, so 3-30 GB); sample it with ``every=`` and/or
``changes_only=True``, or stream it with :func:`iter_frames`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd

from ..config import get_settings
from ..errors import EngineError
from ..io.dbn import MboData, iter_chunks, load
from . import frames as _frames
from . import kernel as K
from .engine import NumbaEngine, _readonly, make_engine
from .frames import BookFrames, FrameBuffer

__all__ = ["Source", "as_data", "replay_frames", "iter_frames", "mbp", "bbo", "every_ns"]

#: What the book functions accept: a file path, loaded data, or MBO records.
Source = str | os.PathLike | MboData | np.ndarray

_U32_MAX = 2**32 - 1


def as_data(source: Source) -> MboData:
    """Load ``source`` if it is a path; wrap a record array; pass MboData through."""
    if isinstance(source, MboData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(source)
    if isinstance(source, np.ndarray):
        return MboData(source)
    raise EngineError(
        f"cannot read MBO data from {type(source).__name__}; pass a path to a .dbn/.dbn.zst "
        "file, an MboData from mbo_lab.load(), or a NumPy array of MBO records"
    )


def every_ns(every: str | int | pd.Timedelta | np.timedelta64 | None) -> int | None:
    """A sampling interval as ns: a pandas offset/timedelta string (``"100ms"``, ``"1s"``,
    ``"5min"``), a ``Timedelta``, or an int of ns. None stays None."""
    if every is None:
        return None
    if isinstance(every, (bool, float)):
        raise EngineError(f"every must be an offset string like '100ms' or int ns, got "
                          f"{every!r}")
    try:
        if isinstance(every, (int, np.integer)):
            ns = int(every)
        elif isinstance(every, str):
            try:
                ns = int(pd.Timedelta(every).value)
            except ValueError:
                ns = int(pd.tseries.frequencies.to_offset(every).nanos)
        else:
            ns = int(pd.Timedelta(every).value)
    except (ValueError, TypeError) as exc:
        raise EngineError(f"every={every!r} is not a fixed time interval (use e.g. '100ms', "
                          f"'1s' or an int of ns): {exc}") from None
    if ns <= 0:
        raise EngineError(f"every must be a positive interval, got {every!r}")
    return ns


def _check_unchanged(data: MboData) -> None:
    check = getattr(data, "check_unchanged", None)
    if check is not None:
        check()


def _sample_reference(frames: BookFrames, records: np.ndarray, every: int | None,
                      changes_only: bool) -> BookFrames:
    """The kernel's sampling rules applied to finished frames (for the reference engine)."""
    if not len(frames):
        return frames
    rec = records[frames.index]
    key = (rec["instrument_id"].astype(np.int64) << 16) | rec["publisher_id"]
    keep = np.ones(len(frames), bool)
    if every:
        t = rec["ts_recv"].astype(np.int64) // every
        df = pd.DataFrame({"k": key, "t": t})
        keep[:] = False
        keep[df.groupby(["k", "t"], sort=False).tail(1).index.to_numpy()] = True
    rows = np.flatnonzero(keep)
    if changes_only:
        last: dict[int, tuple] = {}
        sel = []
        for r in rows.tolist():
            state = tuple(getattr(frames, f)[r].tobytes() for f in
                          ("bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct",
                           "cross"))
            if last.get(int(key[r])) != state:
                last[int(key[r])] = state
                sel.append(r)
        rows = np.array(sel, np.int64)
    out = BookFrames(*(getattr(frames, f)[rows] for f in
                       ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct",
                        "cross")), frames.trades, dict(frames.counters))
    return out


#: Multipliers tried for the book -> thread split (the most even split is used).
_PART_MULS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB,
              0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)
PARALLEL_MIN_RECORDS = 2_000_000
#: Records per step of a threaded pass: each thread's gathered records (3.5 MiB plus
#: 1.5 MiB of rows) stay in its core's caches. 2 threads, 10M records, idle VM, best of 5:
#: 5 books 16Ki 265 / 32Ki 256 / 64Ki 251 / 256Ki 275 ms; 16 books 266 / 268 / 257 / 281 ms
THREAD_CHUNK = 1 << 16


def _part_sizes(recs: np.ndarray, step: int, nparts: int, mul: int) -> np.ndarray:
    out = np.zeros(nparts, np.int64)
    K.part_sizes(recs, step, nparts, np.uint64(mul), out)
    return out


def _sampled_rows(recs: np.ndarray, n_last: int, every: int | None) -> int:
    """Output rows to allocate for a sampled pass (no regrowth in the usual case): at most
    one state per book and time bin on a grid, else (changes only) every F_LAST; rows
    that are never written stay untouched virtual memory."""
    if not every or not len(recs):
        return n_last + 16
    ts = recs["ts_recv"]
    span = max(0, int(ts[-1]) - int(ts[0]))
    sample = recs[:: max(1, len(recs) // 200_000)]
    keys = (sample["instrument_id"].astype(np.int64) << 16) | sample["publisher_id"]
    books = len(np.unique(keys))
    return min(n_last, (span // every + 2) * books) + books + 16


def _usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (``cpu.max``, as containers set it)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def _busy_cpus() -> float:
    """CPUs busy with other work right now: the runnable tasks of ``/proc/loadavg`` minus
    this one (fewest of three looks 5 ms apart), or the 1-minute load average where there
    is no such file. An instant view: the load average still counts this process's own
    previous call for a minute."""
    import time

    try:
        seen = []
        for k in range(3):
            if k:
                time.sleep(0.005)
            with open("/proc/loadavg") as fh:
                seen.append(int(fh.read().split()[3].split("/")[0]) - 1)
        return float(max(0, min(seen)))
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load figures on this system
            return float(_usable_cpus())


def _auto_threads(reserve: int = 0) -> int:
    """Threads for a pass when the caller did not say: ``MBO_LAB_THREADS`` if set, else
    the idle CPUs (:func:`_busy_cpus`) less ``reserve`` (a CPU kept for the prefault
    thread of a fresh output), up to 4; on a busy machine threads only wait for each other
    (a parallel pass measured ~35 % slower than one thread there)."""
    env = os.environ.get("MBO_LAB_THREADS")
    if env:
        try:
            return int(env)
        except ValueError:
            raise EngineError(f"MBO_LAB_THREADS must be an int, got {env!r}") from None
    cpus = _usable_cpus()
    if cpus < 2:
        return 1
    idle = int(cpus - _busy_cpus() + 0.5)
    return max(1, min(4, idle - reserve))


def _plan_threads(recs: np.ndarray, threads: int | None, reserve: int = 0
                  ) -> tuple[int, int]:
    """``(threads, multiplier)`` for a book-parallel pass (1 when not worth it); ``reserve``
    CPUs are kept free when the number is chosen automatically."""
    if threads is None:
        if len(recs) < PARALLEL_MIN_RECORDS:
            return 1, 1
        threads = _auto_threads(reserve)
    threads = int(threads)
    if threads < 1:
        raise EngineError(f"threads must be >= 1, got {threads}")
    if threads == 1 or len(recs) == 0 or not recs.flags.c_contiguous:
        return 1, 1  # (threads gather records as 56-byte rows: contiguous ones only)
    step = max(1, len(recs) // 100_000)
    best = min(_PART_MULS, key=lambda m: _part_sizes(recs, step, threads, m).max())
    sizes = _part_sizes(recs, step, threads, best)
    if sizes.max() > 0.75 * sizes.sum():
        return 1, 1
    used = int(np.count_nonzero(sizes))
    if used < threads:  # fewer books than threads: no thread without a book
        return _plan_threads(recs, used)
    return threads, best


def _warm_threads(recs: np.ndarray) -> None:
    """Compile (or load) :func:`kernel.select_part` and :func:`kernel.part_sizes` for
    read-only records as a threaded pass calls them (the kernel's signature is the one-thread pass's)."""
    recs = _readonly(recs)
    n = len(recs)
    sel = (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64))
    gathered = np.empty(n, recs.dtype)
    K.select_part(recs, recs.view(np.int64).reshape(n, 7), 2, 0, np.uint64(_PART_MULS[0]),
                  0, 0, *sel, gathered.view(np.int64).reshape(n, 7))
    _part_sizes(recs, 1, 2, _PART_MULS[0])


def _run_threads(recs: np.ndarray, buf: FrameBuffer, trade_idx: np.ndarray, levels: int,
                 nthreads: int, pmul: int, chunk: int, bar) -> dict[str, int]:
    """Apply ``recs`` with one engine per thread, each owning a part of the books; all
    write their own rows of ``buf``/``trade_idx``. Returns the summed counters.

    Per chunk, each thread selects its records branch-free (:func:`kernel.select_part`:
    indices plus each record's output and trade row), so no thread steps through the
    others' records. Thread 0 (the caller's) takes the largest part and never waits;
    thread ``t`` starts a chunk only once thread ``t - 1`` has finished it, so no two
    threads write rows of the same chunk at once (interleaved rows share cache lines:
    writing them together measured 1.9x slower than one thread).
    """
    import threading

    from .reference import COUNTER_NAMES

    step = max(1, len(recs) // 100_000)
    order = np.argsort(-_part_sizes(recs, step, nthreads, pmul), kind="stable")
    engines = [NumbaEngine(levels) for _ in range(nthreads)]
    chunks = range(0, len(recs), chunk)
    done = [0] * nthreads  # chunks finished per thread (len(chunks) + 1: failed)
    cond = threading.Condition()
    errors: list[BaseException] = []
    cap = min(chunk, len(recs))
    words = recs.view(np.int64).reshape(len(recs), 7)  # MBO records are 56 bytes

    def work(t: int) -> None:
        part = int(order[t])
        sel = (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64))
        gathered = np.empty(cap, recs.dtype)
        g_words = gathered.view(np.int64).reshape(cap, 7)
        g_recs = _readonly(gathered)
        eng, n_out, n_tr = engines[t], 0, 0
        try:
            for c, lo in enumerate(chunks):
                if errors:  # another thread failed (or Ctrl-C): stop
                    return
                if t > 0:
                    with cond:
                        cond.wait_for(lambda c=c: done[t - 1] > c)
                    if errors:
                        return
                part_recs = recs[lo: lo + chunk]
                m, n_out2, n_tr2 = K.select_part(part_recs, words[lo: lo + chunk], nthreads,
                                                 part, np.uint64(pmul), n_out, n_tr, *sel,
                                                 g_words)
                eng.run(g_recs[:m], buf, n_out, trade_idx, lo,
                        sel=(sel[0][:m], sel[1][:m], sel[2][:m]))
                n_out, n_tr = n_out2, n_tr2
                with cond:
                    done[t] = c + 1
                    cond.notify_all()
                if t == nthreads - 1 and bar is not None:  # the last thread finishes last
                    bar.update(len(part_recs))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            with cond:  # however this thread ends, the next one must not wait for it
                if done[t] < len(chunks):
                    done[t] = len(chunks) + 1
                cond.notify_all()

    workers = [threading.Thread(target=work, args=(t,), name=f"mbo_lab-book-{t}")
               for t in range(1, nthreads)]
    for w in workers:
        w.start()
    try:
        work(0)
        for w in workers:
            w.join()
    except BaseException as exc:  # Ctrl-C here: the workers stop at their next chunk
        errors.append(exc)
        with cond:
            done[0] = len(chunks) + 1
            cond.notify_all()
        for w in workers:
            w.join()
        raise
    if errors:
        raise errors[0]
    total = sum(e.state.counters for e in engines)
    return dict(zip(COUNTER_NAMES, total.tolist()))


def replay_frames(source: Source, levels: int = 10, engine: str | None = None,
                  chunk_records: int | None = None, progress: bool | None = None, *,
                  every: str | int | None = None, changes_only: bool = False,
                  price_type: str = "fixed", compact: bool = False,
                  threads: int | None = None) -> tuple[BookFrames, MboData | None]:
    """Run an engine over ``source``; return the frames and the data.

    The Numba engine counts the F_LAST records first and writes every state once into
    arrays of the final size (one contiguous array per level and column), with the
    records' ``ts_recv``, ``ts_event``, ids and sequence in ``frames.fields``.
    ``every``/``changes_only`` sample in the kernel (see :func:`mbp`). ``price_type="float"``
    has the kernel write float prices (NaN when empty); ``compact=True`` stores sizes and
    counts as uint32 when that is exact for this source (as Databento's MBP-10 does),
    otherwise int64 sizes / int32 counts. For files larger than memory use
    :func:`iter_frames`, which streams.

    ``threads``: the books of a stream are independent, so without sampling the Numba
    engine can apply them in parallel threads (the kernel releases the GIL), each thread
    owning a subset of the books and writing its rows of the shared outputs. None
    (default), for streams of >= 2M records: ``MBO_LAB_THREADS`` if set, else as many
    threads (up to 4) as there are CPUs idle right now (runnable tasks in
    ``/proc/loadavg``), less one for the thread that maps the fresh output pages ahead of
    the kernel (on a busy machine the threads wait for each other: a parallel pass measured
    ~35 % slower than one thread there). A number of threads is used only when the books split evenly enough
    (no part above 75 % of the records); 1 is one thread.
    """
    s = get_settings(engine=engine, chunk_records=chunk_records)
    every = every_ns(every)
    if price_type not in ("float", "fixed"):
        raise EngineError("price_type must be 'float' or 'fixed'")
    data = as_data(source)
    _check_unchanged(data)
    n = len(data)
    bar = None
    if progress or (progress is None and n >= 20 * s.chunk_records):
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="rec", unit_scale=True, desc="book", leave=False)
    try:
        if s.engine != "numba":
            eng = make_engine(s.engine, levels=levels)
            parts: list[BookFrames] = []
            for lo in range(0, n, s.chunk_records):
                chunk = data.records[lo: lo + s.chunk_records]
                parts.append(eng.apply(chunk, base_index=lo))
                if bar is not None:
                    bar.update(len(chunk))
            frames = BookFrames.concat(parts, levels)
            if every or changes_only:
                frames = _sample_reference(frames, data.records, every, changes_only)
            if compact and K.scan_counts(_readonly(data.records))[2] <= _U32_MAX:
                # the same exact narrowing as the kernel path: equal frames, equal dtypes
                for f in ("bid_sz", "ask_sz", "bid_ct", "ask_ct"):
                    setattr(frames, f, getattr(frames, f).astype(np.uint32))
            frames.counters = eng.counters
            return frames, data
        eng = NumbaEngine(levels, every=every, changes_only=changes_only)
        recs = _readonly(data.records)
        n_last, n_trades, size_sum = K.scan_counts(recs)
        sampled = every is not None or changes_only
        narrow = compact and size_sum <= _U32_MAX
        cap = n_last if not sampled else _sampled_rows(recs, n_last, every)
        buf = FrameBuffer(cap, levels, px=np.float64 if price_type == "float" else np.int64,
                          sz=np.uint32 if narrow else np.int64,
                          ct=np.uint32 if narrow else np.int32, column_major=True, fields=True)
        # every row of an unsampled pass is written: a thread maps the fresh pages ahead of
        # the kernel (first touches are the largest cost of a big output), and an automatic
        # thread count leaves it a CPU
        prefault = (not sampled and buf.nbytes >= _frames.PREFAULT_MIN_BYTES
                    and _frames.populate_supported())
        nthreads, pmul = (1, 1) if sampled else _plan_threads(recs, threads, int(prefault))
        if prefault:
            buf.start_prefault()
        trade_idx = np.empty(n_trades, np.int64)
        if nthreads > 1:
            counters = _run_threads(recs, buf, trade_idx, levels, nthreads, pmul,
                                    min(s.chunk_records, THREAD_CHUNK), bar)
            frames = buf.frames(n_last)
            frames.trades = trade_idx
            frames.counters = counters
            frames.threads = nthreads
            return frames, data
        n_out, n_tr = 0, 0
        for lo in range(0, n, s.chunk_records):
            chunk = recs[lo: lo + s.chunk_records]
            buf, n_out, n_tr, _ = eng.run(chunk, buf, n_out, trade_idx, lo, n_trades=n_tr)
            if bar is not None:
                bar.update(len(chunk))
        if sampled:
            buf, n_out = eng.flush(buf, n_out)
        frames = buf.frames(n_out)
        frames.trades = trade_idx[:n_tr]
        frames.counters = eng.counters
        return frames, data
    finally:
        if bar is not None:
            bar.close()


def iter_frames(path: str | os.PathLike, levels: int = 10, engine: str | None = None,
                chunk_records: int | None = None, progress: bool | None = None, *,
                every: str | int | None = None, changes_only: bool = False,
                reuse: bool = True, price_type: str = "fixed", buffers: int = 1
                ) -> Iterator[tuple[object, BookFrames]]:
    """Stream a DBN file through an engine: yields ``(chunk, frames)`` per chunk.

    Memory stays bounded by the chunk size (``.dbn.zst`` is decompressed as a stream).
    ``frames.index`` holds file-wide record indices; ``chunk.first_index`` is the chunk's
    offset, so ``chunk.records[frames.index - chunk.first_index]`` are the F_LAST records.
    With the Numba engine the frames also carry those records' fields (``frames.fields``),
    so ``frames.to_df(None, symbols)`` needs no records.

    ``reuse=True`` (default): the Numba engine writes every chunk's states into the same
    buffers, so a yielded ``frames`` (and a ``to_df`` made from it without copying) is
    valid only until the next chunk is requested; keep one with ``frames.copy()`` or pass
    ``reuse=False``. ``buffers=k`` rotates ``k`` such buffers (chunk ``i`` goes to buffer
    ``i % k``): a yielded ``frames`` then stays valid until ``k`` more chunks are requested,
    so a consumer can encode one chunk's states in another thread while the kernel writes
    the next (``mbo-lab mbp`` does, with 2).

    ``every``/``changes_only`` sample in the kernel (see :func:`mbp`). A state is emitted
    when its time bin ends, possibly in a later chunk; the states still pending after the
    last chunk come as one more ``(last chunk, frames)`` pair (their indices may point
    before that chunk, their fields are in ``frames.fields``).
    """
    s = get_settings(engine=engine, chunk_records=chunk_records)
    every = every_ns(every)
    sampled = every is not None or changes_only
    if int(buffers) < 1:
        raise EngineError(f"buffers must be >= 1, got {buffers!r}")
    if s.engine != "numba":
        if sampled:
            raise EngineError("iter_frames samples (every=, changes_only=) with the numba "
                              "engine only; use engine='numba' or replay_frames()")
        eng = make_engine(s.engine, levels=levels)
        for chunk in iter_chunks(path, s.chunk_records, progress=progress):
            yield chunk, eng.apply(chunk.records, base_index=chunk.first_index)
        return
    eng = NumbaEngine(levels, every=every, changes_only=changes_only)
    px = np.float64 if price_type == "float" else np.int64
    bufs: list[FrameBuffer | None] = [None] * int(buffers)
    chunk = None
    slot = -1
    for chunk in iter_chunks(path, s.chunk_records, progress=progress):
        slot = (slot + 1) % len(bufs)
        recs = _readonly(chunk.records)
        n_last, n_trades, _ = K.scan_counts(recs)
        need = n_last if not sampled else n_last + len(eng._smp[2]) + 16
        buf = bufs[slot]
        if buf is None or not reuse or buf.capacity < need:
            # reused: room for a whole chunk's states at once (only rows written become
            # resident memory), so a buffer is not regrown chunk after chunk
            cap = max(need, s.chunk_records) if reuse else max(need, 1)
            buf = FrameBuffer(cap, levels, px=px, column_major=True, fields=True)
        trade_idx = np.empty(n_trades, np.int64)
        buf, n_out, n_tr, _ = eng.run(recs, buf, 0, trade_idx, chunk.first_index)
        bufs[slot] = buf
        fr = buf.frames(n_out)
        fr.trades = trade_idx[:n_tr]
        fr.counters = eng.counters
        yield chunk, fr
    if sampled and chunk is not None and eng.pending:
        slot = (slot + 1) % len(bufs)
        buf = bufs[slot]
        if buf is None or not reuse:
            buf = FrameBuffer(eng.pending + 1, levels, px=px, column_major=True, fields=True)
        buf, n_out = eng.flush(buf, 0)
        fr = buf.frames(n_out)
        fr.counters = eng.counters
        yield chunk, fr


def mbp(source: Source, levels: int = 10, *, every: str | int | None = None,
        changes_only: bool = False, engine: str | None = None, price_type: str = "float",
        chunk_records: int | None = None, progress: bool | None = None,
        threads: int | None = None) -> pd.DataFrame:
    """Top-``levels`` book (MBP-N) at every record with F_LAST, as a DataFrame.

    One row per F_LAST record for that record's book ``(instrument_id, publisher_id)``,
    indexed by ``ts_recv`` (``datetime64[ns, UTC]``), with Databento's MBP column names
    ``bid_px_00``, ``ask_px_00``, ``bid_sz_00``, ``ask_sz_00``, ``bid_ct_00``,
    ``ask_ct_00``, ... up to ``levels - 1``, plus ``ts_event``, ``instrument_id``,
    ``publisher_id``, ``sequence``, ``record_index``, ``symbol`` (Categorical),
    ``crossed`` and ``locked``. Empty levels have NaN prices and zero sizes and counts.
    Prices are floats (currency units) or, with ``price_type="fixed"``, int64 fixed-point
    (1e-9). Sizes and counts are uint32 (as in Databento's MBP-10) when that holds every
    value of the source exactly, else int64 sizes and int32 counts. The anomaly counters
    of the run are in ``df.attrs["counters"]``, the threads that applied the books in
    ``df.attrs["threads"]``.

    Sampling, decided in the kernel (so memory follows the kept rows):

    * ``every="100ms"`` (a pandas offset string, or int ns): only the last state of each
      book in each ``ts_recv`` time bin ``[k * every, (k + 1) * every)``;
    * ``changes_only=True``: only states whose top ``levels`` (prices, sizes, counts) or
      cross state differ from that book's previous kept state.

    **A whole trading day at every F_LAST does not fit in memory** for MBP-10 (about 330
    bytes per state: 10M records -> ~3 GB, 100M -> ~30 GB): use ``every=`` and/or
    ``changes_only=True``, ``bbo()``, or stream with :func:`iter_frames`.

    ``engine`` is ``"numba"`` (default) or ``"reference"``; ``threads`` see
    :func:`replay_frames` (books in parallel threads for large multi-book streams).
    """
    frames, data = replay_frames(source, levels, engine, chunk_records, progress,
                                 every=every, changes_only=changes_only,
                                 price_type=price_type, compact=True, threads=threads)
    df = frames.to_df(data.records, data.symbols, price_type)
    df.attrs["counters"] = dict(frames.counters)
    df.attrs["threads"] = frames.threads
    return df


def bbo(source: Source, *, every: str | int | None = None, changes_only: bool = False,
        engine: str | None = None, price_type: str = "float",
        chunk_records: int | None = None, progress: bool | None = None,
        threads: int | None = None) -> pd.DataFrame:
    """Best bid and offer at every record with F_LAST: :func:`mbp` with ``levels=1`` (same
    sampling and thread options)."""
    return mbp(source, 1, every=every, changes_only=changes_only, engine=engine,
               price_type=price_type, chunk_records=chunk_records, progress=progress,
               threads=threads)
