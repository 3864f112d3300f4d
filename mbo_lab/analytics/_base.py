"""Shared plumbing of the analytics: run the engine once, select books, build indexes.

Every analytics function takes a ``source`` (a DBN path, :class:`~mbo_lab.io.dbn.MboData`
or an MBO record array). Functions computed from book states also take ``frames=``: the
:class:`~mbo_lab.book.frames.BookFrames` of the same source from :func:`book_frames`, so
several measures can share one engine pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book.build import Source, as_data, replay_frames
from ..book.frames import CROSS_CROSSED, BookFrames
from ..errors import MboLabError
from ..io.dbn import MboData
from ..io.records import UNDEF_PRICE, ns_to_datetime

__all__ = ["AnalyticsError", "book_frames"]


class AnalyticsError(MboLabError):
    """Analytics called with arguments that cannot work (missing book, too few levels)."""


def book_frames(source: Source, levels: int = 1, *, engine: str | None = None
                ) -> tuple[MboData, BookFrames]:
    """Run the book engine over ``source`` once: ``(data, frames)`` for the ``frames=``
    argument of the analytics (``frames.index`` points into ``data.records``).

    >>> data, frames = book_frames(mbo_lab.demo_path(), levels=5)   # doctest: +SKIP
    >>> imbalance(data, levels=5, frames=frames)                     # doctest: +SKIP
    """
    data = as_data(source)
    frames, _ = replay_frames(data, levels, engine)
    return data, frames


def _prepare(source: Source, levels: int, frames: BookFrames | None, engine: str | None
             ) -> tuple[MboData, BookFrames]:
    data = as_data(source)
    if frames is None:
        frames, _ = replay_frames(data, levels, engine)
    elif frames.levels < levels:
        raise AnalyticsError(
            f"frames hold {frames.levels} level(s) per side, {levels} are needed; build them "
            f"with book_frames(source, levels={levels})"
        )
    elif len(frames) and int(frames.index[-1]) >= len(data):
        raise AnalyticsError("frames do not belong to this source (record index out of range)")
    return data, frames


def _book_mask(rec: np.ndarray, instrument_id: int | None, publisher_id: int | None
               ) -> np.ndarray | None:
    mask = None
    if instrument_id is not None:
        mask = rec["instrument_id"] == instrument_id
    if publisher_id is not None:
        m = rec["publisher_id"] == publisher_id
        mask = m if mask is None else mask & m
    return mask


def _states(source: Source, levels: int, frames: BookFrames | None, engine: str | None,
            instrument_id: int | None, publisher_id: int | None
            ) -> tuple[MboData, BookFrames, np.ndarray]:
    """Frames (optionally one book's rows) and their F_LAST records."""
    data, fr = _prepare(source, levels, frames, engine)
    rec = data.records[fr.index]
    mask = _book_mask(rec, instrument_id, publisher_id)
    if mask is not None:
        rows = np.flatnonzero(mask)
        fr = BookFrames(fr.index[rows], fr.bid_px[rows], fr.bid_sz[rows], fr.bid_ct[rows],
                        fr.ask_px[rows], fr.ask_sz[rows], fr.ask_ct[rows], fr.cross[rows],
                        fr.trades, dict(fr.counters))
        rec = rec[rows]
    return data, fr, rec


def _valid_top(fr: BookFrames) -> np.ndarray:
    """True where both sides have a level and the book is not crossed (locked is valid)."""
    return ((fr.bid_px[:, 0] != UNDEF_PRICE) & (fr.ask_px[:, 0] != UNDEF_PRICE)
            & (fr.cross != CROSS_CROSSED))


def _index(rec: np.ndarray) -> pd.DatetimeIndex:
    return ns_to_datetime(rec["ts_recv"]).rename("ts_recv")


def _book_key(rec: np.ndarray) -> np.ndarray:
    return (rec["instrument_id"].astype(np.int64) << 16) | rec["publisher_id"].astype(np.int64)


def _prev_same_book(key: np.ndarray) -> np.ndarray:
    """Index of the previous row of the same book (-1 for a book's first row)."""
    n = len(key)
    prev = np.full(n, -1, np.int64)
    if n < 2:
        return prev
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _buckets(ns: np.ndarray, freq: str) -> np.ndarray:
    """Bucket start (ns) of each timestamp for a pandas frequency such as '1s'."""
    step = int(pd.Timedelta(freq).value)
    if step <= 0:
        raise AnalyticsError(f"freq must be a positive duration, got {freq!r}")
    return (np.asarray(ns, np.uint64) // np.uint64(step)) * np.uint64(step)


def _filter_records(data: MboData, instrument_id: int | None, publisher_id: int | None,
                    start, end) -> np.ndarray:
    """Records of ``data`` restricted to a book and a ``[start, end)`` ts_recv window."""
    d = data.between(start, end) if (start is not None or end is not None) else data
    r = d.records
    mask = _book_mask(r, instrument_id, publisher_id)
    return r if mask is None else r[mask]
