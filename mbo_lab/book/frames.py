"""Frame containers: book states at F_LAST records, and their conversion to pandas.

A :class:`BookFrames` holds, for every record with F_LAST, the index of that record and the
top-N levels (int64 fixed-point prices, sizes, counts) of the record's book, plus its cross
state. :meth:`BookFrames.to_df` gives Databento's MBP column naming (``bid_px_00``, ...).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..io.records import FIXED_PRICE_SCALE, UNDEF_PRICE

__all__ = ["BookFrames", "FrameBuffer", "CROSS_NONE", "CROSS_LOCKED", "CROSS_CROSSED",
           "FIELD_NAMES", "PREFAULT_MIN_BYTES"]

log = logging.getLogger(__name__)

#: Record fields a frame can carry itself (written by the kernel), with their dtypes.
FIELD_NAMES = (("ts_recv", np.int64), ("ts_event", np.int64), ("instrument_id", np.uint32),
               ("publisher_id", np.uint16), ("sequence", np.uint32))
_NO_FIELDS = tuple(np.zeros(0, dt) for _, dt in FIELD_NAMES)

CROSS_NONE = 0
CROSS_LOCKED = 1
CROSS_CROSSED = 2


@dataclass
class BookFrames:
    """Book states at F_LAST records.

    Attributes
    ----------
    index : int64 (n,)
        Record index (in the source) of each state's F_LAST record.
    bid_px, ask_px : int64 (n, levels)
        Level prices, fixed-point 1e-9, ``UNDEF_PRICE`` where the level is empty.
    bid_sz, ask_sz : int64 (n, levels)
        Level sizes (lots), 0 where empty.
    bid_ct, ask_ct : int32 (n, levels)
        Orders per level, 0 where empty (and for top-of-book levels).
    cross : int8 (n,)
        0 normal (or a side empty), 1 locked (bid == ask), 2 crossed (bid > ask).
    trades : int64 (t,)
        Record indices of Trade records.
    counters : dict[str, int]
        Anomaly counters of the engine after the run.
    fields : dict[str, ndarray] or None
        The F_LAST records' ``ts_recv``, ``ts_event`` (int64 ns), ``instrument_id``,
        ``publisher_id`` and ``sequence`` when the kernel wrote them (``mbp``/``bbo``,
        ``iter_frames``, sampling); :meth:`to_df` then needs no source records.
    level_log : int64 (k, 4)
        Level changes of the book selected with ``NumbaEngine.apply(log_key=...)``:
        ``[record_index, side (0 bid, 1 ask), price (fixed 1e-9), new size (lots)]``;
        shape (0, 4) when no book was selected.
    """

    index: np.ndarray
    bid_px: np.ndarray
    bid_sz: np.ndarray
    bid_ct: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray
    ask_ct: np.ndarray
    cross: np.ndarray
    trades: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counters: dict[str, int] = field(default_factory=dict)
    level_log: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    fields: dict[str, np.ndarray] | None = None
    #: threads that applied the books (1: one pass; see :func:`mbo_lab.book.build.replay_frames`)
    threads: int = 1

    @property
    def levels(self) -> int:
        return self.bid_px.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, n: int, levels: int) -> BookFrames:
        return cls(
            index=np.zeros(n, np.int64),
            bid_px=np.full((n, levels), UNDEF_PRICE, np.int64),
            bid_sz=np.zeros((n, levels), np.int64),
            bid_ct=np.zeros((n, levels), np.int32),
            ask_px=np.full((n, levels), UNDEF_PRICE, np.int64),
            ask_sz=np.zeros((n, levels), np.int64),
            ask_ct=np.zeros((n, levels), np.int32),
            cross=np.zeros(n, np.int8),
        )

    @classmethod
    def uninitialized(cls, n: int, levels: int) -> BookFrames:
        """Like :meth:`empty` without the fill, for writers that set every cell (the
        kernel does): skips a pass over memory that is about to be overwritten."""
        return cls(
            index=np.empty(n, np.int64),
            bid_px=np.empty((n, levels), np.int64),
            bid_sz=np.empty((n, levels), np.int64),
            bid_ct=np.empty((n, levels), np.int32),
            ask_px=np.empty((n, levels), np.int64),
            ask_sz=np.empty((n, levels), np.int64),
            ask_ct=np.empty((n, levels), np.int32),
            cross=np.empty(n, np.int8),
        )

    @classmethod
    def concat(cls, parts: list[BookFrames], levels: int) -> BookFrames:
        if not parts:
            return cls.empty(0, levels)
        out = cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in
              ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross",
               "trades")),
        )
        out.counters = dict(parts[-1].counters)
        out.level_log = np.concatenate([p.level_log for p in parts])
        if all(p.fields is not None for p in parts):
            out.fields = {k: np.concatenate([p.fields[k] for p in parts]) for k, _ in
                          FIELD_NAMES}
        return out

    def truncate(self, n: int) -> BookFrames:
        """The first ``n`` states (views)."""
        return BookFrames(self.index[:n], self.bid_px[:n], self.bid_sz[:n], self.bid_ct[:n],
                          self.ask_px[:n], self.ask_sz[:n], self.ask_ct[:n], self.cross[:n],
                          self.trades, dict(self.counters), self.level_log,
                          None if self.fields is None else
                          {k: v[:n] for k, v in self.fields.items()})

    def copy(self) -> BookFrames:
        """A deep copy (frames from a reused buffer stay valid after the next chunk)."""
        return BookFrames(*(getattr(self, f).copy() for f in _ARRAYS), self.trades.copy(),
                          dict(self.counters), self.level_log.copy(),
                          None if self.fields is None else
                          {k: v.copy() for k, v in self.fields.items()})

    def equals(self, other: BookFrames) -> bool:
        """True when both hold the same states (indices, levels, cross states)."""
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct",
                      "cross")
        )

    def to_df(self, records: np.ndarray | None = None, symbols: dict[int, str] | None = None,
              price_type: str = "float") -> pd.DataFrame:
        """MBP-style table, one row per state, Databento column names.

        ``records`` are the source records the indices point into (index 0 = first); not
        needed when the frames carry their record fields (:attr:`fields`). Prices are float
        (NaN where a level is empty) or, with ``price_type="fixed"``, int64 fixed-point with
        ``UNDEF_PRICE`` for empty levels. Columns are views of the frames' arrays where
        possible (no copies): do not reuse the frames' buffers while the table is in use.
        ``symbol`` is a pandas Categorical.
        """
        if price_type not in ("float", "fixed"):
            raise ValueError("price_type must be 'float' or 'fixed'")
        if self.fields is not None:
            f = self.fields
        else:
            if records is None:
                raise ValueError("to_df needs the source records (these frames carry no "
                                 "record fields)")
            idx = self.index
            f = {name: np.asarray(records[name][idx]).astype(dt, copy=False)
                 for name, dt in FIELD_NAMES}
            f["ts_recv"] = f["ts_recv"].view(np.int64)
            f["ts_event"] = f["ts_event"].view(np.int64)
        cols: dict[str, object] = {
            "ts_event": _utc(f["ts_event"]),
            "instrument_id": f["instrument_id"],
            "publisher_id": f["publisher_id"],
            "sequence": f["sequence"],
            "record_index": self.index,
        }
        if symbols is not None:
            cols["symbol"] = _symbols(f["instrument_id"], symbols)
        sides = (("bid", _prices(self.bid_px, price_type), self.bid_sz, self.bid_ct),
                 ("ask", _prices(self.ask_px, price_type), self.ask_sz, self.ask_ct))
        for k in range(self.levels):
            for side, px, _, _ in sides:
                cols[f"{side}_px_{k:02d}"] = px[:, k]
            for side, _, sz, _ in sides:
                cols[f"{side}_sz_{k:02d}"] = sz[:, k]
            for side, _, _, ct in sides:
                cols[f"{side}_ct_{k:02d}"] = ct[:, k]
        cols["crossed"] = self.cross == CROSS_CROSSED
        cols["locked"] = self.cross == CROSS_LOCKED
        index = pd.DatetimeIndex(_utc(f["ts_recv"]), copy=False, name="ts_recv")
        return pd.DataFrame(cols, index=index, copy=False)


_ARRAYS = ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross")
_UTC = pd.DatetimeTZDtype("ns", "UTC")


def _utc(ns: np.ndarray):
    """int64 ns since the epoch as a ``datetime64[ns, UTC]`` array, without a copy."""
    ns = np.ascontiguousarray(ns).view(np.int64).view("M8[ns]")
    try:
        return pd.arrays.DatetimeArray._simple_new(ns, dtype=_UTC)
    except (AttributeError, TypeError):  # pragma: no cover - other pandas versions
        return pd.DatetimeIndex(ns).tz_localize("UTC").array


def _symbols(iid: np.ndarray, symbols: dict[int, str]) -> pd.Categorical:
    """Symbols of instrument ids as a Categorical, in one vectorised step (ids missing from
    ``symbols`` get "")."""
    from . import kernel as K

    keys = np.array(sorted(symbols), dtype=np.int64)
    names = sorted(set(symbols.values()) | {""})
    code_of = {name: c for c, name in enumerate(names)}
    key_codes = np.array([code_of[symbols[int(k)]] for k in keys] + [code_of[""]],
                         dtype=np.int32)
    ctype = np.int8 if len(names) < 127 else np.int16 if len(names) < 32767 else np.int32
    codes = np.empty(len(iid), ctype)
    K.symbol_codes(np.ascontiguousarray(iid, dtype=np.uint32), keys, key_codes, codes)
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(names), validate=False)


def _prices(px: np.ndarray, price_type: str) -> np.ndarray:
    """Prices in the requested type: float frames (written by the kernel) pass through."""
    if price_type == "fixed":
        if px.dtype.kind == "f":
            raise ValueError("these frames hold float prices; build them with "
                             "price_type='fixed' for fixed-point output")
        return px
    if px.dtype.kind == "f":
        return px
    out = px.astype(np.float64)
    out /= FIXED_PRICE_SCALE
    out[px == UNDEF_PRICE] = np.nan
    return out


class FrameBuffer:
    """Kernel output storage with room for ``capacity`` states.

    ``column_major`` stores each level of each column contiguously (``(levels, cap)``,
    what pandas columns want); otherwise rows (``(cap, levels)``). Price, size and count
    dtypes are the kernel's output types (int64 or float64 prices; int64/uint32 sizes;
    int32/uint32 counts). ``fields`` adds the record fields of :data:`FIELD_NAMES`.

    ``prefault=True`` maps the buffer's pages in a background thread, in row order (see
    :meth:`start_prefault`): for writers that will fill every row (an unsampled pass sized
    exactly), so the page faults of fresh memory overlap the kernel instead of stalling it.
    """

    def __init__(self, capacity: int, levels: int, *, px=np.int64, sz=np.int64, ct=np.int32,
                 column_major: bool = False, fields: bool = False, prefault: bool = False):
        cap, L = int(capacity), int(levels)
        self.capacity, self.levels, self.column_major = cap, L, column_major
        self.dtypes = (np.dtype(px), np.dtype(sz), np.dtype(ct))
        shape = (L, cap) if column_major else (cap, L)
        self.rs, self.ks = (1, cap) if column_major else (L, 1)
        self.index = np.empty(cap, np.int64)
        self.store = {name: np.empty(shape, dt) for name, dt in
                      (("bid_px", px), ("bid_sz", sz), ("bid_ct", ct), ("ask_px", px),
                       ("ask_sz", sz), ("ask_ct", ct))}
        self.cross = np.empty(cap, np.int8)
        self.fields = tuple(np.empty(cap, dt) for _, dt in FIELD_NAMES) if fields else \
            _NO_FIELDS
        self._prefault: _Prefault | None = None
        if prefault:
            self.start_prefault()

    @property
    def nbytes(self) -> int:
        """Bytes of all output arrays."""
        return sum(a.nbytes for a in self._arrays())

    def _arrays(self) -> tuple:
        return (self.index, *self.store.values(), self.cross, *self.fields)

    def start_prefault(self, rows: int | None = None) -> threading.Thread | None:
        """Map (page-fault in) the first ``rows`` rows (default: all) of every array in a
        background thread, without changing their contents.

        Fresh memory costs a page fault on its first write; on virtual machines that hand
        freed memory back to the host (free page reporting) this runs at only 0.4-0.6 GiB/s,
        slower than the kernel writes states. Mapping the pages ahead of the writer, block
        by block in row order, moves that cost onto another core. Uses Linux'
        ``madvise(MADV_POPULATE_WRITE)`` (5.14+), which faults pages in writable and never
        touches data, so it is safe while the kernel writes the same rows. A no-op on other
        systems, for buffers under :data:`PREFAULT_MIN_BYTES`, and when already started.
        Returns the thread (None when nothing was started); :meth:`stop_prefault` ends it.
        Only for writers that fill these rows: pages mapped here count as resident memory.
        """
        if self._prefault is not None or not populate_supported():
            return None
        n = self.capacity if rows is None else max(0, min(int(rows), self.capacity))
        row_bytes = self.nbytes // max(1, self.capacity)
        if n * row_bytes < PREFAULT_MIN_BYTES:
            return None
        self._prefault = _Prefault(self._ranges(n), self._arrays())
        return self._prefault.thread

    def stop_prefault(self) -> None:
        """Stop a prefault thread (it ends after the column range it is mapping: 2 MiB of
        an 8-byte column); waits for it."""
        if self._prefault is not None:
            self._prefault.stop()

    def __del__(self) -> None:
        pf = getattr(self, "_prefault", None)
        if pf is not None:
            pf.stop_event.set()

    def _ranges(self, n: int) -> list[list[tuple[int, int]]]:
        """Byte ranges ``(address, length)`` to populate, grouped by row block so that every
        array is mapped about as far as the writer will have got."""
        per_array = []
        for a in self._arrays():
            if a.ndim == 2 and self.column_major:  # (levels, cap): one column per level
                per_array += [(a.ctypes.data + k * a.strides[0], a.itemsize) for k in
                              range(a.shape[0])]
            else:
                per_array.append((a.ctypes.data, a.itemsize * (a.shape[1] if a.ndim == 2
                                                               else 1)))
        blocks = []
        for lo in range(0, n, _PREFAULT_ROWS):
            hi = min(n, lo + _PREFAULT_ROWS)
            blocks.append([(base + lo * width, (hi - lo) * width) for base, width in per_array])
        return blocks

    def flat(self, name: str) -> np.ndarray:
        return self.store[name].reshape(-1)

    def kernel_outputs(self) -> tuple:
        """``(out_idx, bpx, bsz, bct, apx, asz, act, cross)`` flat, for the kernel."""
        return (self.index, self.flat("bid_px"), self.flat("bid_sz"), self.flat("bid_ct"),
                self.flat("ask_px"), self.flat("ask_sz"), self.flat("ask_ct"), self.cross)

    def view(self, name: str, lo: int, hi: int) -> np.ndarray:
        a = self.store[name]
        return a[:, lo:hi].T if self.column_major else a[lo:hi]

    def frames(self, n: int, lo: int = 0) -> BookFrames:
        """States ``lo..n-1`` as :class:`BookFrames` (views of this buffer)."""
        fr = BookFrames(self.index[lo:n], *(self.view(k, lo, n) for k in
                                            ("bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz",
                                             "ask_ct")), self.cross[lo:n])
        if self.fields is not _NO_FIELDS:
            fr.fields = {name: a[lo:n] for (name, _), a in zip(FIELD_NAMES, self.fields)}
        return fr

    def grown(self, n_used: int, capacity: int) -> FrameBuffer:
        """A larger buffer holding this one's first ``n_used`` states."""
        self.stop_prefault()
        px, sz, ct = self.dtypes
        new = FrameBuffer(capacity, self.levels, px=px, sz=sz, ct=ct,
                          column_major=self.column_major, fields=self.fields is not _NO_FIELDS)
        new.index[:n_used] = self.index[:n_used]
        new.cross[:n_used] = self.cross[:n_used]
        for k in new.store:
            new.view(k, 0, n_used)[...] = self.view(k, 0, n_used)
        if new.fields is not _NO_FIELDS:
            for a, b in zip(new.fields, self.fields):
                a[:n_used] = b[:n_used]
        return new


