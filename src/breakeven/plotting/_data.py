"""What the figures read: series of one measure's key per run, steps matched across measures,
run groups (colour and legend label per swept value), and the messages that say how to track
what is missing. Records only; no matplotlib, no torch."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Runs, read_runs
from ..records import EVAL_MEASURE, decode_array, read_records

__all__ = [
    "EVAL_MEASURE",
    "KEY_MEASURE",
    "PREFERRED",
    "RunsLike",
    "as_runs",
    "crossings",
    "first_at_least",
    "groups",
    "has_key",
    "keys_of",
    "match_nearest",
    "missing",
    "moving_average",
    "parse_key",
    "predictions",
    "resolve",
    "series",
    "wants_log",
]

RunsLike = Runs | str | os.PathLike | Iterable[str | os.PathLike]

#: Which measure a bare key is read from when several measures record it (first found wins).
PREFERRED = {
    "lambda_H_1": ("hessian", "stability", "edge_of_stability"),
    "lr": (EVAL_MEASURE, "lr"),
    "train_acc": (EVAL_MEASURE,),
    "val_acc": (EVAL_MEASURE,),
}
#: The measure that records each key (for the "how to track it" messages).
KEY_MEASURE = {
    **dict.fromkeys(
        (
            "lambda_K_1",
            "lambda_K_star",
            "condition_K",
            "trace_K",
            "per_example_lambda_K_1",
            "per_example_trace_K",
        ),
        "covariance",
    ),
    **dict.fromkeys(("lambda_H_1", "residual_H_1", "converged"), "hessian"),
    **dict.fromkeys(("stability", "break_even", "s2"), "stability"),
    **dict.fromkeys(("eos_ratio", "eos_threshold"), "edge_of_stability"),
    **dict.fromkeys(
        ("sharpness", "sharpness_residual", "sharpness_upper", "sharpness_fallback"), "sharpness"
    ),
    **dict.fromkeys(("delta_loss", "loss_before", "loss_after"), "loss_change"),
    **dict.fromkeys(("trace_H", "trace_H_stderr"), "hessian_trace"),
    **dict.fromkeys(("noise_scale", "trace_sigma", "grad_norm_sq"), "noise_scale"),
    **dict.fromkeys(("probe_loss", "probe_accuracy"), "probe"),
    **dict.fromkeys(("val_loss", "val_accuracy"), "validation"),
    **dict.fromkeys(("train_acc", "train_loss", "val_acc"), EVAL_MEASURE),
    **dict.fromkeys(
        (
            "precond_lambda_H_1",
            "precond_residual_H_1",
            "precond_converged",
            "precond_eos_threshold",
            "precond_eos_ratio",
            "adam_step",
        ),
        "preconditioned_sharpness",
    ),
    **dict.fromkeys(
        ("precond_lambda_K_1", "precond_residual_K_1", "precond_converged_K"),
        "preconditioned_covariance",
    ),
    "alignment": "alignment",
    "gamma_norm_last": "batchnorm",
    "param_norm": "param_norm",
    "lr": "lr",
}


def as_runs(runs: RunsLike) -> Runs:
    """``runs`` itself, or :func:`breakeven.analysis.read_runs` of run/sweep directories."""
    return runs if isinstance(runs, Runs) else read_runs(runs)


def parse_key(spec: str, measure: str | None = None) -> tuple[str | None, str]:
    """``"measure:key"`` -> (measure, key); a bare ``"key"`` -> (``measure``, key)."""
    if ":" in spec:
        m, _, k = spec.partition(":")
        return m, k
    return measure, spec


def how_to_track(measure: str, key: str | None = None) -> str:
    """A one-line hint: the config setting that records ``measure`` (``key`` refines it)."""
    if key is not None and key.startswith("eig_K_"):
        return f"track it with --set track.{measure}.spectrum=true"
    if key == "gamma_norm_last" or measure == "batchnorm":
        return (
            "track it with --set track.batchnorm.every=N (the model needs BatchNorm layers, "
            "e.g. simple_cnn_bn)"
        )
    if measure == EVAL_MEASURE:
        return "evaluate during training with --set train.eval_every=N"
    if measure == "predictions":
        return "track them with --set track.predictions.every=N (needs validation data)"
    if measure.startswith("covariance") and measure != "covariance":
        return (
            f'track it with [track] {measure} = {{ measure = "covariance", batch_size = 1, '
            "every = N }"
        )
    return f"track it with --set track.{measure}.every=N"


def missing(measure: str | None, key: str) -> str:
    """The message of a :class:`ValueError` for a key the records do not hold."""
    m = measure or KEY_MEASURE.get(key) or ("covariance" if key.startswith("eig_K_") else None)
    if m is None:
        return f"the records have no {key!r} values (no tracked measure recorded it)"
    return f"the records have no {key!r} of measure {m!r}: {how_to_track(m, key)}"


def keys_of(runs: Runs) -> set[tuple[str, str]]:
    """The (measure, key) pairs with at least one finite value."""
    rec = runs.records
    if len(rec) == 0:
        return set()
    rec = rec[np.isfinite(rec["value"].to_numpy())]
    return set(zip(rec["measure"], rec["key"]))


def has_key(runs: Runs, measure: str, key: str) -> bool:
    """Whether ``measure`` recorded a finite ``key`` in some run."""
    return (measure, key) in keys_of(runs)


def resolve(runs: Runs, key: str, measure: str | None = None) -> tuple[str, str]:
    """(measure, key) of a key spec (``"key"`` or ``"measure:key"``) that the records hold;
    a bare key is read from its preferred measure (``lambda_H_1``: hessian, then stability,
    then edge_of_stability), else from the only (or first, alphabetically) measure with it.
    Raises ``ValueError`` saying how to track it when no measure recorded it."""
    measure, key = parse_key(key, measure)
    present = keys_of(runs)
    if measure is not None:
        if (measure, key) not in present:
            raise ValueError(missing(measure, key))
        return measure, key
    found = sorted(m for m, k in present if k == key)
    if not found:
        raise ValueError(missing(None, key))
    for m in PREFERRED.get(key, (KEY_MEASURE.get(key),)):
        if m in found:
            return m, key
    return found[0], key


def series(runs: Runs, measure: str, key: str, run: str | None = None) -> Any:
    """The finite values of ``key`` of ``measure`` as a DataFrame with columns ``run, step,
    epoch, value``, sorted by run and step; one row per (run, step) (the last record wins)."""
    rec = runs.records
    sel = (rec["measure"] == measure) & (rec["key"] == key)
    if run is not None:
        sel &= rec["run"] == run
    df = rec.loc[sel, ["run", "step", "epoch", "value"]]
    df = df[np.isfinite(df["value"].to_numpy())]
    df = df.drop_duplicates(["run", "step"], keep="last")
    return df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def unresolved(runs: Runs, measure: str, key: str, run: str | None = None) -> Any:
    """The records of ``key`` of ``measure`` whose value is NaN (recorded, but not resolved:
    e.g. lambda_K^* below the resolution of K's float gradients), as :func:`series`'s
    columns ``run, step, epoch``; a step that also has a finite record is left out."""
    rec = runs.records
    sel = (rec["measure"] == measure) & (rec["key"] == key)
    if run is not None:
        sel &= rec["run"] == run
    df = rec.loc[sel, ["run", "step", "epoch", "value"]]
    finite = np.isfinite(df["value"].to_numpy(dtype=float))
    done = set(zip(df["run"][finite], df["step"][finite]))
    df = df[~finite & [(r, s) not in done for r, s in zip(df["run"], df["step"])]]
    df = df.drop_duplicates(["run", "step"], keep="last")
    return df[["run", "step", "epoch"]].sort_values(["run", "step"]).reset_index(drop=True)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` consecutive values, over fewer at the ends
    (pandas ``rolling(window, center=True, min_periods=1).mean()``); ``window <= 1``: the
    values themselves."""
    import pandas as pd

    y = np.asarray(values, dtype=float)
    if window <= 1 or len(y) == 0:
        return y.copy()
    return pd.Series(y).rolling(int(window), center=True, min_periods=1).mean().to_numpy()


def wants_log(values: Iterable[float], decades: float = 2.0) -> bool:
    """True when every finite value is positive and they span more than ``decades``."""
    y = np.asarray(list(values), dtype=float)
    y = y[np.isfinite(y)]
    return bool(len(y) and (y > 0).all() and y.max() > y.min() * 10**decades)


def first_at_least(steps: Sequence[float], values: Sequence[float], level: float) -> int | None:
    """Index of the first value >= ``level`` (steps sorted), or None."""
    v = np.asarray(values, dtype=float)
    hit = np.flatnonzero(v >= level)
    return int(hit[0]) if len(hit) else None


def crossings(
    runs: Runs, run: str, thresholds: Sequence[float], accuracy: tuple[str, str] | None
) -> dict[float, tuple[int, float]]:
    """{threshold: (step, epoch)} of the first evaluation where the run's training accuracy
    (``accuracy`` = (measure, key)) is >= the threshold; thresholds never reached are left
    out."""
    if accuracy is None or not thresholds:
        return {}
    df = series(runs, *accuracy, run=run)
    out = {}
    for t in thresholds:
        i = first_at_least(df["step"], df["value"], t)
        if i is not None:
            out[float(t)] = (int(df["step"].iloc[i]), float(df["epoch"].iloc[i]))
    return out


def match_nearest(steps: Sequence[int], targets: Sequence[int]) -> np.ndarray:
    """For each target step, the index into ``steps`` (sorted) of the nearest step: the same
    step when present, else the closest one (the earlier on a tie)."""
    s = np.asarray(steps, dtype=float)
    t = np.asarray(targets, dtype=float)
    if len(s) == 0:
        return np.zeros(len(t), dtype=int)
    j = np.clip(np.searchsorted(s, t), 0, len(s) - 1)
    prev = np.clip(j - 1, 0, len(s) - 1)
    take_prev = np.abs(t - s[prev]) <= np.abs(s[j] - t)
    return np.where(take_prev, prev, j)


def paired(runs: Runs, run: str, x: tuple[str, str], y: tuple[str, str]) -> Any:
    """Values of ``x`` and ``y`` (each (measure, key)) of one run at matched steps: the
    sparser series (fewer records; ``x`` on a tie) gives the steps, and each of its records
    is paired with the other's record at the same step, or the nearest step otherwise.
    Columns ``step, epoch, x, y`` (``step``/``epoch`` those of the sparser series)."""
    import pandas as pd

    a, b = series(runs, *x, run=run), series(runs, *y, run=run)
    if len(a) == 0 or len(b) == 0:
        return pd.DataFrame(columns=["step", "epoch", "x", "y"])
    if len(b) < len(a):
        idx = match_nearest(a["step"], b["step"])
        return pd.DataFrame(
            {
                "step": b["step"].to_numpy(),
                "epoch": b["epoch"].to_numpy(),
                "x": a["value"].to_numpy()[idx],
                "y": b["value"].to_numpy(),
            }
        )
    idx = match_nearest(b["step"], a["step"])
    return pd.DataFrame(
        {
            "step": a["step"].to_numpy(),
            "epoch": a["epoch"].to_numpy(),
            "x": a["value"].to_numpy(),
            "y": b["value"].to_numpy()[idx],
        }
    )


# ----------------------------------------------------------------------------- groups


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:g}"
    if isinstance(v, np.floating):
        return _fmt(float(v))
    return str(v)


