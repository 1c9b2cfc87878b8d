"""When and where to record: schedules, the Tracker, the run store.

The measures are in :mod:`breakeven.measures`, the readers of a run directory in
:mod:`breakeven.records`; each public name has one import path, ``breakeven.<name>``."""

from .schedules import Schedule, at, every, log_spaced, parse_schedule, per_epoch
from .store import ConfigMismatchError, OutputDirError, RunStore
from .tracker import Tracker, build_tracker

__all__ = [
    "ConfigMismatchError",
    "OutputDirError",
    "RunStore",
    "Schedule",
    "Tracker",
    "at",
    "build_tracker",
    "every",
    "log_spaced",
    "parse_schedule",
    "per_epoch",
]
