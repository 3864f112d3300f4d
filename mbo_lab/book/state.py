"""The kernel's state arrays: allocate, grow, copy and restore (checkpoints).

A :class:`BookState` owns every flat array the Numba kernel works on (see
:data:`mbo_lab.book.kernel.STATE_FIELDS` and the layout in :mod:`mbo_lab.book.kernel`).
Growth happens here, in Python, when the kernel reports that a pool, table or segment is
full; :meth:`copy` gives an independent checkpoint that :meth:`restore` puts back.

:meth:`BookState.compact` gives a much smaller checkpoint, a :class:`CompactState` holding
only what the kernel can still read (live orders, live levels, the used rows of segments,
the live entries of both hashes, the free stacks' order): what a replay session keeps
every ``checkpoint_every`` records. :meth:`BookState.from_compact` (or :meth:`restore`)
rebuilds a state with the original capacities and hash seeds, from which the kernel
continues exactly as from the original.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from . import kernel as K

__all__ = ["BookState", "CompactState"]


def _pow2(n: int) -> int:
    return 1 << max(1, int(n - 1).bit_length())


#: Initial order-hash rows are sized for at most this many live orders (it grows with the
#: live count, independent of the order pool, so a small table stays in cache).
OH_INIT_ORDERS = 1 << 10


def _aligned(shape: tuple, fill: int = 0) -> np.ndarray:
    """An int64 array of ``shape`` filled with ``fill``, its data 64-byte aligned (rows of
    8 int64 then sit in one cache line each)."""
    n = int(np.prod(shape))
    buf = np.empty(8 * n + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off: off + 8 * n].view(np.int64).reshape(shape)
    out.fill(fill)
    return out


def _aligned_copy(arr: np.ndarray) -> np.ndarray:
    out = _aligned(arr.shape)
    out[...] = arr
    return out


def _grown(arr: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
    out = _aligned((rows,) + arr.shape[1:], fill)
    out[: len(arr)] = arr
    return out


def _frozen(arr: np.ndarray, dtype=None) -> np.ndarray:
    """A read-only copy of ``arr`` over an immutable ``bytes`` buffer (never a view of a
    live state; its WRITEABLE flag cannot be turned back on)."""
    a = np.ascontiguousarray(arr, dtype=dtype)
    return np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)


def _index_dtype(n: int) -> type:
    """int32 for indices below ``n`` when they fit (half the bytes), else int64."""
    return np.int32 if n < 2**31 else np.int64


def _stack_split(stack: np.ndarray, free: int) -> tuple[int, np.ndarray]:
    """A free stack ``stack[:free]`` as ``(r, top)``: its first ``r`` entries are the
    never-used rows ``cap-1, cap-2, ..., cap-r`` (how the state creates and grows a pool),
    ``top`` the rest, in stack order (freed rows, which the kernel hands out first)."""
    cap = len(stack)
    s = stack[:free]
    bad = np.flatnonzero(s != np.arange(cap - 1, cap - 1 - free, -1, dtype=np.int64))
    r = int(bad[0]) if len(bad) else int(free)
    return r, _frozen(s[r:], _index_dtype(cap))


def _segment_rows(seg: np.ndarray) -> np.ndarray:
    """The pool rows in use by segments ``seg`` (rows of start, length, ...), segment after
    segment: where :meth:`BookState.compact` gathers them and :meth:`BookState._load` puts
    them back."""
    lens = seg[:, K.S_LEN]
    offs = np.cumsum(lens) - lens
    return np.repeat(seg[:, K.S_START] - offs, lens) + np.arange(int(lens.sum()),
                                                                  dtype=np.int64)


@dataclass(frozen=True, eq=False)
class CompactState:
    """An immutable, compact checkpoint of a :class:`BookState` (see
    :meth:`BookState.compact`): only what the kernel can still read.

    Kept: the capacities (``shapes``) and ``meta`` (hash seeds, free counts, live count)
    and ``counters`` as they are; the occupied rows of the book hash (``bk_pos``,
    ``bk_rows``), the books' ``bk_info`` and ``seg`` rows; the live rows of every segment
    (``pool_rows``, in segment order) and the rows of their levels (``lvl_rows``, same
    order); the occupied order-hash rows (``oh_pos``, ``oh_rows``) and the rows of their
    orders (``ord_rows``, same order); each free stack as ``(r, top)`` (see
    :func:`_stack_split`), so the rows handed out next are the original's. Not kept: the
    contents of free order and level rows, of pool rows outside segments, of empty hash
    rows and of stack entries past the free count -- the kernel writes each before it
    reads it, so a restored state behaves exactly like the original (same outputs, same
    rows handed out, same hash probes).
    """

    shapes: Mapping[str, tuple]
    meta: np.ndarray
    counters: np.ndarray
    bk_pos: np.ndarray
    bk_rows: np.ndarray
    bk_info: np.ndarray
    seg: np.ndarray
    pool_rows: np.ndarray
    lvl_rows: np.ndarray
    lvl_free: tuple
    oh_pos: np.ndarray
    oh_rows: np.ndarray
    ord_rows: np.ndarray
    ord_free: tuple
    #: Full copies of state arrays this class does not know (a newer kernel's fields).
    extra: Mapping[str, np.ndarray]

    def _arrays(self) -> list[np.ndarray]:
        return [self.meta, self.counters, self.bk_pos, self.bk_rows, self.bk_info, self.seg,
                self.pool_rows, self.lvl_rows, self.lvl_free[1], self.oh_pos, self.oh_rows,
                self.ord_rows, self.ord_free[1], *self.extra.values()]

    def nbytes(self) -> int:
        """Bytes of the arrays this checkpoint holds."""
        return sum(a.nbytes for a in self._arrays())

    @property
    def live_orders(self) -> int:
        return int(self.meta[K.M_LIVE])

    @property
    def seeds(self) -> tuple[np.int64, np.int64]:
        return self.meta[K.M_SEED0], self.meta[K.M_SEED1]


#: State fields :meth:`BookState.compact` knows how to shrink.
_COMPACT_FIELDS = frozenset(("meta", "counters", "bk_hash", "bk_info", "seg", "pool", "lvl",
                             "lvl_free", "ords", "ord_free", "oh"))


class BookState:
    """All books of one stream, as flat int64 arrays for :func:`kernel.apply_records`.

    Parameters are initial capacities (books, live orders, price levels, segment pool
    rows); everything grows on demand by doubling.
    """

    def __init__(self, books: int = 8, orders: int = 1 << 14, levels: int = 1 << 13,
                 segment_pool: int = 1 << 12, seed: int | None = None):
        a: dict[str, np.ndarray] = {}
        a["meta"] = np.zeros(K.N_META, np.int64)
        # hash seeds: random per state (from the OS unless given), kept by copies
        rng = np.random.default_rng(seed if seed is not None else
                                    int.from_bytes(os.urandom(16), "little"))
        k0, k1 = rng.integers(-(2**63), 2**63 - 1, size=2, dtype=np.int64, endpoint=True)
        a["meta"][K.M_SEED0] = k0
        a["meta"][K.M_SEED1] = k1 | 1
        a["counters"] = np.zeros(K.N_COUNTERS, np.int64)
        a["bk_hash"] = np.zeros((_pow2(books * 2), 2), np.int64)
        a["bk_info"] = np.zeros((books, 2), np.int64)
        a["seg"] = np.zeros((2 * books, 3), np.int64)
        a["pool"] = np.zeros((segment_pool, 2), np.int64)
        a["lvl"] = _aligned((levels, K.N_LCOLS))
        a["lvl_free"] = np.arange(levels - 1, -1, -1, dtype=np.int64)
        a["meta"][K.M_LVL_FREE] = levels
        a["ords"] = _aligned((orders, K.N_OCOLS))
        a["ord_free"] = np.arange(orders - 1, -1, -1, dtype=np.int64)
        a["meta"][K.M_ORD_FREE] = orders
        oh = _aligned((_pow2(2 * min(orders, OH_INIT_ORDERS)), 2))
        oh[:, 1] = -1
        a["oh"] = oh
        self.arrays = a

    # ---- access
    def as_tuple(self) -> tuple:
        """The arrays in kernel order (``STATE_FIELDS``).

        The kernel indexes flat views with fixed row widths and no bounds checks, so the
        layout is checked here (a state built by another version would corrupt memory)."""
        a = self.arrays
        if a["ords"].shape[1] != K.N_OCOLS or a["lvl"].shape[1] != K.N_LCOLS or \
                a["seg"].shape[1] != 3 or a["pool"].shape[1] != 2 or a["oh"].shape[1] != 2:
            raise ValueError("BookState arrays do not have the kernel's layout")
        return tuple(a[name] for name in K.STATE_FIELDS)

    @property
    def n_books(self) -> int:
        return int(self.arrays["meta"][K.M_NBOOKS])

    @property
    def live_orders(self) -> int:
        """Orders resting in all books."""
        return int(self.arrays["meta"][K.M_LIVE])

    @property
    def counters(self) -> np.ndarray:
        return self.arrays["counters"]

    def book_index(self, instrument_id: int, publisher_id: int) -> int:
        """Index of a book, or -1 when it has never been seen."""
        key = ((int(instrument_id) << 16) | int(publisher_id)) + 1
        return int(K.book_find(self.arrays["bk_hash"], np.int64(key), *self.seeds))

    @property
    def seeds(self) -> tuple[np.int64, np.int64]:
        """The two hash seeds of this state (see :mod:`mbo_lab.book.kernel`)."""
        meta = self.arrays["meta"]
        return meta[K.M_SEED0], meta[K.M_SEED1]

    def book_keys(self) -> list[tuple[int, int]]:
        """``(instrument_id, publisher_id)`` of every book, in creation order."""
        info = self.arrays["bk_info"][: self.n_books]
        return [(int(i), int(p)) for i, p in info]

    def book_levels(self, b: int) -> tuple[int, int]:
        """(bid levels, ask levels) of book ``b``."""
        seg = self.arrays["seg"]
        return int(seg[2 * b, K.S_LEN]), int(seg[2 * b + 1, K.S_LEN])

    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.arrays.values())

    # ---- checkpoints
    def copy(self) -> BookState:
        """An independent deep copy (a checkpoint)."""
        new = BookState.__new__(BookState)
        new.arrays = {k: _aligned_copy(v) for k, v in self.arrays.items()}
        return new

    def restore(self, checkpoint: BookState | CompactState) -> None:
        """Make this state equal to ``checkpoint`` (which stays untouched): a copy, or a
        :class:`CompactState` (rebuilt into this state's arrays where shapes match)."""
        if isinstance(checkpoint, CompactState):
            self._load(checkpoint)
            return
        self.arrays = {k: _aligned_copy(v) for k, v in checkpoint.arrays.items()}

    def compact(self) -> CompactState:
        """A small immutable checkpoint of this state (see :class:`CompactState`); this
        state is not changed. :meth:`from_compact` or :meth:`restore` bring it back.

        It holds the live orders, levels and hash entries (tens of bytes each) instead of
        every array at full capacity: on a day of 5 books, ~0.1 MB instead of 1.9 MB."""
        a = self.arrays
        meta = a["meta"]
        nb = int(meta[K.M_NBOOKS])
        # segments: their live rows (the best level last) and those rows' levels
        seg = a["seg"][: 2 * nb]
        pool_rows = a["pool"][_segment_rows(seg)]
        lvl_rows = a["lvl"][pool_rows[:, 1]]
        # order hash: occupied rows, and their orders' rows
        oh = a["oh"]
        oh_pos = np.flatnonzero(oh[:, 1] >= 0)
        oh_rows = oh[oh_pos]
        ord_rows = a["ords"][oh_rows[:, 1] & K.SLOT_MASK]
        bk = a["bk_hash"]
        bk_pos = np.flatnonzero(bk[:, 0] != 0)
        return CompactState(
            shapes=MappingProxyType({k: v.shape for k, v in a.items()}),
            meta=_frozen(meta), counters=_frozen(a["counters"]),
            bk_pos=_frozen(bk_pos, _index_dtype(len(bk))), bk_rows=_frozen(bk[bk_pos]),
            bk_info=_frozen(a["bk_info"][:nb]), seg=_frozen(seg),
            pool_rows=_frozen(pool_rows), lvl_rows=_frozen(lvl_rows),
            lvl_free=_stack_split(a["lvl_free"], int(meta[K.M_LVL_FREE])),
            oh_pos=_frozen(oh_pos, _index_dtype(len(oh))), oh_rows=_frozen(oh_rows),
            ord_rows=_frozen(ord_rows),
            ord_free=_stack_split(a["ord_free"], int(meta[K.M_ORD_FREE])),
            extra=MappingProxyType({k: _frozen(v) for k, v in a.items()
                                    if k not in _COMPACT_FIELDS}),
        )

    @classmethod
    def from_compact(cls, snap: CompactState) -> BookState:
        """A new state equal to the one ``snap`` was taken from (same capacities and hash
        seeds; the kernel continues from it exactly as from the original)."""
        new = cls.__new__(cls)
        new.arrays = {}
        new._load(snap)
        return new

    def _load(self, snap: CompactState) -> None:
        """Rebuild every array from ``snap``, in place where an array already has the
        right shape (no fresh memory to fault in on a seek). Every new array is allocated
        before any reused one is written, so a failed allocation leaves the state as it
        was; a restore interrupted while writing (Ctrl-C) leaves it unusable until the next
        restore (:class:`~mbo_lab.replay.session.Session` restores again then)."""
        old = self.arrays
        names = [k for k in snap.shapes if k not in snap.extra]
        a: dict[str, np.ndarray] = {}
        for name in names:  # phase 1: choose or allocate (nothing written yet)
            shape = tuple(snap.shapes[name])
            arr = old.get(name)
            if arr is None or arr.shape != shape or arr.dtype != np.int64 or \
                    not arr.flags.writeable:
                arr = _aligned(shape)
            a[name] = arr
        extra = {name: _aligned_copy(v) for name, v in snap.extra.items()}
        for name in names:  # phase 2: fill
            a[name].fill(0)
        a["meta"][:] = snap.meta
        a["counters"][:] = snap.counters
        a["bk_hash"][snap.bk_pos] = snap.bk_rows
        a["bk_info"][: len(snap.bk_info)] = snap.bk_info
        a["seg"][: len(snap.seg)] = snap.seg
        # segment rows back at their places (the inverse of compact's gather)
        a["pool"][_segment_rows(snap.seg)] = snap.pool_rows
        a["lvl"][snap.pool_rows[:, 1]] = snap.lvl_rows
        oh = a["oh"]
        oh[:, 1] = -1
        oh[snap.oh_pos] = snap.oh_rows
        a["ords"][snap.oh_rows[:, 1] & K.SLOT_MASK] = snap.ord_rows
        for name, (r, top) in (("lvl_free", snap.lvl_free), ("ord_free", snap.ord_free)):
            st = a[name]
            cap = len(st)
            st[:r] = np.arange(cap - 1, cap - 1 - r, -1, dtype=np.int64)
            st[r: r + len(top)] = top
        a.update(extra)
        self.arrays = a

    # ---- growth (called by the engine on a kernel status)
    def grow(self, status: int) -> None:
        """Grow what the kernel status ``NEED_*`` names."""
        if status == K.NEED_ORDERS:
            self._grow_orders()
        elif status == K.NEED_LEVELS:
            self._grow_levels()
        elif status == K.NEED_SEGMENT:
            self._grow_segment(int(self.arrays["meta"][K.M_SEG_FULL]))
        elif status == K.NEED_BOOKS:
            self._grow_books()
        else:  # pragma: no cover - the kernel returns only the codes above
            raise ValueError(f"unknown kernel status {status}")

    def _grow_orders(self) -> None:
        a = self.arrays
        meta = a["meta"]
        n = len(a["ords"])
        if meta[K.M_ORD_FREE] < 1:
            free = int(meta[K.M_ORD_FREE])
            a["ords"] = _grown(a["ords"], 2 * n)
            stack = _aligned((2 * n,))
            stack[:free] = a["ord_free"][:free]
            stack[free: free + n] = np.arange(2 * n - 1, n - 1, -1)
            a["ord_free"] = stack
            meta[K.M_ORD_FREE] = free + n
        size = len(a["oh"])
        while int(meta[K.M_LIVE]) + 1 > size // 2:
            size *= 2
        if size > len(a["oh"]):
            new = _aligned((size, 2))
            new[:, 1] = -1
            K.rehash_orders(a["oh"], new, a["ords"], *self.seeds)
            a["oh"] = new

    def _grow_levels(self) -> None:
        a = self.arrays
        n = len(a["lvl"])
        free = int(a["meta"][K.M_LVL_FREE])
        a["lvl"] = _grown(a["lvl"], 2 * n)
        stack = _aligned((2 * n,))
        stack[:free] = a["lvl_free"][:free]
        stack[free: free + n] = np.arange(2 * n - 1, n - 1, -1)
        a["lvl_free"] = stack
        a["meta"][K.M_LVL_FREE] = free + n

    def _grow_books(self) -> None:
        a = self.arrays
        n = len(a["bk_info"])
        a["bk_info"] = _grown(a["bk_info"], 2 * n)
        a["seg"] = _grown(a["seg"], 4 * n)
        new = _aligned((_pow2(4 * n), 2))
        for key, b in a["bk_hash"][a["bk_hash"][:, 0] != 0]:
            K.book_put(new, key, b, *self.seeds)
        a["bk_hash"] = new

    def _grow_segment(self, s: int) -> None:
        """Give segment ``s`` twice its room (``s == -1``: room for one more book)."""
        a = self.arrays
        seg = a["seg"]
        nseg = 2 * self.n_books
        used = int(a["meta"][K.M_SEG_USED])
        if s >= 0:
            cap = 2 * int(seg[s, K.S_CAP])
            if used + cap <= len(a["pool"]):
                # room at the end of the pool: move the segment there
                start, length = int(seg[s, K.S_START]), int(seg[s, K.S_LEN])
                a["pool"][used: used + length] = a["pool"][start: start + length]
                seg[s, K.S_START] = used
                seg[s, K.S_CAP] = cap
                a["meta"][K.M_SEG_USED] = used + cap
                return
            seg[s, K.S_CAP] = cap
        # compact every segment into a new pool with room to spare
        needed = int(seg[:nseg, K.S_CAP].sum()) + 2 * K.SEG_INIT_CAP
        pool = _aligned((max(2 * needed, len(a["pool"])), 2))
        pos = 0
        for q in range(nseg):
            start, length = int(seg[q, K.S_START]), int(seg[q, K.S_LEN])
            pool[pos: pos + length] = a["pool"][start: start + length]
            seg[q, K.S_START] = pos
            pos += int(seg[q, K.S_CAP])
        a["pool"] = pool
        a["meta"][K.M_SEG_USED] = pos
