"""Where the break-even point lies on each trajectory, from its records.

The training accuracy at a step is read from the training loop's evaluation records
(measure ``evaluation``, key ``train_acc``), linearly interpolated between the two
evaluations around the step (NaN outside the evaluated range).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import EVAL_MEASURE
from .runs import Runs

__all__ = [
    "DEFAULT_THRESHOLDS",
    "accuracy_crossings",
    "break_even_points",
    "series",
    "train_accuracy_at",
]

#: Training accuracies whose first crossing :func:`break_even_points` reports (Fig. 4's lines).
DEFAULT_THRESHOLDS = (0.5, 0.65, 0.8)


def series(records: Any, key: str, measure: str | None = None) -> Any:
    """The values of ``key`` (of ``measure``, or of whichever measure records it first in
    the order ``covariance``, ``hessian``, then any) as a DataFrame ``run, step, epoch,
    value`` sorted by run and step, NaN values dropped."""
    df = records[records["key"] == key]
    if measure is None and len(df):
        found = list(dict.fromkeys(df["measure"]))
        preferred = [m for m in ("covariance", "hessian") if m in found]
        measure = preferred[0] if preferred else found[0]
    if measure is not None:
        df = df[df["measure"] == measure]
    df = df[np.isfinite(df["value"].to_numpy(dtype=float))]
    return df[["run", "step", "epoch", "value"]].sort_values(["run", "step"]).reset_index(drop=True)


def train_accuracy_at(records: Any, run: str, steps: Sequence[float]) -> np.ndarray:
    """Training accuracy of ``run`` at ``steps``, interpolated between evaluations."""
    acc = series(records[records["run"] == run], "train_acc", EVAL_MEASURE)
    steps = np.asarray(steps, dtype=float)
    if acc.empty:
        return np.full(steps.shape, np.nan)
    return np.interp(steps, acc["step"], acc["value"], left=np.nan, right=np.nan)


def accuracy_crossings(records: Any, run: str, thresholds: Sequence[float]) -> dict[float, float]:
    """For each threshold, the epoch of the first evaluation whose training accuracy is at
    least the threshold (NaN if never)."""
    acc = series(records[records["run"] == run], "train_acc", EVAL_MEASURE)
    out = {}
    for t in thresholds:
        hit = acc[acc["value"] >= t]
        out[t] = float(hit["epoch"].iloc[0]) if len(hit) else float("nan")
    return out


def _peak(df: Any) -> tuple[float, float, float]:
    if df.empty:
        return (float("nan"),) * 3
    row = df.loc[df["value"].idxmax()]
    return float(row["value"]), float(row["step"]), float(row["epoch"])


def break_even_points(runs: Runs, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Any:
    """One row per run: the break-even point and the peaks of lambda_K^1 and lambda_H^1.

    Columns: ``run``, the swept keys, ``seed``, ``status``; ``break_even_step`` and
    ``break_even_epoch``, the first measured step where the stability of Eq. 1 (measure
    ``stability``) is >= 1 (NaN if it never is, or was not tracked), and
    ``break_even_train_acc``; ``peak_lambda_K_1`` with ``peak_lambda_K_1_step``,
    ``_epoch`` and ``_train_acc``; the same for ``peak_lambda_H_1``; and ``acc_<t>_epoch``,
    the epoch where training accuracy first reaches each threshold ``t``.
    """
    import pandas as pd

    rec = runs.records
    rows = []
    for _, info in runs.table.iterrows():
        run = info["run"]
        r = rec[rec["run"] == run]
        row: dict[str, Any] = {"run": run}
        row.update({k: info[k] for k in runs.swept})
        row.update(seed=info["seed"], status=info["status"])
        st = series(r, "stability", "stability")
        hit = st[st["value"] >= 1.0]
        be_step = float(hit["step"].iloc[0]) if len(hit) else float("nan")
        row["break_even_step"] = be_step
        row["break_even_epoch"] = float(hit["epoch"].iloc[0]) if len(hit) else float("nan")
        row["break_even_train_acc"] = float(train_accuracy_at(rec, run, [be_step])[0])
        for key, measure in (("lambda_K_1", "covariance"), ("lambda_H_1", None)):
            value, step, epoch = _peak(series(r, key, measure))
            row[f"peak_{key}"] = value
            row[f"peak_{key}_step"] = step
            row[f"peak_{key}_epoch"] = epoch
            row[f"peak_{key}_train_acc"] = float(train_accuracy_at(rec, run, [step])[0])
        for t, epoch in accuracy_crossings(rec, run, thresholds).items():
            row[f"acc_{t:g}_epoch"] = epoch
        rows.append(row)
    return pd.DataFrame(rows)
