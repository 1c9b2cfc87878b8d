"""Adam's geometry (Cohen et al., "Adaptive Gradient Methods at the Edge of Stability", 2022):
the preconditioned sharpness, the top eigenvalue of ``P^{-1} H`` with
``P = diag(sqrt(v_hat) + eps)`` read from a ``torch.optim.Adam``/``AdamW``'s state, against
its threshold ``(2 + 2 beta_1) / ((1 - beta_1) eta)`` (38/eta at beta_1 = 0.9), and the
gradient covariance in the same geometry, ``P^{-1/2} K P^{-1/2}``.

Both are the existing operators (:class:`~breakeven.HessianOperator`,
:class:`~breakeven.GradientCovarianceOperator`) scaled on both sides by ``P^{-1/2}``
(:class:`~breakeven.operators.preconditioned.PreconditionedOperator`), whose top eigenvalues
the certified Lanczos finds (the residual bound holds: the scaled matrix is symmetric).
The optimizer's state is only read: training goes on bitwise as without the measures.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._core.checks import check_int
from .._core.data import Data
from .._core.functional import LossFn
from .._core.state import BNMode
from ..operators.covariance import GradientCovarianceOperator
from ..operators.preconditioned import (
    AdamPreconditioner,
    PreconditionedOperator,
    adam_eos_threshold,
    adam_preconditioner,
    adam_settings,
    has_state,
)
from ..spectra import LanczosResult, lanczos
from .base import Context, Measure, Measurement, register_measure
from .hessian import EigenResult, hessian_eigenvalues
from .tracked import HessianTop, _covariance, _positive

__all__ = [
    "PreconditionedCovariance",
    "PreconditionedSharpness",
    "preconditioned_covariance",
    "preconditioned_sharpness",
]


def preconditioned_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    optimizer: torch.optim.Optimizer,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    v0: torch.Tensor | None = None,
    chunk_size: int | None = None,
    bn_mode: BNMode = "eval",
    seed: int = 0,
    distributed: bool = False,
) -> tuple[EigenResult, AdamPreconditioner]:
    """The k largest eigenvalues of ``P^{-1/2} H P^{-1/2}`` (those of ``P^{-1} H``), H the
    Hessian of the mean loss over ``data`` (as :func:`~breakeven.hessian_eigenvalues`) and P
    Adam's preconditioner read from ``optimizer`` (see
    :func:`~breakeven.operators.preconditioned.adam_preconditioner`, which says what is
    refused), with P itself (its ``threshold`` is the adaptive edge of stability). Model and
    optimizer are left bitwise unchanged."""
    p = adam_preconditioner(optimizer, model)
    res = hessian_eigenvalues(
        model,
        loss_fn,
        data,
        k=k,
        tol=tol,
        max_iter=max_iter,
        v0=v0,
        chunk_size=chunk_size,
        bn_mode=bn_mode,
        seed=seed,
        distributed=distributed,
        preconditioner=p.diagonal,
    )
    return res, p


def preconditioned_covariance(
    op: GradientCovarianceOperator,
    preconditioner: torch.Tensor,
    *,
    k: int = 1,
    tol: float = 1e-6,
    max_iter: int | None = None,
    seed: int = 0,
) -> LanczosResult:
    """The k largest eigenvalues of ``P^{-1/2} K P^{-1/2}``, K the gradient covariance ``op``
    and P the flat diagonal ``preconditioner`` (e.g. ``adam_preconditioner(...).diagonal``),
    by Lanczos (certified residuals, in float64). K from L gradients has at most L - 1
    non-zero eigenvalues, so ``k <= L - 1``."""
    if not isinstance(k, int) or not 1 <= k <= op.num_batches - 1:
        raise ValueError(
            f"k must be between 1 and L - 1 = {op.num_batches - 1} (K from L gradients has at "
            f"most L - 1 non-zero eigenvalues), got {k!r}"
        )
    return lanczos(
        PreconditionedOperator(op, preconditioner), k, tol=tol, max_iter=max_iter, seed=seed
    )


def _optimizer(ctx: Context, what: str) -> Any:
    if ctx.optimizer is None:
        raise ValueError(
            f"the {what} measure reads Adam's state: pass the optimizer to the Tracker "
            "(Tracker(..., optimizer=opt)); breakeven.train passes its own"
        )
    return ctx.optimizer


@register_measure("preconditioned_sharpness")
class PreconditionedSharpness(HessianTop):
    """Adam's preconditioned sharpness: the top-k eigenvalues of ``P^{-1/2} H P^{-1/2}`` on
    the probe, P = diag(sqrt(v_hat) + eps) read from the optimizer's state at this step
    (before its update: the state after ``step`` updates), warm-started from the previous
    measurement's eigenvectors.

    Keys: ``precond_lambda_H_1..k`` and their certified error bounds
    ``precond_residual_H_1..k``, ``precond_converged`` (1.0 or 0.0),
    ``precond_eos_threshold`` = (2 + 2 beta_1) / ((1 - beta_1) eta) (38/eta at
    beta_1 = 0.9, eta this step's learning rate), ``precond_eos_ratio`` =
    ``precond_lambda_H_1 / precond_eos_threshold`` (Adam is unstable along the top
    direction above 1), and ``adam_step`` (the optimizer's step count). Before the
    optimizer's first update it has no second moment: the eigenvalues, residuals and ratio
    are then NaN (not data). Needs the optimizer (``Tracker(optimizer=...)``; refusals as
    :func:`~breakeven.operators.preconditioned.adam_preconditioner`). Options as the
    ``hessian`` measure (whose constructor and checks it shares).
    """

    optimizers = ("adam", "adamw")  # it reads Adam's state

    def emits(self) -> tuple[str, ...]:
        ks = range(1, self.k + 1)
        return (
            *(f"precond_lambda_H_{i}" for i in ks),
            *(f"precond_residual_H_{i}" for i in ks),
            "precond_converged",
            "precond_eos_threshold",
            "precond_eos_ratio",
            "adam_step",
        )

    def measure(self, ctx: Context) -> Measurement:
        opt = _optimizer(ctx, "preconditioned_sharpness")
        if not has_state(opt):
            lr, (beta1, _) = adam_settings(opt)
            threshold = adam_eos_threshold(lr, beta1)
            values = {k: math.nan for k in self.emits()}
            values.update(precond_converged=0.0, precond_eos_threshold=threshold, adam_step=0.0)
            return Measurement(values)
        res, p = preconditioned_sharpness(
            ctx.model, ctx.loss_fn, ctx.probe, opt, **self.lanczos_options(ctx)
        )
        self._keep_start(ctx, res)
        threshold = adam_eos_threshold(p.lr, p.betas[0])  # the optimizer's eta, as it steps
        out = {f"precond_lambda_H_{i + 1}": float(v) for i, v in enumerate(res.eigenvalues)}
        out.update({f"precond_residual_H_{i + 1}": float(r) for i, r in enumerate(res.residuals)})
        top = float(res.eigenvalues[0])
        out.update(
            precond_converged=float(res.converged),
            precond_eos_threshold=threshold,
            precond_eos_ratio=top / threshold,
            adam_step=float(p.step),
        )
        return Measurement(out, matvecs=res.num_matvecs, shared=(res, p))


@register_measure("preconditioned_covariance")
class PreconditionedCovariance(Measure):
    """The gradient covariance in Adam's geometry: the top-k eigenvalues of
    ``P^{-1/2} K P^{-1/2}``, K the step's gradient covariance (the one a ``covariance``
    measure of this step shares, else L = 25 batches of M = S, shared in its place) and P as
    in ``preconditioned_sharpness``. Keys ``precond_lambda_K_1..k`` and
    ``precond_residual_K_1..k`` (certified error bounds), ``precond_converged_K``; NaN
    eigenvalues before the optimizer's first update. ``k <= L - 1``.
    """

    optimizers = ("adam", "adamw")  # it reads Adam's state

    requires = ("covariance",)

    def __init__(self, k: int = 1, tol: float = 1e-6, max_iter: int | None = None) -> None:
        check_int(k, "k", 1)
        check_int(max_iter, "max_iter", 1, optional=True)
        _positive(tol, "tol")
        self.k = k
        self.tol = tol
        self.max_iter = max_iter

    def emits(self) -> tuple[str, ...]:
        ks = range(1, self.k + 1)
        return (
            *(f"precond_lambda_K_{i}" for i in ks),
            *(f"precond_residual_K_{i}" for i in ks),
            "precond_converged_K",
        )

    def measure(self, ctx: Context) -> Measurement:
        opt = _optimizer(ctx, "preconditioned_covariance")
        if not has_state(opt):
            adam_settings(opt)  # the refusals that need no state
            values = {k: math.nan for k in self.emits()}
            values["precond_converged_K"] = 0.0
            return Measurement(values)
        p = adam_preconditioner(opt, ctx.model)
        spec, matvecs = _covariance(ctx)
        res = preconditioned_covariance(
            spec.operator,
            p.diagonal,
            k=self.k,
            tol=self.tol,
            max_iter=self.max_iter,
            seed=ctx.step,
        )
        out = {f"precond_lambda_K_{i + 1}": float(v) for i, v in enumerate(res.eigenvalues)}
        out.update({f"precond_residual_K_{i + 1}": float(r) for i, r in enumerate(res.residuals)})
        out["precond_converged_K"] = float(res.converged)
        return Measurement(out, matvecs=matvecs + res.num_matvecs)
