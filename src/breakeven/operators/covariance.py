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
    functional_loss,
    measuring,
    trainable,
)

#: Columns (parameters) processed at once when the Gram is accumulated in float64.
_GRAM_COLUMNS = 1 << 15  # 25 x 32768 float64 = 6.6 MB: cache-sized (3x faster than 1 << 20)


def batch_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    bn_mode: BNMode = "train",
    chunk_size: int | None = 2048,
) -> tuple[Tensor, int]:
    """The gradients g_l of the mean loss on each batch, as rows of an (L, D) matrix.

    Returns the matrix (in the parameters' dtype) and the batch size M (all batches must have
    the same size). The batches are stacked and differentiated together by
    ``vmap(grad(...))``, about ``chunk_size`` examples per pass (at least one batch).
    ``bn_mode="train"`` (default) normalises each batch with its own statistics, as in the
    SGD step; the model's running statistics are not updated.
    """
    blocks, M = _batch_gradient_blocks(model, loss_fn, batches, bn_mode, chunk_size)
    return torch.cat(blocks, dim=1), M


def _batch_gradient_blocks(
    model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], bn_mode: BNMode, chunk_size
) -> tuple[list[Tensor], int]:
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
    M = sizes.pop()
    xs = torch.stack([x for x, _ in chunks])
    ys = torch.stack([y for _, y in chunks])
    per_pass = max(1, (chunk_size or len(chunks) * M) // M)
    return gradient_blocks(model, loss_fn, xs, ys, bn_mode=bn_mode, per_pass=per_pass), M


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = 256,
    bn_mode: BNMode = "eval",
) -> Tensor:
    """The gradients of each example's loss, as rows of an (N, D) matrix."""
    return torch.cat(
        _per_example_blocks(model, loss_fn, x, y, chunk_size=chunk_size, bn_mode=bn_mode), dim=1
    )


def _per_example_blocks(model, loss_fn, x, y, *, chunk_size, bn_mode) -> list[Tensor]:
    """Each example is a batch of one (``vmap(grad(...))`` over ``chunk_size`` examples at a
    time). With ``bn_mode="eval"`` BatchNorm uses its running statistics."""
    as_chunks((x, y))  # validates the pair
    return gradient_blocks(
        model, loss_fn, x.unsqueeze(1), y.unsqueeze(1), bn_mode=bn_mode, per_pass=chunk_size
    )


def gradient_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    xs: Tensor,
    ys: Tensor,
    *,
    bn_mode: BNMode,
    per_pass: int | None,
) -> list[Tensor]:
    """The (L, D) matrix whose row l is the gradient of ``loss_fn(model(xs[l]), ys[l])`` (the
    batches stacked along the first dimension), as a list of (L, d_i) column blocks: one per
    parameter, split to at most ``_GRAM_COLUMNS`` columns (never concatenated: the copy cost
    more than the gradients on the MLP). ``torch.func.vmap(torch.func.grad(...))`` over
    ``per_pass`` batches at a time; for modules vmap cannot handle, a loop, with a warning
    saying why."""
    params = trainable(model)
    step = per_pass or len(xs)
    with measuring(model, bn_mode):
        f = functional_loss(model, loss_fn)
        with torch.no_grad():
            check_finite(f(params, xs[0], ys[0]), "the loss")
        try:
            per = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0))
            passes = [
                list(per(params, xs[start : start + step], ys[start : start + step]).values())
                for start in range(0, len(xs), step)
            ]
            columns = [p[0] if len(passes) == 1 else torch.cat(p) for p in zip(*passes)]
        except (RuntimeError, NotImplementedError) as err:
            warnings.warn(
                f"torch.func.vmap cannot batch this model ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); computing the gradients in a loop, "
                "which is slower",
                RuntimeWarning,
                stacklevel=3,
            )
            rows = []
            for xb, yb in zip(xs, ys):
                leaves = [p.detach().requires_grad_(True) for p in params.values()]
                loss = f(dict(zip(params, leaves)), xb, yb)
                rows.append(
                    torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
                )
            columns = [torch.stack(p) for p in zip(*rows)]
    return [
        block for g in columns for block in g.reshape(g.shape[0], -1).split(_GRAM_COLUMNS, dim=1)
    ]