#: Smallest mapping (bytes) worth a prefault thread: below it first touches cost little.
PREFAULT_MIN_BYTES = 64 << 20
_PREFAULT_ROWS = 1 << 18  # rows per block: 2 MiB (a huge page) of an 8-byte column
_MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux >= 5.14
_PAGE = 4096
_populate_state: dict[str, object] = {}


def _madvise():
    """libc ``madvise`` via ctypes (the call releases the GIL), or None off Linux."""
    if "fn" not in _populate_state:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):  # pragma: no cover - exotic libc
                fn = None
        _populate_state["fn"] = fn
    return _populate_state["fn"]


def populate_supported() -> bool:
    """Whether :meth:`FrameBuffer.start_prefault` can map pages here (Linux >= 5.14, and
    not refused by a seccomp filter): tried once on a scratch page, then remembered."""
    if _madvise() is None or _populate_state.get("unsupported"):
        return False
    if "probed" not in _populate_state:
        import mmap

        scratch = mmap.mmap(-1, _PAGE)  # page-aligned, private, anonymous
        view = ctypes.c_char.from_buffer(scratch)
        ok = _madvise()(ctypes.addressof(view), _PAGE, _MADV_POPULATE_WRITE) == 0
        del view  # (an exported buffer keeps the map from closing)
        scratch.close()
        _populate_state["probed"] = True
        if not ok:
            _populate_state["unsupported"] = True
            log.debug("madvise(MADV_POPULATE_WRITE) refused (errno %d): no output prefault",
                      ctypes.get_errno())
    return not _populate_state.get("unsupported")


