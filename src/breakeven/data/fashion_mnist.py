"""FashionMNIST (Xiao et al., 2017) from its IDX files, gzipped or not.

Looked up as ``fashion-mnist/`` in :func:`~breakeven.data._base.data_dirs` (the last
of which holds Debian's ``dataset-fashion-mnist``). ``download=True`` fetches the four
official files into the user data directory and checks their MD5 sums.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import urllib.request
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..records import atomic_write
from ._base import CorruptDatasetError, Dataset, DatasetNotFoundError, find, user_data_dir

FOLDER = "fashion-mnist"
#: The S3 website endpoint serves plain HTTP only; the MD5 sums below guard the files.
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: MD5 of the official gzipped files (the same as torchvision's).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
HOW_TO_GET = (
    "Get it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or "
    "load_dataset('fashion_mnist', download=True) when online, or put the four IDX files "
    "(train-images-idx3-ubyte.gz, ...) in $BREAKEVEN_DATA/fashion-mnist."
)
_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3 dimensions (uint8 data)


def read_idx(path: str | os.PathLike, expect_dims: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or raw) into a uint8 array.

    Magic numbers: 2049 for labels ``(N,)``, 2051 for images ``(N, rows, cols)``. A wrong
    magic number, a truncated or oversized body raises :class:`CorruptDatasetError`.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CorruptDatasetError(path, f"cannot read ({e})") from e
    if len(raw) < 8:
        raise CorruptDatasetError(path, f"only {len(raw)} bytes: no IDX header")
    (magic,) = struct.unpack(">i", raw[:4])
    if _MAGIC.get(magic) != expect_dims:
        want = next(m for m, d in _MAGIC.items() if d == expect_dims)
        raise CorruptDatasetError(path, f"magic number {magic}, expected {want} (IDX uint8)")
    header = 4 + 4 * expect_dims
    if len(raw) < header:
        raise CorruptDatasetError(path, "truncated IDX header")
    shape = struct.unpack(f">{expect_dims}i", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise CorruptDatasetError(
            path, f"header says shape {shape} ({size} bytes), body has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise DatasetNotFoundError(f"{folder} holds FashionMNIST files but not {stem}[.gz]")


def download_fashion_mnist(dest: str | os.PathLike | None = None) -> Path:
    """Download the four official gzipped IDX files into ``dest`` (default
    ``user_data_dir()/fashion-mnist``), verifying each MD5; returns the folder."""
    folder = Path(dest) if dest is not None else user_data_dir() / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MD5.items():
        target = folder / name
        if target.exists() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        atomic_write(target, functools.partial(_download, URL + name, md5))
    return folder


def _download(url: str, md5: str, out: BinaryIO) -> None:
    """Copy ``url`` into ``out``; raise unless its MD5 is ``md5`` (the caller,
    :func:`~breakeven.records.atomic_write`, then removes the partial file)."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as e:  # URLError, timeouts, resets
        raise DatasetNotFoundError(f"could not download {url} ({e}). {HOW_TO_GET}") from e
    got = digest.hexdigest()
    if got != md5:
        raise CorruptDatasetError(url, f"downloaded MD5 {got}, expected {md5}")


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """FashionMNIST: 60,000 train and 10,000 test images as float32 ``(N, 1, 28, 28)``
    scaled to [0, 1] (pixel / 255, as in the paper), labels int64 in [0, 10)."""
    try:
        markers = ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
        folder = find("FashionMNIST", [FOLDER], root, HOW_TO_GET, markers)
    except DatasetNotFoundError:
        if not download:
            raise
        folder = download_fashion_mnist()
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_file(folder, f"{prefix}-images-idx3-ubyte"), 3)
        labels = read_idx(_file(folder, f"{prefix}-labels-idx1-ubyte"), 1)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise CorruptDatasetError(
                folder,
                f"{split}: images {images.shape} and labels {labels.shape} do not match "
                "(expected (N, 28, 28) and (N,))",
            )
        if labels.size and labels.max() > 9:
            raise CorruptDatasetError(folder, f"{split} labels go up to {labels.max()} > 9")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        arrays[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    return Dataset(
        "fashion_mnist",
        *arrays["train"],
        *arrays["test"],
        num_classes=10,
        source=str(folder),
        meta={"classes": CLASSES, "normalisation": "pixel / 255"},
    )