def centred_gram(gradients: Tensor | list[Tensor]) -> Tensor:
    """G = C C^T / L in float64, C the rows of ``gradients`` minus their mean (an L x L matrix);
    ``gradients`` is an (L, D) matrix or a list of its (L, d_i) column blocks.

    The centring and the products are done in float64, a block of columns at a time (so the
    memory above the gradients is one block): in float32 the smallest non-zero eigenvalue is
    lost. Raises ValueError when a gradient is not finite.
    """
    blocks = _as_blocks(gradients)
    L = blocks[0].shape[0]
    gram = torch.zeros(L, L, dtype=torch.float64, device=blocks[0].device)
    for _, block in _centred_blocks(blocks):
        gram += block @ block.T
    if not torch.isfinite(gram).all():
        raise ValueError("the loss or its gradient is not finite on some batch (inf/nan)")
    return gram / L


def _as_blocks(gradients: Tensor | list[Tensor]) -> list[Tensor]:
    if isinstance(gradients, Tensor):
        return list(gradients.split(_GRAM_COLUMNS, dim=1))
    return list(gradients)


def _centred_blocks(blocks: list[Tensor]):
    """(columns, block) pairs: the float64 row-centred column blocks and their columns."""
    L = blocks[0].shape[0]
    weights = torch.full((L,), 1 / L, dtype=torch.float64, device=blocks[0].device)
    start = 0
    for b in blocks:
        cols = slice(start, start + b.shape[1])
        start += b.shape[1]
        block = b.to(torch.float64, copy=True)
        block -= weights @ block  # in place, the mean as a GEMV: 2x faster than mean(dim=0)
        yield cols, block


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
        blocks, batch_size = _batch_gradient_blocks(model, loss_fn, batches, bn_mode, 2048)
        self._init(blocks, batch_size)
        self.bn_mode = bn_mode

    @classmethod
    def from_gradients(
        cls, gradients: Tensor | list[Tensor], batch_size: int
    ) -> GradientCovarianceOperator:
        """K from an (L, D) matrix whose rows are gradients of mean losses over ``batch_size``
        (or a list of its (L, d_i) column blocks)."""
        blocks = (
            _as_blocks(gradients)
            if not isinstance(gradients, Tensor) or gradients.ndim == 2
            else []
        )
        if not blocks or any(b.ndim != 2 or b.shape[0] != blocks[0].shape[0] for b in blocks):
            raise ValueError("expected an (L, D) gradient matrix (or its (L, d_i) column blocks)")
        if blocks[0].shape[0] < 2:
            raise ValueError(f"K needs at least 2 gradients, got {blocks[0].shape[0]}")
        op = cls.__new__(cls)
        op._init(blocks, batch_size)
        op.bn_mode = None
        return op

    def _init(self, blocks: list[Tensor], batch_size: int) -> None:
        self.blocks = blocks
        self.batch_size = int(batch_size)
        self.num_batches = blocks[0].shape[0]
        dim = sum(b.shape[1] for b in blocks)
        self.shape = (dim, dim)
        self.dtype = torch.float64
        self.device = blocks[0].device
        self._gram: Tensor | None = None

    @property
    def gradients(self) -> Tensor:
        """The (L, D) gradient matrix (a concatenated copy of the blocks)."""
        return torch.cat(self.blocks, dim=1)

    def gram(self) -> Tensor:
        """The L x L centred Gram matrix divided by L, in float64 (computed once)."""
        if self._gram is None:
            self._gram = centred_gram(self.blocks)
        return self._gram

    def mean_norm_sq(self) -> float:
        """|g|^2 of the mean g of the L gradients, in float64."""
        return sum(float(b.to(torch.float64).mean(dim=0).pow(2).sum()) for b in self.blocks)

    def centred_products(self, v: Tensor) -> Tensor:
        """C v in float64: the L dot products of the centred gradients with a flat vector."""
        v = v.to(dtype=torch.float64, device=self.device)
        out = torch.zeros(self.num_batches, dtype=torch.float64, device=self.device)
        for cols, block in _centred_blocks(self.blocks):
            out += block @ v[cols]
        return out

    def transpose_products(self, a: Tensor) -> Tensor:
        """C^T a in float64: the combination sum_l a_l (g_l - g), a flat vector of length D."""
        a = a.to(dtype=torch.float64, device=self.device)
        out = torch.empty(self.shape[0], dtype=torch.float64, device=self.device)
        for cols, block in _centred_blocks(self.blocks):
            out[cols] = block.T @ a
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """K v = C^T (C v) / L in float64."""
        return self.transpose_products(self.centred_products(v) / self.num_batches)
