"""User-facing error types.

Every error a user can cause (a bad file, a bad flag, a bad config) is raised as a subclass of
:class:`AsrError`, whose message is one line naming the thing and the reason. The CLI prints that line
and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class AsrError(Exception):
    """Base class of every error the toolkit reports to a user as one line."""

    def __init__(self, what: str | Path, reason: str):
        self.what = str(what)
        self.reason = reason
        super().__init__(f"{self.what}: {reason}")

    def __reduce__(self):
        # Rebuild from the constructor's arguments so errors survive pickling between processes.
        return (self.__class__, (self.what, self.reason))


class AudioError(AsrError):
    """Audio that cannot be read: missing, empty, not audio, truncated, NaN/Inf samples."""


class ManifestError(AsrError):
    """A manifest that cannot be read or holds a malformed entry."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(where, reason)
        self.path = str(path)
        self.line = line

    def __reduce__(self):
        return (self.__class__, (self.path, self.reason, self.line))


class ConfigError(AsrError):
    """A config file or value that is missing, malformed, of the wrong type or unknown."""


class CheckpointError(AsrError):
    """A checkpoint that is missing, corrupt, fails its checksum or needs unsafe unpickling."""


class TokenizerError(AsrError):
    """A tokenizer model that cannot be trained or loaded."""


class DataError(AsrError):
    """Any other data problem a user can fix (missing Debian packages, empty corpus, ...)."""


class TrainingDivergedError(AsrError):
    """Training produced non-finite losses or gradients too many times in a row."""
