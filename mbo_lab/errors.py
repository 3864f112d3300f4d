"""The package's exception types.

Every error raised on purpose by mbo_lab is a :class:`MboLabError`, with a message that
says what was wrong, where (file, record index) and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "MboLabError",
    "DataError",
    "NotDbnError",
    "WrongSchemaError",
    "UnsupportedVersionError",
    "TruncatedFileError",
    "CorruptFileError",
    "FileChangedError",
    "InputPathError",
    "ConfigError",
    "ArgumentError",
    "EngineError",
    "OutputError",
]


class MboLabError(Exception):
    """Base class of every error mbo_lab raises on purpose.

    In IPython/Jupyter these errors show as their message alone (no traceback into the
    package): the message already says what was wrong, where and what to do.
    """

    def _render_traceback_(self) -> list[str]:
        """IPython hook: one line, ``ErrorType: message``, instead of a full traceback."""
        return [f"{type(self).__name__}: {self}"]


class DataError(MboLabError):
    """Input data could not be read (missing file, bad content)."""


class NotDbnError(DataError):
    """The file is not Databento Binary Encoding (DBN), plain or Zstandard-compressed."""


class WrongSchemaError(DataError):
    """The DBN file holds another schema than MBO (market by order)."""


class UnsupportedVersionError(DataError):
    """The DBN version is not one mbo_lab reads (1 to 3)."""


class TruncatedFileError(DataError):
    """The file ends in the middle of a record.

    Attributes
    ----------
    records_read : int
        How many whole records precede the cut.
    byte_offset : int
        File offset (bytes) where the incomplete record starts.
    """

    def __init__(self, message: str, records_read: int = 0, byte_offset: int = 0):
        super().__init__(message)
        self.records_read = records_read
        self.byte_offset = byte_offset


class CorruptFileError(NotDbnError):
    """The file's content fails an integrity check (damaged Zstandard data, a content
    checksum that does not match, bytes after the last frame).

    A subclass of :class:`NotDbnError` so code that caught damaged ``.zst`` files as
    ``NotDbnError`` keeps working.

    Attributes
    ----------
    byte_offset : int
        Offset (bytes) in the file (compressed offset for ``.zst``) near the damage.
    records_read : int
        Whole records decoded before the damage was found.
    """

    def __init__(self, message: str, records_read: int = 0, byte_offset: int = 0):
        super().__init__(message)
        self.records_read = records_read
        self.byte_offset = byte_offset


class FileChangedError(DataError):
    """A memory-mapped source file changed (size, mtime or inode) after ``load()``.

    Raised by :meth:`mbo_lab.MboData.check_unchanged` before a pass over the records,
    instead of letting the process die of SIGBUS on a file truncated in place.
    """


class InputPathError(DataError):
    """The input path cannot be read as a file: missing, a directory, a symlink loop,
    not readable, or not a regular file (fifo, device, socket)."""


class ConfigError(MboLabError):
    """A setting (keyword argument or MBO_LAB_* environment variable) has a bad value."""


class ArgumentError(ConfigError, ValueError):
    """A function or command argument has a bad value (also a ``ValueError``)."""


class EngineError(MboLabError):
    """A book engine was misused (unknown engine name, bad arguments)."""


class OutputError(MboLabError):
    """An output file or folder could not be written: missing or read-only folder, full
    disk, a folder where a file is expected (or the reverse), an existing file that is not
    to be replaced. Nothing half-written is left behind."""
