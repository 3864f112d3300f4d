"""mbo_lab: explore Databento market-by-order (L3) data in Jupyter.

Load a DBN file, rebuild every order book with a Numba kernel (checked against a plain
Python reference book), and read book states as pandas frames::

    >>> import mbo_lab
    >>> data = mbo_lab.load(mbo_lab.demo_path())     # doctest: +SKIP
    >>> mbo_lab.bbo(data).head()                      # doctest: +SKIP

Prices are int64 fixed-point (1e-9) inside and floats in pandas outputs; timestamps are
uint64 ns inside and ``datetime64[ns, UTC]`` outside. Book states exist only at records
with F_LAST.

``import mbo_lab`` loads only the loader and the book (NumPy, pandas, Numba); the replay
session (asyncio), analytics, store, Databento fetch/live, server and widgets are imported
on first use (``mbo_lab.open``, ``mbo_lab.analytics``, ``mbo_lab.export``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from .batch import BatchResult, batch
from .book.build import as_data, bbo, iter_frames, mbp, replay_frames
from .book.engine import NumbaEngine, ReferenceEngine, make_engine
from .book.frames import BookFrames
from .book.reference import Book, Market
from .book.state import BookState
from .config import Settings, get_settings
from .errors import (
    ArgumentError,
    ConfigError,
    CorruptFileError,
    DataError,
    EngineError,
    FileChangedError,
    InputPathError,
    MboLabError,
    NotDbnError,
    OutputError,
    TruncatedFileError,
    UnsupportedVersionError,
    WrongSchemaError,
)
from .io.dbn import DbnMetadata, DbnWriter, MboData, iter_chunks, load, write_dbn
from .io.records import MBO_DTYPE, px_to_float
from .io.synth import SynthInstrument, demo_path, generate, synth_records, write_synth

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
    "TruncatedFileError", "ConfigError", "EngineError", "CorruptFileError", "FileChangedError",
    "InputPathError", "ArgumentError", "OutputError",
]

#: Names imported on first use: name -> (module, attribute or None for the module).
_LAZY: dict[str, tuple[str, str | None]] = {
    "analytics": (".analytics", None),
    "store": (".store", None),
    "export": (".store", "export"),
    "read_store": (".store", "read"),
    "fetch": (".io.fetch", "fetch"),
    "start_live": (".io.live", "start_live"),
    "LiveRecorder": (".io.live", "LiveRecorder"),
    "open": (".replay.session", "open_session"),
    "open_session": (".replay.session", "open_session"),
    "Session": (".replay.session", "Session"),
    "Frame": (".replay.session", "Frame"),
    "SPEED_MAX": (".replay.session", "SPEED_MAX"),
    "replay": (".replay", None),
    "serve": (".serve", None),
    "viz": (".viz", None),
}


def __getattr__(name: str) -> Any:
    """Import the lazy names of :data:`_LAZY` on first access (PEP 562)."""
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError(f"module 'mbo_lab' has no attribute {name!r}")
    module = importlib.import_module(spec[0], __name__)
    value = module if spec[1] is None else getattr(module, spec[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def warmup() -> float:
    """Compile (or load from the Numba cache) exactly the kernels that ``load()`` followed
    by ``bbo``/``mbp`` and ``open`` (seek, step, views of the book) use, on a tiny stream;
    returns seconds. After it, the first real call compiles nothing."""
    import time

    t0 = time.perf_counter()
    recs = synth_records(3_000, seed=1, clear_snapshot_every=1_000, tob_publisher=True)
    recs.flags.writeable = False  # as load() gives them (the kernel sees read-only views)
    data = MboData(recs)
    bbo(data)
    mbp(data, levels=10)
    from .book.build import _warm_threads

    _warm_threads(recs)  # large streams apply their books in threads on idle CPUs
    NumbaEngine(levels=10).apply(recs)
    session = __getattr__("open_session")(data, progress=False)
    session.seek(len(recs) // 2)
    session.step(3)
    session.back(1)
    return time.perf_counter() - t0
