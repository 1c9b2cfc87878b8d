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

from .._core.checks import check_int
from ..operators.linear import LinearOperator, as_matvec
from ..records import SLQ_SIGMA2, slq_density
from ._progress import product_bar


@dataclass(frozen=True)
class LanczosResult:
    """Top-k eigenpairs found by Lanczos.

    Attributes:
        eigenvalues: (k,) float64, descending (for ``which="LA"``; ascending for ``"SA"``).
        eigenvectors: (D, k), unit columns, in the operator's dtype.
        residuals: (k,) float64, ``r = ||A v - lambda v||`` of each Ritz pair (from the
            recurrence). For a symmetric A, some eigenvalue of A lies within ``r`` of each
            returned value: ``r`` is the certified error bound.
        converged: every ``residuals[i] <= tol * |eigenvalues[i]|``.
        num_matvecs: products with the matrix.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
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


def random_unit(dim: int, generator: torch.Generator) -> Tensor:
    """A uniformly random unit vector (float64, CPU) from a private generator."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v / v.norm()


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """The rows of ``w`` minus their projections on the orthonormal rows of ``basis``, twice
    (classical Gram-Schmidt twice is as stable as modified)."""
    for _ in range(2):
        w = w - (w @ basis.T) @ basis
    return w


class _Krylov:
    """An orthonormal basis Q of the block Krylov space span{S, A S, A^2 S, ...} of a start
    block S (rows), grown one block of products at a time, with every product A q kept.

    The projected matrix ``T = Q A Q^T`` is then exact on the whole basis (no three-term
    recurrence is trusted), and so are the Ritz residuals ``||A y - theta y||``. A block
    whose products add nothing new (an invariant subspace) is replaced by a random vector
    orthogonal to Q, so the basis keeps growing until it spans the space.
    """

    def __init__(self, matvec, dim, dtype, device, start: Tensor, max_size: int, generator):
        self.matvec, self.dim, self.generator = matvec, dim, generator
        self.max_size = max_size
        self.Q = torch.empty(max_size, dim, dtype=dtype, device=device)
        self.AQ = torch.empty(max_size, dim, dtype=dtype, device=device)
        self.T = torch.zeros(max_size, max_size, dtype=torch.float64)
        self.size = 0
        self.num_matvecs = 0
        self.block = self._orthonormal(start.to(dtype=dtype, device=device))
        if len(self.block) == 0:
            raise ValueError("the start vectors must be finite and not all zero")

    def _orthonormal(self, w: Tensor) -> Tensor:
        """The rows of ``w`` orthogonalised against Q and each other and normalised, dropping
        those with nothing new (norm below 1e-10 of their size before projection)."""
        basis = self.Q[: self.size]
        kept: list[Tensor] = []
        for row in w:
            before = row.norm()
            for other in [basis, *(r[None] for r in kept)]:
                row = _orthogonalise(row[None], other)[0] if len(other) else row
            after = row.norm()
            if torch.isfinite(after) and after > 1e-10 * before:
                kept.append(row / after)
        return torch.stack(kept) if kept else w[:0]

    def step(self) -> None:
        """Multiply the current block (capped at ``max_size`` vectors), extend T, and form
        the next block from the new products."""
        old = self.size
        new = self.block[: self.max_size - old]
        m = old + len(new)
        self.Q[old:m] = new
        for j in range(old, m):
            self.AQ[j] = self.matvec(self.Q[j])
        self.num_matvecs += m - old
        self.size = m
        # one device-to-host transfer per step (the small eigenproblem is solved on the host)
        cross = (self.Q[:m] @ self.AQ[old:m].T).to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(cross).all():
            raise ValueError("the matrix-vector product returned inf/nan")
        self.T[:m, old:m] = cross
        self.T[old:m, :old] = cross[:old].T
        self.T[old:m, old:m] = (cross[old:] + cross[old:].T) / 2
        if m < min(self.max_size, self.dim):
            self.block = self._orthonormal(self.AQ[old:m])
            if len(self.block) == 0:  # invariant subspace: go on from a random direction
                r = torch.randn(self.dim, generator=self.generator, dtype=torch.float64)
                self.block = self._orthonormal(r.to(self.Q)[None])
        else:
            self.block = self.Q[:0]

    @property
    def exhausted(self) -> bool:
        return len(self.block) == 0

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending, float64) and their vectors in the basis (columns)."""
        return torch.linalg.eigh(self.T[: self.size, : self.size])

    def residuals(self, theta: Tensor, S: Tensor) -> Tensor:
        """``||A y - theta y||`` for the Ritz vectors ``y = Q^T s`` (columns of S), float64."""
        Sd = S.to(self.Q)
        R = Sd.T @ self.AQ[: self.size] - theta.to(self.Q)[:, None] * (Sd.T @ self.Q[: self.size])
        return R.norm(dim=1).to(device="cpu", dtype=torch.float64)

    def vectors(self, S: Tensor) -> Tensor:
        """The Ritz vectors ``Q^T S`` (D, n), in the operator's dtype."""
        return self.Q[: self.size].T @ S.to(self.Q)


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
    Block Lanczos with full re-orthogonalisation: the Krylov space of a random unit vector
    and, when given, ``v0`` (as a second start vector, not added to the random one), with
    Rayleigh-Ritz on the whole basis and residuals computed from the kept products.

    Stops when every wanted Ritz value's residual ``r = ||A v - theta v||`` is at most
    ``tol * |theta|``. That is a bound that holds: a symmetric A has an eigenvalue within
    ``r`` of ``theta``, whatever the rest of the spectrum. The sharper ``min(r, r^2 / gap)``
    (Kato-Temple) is not used: it needs the gap between ``theta`` and the *unseen* part of
    the spectrum, and the gap to the other Ritz values bounds nothing while the top
    eigenvector has not yet entered the Krylov space (it certified the second eigenvalue as
    the first, with an actual error of 0.06, on a 75-parameter network).

    What no Krylov method can certify is the *rank* of a value: that nothing above it was
    missed. The random start vector gives every eigenvector a non-zero component with
    probability one, and keeping it apart from ``v0`` means an informed start (the loss
    gradient, previous eigenvectors) cannot cancel it; a single random direction still sees
    one direction of each eigenspace, so an eigenvalue repeated exactly is returned once
    unless ``v0`` brings another direction of it.

    Args:
        A: symmetric (D, D) tensor or operator.
        k: number of eigenpairs, 1 <= k <= D.
        tol: relative accuracy of the eigenvalues (residual bound).
        max_iter: most products (default ``min(D, max(100, 20 k))``).
        v0: a second start vector (D,), or previous eigenvectors (D, m) summed into one, for
            warm starts.
        which: ``"LA"`` (largest algebraic) or ``"SA"`` (smallest algebraic).
        seed: seeds a private generator for the random start (the global RNG is untouched).
    """
    matvec, dim, dtype = as_matvec(A)
    device = A.device
    check_int(k, "k", 1, dim, maximum_name="the dimension")
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
    start = [random_unit(dim, generator)]
    if v0 is not None:
        v = as_start(v0, dim).to(torch.float64).cpu()
        if v.norm() == 0:
            raise ValueError("v0 must be a finite, non-zero vector")
        start.append(v / v.norm())
    kr = _Krylov(op, dim, dtype, device, torch.stack(start), max_iter, generator)
    while True:
        kr.step()
        if kr.size < k:
            if kr.exhausted:
                raise RuntimeError("the Krylov space ended before k vectors")  # pragma: no cover
            continue
        theta, S = kr.ritz()
        top = torch.arange(kr.size - 1, kr.size - 1 - k, -1)
        residuals = kr.residuals(theta[top], S[:, top])
        converged = bool((residuals <= tol * theta[top].abs()).all())
        if converged or kr.exhausted:
            break
    return LanczosResult(
        eigenvalues=sign * theta[top],
        eigenvectors=kr.vectors(S[:, top]),
        residuals=residuals,
        converged=converged,
        num_matvecs=kr.num_matvecs,
    )


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of a spectrum (Ubaru et al. 2017; Ghorbani et al. 2019).

    For each of the ``num_probes`` random unit vectors v, ``v^T f(A) v ~ sum_j w_j f(t_j)``
    with nodes t_j (Ritz values) and weights w_j (squared first components of the Ritz
    vectors, summing to 1). The density is the average over probes of
    ``sum_j w_j N(t - t_j; sigma^2)`` (:meth:`density`); it integrates to 1 (multiply by D
    for counts).

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

    def sigma(self) -> float:
        """The default kernel width, that of the one SLQ broadening
        (:func:`breakeven.records.slq_density`, the figures' too): ``sqrt(SLQ_SIGMA2 * max(1,
        span of the Ritz values))`` (PyHessian's width)."""
        span = float(self.nodes.max() - self.nodes.min())
        return math.sqrt(SLQ_SIGMA2 * max(1.0, span))

    def grid(self, num_points: int | None = None, sigma: float | None = None) -> Tensor:
        """Evenly spaced points (float64) over the range of the Ritz values, padded on each
        side by ``3 sigma`` (default :meth:`sigma`), so that the density's kernels fall to
        about 1% of their peak at its ends: where :meth:`density` is evaluated when no grid is
        given. ``num_points``: default enough for a spacing of at most ``sigma / 3`` (so the
        kernels are resolved), at least 400 and at most 100,000."""
        width = self.sigma() if sigma is None else _width(sigma)
        lo = float(self.nodes.min()) - 3 * width
        hi = float(self.nodes.max()) + 3 * width
        if num_points is None:
            num_points = min(max(400, math.ceil(3 * (hi - lo) / width) + 1), 100_000)
        if num_points < 2:
            raise ValueError(f"num_points must be at least 2, got {num_points}")
        return torch.linspace(lo, hi, num_points, dtype=torch.float64)

    def density(self, grid: Tensor | None = None, sigma: float | None = None) -> Tensor:
        """Density on ``grid`` (default :meth:`grid` with this ``sigma``: plot it as
        ``result.grid(), result.density()``; float64, on ``grid``'s device): the average over
        probes of ``sum_j w_j N(t; t_j, sigma^2)``, by the one Gaussian broadening of an SLQ
        quadrature, :func:`breakeven.records.slq_density` (the figures' too). ``sigma``: the
        Gaussian's standard deviation, default :meth:`sigma`. Costs no products."""
        if sigma is not None:
            _width(sigma)
        grid = self.grid(sigma=sigma) if grid is None else grid
        grid = torch.as_tensor(grid, dtype=torch.float64)
        nodes, weights = self.nodes.detach().cpu(), self.weights.detach().cpu() / len(self.nodes)
        var = None if sigma is None else float(sigma) ** 2
        d = slq_density(nodes.numpy(), weights.numpy(), grid.cpu().numpy(), var)
        return torch.from_numpy(d).to(grid.device)

    def trace(self) -> float:
        """The trace estimate D * mean_v sum_j w_j t_j (Hutchinson with exact quadrature)."""
        return float(self.dim * (self.weights * self.nodes).sum(dim=1).mean())


def slq(
    A: Tensor | LinearOperator,
    *,
    num_probes: int = 5,
    num_steps: int = 80,
    seed: int = 0,
    progress: bool = False,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``num_probes`` Rademacher start vectors,
    ``num_steps`` Lanczos steps each (capped at D), full re-orthogonalisation.

    Cost: ``num_probes * min(num_steps, D)`` products with A (400 by default).
    ``progress=True`` shows a bar over them on stderr."""
    matvec, dim, dtype = as_matvec(A)
    if num_probes < 1 or num_steps < 1:
        raise ValueError("num_probes and num_steps must be positive")
    steps = min(num_steps, dim)
    generator = torch.Generator().manual_seed(seed)
    nodes, weights, used = [], [], 0
    bar = product_bar(progress, num_probes * steps, "spectral density")
    try:
        for _ in range(num_probes):
            z = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.float64) * 2 - 1
            kr = _Krylov(matvec, dim, dtype, A.device, z[None], steps, generator)
            while not kr.exhausted:
                before = kr.num_matvecs
                kr.step()
                if bar is not None:
                    bar.update(kr.num_matvecs - before)
            theta, S = kr.ritz()
            nodes.append(theta)
            weights.append(S[0] ** 2)
            used += kr.num_matvecs
    finally:
        if bar is not None:
            bar.close()
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), dim, used)


def _width(sigma: float) -> float:
    """``sigma`` as a kernel width: a finite number > 0 (ValueError otherwise)."""
    width = float(sigma)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return width
