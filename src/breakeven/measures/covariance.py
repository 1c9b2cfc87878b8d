"""The gradient covariance K (paper App. C) and the gradient alignment ||g|| / ||g_k||."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._core.checks import check_int
from .._core.data import Batch
from .._core.functional import LossFn
from .._core.params import flatten
from .._core.state import BNMode
from ..operators.covariance import GradientCovarianceOperator, _per_example_blocks


@dataclass(frozen=True)
class CovarianceSpectrum:
    """The spectrum of K = (1/L) sum_l (g_l - g)(g_l - g)^T from L gradients of mean losses
    over batches of M examples (g = mean of the g_l), via the L x L Gram G = C C^T / L.

    The non-zero eigenvalues of K equal those of G. Values scale like 1/M (the variance of a
    mean over M examples): compare runs only at the same M, or use the ``per_example_*``
    fields (M times the value).

    Attributes:
        eigenvalues: (L,) float64, all eigenvalues of G, descending (the last is ~0: centring).
        top: lambda_K^1, the largest eigenvalue.
        smallest_nonzero: lambda_K^*, the (L-1)-th largest eigenvalue.
        condition: lambda_K^* / lambda_K^1 (in [0, 1]; ``nan`` when K = 0).
        resolution: ``eps * lambda_K^1``, eps the machine epsilon of the gradients (float32:
            1.2e-7): eigenvalues below it are round-off of the gradients, not data.
        numerical_rank: the number of eigenvalues above ``resolution`` (at most L - 1).
            When it is below L - 1, ``smallest_nonzero`` and ``condition`` are unresolved
            (``resolved`` is False): the tracked measure records them as NaN.
        trace: Tr(K) = Tr(G) = (1/L) sum_l ||g_l - g||^2.
        batch_size: M, examples per gradient (1 for per-example gradients).
        num_batches: L, the number of gradients.
        per_example_top: M * top, lambda_K^1 on the per-example scale.
        per_example_trace: M * trace.
        bn_mode: the BatchNorm mode of the gradients (``None`` when built from gradients).
        seconds: wall time of the measurement.
        gram_eigenvectors: (L, L) float64, eigenvectors a_k of G (columns, same order).
    """

    eigenvalues: Tensor
    top: float
    smallest_nonzero: float
    condition: float
    resolution: float
    numerical_rank: int
    trace: float
    batch_size: int
    num_batches: int
    per_example_top: float
    per_example_trace: float
    bn_mode: str | None
    seconds: float
    gram_eigenvectors: Tensor = field(repr=False)
    operator: GradientCovarianceOperator = field(repr=False)

    @property
    def resolved(self) -> bool:
        """Whether lambda_K^* (and so the conditioning) lies above the gradients' precision."""
        return self.smallest_nonzero > self.resolution

    @property
    def mean_gradient_norm_sq(self) -> float:
        """|g|^2 of the mean g of the L gradients, in float64 (a biased estimate of the
        squared full gradient norm: its expectation exceeds it by about Tr(K) / L)."""
        return self.operator.mean_norm_sq()

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int) or not 1 <= k <= self.num_batches - 1:
            raise ValueError(
                f"k must be between 1 and L - 1 = {self.num_batches - 1} "
                f"(K from L gradients has at most L - 1 non-zero eigenvalues), got {k!r}"
            )
        if self.eigenvalues[k - 1] <= 0:
            raise ValueError(f"the {k}-th eigenvalue of K is zero: its eigenvector is undefined")

    def projection(self, v: Tensor | Sequence[Tensor], k: int) -> Tensor:
        """The coordinates <u_i, v> of a flat vector on the top-k unit eigenvectors of K,
        ``u_i = C^T a_i / sqrt(L lambda_i)`` (L dot products; no D x D matrix)."""
        self._check_k(k)
        v = flatten(v) if not isinstance(v, Tensor) else v.reshape(-1)
        if v.numel() != self.operator.shape[0]:
            raise ValueError(f"vector has {v.numel()} entries, K is {self.operator.shape}")
        c = self.operator.centred_products(v)
        lam = self.eigenvalues[:k]
        return (self.gram_eigenvectors[:, :k].T @ c) / torch.sqrt(self.num_batches * lam)

    def eigenvectors(self, k: int) -> Tensor:
        """The top-k unit eigenvectors of K as a (D, k) float64 matrix (D x k memory)."""
        self._check_k(k)
        out = torch.empty(self.operator.shape[0], k, dtype=torch.float64)
        for i in range(k):
            a = self.gram_eigenvectors[:, i] / math.sqrt(self.num_batches * self.eigenvalues[i])
            out[:, i] = self.operator.transpose_products(a)
        return out


def spectrum_of(op: GradientCovarianceOperator, seconds: float = math.nan) -> CovarianceSpectrum:
    """The :class:`CovarianceSpectrum` of a gradient covariance operator."""
    evals, evecs = torch.linalg.eigh(op.gram())
    evals, evecs = evals.flip(0), evecs.flip(1)
    top, star = float(evals[0]), float(evals[-2])
    trace = float(op.gram().trace())
    M = op.batch_size
    return CovarianceSpectrum(
        eigenvalues=evals,
        top=top,
        smallest_nonzero=star,
        condition=star / top if top > 0 else math.nan,
        resolution=op.gradient_eps * top,
        numerical_rank=int((evals > op.gradient_eps * top).sum()),
        trace=trace,
        batch_size=M,
        num_batches=op.num_batches,
        per_example_top=M * top,
        per_example_trace=M * trace,
        bn_mode=op.bn_mode,
        seconds=seconds,
        gram_eigenvectors=evecs,
        operator=op,
    )


