"""The paper's figures from records (Jastrzebski et al. 2020, Figs. 2-5, 7, 9-26) and the
stability of Eq. 1. Each function takes runs (a :class:`~breakeven.analysis.Runs`, or run and
sweep directories) and returns a :class:`matplotlib.figure.Figure` (no pyplot: nothing is
shown, nothing global is kept). Records only; no torch.

Every drawn artist that holds data carries a ``gid`` naming it, so that its data can be read
back (``fig.axes[i].lines``, ``.collections``): ``raw:<run>`` / ``smooth:<run>`` (a
trajectory's recorded values and their moving average), ``threshold:<run>:<t>`` (the first
epoch of training accuracy >= t), ``points:<run>`` (a scatter), ``K:<run>`` / ``H:<run>``
(spectra; the axes' own gid says what they show: ``K``, ``H-density`` or ``H-top``),
``stability:<run>``, ``break_even:<run>``, ``unit`` (the line at 1), ``lambda_H_1:<run>``,
``sharpness:<run>``, ``eos_threshold:<run>``. When the records lack what a figure needs, it
raises ``ValueError`` naming the missing measure or key and the setting that tracks it.

No curve hides its data: a series is smoothed only when it has at least
:data:`MIN_WINDOWS` windows of records, and then its recorded values stay drawn beside the
moving average; a series of fewer than :data:`SPARSE` records is drawn with a marker at
each record. Titles and legends name only what is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis import DEFAULT_THRESHOLDS, Runs, break_even_points, trajectory_max
from ..records import SLQ_SIGMA2, key_info, key_label, slq_density
from ._data import (
    Groups,
    RunsLike,
    as_runs,
    crossings,
    groups,
    has_key,
    keys_of,
    match_nearest,
    missing,
    moving_average,
    paired,
    resolve,
    series,
    unresolved,
    wants_log,
)

__all__ = [
    "DEFAULT_KEYS",
    "label_of",
    "plot_adaptive_edge_of_stability",
    "plot_batchnorm",
    "plot_edge_of_stability",
    "plot_hessian_vs_covariance",
    "plot_loss_change_vs_covariance",
    "plot_m1_vs_m128",
    "plot_spectra",
    "plot_stability",
    "plot_trajectories",
    "plot_trajectory",
    "spectral_density",
]

#: The keys of the default trajectory panel (paper Figs. 4, 5, 18).
DEFAULT_KEYS = ("lambda_K_1", "condition_K", "trace_K", "lambda_H_1")
#: A series is smoothed only when it holds at least this many windows of records.
MIN_WINDOWS = 3
#: A series of fewer records than this is drawn with a marker at each record.
SPARSE = 15
#: The legend entry of the marks of values recorded as NaN (not resolved).
UNRESOLVED_LABEL = "not resolved (recorded as NaN)"


def label_of(key: str, measure: str | None = None) -> str:
    """The axis label of a key: its label in the key catalogue
    (:func:`breakeven.records.key_label`: math names, e.g. ``r"$\\lambda_K^1$"``); a key read
    from a measure that does not emit it under its registered name (e.g. ``covariance_m1``)
    gets the measure's name in brackets."""
    text = key_label(key)
    info = key_info(key)
    if measure is not None and measure != key and measure not in (info.measures if info else ()):
        text += f" [{measure}]"
    return text


def _context(runs: Runs) -> str:
    """``"mlp on fashion_mnist"`` when all runs share them, else ``""``."""
    t = runs.table
    parts = []
    for c in ("model", "dataset"):
        if c in t and t[c].astype(str).nunique() == 1 and t[c].iloc[0] is not None:
            parts.append(str(t[c].iloc[0]))
    return " on ".join(parts)


#: Title characters that fit one line of a single-panel figure at the default font size.
_TITLE_LINE = 60


def _title(text: str, runs: Runs) -> str:
    """``text (model on dataset)``; the context on a line of its own when the whole would not
    fit the figure's width (mathtext counted as written, so this errs towards two lines)."""
    ctx = _context(runs)
    if not ctx:
        return text
    return f"{text} ({ctx})" if len(text) + len(ctx) + 3 <= _TITLE_LINE else f"{text}\n({ctx})"


def _legend(ax: Axes, g: Groups, extra: Sequence[Any] = (), **kw: Any) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=lab) for lab, c in g.legend]
    handles += list(extra)
    if handles:
        ax.legend(handles=handles, fontsize="small", **kw)


def _grid(n: int, ncols: int | None, width: float = 4.2, height: float = 3.3):
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, list(axes[:n])


def _xlabel(x: str) -> str:
    if x not in ("epoch", "step"):
        raise ValueError(f"x={x!r} is invalid: must be 'epoch' or 'step'")
    return "epoch" if x == "epoch" else "step"


def _set_log(ax: Axes, which: str, log: bool | str, values: Sequence[float]) -> None:
    if log == "auto":
        on = wants_log(values)
    elif isinstance(log, bool):
        on = log
    else:
        raise ValueError(f"log={log!r} is invalid: must be True, False or 'auto'")
    if on:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")


