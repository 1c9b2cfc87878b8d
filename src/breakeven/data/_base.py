"""The in-memory dataset, its subsets, the places datasets are looked up, and errors."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CorruptDatasetError, DatasetNotFoundError

#: System-wide folders searched after ``$BREAKEVEN_DATA`` and the user's data directory.
#: Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``.
SYSTEM_DATA_DIRS: list[Path] = [Path("/usr/share/datasets")]


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/breakeven``, default ``~/.local/share/breakeven``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "breakeven"


def data_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for datasets, in order: ``root`` (when given), ``$BREAKEVEN_DATA``,
    :func:`user_data_dir`, then :data:`SYSTEM_DATA_DIRS`."""
    dirs = [Path(root)] if root is not None else []
    if os.environ.get("BREAKEVEN_DATA"):
        dirs.append(Path(os.environ["BREAKEVEN_DATA"]))
    return [*dirs, user_data_dir(), *SYSTEM_DATA_DIRS]


def find(
    dataset: str,
    names: Sequence[str],
    root: str | os.PathLike | None,
    how_to_get: str,
    markers: Sequence[str] = (),
) -> Path:
    """First existing ``<dir>/<name>`` over :func:`data_dirs` and ``names`` (a folder
    counts only if it holds one of ``markers``, when given), else raise
    :class:`DatasetNotFoundError` listing every path tried and ``how_to_get``."""
    tried = []
    for d in data_dirs(root):
        for name in names:
            p = d / name
            if p.exists() and (not markers or any((p / m).exists() for m in markers)):
                return p
            tried.append(str(p))
    looked = "\n  ".join(tried)
    raise DatasetNotFoundError(
        f"{dataset} not found. Looked in:\n  {looked}\n{how_to_get}\n"
        "Set $BREAKEVEN_DATA to the folder that holds it, or pass root=."
    )


_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: no other class is importable."""

    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("numpy.core.", "numpy._core.")  # numpy < 2 pickles
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: Path, fp: Any, encoding: str = "ASCII") -> Any:
    """Load a pickle holding only containers and numpy arrays; any failure becomes a
    :class:`CorruptDatasetError` naming ``path``."""
    try:
        return _NumpyOnlyUnpickler(fp, encoding=encoding).load()
    except Exception as e:
        raise CorruptDatasetError(path, f"not a readable pickle ({type(e).__name__}: {e})") from e


def _as_labels(y: Tensor, name: str) -> Tensor:
    if y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"{name} must be a 1-d integer tensor, got {y.dtype} {tuple(y.shape)}")
    return y.long()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held as tensors in memory.

    ``x_*``: float32 inputs (already normalised; see ``meta``) or int64 token ids;
    ``y_*``: int64 class labels in ``[0, num_classes)``. ``x_test``/``y_test`` is the
    held-out set used for validation. ``probe()`` returns a fixed, seeded subset of the
    training set (``probe_fraction`` of it, at least one example), never augmented: the data
    on which Hessian quantities are defined. ``meta`` holds loader facts (normalisation
    mean/std, vocabulary size, class names, ...).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    source: str = ""
    probe_fraction: float = 0.05
    probe_seed: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "y_train", _as_labels(self.y_train, "y_train"))
        object.__setattr__(self, "y_test", _as_labels(self.y_test, "y_test"))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} examples, y_{split} {y.shape[0]}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"y_{split} has labels outside [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train inputs {tuple(self.x_train.shape[1:])} and test inputs "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )
        if self.x_train.shape[0] == 0:
            raise ValueError("the training set is empty")
        if not 0.0 < self.probe_fraction <= 1.0:
            raise ValueError(f"probe_fraction must be in (0, 1], got {self.probe_fraction}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def subset(self, n_train: int, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n_train`` training examples (without replacement,
        kept in their original order); the test set is unchanged."""
        if not 1 <= n_train <= self.n_train:
            raise ValueError(f"n_train must be in [1, {self.n_train}], got {n_train}")
        if n_train == self.n_train:
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=g)[:n_train].sort().values
        return replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])

    @cached_property
    def probe_indices(self) -> Tensor:
        """Sorted indices into the training set of the probe subset (seeded by
        ``probe_seed``; ``round(probe_fraction * n_train)`` of them, at least 1)."""
        n = max(1, round(self.probe_fraction * self.n_train))
        g = torch.Generator().manual_seed(self.probe_seed)
        return torch.randperm(self.n_train, generator=g)[:n].sort().values

    def probe(self) -> tuple[Tensor, Tensor]:
        """The fixed probe subset ``(x, y)`` of the training set."""
        idx = self.probe_indices
        return self.x_train[idx], self.y_train[idx]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={self.num_classes}, "
            f"source={self.source!r})"
        )
