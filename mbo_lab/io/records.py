"""Databento MBO record layout, flags, actions and the one price/time conversion helper.

Records stay in Databento's 56-byte ``MboMsg`` layout end to end (:data:`MBO_DTYPE`, the
same dtype ``databento.DBNStore.to_ndarray()`` returns). Prices are int64 fixed-point with
1 unit = 1e-9 (:data:`FIXED_PRICE_SCALE`); timestamps are uint64 ns since the UNIX epoch.
Everything that decodes flags or converts prices uses the helpers here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ArgumentError

__all__ = [
    "to_ns",
    "MBO_DTYPE",
    "MBO_KERNEL_DTYPE",
    "RTYPE_MBO",
    "RECORD_SIZE",
    "FIXED_PRICE_SCALE",
    "UNDEF_PRICE",
    "UNDEF_ORDER_SIZE",
    "F_LAST",
    "F_TOB",
    "F_SNAPSHOT",
    "F_MBP",
    "F_BAD_TS_RECV",
    "F_MAYBE_BAD_BOOK",
    "F_PUBLISHER_SPECIFIC",
    "ACTION_ADD",
    "ACTION_CANCEL",
    "ACTION_MODIFY",
    "ACTION_CLEAR",
    "ACTION_TRADE",
    "ACTION_FILL",
    "ACTION_NONE",
    "SIDE_ASK",
    "SIDE_BID",
    "SIDE_NONE",
    "px_to_float",
    "ns_to_datetime",
    "kernel_view",
    "empty_records",
    "flag_names",
    "byte_char",
    "byte_chars",
]

#: Databento's MBO record (rtype 0xA0), 56 bytes, little-endian, packed.
MBO_DTYPE = np.dtype(
    [
        ("length", "u1"),
        ("rtype", "u1"),
        ("publisher_id", "<u2"),
        ("instrument_id", "<u4"),
        ("ts_event", "<u8"),
        ("order_id", "<u8"),
        ("price", "<i8"),
        ("size", "<u4"),
        ("flags", "u1"),
        ("channel_id", "u1"),
        ("action", "S1"),
        ("side", "S1"),
        ("ts_recv", "<u8"),
        ("ts_in_delta", "<i4"),
        ("sequence", "<u4"),
    ]
)
assert MBO_DTYPE.itemsize == 56

#: Same layout with ``action``/``side`` as uint8 (ASCII codes) for Numba kernels.
MBO_KERNEL_DTYPE = np.dtype(
    [
        (name, "u1" if name in ("action", "side") else MBO_DTYPE.fields[name][0])
        for name in MBO_DTYPE.names
    ]
)

RECORD_SIZE = 56
RTYPE_MBO = 0xA0
LENGTH_MBO = RECORD_SIZE // 4  # the header's length field counts 4-byte words

FIXED_PRICE_SCALE = 1_000_000_000
UNDEF_PRICE = np.int64(2**63 - 1)
UNDEF_ORDER_SIZE = np.uint32(2**32 - 1)

F_LAST = 0x80
F_TOB = 0x40
F_SNAPSHOT = 0x20
F_MBP = 0x10
F_BAD_TS_RECV = 0x08
F_MAYBE_BAD_BOOK = 0x04
F_PUBLISHER_SPECIFIC = 0x02

ACTION_ADD = ord("A")
ACTION_CANCEL = ord("C")
ACTION_MODIFY = ord("M")
ACTION_CLEAR = ord("R")
ACTION_TRADE = ord("T")
ACTION_FILL = ord("F")
ACTION_NONE = ord("N")

SIDE_ASK = ord("A")
SIDE_BID = ord("B")
SIDE_NONE = ord("N")

_FLAG_NAMES = (
    (F_LAST, "LAST"),
    (F_TOB, "TOB"),
    (F_SNAPSHOT, "SNAPSHOT"),
    (F_MBP, "MBP"),
    (F_BAD_TS_RECV, "BAD_TS_RECV"),
    (F_MAYBE_BAD_BOOK, "MAYBE_BAD_BOOK"),
    (F_PUBLISHER_SPECIFIC, "PUBLISHER_SPECIFIC"),
)


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in a record's ``flags`` byte, e.g. ``['LAST', 'SNAPSHOT']``."""
    return [name for bit, name in _FLAG_NAMES if flags & bit]


#: One-letter label of every byte value: printable ASCII as itself, others as ``\\xNN``.
BYTE_LABELS: tuple[str, ...] = tuple(
    chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in range(256)
)


def byte_char(value: bytes | np.bytes_ | int) -> str:
    """Label of an ``action``/``side`` byte that never raises: ``b"A"`` -> ``"A"``,
    ``b"\\xff"`` -> ``"\\\\xff"`` (a 4-character string), ``b""`` (NUL in an S1 field)
    -> ``"\\\\x00"``. Use it instead of ``.decode()`` on record bytes.
    """
    if isinstance(value, (int, np.integer)):
        return BYTE_LABELS[int(value) & 0xFF]
    return BYTE_LABELS[value[0]] if len(value) else BYTE_LABELS[0]


def byte_chars(col: np.ndarray) -> np.ndarray:
    """Labels (object array of str) of an ``S1`` or uint8 column; see :func:`byte_char`.
    Instead of ``col.astype("U1")``, which raises on non-ASCII bytes."""
    arr = np.asarray(col)
    codes = arr.view(np.uint8) if arr.dtype.itemsize == 1 else arr.astype(np.uint8)
    return _BYTE_LABELS_OBJ[codes]


_BYTE_LABELS_OBJ = np.array(BYTE_LABELS, dtype=object)


def px_to_float(px: np.ndarray | int) -> np.ndarray | float:
    """Fixed-point price (int64, 1e-9 units) to float64; ``UNDEF_PRICE`` becomes NaN.

    >>> px_to_float(np.array([64_850_000_000], dtype=np.int64))
    array([64.85])
    """
    arr = np.asarray(px, dtype=np.int64)
    out = arr.astype(np.float64) / FIXED_PRICE_SCALE
    out = np.where(arr == UNDEF_PRICE, np.nan, out)
    if np.ndim(px) == 0:
        return float(out)
    return out


def ns_to_datetime(ns: np.ndarray) -> pd.DatetimeIndex:
    """uint64 ns since the epoch to a pandas ``datetime64[ns, UTC]`` index."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.uint64).astype("datetime64[ns]")).tz_localize(
        "UTC"
    )


def kernel_view(records: np.ndarray) -> np.ndarray:
    """Zero-copy view of MBO records with ``action``/``side`` as uint8 for Numba."""
    if records.dtype == MBO_KERNEL_DTYPE:
        return records
    return records.view(MBO_KERNEL_DTYPE)


def empty_records(n: int) -> np.ndarray:
    """A zeroed array of ``n`` MBO records with header fields set (length, rtype)."""
    out = np.zeros(n, dtype=MBO_DTYPE)
    out["length"] = LENGTH_MBO
    out["rtype"] = RTYPE_MBO
    return out


def to_ns(value: object) -> int:
    """ns since the epoch (UTC) of an int (taken as ns) or anything ``pandas.Timestamp``
    reads (naive = UTC); :class:`~mbo_lab.errors.ArgumentError` for anything else or NaT.

    >>> to_ns("2025-09-24 21:50")
    1758750600000000000
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ArgumentError(
            f"not a time: {value!r} ({exc}). Pass ns since the epoch (int) or anything "
            "pandas.Timestamp accepts, e.g. '2025-09-24 21:50' (naive = UTC)."
        ) from None
    if ts is pd.NaT:
        raise ArgumentError(f"not a time: {value!r} (NaT)")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)
