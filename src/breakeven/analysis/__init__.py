"""Break-even detection and conjecture verdicts, from records only (no torch, no model)."""

from .breakeven import (
    DEFAULT_THRESHOLDS,
    accuracy_crossings,
    break_even_points,
    series,
    train_accuracy_at,
)
from .runs import SWEEP_FILE, Runs, read_runs, read_sweep_spec, short_key
from .verdicts import CLAUSES, NOISE_DIRECTION, RULE, Clause, maxima, verdicts

__all__ = [
    "CLAUSES",
    "DEFAULT_THRESHOLDS",
    "NOISE_DIRECTION",
    "RULE",
    "SWEEP_FILE",
    "Clause",
    "Runs",
    "accuracy_crossings",
    "break_even_points",
    "maxima",
    "read_runs",
    "read_sweep_spec",
    "series",
    "short_key",
    "train_accuracy_at",
    "verdicts",
]
