"""mbo_lab: explore Databento market-by-order (L3) data in Jupyter.

Load a DBN file, rebuild every order book with a Numba kernel (checked against a plain
Python reference book), and read book states as pandas frames::

    >>> import mbo_lab
    >>> data = mbo_lab.load(mbo_lab.demo_path())     # doctest: +SKIP
    >>> mbo_lab.bbo(data).head()                      # doctest: +SKIP

Prices are int64 fixed-point (1e-9) inside and floats in pandas outputs; timestamps are
uint64 ns inside and ``datetime64[ns, UTC]`` outside. Book states exist only at records
with F_LAST.
"""

from __future__ import annotations

from . import analytics, store
from .batch import BatchResult, batch
from .book.build import as_data, bbo, iter_frames, mbp, replay_frames
from .book.engine import NumbaEngine, ReferenceEngine, make_engine
from .book.frames import BookFrames
from .book.reference import Book, Market
from .book.state import BookState
from .config import Settings, get_settings
from .errors import (
    ConfigError,
    DataError,
    EngineError,
    MboLabError,
    NotDbnError,
    TruncatedFileError,
    UnsupportedVersionError,
    WrongSchemaError,
)
from .io.dbn import DbnMetadata, DbnWriter, MboData, iter_chunks, load, write_dbn
from .io.fetch import fetch
from .io.live import LiveRecorder, start_live
from .io.records import MBO_DTYPE, px_to_float
from .io.synth import SynthInstrument, demo_path, generate, synth_records, write_synth
from .replay.session import SPEED_MAX, Frame, Session, open_session
from .store import export
from .store import read as read_store

open = open_session  # noqa: A001 - ``mbo_lab.open(source)`` is the documented entry point

__version__ = "0.1.0"

__all__ = [
    "load", "iter_chunks", "write_dbn", "DbnWriter", "MboData", "DbnMetadata", "MBO_DTYPE",
    "px_to_float", "mbp", "bbo", "replay_frames", "iter_frames", "as_data", "BookFrames",
    "NumbaEngine", "ReferenceEngine", "make_engine", "BookState", "Book", "Market",
    "SynthInstrument", "demo_path", "generate", "synth_records", "write_synth",
    "Settings", "get_settings", "warmup", "open", "open_session", "Session", "Frame",
    "SPEED_MAX", "analytics", "store", "export", "read_store", "batch", "BatchResult",
    "fetch", "start_live", "LiveRecorder",
    "MboLabError", "DataError", "NotDbnError", "WrongSchemaError", "UnsupportedVersionError",
    "TruncatedFileError", "ConfigError", "EngineError",
]


def warmup() -> float:
    """Compile (or load from cache) the Numba kernels on a tiny stream; returns seconds."""
    import time

    t0 = time.perf_counter()
    recs = synth_records(2_000, seed=1)
    NumbaEngine(levels=10).apply(recs)
    return time.perf_counter() - t0
