"""Hessian measures: top eigenvalues, trace, spectral density, curvature variance, stability."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._core.checks import check_int
from .._core.data import Data, as_chunks
from .._core.distributed import all_reduce_sum, check_distributed
from .._core.functional import LossFn, check_finite, check_loss_fn, loss_and_gradient
from .._core.params import as_flat, trainable, unflatten
from .._core.state import BNMode, check_forward_mode, measuring
from ..operators.hessian import HessianOperator, HVPMethod
from ..operators.preconditioned import PreconditionedOperator
from ..spectra import LanczosResult, SpectralDensity, TraceResult, hutchinson, lanczos, slq
from ..spectra.lanczos import as_start

CurvatureMethod = Literal["auto", "forward", "reverse"]


@dataclass(frozen=True)
class EigenResult(LanczosResult):
    """Top-k eigenpairs of the Hessian of the mean loss over the data (largest algebraic):
    the :class:`~breakeven.LanczosResult` of the Hessian operator (``eigenvalues`` descending,
    ``eigenvectors`` in the parameters' dtype and order, ``residuals`` the certified error
    bounds, ``converged``, ``num_matvecs`` Hessian-vector products), plus what defines the
    Hessian and the cost.

    Attributes:
        seconds: wall time.
        bn_mode: ``"eval"`` or ``"train"``: the BatchNorm mode that defines this Hessian.
        chunk_size: examples per forward pass (defines H under ``bn_mode="train"``).
        num_examples: N, the examples the loss averages over.
    """

    seconds: float
    bn_mode: str
    chunk_size: int | None
    num_examples: int


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    v0: Tensor | None = None,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    method: HVPMethod = "reverse",
    seed: int = 0,
    distributed: bool = False,
    preconditioner: Tensor | None = None,
) -> EigenResult:
    """The k largest *algebraic* eigenvalues of H = Hessian of (1/N) sum_i l_i over ``data``.

    With ``preconditioner`` P (a flat tensor of D positive entries, e.g.
    :func:`~breakeven.operators.preconditioned.adam_preconditioner`'s ``diagonal``): those of
    ``P^{-1/2} H P^{-1/2}`` (the eigenvalues of ``P^{-1} H``), by the same Lanczos on
    :class:`~breakeven.operators.preconditioned.PreconditionedOperator`; the eigenvectors are
    then those of ``P^{-1/2} H P^{-1/2}`` (``v0`` too), the informed start ``P^{-1/2} g``.

    Lanczos with full re-orthogonalisation; stops when each eigenvalue's error bound is at
    most ``tol`` relative (``max_iter`` products at most, default ``max(100, 20 k)``; a
    warning when it did not converge); ``converged`` certifies that each value is within
    ``tol`` (relative) of an eigenvalue of H (see :func:`~breakeven.lanczos`); cost: at
    most ``max_iter`` Hessian-vector products (often far fewer for k = 1). Block
    Lanczos from a random vector and, beside it, the loss gradient (which lies mostly in the
    top eigenspace) plus ``v0``, the previous result's eigenvectors, when tracking (a warm
    start that cannot lock onto a previous top that has been overtaken). See
    :class:`~breakeven.HessianOperator` for ``chunk_size``, ``bn_mode``, ``method`` and
    ``distributed`` (each rank passes its part of the data and gets the eigenvalues of all
    of it). The model is left bitwise unchanged.
    """
    start = time.perf_counter()
    op = HessianOperator(
        model,
        loss_fn,
        data,
        chunk_size=chunk_size,
        bn_mode=bn_mode,
        method=method,
        distributed=distributed,
    )
    if preconditioner is not None:
        op = PreconditionedOperator(op, preconditioner)
    if isinstance(k, int) and k > op.shape[0]:
        raise ValueError(f"k={k} is larger than the number of parameters D={op.shape[0]}")
    res = lanczos(op, k, tol=tol, max_iter=max_iter, v0=_start(op, v0), seed=seed)
    op.release()
    if not res.converged:
        worst = float((res.residuals / res.eigenvalues.abs()).max())
        warnings.warn(
            f"Lanczos did not reach tol={tol} in {res.num_matvecs} products "
            f"(largest relative error bound {worst:.2e}); raise max_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    return EigenResult(
        **{f.name: getattr(res, f.name) for f in dataclasses.fields(res)},
        seconds=time.perf_counter() - start,
        bn_mode=bn_mode,
        chunk_size=chunk_size,
        num_examples=op.num_examples,
    )


def _start(op: HessianOperator | PreconditionedOperator, v0: Tensor | None) -> Tensor | None:
    """Lanczos' informed start vector, beside its random one: the unit gradient of the loss,
    plus the unit sum of the previous eigenvectors ``v0`` when warm-starting (None when both
    vanish).

    The gradient lies mostly in the top eigenspace of H (Gur-Ari et al., 2018), so it brings
    a far larger component on e_H^1 than a random vector has (about 1/sqrt(D)); it is free
    when the first-order graph is cached. :func:`~breakeven.lanczos` keeps it apart from its
    random start vector (a block of two), so neither can cancel the other's component on an
    eigenvector, and a warm start cannot lock onto the previous top eigenvector after
    another eigenvalue has overtaken it.
    """
    g = op.gradient().to(dtype=op.dtype)
    start = torch.zeros_like(g)
    for vec in [g] if v0 is None else [g, as_start(v0, op.shape[0]).to(g)]:
        norm = vec.norm()
        if norm > 0 and torch.isfinite(norm):
            start = start + vec / norm
    return start if start.norm() > 0 else None


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    num_samples: int = 100,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    method: HVPMethod = "reverse",
    seed: int = 0,
    distributed: bool = False,
    progress: bool = False,
) -> TraceResult:
    """Tr(H) by Hutchinson's estimator with ``num_samples`` Rademacher probes (mean of
    z^T H z, with its standard error). H as in :func:`hessian_eigenvalues`.

    Cost: ``num_samples`` Hessian-vector products over ``data`` (100 by default);
    ``progress=True`` shows a bar over them on stderr."""
    start = time.perf_counter()
    op = HessianOperator(
        model,
        loss_fn,
        data,
        chunk_size=chunk_size,
        bn_mode=bn_mode,
        method=method,
        distributed=distributed,
    )
    res = hutchinson(op, num_samples, seed=seed, progress=progress)
    return dataclasses.replace(res, seconds=time.perf_counter() - start)


def hessian_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    num_probes: int = 5,
    num_steps: int = 80,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    method: HVPMethod = "reverse",
    seed: int = 0,
    distributed: bool = False,
    progress: bool = False,
) -> SpectralDensity:
    """The spectral density of H by stochastic Lanczos quadrature (paper Fig. 3):
    ``num_probes`` random starts, ``num_steps`` Lanczos steps each. Evaluate it with
    ``result.density()`` on ``result.grid()`` (the Ritz values' range, padded by the kernel
    width), or ``result.density(grid, sigma)``. H as in :func:`hessian_eigenvalues`.

    Cost: ``num_probes * min(num_steps, D)`` Hessian-vector products over ``data`` (400 by
    default), the slowest of these estimators; ``progress=True`` shows a bar over them on
    stderr."""
    op = HessianOperator(
        model,
        loss_fn,
        data,
        chunk_size=chunk_size,
        bn_mode=bn_mode,
        method=method,
        distributed=distributed,
    )
    return slq(op, num_probes=num_probes, num_steps=num_steps, seed=seed, progress=progress)


def per_example_curvatures(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    direction: Tensor | Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    method: CurvatureMethod = "auto",
) -> Tensor:
    """The (N,) float64 vector of e^T H_i e, H_i the Hessian of example i's loss, e = direction
    (used as given, not normalised).

    Per-example losses come from the model's batched output with ``loss_fn`` applied to each
    example (``torch.func.vmap``). ``method="forward"`` takes the second derivative of that
    loss vector along e by nested forward mode (``jvp`` of ``jvp``, a few forward passes);
    ``method="reverse"`` uses double backward plus one backward to per-example weights
    (for modules without forward-mode support: ``nn.LSTM`` on CUDA, train-mode BatchNorm);
    ``"auto"`` (default) uses forward mode where it works and reverse mode elsewhere. Never
    a per-example Hessian.
    """
    if method not in ("auto", "forward", "reverse"):
        raise ValueError(f"method must be 'auto', 'forward' or 'reverse', got {method!r}")
    check_loss_fn(loss_fn)
    if method == "forward":
        check_forward_mode(model, bn_mode)
    use_forward = method == "forward"
    if method == "auto":
        try:
            check_forward_mode(model, bn_mode)
            use_forward = True
        except ValueError:
            pass
    chunks = as_chunks(data, chunk_size)
    params = trainable(model)
    e = as_flat(direction, params)
    e_parts = unflatten(e, params)

    def losses(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        output = torch.func.functional_call(model, p, (x,))
        return torch.func.vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(output, y)

    def forward(x: Tensor, y: Tensor) -> Tensor:
        def slope(p):
            return torch.func.jvp(lambda q: losses(q, x, y), (p,), (e_parts,))[1]

        return torch.func.jvp(slope, (params,), (e_parts,))[1]

    def reverse(x: Tensor, y: Tensor) -> Tensor:
        weights = torch.ones(x.shape[0], dtype=e.dtype, device=e.device, requires_grad=True)
        leaves, _, grads = loss_and_gradient(
            lambda p, x, y: (weights * losses(p, x, y)).sum(), params, x, y, create_graph=True
        )
        gv = sum((g * t).sum() for g, t in zip(grads, e_parts.values()))
        hv = torch.autograd.grad(gv, leaves, create_graph=True)
        vhv = sum((h * t).sum() for h, t in zip(hv, e_parts.values()))
        return torch.autograd.grad(vhv, weights)[0]

    out = []
    with measuring(model, bn_mode):
        for x, y in chunks:
            with torch.no_grad():
                check_finite(losses(params, x, y).sum(), "the loss")
            curv = None
            if use_forward:
                try:
                    curv = forward(x, y)
                except (RuntimeError, NotImplementedError) as err:
                    if method == "forward":
                        raise RuntimeError(
                            f"forward-mode derivative failed for this model ({err}); "
                            "use method='reverse' or 'auto'"
                        ) from err
                    use_forward = False
            if curv is None:
                curv = reverse(x, y)
            out.append(curv.detach().to(torch.float64))
    return torch.cat(out)


def curvature_variance(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    direction: Tensor | Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    method: CurvatureMethod = "auto",
    distributed: bool = False,
) -> float:
    """s^2 of the paper's Eq. 1: the population variance (1/N) sum_i (c_i - mean c)^2 of the
    per-example curvatures c_i = e^T H_i e along ``direction`` e (see
    :func:`per_example_curvatures`; pass a unit vector, e.g. the top Hessian eigenvector).
    ``distributed``: each rank passes its part of the data; the mean and then the squared
    deviations are summed over the ranks (two passes, as stable as on one process)."""
    check_distributed(distributed)
    c = per_example_curvatures(
        model, loss_fn, data, direction, chunk_size=chunk_size, bn_mode=bn_mode, method=method
    )
    if not distributed:
        return float(((c - c.mean()) ** 2).mean())
    n, total = all_reduce_sum(torch.stack([c.new_tensor(float(len(c))), c.sum()])).tolist()
    mean = total / n
    return float(all_reduce_sum(((c - mean) ** 2).sum().reshape(1))) / n


def stability(
    eta: float, batch_size: int, n_train: int, lambda_h: float, curvature_variance: float
) -> float:
    """The left side of the paper's Eq. 1, stability of SGD along e_H^1:

    ``(1 - eta lambda_h)^2 + s^2 eta^2 (N - S) / (S (N - 1))``

    with ``s^2 = curvature_variance``, S = ``batch_size``, N = ``n_train``. SGD is stable along
    e_H^1 while this is <= 1; the break-even point is the first step where it reaches 1.
    """
    if not eta > 0:
        raise ValueError(f"eta must be positive, got {eta!r}")
    check_int(n_train, "n_train", 2)
    check_int(batch_size, "batch_size", 1, n_train, maximum_name="n_train")
    if curvature_variance < 0 or not math.isfinite(curvature_variance):
        raise ValueError(f"curvature_variance must be finite and >= 0, got {curvature_variance!r}")
    noise = (n_train - batch_size) / (batch_size * (n_train - 1))
    return (1 - eta * lambda_h) ** 2 + curvature_variance * eta**2 * noise
