"""The one copy of each helper the tests share: a toy dataset, bitwise state equality, run and
sweep directories written through the run store, tiny dataset files in their standard
formats, and tiny run configs (TOML). Fixtures built on them are in conftest.py; the curvature
cases in cases.py."""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from breakeven.data import Dataset
from breakeven.tracking.store import ENDED, RunStore

# ---------------------------------------------------------------- datasets in memory


def toy(
    n: int = 96,
    shape: tuple[int, ...] = (1, 6, 6),
    classes: int = 3,
    *,
    n_test: int = 32,
    seed: int = 0,
) -> Dataset:
    """``n`` training and ``n_test`` test examples of ``shape`` (standard normal), labels a
    fixed linear function of the inputs (learnable); the same for the same arguments."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, *shape, generator=g)
    w = torch.randn(math.prod(shape), classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], classes)


# ---------------------------------------------------------------- bitwise equality


def param_norm_tracker(**kw: Any):
    """A Tracker of ``param_norm`` every step on 40 seeded examples of 3 features, lr 0.1,
    batch 8; ``kw`` overrides or adds its arguments (the argument checks' subject)."""
    import breakeven as be

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
    args = {"probe": (x, y), "train_data": (x, y), "lr": 0.1, "batch_size": 8, **kw}
    return be.Tracker([("param_norm", be.every(1))], **args)


def _tensors(a: Any) -> dict[str, torch.Tensor]:
    if isinstance(a, nn.Module):
        return dict(a.state_dict())
    if isinstance(a, Mapping):
        return dict(a)
    return {str(i): t for i, t in enumerate(a)}


def state_difference(a: Any, b: Any) -> str | None:
    """None when ``a`` and ``b`` hold bitwise-equal tensors under the same names, else what
    differs first. Each is a module (its ``state_dict``: parameters and buffers), a state
    dict, or a sequence of tensors (compared by position; the lengths must agree)."""
    sa, sb = _tensors(a), _tensors(b)
    if sa.keys() != sb.keys():
        return f"entries in only one of them: {sorted(sa.keys() ^ sb.keys())}"
    for k in sa:
        if not torch.equal(sa[k], sb[k]):
            return f"{k!r} differs"
    return None


def same_state(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are bitwise equal (see :func:`state_difference`)."""
    return state_difference(a, b) is None


def assert_same_state(a: Any, b: Any, what: str = "") -> None:
    """Assert ``a`` and ``b`` are bitwise equal (see :func:`state_difference`), naming the
    first entry that differs."""
    diff = state_difference(a, b)
    assert diff is None, f"{what}: {diff}" if what else diff


# ---------------------------------------------------------------- run and sweep directories


def write_run(
    path: str | os.PathLike,
    records: Iterable[Mapping[str, Any]] = (),
    *,
    config: Mapping[str, Any] | None = None,
    status: str = "finished",
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """A run directory written by :class:`RunStore`, as ``breakeven run`` writes one:
    ``config.json``, the ``records`` in their order, then ``status``: ``finished`` or
    ``diverged`` end the run (``summary.json`` of ``summary`` and the status, an empty
    ``model.pt``), ``failed: ...`` fails it, ``running`` leaves it open. Returns ``path``.

    The store fsyncs every record (milliseconds each); a synthetic run needs no durability,
    so this skips the fsyncs (sweeps of hundreds of records stay fast)."""
    store = RunStore(path)
    with mock.patch("os.fsync"):
        store.open(config if config is not None else {})
        for r in records:
            store.append(r)
        if status in ENDED:
            store.finish(status, {**(summary or {}), "status": status}, {})
        elif status.startswith("failed: "):
            store.fail(status.removeprefix("failed: "))
        else:
            store.set_status(status)
            store.close()
    return Path(path)


def write_sweep(
    root: str | os.PathLike,
    lrs: Sequence[float],
    seeds: Sequence[int],
    write_one: Callable[[Path, float, int], Any],
    *,
    name: str = "lr={lr}_seed={seed}",
) -> dict[str, Any]:
    """A sweep directory over the learning rates ``lrs`` and ``seeds``, as ``breakeven
    sweep`` writes one: ``write_one(path, lr, seed)`` writes each run (with
    :func:`write_run`) at ``root/runs/<name>``, and ``sweep.json`` (preset ``p``) lists
    them. Returns {run name: what ``write_one`` returned}."""
    root = Path(root)
    runs, out = [], {}
    for lr in lrs:
        for seed in seeds:
            run = name.format(lr=lr, seed=seed)
            out[run] = write_one(root / "runs" / run, lr, seed)
            runs.append({"name": run, "params": {"train.lr": lr}, "seed": seed})
    grid = {"train.lr": list(lrs)}
    spec = {"kind": "sweep", "preset": "p", "grid": grid, "seeds": list(seeds), "runs": runs}
    (root / "sweep.json").write_text(json.dumps(spec))
    return out


# ---------------------------------------------------------------- dataset files


def write_npz(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, n_train: int) -> Path:
    """An ``.npz`` in the ``npz`` loader's format: the first ``n_train`` examples of ``x``
    and ``y`` for training, the rest for testing. Returns ``path``."""
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return Path(path)


def write_tiny_npz(path: str | os.PathLike, n: int = 80, n_train: int = 60) -> Path:
    """A tiny dataset in the ``.npz`` loader's format: ``n`` uint8 8x8 images with labels a
    fixed linear function of the pixels (3 classes, learnable), the first ``n_train`` for
    training. Returns ``path``."""
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    y = (x.reshape(n, -1) / 255 @ g.standard_normal((64, 3))).argmax(1)
    return write_npz(path, x, y, n_train)


def write_idx(path: Path, a: np.ndarray, magic: int | None = None, gz: bool = True) -> None:
    """``a`` as an IDX file (big-endian header: ``magic``, default 2049 for labels and 2051
    for images, then the dimensions), gzipped when ``gz``."""
    magic = magic if magic is not None else {1: 2049, 3: 2051}[a.ndim]
    raw = struct.pack(">i", magic) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(raw)


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 10, gz: bool = True) -> Path:
    """FashionMNIST's four IDX files in ``folder`` (random 28x28 images, labels 0..9 in
    turn). Returns ``folder``."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


def write_cifar(folder: Path, n: int = 8, protocol: int = 2) -> Path:
    """CIFAR-10's python batches in ``folder`` (five training batches and ``test_batch``
    of ``n`` random images each, pickled with ``protocol``). Returns ``folder``."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % 10 for j in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return folder


# ---------------------------------------------------------------- run configs (TOML)

# The tiny run of ``run_config``: an 8-unit MLP on a tiny .npz, 2 epochs of batches of 10,
# evaluated every 4 steps, the covariance and Hessian measured, a checkpoint every 5 steps.
RUN_CONFIG: dict[str, dict[str, Any]] = {
    "run": {"checkpoint_every": 5},
    "train": {
        "model": "mlp",
        "model_kwargs": {"hidden": [8]},
        "dataset": "npz",
        "dataset_kwargs": None,  # {"root": npz}
        "lr": 0.1,
        "batch_size": 10,
        "epochs": 2,
        "eval_every": 4,
        "num_threads": 1,
    },
    "track": {
        "covariance": {"every": 3, "num_batches": 3},
        "hessian": {"every": "epoch", "k": 1},
    },
}


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # inf and nan are TOML's own spelling too
    if isinstance(v, str | os.PathLike):
        return json.dumps(str(v))  # JSON's escapes are TOML's
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def run_config(
    path: str | os.PathLike,
    npz: str | os.PathLike | None = None,
    **sections: Any,
) -> Path:
    """Write the tiny run config :data:`RUN_CONFIG` to ``path`` as TOML and return ``path``
    (the run's name is the file's stem unless ``name=`` is given). ``npz`` is the training
    data (``train.dataset_kwargs.root``; see :func:`write_tiny_npz`).

    Each keyword is a top-level key: a table updates the default table of that name key by
    key (a new table is added; a value that is a table replaces the default value whole),
    a key set to None is left out, a table set to None is left out, a plain value
    (``name="x"``) is written before the tables. Nothing is validated: wrong keys and
    values are written as given, for the tests of the runner's errors."""
    tables = {k: dict(v) for k, v in RUN_CONFIG.items()}
    if npz is not None:
        tables["train"]["dataset_kwargs"] = {"root": str(npz)}
    plain = {}
    for key, value in sections.items():
        if isinstance(value, Mapping):
            tables[key] = {**tables.get(key, {}), **value}
        elif value is None:
            tables.pop(key, None)
        else:
            plain[key] = value
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items()]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    Path(path).write_text("\n".join(lines).lstrip("\n") + "\n")
    return Path(path)
