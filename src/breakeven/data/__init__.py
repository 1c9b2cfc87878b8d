"""Datasets as tensors in memory, read from their standard files.

``load_dataset(name, n_train=None, seed=0, probe_fraction=0.05, root=None, **options)``
returns a :class:`Dataset`. Files are looked up in ``root``, ``$BREAKEVEN_DATA``, the user
data directory (``~/.local/share/breakeven``) and ``/usr/share/datasets``; a missing dataset
raises :class:`DatasetNotFoundError` naming every place looked, a malformed file
:class:`CorruptDatasetError`. Nothing falls back to other data.

| name | files | inputs |
|---|---|---|
| ``fashion_mnist`` | ``fashion-mnist/*-idx?-ubyte[.gz]`` | float32 (N, 1, 28, 28) in [0, 1] |
| ``cifar10`` | ``cifar-10-batches-py/`` | float32 (N, 3, 32, 32), per-channel standardised |
| ``imdb`` | ``aclImdb/`` or ``imdb.npz`` | int64 (N, 80) ids < 20,000 |
| ``mnli`` | ``multinli_1.0/*.jsonl`` + ``vocab.txt`` | int64 (N, 3, 40) ids/types/mask |
| ``imagenet`` | ``imagenet/{train,val}/<class>/*.JPEG`` | float32 (N, 3, 224, 224) |
| ``npz`` | the ``.npz`` passed as ``root`` | as stored (uint8 scaled to [0, 1]) |
| ``digits`` | scikit-learn | float32 (N, 1, 8, 8) in [0, 1] |
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._base import (
    SYSTEM_DATA_DIRS,
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    data_dirs,
    user_data_dir,
)
from .arrays import load_digits, load_npz
from .cifar import augment_crop_flip, load_cifar10
from .fashion_mnist import download_fashion_mnist, load_fashion_mnist, read_idx
from .imagenet import load_imagenet
from .imdb import load_imdb
from .mnli import WordPieceTokenizer, load_mnli

__all__ = [
    "SYSTEM_DATA_DIRS",
    "CorruptDatasetError",
    "Dataset",
    "DatasetNotFoundError",
    "WordPieceTokenizer",
    "augment_crop_flip",
    "data_dirs",
    "download_fashion_mnist",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "user_data_dir",
]


def _npz(root: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    if root is None:
        raise ValueError("load_dataset('npz') needs root= the path of the .npz file")
    return load_npz(root, **kw)


def _digits(root: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    return load_digits(**kw)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imdb": load_imdb,
    "mnli": load_mnli,
    "imagenet": load_imagenet,
    "npz": _npz,
    "digits": _digits,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    *,
    n_train: int | None = None,
    seed: int = 0,
    probe_fraction: float = 0.05,
    probe_seed: int = 0,
    root: str | os.PathLike | None = None,
    **options: Any,
) -> Dataset:
    """Load dataset ``name``; keep a seeded random ``n_train`` training examples (all
    when None); fix the probe subset (``probe_fraction`` of the kept training set, seeded
    by ``probe_seed``). ``options`` go to the loader (e.g. ``download=True`` for
    FashionMNIST, ``vocab=`` for MNLI, ``n_test=`` for ImageNet)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list_datasets()}")
    if name == "imagenet":  # choose files before decoding: the full set does not fit
        ds = load_imagenet(root, n_train=n_train, seed=seed, **options)
    else:
        ds = _LOADERS[name](root=root, **options)
        if n_train is not None:
            ds = ds.subset(n_train, seed)
    return replace(ds, probe_fraction=probe_fraction, probe_seed=probe_seed)
