"""The trajectory embedding of paper Fig. 1 (and Fig. 8): each tracked step's predictions on
the validation set, of all runs, embedded in one shared 2-D UMAP (umap-learn), a line per
run, over a background coloured by a measure at the nearest embedded point. Records only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis import Runs
from ._data import (
    RunsLike,
    as_runs,
    crossings,
    groups,
    how_to_track,
    match_nearest,
    predictions,
    resolve,
    series,
    wants_log,
)
from .figures import _legend, _title, label_of

__all__ = [
    "FIG1_UNTIL_ACCURACY",
    "MIN_POINTS",
    "embed_predictions",
    "exact_knn",
    "nearest_image",
    "plot_embedding",
]

#: UMAP needs n_neighbors >= 2 and n_neighbors < number of points.
MIN_POINTS = 3
#: The paper's Fig. 1 embeds each run's steps up to 65% training accuracy.
FIG1_UNTIL_ACCURACY = 0.65


def _umap() -> Any:
    try:
        import umap
    except ImportError as e:
        raise ImportError(
            "the trajectory embedding needs umap-learn: pip install 'breakeven[plot]' "
            "(or pip install umap-learn)"
        ) from e
    return umap


def exact_knn(X: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row of ``X`` (itself first, at distance 0), euclidean,
    exact: (indices int32 (n, k), distances float32 (n, k)), nearest first. Given to UMAP as
    its ``precomputed_knn`` (the same exact search UMAP does for small data, without
    compiling its own)."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if not 1 <= k < n:
        raise ValueError(f"k={k} is invalid: must be >= 1 and < the {n} rows")
    sq = np.einsum("ij,ij->i", X, X)
    idx = np.empty((n, k), dtype=np.int32)
    dist = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        d2 = sq[s:e, None] + sq[None, :] - 2.0 * (X[s:e] @ X.T)
        np.maximum(d2, 0.0, out=d2)
        rows = np.arange(e - s)
        d2[rows, np.arange(s, e)] = -1.0  # itself first, even among exact duplicates
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]  # k < n
        order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        idx[s:e] = best
        dist[s:e] = np.sqrt(np.maximum(np.take_along_axis(d2, best, axis=1), 0.0))
    return idx, dist


def embed_predictions(
    runs: RunsLike,
    *,
    measure: str = "predictions",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int = 0,
    until_accuracy: float | None = None,
    accuracy_key: str = "train_acc",
) -> tuple[Any, dict[str, Any]]:
    """The predictions of every ``measure`` record of every run, each array flattened to one
    vector, embedded in one 2-D UMAP (euclidean; ``random_state`` fixed, so the embedding is
    reproducible). Returns a DataFrame with columns ``run, step, epoch, x, y`` (by run and
    step) and a dict of the settings used (``n_neighbors``, ``init``, ``n_points``,
    ``random_state``, ``until_accuracy``, and ``cut``: {run: the step of its first
    evaluation with training accuracy >= ``until_accuracy``} of the runs that reached it).

    With fewer points than ``n_neighbors + 1``, ``n_neighbors`` is lowered to ``n_points - 1``
    (with a warning); fewer than 8 points use a random initial layout (the spectral one needs
    more); fewer than :data:`MIN_POINTS` raise ``ValueError``. ``until_accuracy``: keep each
    run's steps up to its first evaluation with training accuracy >= this (Fig. 1 stops at
    65%; a run that never reaches it keeps all its steps)."""
    import pandas as pd

    runs = as_runs(runs)
    preds = predictions(runs, measure)
    acc = None
    if until_accuracy is not None:
        acc = resolve(runs, accuracy_key)
    rows, vectors, cut = [], [], {}
    for run, items in preds.items():
        stop = None
        if acc is not None:
            hit = crossings(runs, run, [until_accuracy], acc)
            stop = hit[float(until_accuracy)][0] if hit else None
        if stop is not None and items:
            cut[run] = stop
        for step, epoch, arr in items:
            if stop is not None and step > stop:
                continue
            rows.append((run, step, epoch))
            vectors.append(np.asarray(arr, dtype=np.float32).reshape(-1))
    n = len(vectors)
    if n == 0:
        raise ValueError(
            f"the records have no {measure!r} records with prediction arrays: "
            + how_to_track("predictions")
        )
    if n < MIN_POINTS:
        raise ValueError(
            f"the embedding needs at least {MIN_POINTS} recorded predictions, got {n}: "
            "track predictions more often (--set track.predictions.every=N)"
        )
    sizes = {v.shape[0] for v in vectors}
    if len(sizes) > 1:
        raise ValueError(
            f"the prediction arrays differ in size ({sorted(sizes)}): embed runs that tracked "
            "the same number of examples and classes (track.predictions.num_examples)"
        )
    k = min(int(n_neighbors), n - 1)
    if k < n_neighbors:
        warnings.warn(
            f"only {n} embedded points: UMAP n_neighbors lowered from {n_neighbors} to {k}",
            stacklevel=2,
        )
    init = "spectral" if n >= 8 else "random"
    umap = _umap()
    X = np.stack(vectors)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*graph is not fully connected.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            min_dist=min_dist,
            random_state=random_state,
            init=init,
            metric="euclidean",
            precomputed_knn=(*exact_knn(X, k), None),
        )
        xy = reducer.fit_transform(X)
    df = pd.DataFrame(rows, columns=["run", "step", "epoch"])
    df["x"], df["y"] = xy[:, 0].astype(float), xy[:, 1].astype(float)
    return df, {
        "n_neighbors": k,
        "init": init,
        "n_points": n,
        "random_state": random_state,
        "until_accuracy": until_accuracy,
        "cut": cut,
    }


def _colour_values(runs: Runs, points: Any, measure: str, key: str) -> np.ndarray:
    """The value of (measure, key) of each embedded point's run at the nearest step."""
    out = np.full(len(points), np.nan)
    for run, idx in points.groupby("run").groups.items():
        df = series(runs, measure, key, run=run)
        if len(df) == 0:
            continue
        j = match_nearest(df["step"], points.loc[idx, "step"])
        out[np.asarray(idx)] = df["value"].to_numpy()[j]
    return out


