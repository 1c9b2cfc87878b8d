"""Lanczos with full re-orthogonalisation: extreme eigenpairs and spectral densities.

Every function takes a dense symmetric tensor *or* a :class:`~breakeven.operators.LinearOperator`,
so the dense case serves as the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..operators.base import LinearOperator, as_matvec


@dataclass(frozen=True)
class LanczosResult:
    """Top-k eigenpairs found by Lanczos.

    Attributes:
        eigenvalues: (k,) float64, descending (for ``which="LA"``; ascending for ``"SA"``).
        eigenvectors: (D, k), unit columns, in the operator's dtype.
        residuals: (k,) float64, ``||A v - lambda v||`` of each Ritz pair (from the recurrence).
        errors: (k,) float64, bound on ``|lambda - lambda_true|``: ``min(r, r^2 / gap)`` with
            ``gap`` the distance to the nearest other Ritz value.
        converged: every ``errors[i] <= tol * |eigenvalues[i]|``.
        num_matvecs: products with the matrix.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    errors: Tensor
    converged: bool
    num_matvecs: int


def as_start(v0: Tensor, dim: int) -> Tensor:
    """A start vector (D,) from ``v0`` given as (D,) or as previous eigenvectors (D, k),
    summed to start in their span; checked finite (not normalised)."""
    v = v0.detach()
    if v.ndim == 2:
        v = v.sum(dim=1)
    if v.shape != (dim,):
        raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected ({dim},) or ({dim}, k)")
    if not torch.isfinite(v).all():
        raise ValueError("v0 must be a finite, non-zero vector")
    return v


def _start_vector(dim: int, dtype, device, v0: Tensor | None, generator) -> Tensor:
    if v0 is not None:
        v = as_start(v0, dim).to(dtype=dtype, device=device)
        if v.norm() == 0:
            raise ValueError("v0 must be a finite, non-zero vector")
    else:
        v = random_unit(dim, generator).to(dtype=dtype, device=device)
    return v / v.norm()


def random_unit(dim: int, generator: torch.Generator) -> Tensor:
    """A uniformly random unit vector (float64, CPU) from a private generator."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v / v.norm()


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """w minus its projection on the (orthonormal) rows of ``basis``, twice for stability."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