def _plain(v: Any) -> Any:
    """A table cell as a hashable Python value; NaN (a run outside the sweep) as None."""
    if hasattr(v, "item"):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _sort_key(values: tuple) -> tuple:
    out = []
    for v in values:
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            out.append((0, float(v), ""))
        else:
            out.append((1, 0.0, str(v)))
    return tuple(out)


_VARYING = ("model", "dataset", "lr", "batch_size", "momentum", "n_train")


@dataclass
class Groups:
    """Runs grouped by the values of ``by``: ``label[run]`` (e.g. ``"lr=0.1"``),
    ``color[run]`` (seeds of one value share it), ``size[run]`` (runs in its group), and the
    group labels and colours in order of value (``legend``)."""

    by: list[str]
    label: dict[str, str]
    color: dict[str, Any]
    size: dict[str, int]
    legend: list[tuple[str, Any]]

    def linewidth(self, run: str, single: float = 1.6, seeds: float = 1.0) -> float:
        """Thinner lines when several seeds share a colour."""
        return seeds if self.size[run] > 1 else single


def groups(runs: Runs, by: Sequence[str] | str | None = None) -> Groups:
    """Group and colour the runs by the columns ``by`` of ``runs.table``; default: the swept
    keys (seeds excluded), else the config fields that differ between the runs, else
    ``lr``. Colours: tab10 for up to 10 groups, else viridis, in order of value."""
    from matplotlib import colormaps

    table = runs.table
    if isinstance(by, str):
        by = [by]
    if by is None:
        by = [k for k in runs.swept if k not in ("init_seed", "seed") and k in table]
        if not by:
            by = [
                c for c in _VARYING if c in table and table[c].astype(str).nunique(dropna=False) > 1
            ]
        if not by:
            by = ["lr"] if "lr" in table else []
    for c in by:
        if c not in table:
            raise ValueError(f"cannot group the runs by {c!r}: no such column in the runs table")
    names = list(table["run"])
    values = {r: tuple(_plain(row[c]) for c in by) for r, (_, row) in zip(names, table.iterrows())}
    order = sorted(set(values.values()), key=_sort_key)
    if len(order) <= 10:
        cmap = colormaps["tab10"]
        colours = [cmap(i) for i in range(len(order))]
    else:
        cmap = colormaps["viridis"]
        colours = [cmap(i / (len(order) - 1)) for i in range(len(order))]
    colour_of = dict(zip(order, colours))
    if by:
        label_of = {v: ", ".join(f"{c}={_fmt(x)}" for c, x in zip(by, v)) for v in order}
    else:
        label_of = {v: "" for v in order}
    count = {v: sum(1 for r in names if values[r] == v) for v in order}
    label = {r: label_of[values[r]] or r for r in names}
    legend = [
        (label_of[v] or next(r for r in names if values[r] == v), colour_of[v]) for v in order
    ]
    return Groups(
        list(by),
        label,
        {r: colour_of[values[r]] for r in names},
        {r: count[values[r]] for r in names},
        legend,
    )


# ----------------------------------------------------------------------------- arrays


def predictions(
    runs: Runs, measure: str = "predictions"
) -> dict[str, list[tuple[int, float, Any]]]:
    """{run: [(step, epoch, predictions array)]} of the records of ``measure`` that carry
    ``arrays["predictions"]`` (decoded: float16, (n_examples, n_classes)), by step."""
    out = {}
    for run, path in zip(runs.table["run"], runs.table["path"]):
        items = {}
        for r in read_records(path):
            if r.get("measure") == measure and "predictions" in (r.get("arrays") or {}):
                items[int(r["step"])] = (
                    int(r["step"]),
                    float(r.get("epoch", math.nan)),
                    decode_array(r["arrays"]["predictions"]),
                )
        out[run] = [items[s] for s in sorted(items)]
    return out
