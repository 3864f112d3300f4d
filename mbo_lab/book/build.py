"""Whole-stream book building: ``mbp()``, ``bbo()`` and ``replay_frames()``.

These run an engine over a source (a path, an :class:`~mbo_lab.io.dbn.MboData` or a
record array) chunk by chunk and return book states at every F_LAST record.

>>> df = mbo_lab.mbp("CLX5_mbo.dbn", levels=10)     # doctest: +SKIP
>>> df[["bid_px_00", "ask_px_00", "crossed"]].head() # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..config import get_settings
from ..errors import EngineError
from ..io.dbn import MboData, iter_chunks, load
from .engine import make_engine
from .frames import BookFrames

__all__ = ["Source", "as_data", "replay_frames", "iter_frames", "mbp", "bbo"]

#: What the book functions accept: a file path, loaded data, or MBO records.
Source = str | os.PathLike | MboData | np.ndarray


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


def replay_frames(source: Source, levels: int = 10, engine: str | None = None,
                  chunk_records: int | None = None, progress: bool | None = None
                  ) -> tuple[BookFrames, MboData | None]:
    """Run an engine over ``source`` (chunk by chunk); return the frames and the data.

    For files larger than memory use :func:`iter_frames`, which streams.
    """
    s = get_settings(engine=engine, chunk_records=chunk_records)
    eng = make_engine(s.engine, levels=levels)
    parts: list[BookFrames] = []
    data = as_data(source)
    n = len(data)
    bar = None
    if progress or (progress is None and n >= 20 * s.chunk_records):
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="rec", unit_scale=True, desc="book", leave=False)
    for lo in range(0, n, s.chunk_records):
        chunk = data.records[lo: lo + s.chunk_records]
        parts.append(eng.apply(chunk, base_index=lo))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    frames = BookFrames.concat(parts, levels)
    frames.counters = eng.counters
    return frames, data


def iter_frames(path: str | os.PathLike, levels: int = 10, engine: str | None = None,
                chunk_records: int | None = None, progress: bool | None = None):
    """Stream a DBN file through an engine: yields ``(chunk, frames)`` per chunk.

    Memory stays bounded by the chunk size (``.dbn.zst`` is decompressed as a stream).
    ``frames.index`` holds file-wide record indices; ``chunk.first_index`` is the chunk's
    offset, so ``chunk.records[frames.index - chunk.first_index]`` are the F_LAST records.
    """
    s = get_settings(engine=engine, chunk_records=chunk_records)
    eng = make_engine(s.engine, levels=levels)
    for chunk in iter_chunks(path, s.chunk_records, progress=progress):
        yield chunk, eng.apply(chunk.records, base_index=chunk.first_index)


def mbp(source: Source, levels: int = 10, *, engine: str | None = None,
        price_type: str = "float", chunk_records: int | None = None,
        progress: bool | None = None) -> pd.DataFrame:
    """Top-``levels`` book (MBP-N) at every record with F_LAST, as a DataFrame.

    One row per F_LAST record for that record's book ``(instrument_id, publisher_id)``,
    indexed by ``ts_recv`` (``datetime64[ns, UTC]``), with Databento's MBP column names
    ``bid_px_00``, ``ask_px_00``, ``bid_sz_00``, ``ask_sz_00``, ``bid_ct_00``,
    ``ask_ct_00``, ... up to ``levels - 1``, plus ``ts_event``, ``instrument_id``,
    ``publisher_id``, ``sequence``, ``record_index``, ``symbol``, ``crossed`` and
    ``locked``. Empty levels have NaN prices and zero sizes and counts. Prices are floats
    (currency units) or, with ``price_type="fixed"``, int64 fixed-point (1e-9).
    The anomaly counters of the run are in ``df.attrs["counters"]``.

    ``engine`` is ``"numba"`` (default) or ``"reference"``.
    """
    frames, data = replay_frames(source, levels, engine, chunk_records, progress)
    df = frames.to_df(data.records, data.symbols, price_type)
    df.attrs["counters"] = dict(frames.counters)
    return df


def bbo(source: Source, *, engine: str | None = None, price_type: str = "float",
        chunk_records: int | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Best bid and offer at every record with F_LAST: :func:`mbp` with ``levels=1``."""
    return mbp(source, 1, engine=engine, price_type=price_type,
               chunk_records=chunk_records, progress=progress)

