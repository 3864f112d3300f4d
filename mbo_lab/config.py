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

__all__ = ["Settings", "get_settings", "databento_api_key", "ENV_PREFIX"]

ENV_PREFIX = "MBO_LAB_"

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
        if self.chunk_records < 1:
            raise ConfigError(f"chunk_records must be >= 1, got {self.chunk_records}")


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


def databento_api_key() -> str | None:
    """The Databento API key from ``DATABENTO_API_KEY``, or None. Never logged."""
    key = os.environ.get("DATABENTO_API_KEY")
    return key or None


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` applied (validated)."""
    return dataclasses.replace(settings, **changes)
