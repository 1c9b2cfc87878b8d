"""IMDB sentiment (Maas et al., 2011) as sequences of token ids, from either

- the ``aclImdb`` folders (``{train,test}/{pos,neg}/*.txt``), tokenised here: lower case,
  ``<br />`` removed, tokens are runs of ``[a-z0-9']``; the vocabulary is the training
  set's most frequent words (ties broken alphabetically); or
- Keras' ``imdb.npz`` (word ranks, 1 = most frequent).

Both use Keras' id convention: 0 padding, 1 start of review, 2 out-of-vocabulary, and the
word of frequency rank r (1-based) gets id r + 3 (id 3 is unused, as in Keras), kept when
below ``vocab_size``. Each
review is ``[1] + ids``, cut to its last ``maxlen`` tokens and left-padded with 0 (Keras
``pad_sequences`` defaults). Labels: 0 negative, 1 positive.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._base import CorruptDatasetError, Dataset, find, safe_unpickle

HOW_TO_GET = (
    "Download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz and extract "
    "it (aclImdb/), or use Keras' https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
    "imdb.npz."
)
PAD, START, OOV, INDEX_FROM = 0, 1, 2, 3
_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a review (``<br />`` tags removed)."""
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def pad_sequences(seqs: list[list[int]], maxlen: int) -> Tensor:
    """int64 ``(len(seqs), maxlen)``: each sequence's last ``maxlen`` ids, left-padded."""
    out = torch.zeros(len(seqs), maxlen, dtype=torch.int64)
    for i, s in enumerate(seqs):
        s = s[-maxlen:]
        if s:
            out[i, maxlen - len(s) :] = torch.tensor(s, dtype=torch.int64)
    return out


def _encode(ranks: list[int], vocab_size: int) -> list[int]:
    """Keras convention: start token, rank + 2 for kept words, OOV for the others."""
    return [START] + [r + INDEX_FROM if r + INDEX_FROM < vocab_size else OOV for r in ranks]


def _read_acl_split(folder: Path) -> tuple[list[list[str]], list[int]]:
    texts, labels = [], []
    for label, sub in ((0, "neg"), (1, "pos")):
        d = folder / sub
        if not d.is_dir():
            raise CorruptDatasetError(folder, f"missing folder {sub}/")
        for f in sorted(d.glob("*.txt")):
            try:
                texts.append(tokenize(f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as e:
                raise CorruptDatasetError(f, f"cannot read as UTF-8 text ({e})") from e
            labels.append(label)
    if not texts:
        raise CorruptDatasetError(folder, "no reviews in neg/ or pos/")
    return texts, labels


def _load_acl(folder: Path, vocab_size: int, maxlen: int) -> tuple[Tensor, ...]:
    (tr_texts, y_tr), (te_texts, y_te) = (_read_acl_split(folder / s) for s in ("train", "test"))
    counts = Counter(w for t in tr_texts for w in t)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    rank = {w: i + 1 for i, w in enumerate(ranked[: vocab_size - INDEX_FROM])}
    big = vocab_size  # any rank that maps outside the vocabulary
    x = [
        pad_sequences([_encode([rank.get(w, big) for w in t], vocab_size) for t in texts], maxlen)
        for texts in (tr_texts, te_texts)
    ]
    return x[0], torch.tensor(y_tr), x[1], torch.tensor(y_te)


def _read_npy_member(path: Path, zf: zipfile.ZipFile, key: str) -> np.ndarray:
    """One array of an ``.npz``; object arrays go through the numpy-only unpickler."""
    if key + ".npy" not in zf.namelist():
        raise CorruptDatasetError(path, f"no array {key!r} (has {sorted(zf.namelist())})")
    with zf.open(key + ".npy") as fp:
        try:
            version = np.lib.format.read_magic(fp)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }[version]
            _shape, _, dtype = reader(fp)
        except (ValueError, KeyError, OSError, EOFError) as e:
            raise CorruptDatasetError(path, f"{key}: not a .npy array ({e})") from e
        if dtype.hasobject:
            arr = safe_unpickle(path, fp, encoding="latin1")
            if not isinstance(arr, np.ndarray):
                raise CorruptDatasetError(path, f"{key}: not an array")
            return arr
    with zf.open(key + ".npy") as fp:
        try:
            return np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptDatasetError(path, f"{key}: truncated or corrupt ({e})") from e


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read ``keys`` from an ``.npz`` without executing arbitrary pickles; errors become
    :class:`CorruptDatasetError`."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {k: _read_npy_member(path, zf, k) for k in keys}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CorruptDatasetError(path, f"not a readable .npz archive ({e})") from e


def _load_keras_npz(path: Path, vocab_size: int, maxlen: int) -> tuple[Tensor, ...]:
    a = read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    out = []
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 1 or y.shape != x.shape:
            raise CorruptDatasetError(
                path, f"x_{split} {x.shape} / y_{split} {y.shape}: expected (N,) and (N,)"
            )
        try:
            seqs = [_encode([int(r) for r in s], vocab_size) for s in x]
        except (TypeError, ValueError) as e:
            raise CorruptDatasetError(path, f"x_{split} must hold lists of word ranks") from e
        out += [pad_sequences(seqs, maxlen), torch.from_numpy(y.astype(np.int64))]
    return tuple(out)


def load_imdb(
    root: str | os.PathLike | None = None, vocab_size: int = 20_000, maxlen: int = 80
) -> Dataset:
    """IMDB: 25,000 train and 25,000 test reviews as int64 ``(N, maxlen)`` token ids in
    ``[0, vocab_size)``; ``aclImdb/`` is preferred to ``imdb.npz`` when both exist."""
    if vocab_size < 4 or maxlen < 1:
        raise ValueError(f"need vocab_size >= 4 and maxlen >= 1, got {vocab_size}, {maxlen}")
    path = find("IMDB", ["aclImdb", "imdb.npz"], root, HOW_TO_GET)
    loader = _load_acl if path.is_dir() else _load_keras_npz
    x_tr, y_tr, x_te, y_te = loader(path, vocab_size, maxlen)
    return Dataset(
        "imdb",
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_classes=2,
        source=str(path),
        meta={"vocab_size": vocab_size, "maxlen": maxlen, "classes": ("negative", "positive")},
    )
