"""Where the break-even point lies on each trajectory, and the maxima along it, from its
records.

**Maxima along a trajectory** (one convention for every table, verdict and the CLI): the
largest value over the measured steps >= :data:`FIRST_STEP` (1), i.e. after the first SGD
update. The initial point is the same for every learning rate of a seed, so it says nothing
about SGD's effect (and K's conditioning is often highest there). Every column holding such a
maximum is named by :func:`max_column`: ``max_<key>_after_0``. :func:`trajectory_max` is the
one implementation.

**The break-even point** is the first crossing of 1 from below by the stability of Eq. 1
along e_H^1 (measure ``stability``): the first measurement >= 1 that follows one < 1
(:func:`crossing_from_below`). The crossing lies between two measured steps; both are
reported. A run whose first measurement (step 0 under every bundled preset) is already >= 1
starts unstable (paper App. B, Theorem 2: e.g. lr 0.1, where eta lambda_H^1 is about 2.5 at
initialisation): that is not a break-even point; such a run has one only if it later
becomes stable (< 1) and crosses 1 again. See :func:`break_even`.

The training accuracy at a step is read from the training loop's evaluation records
(measure ``evaluation``, key ``train_acc``), or, in a run without them, from the
``train_accuracy`` measure (an own loop's), linearly interpolated between the two
evaluations around the step (NaN outside the evaluated range).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import preferred_measure
from .runs import Runs

__all__ = [
    "BREAK_EVEN_NOTE",
    "DEFAULT_THRESHOLDS",
    "FIRST_STEP",
    "TOP_EIGENVALUES",
    "BreakEven",
    "TrajectoryMax",
    "accuracy_crossings",
    "break_even",
    "break_even_points",
    "crossing_from_below",
    "max_column",
    "series",
    "train_accuracy_at",
    "trajectory_max",
]

#: Training accuracies whose first crossing :func:`break_even_points` reports, and at which
#: the trajectory figures draw their dashed lines (Fig. 4's 65% among them): the one default
#: of the tables, the figures, the report and the command line.
DEFAULT_THRESHOLDS = (0.5, 0.65, 0.8)
#: Maxima along a trajectory are taken over the measured steps >= FIRST_STEP.
FIRST_STEP = 1
#: The (key, measure) of the top eigenvalues whose maxima the break-even table (and
#: ``breakeven show``) reports; measure None: as :func:`series` picks it.
TOP_EIGENVALUES = (("lambda_K_1", "covariance"), ("lambda_H_1", None))
#: What the columns of :func:`break_even_points` mean, printed under the table.
BREAK_EVEN_NOTE = (
    "break-even point: the first crossing of 1 from below by the stability of Eq. 1, between "
    "break_even_after_step (< 1) and break_even_step (>= 1); unstable_at_init: >= 1 at the "
    "first measurement (training starts unstable, App. B Thm 2; not a break-even point); "
    "first_stable_step: the first measured step < 1; max_<key>_after_0: the maximum over "
    "steps >= 1"
)


def series(
    records: Any,
    key: str,
    measure: str | None = None,
    *,
    run: str | None = None,
    dropna: bool = True,
) -> Any:
    """The values of ``key`` of ``measure`` in ``records`` (a tidy table with the columns of
    :func:`breakeven.load_run`, e.g. ``runs.records``; ``run``: that run's rows only) as a
    DataFrame ``run, step, epoch, value`` sorted by run and step, one row per (run, step):
    the step's last finite record; with ``dropna=False`` a step that has none keeps its last
    record, NaN (recorded but not resolved), and without ``dropna=False`` it is left out.

    ``measure`` None: the measure :func:`breakeven.records.preferred_measure` picks among
    those that recorded ``key`` in these rows (the order of the key catalogue
    :data:`breakeven.records.KEYS`: ``lambda_H_1`` from hessian, then stability, then
    edge_of_stability; ``train_acc`` from the evaluation, then the ``train_accuracy``
    measure). The one series function of ``analysis``, ``plotting`` and the command line."""
    df = records[records["key"] == key]
    if run is not None:
        df = df[df["run"] == run]
    if measure is None:
        measure = preferred_measure(key, df["measure"])
    df = df.loc[df["measure"] == measure, ["run", "step", "epoch", "value"]]
    finite = np.isfinite(df["value"].to_numpy(dtype=float))
    if dropna:
        df = df[finite]
    else:  # a step's finite records come last, so that the last finite one is kept
        df = df.iloc[np.argsort(finite, kind="stable")]
    df = df.drop_duplicates(["run", "step"], keep="last")
    return df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def train_accuracy_at(records: Any, run: str, steps: Sequence[float]) -> np.ndarray:
    """Training accuracy of ``run`` at ``steps``, interpolated between evaluations
    (``train_acc`` as :func:`series` picks it: the evaluation's, else the
    ``train_accuracy`` measure's)."""
    acc = series(records, "train_acc", run=run)
    steps = np.asarray(steps, dtype=float)
    if acc.empty:
        return np.full(steps.shape, np.nan)
    return np.interp(steps, acc["step"], acc["value"], left=np.nan, right=np.nan)


def accuracy_crossings(records: Any, run: str, thresholds: Sequence[float]) -> dict[float, float]:
    """For each threshold, the epoch of the first evaluation whose training accuracy
    (``train_acc`` as :func:`train_accuracy_at` reads it) is at least the threshold (NaN if
    never)."""
    acc = series(records, "train_acc", run=run)
    out = {}
    for t in thresholds:
        hit = acc[acc["value"] >= t]
        out[t] = float(hit["epoch"].iloc[0]) if len(hit) else float("nan")
    return out


def max_column(key: str) -> str:
    """The name of the column holding the maximum of ``key`` along a trajectory, over the
    steps >= :data:`FIRST_STEP`: ``max_<key>_after_0`` (e.g. ``max_lambda_K_1_after_0``);
    columns about that maximum add a suffix (``_step``, ``_epoch``, ``_at_end``, ...)."""
    return f"max_{key}_after_0"


@dataclass(frozen=True)
class TrajectoryMax:
    """The maximum of one run's series over its measured steps >= :data:`FIRST_STEP`:
    ``value``, its ``step`` and ``epoch`` (the earliest, if several steps share it), and
    ``at_end``: True when it is the last of those measurements (the series may still be
    growing: the run may have stopped before its maximum)."""

    value: float
    step: int
    epoch: float
    at_end: bool


def trajectory_max(df: Any) -> TrajectoryMax | None:
    """The maximum along a trajectory of one run's series (a DataFrame with ``step``,
    ``epoch`` and ``value`` columns, as :func:`series` returns), over the measured steps >=
    :data:`FIRST_STEP`, NaN values ignored; None when no finite value is left. The one
    implementation of the convention: every table, verdict and CLI line calls it."""
    values = df["value"].to_numpy(dtype=float)
    keep = (df["step"].to_numpy() >= FIRST_STEP) & np.isfinite(values)
    if not keep.any():
        return None
    steps = df["step"].to_numpy()[keep]
    i = int(np.argmax(values[keep]))  # the first of equal maxima
    return TrajectoryMax(
        value=float(values[keep][i]),
        step=int(steps[i]),
        epoch=float(df["epoch"].to_numpy(dtype=float)[keep][i]),
        at_end=bool(steps[i] == steps.max()),
    )


def crossing_from_below(values: Sequence[float], level: float = 1.0) -> int | None:
    """Index of the first value >= ``level`` that follows a value < ``level`` (values in
    step order), or None. NaN values are neither below nor at the level: they are skipped.
    A sequence that starts at or above the level crosses only after it has been below."""
    v = np.asarray(values, dtype=float)
    below = np.flatnonzero(v < level)
    if len(below) == 0:
        return None
    later = np.flatnonzero(v[below[0] :] >= level)
    return int(below[0] + later[0]) if len(later) else None


@dataclass(frozen=True)
class BreakEven:
    """Where one run's stability of Eq. 1 crosses 1 (see the module docstring).

    ``unstable_at_init``: the first measurement is >= 1 (None when stability was not
    measured). ``first_stable_step``: the first measured step < 1 (NaN if none).
    ``step``: the first measured step >= 1 after a measurement < 1 (the break-even point,
    NaN if there is none); ``after_step``: the last measured step < 1 before it, so the
    crossing lies in (``after_step``, ``step``]; ``epoch``: the epoch of ``step``.
    """

    unstable_at_init: bool | None
    first_stable_step: float
    after_step: float
    step: float
    epoch: float


def break_even(df: Any) -> BreakEven:
    """The break-even point of one run's stability series (a DataFrame with ``step``,
    ``epoch``, ``value`` in step order, as :func:`series` returns for key ``stability``)."""
    nan = float("nan")
    v = df["value"].to_numpy(dtype=float)
    steps = df["step"].to_numpy(dtype=float)
    if len(v) == 0:
        return BreakEven(None, nan, nan, nan, nan)
    below = np.flatnonzero(v < 1.0)
    first_stable = float(steps[below[0]]) if len(below) else nan
    i = crossing_from_below(v, 1.0)
    if i is None:
        return BreakEven(bool(v[0] >= 1.0), first_stable, nan, nan, nan)
    after = float(steps[below[below < i][-1]])
    epoch = float(df["epoch"].to_numpy(dtype=float)[i])
    return BreakEven(bool(v[0] >= 1.0), first_stable, after, float(steps[i]), epoch)


def break_even_points(runs: Runs, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Any:
    """One row per run: its break-even point (:func:`break_even`) and the maxima of
    lambda_K^1 and lambda_H^1 along its trajectory (:func:`trajectory_max`, steps >= 1).

    Columns: ``run``, the swept keys, ``seed``, ``status``; ``unstable_at_init`` and
    ``first_stable_step``; ``break_even_after_step`` and ``break_even_step`` (the crossing
    of 1 from below lies between them; NaN if there is none, or stability was not
    tracked), ``break_even_epoch`` (of ``break_even_step``) and ``break_even_train_acc``;
    ``max_lambda_K_1_after_0`` (:func:`max_column`) with ``_step``, ``_epoch`` and
    ``_train_acc``; the same for ``max_lambda_H_1_after_0``; and ``acc_<t>_epoch``, the
    epoch where training accuracy first reaches each threshold ``t``.
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
        be = break_even(series(r, "stability", "stability"))
        row["unstable_at_init"] = be.unstable_at_init
        row["first_stable_step"] = be.first_stable_step
        row["break_even_after_step"] = be.after_step
        row["break_even_step"] = be.step
        row["break_even_epoch"] = be.epoch
        row["break_even_train_acc"] = float(train_accuracy_at(rec, run, [be.step])[0])
        for key, measure in TOP_EIGENVALUES:
            m = trajectory_max(series(r, key, measure))
            col = max_column(key)
            step = m.step if m else float("nan")
            row[col] = m.value if m else float("nan")
            row[f"{col}_step"] = step
            row[f"{col}_epoch"] = m.epoch if m else float("nan")
            row[f"{col}_train_acc"] = float(train_accuracy_at(rec, run, [step])[0])
        for t, epoch in accuracy_crossings(rec, run, thresholds).items():
            row[f"acc_{t:g}_epoch"] = epoch
        rows.append(row)
    return pd.DataFrame(rows)