def gradient_covariance(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    bn_mode: BNMode = "train",
    storage: str = "memory",
    distributed: bool = False,
) -> CovarianceSpectrum:
    """The spectrum of the gradient covariance K from L mini-batches of M examples each.

    g_l is the gradient of the mean loss on batch l; K's Gram is
    ``G_ij = <g_i - g, g_j - g> / L`` with g the mean of the g_l (accumulated in float64).
    The paper uses L = 25 batches of the training batch size (M = 128 when the batch size
    is swept). ``bn_mode="train"`` (default) normalises each batch with its own statistics,
    as the SGD step does (running statistics untouched); dropout is off. ``storage``: where
    the L gradients are kept, ``"memory"`` (default), ``"cpu"`` or ``"disk"`` for models whose
    L gradients do not fit (see :class:`~breakeven.GradientCovarianceOperator`).
    ``distributed``: each rank passes its own batches and gets the spectrum of all of them.
    """
    start = time.perf_counter()
    op = GradientCovarianceOperator(
        model, loss_fn, batches, bn_mode=bn_mode, storage=storage, distributed=distributed
    )
    return spectrum_of(op, time.perf_counter() - start)


def covariance_from_gradients(
    gradients: Tensor | Sequence[Tensor], batch_size: int = 1
) -> CovarianceSpectrum:
    """The spectrum of K from gradients you already have.

    ``gradients``: an (L, D) matrix (or a list of its (L, d_i) column blocks) whose row l is
    g_l, the gradient of a mean loss over ``batch_size`` (M) examples: M = 1 for per-example
    gradients (:func:`~breakeven.per_example_gradients`), M for mini-batch gradients. K is
    ``(1/L) sum_l (g_l - g)(g_l - g)^T``, g the mean of the rows (centred; divided by L, not
    L - 1); its non-zero eigenvalues are those of the L x L Gram ``C C^T / L``, C the centred
    rows, accumulated in float64 whatever the gradients' dtype. The same Gram and the same
    :class:`CovarianceSpectrum` as :func:`gradient_covariance` (``bn_mode`` None; the
    ``resolution`` from the gradients' dtype): ``covariance_from_gradients(G, M)`` of the L
    batch gradients equals ``gradient_covariance`` of those batches. ``ValueError`` for
    fewer than 2 rows or a gradient that is not finite.
    """
    check_int(batch_size, "batch_size", 1)
    blocks = [gradients] if isinstance(gradients, Tensor) else list(gradients)
    for b in blocks:
        if not isinstance(b, Tensor) or not (b.is_floating_point() and b.ndim == 2):
            raise ValueError(
                "gradients must be a real floating-point (L, D) tensor or a list of (L, d_i) "
                f"ones, got {type(b).__name__}"
                + (
                    f" of dtype {b.dtype} and shape {tuple(b.shape)}"
                    if isinstance(b, Tensor)
                    else ""
                )
            )
    start = time.perf_counter()
    op = GradientCovarianceOperator.from_gradients(
        gradients if isinstance(gradients, Tensor) else blocks, batch_size
    )
    return spectrum_of(op, time.perf_counter() - start)


def per_example_gradient_covariance(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = 256,
    bn_mode: BNMode = "eval",
) -> CovarianceSpectrum:
    """K from per-example gradients (M = 1, L = the number of examples), by ``vmap(grad)``.

    The weight of each ``nn.Linear`` applied once to a 2-D input has rank-one per-example
    gradients delta_i a_i^T; they are kept as the factors (a_i, delta_i) and enter the Gram
    as (a_i . a_j)(delta_i . delta_j), never materialised (exact, in float64). Falls back to a
    loop, with a warning saying why, for modules vmap cannot handle.
    ``bn_mode="eval"`` (default): BatchNorm uses its running statistics (one example has
    no batch statistics worth the name).
    """
    if x.shape[0] < 2:
        raise ValueError(f"the per-example covariance needs at least 2 examples, got {x.shape[0]}")
    start = time.perf_counter()
    blocks = _per_example_blocks(model, loss_fn, x, y, chunk_size=chunk_size, bn_mode=bn_mode)
    op = GradientCovarianceOperator.from_gradients(blocks, batch_size=1)
    op.bn_mode = bn_mode
    return spectrum_of(op, time.perf_counter() - start)


def gradient_alignment(
    g: Tensor | Sequence[Tensor], spectrum: CovarianceSpectrum, k: int = 5
) -> float:
    """||g|| / ||g_k||, g_k the orthogonal projection of g on the top-k eigenvectors of K.

    Always >= 1 (``inf`` when g is orthogonal to them). ``g`` is a flat tensor of length D or
    per-parameter tensors in the order of ``model.parameters()`` (trainable ones).
    """
    flat = flatten(g) if not isinstance(g, Tensor) else g.reshape(-1)
    coords = spectrum.projection(flat, k)
    norm = float(flat.to(torch.float64).norm())
    proj = float(coords.norm())
    if norm == 0:
        raise ValueError("g is the zero vector: its alignment is undefined")
    return norm / proj if proj > 0 else math.inf
