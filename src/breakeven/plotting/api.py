"""Figure kinds by name (the ``breakeven plot KIND`` of the command line): what each needs,
whether the records have it (:func:`available_figures`), and :func:`plot` to write one to a
PNG, PDF or SVG file."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..analysis import Runs
from ..records import atomic_write
from ._data import RunsLike, as_runs, keys_of, missing, predictions, resolve
from .embedding import MIN_POINTS, plot_embedding
from .figures import (
    ADAPTIVE_EOS_MEASURE,
    DEFAULT_KEYS,
    _has_h_spectrum,
    _has_k_spectrum,
    eos_measure,
    plot_adaptive_edge_of_stability,
    plot_batchnorm,
    plot_edge_of_stability,
    plot_hessian_vs_covariance,
    plot_loss_change_vs_covariance,
    plot_m1_vs_m128,
    plot_spectra,
    plot_stability,
    plot_trajectories,
    require_batchnorm,
)

__all__ = ["FIGURES", "FORMATS", "available_figures", "plot"]

#: Figure kind -> function (runs, **options) -> Figure.
FIGURES: dict[str, Callable[..., Any]] = {
    "trajectories": plot_trajectories,
    "hessian-vs-covariance": plot_hessian_vs_covariance,
    "loss-change": plot_loss_change_vs_covariance,
    "spectra": plot_spectra,
    "embedding": plot_embedding,
    "m1-vs-m128": plot_m1_vs_m128,
    "batchnorm": plot_batchnorm,
    "stability": plot_stability,
    "edge-of-stability": plot_edge_of_stability,
    "adaptive-edge-of-stability": plot_adaptive_edge_of_stability,
}
#: File extensions :func:`plot` writes.
FORMATS = (".png", ".pdf", ".svg")
#: How ``keys`` (``--key``) reach each kind: the option name, and whether it takes several.
_KEY_OPTION = {
    "trajectories": ("keys", True),
    "embedding": ("color", False),
    "m1-vs-m128": ("key", False),
}


def _need(runs: Runs, measure: str | None, key: str) -> None:
    resolve(runs, key, measure)


def _check_trajectories(runs: Runs) -> None:
    present = {k for _, k in keys_of(runs)}
    if not present & set(DEFAULT_KEYS):
        raise ValueError(
            "no lambda_K_1, condition_K, trace_K or lambda_H_1 recorded: track them with "
            "--set track.covariance.every=N and --set track.hessian.every=N"
        )


def _check_hessian(runs: Runs) -> None:
    _need(runs, "covariance", "lambda_K_1")
    try:
        resolve(runs, "lambda_H_1")
    except ValueError:
        raise ValueError(missing("hessian", "lambda_H_1")) from None


def _check_loss_change(runs: Runs) -> None:
    _need(runs, "covariance", "lambda_K_1")
    _need(runs, "loss_change", "delta_loss")


def _check_spectra(runs: Runs) -> None:
    present = keys_of(runs)
    if not (
        _has_k_spectrum(present, "covariance")
        or _has_h_spectrum(runs, present, None, "hessian_density")
    ):
        raise ValueError(
            "no spectrum recorded: track K's with --set track.covariance.spectrum=true, "
            "H's with --set track.hessian_density.every=N (or --set track.hessian.k=10)"
        )


def _check_embedding(runs: Runs) -> None:
    _need(runs, None, "lambda_K_1")
    if importlib.util.find_spec("umap") is None:
        raise ValueError("umap-learn is not installed: pip install 'breakeven[plot]'")
    n = sum(len(v) for v in predictions(runs).values())
    if n == 0:
        raise ValueError("no predictions recorded: track them with --set track.predictions.every=N")
    if n < MIN_POINTS:
        raise ValueError(f"only {n} predictions recorded; the embedding needs {MIN_POINTS}")


def _check_m1(runs: Runs) -> None:
    _need(runs, "covariance", "lambda_K_1")
    _need(runs, "covariance_m1", "lambda_K_1")


def _check_stability(runs: Runs) -> None:
    _need(runs, "stability", "stability")


def _check_eos(runs: Runs) -> None:
    measure, key = eos_measure(runs)
    _need(runs, measure, key)
    _need(runs, measure, "eos_threshold")


def _check_adaptive_eos(runs: Runs) -> None:
    _need(runs, ADAPTIVE_EOS_MEASURE, "precond_lambda_H_1")
    _need(runs, ADAPTIVE_EOS_MEASURE, "precond_eos_threshold")


_CHECKS: dict[str, Callable[[Runs], None]] = {
    "trajectories": _check_trajectories,
    "hessian-vs-covariance": _check_hessian,
    "loss-change": _check_loss_change,
    "spectra": _check_spectra,
    "embedding": _check_embedding,
    "m1-vs-m128": _check_m1,
    "batchnorm": require_batchnorm,
    "stability": _check_stability,
    "edge-of-stability": _check_eos,
    "adaptive-edge-of-stability": _check_adaptive_eos,
}


def available_figures(runs: RunsLike) -> dict[str, str]:
    """For each figure kind of :data:`FIGURES` with its default options: ``""`` when these
    records hold what it needs, else a one-line reason (what was not measured and the
    setting that measures it)."""
    runs = as_runs(runs)
    out = {}
    for kind, check in _CHECKS.items():
        try:
            check(runs)
            out[kind] = ""
        except ValueError as e:
            out[kind] = str(e).splitlines()[0]
    return out


def _format(out: str | os.PathLike) -> str:
    ext = Path(out).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(
            f"cannot write {os.fspath(out)!r}: the file name must end in "
            + ", ".join(FORMATS)
            + f" (got {ext or 'no extension'!r})"
        )
    return ext[1:]


def plot(
    kind: str,
    runs: RunsLike,
    out: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    dpi: int = 150,
    **options: Any,
) -> Path:
    """Draw the figure ``kind`` (a key of :data:`FIGURES`) of run and sweep directories (or a
    :class:`~breakeven.analysis.Runs`) and write it to ``out``, as PNG, PDF or SVG by its
    extension (atomically, never through a symbolic link: see
    :func:`breakeven.records.atomic_write`); returns the path written. ``keys``: the keys of
    ``trajectories``, the colour key of ``embedding``, the key of ``m1-vs-m128`` (other kinds
    take none). ``options`` go to the figure function (``ValueError`` for one it does not
    take)."""
    if kind not in FIGURES:
        raise ValueError(f"unknown figure kind {kind!r}: choose from {', '.join(FIGURES)}")
    fmt = _format(out)
    func = FIGURES[kind]
    if keys:
        if kind not in _KEY_OPTION:
            raise ValueError(f"the {kind} figure takes no key")
        name, several = _KEY_OPTION[kind]
        if not several and len(keys) > 1:
            raise ValueError(f"the {kind} figure takes one key, got {len(keys)}")
        options[name] = list(keys) if several else keys[0]
    accepted = inspect.signature(func).parameters
    bad = [k for k in options if k not in accepted]
    if bad:
        raise ValueError(f"the {kind} figure takes no option {', '.join(bad)}")
    fig = func(as_runs(runs), **options)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return path
