"""The errors that the command line reports as invalid input (exit code 2).

They live in this module, which imports nothing but the standard library, so that code that
only reads records (``breakeven show``, ``verdict``, ``export``) can catch them without
importing torch. Each is re-exported where it is raised: :class:`ConfigError` by
:mod:`breakeven.train`, the dataset errors by :mod:`breakeven.data` (the same classes).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ConfigError", "CorruptDatasetError", "DatasetNotFoundError"]


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names it and what is allowed."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places looked (all listed in the message)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is not in the expected format (named in the message)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
