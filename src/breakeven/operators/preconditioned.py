"""A curvature matrix in the geometry of a diagonal preconditioner, and Adam's preconditioner.

Under Adam the quantity that rises to the edge of stability is the top eigenvalue of
``P^{-1} H`` (Cohen et al., "Adaptive Gradient Methods at the Edge of Stability", 2022),
``P = diag(sqrt(v_hat) + eps)`` from Adam's second-moment estimate. ``P^{-1} H`` is similar
to the symmetric ``P^{-1/2} H P^{-1/2}`` (same eigenvalues), which is what
:class:`PreconditionedOperator` multiplies by, so the symmetric Lanczos applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .linear import LinearOperator


class PreconditionedOperator(LinearOperator):
    """``P^{-1/2} A P^{-1/2}`` for a symmetric operator A (D x D) and a positive diagonal P.

    Its eigenvalues are those of ``P^{-1} A`` (similar matrices); an eigenvector w of it
    gives the eigenvector ``P^{-1/2} w`` of ``P^{-1} A``. It is A in the coordinates
    ``u = P^{1/2} theta``: :meth:`gradient` (when A has one, e.g. a
    :class:`~breakeven.HessianOperator`) returns the loss gradient in those coordinates,
    ``P^{-1/2} g``. Each product is one product with A (``num_matvecs`` is A's).

    Args:
        op: the symmetric operator A (its ``shape``, ``dtype`` and ``device`` are kept).
        diagonal: P as a flat tensor of D finite, positive entries (any float dtype; the
            scaling ``P^{-1/2}`` is computed in float64 and applied in A's dtype).
    """

    def __init__(self, op: LinearOperator, diagonal: Tensor) -> None:
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be a LinearOperator, got {type(op).__name__}")
        if not isinstance(diagonal, Tensor) or diagonal.shape != (op.shape[0],):
            shape = tuple(diagonal.shape) if isinstance(diagonal, Tensor) else type(diagonal)
            raise ValueError(f"the diagonal must be a ({op.shape[0]},) tensor, got {shape}")
        d = diagonal.detach().to(torch.float64)
        if not bool(torch.isfinite(d).all()) or not bool((d > 0).all()):
            raise ValueError("the diagonal preconditioner must be finite and positive")
        self.op = op
        self.diagonal = d
        self.scale = d.rsqrt().to(dtype=op.dtype, device=op.device)  # P^{-1/2}
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device

    @property
    def num_matvecs(self) -> int:
        return getattr(self.op, "num_matvecs", 0)

    @property
    def num_examples(self) -> int:
        return self.op.num_examples

    def matvec(self, v: Tensor) -> Tensor:
        """``P^{-1/2} A P^{-1/2} v`` for a flat vector ``v`` (in A's dtype)."""
        v = v.to(dtype=self.dtype, device=self.device)
        return self.scale * self.op.matvec(self.scale * v)

    def matmat(self, V: Tensor) -> Tensor:
        """``P^{-1/2} A P^{-1/2} V`` for the columns of a (D, n) matrix (A's ``matmat``)."""
        V = V.to(dtype=self.dtype, device=self.device)
        s = self.scale[:, None]
        return s * self.op.matmat(s * V)

    def gradient(self) -> Tensor:
        """The loss gradient in the coordinates ``u = P^{1/2} theta``: ``P^{-1/2} g``."""
        return self.scale * self.op.gradient().to(self.dtype)

    def release(self) -> None:
        """A's :meth:`release`, when it has one."""
        release = getattr(self.op, "release", None)
        if release is not None:
            release()


#: The optimizer classes whose state :func:`adam_preconditioner` reads (exactly these).
ADAM_CLASSES = (torch.optim.Adam, torch.optim.AdamW)


@dataclass(frozen=True)
class AdamPreconditioner:
    """Adam's diagonal preconditioner at the optimizer's current state.

    Attributes:
        diagonal: (D,) float64, ``P = sqrt(v_hat) + eps`` over the model's trainable
            parameters in the order of ``model.named_parameters()``, with
            ``v_hat = exp_avg_sq / (1 - beta_2^step)``, ``step`` each parameter's own step
            count (the bias correction torch's Adam and AdamW apply).
        lr: the learning rate eta of the optimizer's parameter groups.
        betas: (beta_1, beta_2).
        step: the largest step count of the parameters (updates applied so far).
    """

    diagonal: Tensor
    lr: float
    betas: tuple[float, float]
    step: int

    @property
    def threshold(self) -> float:
        """The adaptive edge of stability (2 + 2 beta_1) / ((1 - beta_1) eta): 38/eta at
        beta_1 = 0.9 (Cohen et al. 2022)."""
        return adam_eos_threshold(self.lr, self.betas[0])


def adam_eos_threshold(lr: float, beta1: float) -> float:
    """(2 + 2 beta_1) / ((1 - beta_1) eta): where the preconditioned sharpness of Adam with
    learning rate eta and first-moment decay beta_1 stops being stable (Cohen et al. 2022)."""
    if not lr > 0 or not 0 <= beta1 < 1:
        raise ValueError(f"need lr > 0 and beta_1 in [0, 1), got lr={lr!r}, beta_1={beta1!r}")
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def has_state(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer holds any per-parameter state (Adam: after its first step)."""
    return any(len(s) > 0 for s in optimizer.state.values())


def adam_settings(optimizer: torch.optim.Optimizer) -> tuple[float, tuple[float, float]]:
    """The learning rate and (beta_1, beta_2) of a ``torch.optim.Adam`` or ``AdamW``, after
    the refusals of :func:`adam_preconditioner` that need no state (``ValueError``)."""
    if type(optimizer) not in ADAM_CLASSES:
        raise ValueError(
            f"the preconditioned measures read the state of torch.optim.Adam or AdamW, got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}; train with Adam or "
            "AdamW (TrainConfig(optimizer='adam'|'adamw')) or drop these measures"
        )
    groups = optimizer.param_groups
    if any(g.get("amsgrad", False) for g in groups):
        raise ValueError("amsgrad=True is not supported: its preconditioner is max(v), not v")
    lrs = {float(g["lr"]) for g in groups}
    betas = {tuple(float(b) for b in g["betas"]) for g in groups}
    if len(lrs) > 1 or len(betas) > 1:
        raise ValueError(
            f"the parameter groups differ in lr {sorted(lrs)} or betas {sorted(betas)}: "
            "the preconditioned sharpness has one threshold only with one lr and one beta_1"
        )
    ((beta1, beta2),) = betas
    return lrs.pop(), (beta1, beta2)


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> AdamPreconditioner:
    """Read ``P = diag(sqrt(v_hat) + eps)`` from a ``torch.optim.Adam`` or ``AdamW`` that
    trains ``model``, without changing it (its state is only read, into float64 copies).

    Refused with ``ValueError`` naming the cause and what to do: another optimizer class
    (subclasses included: they may precondition differently), ``amsgrad=True`` (its
    preconditioner uses the running maximum of v), parameter groups with different learning
    rates or betas (no single threshold), a trainable parameter the optimizer does not
    train, and an optimizer without state for a parameter (before its first step).
    """
    lr, betas = adam_settings(optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts, steps = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) not in group_of:
            raise ValueError(
                f"parameter {name!r} is trainable but not in the optimizer: P is defined over "
                "the parameters the optimizer trains (freeze it, or give it to the optimizer)"
            )
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or "step" not in state:
            raise ValueError(
                f"the optimizer has no state for parameter {name!r} yet: Adam's second moment "
                "exists after its first step (measure from step 1 on)"
            )
        step = int(float(state["step"]))
        bias_correction = 1 - betas[1] ** step
        v_hat = state["exp_avg_sq"].detach().to(torch.float64).reshape(-1) / bias_correction
        parts.append(v_hat.sqrt() + float(group_of[id(p)]["eps"]))
        steps.append(step)
    if not parts:
        raise ValueError("the model has no parameters that require gradients")
    return AdamPreconditioner(torch.cat(parts), lr, betas, max(steps))