def smooths(n: int, window: int) -> bool:
    """Whether a series of ``n`` records is smoothed with a moving average over ``window``:
    only when ``window > 1`` and ``n >= MIN_WINDOWS * window`` (a shorter series would be
    flattened towards its mean)."""
    return window > 1 and n >= MIN_WINDOWS * window


def _draw_series(
    ax: Axes,
    xs: np.ndarray,
    ys: np.ndarray,
    run: str,
    *,
    color: Any,
    lw: float,
    smooth: int = 0,
    name: str = "raw",
    ls: str = "-",
) -> bool:
    """Draw one run's series, the one way every curve over training is drawn: the recorded
    values as a line (gid ``<name>:<run>``; a marker at each record when there are fewer
    than :data:`SPARSE`) and, when :func:`smooths` (``len(ys)``, ``smooth``), their centred
    moving average (:func:`moving_average`, gid ``smooth:<run>``) in bold over them, the
    recorded values then thin and faint. Returns whether the average was drawn."""
    marker = {"marker": "o", "ms": 3} if len(ys) < SPARSE else {}
    if smooths(len(ys), smooth):
        ax.plot(xs, ys, color=color, lw=0.8, ls=ls, alpha=0.4, gid=f"{name}:{run}", **marker)
        ax.plot(xs, moving_average(ys, smooth), color=color, lw=lw, ls=ls, gid=f"smooth:{run}")
        return True
    ax.plot(xs, ys, color=color, lw=lw, ls=ls, gid=f"{name}:{run}", **marker)
    return False


# ----------------------------------------------------------------------------- trajectories


def _accuracy(runs: Runs, accuracy_key: str | None) -> tuple[str, str] | None:
    if accuracy_key is None:
        return None
    try:
        return resolve(runs, accuracy_key)
    except ValueError:
        return None


def _draw_trajectory(
    ax: Axes,
    runs: Runs,
    g: Groups,
    measure: str,
    key: str,
    *,
    x: str,
    smooth: int,
    thresholds: Sequence[float],
    accuracy: tuple[str, str] | None,
    log: bool | str,
) -> tuple[bool, set[float]]:
    """Draw ``key`` of each run (:func:`_draw_series`), a marker along the bottom (gid
    ``unresolved:<run>``) at each step where it was recorded as NaN (not resolved), and its
    threshold lines; returns whether some series was smoothed, the thresholds some run
    reached (those drawn) and the number of unresolved records marked."""
    all_values: list[float] = []
    smoothed, reached, n_unresolved = False, set(), 0
    for run in runs.table["run"]:
        rows = series(runs.records, key, measure, run=run, dropna=False)
        if len(rows) == 0:
            continue
        df = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
        xs, ys = df[x].to_numpy(dtype=float), df["value"].to_numpy()
        all_values += list(ys)
        colour = g.color[run]
        smoothed |= _draw_series(ax, xs, ys, run, color=colour, lw=g.linewidth(run), smooth=smooth)
        nan_rows = unresolved(rows)
        if len(nan_rows):  # recorded as NaN: a mark along the bottom, never a value
            n_unresolved += len(nan_rows)
            ax.plot(
                nan_rows[x].to_numpy(dtype=float),
                np.full(len(nan_rows), 0.02),
                transform=ax.get_xaxis_transform(),
                ls="none",
                marker="v",
                ms=5,
                color=colour,
                clip_on=False,
                gid=f"unresolved:{run}",
            )
        for t, (step, epoch) in crossings(runs, run, thresholds, accuracy).items():
            reached.add(t)
            ax.axvline(
                epoch if x == "epoch" else step,
                color=colour,
                ls="--",
                lw=0.9,
                alpha=0.8,
                gid=f"threshold:{run}:{t:g}",
            )
    _set_log(ax, "y", log, all_values)
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel(label_of(key, measure))
    return smoothed, reached, n_unresolved


def _extra_handles(
    smoothed: bool, smooth: int, reached: set[float], accuracy: Any, unresolved: int = 0
) -> list:
    """Legend entries of what was drawn: the recorded values and their moving average when
    some series was smoothed, the threshold lines that some run reached, the marks of
    unresolved records."""
    out = []
    if unresolved:
        out.append(
            Line2D([], [], color="grey", ls="none", marker="v", ms=5, label=UNRESOLVED_LABEL)
        )
    if reached and accuracy is not None:
        what = "training accuracy" if accuracy[1] == "train_acc" else accuracy[1]
        ts = ", ".join(f"{t:g}" for t in sorted(reached))
        out.append(Line2D([], [], color="grey", ls="--", lw=0.9, label=f"{what} first ≥ {ts}"))
    if smoothed:
        out += [
            Line2D([], [], color="grey", lw=0.8, alpha=0.4, label="recorded values"),
            Line2D([], [], color="grey", lw=2, label=f"moving average of {smooth}"),
        ]
    return out


