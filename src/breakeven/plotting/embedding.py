"""The trajectory embedding of paper Fig. 1 (and Fig. 8): each tracked step's predictions on
the validation set, of all runs, embedded in one shared 2-D UMAP (umap-learn), a line per
run, over a background coloured by a measure at the nearest embedded point. Records only.

UMAP takes most of a report's time, so its coordinates are kept in the first run or sweep
directory read (``.breakeven-cache/embedding-<hash>.npz``) and reused while the records and
settings that determine them are unchanged (see :func:`embed_predictions`)."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis import Runs
from ..records import RunStoreError, atomic_write, inside, open_for_reading, to_json
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
from ._progress import status
from .figures import _legend, _title, label_of

__all__ = [
    "CACHE_DIR",
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
#: The folder, inside the first run or sweep directory read, that keeps embeddings.
CACHE_DIR = ".breakeven-cache"
#: Bump when what this module hands UMAP changes (exact_knn, the parameters it passes).
_CACHE_FORMAT = 1
#: The packages whose versions may change UMAP's output for the same input.
_CACHE_PACKAGES = ("umap-learn", "numba", "numpy", "scipy", "scikit-learn")


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


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _CACHE_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _cache_file(runs: Runs, X: np.ndarray, settings: dict[str, Any]) -> Path | None:
    """``<first directory read>/.breakeven-cache/embedding-<sha256>.npz``, the hash of exactly
    what determines UMAP's output: the embedded vectors (``X``, float32, in order), the
    ``settings`` passed to UMAP, :data:`_CACHE_FORMAT` and the versions of
    :data:`_CACHE_PACKAGES`. None when ``runs`` was not read from directories or a symbolic
    link is in the way (:func:`~breakeven.records.inside`)."""
    if not runs.sources:
        return None
    head = {"format": _CACHE_FORMAT, "settings": settings, "versions": _versions()}
    h = hashlib.sha256(to_json({**head, "shape": list(X.shape)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    try:
        return inside(runs.sources[0], CACHE_DIR, f"embedding-{h.hexdigest()}.npz")
    except RunStoreError:
        return None


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    """The (n, 2) coordinates kept at ``path``; None when there is no file there or it is
    not a complete cache file of ``n`` points written under this name (truncated, corrupt,
    copied from another name, non-finite values): then the embedding is recomputed."""
    try:
        f = open_for_reading(path)
        if f is None:
            return None
        with f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            xy, key = npz["xy"], str(npz["key"])
    except Exception:  # any unreadable file (not a zip, truncated, a FIFO): recompute it
        return None
    if key != path.stem or xy.shape != (n, 2) or xy.dtype.kind != "f":
        return None
    return xy if np.isfinite(xy).all() else None


def _write_cache(path: Path, xy: np.ndarray) -> None:
    """Keep ``xy`` at ``path`` (atomically, never through a symbolic link:
    :func:`~breakeven.records.atomic_write`); a directory that cannot be written (read-only,
    full, a link or a file in the way) keeps nothing, and nothing else changes."""
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, xy=xy, key=np.array(path.stem)))
    except (OSError, RunStoreError):
        pass


def embed_predictions(
    runs: RunsLike,
    *,
    measure: str = "predictions",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int = 0,
    until_accuracy: float | None = None,
    accuracy_key: str = "train_acc",
    cache: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The predictions of every ``measure`` record of every run, each array flattened to one
    vector, embedded in one 2-D UMAP (euclidean; ``random_state`` fixed, so the embedding is
    reproducible). Returns a DataFrame with columns ``run, step, epoch, x, y`` (by run and
    step) and a dict of the settings used (``n_neighbors``, ``init``, ``n_points``,
    ``random_state``, ``until_accuracy``, ``cut``: {run: the step of its first evaluation
    with training accuracy >= ``until_accuracy``} of the runs that reached it,
    ``cache_file``: the cache file's path or None, ``reused``: whether the coordinates came
    from it).

    With fewer points than ``n_neighbors + 1``, ``n_neighbors`` is lowered to ``n_points - 1``
    (with a warning); fewer than 8 points use a random initial layout (the spectral one needs
    more); fewer than :data:`MIN_POINTS` raise ``ValueError``. ``until_accuracy``: keep each
    run's steps up to its first evaluation with training accuracy >= this (Fig. 1 stops at
    65%; a run that never reaches it keeps all its steps).

    ``cache``: keep the coordinates in ``<first directory read>/.breakeven-cache/
    embedding-<sha256>.npz`` and reuse them. The hash covers exactly what determines them:
    the embedded vectors (the prediction arrays left after the cut-off, in order), the UMAP
    settings (``n_neighbors``, ``min_dist``, ``init``, ``random_state``, metric) and the
    versions of umap-learn, numba, numpy, scipy and scikit-learn; a change in any of them (a
    record appended or changed, another cut-off, seed or setting) computes a new embedding.
    Only for runs read from directories (``Runs.sources``) with an integer
    ``random_state``. A cache file that cannot be read back as these points' coordinates
    (truncated, corrupt) is ignored and replaced; a directory that cannot be written keeps
    nothing (the embedding is computed each time). Before fitting, the status of
    :mod:`breakeven.plotting._progress` says ``"embedding: UMAP on N points"``."""
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
    X = np.stack(vectors)
    if isinstance(random_state, np.integer):
        random_state = int(random_state)
    settings = {
        "n_components": 2,
        "n_neighbors": k,
        "min_dist": float(min_dist),
        "random_state": random_state,
        "init": init,
        "metric": "euclidean",
    }
    where = None
    if cache and isinstance(random_state, int):
        where = _cache_file(runs, X, settings)
    xy = _read_cache(where, n) if where is not None else None
    reused = xy is not None
    if reused:
        status(f"embedding: reusing the cached UMAP of {n} points")
    else:
        umap = _umap()
        status(f"embedding: UMAP on {n} points")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            warnings.filterwarnings("ignore", message=".*graph is not fully connected.*")
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            reducer = umap.UMAP(**settings, precomputed_knn=(*exact_knn(X, k), None))
            xy = reducer.fit_transform(X)
        if where is not None:
            _write_cache(where, xy)
    df = pd.DataFrame(rows, columns=["run", "step", "epoch"])
    df["x"], df["y"] = xy[:, 0].astype(float), xy[:, 1].astype(float)
    return df, {
        "n_neighbors": k,
        "init": init,
        "n_points": n,
        "random_state": random_state,
        "until_accuracy": until_accuracy,
        "cut": cut,
        "cache_file": where,
        "reused": reused,
    }


def _colour_values(runs: Runs, points: Any, measure: str, key: str) -> np.ndarray:
    """The value of (measure, key) of each embedded point's run at the nearest step."""
    out = np.full(len(points), np.nan)
    for run, idx in points.groupby("run").groups.items():
        df = series(runs.records, key, measure, run=run)
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
    cache: bool = True,
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
    reached it (those keep all their steps). ``cache``: reuse the coordinates of an
    embedding already computed for the same records and settings (:func:`embed_predictions`)."""
    runs = as_runs(runs)
    cm, ck = resolve(runs, color, color_measure)
    points, info = embed_predictions(
        runs,
        measure=measure,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=random_state,
        until_accuracy=until_accuracy,
        cache=cache,
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
