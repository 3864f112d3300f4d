"""Settings: keyword arguments, then ``MBO_LAB_*`` environment variables, then defaults.

All settings live here. Read them with :func:`get_settings`::

    >>> from mbo_lab.config import get_settings
    >>> s = get_settings(port=8765)
    >>> s.port
    8765

The Databento API key is never a setting: it is read only from ``DATABENTO_API_KEY``
(see :func:`databento_api_key`) and is never logged or stored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Settings", "get_settings", "databento_api_key", "ENV_PREFIX", "MAX_LEVELS",
           "MAX_CHUNK_RECORDS", "check_levels", "check_positive", "check_time_zone"]

ENV_PREFIX = "MBO_LAB_"

_PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Most levels per side a book table may ask for (Databento's deepest MBP schema has 10).
MAX_LEVELS = 1000
#: Most records per chunk (about 3.5 GiB of records).
MAX_CHUNK_RECORDS = 1 << 26
#: Output memory a chunk's book states may take (levels x records), bytes.
_MAX_CHUNK_OUTPUT = 8 << 30


def _default_data_path() -> str:
    # The real CME sample lives beside the project checkout in ../shared/data.
    return str(_PROJECT_ROOT.parent / "shared" / "data" / "CLX5_mbo.dbn")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "mbo_lab")


@dataclass(frozen=True)
class Settings:
    """Resolved settings.

    Attributes
    ----------
    data_path : str
        Default DBN file (``MBO_LAB_DATA_PATH``); the CME CLX5 sample by default.
    host : str
        Interface the SSE server binds (``MBO_LAB_HOST``), loopback by default.
    port : int
        Server port (``MBO_LAB_PORT``); 0 lets the OS choose a free port.
    token : str | None
        Token for the server's control endpoints (``MBO_LAB_TOKEN``); generated when
        needed and not given.
    fps : float
        Maximum frames per second published to widgets and streams (``MBO_LAB_FPS``).
    cache_dir : str
        Folder for downloaded data and generated demo files (``MBO_LAB_CACHE_DIR``).
    engine : str
        Book engine, ``"numba"`` or ``"reference"`` (``MBO_LAB_ENGINE``).
    chunk_records : int
        Records per chunk when streaming large files (``MBO_LAB_CHUNK_RECORDS``).
    """

    data_path: str = field(default_factory=_default_data_path)
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    fps: float = 30.0
    cache_dir: str = field(default_factory=_default_cache_dir)
    engine: str = "numba"
    chunk_records: int = 1 << 20

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within 0..65535, got {self.port}")
        if not 0 < self.fps <= 240:
            raise ConfigError(f"fps must be within (0, 240], got {self.fps}")
        if self.engine not in ("numba", "reference"):
            raise ConfigError(
                f"engine must be 'numba' or 'reference', got {self.engine!r}"
            )
        if not 1 <= self.chunk_records <= MAX_CHUNK_RECORDS:
            raise ConfigError(f"chunk_records must be within 1..{MAX_CHUNK_RECORDS:,}, got "
                              f"{self.chunk_records}")


def _coerce(name: str, typ: Any, raw: str) -> Any:
    try:
        if typ in (int, "int"):
            return int(raw)
        if typ in (float, "float"):
            return float(raw)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
            f"{typ if isinstance(typ, str) else typ.__name__}; fix or unset it"
        ) from exc
    return raw


def get_settings(**overrides: Any) -> Settings:
    """Resolve settings: ``overrides`` > ``MBO_LAB_<NAME>`` environment > defaults.

    Unknown keyword names raise :class:`~mbo_lab.errors.ConfigError`.
    """
    known = {f.name: f for f in fields(Settings)}
    unknown = set(overrides) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {sorted(unknown)}; known settings: {sorted(known)}"
        )
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name in overrides and overrides[name] is not None:
            values[name] = overrides[name]
            continue
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, f.type, raw)
    return Settings(**values)


def check_positive(name: str, value: Any, *, minimum: int = 1,
                   maximum: int | None = None) -> int:
    """``value`` as an int within ``minimum..maximum``, else :class:`ConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(
            value, "__index__"):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum:,}" if maximum is None else f"within {minimum:,}..{maximum:,}"
        raise ConfigError(f"{name} must be {rng}, got {v:,}")
    return v


def check_levels(levels: Any, chunk_records: int | None = None) -> int:
    """Validate book depth: 1..MAX_LEVELS, and small enough that one chunk's book states
    (``chunk_records`` x ``levels`` x 40 bytes) fit in memory."""
    lv = check_positive("levels", levels, maximum=MAX_LEVELS)
    if chunk_records is not None and chunk_records * lv * 40 > _MAX_CHUNK_OUTPUT:
        raise ConfigError(
            f"levels={lv} with chunk_records={chunk_records:,} needs "
            f"{chunk_records * lv * 40 / 2**30:.1f} GiB per chunk; lower --chunk-records "
            f"(e.g. {max(1, _MAX_CHUNK_OUTPUT // (lv * 40 * 4)):,}) or --levels")
    return lv


def databento_api_key() -> str | None:
    """The Databento API key from ``DATABENTO_API_KEY``, or None. Never logged."""
    key = os.environ.get("DATABENTO_API_KEY")
    return key or None


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` applied (validated)."""
    return dataclasses.replace(settings, **changes)


def check_time_zone(value: Any) -> str:
    """``value`` as an IANA time-zone name, or :class:`ConfigError` saying what to use."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {value!r}; use an IANA name such as "
                          "'America/Chicago' or 'UTC'") from exc
    return str(value)
