"""Reading and writing Databento MBO files (``.dbn`` and ``.dbn.zst``, DBN versions 1-3).

``load(path)`` returns :class:`MboData`: the records as a NumPy structured array in
Databento's MBO layout (:data:`~mbo_lab.io.records.MBO_DTYPE`) plus :class:`DbnMetadata`.
Plain ``.dbn`` files are memory-mapped (no copy of the records); ``.dbn.zst`` files are
decompressed once into memory. :func:`iter_chunks` streams any file in fixed-size chunks
for files larger than memory. :class:`DbnWriter` writes MBO records as real DBN files
(the metadata is encoded by ``databento_dbn``), so every file mbo_lab writes is readable
by Databento's own tools.

Integrity: inputs are checked before opening (:func:`check_input_path`: missing path,
directory, symlink loop, permission, fifo/device). A ``.zst`` is walked frame by frame and
block by block, so a file cut anywhere -- also where the decompressed data happens to end
on a record boundary -- raises :class:`~mbo_lab.errors.TruncatedFileError`; content
checksums are verified when present (files written here always carry one) and damage
raises :class:`~mbo_lab.errors.CorruptFileError` with the compressed offset. The header
and record layout are checked as the data is decompressed (at most ~128 KiB at a time),
so a small file that expands to gigabytes of junk is rejected at once. A memory-mapped
file changed after loading is caught by :meth:`MboData.check_unchanged`
(:class:`~mbo_lab.errors.FileChangedError`) instead of a SIGBUS.

>>> data = load(demo_path())          # doctest: +SKIP
>>> len(data), data.metadata.schema   # doctest: +SKIP
(200000, 'mbo')
"""

from __future__ import annotations

import datetime as _dt
import errno
import html
import logging
import mmap
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from ..errors import (
    ArgumentError,
    CorruptFileError,
    DataError,
    FileChangedError,
    InputPathError,
    NotDbnError,
    TruncatedFileError,
    UnsupportedVersionError,
    WrongSchemaError,
)
from .records import (
    BYTE_LABELS,
    FIXED_PRICE_SCALE,
    MBO_DTYPE,
    RECORD_SIZE,
    RTYPE_MBO,
    UNDEF_PRICE,
    ns_to_datetime,
    to_ns,
)

__all__ = [
    "DbnMetadata",
    "MboData",
    "DbnWriter",
    "load",
    "iter_chunks",
    "write_dbn",
    "check_input_path",
    "SUPPORTED_VERSIONS",
]

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (1, 2, 3)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PROGRESS_MIN_BYTES = 64 << 20


@dataclass(frozen=True)
class DbnMetadata:
    """What a DBN file says about its content.

    Attributes
    ----------
    path : str | None
        Source file (None for data built in memory).
    version : int
        DBN version of the file (1-3).
    dataset, schema : str
        e.g. ``"GLBX.MDP3"`` and ``"mbo"``.
    start, end : int | None
        Requested time range, ns since the epoch (UTC).
    stype_in, stype_out : str | None
        Symbology types of the request.
    symbols : list[str]
        Requested symbols.
    mappings : dict[str, list[dict]]
        Raw symbol -> intervals ``{"start_date", "end_date", "symbol"}``; with
        ``stype_out == "instrument_id"`` the interval's symbol is the instrument id.
    compressed : bool
        True for Zstandard (``.dbn.zst``) files.
    """

    path: str | None = None
    version: int = 3
    dataset: str = ""
    schema: str = "mbo"
    start: int | None = None
    end: int | None = None
    stype_in: str | None = None
    stype_out: str | None = None
    symbols: list[str] = field(default_factory=list)
    mappings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    compressed: bool = False

    @property
    def instrument_symbols(self) -> dict[int, str]:
        """instrument_id -> raw symbol, from the mappings (later intervals win)."""
        out: dict[int, str] = {}
        for raw, intervals in self.mappings.items():
            for iv in intervals:
                sym = str(iv.get("symbol", ""))
                if sym.isascii() and sym.isdigit():
                    out[int(sym)] = raw
        return out


# --------------------------------------------------------------------------- input paths


def _not_found(path: Path) -> InputPathError:
    parent = path.parent
    extra = "" if parent.is_dir() else f" (the folder {parent} does not exist either)"
    return InputPathError(
        f"file not found: {path}{extra}. Pass the path of a Databento MBO file (.dbn or "
        ".dbn.zst); for demo data call mbo_lab.demo_path() or "
        "mbo_lab.load(mbo_lab.demo_path())."
    )


