"""Sharpness at every step: lambda_H^1 followed along training for one Hessian-vector product
per step, each value with its certificate, and a full Lanczos solve when the certificate
degrades or on a schedule.

At a tracked step the measure multiplies the vector ``v`` it carries (unit, built at the
previous measurement) once by H, the Hessian of the probe loss at the current parameters:
``w = H v``. It reports

- ``sharpness`` = theta = v^T w, a Rayleigh quotient of H. **Certified:** theta <=
  lambda_max(H) (up to the rounding of one product), whatever v is.
- ``sharpness_residual`` = r = ||w - theta v||. **Certified:** some eigenvalue of H lies in
  [theta - r, theta + r] (H is symmetric).
- ``sharpness_upper`` = theta + r. It bounds lambda_max(H) from above **only when the
  eigenvalue near theta is the top one**: no method of one product can rule out a larger
  eigenvalue whose eigenvector is (nearly) orthogonal to v. It is the upper end of the
  interval above, not a certified upper bound on lambda_max.

Then ``v`` is moved for the next step with no further product (see :class:`Sharpness`).

When ``r > tol_fallback * |theta|``, when ``theta <= 0`` (v has turned towards a negative
eigenvalue: never the top of a Hessian with a positive one), every ``refresh`` steps, and at
the first measurement, the step's value comes instead from
:func:`~breakeven.measures.hessian_eigenvalues` (block Lanczos, ``k=1``, to ``tol``),
warm-started from ``H v`` (or ``v``); its certificate is the Lanczos residual
(``sharpness_residual``, the same kind of bound) and its random start vector gives the top
eigenvector a non-zero weight, so a top eigenvalue that overtook the tracked one is found
again there (``sharpness_fallback`` = 1.0 on such steps).

The cost is one product a step plus the solves. With ``tol_fallback=inf`` (TOML: ``inf``)
the solves run on the schedule alone and the cost is bounded: n steps cost at most
``n + ceil(n / refresh) (m - 1)`` products, about ``1 + m / refresh`` a step, m the products
of one solve (10-30 on the paper's models), plus a solve at any step where ``theta <= 0``.
That is the mode for the edge of stability, where the top eigenvector turns between steps
and a residual test would call a solve at almost every step; the residual is still reported
with every value, so the loss of accuracy is visible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._core.checks import check_int
from .._core.state import BNMode, check_bn_mode
from ..operators.hessian import HessianOperator
from .base import Context, Measure, Measurement, register_measure
from .hessian import hessian_eigenvalues
from .tracked import _positive, eos_threshold


@register_measure("sharpness")
class Sharpness(Measure):
    """lambda_H^1 at every step for one Hessian-vector product, with a certificate.

    Keys: ``sharpness`` (theta, a Rayleigh quotient: a certified lower bound on lambda_max),
    ``sharpness_residual`` (r: an eigenvalue of H lies within r of theta),
    ``sharpness_upper`` (theta + r: an upper bound on lambda_max *only when* the eigenvalue
    within r of theta is the top one; see the module docstring), ``sharpness_fallback``
    (1.0 when a full Lanczos solve gave this step's value, else 0.0), ``eos_ratio`` and
    ``eos_threshold`` (theta against (2 + 2 beta)/eta, as the ``edge_of_stability``
    measure), and ``matvecs`` (1 on a tracked step; 1 + the solve's on a fallback step, the
    solve's alone at the first measurement and on refresh steps).

    Args:
        tol_fallback: a tracked value whose residual exceeds ``tol_fallback * |theta|``
            (default 1e-2: theta is then within 1% of *some* eigenvalue) is replaced by a
            full solve at the same step; ``inf``: never (solves on the schedule and where
            theta <= 0 only; see the module docstring for the cost).
        refresh: a full solve every ``refresh`` steps at least (default 100; ``None``: only
            at the first measurement and when the residual fails), so a top eigenvalue that
            overtook the tracked one is not followed for long. Counted in training steps.
        tol: relative residual tolerance of the full solves (default 1e-3; at most
            ``tol_fallback``, or the step after a solve would fall back again).
        max_iter: most products of a full solve (default as
            :func:`~breakeven.measures.hessian_eigenvalues`).
        chunk_size, bn_mode: the operator, as for the ``hessian`` measure (eval-mode
            BatchNorm and the whole probe by default).
    """

    keys = (
        "sharpness",
        "sharpness_residual",
        "sharpness_upper",
        "sharpness_fallback",
        "eos_ratio",
        "eos_threshold",
    )

    def __init__(
        self,
        tol_fallback: float = 1e-2,
        refresh: int | None = 100,
        tol: float = 1e-3,
        max_iter: int | None = None,
        chunk_size: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        _positive(tol_fallback, "tol_fallback")
        _positive(tol, "tol")
        if tol > tol_fallback:
            raise ValueError(
                f"tol={tol!r} is larger than tol_fallback={tol_fallback!r}: the step after "
                "each full solve would fall back again; choose tol <= tol_fallback"
            )
        check_int(refresh, "refresh", 1, optional=True)
        check_int(max_iter, "max_iter", 1, optional=True)
        check_int(chunk_size, "chunk_size", 1, optional=True)
        check_bn_mode(bn_mode)
        self.tol_fallback = tol_fallback
        self.refresh = refresh
        self.tol = tol
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.bn_mode = bn_mode

    def measure(self, ctx: Context) -> Measurement:
        state = ctx.state.setdefault(self.name, {})
        v = state.get("v")
        due = v is None or (
            self.refresh is not None and ctx.step - state["solved_at"] >= self.refresh
        )
        matvecs, fallback, start = 0, due, v
        if not due:
            op = HessianOperator(
                ctx.model,
                ctx.loss_fn,
                ctx.probe,
                chunk_size=self.chunk_size,
                bn_mode=self.bn_mode,
                distributed=ctx.distributed,
            )
            w = op.matvec(v)
            op.release()
            matvecs = 1
            if not torch.isfinite(w).all():
                raise ValueError("the Hessian-vector product returned inf/nan")
            theta, r = _rayleigh(v, w)
            fallback = not (theta > 0 and r <= self.tol_fallback * theta)
            if fallback:
                start = w  # one power step closer to the top than v
            else:  # one power-iteration step for the next measurement, no extra product
                norm = w.norm()
                if norm > 0 and torch.isfinite(norm):
                    state["v"] = (w / norm).detach().clone()
        if fallback:
            theta, r, n = self._solve(ctx, state, start)
            matvecs += n
        threshold = eos_threshold(ctx.lr, ctx.momentum)
        values = {
            "sharpness": theta,
            "sharpness_residual": r,
            "sharpness_upper": theta + r,
            "sharpness_fallback": float(fallback),
            "eos_ratio": theta / threshold,
            "eos_threshold": threshold,
        }
        return Measurement(values, matvecs=matvecs)

    def _solve(
        self, ctx: Context, state: dict[str, Any], start: Tensor | None
    ) -> tuple[float, float, int]:
        """The full Lanczos solve, warm-started from ``start``; resets the state."""
        res = hessian_eigenvalues(
            ctx.model,
            ctx.loss_fn,
            ctx.probe,
            k=1,
            tol=self.tol,
            max_iter=self.max_iter,
            v0=start,
            chunk_size=self.chunk_size,
            bn_mode=self.bn_mode,
            seed=ctx.step,
            distributed=ctx.distributed,
        )
        v = res.eigenvectors[:, 0]
        state.update(v=(v / v.norm()).detach().clone(), solved_at=ctx.step)
        return float(res.eigenvalues[0]), float(res.residuals[0]), res.num_matvecs


def _rayleigh(v: Tensor, w: Tensor) -> tuple[float, float]:
    """theta = v^T w and r = ||w - theta v|| in float64 (v a unit vector, w = H v)."""
    v64, w64 = v.double(), w.double()
    theta = float(v64 @ w64)
    return theta, float((w64 - theta * v64).norm())