def nearest_image(
    xy: np.ndarray, values: np.ndarray, extent: Sequence[float], resolution: int
) -> np.ndarray:
    """A ``resolution`` x ``resolution`` image over ``extent`` (x0, x1, y0, y1): each pixel
    (its centre) takes the value of the nearest point (euclidean) with a finite value."""
    from scipy.spatial import cKDTree

    ok = np.isfinite(values)
    x0, x1, y0, y1 = extent
    dx, dy = (x1 - x0) / resolution, (y1 - y0) / resolution
    gx = x0 + dx * (np.arange(resolution) + 0.5)
    gy = y0 + dy * (np.arange(resolution) + 0.5)
    X, Y = np.meshgrid(gx, gy)  # rows: y, columns: x (imshow origin="lower")
    _, j = cKDTree(xy[ok]).query(np.column_stack([X.ravel(), Y.ravel()]))
    return values[ok][j].reshape(resolution, resolution)


def _cut_off(info: dict[str, Any], embedded: Sequence[str]) -> str:
    """The title's line on the cut-off of :func:`embed_predictions` (``""`` without one);
    ``embedded``: the runs drawn."""
    until = info["until_accuracy"]
    if until is None:
        return ""
    text = f"\nsteps until training accuracy ≥ {until:g}"
    never = sum(run not in info["cut"] for run in embedded)
    if never:
        text += f" ({never} of {len(embedded)} runs never reached it: all their steps)"
    return text


def plot_embedding(
    runs: RunsLike,
    color: str = "lambda_K_1",
    *,
    color_measure: str | None = None,
    measure: str = "predictions",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int = 0,
    until_accuracy: float | None = None,
    resolution: int = 200,
    log: bool | str = "auto",
    cmap: str = "viridis",
    by: Sequence[str] | str | None = None,
) -> Figure:
    """Fig. 1: the trajectories of all runs in one 2-D UMAP of their validation predictions
    (:func:`embed_predictions`), a line per run (coloured by the swept value, a circle at
    its first step), over a background image whose pixels take the value of ``color`` (a key
    or ``"measure:key"``, default lambda_K^1; ``"train_acc"`` for Fig. 1 right,
    ``"condition_K"``, ``"trace_K"``, ``"lambda_H_1"`` for Fig. 8) at the nearest embedded
    point; each point's value is its run's record of that key at the nearest step. The image
    (``gid="background"``) is ``resolution`` pixels square; its colour scale is logarithmic
    when the values span decades (``log="auto"``). ``until_accuracy``: embed each run's
    steps up to its first evaluation with training accuracy >= this (Fig. 1:
    :data:`FIG1_UNTIL_ACCURACY`); the title then states the cut-off and how many runs never
    reached it (those keep all their steps)."""
    runs = as_runs(runs)
    cm, ck = resolve(runs, color, color_measure)
    points, info = embed_predictions(
        runs,
        measure=measure,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=random_state,
        until_accuracy=until_accuracy,
    )
    values = _colour_values(runs, points, cm, ck)
    if not np.isfinite(values).any():
        raise ValueError(f"no embedded run recorded {ck!r} ({cm}): track it in the same runs")
    xy = points[["x", "y"]].to_numpy()
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-6)
    extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    image = nearest_image(xy, values, extent, resolution)
    finite = values[np.isfinite(values)]
    if (log == "auto" and wants_log(finite)) or log is True:
        norm: Normalize = LogNorm(finite.min(), finite.max())
    else:
        norm = Normalize(finite.min(), finite.max())
    g = groups(runs, by)
    fig = Figure(figsize=(6.4, 5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(
        image,
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap=cmap,
        norm=norm,
        interpolation="nearest",
        alpha=0.85,
        gid="background",
    )
    fig.colorbar(im, ax=ax, label=label_of(ck, cm))
    for run, df in points.groupby("run", sort=False):
        colour = g.color[run]
        ax.plot(
            df["x"],
            df["y"],
            "-o",
            ms=2.5,
            lw=g.linewidth(run, 1.4, 1.0),
            color=colour,
            mec="white",
            mew=0.3,
            gid=f"trajectory:{run}",
        )
        ax.plot(
            df["x"].iloc[:1],
            df["y"].iloc[:1],
            "o",
            ms=7,
            color=colour,
            mec="black",
            gid=f"start:{run}",
        )
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(
        _title("Trajectories of the validation predictions", runs)
        + _cut_off(info, list(points["run"].unique()))
        + f"\nUMAP of {info['n_points']} points, n_neighbors={info['n_neighbors']}, "
        f"random_state={info['random_state']}; background: nearest point",
        fontsize="medium",
    )
    start = Line2D([], [], marker="o", ms=7, ls="", color="grey", mec="black", label="first step")
    _legend(ax, g, [start])
    return fig
