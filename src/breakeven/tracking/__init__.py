"""When and where to record: schedules, the Tracker, the run store."""

from ..measures import MEASURES, Context, Measure, Measurement, register_measure
from .schedules import Schedule, at, every, log_spaced, parse_schedule, per_epoch
from .store import (
    ConfigMismatchError,
    OutputDirError,
    RunFileError,
    RunStore,
    RunStoreError,
    UnsafePathError,
    export,
    load_run,
    read_records,
)
from .tracker import Tracker, build_tracker

__all__ = [
    "MEASURES",
    "ConfigMismatchError",
    "Context",
    "Measure",
    "Measurement",
    "OutputDirError",
    "RunFileError",
    "RunStore",
    "RunStoreError",
    "Schedule",
    "Tracker",
    "UnsafePathError",
    "at",
    "build_tracker",
    "every",
    "export",
    "load_run",
    "log_spaced",
    "parse_schedule",
    "per_epoch",
    "read_records",
    "register_measure",
]
