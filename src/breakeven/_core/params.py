"""The trainable parameters (the space of theta) as a name -> tensor dict, and vectors in
that space as one flat tensor of length D and back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that require gradients, by name, detached (the space of theta)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameters that require gradients")
    return params


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    # a sparse gradient (an nn.Embedding(sparse=True)'s .grad) as its dense values
    return torch.cat([(t.to_dense() if t.is_sparse else t).reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = vec[offset : offset + n].view_as(t)
        offset += n
    return out


def as_flat(direction: Tensor | Sequence[Tensor], params: dict[str, Tensor]) -> Tensor:
    """A direction given flat (length D) or per parameter, as one flat tensor."""
    dim = sum(p.numel() for p in params.values())
    if isinstance(direction, Tensor):
        flat = direction.reshape(-1)
    else:
        parts = list(direction)
        if len(parts) != len(params):
            raise ValueError(
                f"direction has {len(parts)} tensors but the model has {len(params)} "
                "trainable parameter tensors"
            )
        for part, (name, p) in zip(parts, params.items()):
            if part.shape != p.shape:
                raise ValueError(
                    f"direction for {name} has shape {tuple(part.shape)}, expected {tuple(p.shape)}"
                )
        flat = flatten(parts)
    if flat.numel() != dim:
        raise ValueError(f"direction has {flat.numel()} entries, the model has {dim} parameters")
    ref = next(iter(params.values()))
    return flat.to(dtype=ref.dtype, device=ref.device)
