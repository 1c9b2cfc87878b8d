"""Shared helpers for the model zoo: input-shape validation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def check_input(
    model_name: str,
    x: Tensor,
    trailing: Sequence[int | None],
    *,
    integer: bool | None = None,
) -> None:
    """Raise ``ValueError`` unless ``x`` has shape ``(N, *trailing)``.

    ``None`` in ``trailing`` matches any size. ``integer=True`` requires an integer dtype
    (token ids), ``integer=False`` a floating dtype.
    """
    expected = "(N, " + ", ".join("*" if t is None else str(t) for t in trailing) + ")"
    ok = x.dim() == len(trailing) + 1 and all(
        t is None or s == t for s, t in zip(x.shape[1:], trailing, strict=True)
    )
    if not ok:
        raise ValueError(f"{model_name} expects input of shape {expected}, got {tuple(x.shape)}")
    if integer is True and (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{model_name} expects integer token ids, got dtype {x.dtype}")
    if integer is False and not x.is_floating_point():
        raise ValueError(f"{model_name} expects a floating-point input, got dtype {x.dtype}")
