"""Dense float64 references of every operator, for tiny cases: the test oracles.

They build D x D matrices and explicit per-example gradients/Hessians; use them only when D
is a few thousand at most. Hessians come from ``torch.autograd.functional.hessian``: in
torch 2.13 ``torch.func.hessian`` (and ``jacrev`` of ``jacrev``) return a wrong, asymmetric
matrix through train-mode BatchNorm (off by 0.07 on a 123-parameter case, against finite
differences), and so does forward-mode AD there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._core.data import Batch, Data, as_chunks, num_examples
from .._core.functional import LossFn, functional_loss
from .._core.params import flatten, trainable, unflatten
from .._core.state import BNMode, measuring


def _flat_loss(model: nn.Module, loss_fn: LossFn):
    params = trainable(model)
    f = functional_loss(model, loss_fn)
    return (lambda flat, x, y: f(unflatten(flat, params), x, y)), flatten(params.values())


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
) -> Tensor:
    """The D x D Hessian of sum_c (n_c/N) loss_fn(model(x_c), y_c) by ``torch.func.hessian``."""
    chunks = as_chunks(data, chunk_size)
    n = num_examples(chunks)
    with measuring(model, bn_mode):
        f, theta = _flat_loss(model, loss_fn)
        return sum(
            torch.autograd.functional.hessian(lambda t, x=x, y=y: f(t, x, y), theta)
            * (x.shape[0] / n)
            for x, y in chunks
        )


def dense_gradients(
    model: nn.Module, loss_fn: LossFn, batches: list[Batch], *, bn_mode: BNMode = "train"
) -> Tensor:
    """(L, D): the gradient of the mean loss on each batch, by ``torch.func.grad``."""
    with measuring(model, bn_mode):
        f, theta = _flat_loss(model, loss_fn)
        return torch.stack([torch.func.grad(f)(theta, x, y) for x, y in batches])


def dense_covariance(gradients: Tensor) -> Tensor:
    """K = (1/L) sum_l (g_l - g)(g_l - g)^T as a dense D x D matrix."""
    c = gradients - gradients.mean(dim=0, keepdim=True)
    return c.T @ c / gradients.shape[0]


def per_example_hessians(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """(N, D, D): the Hessian of each example's loss (eval mode), one example at a time."""
    with measuring(model, "eval"):
        f, theta = _flat_loss(model, loss_fn)
        return torch.stack(
            [
                torch.autograd.functional.hessian(lambda t, a=a, b=b: f(t, a[None], b[None]), theta)
                for a, b in zip(x, y)
            ]
        )
