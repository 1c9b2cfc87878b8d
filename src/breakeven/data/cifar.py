"""CIFAR-10 from the official python pickles (``cifar-10-batches-py``), and the standard
augmentation (random 32x32 crop of the image padded by 4, random horizontal flip) done on
batches of tensors with an explicit generator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._base import CorruptDatasetError, Dataset, find, safe_unpickle

FOLDER = "cifar-10-batches-py"
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
HOW_TO_GET = (
    "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
    "(it holds cifar-10-batches-py/data_batch_1..5 and test_batch)."
)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise CorruptDatasetError(path.parent, f"missing {path.name}")
    with open(path, "rb") as f:
        d = safe_unpickle(path, f, encoding="bytes")
    if not isinstance(d, dict):
        raise CorruptDatasetError(path, f"expected a dict, got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise CorruptDatasetError(path, f"expected keys 'data' and 'labels', got {sorted(d)}")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDatasetError(
            path, f"'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise CorruptDatasetError(
            path, f"'labels' has shape {labels.shape}, expected ({data.shape[0]},) integers"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDatasetError(path, "labels outside [0, 10)")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10: 50,000 train and 10,000 test images, float32 ``(N, 3, 32, 32)``,
    normalised per channel with the mean and standard deviation of the training pixels
    (scaled to [0, 1] first); ``meta['mean']``, ``meta['std']`` hold them."""
    folder = find("CIFAR-10", [FOLDER], root, HOW_TO_GET)
    train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_batch(folder / "test_batch")
    x_train = torch.from_numpy(np.concatenate([x for x, _ in train])).float().div_(255)
    y_train = torch.from_numpy(np.concatenate([y for _, y in train]))
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3))

    def norm(x: Tensor) -> Tensor:
        return (x - mean[:, None, None]) / std[:, None, None]

    return Dataset(
        "cifar10",
        norm(x_train),
        y_train,
        norm(torch.from_numpy(x_test).float().div_(255)),
        torch.from_numpy(y_test),
        num_classes=10,
        source=str(folder),
        meta={"classes": CLASSES, "mean": mean.tolist(), "std": std.tolist()},
    )


def augment_crop_flip(
    x: Tensor, generator: torch.Generator, padding: int = 4, fill: Tensor | None = None
) -> Tensor:
    """Random crop of each image after padding by ``padding`` pixels, then a horizontal
    flip with probability 1/2: the standard CIFAR augmentation, for a batch ``(N, C, H, W)``.

    ``fill`` (shape ``(C,)``) is the padding value per channel; pass ``-mean / std`` to
    pad with black pixels in normalised data (default 0). Draws from ``generator`` only.
    """
    n, c, h, w = x.shape
    padded = x.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    if fill is not None:
        padded += fill.to(x)[None, :, None, None]
    padded[:, :, padding : padding + h, padding : padding + w] = x
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = left[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows, cols]