def plot_trajectory(
    runs: RunsLike,
    key: str,
    *,
    measure: str | None = None,
    x: str = "epoch",
    smooth: int = 5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    accuracy_key: str | None = "train_acc",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One tracked key over training (paper Figs. 4, 5, 10-26): a curve per run, coloured by
    the swept value (seeds of one value share a colour, thinner), and dashed vertical lines
    at the first evaluation where training accuracy (``accuracy_key``, default ``train_acc``
    of the evaluation, else of the ``train_accuracy`` measure; None: no lines) is >= each of
    ``thresholds`` (default :data:`breakeven.analysis.DEFAULT_THRESHOLDS`, the tables'
    thresholds). A run's series
    of at least 3 x ``smooth`` records is drawn as its centred moving average over
    ``smooth`` records (bold) over its recorded values (thin, faint); a shorter one (or any,
    with ``smooth <= 1``) as its recorded values alone, with markers when it has fewer than
    :data:`SPARSE` records. The legend names the thresholds that some run reached and, when
    some series was smoothed, the moving average's window.

    ``key``: ``"lambda_K_1"`` or ``"measure:key"`` (e.g. ``"covariance_m1:lambda_K_1"``); a
    bare key is read from its usual measure. ``x``: ``"epoch"`` or ``"step"``. ``log``:
    ``"auto"`` (log y when all values are positive and span more than 2 decades), True or
    False. ``ax``: draw into an existing axes (returns its figure)."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    measure, key = resolve(runs, key, measure)
    g = groups(runs, by)
    if ax is None:
        fig = Figure(figsize=(5.5, 4), layout="constrained")
        ax = fig.add_subplot()
    accuracy = _accuracy(runs, accuracy_key)
    smoothed, reached, n_unresolved = _draw_trajectory(
        ax,
        runs,
        g,
        measure,
        key,
        x=x,
        smooth=smooth,
        thresholds=thresholds,
        accuracy=accuracy,
        log=log,
    )
    ax.set_title(_title(label_of(key, measure), runs))
    _legend(ax, g, _extra_handles(smoothed, smooth, reached, accuracy, n_unresolved))
    return ax.figure


def _panel(
    runs: Runs,
    specs: Sequence[tuple[str, str]],
    title: str,
    *,
    x: str,
    smooth: int,
    thresholds: Sequence[float],
    accuracy_key: str | None,
    log: bool | str,
    by: Sequence[str] | str | None,
    ncols: int | None,
) -> Figure:
    g = groups(runs, by)
    accuracy = _accuracy(runs, accuracy_key)
    fig, axes = _grid(len(specs), ncols)
    smoothed, reached, n_unresolved = False, set(), 0
    for ax, (measure, key) in zip(axes, specs):
        drawn = _draw_trajectory(
            ax,
            runs,
            g,
            measure,
            key,
            x=x,
            smooth=smooth,
            thresholds=thresholds,
            accuracy=accuracy,
            log=log,
        )
        smoothed |= drawn[0]
        reached |= drawn[1]
        n_unresolved += drawn[2]
        ax.set_title(label_of(key, measure))
    _legend(axes[0], g, _extra_handles(smoothed, smooth, reached, accuracy, n_unresolved))
    fig.suptitle(_title(title, runs))
    return fig


def plot_trajectories(
    runs: RunsLike,
    keys: Sequence[str] | None = None,
    *,
    x: str = "epoch",
    smooth: int = 5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    accuracy_key: str | None = "train_acc",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
    ncols: int | None = None,
) -> Figure:
    """A panel of :func:`plot_trajectory`, one axes per key, in the order given (up to 4 per
    row). ``keys=None``: those of :data:`DEFAULT_KEYS` (lambda_K^1, lambda_K^*/lambda_K^1,
    Tr K, lambda_H^1) that the records hold (``ValueError`` when none); given keys must all
    be there."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    if keys is None:
        specs = []
        for k in DEFAULT_KEYS:
            try:
                specs.append(resolve(runs, k))
            except ValueError:
                pass
        if not specs:
            raise ValueError(
                "the records hold none of " + ", ".join(DEFAULT_KEYS) + ": "
                "track them with --set track.covariance.every=N and --set track.hessian.every=N"
            )
    else:
        if isinstance(keys, str):
            keys = [keys]
        if not keys:
            raise ValueError("keys is empty: give at least one key")
        specs = [resolve(runs, k) for k in keys]
    return _panel(
        runs,
        specs,
        "Trajectories",
        x=x,
        smooth=smooth,
        thresholds=thresholds,
        accuracy_key=accuracy_key,
        log=log,
        by=by,
        ncols=ncols,
    )


BATCHNORM_KEYS = (
    ("alignment", "alignment"),
    ("batchnorm", "gamma_norm_last"),
    ("covariance", "lambda_K_1"),
    ("covariance", "condition_K"),
)


def require_batchnorm(runs: Runs) -> None:
    """Raise ``ValueError`` naming each of :data:`BATCHNORM_KEYS` that no run recorded."""
    present = keys_of(runs)
    lost = [missing(m, k) for m, k in BATCHNORM_KEYS if (m, k) not in present]
    if lost:
        raise ValueError("the BatchNorm figure needs 4 keys; " + "; ".join(lost))


def plot_batchnorm(
    runs: RunsLike,
    *,
    x: str = "epoch",
    smooth: int = 5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    accuracy_key: str | None = "train_acc",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """The BatchNorm panel (paper Fig. 7): ||g||/||g_5|| (``alignment``), ||gamma|| of the
    last BatchNorm layer (``batchnorm:gamma_norm_last``), lambda_K^1 and lambda_K^*/lambda_K^1
    over training, as four :func:`plot_trajectory` axes. All four must be recorded (by some
    run)."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    require_batchnorm(runs)
    return _panel(
        runs,
        BATCHNORM_KEYS,
        "Learning rate, BatchNorm and conditioning",
        x=x,
        smooth=smooth,
        thresholds=thresholds,
        accuracy_key=accuracy_key,
        log=log,
        by=by,
        ncols=4,
    )


# ----------------------------------------------------------------------------- scatters


def _scatter_pairs(
    ax: Axes,
    runs: Runs,
    g: Groups,
    xs: tuple[str, str],
    ys: tuple[str, str],
    log: bool | str,
    logy: bool | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    allx, ally = [], []
    for run in runs.table["run"]:
        df = paired(runs, run, xs, ys)
        if len(df) == 0:
            continue
        ax.scatter(df["x"], df["y"], s=14, color=g.color[run], alpha=0.8, lw=0, gid=f"points:{run}")
        allx.append(df["x"].to_numpy(dtype=float))
        ally.append(df["y"].to_numpy(dtype=float))
    if not allx:
        raise ValueError(
            f"no run recorded both {xs[1]!r} ({xs[0]}) and {ys[1]!r} ({ys[0]}): track both "
            "measures in the same run"
        )
    x, y = np.concatenate(allx), np.concatenate(ally)
    _set_log(ax, "x", log, x)
    _set_log(ax, "y", log if logy is None else logy, y)
    ax.set_xlabel(label_of(xs[1], xs[0]))
    ax.set_ylabel(label_of(ys[1], ys[0]))
    return x, y


def _lambda_h(runs: Runs, hessian: str | None) -> tuple[str, str]:
    try:
        return resolve(runs, "lambda_H_1", hessian)
    except ValueError:
        raise ValueError(missing(hessian or "hessian", "lambda_H_1")) from None


def plot_hessian_vs_covariance(
    runs: RunsLike,
    *,
    covariance: str = "covariance",
    hessian: str | None = None,
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """lambda_H^1 against lambda_K^1 at the same training steps (paper Fig. 2, left), a point
    per step, coloured by the swept value. Steps are matched within each run: each record of
    the sparser of the two series is paired with the other's record at the same step, or at
    the nearest step. ``hessian``: the measure of lambda_H^1 (default: hessian, then
    stability, then edge_of_stability)."""
    runs = as_runs(runs)
    xs = resolve(runs, "lambda_K_1", covariance)
    ys = _lambda_h(runs, hessian)
    g = groups(runs, by)
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _scatter_pairs(ax, runs, g, xs, ys, log)
    ax.set_title(_title(r"$\lambda_H^1$ against $\lambda_K^1$", runs))
    _legend(ax, g)
    return fig


def plot_loss_change_vs_covariance(
    runs: RunsLike,
    *,
    covariance: str = "covariance",
    loss_change: str = "loss_change",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """Delta L (loss before minus after the step: positive = the step reduced the loss)
    against lambda_K^1 (paper Fig. 2, right), steps matched as in
    :func:`plot_hessian_vs_covariance`; a grey line at Delta L = 0."""
    runs = as_runs(runs)
    xs = resolve(runs, "lambda_K_1", covariance)
    ys = resolve(runs, "delta_loss", loss_change)
    g = groups(runs, by)
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _scatter_pairs(ax, runs, g, xs, ys, log, logy=False)
    ax.axhline(0.0, color="grey", lw=0.8, gid="zero")
    ax.set_title(_title(r"$\Delta\mathcal{L}$ against $\lambda_K^1$", runs))
    _legend(ax, g)
    return fig


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _batch_size_of(runs: Runs, measure: str) -> str:
    df = series(runs.records, "M", measure)
    vals = sorted(set(df["value"]))
    return ", ".join(f"{v:g}" for v in vals) if vals else "?"


def plot_m1_vs_m128(
    runs: RunsLike,
    *,
    m1: str = "covariance_m1",
    m128: str = "covariance",
    key: str = "lambda_K_1",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """lambda_K^1 of K estimated with mini-batches of M = 1 (measure ``m1``) against M = 128
    (measure ``m128``), a point per step, steps matched as in
    :func:`plot_hessian_vs_covariance` (paper Fig. 9, App. C). The title gives the Pearson
    correlation over all points (``r``), the legend the correlation per group. The M of each
    measure is read from its records (key ``M``)."""
    runs = as_runs(runs)
    for m in (m1, m128):
        if not has_key(runs, m, key):
            raise ValueError(missing(m, key))
    g = groups(runs, by)
    fig = Figure(figsize=(5.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    x, y = _scatter_pairs(ax, runs, g, (m128, key), (m1, key), log)
    if len(x) < 2:
        raise ValueError(f"the Pearson correlation needs at least 2 matched steps, got {len(x)}")
    name = label_of(key)
    ax.set_xlabel(f"{name}, M = {_batch_size_of(runs, m128)} [{m128}]")
    ax.set_ylabel(f"{name}, M = {_batch_size_of(runs, m1)} [{m1}]")
    per_group = []
    for lab, colour in g.legend:
        members = [r for r in runs.table["run"] if g.label[r] == lab]
        px, py = [], []
        for r in members:
            df = paired(runs, r, (m128, key), (m1, key))
            px += list(df["x"])
            py += list(df["y"])
        r = _pearson(np.asarray(px, dtype=float), np.asarray(py, dtype=float))
        per_group.append(
            Line2D([], [], color=colour, marker="o", ls="", label=f"{lab} (r = {r:.3f})")
        )
    ax.legend(handles=per_group, fontsize="small")
    ax.set_title(_title(f"{name} at two M: Pearson r = {_pearson(x, y):.3f}", runs))
    return fig


# ----------------------------------------------------------------------------- spectra


def spectral_density(
    nodes: Sequence[float],
    weights: Sequence[float],
    grid: Sequence[float] | None = None,
    sigma2: float = SLQ_SIGMA2,
    num: int = 10000,
) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian-broadened density of an SLQ quadrature (PyHessian's ``density_generate``,
    by :func:`breakeven.records.slq_density`, the one broadening): sum_i w_i N(t; node_i,
    s^2) with variance s^2 = ``sigma2`` * max(1, span of the nodes), normalised to integrate
    to 1 over ``grid`` (default ``num`` points from min - 1% span to max + 1% span). Returns
    (grid, density)."""
    t = np.asarray(nodes, dtype=float)
    lo, hi = t.min(), t.max()
    span = hi - lo
    if grid is None:
        pad = 0.01 * max(span, 1.0)
        grid = np.linspace(lo - pad, hi + pad, num)
    grid = np.asarray(grid, dtype=float)
    d = slq_density(t, weights, grid, sigma2 * max(1.0, span))
    area = float(np.sum((d[1:] + d[:-1]) / 2 * np.diff(grid))) if len(grid) > 1 else d.sum()
    return grid, d / area if area > 0 else d


def _indexed(values: dict[str, float], prefix: str) -> np.ndarray:
    ks = sorted((int(k[len(prefix) :]), v) for k, v in values.items() if k.startswith(prefix))
    return np.array([v for _, v in ks], dtype=float)


def _row(runs: Runs, run: str, measure: str, step: int) -> dict[str, float]:
    rec = runs.records
    df = rec[(rec["run"] == run) & (rec["measure"] == measure) & (rec["step"] == step)]
    return dict(zip(df["key"], df["value"]))


def _peak_step(runs: Runs, run: str, measure: str, key: str) -> int | None:
    """The step of the run's maximum of ``key``, by the one convention of the tables."""
    peak = trajectory_max(series(runs.records, key, measure, run=run))
    return None if peak is None else peak.step


def _nearest_step(runs: Runs, run: str, measure: str, key: str, step: int) -> int | None:
    df = series(runs.records, key, measure, run=run)
    if len(df) == 0:
        return None
    s = df["step"].to_numpy()
    return int(s[np.argmin(np.abs(s - step))])


def plot_spectra(
    runs: RunsLike,
    *,
    covariance: str = "covariance",
    hessian: str | None = None,
    density: str = "hessian_density",
    parts: Sequence[str] | None = None,
    sigma2: float = 1e-5,
    by: Sequence[str] | str | None = None,
) -> Figure:
    """The spectra of K (left) and H (right) at the step of each run's largest lambda_K^1 and
    lambda_H^1 (paper Fig. 3), a curve per run coloured by the swept value.

    K: the eigenvalues ``eig_K_i`` of that step's record (needs
    ``track.covariance.spectrum=true``) against their rank, largest first; the L-th, zero by
    centring, is left out. H: the Gaussian-broadened SLQ density (:func:`spectral_density`;
    log y, as PyHessian / Ghorbani et al.) of the ``hessian_density`` record nearest to that
    step; without density records, the top-k ``lambda_H_i`` of the ``hessian`` record (needs
    k >= 2). ``parts``: which of ``"K"``, ``"H"`` to draw (default: those the records hold)."""
    runs = as_runs(runs)
    if parts is None:
        present = keys_of(runs)
        parts = [
            p
            for p, ok in (
                ("K", _has_k_spectrum(present, covariance)),
                ("H", _has_h_spectrum(runs, present, hessian, density)),
            )
            if ok
        ]
        if not parts:
            raise ValueError(
                "no spectrum recorded: track K's with --set track.covariance.spectrum=true, "
                "H's with --set track.hessian_density.every=N (or --set track.hessian.k=10)"
            )
    parts = list(parts)
    if not parts or any(p not in ("K", "H") for p in parts):
        raise ValueError(f"parts={parts!r} is invalid: choose from 'K', 'H'")
    present = keys_of(runs)
    g = groups(runs, by)
    fig, axes = _grid(len(parts), None, width=5.0, height=3.8)
    for ax, part in zip(axes, parts):
        if part == "K":
            if (covariance, "eig_K_0") not in present:
                raise ValueError(
                    f"the K spectrum needs the eigenvalues eig_K_i of measure {covariance!r}: "
                    f"track them with --set track.{covariance}.spectrum=true"
                )
            exact = True
            for run in runs.table["run"]:
                peak = _peak_step(runs, run, covariance, "lambda_K_1")
                if peak is None:
                    peak = _peak_step(runs, run, covariance, "eig_K_0")
                step = _nearest_step(runs, run, covariance, "eig_K_0", peak or 0)
                if step is None:
                    continue
                exact &= step == peak
                eig = _indexed(_row(runs, run, covariance, step), "eig_K_")[:-1]
                ax.plot(
                    np.arange(1, len(eig) + 1),
                    eig,
                    marker=".",
                    color=g.color[run],
                    lw=g.linewidth(run),
                    gid=f"K:{run}",
                )
            ax.set_yscale("log")
            ax.set_xlabel("rank $i$")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(r"$\lambda_K^i$")
            ax.set_title(r"Spectrum of $\mathbf{K}$ " + _at_peak(exact, r"$\lambda_K^1$"))
            ax.set_gid("K")
        else:
            _draw_hessian_spectrum(ax, runs, g, present, hessian, density, sigma2)
        _legend(ax, g)
    what = r" and ".join(rf"$\mathbf{{{p}}}$" for p in parts)
    fig.suptitle(_title(f"Spectra of {what}" if len(parts) > 1 else f"Spectrum of {what}", runs))
    return fig


def _at_peak(exact: bool, name: str) -> str:
    """Where a spectrum was taken: at each run's step of max ``name``, or the nearest one."""
    return f"at max {name}" if exact else f"nearest the step of max {name}"


def _has_k_spectrum(present: Any, covariance: str) -> bool:
    return (covariance, "eig_K_0") in present


def _has_h_spectrum(runs: Runs, present: Any, hessian: str | None, density: str) -> bool:
    if (density, "node_0") in present and (density, "weight_0") in present:
        return True
    try:
        resolve(runs, "lambda_H_2", hessian or "hessian")
    except ValueError:
        return False
    return True


def _draw_hessian_spectrum(ax, runs, g, present, hessian, density, sigma2) -> None:
    has_density = (density, "node_0") in present and (density, "weight_0") in present
    top_k = None
    try:
        top_k = resolve(runs, "lambda_H_2", hessian or "hessian")
    except ValueError:
        pass
    if not has_density and top_k is None:
        raise ValueError(
            f"the H spectrum needs SLQ records of measure {density!r} (track them with --set "
            f"track.{density}.every=N) or the top-k Hessian eigenvalues with k >= 2 (--set "
            "track.hessian.k=10)"
        )
    lam = None
    try:
        lam = resolve(runs, "lambda_H_1", hessian)
    except ValueError:
        pass
    any_density, exact = False, True
    for run in runs.table["run"]:
        peak = _peak_step(runs, run, *lam) if lam else None
        if has_density:
            if peak is None:  # no lambda_H_1: the density record with the largest node
                df = runs.records
                df = df[(df["run"] == run) & (df["measure"] == density)]
                df = df[df["key"].str.startswith("node_")]
                if len(df) == 0:
                    continue
                peak = int(df.loc[df["value"].idxmax(), "step"])
            step = _nearest_step(runs, run, density, "node_0", peak)
            if step is None:
                continue
            exact &= step == peak
            row = _row(runs, run, density, step)
            t, d = spectral_density(_indexed(row, "node_"), _indexed(row, "weight_"), sigma2=sigma2)
            ax.plot(t, d, color=g.color[run], lw=g.linewidth(run, 1.2, 0.8), gid=f"H:{run}")
            any_density = True
        else:
            step = peak if peak is not None else _peak_step(runs, run, *top_k)
            if step is None:
                continue
            near = _nearest_step(runs, run, top_k[0], "lambda_H_1", step)
            if near is None:
                continue
            exact &= near == step
            step = near
            eig = _indexed(_row(runs, run, top_k[0], step), "lambda_H_")
            ax.plot(
                np.arange(1, len(eig) + 1),
                eig,
                marker=".",
                color=g.color[run],
                lw=g.linewidth(run),
                gid=f"H:{run}",
            )
    if any_density:
        ax.set_yscale("log")
        lines = [ln for ln in ax.lines if str(ln.get_gid()).startswith("H:")]
        top = max(float(np.max(ln.get_ydata())) for ln in lines)
        ax.set_ylim(top * 1e-7, top * 3)
        ax.set_xlabel(r"eigenvalue of $\mathbf{H}$")
        ax.set_ylabel("density (log scale)")
        where = _at_peak(exact, r"$\lambda_H^1$") if lam else "at its largest SLQ node"
        ax.set_title(r"Spectral density of $\mathbf{H}$ " + where)
        ax.set_gid("H-density")
    else:
        vals = np.concatenate([ln.get_ydata() for ln in ax.lines]) if ax.lines else []
        _set_log(ax, "y", "auto", vals)
        ax.set_xlabel("rank $i$")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(r"$\lambda_H^i$")
        ax.set_title(r"Top eigenvalues of $\mathbf{H}$ " + _at_peak(exact, r"$\lambda_H^1$"))
        ax.set_gid("H-top")


# ----------------------------------------------------------------------------- stability


def plot_stability(
    runs: RunsLike,
    *,
    measure: str = "stability",
    x: str = "step",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """The left side of Eq. 1 along e_H^1, (1 - eta lambda_H^1)^2 + s^2 eta^2 (N-S)/(S(N-1)),
    over training (a curve per run, its recorded values: never smoothed), a horizontal line
    at 1, and each run's break-even point as :func:`breakeven.analysis.break_even_points`
    defines it (of the records of ``measure``) marked by a star and a dotted vertical line.
    The legend has a "break-even point" entry only when some run has one."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    if not has_key(runs, measure, "stability"):
        raise ValueError(missing(measure, "stability"))
    g = groups(runs, by)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values: list[float] = []
    points = _break_even(runs, measure)
    for run in runs.table["run"]:
        df = series(runs.records, "stability", measure, run=run)
        if len(df) == 0:
            continue
        xs, ys = df[x].to_numpy(dtype=float), df["value"].to_numpy()
        values += list(ys)
        colour = g.color[run]
        _draw_series(ax, xs, ys, run, color=colour, lw=g.linewidth(run), name="stability")
        if run in points:
            i = int(match_nearest(df["step"], [points[run]])[0])
            ax.plot(
                [xs[i]],
                [ys[i]],
                marker="*",
                ms=12,
                ls="",
                color=colour,
                mec="black",
                mew=0.5,
                gid=f"break_even:{run}",
            )
            ax.axvline(xs[i], color=colour, ls=":", lw=0.9, gid=f"break_even_line:{run}")
    ax.axhline(1.0, color="black", lw=0.8, ls="--", gid="unit")
    _set_log(ax, "y", log, [*values, 1.0])
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel(label_of("stability"))
    ax.set_title(_title(r"Stability along $e_H^1$ (Eq. 1)", runs))
    star = Line2D(
        [], [], marker="*", ms=10, ls="", color="grey", mec="black", label="break-even point"
    )
    _legend(ax, g, [star] if points else [])
    return fig


def _break_even(runs: Runs, measure: str) -> dict[str, int]:
    """{run: step} of the break-even point of each run that has one, as
    :func:`breakeven.analysis.break_even_points` finds it in the records of ``measure``
    (read as the ``stability`` measure it looks at)."""
    rec = runs.records
    rec = rec[rec["measure"] == measure].assign(measure="stability")
    table = break_even_points(replace(runs, records=rec), ())
    return {
        run: int(step)
        for run, step in zip(table["run"], table["break_even_step"])
        if np.isfinite(step)
    }


def eos_measure(runs: Runs) -> tuple[str, str]:
    """(measure, key) of the sharpness the edge-of-stability figure draws: the dense
    ``sharpness`` series of the ``sharpness`` measure when recorded (lambda_H^1 at every
    step), else ``lambda_H_1`` of ``edge_of_stability``."""
    if has_key(runs, "sharpness", "sharpness"):
        return "sharpness", "sharpness"
    return "edge_of_stability", "lambda_H_1"


def plot_edge_of_stability(
    runs: RunsLike,
    *,
    measure: str | None = None,
    x: str = "step",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """lambda_H^1 (solid) against the edge-of-stability threshold 2/eta ((2 + 2 beta)/eta
    with momentum beta; dashed, same colour) over training: gradient descent is unstable
    along e_H^1 where the solid line is above. lambda_H^1 is the ``sharpness`` measure's
    value at every step when recorded (a certified lower bound, gid ``sharpness:<run>``),
    else the ``edge_of_stability`` measure's (gid ``lambda_H_1:<run>``); ``measure`` picks
    one by name. The recorded values are drawn, never smoothed (markers on sparse series);
    the labels name the threshold as 2/eta when no run used momentum, else as
    (2 + 2 beta)/eta."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    if measure is None:
        measure, value = eos_measure(runs)
    else:
        value = "sharpness" if has_key(runs, measure, "sharpness") else "lambda_H_1"
    threshold = eos_threshold_label(runs)
    name = r"$\lambda_H^1$ (every step, lower bound)" if value == "sharpness" else r"$\lambda_H^1$"
    return _against_threshold(
        runs,
        measure,
        (value, "eos_threshold"),
        x=x,
        log=log,
        by=by,
        labels=(name, threshold),
        ylabel=rf"$\lambda_H^1$ and {threshold}",
        title=rf"Edge of stability: $\lambda_H^1$ against {threshold}",
    )


def _against_threshold(
    runs: Runs,
    measure: str,
    keys: tuple[str, str],
    *,
    x: str,
    log: bool | str,
    by: Sequence[str] | str | None,
    labels: tuple[str, str],
    ylabel: str,
    title: str,
) -> Figure:
    """A quantity (``keys[0]``, solid) against its threshold (``keys[1]``, dashed, the same
    colour) over training, both from ``measure``'s records, one pair of lines per run (gids
    ``<key>:<run>``); recorded values, never smoothed; ``labels`` name the two in the
    legend."""
    for key in keys:
        if not has_key(runs, measure, key):
            raise ValueError(missing(measure, key))
    g = groups(runs, by)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values: list[float] = []
    for run in runs.table["run"]:
        colour, lw = g.color[run], g.linewidth(run)
        for key, ls in zip(keys, ("-", "--")):
            df = series(runs.records, key, measure, run=run)
            if len(df) == 0:
                continue
            values += list(df["value"])
            xs, ys = df[x].to_numpy(dtype=float), df["value"].to_numpy()
            _draw_series(ax, xs, ys, run, color=colour, lw=lw, name=key, ls=ls)
    _set_log(ax, "y", log, values)
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel(ylabel)
    ax.set_title(_title(title, runs))
    extra = [Line2D([], [], color="grey", ls=ls, label=t) for t, ls in zip(labels, ("-", "--"))]
    _legend(ax, g, extra)
    return fig


def eos_threshold_label(runs: Runs) -> str:
    """The edge-of-stability threshold as the runs' configs make it: ``$2/\\eta$`` when every
    run's config says momentum 0, else (some momentum, or one not recorded)
    ``$(2 + 2\\beta)/\\eta$``."""
    momenta = runs.table["momentum"] if "momentum" in runs.table else [None]
    plain = all(m is not None and m == 0 for m in momenta)
    return r"$2/\eta$" if plain else r"$(2 + 2\beta)/\eta$"


#: The measure whose records the adaptive edge-of-stability figure draws.
ADAPTIVE_EOS_MEASURE = "preconditioned_sharpness"


def plot_adaptive_edge_of_stability(
    runs: RunsLike,
    *,
    measure: str = ADAPTIVE_EOS_MEASURE,
    x: str = "step",
    log: bool | str = "auto",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """Adam's edge of stability (Cohen et al. 2022): the preconditioned sharpness
    lambda_1(P^{-1} H) (``precond_lambda_H_1`` of the ``preconditioned_sharpness`` measure,
    solid, gid ``precond_lambda_H_1:<run>``) against its threshold
    (2 + 2 beta_1)/((1 - beta_1) eta) (``precond_eos_threshold``, dashed, same colour), over
    training: Adam is unstable along the top preconditioned direction where the solid line
    is above. The labels name the threshold 38/eta when every run's config says
    beta_1 = 0.9. Recorded values, never smoothed; the NaN before Adam's first update is
    not drawn."""
    runs = as_runs(runs)
    _xlabel(x)  # checks x
    threshold = adaptive_threshold_label(runs)
    sharpness = key_label("precond_lambda_H_1")
    return _against_threshold(
        runs,
        measure,
        ("precond_lambda_H_1", "precond_eos_threshold"),
        x=x,
        log=log,
        by=by,
        labels=(sharpness, threshold),
        ylabel=f"{sharpness} and {threshold}",
        title=f"Adaptive edge of stability: {sharpness} against {threshold}",
    )


def adaptive_threshold_label(runs: Runs) -> str:
    """Adam's threshold as the runs' configs make it: ``$38/\\eta$`` when every run's
    config says beta_1 = 0.9 (``train.betas``, default (0.9, 0.999) for Adam and AdamW),
    else ``$(2+2\\beta_1)/((1-\\beta_1)\\eta)$``."""
    beta1 = [
        (cfg.get("train", {}).get("betas") or [0.9, 0.999])[0] for cfg in runs.configs.values()
    ]
    if beta1 and all(b == 0.9 for b in beta1):
        return r"$38/\eta$"
    return key_label("precond_eos_threshold")
