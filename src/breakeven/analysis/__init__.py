"""Break-even detection and conjecture verdicts, from records only (no torch, no model)."""

from .runs import Runs, read_runs, read_sweep_spec, short_key

__all__ = ["Runs", "read_runs", "read_sweep_spec", "short_key"]