_KINDS = (
    (stat.S_ISFIFO, "a named pipe (fifo)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _path_error(path: Path, exc: OSError) -> InputPathError:
    """Turn an OSError of stat/open into a message naming the real cause."""
    if isinstance(exc, FileNotFoundError):
        if os.path.lexists(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return InputPathError(
                f"{path} is a symbolic link to a missing target ({target}). Fix the link or "
                "pass the real file."
            )
        return _not_found(path)
    if exc.errno == errno.ELOOP:
        return InputPathError(
            f"{path}: symbolic link loop (the link points back to itself through other "
            "links). Fix the links or pass the real file."
        )
    if isinstance(exc, NotADirectoryError):
        return InputPathError(
            f"{path}: a part of the path before the file name is a file, not a folder. "
            "Check the path."
        )
    if isinstance(exc, IsADirectoryError):
        return InputPathError(
            f"{path} is a directory, not a file. Pass a .dbn or .dbn.zst file inside it "
            "(mbo-lab batch takes a glob such as 'days/*.dbn.zst')."
        )
    if isinstance(exc, PermissionError):
        return InputPathError(
            f"{path}: permission denied ({exc.strerror}); this user may not read the file or "
            "search a folder on its path. Change its permissions (chmod) or copy it."
        )
    return InputPathError(f"{path}: cannot open the file ({exc.strerror or exc}).")


def _open_input(path: Path) -> BinaryIO:
    """Open ``path`` for reading after checking it is a readable regular file.

    Never blocks: fifos, devices and sockets are refused from ``stat`` before any open,
    and the open itself is non-blocking.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _path_error(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise _path_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))
    if not stat.S_ISREG(st.st_mode):
        raise InputPathError(
            f"{path} is {_kind(st.st_mode)}, not a regular file; mbo_lab reads DBN files "
            "only. Save the stream to a file first and pass that file."
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _path_error(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise InputPathError(f"{path} is {_kind(st.st_mode)}, not a regular file.")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_input_path(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be read as a DBN input file; return it as a Path.

    Raises :class:`~mbo_lab.errors.InputPathError` (a ``DataError``) that names the real
    cause: missing file (or folder), a directory, a broken symlink or symlink loop, no
    read permission, or not a regular file (fifo, device, socket: refused before any
    open, so nothing hangs). The content is not checked; :func:`load` does that.
    """
    p = Path(path)
    _open_input(p).close()
    return p


# --------------------------------------------------------------------------- Zstandard

_ZSTD_FRAME_MAGIC = 0xFD2FB528
_BLOCK_MAX = 1 << 17           # zstd blocks decompress to at most 128 KiB
_FEED_BYTES = 1                # feed the decoder block by block: exact error positions
_FEED_OUT = 8 << 20            # decompressed bytes produced per step (at most)
_READ_BYTES = 1 << 20


class _ZstdBlocks:
    """Walk a Zstandard file frame by frame and block by block, and decompress it.

    :meth:`pieces` yields the decompressed data in pieces of at most ~8 MiB, so a small
    file that expands enormously is checked piece by piece (never all at once). After the
    iteration, ``truncated`` says where the data ends if the last frame is incomplete
    (a cut on a block boundary decodes cleanly: only the frame structure tells).
    Content checksums are verified by the decoder when a frame has one.
    """

    def __init__(self, fh: BinaryIO, where: str):
        self.fh = fh
        self.where = where
        self._buf = bytearray()
        self._cur = 0
        self._base = 0
        self.truncated: str | None = None
        self.out_bytes = 0
        self.frames = 0
        self.checksummed_frames = 0
        #: Decompressed length of the DBN prelude (set by the reader) for messages.
        self.data_offset: int | None = None

    @property
    def offset(self) -> int:
        """Compressed file offset of the next unread byte."""
        return self._base + self._cur

    def _have(self, n: int) -> bool:
        while len(self._buf) - self._cur < n:
            if self._cur:
                del self._buf[: self._cur]
                self._base += self._cur
                self._cur = 0
            more = self.fh.read(max(n - len(self._buf), _READ_BYTES))
            if not more:
                return False
            self._buf += more
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[self._cur: self._cur + n])
        self._cur += n
        return out

    def _skip(self, n: int) -> bool:
        while n:
            if not self._have(1):
                return False
            k = min(n, len(self._buf) - self._cur)
            self._cur += k
            n -= k
        return True

    def _records_note(self) -> str:
        if self.data_offset is None:
            return f"after {self.out_bytes:,} decompressed bytes (inside the DBN header)"
        n = max(0, self.out_bytes - self.data_offset) // RECORD_SIZE
        return f"after {n:,} whole records"

    def _records_done(self) -> int:
        if self.data_offset is None:
            return 0
        return max(0, self.out_bytes - self.data_offset) // RECORD_SIZE

    def _corrupt(self, what: str, at: int) -> CorruptFileError:
        return CorruptFileError(
            f"{self.where} is damaged: {what} (near compressed byte offset {at:,}, "
            f"{self._records_note()}); download it again (or copy it again from its source).",
            records_read=self._records_done(), byte_offset=at,
        )

    def _cut(self, inside: str) -> None:
        end = self.offset + len(self._buf) - self._cur
        self.truncated = (
            f"the Zstandard data stops at compressed byte {end:,} (the end of the file), "
            f"inside {inside}: the frame did not end"
        )

    def pieces(self) -> Iterator[bytes]:
        """Decompressed data, in order, in pieces of at most ~8 MiB."""
        while True:
            if not self._have(1):
                return  # clean end after a complete frame
            start = self.offset
            if not self._have(4):
                self._cut("a frame's magic number")
                return
            magic = int.from_bytes(self._buf[self._cur: self._cur + 4], "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                if not self._have(8):
                    self._cut("a skippable frame header")
                    return
                self._cur += 4
                size = int.from_bytes(self._take(4), "little")
                if not self._skip(size):
                    self._cut("a skippable frame")
                    return
                continue
            if magic != _ZSTD_FRAME_MAGIC:
                raise self._corrupt(
                    f"the bytes at offset {start:,} ({bytes(self._buf[self._cur:self._cur + 4])!r})"
                    " are not the start of a Zstandard frame", start)
            done = yield from self._frame(start)
            if not done:
                return

    def _frame(self, start: int) -> Iterator[bytes]:
        import zstandard

        if not self._have(5):
            self._cut("a frame header")
            return False
        fhd = self._buf[self._cur + 4]
        if fhd & 0x08:
            raise self._corrupt("a frame header has its reserved bit set", start)
        fcs_code, single, has_sum, did_code = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
        fcs_len = (1 if single else 0, 2, 4, 8)[fcs_code]
        did_len = (0, 1, 2, 4)[did_code]
        hlen = 5 + (0 if single else 1) + did_len + fcs_len
        if not self._have(hlen):
            self._cut("a frame header")
            return False
        header = self._take(hlen)
        if single:
            fcs = int.from_bytes(header[5 + did_len:], "little") + (256 if fcs_len == 2 else 0)
            window = fcs
        else:
            wd = header[5]
            base = 1 << (10 + (wd >> 3))
            window = base + (base >> 3) * (wd & 7)
        block_max = min(window, _BLOCK_MAX)
        dobj = zstandard.ZstdDecompressor().decompressobj()
        feed: list[bytes] = [header]
        feed_start = start
        feed_len, out_bound = hlen, 0

        def flush() -> bytes:
            nonlocal feed_len, out_bound, feed_start
            data = b"".join(feed)
            feed.clear()
            try:
                out = dobj.decompress(data)
            except zstandard.ZstdError as exc:
                text = str(exc)
                what = ("its content checksum does not match (the data changed after it was "
                        "written)" if "checksum" in text.lower()
                        else f"Zstandard decoding failed ({text})")
                raise self._corrupt(what, feed_start) from None
            feed_start += feed_len
            feed_len, out_bound = 0, 0
            self.out_bytes += len(out)
            return out

        while True:
            if not self._have(3):
                if feed_len:
                    out = flush()
                    if out:
                        yield out
                self._cut("a block header")
                return False
            at = self.offset
            bh = int.from_bytes(self._buf[self._cur: self._cur + 3], "little")
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise self._corrupt("a block has the reserved block type", at)
            if bsize > block_max:
                raise self._corrupt(
                    f"a block claims {bsize:,} bytes, more than the frame allows "
                    f"({block_max:,})", at)
            clen = 1 if btype == 1 else bsize
            if not self._have(3 + clen):
                if feed_len:
                    out = flush()
                    if out:
                        yield out
                self._cut("a block")
                return False
            feed.append(self._take(3 + clen))
            feed_len += 3 + clen
            out_bound += block_max if btype == 2 else bsize
            if last:
                break
            if feed_len >= _FEED_BYTES or out_bound + block_max > _FEED_OUT:
                out = flush()
                if out:
                    yield out
        if has_sum:
            if not self._have(4):
                out = flush()
                if out:
                    yield out
                self._cut("the frame's content checksum")
                return False
            feed.append(self._take(4))
            feed_len += 4
        out = flush()
        if out:
            yield out
        if not dobj.eof:
            raise self._corrupt("a frame did not end after its last block", self.offset)
        self.frames += 1
        self.checksummed_frames += has_sum
        return True


# --------------------------------------------------------------------------- reading

#: Largest DBN metadata header accepted (bytes); real ones are KiB to a few MiB.
MAX_METADATA_BYTES = 256 << 20


def _parse_prelude(head: bytes, where: str) -> tuple[int, int]:
    """Return (version, metadata_length) from the first 8 bytes; raise on bad input."""
    if len(head) < 8 or head[:3] != b"DBN":
        got = bytes(head[:8])
        raise NotDbnError(
            f"{where} is not a DBN file: it starts with {got!r}, not b'DBN'. Pass a "
            "Databento Binary Encoding file (.dbn, or .dbn.zst compressed)."
        )
    version = head[3]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"{where} is DBN version {version}; mbo_lab reads versions "
            f"{SUPPORTED_VERSIONS[0]}-{SUPPORTED_VERSIONS[-1]}. Convert it with Databento's "
            "`dbn` tool (e.g. `dbn --upgrade`) or upgrade mbo_lab."
        )
    (meta_len,) = struct.unpack("<I", bytes(head[4:8]))
    if meta_len > MAX_METADATA_BYTES:
        raise NotDbnError(
            f"{where}: the DBN header claims {meta_len:,} bytes of metadata (more than "
            f"{MAX_METADATA_BYTES >> 20} MiB): the file is damaged or not DBN; download it "
            "again."
        )
    return version, meta_len


_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


def _decode_metadata(prelude: bytes, where: str, version: int, compressed: bool) -> DbnMetadata:
    import databento_dbn

    try:
        m = databento_dbn.Metadata.decode(bytes(prelude))
        schema = _enum_name(m.schema)
        fields = dict(
            path=None if where == "<memory>" else where,
            version=version,
            dataset=str(m.dataset),
            schema=schema,
            start=int(m.start) if m.start is not None else None,
            end=int(m.end) if m.end is not None else None,
            stype_in=_enum_name(m.stype_in),
            stype_out=_enum_name(m.stype_out),
            symbols=[str(x) for x in (m.symbols or [])],
            mappings={
                str(raw): [
                    {"start_date": iv["start_date"], "end_date": iv["end_date"],
                     "symbol": iv["symbol"]}
                    for iv in ivs
                ]
                for raw, ivs in (m.mappings or {}).items()
            },
            compressed=compressed,
        )
    except BaseException as exc:  # the decoder's error type varies; a Rust panic is BaseException
        if isinstance(exc, _PASS_THROUGH):
            raise
        raise NotDbnError(
            f"{where}: the DBN metadata header could not be decoded ({type(exc).__name__}: "
            f"{exc}). The file is damaged or not DBN; download it again."
        ) from None
    # databento_dbn gives enums; their value is e.g. 'mbo' / 'raw_symbol'
    if schema != "mbo":
        what = "several schemas (no single schema)" if schema is None else f"schema '{schema}'"
        raise WrongSchemaError(
            f"{where} holds {what}, not 'mbo' (market by order). Request the data with "
            "schema='mbo' from Databento; mbo_lab rebuilds books from MBO records only."
        )
    return DbnMetadata(**fields)


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    v = getattr(value, "value", value)
    return str(v).lower()


def _progress(total: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = total >= _PROGRESS_MIN_BYTES
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _truncation(where: str, body_len: int, offset: int, records_before: int,
                frame_cut: str | None) -> tuple[int, str | None]:
    """(whole records, message or None) for a body of ``body_len`` bytes at ``offset``.

    ``frame_cut`` says where a Zstandard frame was cut (None: complete or plain file).
    ``records_before`` counts records that precede this body (chunked reads).
    """
    n = body_len // RECORD_SIZE
    rest = body_len - n * RECORD_SIZE
    if not rest and frame_cut is None:
        return n, None
    stop = offset + n * RECORD_SIZE
    total = records_before + n
    if rest:
        what = (f"{total:,} whole records were read, then {rest} bytes of an incomplete "
                f"record at byte offset {stop:,} (record index {total:,})")
    else:
        what = (f"{total:,} whole records were read, up to decompressed byte offset "
                f"{stop:,} (record index {total:,})")
    if frame_cut is not None:
        what += f"; {frame_cut}"
    msg = (f"{where} is truncated: {what}. Download the file again, or pass "
           "allow_truncated=True to keep the whole records.")
    return n, msg


def _check_body(body_len: int, offset: int, where: str, allow_truncated: bool,
                records_before: int = 0, frame_cut: str | None = None) -> int:
    """Number of whole records in a body of ``body_len`` bytes; raise if truncated."""
    n, msg = _truncation(where, body_len, offset, records_before, frame_cut)
    if msg is not None:
        if not allow_truncated:
            raise TruncatedFileError(msg, records_read=records_before + n,
                                     byte_offset=offset + n * RECORD_SIZE)
        log.warning(msg)
    return n


_HEADER_OK = RTYPE_MBO << 8 | (RECORD_SIZE // 4)   # (length, rtype) read as one <u2
_CHECK_BLOCK = 1 << 20


def _check_rtypes(records: np.ndarray, where: str, first_index: int = 0) -> None:
    """Every record must be MBO (rtype 0xA0, 56 bytes); ``first_index`` = file position.

    Checks in blocks of 1M records (bounded temporaries).
    """
    n = len(records)
    if n == 0:
        return
    if records.flags.c_contiguous and records.dtype.itemsize == RECORD_SIZE:
        hdr = records.view(np.uint8).view("<u2")[:: RECORD_SIZE // 2]
    else:
        hdr = None
    for lo in range(0, n, _CHECK_BLOCK):
        hi = min(n, lo + _CHECK_BLOCK)
        if hdr is not None:
            bad = np.flatnonzero(hdr[lo:hi] != _HEADER_OK)
        else:
            part = records[lo:hi]
            bad = np.flatnonzero((part["rtype"] != RTYPE_MBO) | (part["length"] != 14))
        if len(bad):
            idx = lo + int(bad[0])
            rt = int(records["rtype"][idx])
            raise WrongSchemaError(
                f"{where}: record {first_index + idx:,} has rtype 0x{rt:02x} and length "
                f"{int(records['length'][idx]) * 4} bytes, not an MBO record (rtype 0xa0, "
                "56 bytes). The file mixes record types or is damaged; mbo_lab reads "
                "MBO-only files."
            )


# --------------------------------------------------------------------------- MboData


@dataclass(frozen=True)
class _MappedFile:
    """A memory-mapped source file and what it looked like when mapped."""

    path: str
    mm: mmap.mmap
    end: int          # bytes of the file the records use
    size: int
    mtime_ns: int
    ino: int
    dev: int

    def problem(self) -> str | None:
        """None if unchanged, else what changed."""
        try:
            now = self.mm.size()   # fstat of the mapped file itself (even if renamed)
        except (OSError, ValueError):
            now = -1
        if 0 <= now < self.end:
            return (f"the mapped file was truncated in place to {now:,} bytes (the records "
                    f"need {self.end:,})")
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return f"the path can no longer be read ({exc.strerror})"
        if (st.st_ino, st.st_dev) != (self.ino, self.dev):
            return "the path now names another file (replaced)"
        if st.st_size != self.size:
            return f"its size changed from {self.size:,} to {st.st_size:,} bytes"
        if st.st_mtime_ns != self.mtime_ns:
            return "it was modified (mtime changed)"
        return None


_BYTE_LABELS = BYTE_LABELS
_VALID_ACTIONS = frozenset(b"ACMRTFN")
_VALID_SIDES = frozenset(b"ABN")


def _byte_counts(col: np.ndarray) -> np.ndarray:
    """Counts (256,) of the byte values of an ``S1`` column (action/side), in blocks of
    1M records (bounded temporaries)."""
    codes = col.view(np.uint8)
    out = np.zeros(256, dtype=np.int64)
    for lo in range(0, len(codes), _CHECK_BLOCK):
        out += np.bincount(codes[lo: lo + _CHECK_BLOCK], minlength=256)
    return out


def _label_counts(counts: np.ndarray) -> dict[str, int]:
    """{label: count} for the byte values present; non-printable bytes as ``\\xNN``."""
    return {_BYTE_LABELS[b]: int(counts[b]) for b in np.flatnonzero(counts)}


def _categorical(col: np.ndarray) -> pd.Categorical:
    """An ``S1`` column as a Categorical of one-letter labels (``\\xNN`` for others)."""
    codes = col.view(np.uint8)
    present = np.flatnonzero(_byte_counts(col))
    remap = np.full(256, -1, dtype=np.int16)
    remap[present] = np.arange(len(present), dtype=np.int16)
    return pd.Categorical.from_codes(remap[codes], [_BYTE_LABELS[b] for b in present])


class MboData:
    """MBO records (NumPy structured array, Databento layout) with their metadata.

    Supports ``len()``, integer-range slicing (``data[100:200]``), time slicing with
    :meth:`between`, :meth:`to_df` and notebook display. The records of a plain ``.dbn``
    file are a read-only memory map: no copy is made.

    **Memory-mapped files.** The pages are read from the file when used. Safe after
    ``load()``: reading the file, deleting it, or replacing it by renaming a new file over
    it (the mapping keeps the old content). Not safe: truncating or rewriting the file in
    place (e.g. ``open(path, "wb")``, ``truncate``, an export into the same path) while
    the data is in use; touching a page past the new end kills the process with SIGBUS.
    :meth:`check_unchanged` detects such a change (size, mtime, inode) and raises
    :class:`~mbo_lab.errors.FileChangedError`; MboData's own passes (``to_df``,
    ``summary``/display, slicing, ``between``) and the book passes call it first. A pass
    already running is not protected: use :meth:`copy` (or a ``.dbn.zst`` file, which is
    decompressed into memory) for files that may change.

    ``truncated`` is True when the data came from a truncated file read with
    ``allow_truncated=True``.

    >>> data = mbo_lab.load("CLX5_mbo.dbn")     # doctest: +SKIP
    >>> data[:1000].to_df().head()              # doctest: +SKIP
    """

    def __init__(self, records: np.ndarray, metadata: DbnMetadata | None = None,
                 first_index: int = 0, *, truncated: bool = False,
                 _mapped: _MappedFile | None = None):
        if records.dtype != MBO_DTYPE:
            try:
                records = records.view(MBO_DTYPE) if records.dtype.itemsize == 56 else None
            except (TypeError, ValueError):
                records = None
            if records is None:
                raise DataError(
                    "records must be a NumPy structured array in Databento's MBO layout "
                    "(mbo_lab.MBO_DTYPE, 56 bytes per record)"
                )
        self.records: np.ndarray = records
        self.metadata: DbnMetadata = metadata or DbnMetadata()
        #: Index of ``records[0]`` in the source file (kept through slicing).
        self.first_index: int = first_index
        #: True when read from a truncated file with ``allow_truncated=True``.
        self.truncated: bool = bool(truncated)
        self._mapped = _mapped

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mapped"] = None   # pickles carry a copy of the records, not the mapping
        return state

    # ---- integrity
    @property
    def memory_mapped(self) -> bool:
        """True when the records are a memory map of the source file."""
        return self._mapped is not None

    def check_unchanged(self) -> None:
        """Raise :class:`~mbo_lab.errors.FileChangedError` if the memory-mapped source
        file changed since :func:`load` (size, mtime, inode, or truncated in place).

        A no-op for data in memory (``.dbn.zst``, copies, arrays). Costs two ``stat``
        calls (microseconds); call it before each pass over the records.
        """
        m = self._mapped
        if m is None:
            return
        why = m.problem()
        if why is not None:
            raise FileChangedError(
                f"{m.path} changed after load(): {why}. Its records are memory-mapped, so "
                "reading them now could crash the process (SIGBUS) or give other data. "
                "Load the file again (mbo_lab.load(path)); to keep a copy that no file "
                "change can affect, use data.copy() or a .dbn.zst file."
            )

    def copy(self) -> MboData:
        """The same records copied into memory (detached from the source file)."""
        self.check_unchanged()
        return MboData(self.records.copy(), self.metadata, self.first_index,
                       truncated=self.truncated)

    # ---- container protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: slice) -> MboData:
        if not isinstance(key, slice):
            raise TypeError("index MboData with a slice, e.g. data[1000:2000]; "
                            "use data.records[i] for one record")
        start, _, step = key.indices(len(self.records))
        if step != 1:
            raise ValueError("MboData slices must be contiguous (step 1)")
        self.check_unchanged()
        return MboData(self.records[key], self.metadata, self.first_index + start,
                       truncated=self.truncated, _mapped=self._mapped)

    @property
    def path(self) -> str | None:
        return self.metadata.path

    @property
    def start_ns(self) -> int | None:
        """ts_recv of the first record (ns), or None when empty."""
        if not len(self.records):
            return None
        self.check_unchanged()
        return int(self.records["ts_recv"][0])

    @property
    def end_ns(self) -> int | None:
        """ts_recv of the last record (ns), or None when empty."""
        if not len(self.records):
            return None
        self.check_unchanged()
        return int(self.records["ts_recv"][-1])

    def between(self, start: Any = None, end: Any = None) -> MboData:
        """Records with ``start <= ts_recv < end``.

        ``start``/``end`` are ns integers, or anything ``pandas.Timestamp`` accepts
        (naive values are taken as UTC). Records are assumed in file (ts_recv) order.
        """
        self.check_unchanged()
        ts = self.records["ts_recv"]
        lo = 0 if start is None else int(np.searchsorted(ts, to_ns(start), "left"))
        hi = len(ts) if end is None else int(np.searchsorted(ts, to_ns(end), "left"))
        return self[lo:max(lo, hi)]

    @property
    def symbols(self) -> dict[int, str]:
        """instrument_id -> symbol, from the file's mappings."""
        return self.metadata.instrument_symbols

    def to_df(self, price_type: str = "float") -> pd.DataFrame:
        """The records as a DataFrame indexed by ``ts_recv`` (``datetime64[ns, UTC]``).

        ``price_type="float"`` gives prices in currency units (NaN for undefined prices),
        ``"fixed"`` keeps the int64 fixed-point values (1e-9 units). Actions and sides
        are one-letter categoricals (a byte outside printable ASCII shows as ``\\xNN``);
        ``symbol`` comes from the file's symbol mappings.
        """
        if price_type not in ("float", "fixed"):
            raise ArgumentError(f"price_type must be 'float' or 'fixed', got {price_type!r}")
        self.check_unchanged()
        r = self.records
        if price_type == "float":
            price = r["price"].astype(np.float64) / FIXED_PRICE_SCALE
            price[r["price"] == UNDEF_PRICE] = np.nan
        else:
            price = r["price"].copy()
        symbols = self.symbols
        inst = r["instrument_id"]
        if symbols:
            uniq, inv = np.unique(inst, return_inverse=True)
            sym = np.array([symbols.get(int(u), "") for u in uniq], dtype=object)[inv]
        else:
            sym = np.full(len(r), "", dtype=object)
        df = pd.DataFrame(
            {
                "ts_event": ns_to_datetime(r["ts_event"]),
                "rtype": r["rtype"],
                "publisher_id": r["publisher_id"],
                "instrument_id": inst,
                "action": _categorical(r["action"]),
                "side": _categorical(r["side"]),
                "price": price,
                "size": r["size"],
                "channel_id": r["channel_id"],
                "order_id": r["order_id"],
                "flags": r["flags"],
                "ts_in_delta": r["ts_in_delta"],
                "sequence": r["sequence"],
                "symbol": sym,
            },
            index=ns_to_datetime(r["ts_recv"]).rename("ts_recv"),
        )
        return df

    # ---- display
    def summary(self) -> dict[str, Any]:
        """Counts and span as a plain dict (records, span, symbols, actions, sides).

        ``actions``/``sides`` count each byte value (``\\xNN`` for non-printable ones);
        ``bad_action``/``bad_side`` count values outside ``ACMRTFN`` / ``ABN``.
        """
        self.check_unchanged()
        r = self.records
        actions: dict[str, int] = {}
        sides: dict[str, int] = {}
        bad_action = bad_side = 0
        if len(r):
            ac, sc = _byte_counts(r["action"]), _byte_counts(r["side"])
            actions, sides = _label_counts(ac), _label_counts(sc)
            bad_action = int(ac.sum() - sum(int(ac[b]) for b in _VALID_ACTIONS))
            bad_side = int(sc.sum() - sum(int(sc[b]) for b in _VALID_SIDES))
        return {
            "path": self.path,
            "records": len(r),
            "dataset": self.metadata.dataset,
            "schema": self.metadata.schema,
            "start": None if not len(r) else ns_to_datetime(r["ts_recv"][:1])[0],
            "end": None if not len(r) else ns_to_datetime(r["ts_recv"][-1:])[0],
            "instruments": sorted({int(x) for x in np.unique(r["instrument_id"])}) if len(r) else [],
            "publishers": sorted({int(x) for x in np.unique(r["publisher_id"])}) if len(r) else [],
            "symbols": self.metadata.symbols,
            "actions": actions,
            "sides": sides,
            "bad_action": bad_action,
            "bad_side": bad_side,
            "truncated": self.truncated,
        }

    def _display_summary(self) -> dict[str, Any] | str:
        try:
            return self.summary()
        except FileChangedError as exc:
            return str(exc)

    def __repr__(self) -> str:
        s = self._display_summary()
        if isinstance(s, str):
            return f"MboData(<source file changed: {s}>)"
        name = os.path.basename(s["path"]) if s["path"] else "<memory>"
        span = f"{s['start']} .. {s['end']}" if s["records"] else "empty"
        extra = ""
        if s["bad_action"] or s["bad_side"]:
            extra += f", bad_action={s['bad_action']:,}, bad_side={s['bad_side']:,}"
        if s["truncated"]:
            extra += ", TRUNCATED"
        return (
            f"MboData({name}: {s['records']:,} records, {s['dataset'] or '?'}, "
            f"{span}, symbols={s['symbols']}, actions={s['actions']}{extra})"
        )

    def _repr_html_(self) -> str:
        s = self._display_summary()
        if isinstance(s, str):
            return f"<b>MboData</b> <i>source file changed</i>: {html.escape(s)}"
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in s.items()
        )
        return f"<b>MboData</b><table>{rows}</table>"


# --------------------------------------------------------------------------- load


_META_RATIO_FROM = 16 << 20   # metadata above this size must not expand more than ...
_META_RATIO = 64              # ... this many times the whole compressed file


class _ZstDbn:
    """A ``.dbn.zst`` being decompressed: metadata first (checked early), then the body."""

    def __init__(self, fh: BinaryIO, where: str):
        self.where = where
        self.z = _ZstdBlocks(fh, where)
        self._pieces = self.z.pieces()
        head = bytearray()
        meta_len = None
        for piece in self._pieces:
            head += piece
            if meta_len is None and len(head) >= 8:
                version, meta_len = _parse_prelude(head[:8], where)
                comp_size = os.fstat(fh.fileno()).st_size
                if meta_len > _META_RATIO_FROM and meta_len > _META_RATIO * comp_size:
                    raise NotDbnError(
                        f"{where}: the DBN header claims {meta_len:,} bytes of metadata in "
                        f"a {comp_size:,}-byte compressed file (no real metadata compresses "
                        f"{_META_RATIO}x): the file is damaged or not DBN; download it again."
                    )
            if meta_len is not None and len(head) >= 8 + meta_len:
                break
        if meta_len is None:   # fewer than 8 bytes
            if self.z.truncated is None or bytes(head[:3]) != b"DBN"[: min(3, len(head))]:
                _parse_prelude(bytes(head), where)  # raises NotDbnError
            raise TruncatedFileError(
                f"{where} ends inside its DBN header ({len(head)} bytes decompressed"
                f"{'; ' + self.z.truncated if self.z.truncated else ''}); download it "
                "again.", 0, len(head))
        if len(head) < 8 + meta_len:
            raise TruncatedFileError(
                f"{where} ends inside its metadata header ({len(head):,} of "
                f"{8 + meta_len:,} bytes; "
                f"{self.z.truncated or 'the Zstandard data ends there'}); download it again.",
                0, len(head))
        self.offset = 8 + meta_len
        self.z.data_offset = self.offset
        self.meta = _decode_metadata(bytes(head[: self.offset]), where, version,
                                     compressed=True)
        self.first = bytes(head[self.offset:])

    def body(self) -> Iterator[bytes]:
        if self.first:
            yield self.first
            self.first = b""
        yield from self._pieces


def _load_zst(fh: BinaryIO, where: str, allow_truncated: bool, progress: bool | None
              ) -> MboData:
    size = os.fstat(fh.fileno()).st_size
    bar = _progress(size, f"decompress {os.path.basename(where)}", progress)
    try:
        src = _ZstDbn(fh, where)
        buf = bytearray()
        checked = 0
        for piece in src.body():
            buf += piece
            n = len(buf) // RECORD_SIZE
            if n > checked:   # check as it comes: a bad layout stops early
                _check_rtypes(np.frombuffer(buf, MBO_DTYPE, count=n - checked,
                                            offset=checked * RECORD_SIZE), where, checked)
                checked = n
            if bar is not None:
                bar.update(src.z.offset - bar.n)
    finally:
        if bar is not None:
            bar.close()
    cut = src.z.truncated
    n = _check_body(len(buf), src.offset, where, allow_truncated, frame_cut=cut)
    truncated = bool(cut) or len(buf) != n * RECORD_SIZE
    if n == 0:
        records = np.zeros(0, dtype=MBO_DTYPE)
    else:
        records = np.frombuffer(buf, dtype=MBO_DTYPE, count=n)
    records.flags.writeable = False
    return MboData(records, src.meta, truncated=truncated)


def _read_plain_prelude(fh: BinaryIO, where: str, size: int) -> tuple[DbnMetadata, int]:
    head = fh.read(8)
    version, meta_len = _parse_prelude(head, where)
    if 8 + meta_len > size:
        raise TruncatedFileError(
            f"{where} ends inside its metadata header ({size:,} of {8 + meta_len:,} bytes); "
            "download it again.", 0, size)
    prelude = head + fh.read(meta_len)
    if len(prelude) < 8 + meta_len:
        raise TruncatedFileError(
            f"{where} ends inside its metadata header; download it again.", 0, len(prelude))
    return _decode_metadata(prelude, where, version, compressed=False), 8 + meta_len


def _map_plain(fh: BinaryIO, where: str, allow_truncated: bool, check: bool) -> MboData:
    """Memory-map a plain ``.dbn``; ``check`` = check every record's rtype now."""
    st = os.fstat(fh.fileno())
    size = st.st_size
    meta, offset = _read_plain_prelude(fh, where, size)
    n, msg = _truncation(where, size - offset, offset, 0, None)
    if msg is not None:
        if not allow_truncated:
            raise TruncatedFileError(msg, records_read=n, byte_offset=offset + n * RECORD_SIZE)
        log.warning(msg)
    if n == 0:
        return MboData(np.zeros(0, dtype=MBO_DTYPE), meta, truncated=msg is not None)
    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    # the absolute path: a chdir after load() is not a change
    mapped = _MappedFile(path=os.path.abspath(where), mm=mm, end=offset + n * RECORD_SIZE,
                         size=size,
                         mtime_ns=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev)
    records = np.frombuffer(mm, dtype=MBO_DTYPE, count=n, offset=offset)
    if check:
        _check_rtypes(records, where)
    elif len(records):
        _check_rtypes(records[:1], where)   # the first record's layout, at once
    return MboData(records, meta, truncated=msg is not None, _mapped=mapped)


def load(path: str | os.PathLike, *, allow_truncated: bool = False,
         progress: bool | None = None) -> MboData:
    """Load a Databento MBO file (``.dbn`` or ``.dbn.zst``, DBN versions 1-3).

    Parameters
    ----------
    path : str or PathLike
        The file. Compression is detected from the content, not the name.
    allow_truncated : bool
        Keep the whole records of a truncated file (cut mid-record, or a ``.zst`` whose
        Zstandard frame does not end) instead of raising
        :class:`~mbo_lab.errors.TruncatedFileError`; logs a warning and sets
        ``data.truncated``.
    progress : bool or None
        Show a progress bar; None shows one for files over 64 MiB.

    Returns
    -------
    MboData
        Records and metadata. Plain files are memory-mapped (zero copy; see
        :class:`MboData` for what is safe while the data is in use); ``.zst`` files are
        decompressed into memory, their layout checked as the data comes (a bad header
        or first record stops at once) and their content checksums verified when
        present.

    Raises
    ------
    InputPathError (missing, directory, symlink loop, unreadable, not a regular file),
    NotDbnError, CorruptFileError, WrongSchemaError, UnsupportedVersionError,
    TruncatedFileError -- all :class:`~mbo_lab.errors.DataError`.
    """
    p = Path(path)
    where = str(p)
    with _open_input(p) as fh:
        magic = fh.read(4)
        fh.seek(0)
        if magic == _ZSTD_MAGIC:
            return _load_zst(fh, where, allow_truncated, progress)
        return _map_plain(fh, where, allow_truncated, check=True)


def iter_chunks(path: str | os.PathLike, chunk_records: int = 1 << 20, *,
                allow_truncated: bool = False, progress: bool | None = None
                ) -> Iterator[MboData]:
    """Stream a DBN file as :class:`MboData` chunks of at most ``chunk_records`` records.

    Memory stays bounded by the chunk size: ``.dbn.zst`` files are decompressed as they
    are read (frame end and checksums verified at the end of the stream); a plain file
    is memory-mapped once, chunks are views of it, its rtypes are checked chunk by
    chunk, :meth:`MboData.check_unchanged` runs before each chunk and the pages of
    chunks already passed are released. Each chunk's ``first_index`` is its position in
    the file; metadata (and symbols) come from the file's header. With
    ``allow_truncated=True`` the last chunk of a truncated file has ``truncated=True``.
    Errors are those of :func:`load`; a truncation is found when the stream reaches
    it, after the chunks before it were yielded.
    """
    if chunk_records < 1:
        raise ArgumentError(f"chunk_records must be >= 1, got {chunk_records}")
    p = Path(path)
    where = str(p)
    fh = _open_input(p)
    try:
        magic = fh.read(4)
        fh.seek(0)
        if magic != _ZSTD_MAGIC:
            data = _map_plain(fh, where, allow_truncated, check=False)
            fh.close()
            yield from _plain_chunks(data, chunk_records, where, progress)
            return
        yield from _zst_chunks(fh, where, chunk_records, allow_truncated, progress)
    finally:
        fh.close()


def _plain_chunks(data: MboData, chunk_records: int, where: str, progress: bool | None
                  ) -> Iterator[MboData]:
    n = len(data)
    bar = _progress(n * RECORD_SIZE, f"read {os.path.basename(where)}", progress)
    m = data._mapped
    page = mmap.PAGESIZE
    released = 0
    try:
        for lo in range(0, n, chunk_records):
            chunk = data[lo: lo + chunk_records]   # a view; check_unchanged() runs here
            _check_rtypes(chunk.records, where, lo)
            if lo + chunk_records >= n and data.truncated:
                chunk.truncated = True
            else:
                chunk.truncated = False
            if bar is not None:
                bar.update(len(chunk) * RECORD_SIZE)
            yield chunk
            if m is not None and hasattr(m.mm, "madvise"):
                # drop the pages this chunk used from our RSS (re-read on use, never lost)
                end = (m.end - n * RECORD_SIZE) + (lo + len(chunk)) * RECORD_SIZE
                end -= end % page
                if end > released:
                    try:
                        m.mm.madvise(mmap.MADV_DONTNEED, released, end - released)
                    except (OSError, ValueError):
                        pass
                    released = end
    finally:
        if bar is not None:
            bar.close()


def _zst_chunks(fh: BinaryIO, where: str, chunk_records: int, allow_truncated: bool,
                progress: bool | None) -> Iterator[MboData]:
    size = os.fstat(fh.fileno()).st_size
    bar = _progress(size, f"read {os.path.basename(where)}", progress)
    try:
        src = _ZstDbn(fh, where)
        want = chunk_records * RECORD_SIZE
        pending = bytearray()
        pos = 0
        index = 0

        checked = 0   # file-wide count of records whose layout was checked

        def make(raw: bytes, truncated: bool = False) -> MboData:
            return MboData(np.frombuffer(raw, dtype=MBO_DTYPE), src.meta, index,
                           truncated=truncated)

        def check_new() -> int:
            # check the layout as the data comes (as load() does): same verdicts
            avail = index + (len(pending) - pos) // RECORD_SIZE
            if avail > checked:
                first = pos + (checked - index) * RECORD_SIZE
                _check_rtypes(np.frombuffer(pending, MBO_DTYPE, count=avail - checked,
                                            offset=first), where, checked)
            return avail

        for piece in src.body():
            if pos and pos >= len(pending) // 2:
                del pending[:pos]
                pos = 0
            pending += piece
            checked = check_new()
            # keep at least one byte back: the last chunk is only known at the end
            while len(pending) - pos > want:
                chunk = make(bytes(memoryview(pending)[pos: pos + want]))
                pos += want
                yield chunk
                index += chunk_records
            if bar is not None:
                bar.update(src.z.offset - bar.n)
        rest = len(pending) - pos
        cut = src.z.truncated
        n = _check_body(rest, src.offset + index * RECORD_SIZE, where, allow_truncated,
                        index, frame_cut=cut)
        truncated = bool(cut) or rest != n * RECORD_SIZE
        for lo in range(0, n, chunk_records):
            k = min(chunk_records, n - lo)
            last = lo + k >= n
            chunk = make(bytes(memoryview(pending)[pos: pos + k * RECORD_SIZE]),
                         truncated and last)
            pos += k * RECORD_SIZE
            yield chunk
            index += k
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- writing


def _metadata_bytes(*, dataset: str, start: int, end: int | None, symbols: Sequence[str],
                    mappings: dict[str, list[dict[str, Any]]] | None, version: int) -> bytes:
    import databento_dbn

    maps = []
    for raw, ivs in (mappings or {}).items():
        maps.append(
            SimpleNamespace(
                raw_symbol=raw,
                intervals=[
                    SimpleNamespace(
                        start_date=iv["start_date"], end_date=iv["end_date"],
                        symbol=str(iv["symbol"]),
                    )
                    for iv in ivs
                ],
            )
        )
    m = databento_dbn.Metadata(
        dataset=dataset,
        schema=databento_dbn.Schema.MBO,
        start=int(start),
        end=None if end is None else int(end),
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        symbols=list(symbols),
        partial=[],
        not_found=[],
        mappings=maps,
        version=version,
    )
    return bytes(m.encode())


def instrument_mappings(symbols: dict[int, str], start_ns: int, end_ns: int
                        ) -> dict[str, list[dict[str, Any]]]:
    """Build DBN symbol mappings ``raw_symbol -> [interval]`` from ``{instrument_id: symbol}``."""
    d0 = _dt.datetime.fromtimestamp(start_ns / 1e9, _dt.UTC).date()
    d1 = _dt.datetime.fromtimestamp(max(end_ns, start_ns) / 1e9, _dt.UTC).date()
    d1 = d1 + _dt.timedelta(days=1)
    return {
        sym: [{"start_date": d0, "end_date": d1, "symbol": str(iid)}]
        for iid, sym in symbols.items()
    }


class DbnWriter:
    """Write MBO records to a DBN file in chunks (``.zst`` suffix: Zstandard-compressed,
    with a content checksum that :func:`load` verifies).

    >>> with DbnWriter("out.dbn", dataset="SYNTH", start=0, symbols={1: "AAA"}) as w:  # doctest: +SKIP
    ...     w.write(records)
    """

    def __init__(self, path: str | os.PathLike, *, dataset: str = "SYNTH.MBO",
                 start: int = 0, end: int | None = None,
                 symbols: dict[int, str] | None = None, version: int = 3,
                 compress: bool | None = None):
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(
                f"cannot write DBN version {version}; choose one of {SUPPORTED_VERSIONS}"
            )
        self.path = Path(path)
        self.records_written = 0
        compress = self.path.name.endswith(".zst") if compress is None else compress
        symbols = symbols or {}
        meta = _metadata_bytes(
            dataset=dataset, start=start, end=end, symbols=sorted(set(symbols.values())),
            mappings=instrument_mappings(symbols, start, end or start), version=version,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._fh = open(self._tmp, "wb")
        try:
            if compress:
                import zstandard

                # the content checksum lets readers detect damaged data (bit flips)
                self._out = zstandard.ZstdCompressor(level=3, write_checksum=True
                                                     ).stream_writer(self._fh, closefd=False)
            else:
                self._out = self._fh
            self._out.write(meta)
        except BaseException:
            self.abort()
            raise

    def write(self, records: np.ndarray) -> None:
        """Append records (MBO_DTYPE, or any 56-byte structured array with that layout)."""
        if records.dtype.itemsize != RECORD_SIZE:
            raise DataError("DbnWriter.write takes MBO records (56-byte structured array)")
        self._out.write(np.ascontiguousarray(records).tobytes())
        self.records_written += len(records)

    def close(self) -> None:
        """Finish the file: flushed, then renamed over ``path`` (an existing file there is
        replaced only now, when the new one is complete). On any failure (e.g. a full
        disk) the partial ``.part`` file is removed and the error re-raised."""
        if self._fh.closed:
            return
        try:
            if self._out is not self._fh:
                self._out.close()
            self._fh.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop a partly written file (never raises for a file already gone)."""
        try:
            if not self._fh.closed:
                self._fh.close()
        except OSError:
            pass
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> DbnWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dbn(path: str | os.PathLike, records: np.ndarray, *, dataset: str = "SYNTH.MBO",
              symbols: dict[int, str] | None = None, version: int = 3,
              compress: bool | None = None) -> Path:
    """Write ``records`` (MBO layout) as one DBN file; returns the path."""
    start = int(records["ts_recv"][0]) if len(records) else 0
    end = int(records["ts_recv"][-1]) + 1 if len(records) else None
    with DbnWriter(path, dataset=dataset, start=start, end=end, symbols=symbols,
                   version=version, compress=compress) as w:
        w.write(records)
    return Path(path)

