"""When and where to record: schedules, the Tracker."""

from ..measures.tracked import MEASURES
from .schedules import Schedule, at, every, log_spaced, parse_schedule, per_epoch
from .tracker import Tracker, build_tracker

__all__ = [
    "MEASURES",
    "Schedule",
    "Tracker",
    "at",
    "build_tracker",
    "every",
    "log_spaced",
    "parse_schedule",
    "per_epoch",
]
