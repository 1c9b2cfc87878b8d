"""The data of a measurement: ``(x, y)`` batches, materialised once as a fixed list of chunks,
so that every matrix product of one estimate sees exactly the same examples (no reshuffle,
no augmentation)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from .checks import check_int

Batch = tuple[Tensor, Tensor]
Data = Batch | Iterable[Batch]


def is_pair(data: object) -> bool:
    """Whether ``data`` is an ``(x, y)`` tuple whose labels ``y`` are a tensor (so that
    ``len(data[1])`` counts its examples), rather than an iterable of batches."""
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor)


def as_chunks(data: Data, chunk_size: int | None = None) -> list[Batch]:
    """Materialise ``data`` once as a list of ``(x, y)`` chunks.

    ``data`` is a tuple ``(x, y)`` of tensors (split into chunks of ``chunk_size`` examples,
    one chunk when ``None``) or an iterable of ``(x, y)`` batches such as a DataLoader (its
    batches are read once and kept; a batch larger than ``chunk_size`` is split).
    """
    check_int(chunk_size, "chunk_size", optional=True)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        batches: Iterable = [data]
    elif isinstance(data, Tensor):
        raise TypeError("data must be a tuple (x, y) of tensors or an iterable of (x, y) batches")
    else:
        try:
            batches = list(data)
        except TypeError:
            raise TypeError(
                "data must be a tuple (x, y) of tensors or an iterable of (x, y) batches, "
                f"got {type(data).__name__}"
            ) from None
    chunks: list[Batch] = []
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"batch {i} is not an (x, y) pair")
        x, y = batch
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"batch {i}: x and y must be tensors")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"batch {i}: x has {x.shape[0]} examples but y has {y.shape[0]} targets"
            )
        if x.shape[0] == 0:
            continue
        step = chunk_size or x.shape[0]
        chunks.extend(zip(x.split(step), y.split(step)))
    if not chunks:
        raise ValueError("data is empty: no examples to measure on")
    return chunks


def num_examples(chunks: Sequence[Batch]) -> int:
    """The number of examples in ``chunks``."""
    return sum(x.shape[0] for x, _ in chunks)
