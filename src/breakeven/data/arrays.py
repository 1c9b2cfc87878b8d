"""Any ``.npz`` holding ``x_train``, ``y_train``, ``x_test``, ``y_test``, and
scikit-learn's 8x8 digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ._base import CorruptDatasetError, Dataset, DatasetNotFoundError
from .imdb import read_npz

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _inputs(path: Path, x: np.ndarray, key: str) -> torch.Tensor:
    if x.dtype == np.uint8:
        t = torch.from_numpy(x.astype(np.float32) / 255.0)
        if t.dim() == 3:  # (N, H, W) grey images
            t = t.unsqueeze(1)
        elif t.dim() == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return t
    if np.issubdtype(x.dtype, np.floating):
        return torch.from_numpy(x.astype(np.float32))
    if np.issubdtype(x.dtype, np.integer):
        return torch.from_numpy(x.astype(np.int64))
    raise CorruptDatasetError(path, f"{key} has dtype {x.dtype}: expected numbers")


def load_npz(path: str | os.PathLike, num_classes: int | None = None) -> Dataset:
    """A dataset from an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Inputs: uint8 arrays are scaled to [0, 1] float32 (``(N, H, W)`` gains a channel
    axis, ``(N, H, W, C)`` with C in {1, 3} becomes ``(N, C, H, W)``); float arrays become
    float32 unchanged; other integers become int64 (token ids). Labels: integers
    (``(N,)`` or ``(N, 1)``). ``num_classes`` defaults to the largest label + 1.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"npz dataset {path} does not exist (pass root= its path)")
    a = read_npz(path, KEYS)
    xs, ys = {}, {}
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise CorruptDatasetError(path, f"y_{split} is {y.dtype} {y.shape}: need (N,) ints")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise CorruptDatasetError(
                path, f"x_{split} {x.shape} does not match y_{split} {y.shape}"
            )
        xs[split], ys[split] = _inputs(path, x, f"x_{split}"), torch.from_numpy(y.astype(np.int64))
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise CorruptDatasetError(
            path, f"x_train {a['x_train'].shape} and x_test {a['x_test'].shape} differ in shape"
        )
    labels = torch.cat([ys["train"], ys["test"]])
    if labels.numel() and int(labels.min()) < 0:
        raise CorruptDatasetError(path, "negative labels")
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    if labels.numel() and int(labels.max()) >= k:
        raise CorruptDatasetError(path, f"labels up to {int(labels.max())}, num_classes={k}")
    return Dataset(path.stem, xs["train"], ys["train"], xs["test"], ys["test"], k, source=str(path))


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits as float32 ``(N, 1, 8, 8)`` in [0, 1] (pixel / 16),
    split once into train and test by a fixed seeded permutation (``test_fraction``)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_test = round(test_fraction * len(y))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, source="sklearn.datasets.load_digits")