def _populate(addr: int, length: int) -> bool:
    """``madvise(MADV_POPULATE_WRITE)`` on the whole pages inside ``[addr, addr+length)``.
    False when the kernel does not support it (then remembered: no further tries)."""
    lo = (addr + _PAGE - 1) & ~(_PAGE - 1)
    hi = (addr + length) & ~(_PAGE - 1)
    if hi <= lo:
        return True
    if _madvise()(lo, hi - lo, _MADV_POPULATE_WRITE) == 0:
        return True
    err = ctypes.get_errno()
    if err == 22:  # EINVAL: kernel older than 5.14
        _populate_state["unsupported"] = True
        log.debug("madvise(MADV_POPULATE_WRITE) not supported here; no output prefault")
    else:  # ENOMEM (range gone) or EFAULT/EHWPOISON: stop quietly, writers fault as usual
        log.debug("madvise(MADV_POPULATE_WRITE) failed with errno %d; prefault stopped", err)
    return False


class _Prefault:
    """A daemon thread populating byte ranges block by block until done or stopped; it
    holds the arrays (``keep``) so their memory stays mapped while it runs."""

    def __init__(self, blocks: list[list[tuple[int, int]]], keep: tuple):
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(blocks, self.stop_event, keep),
                                       name="mbo_lab-prefault", daemon=True)
        self.thread.start()

    @staticmethod
    def _run(blocks: list[list[tuple[int, int]]], stop: threading.Event, keep: tuple) -> None:
        for block in blocks:
            for addr, length in block:  # one column's rows of the block: a few ms at most
                if stop.is_set() or not _populate(addr, length):
                    return

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not threading.current_thread():
            self.thread.join()
