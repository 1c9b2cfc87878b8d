"""The gradient covariance K, known through L gradients and their L x L Gram matrix."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .base import (
    Batch,
    BNMode,
    LinearOperator,
    LossFn,
    as_chunks,
    check_finite,
    flatten,
    functional_loss,
    measuring,
    trainable,
)

#: Columns (parameters) processed at once when the Gram is accumulated in float64.
_GRAM_COLUMNS = 1 << 20


def batch_gradients(
    model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *, bn_mode: BNMode = "train"
) -> tuple[Tensor, int]:
    """The gradients g_l of the mean loss on each batch, as rows of an (L, D) matrix.

    Returns the matrix (in the parameters' dtype) and the batch size M (all batches must have
    the same size). ``bn_mode="train"`` (default) normalises each batch with its own
    statistics, as in the SGD step; the model's running statistics are not updated.
    """
    batches = list(batches)
    if len(batches) < 2:
        raise ValueError(
            f"the gradient covariance needs at least 2 batches, got {len(batches)}: "
            "pass L >= 2 mini-batches (the paper uses L = 25)"
        )
    chunks = as_chunks(batches)
    if len(chunks) != len(batches):
        raise ValueError("a batch is empty: every mini-batch needs at least one example")
    sizes = {x.shape[0] for x, _ in chunks}
    if len(sizes) != 1:
        raise ValueError(
            f"all batches must have the same size M, got sizes {sorted(sizes)}; "
            "drop the last incomplete batch (DataLoader(drop_last=True))"
        )
    params = trainable(model)
    rows = []
    with measuring(model, bn_mode):
        f = functional_loss(model, loss_fn)
        for x, y in chunks:
            leaves = [p.detach().requires_grad_(True) for p in params.values()]
            loss = f(dict(zip(params, leaves)), x, y)
            check_finite(loss.detach(), "the loss")
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
            rows.append(flatten(grads))
    return torch.stack(rows), sizes.pop()


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = 256,
    bn_mode: BNMode = "eval",
) -> Tensor:
    """The gradients of each example's loss, as rows of an (N, D) matrix.

    Uses ``torch.func.vmap(torch.func.grad(...))`` over chunks of ``chunk_size`` examples; for
    modules that vmap cannot handle it falls back to a loop over the examples, with a warning
    that says why. Each example is passed as a batch of one; with ``bn_mode="eval"`` (default)
    BatchNorm uses its running statistics.
    """
    chunks = as_chunks((x, y), chunk_size)
    params = trainable(model)
    with measuring(model, bn_mode):
        f = functional_loss(model, loss_fn)

        def one(p, xi, yi):
            return f(p, xi.unsqueeze(0), yi.unsqueeze(0))

        with torch.no_grad():
            check_finite(f(params, *chunks[0]), "the loss")
        try:
            per = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
            return torch.cat(
                [
                    torch.cat([g.reshape(xc.shape[0], -1) for g in per(params, xc, yc).values()], 1)
                    for xc, yc in chunks
                ]
            )
        except (RuntimeError, NotImplementedError, ValueError) as err:
            if isinstance(err, ValueError) and "scalar" in str(err):
                raise
            warnings.warn(
                f"torch.func.vmap cannot batch this model ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); computing per-example gradients in a loop, "
                "which is slower",
                RuntimeWarning,
                stacklevel=2,
            )
        out = []
        for xc, yc in chunks:
            for xi, yi in zip(xc, yc):
                leaves = [p.detach().requires_grad_(True) for p in params.values()]
                loss = one(dict(zip(params, leaves)), xi, yi)
                grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
                out.append(flatten(grads))
        return torch.stack(out)


def centred_gram(gradients: Tensor) -> Tensor:
    """G = C C^T / L in float64, C the rows of ``gradients`` minus their mean (an L x L matrix).

    The centring and the products are done in float64, a block of columns at a time, so the
    memory above the gradients is one block; in float32 the smallest non-zero eigenvalue is
    lost.
    """
    L = gradients.shape[0]
    gram = torch.zeros(L, L, dtype=torch.float64, device=gradients.device)
    for _, block in _centred_blocks(gradients):
        gram += block @ block.T
    return gram / L


def _centred_blocks(gradients: Tensor):
    """(columns, block) pairs: float64 blocks of columns of the row-centred gradient matrix."""
    for start in range(0, gradients.shape[1], _GRAM_COLUMNS):
        cols = slice(start, start + _GRAM_COLUMNS)
        block = gradients[:, cols].to(torch.float64)
        yield cols, block - block.mean(dim=0, keepdim=True)


class GradientCovarianceOperator(LinearOperator):
    """K = (1/L) sum_l (g_l - g)(g_l - g)^T, g the mean of the L gradients g_l (a D x D matrix).

    Never formed: ``K @ v = C^T (C v) / L`` with C the (L, D) matrix of centred gradients, and
    its non-zero eigenvalues are those of the L x L Gram ``C C^T / L`` (:meth:`gram`). Build
    it from a model and L mini-batches (``g_l`` = gradient of the mean loss on batch l), or
    from any gradient matrix with :meth:`from_gradients` (rows = gradients, e.g. per-example).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[Batch],
        *,
        bn_mode: BNMode = "train",
    ) -> None:
        gradients, batch_size = batch_gradients(model, loss_fn, batches, bn_mode=bn_mode)
        self._init(gradients, batch_size)
        self.bn_mode = bn_mode

    @classmethod
    def from_gradients(cls, gradients: Tensor, batch_size: int) -> GradientCovarianceOperator:
        """K from an (L, D) matrix whose rows are gradients of mean losses over ``batch_size``."""
        if gradients.ndim != 2 or gradients.shape[0] < 2:
            raise ValueError(
                f"expected an (L, D) gradient matrix with L >= 2, got {tuple(gradients.shape)}"
            )
        op = cls.__new__(cls)
        op._init(gradients, batch_size)
        op.bn_mode = None
        return op

    def _init(self, gradients: Tensor, batch_size: int) -> None:
        self.gradients = gradients
        self.batch_size = int(batch_size)
        self.num_batches, dim = gradients.shape
        self.shape = (dim, dim)
        self.dtype = torch.float64
        self.device = gradients.device
        self._gram: Tensor | None = None

    def gram(self) -> Tensor:
        """The L x L centred Gram matrix divided by L, in float64 (computed once)."""
        if self._gram is None:
            self._gram = centred_gram(self.gradients)
        return self._gram

    def mean_norm_sq(self) -> float:
        """|g|^2 of the mean g of the L gradients, in float64."""
        total = 0.0
        for start in range(0, self.shape[0], _GRAM_COLUMNS):
            block = self.gradients[:, start : start + _GRAM_COLUMNS].to(torch.float64)
            total += float(block.mean(dim=0).pow(2).sum())
        return total

    def centred_products(self, v: Tensor) -> Tensor:
        """C v in float64: the L dot products of the centred gradients with a flat vector."""
        v = v.to(dtype=torch.float64, device=self.device)
        out = torch.zeros(self.num_batches, dtype=torch.float64, device=self.device)
        for cols, block in _centred_blocks(self.gradients):
            out += block @ v[cols]
        return out

    def transpose_products(self, a: Tensor) -> Tensor:
        """C^T a in float64: the combination sum_l a_l (g_l - g), a flat vector of length D."""
        a = a.to(dtype=torch.float64, device=self.device)
        out = torch.empty(self.shape[0], dtype=torch.float64, device=self.device)
        for cols, block in _centred_blocks(self.gradients):
            out[cols] = block.T @ a
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """K v = C^T (C v) / L in float64."""
        return self.transpose_products(self.centred_products(v) / self.num_batches)