class _Krylov:
    """The Lanczos recurrence with full re-orthogonalisation, one step at a time."""

    def __init__(self, matvec, dim: int, dtype, device, q: Tensor, max_steps: int, generator):
        self.matvec, self.dim, self.generator = matvec, dim, generator
        self.Q = torch.empty(max_steps, dim, dtype=dtype, device=device)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples steps j and j + 1
        self.q = q
        self.last_beta = 0.0
        self.num_matvecs = 0

    @property
    def size(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        j = self.size
        self.Q[j] = self.q
        w = self.matvec(self.q)
        self.num_matvecs += 1
        finite = torch.isfinite(w).all()
        alpha = self.q @ w
        w = _orthogonalise(w, self.Q[: j + 1])
        # one device-to-host transfer per step (the tridiagonal is solved on the host)
        alpha, beta, ok = torch.stack([alpha, w.norm(), finite.to(w.dtype)]).tolist()
        if not ok:
            raise ValueError("the matrix-vector product returned inf/nan")
        self.alphas.append(alpha)
        self.last_beta = beta
        scale = max(abs(a) for a in self.alphas) or 1.0
        if beta > 1e-10 * scale:
            self.q = w / beta
        elif j + 1 < self.dim:  # invariant subspace found: restart orthogonally, beta = 0
            r = torch.randn(self.dim, generator=self.generator, dtype=torch.float64)
            r = _orthogonalise(r.to(self.Q.dtype).to(self.Q.device), self.Q[: j + 1])
            self.q = r / r.norm()
            beta = 0.0
        self.betas.append(beta)

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors of the tridiagonal matrix."""
        return torch.linalg.eigh(_tridiagonal(self.alphas, self.betas[:-1]))


def lanczos(
    A: Tensor | LinearOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_iter: int | None = None,
    v0: Tensor | None = None,
    which: Literal["LA", "SA"] = "LA",
    seed: int = 0,
) -> LanczosResult:
    """The k largest (``which="LA"``) or smallest (``"SA"``) *algebraic* eigenvalues of A.

    Never the largest magnitude: a negative eigenvalue of large magnitude is not "the top".
    Stops when every wanted Ritz value's error bound ``min(r, r^2/gap)`` is at most
    ``tol * |value|``; the strict residuals ``r`` are returned beside them.

    Args:
        A: symmetric (D, D) tensor or operator.
        k: number of eigenpairs, 1 <= k <= D.
        tol: relative accuracy of the eigenvalues.
        max_iter: most products (default ``min(D, max(100, 20 k))``).
        v0: start vector (D,) or previous eigenvectors (D, m), for warm starts.
        which: ``"LA"`` (largest algebraic) or ``"SA"`` (smallest algebraic).
        seed: seeds a private generator for the random start (the global RNG is untouched).
    """
    matvec, dim, dtype = as_matvec(A)
    device = A.device
    if not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"k must be an integer between 1 and the dimension {dim}, got {k!r}")
    if which not in ("LA", "SA"):
        raise ValueError(f"which must be 'LA' or 'SA', got {which!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    max_iter = min(dim, max_iter if max_iter is not None else max(100, 20 * k))
    if max_iter < k:
        raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
    sign = 1.0 if which == "LA" else -1.0
    op = matvec if sign > 0 else (lambda v: -matvec(v))
    generator = torch.Generator().manual_seed(seed)
    q = _start_vector(dim, dtype, device, v0, generator)
    kr = _Krylov(op, dim, dtype, device, q, max_iter, generator)
    while True:
        kr.step()
        if kr.size < k:
            continue
        theta, S = kr.ritz()
        top = torch.arange(kr.size - 1, kr.size - 1 - k, -1)
        residuals = kr.last_beta * S[-1, top].abs()
        if kr.size > 1:
            others = (theta[top, None] - theta[None, :]).abs()
            others[torch.arange(k), top] = math.inf
            gaps = others.min(dim=1).values
            errors = torch.minimum(residuals, residuals**2 / gaps)
        else:
            errors = residuals.clone()
        converged = bool((errors <= tol * theta[top].abs()).all())
        if converged or kr.size >= max_iter:
            break
    vectors = kr.Q[: kr.size].T @ S[:, top].to(dtype=dtype, device=device)
    return LanczosResult(
        eigenvalues=sign * theta[top],
        eigenvectors=vectors,
        residuals=residuals,
        errors=errors,
        converged=converged,
        num_matvecs=kr.num_matvecs,
    )


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of a spectrum (Ubaru et al. 2017; Ghorbani et al. 2019).

    For each of the ``num_probes`` random unit vectors v, ``v^T f(A) v ~ sum_j w_j f(t_j)``
    with nodes t_j (Ritz values) and weights w_j (squared first components of the Ritz
    vectors, summing to 1). The density is the average over probes of
    ``sum_j w_j N(t - t_j; sigma^2)``; it integrates to 1 (multiply by D for counts).

    Attributes:
        nodes: (num_probes, m) float64.
        weights: (num_probes, m) float64.
        dim: D.
        num_matvecs: products used.
    """

    nodes: Tensor
    weights: Tensor
    dim: int
    num_matvecs: int

    def density(self, grid: Tensor, sigma: float | None = None) -> Tensor:
        """Density on ``grid``: Gaussian kernel of width ``sigma`` (default: 1% of range)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if sigma is None:
            span = float(self.nodes.max() - self.nodes.min())
            sigma = 0.01 * span if span > 0 else 1.0
        z = (grid[:, None, None] - self.nodes[None]) / sigma
        kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(dim=2).mean(dim=1)

    def trace(self) -> float:
        """The trace estimate D * mean_v sum_j w_j t_j (Hutchinson with exact quadrature)."""
        return float(self.dim * (self.weights * self.nodes).sum(dim=1).mean())


def slq(
    A: Tensor | LinearOperator,
    *,
    num_probes: int = 5,
    num_steps: int = 80,
    seed: int = 0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``num_probes`` Rademacher start vectors,
    ``num_steps`` Lanczos steps each (capped at D), full re-orthogonalisation."""
    matvec, dim, dtype = as_matvec(A)
    if num_probes < 1 or num_steps < 1:
        raise ValueError("num_probes and num_steps must be positive")
    steps = min(num_steps, dim)
    generator = torch.Generator().manual_seed(seed)
    nodes, weights, used = [], [], 0
    for _ in range(num_probes):
        z = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.float64) * 2 - 1
        q = (z / math.sqrt(dim)).to(dtype=dtype, device=A.device)
        kr = _Krylov(matvec, dim, dtype, A.device, q, steps, generator)
        while kr.size < steps:
            kr.step()
        theta, S = kr.ritz()
        nodes.append(theta)
        weights.append(S[0] ** 2)
        used += kr.num_matvecs
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), dim, used)
