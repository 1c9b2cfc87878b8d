"""The caption of each figure kind (the report's), written from the drawn figure (its
artists' gids, see :mod:`breakeven.plotting.figures`), the options it was drawn with, and
the records: a caption names only what the figure draws and claims only what the data
show (no moving average that was not drawn, no break-even point no run reached)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure

from ..analysis import Runs
from ._data import crossings, has_key, resolve
from .api import FIGURES
from .figures import MIN_WINDOWS, _batch_size_of, adaptive_threshold_label, eos_threshold_label

__all__ = ["caption"]


def _gids(fig: Figure) -> list[str]:
    """The gids of every line of ``fig``."""
    return [str(ln.get_gid()) for ax in fig.axes for ln in ax.lines if ln.get_gid()]


def _option(kind: str, options: dict[str, Any], name: str) -> Any:
    """``options[name]``, else the figure function's default of it."""
    if name in options:
        return options[name]
    return inspect.signature(FIGURES[kind]).parameters[name].default


def _ts(values: Any) -> str:
    return ", ".join(f"{t:g}" for t in sorted(values))


def _over_training(kind: str, fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    """What the curves over training are (smoothed or not) and what the dashed lines mark."""
    gids = _gids(fig)
    window = int(_option(kind, options, "smooth") or 0)
    n_smooth = sum(g.startswith("smooth:") for g in gids)
    n_raw = sum(g.startswith("raw:") for g in gids)
    if n_smooth:
        text = (
            f"bold: the centred moving average over {window} records of each series of at "
            f"least {MIN_WINDOWS * window} records, drawn over its recorded values (thin)"
        )
        if n_raw > n_smooth:
            text += "; shorter series: their recorded values alone, with markers"
    elif window > 1:
        text = (
            f"the recorded values, unsmoothed: no series has the {MIN_WINDOWS * window} "
            f"records a moving average over {window} needs"
        )
    else:
        text = "the recorded values, unsmoothed"
    n_nan = sum(g.startswith("unresolved:") for g in gids)
    if n_nan:
        text += (
            "; ▾ along the bottom: steps where a value was recorded as NaN, not resolved "
            "(lambda_K^* and its ratio: below the resolution of K's float gradients), "
            "drawn as no value"
        )
    thresholds = list(_option(kind, options, "thresholds") or ())
    if not thresholds:
        return text
    reached = {float(g.rsplit(":", 1)[1]) for g in gids if g.startswith("threshold:")}
    if reached:
        text += (
            f"; dashed lines: each run's first evaluation with training accuracy ≥ {_ts(reached)}"
        )
    unreached = {float(t) for t in thresholds} - reached
    if not has_key(runs, None, "train_acc"):
        text += "; no training accuracy recorded, so no threshold lines"
    elif unreached:
        text += f"; no run reached training accuracy {_ts(unreached)}"
    return text


def _trajectories(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    how = _over_training("trajectories", fig, runs, options)
    return f"Trajectories over training, a curve per run ({how}) (paper Figs. 4, 5)."


def _batchnorm(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    how = _over_training("batchnorm", fig, runs, options)
    return (
        "||g||/||g_5||, ||gamma|| of the last BatchNorm layer, lambda_K^1 and its "
        f"conditioning over training ({how}) (paper Fig. 7)."
    )


MATCHED = (
    "a point per matched step (each record of the sparser series with the other's record at "
    "the same step, or the nearest)"
)


def _hessian(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    measure, _ = resolve(runs, "lambda_H_1", options.get("hessian"))
    return f"lambda_H^1 ({measure}) against lambda_K^1, {MATCHED} (paper Fig. 2, left)."


def _loss_change(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    return (
        "The loss change Delta L of a step (loss before minus after: positive when the step "
        f"reduced the loss) against lambda_K^1, {MATCHED} (paper Fig. 2, right)."
    )


def _spectra(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    shown = {
        "K": "the eigenvalues of K by rank",
        "H-density": "the SLQ spectral density of H",
        "H-top": "the top eigenvalues of H by rank",
    }
    what = " and ".join(shown[ax.get_gid()] for ax in fig.axes if ax.get_gid() in shown)
    return (
        f"{what[:1].upper()}{what[1:]}, at the recorded step nearest each run's largest top "
        "eigenvalue (paper Fig. 3)."
    )


def _embedding(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    colour = _option("embedding", options, "color")
    until = options.get("until_accuracy")
    if until is None:
        steps = "every step with recorded predictions"
        if not has_key(runs, None, "train_acc"):
            steps += " (no training accuracy recorded to cut them at)"
    else:
        accuracy = resolve(runs, "train_acc")
        names = list(runs.table["run"])
        never = sum(not crossings(runs, r, [until], accuracy) for r in names)
        steps = f"each run's steps up to its first evaluation with training accuracy ≥ {until:g}"
        if never:
            steps += f" ({never} of {len(names)} runs never reached it: all their steps)"
    return (
        f"Validation-set predictions of {steps}, embedded in one 2-D UMAP, a line per run; "
        f"background: {colour} at the nearest embedded point (paper Fig. 1)."
    )


def _m1(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    m1 = _batch_size_of(runs, _option("m1-vs-m128", options, "m1"))
    m128 = _batch_size_of(runs, _option("m1-vs-m128", options, "m128"))
    return (
        f"lambda_K^1 from mini-batches of M = {m1} against M = {m128}, {MATCHED}; "
        "r: Pearson correlation (paper Fig. 9)."
    )


def _stability(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    gids = _gids(fig)
    n = sum(g.startswith("stability:") for g in gids)
    reached = sum(g.startswith("break_even:") for g in gids)
    text = "Stability of Eq. 1 along e_H^1 over training (recorded values); "
    if reached:
        return text + (
            f"stars and dotted lines: the break-even point (as in the table above) of "
            f"{reached} of {n} runs."
        )
    return text + "no run reached 1: no break-even point."


def _eos(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    momentum = "beta" in eos_threshold_label(runs)
    threshold = "(2 + 2 beta)/eta" if momentum else "2/eta"
    dense = any(
        str(line.get_gid()).startswith("sharpness:") for ax in fig.axes for line in ax.lines
    )
    what = (
        "lambda_H^1 tracked at every step (solid; the sharpness measure: a Rayleigh quotient, "
        "a certified lower bound, with a full Lanczos solve when its residual degrades)"
        if dense
        else "lambda_H^1 (solid)"
    )
    return (
        f"{what} against the edge-of-stability threshold {threshold} (dashed), "
        "recorded values: gradient descent is unstable along e_H^1 where the solid line is above."
    )


def _adaptive_eos(fig: Figure, runs: Runs, options: dict[str, Any]) -> str:
    label = adaptive_threshold_label(runs)
    threshold = "38/eta" if "38" in label else "(2 + 2 beta_1)/((1 - beta_1) eta)"
    n = sum(g.startswith("precond_lambda_H_1:") for g in _gids(fig))
    return (
        f"Adam's preconditioned sharpness lambda_1(P^-1 H), P = diag(sqrt(v_hat) + eps) from "
        f"the optimizer's state (solid, {n} runs), against the adaptive edge-of-stability "
        f"threshold {threshold} (dashed), recorded values: Adam is unstable along the top "
        "preconditioned direction where the solid line is above (Cohen et al. 2022)."
    )


_CAPTIONS: dict[str, Callable[[Figure, Runs, dict[str, Any]], str]] = {
    "trajectories": _trajectories,
    "hessian-vs-covariance": _hessian,
    "loss-change": _loss_change,
    "spectra": _spectra,
    "embedding": _embedding,
    "m1-vs-m128": _m1,
    "batchnorm": _batchnorm,
    "stability": _stability,
    "edge-of-stability": _eos,
    "adaptive-edge-of-stability": _adaptive_eos,
}


def caption(kind: str, fig: Figure, runs: Runs, options: dict[str, Any] | None = None) -> str:
    """The caption of ``fig``, the figure ``kind`` (a key of
    :data:`~breakeven.plotting.FIGURES`) drawn from ``runs`` with ``options``: it describes
    the curves, markers and points ``fig`` holds and states the settings that select the
    data (moving-average window, accuracy thresholds reached, the embedding's cut-off)."""
    return _CAPTIONS[kind](fig, runs, dict(options or {}))
