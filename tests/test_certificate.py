"""``converged=True`` means what it says: no certified eigenvalue off by more than ``tol``.

A family of 200 random small networks (widths, depths, activations, weight scales, data
sizes) against dense float64 Hessian eigenvalues, k = 1, 2, 3. The former stopping rule
min(r, r^2/gap), with the gap taken to the other Ritz values, certified a wrong value in 38
of these 600 calls (the second eigenvalue for the first, among others).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.operators.dense import dense_hessian

ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU)
TOL = 1e-3


def random_problem(i: int):
    g = torch.Generator().manual_seed(i)
    torch.manual_seed(i)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    d_in, width, classes, n = draw(2, 7), draw(3, 10), draw(2, 5), draw(8, 40)
    act = ACTIVATIONS[i % len(ACTIVATIONS)]
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    if i % 2:
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, classes)).double()
    scale = 0.3 + 2 * float(torch.rand(1, generator=g))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, (x, y)


# Block 0 (networks 0-49, among them the first, which the former rule got wrong) in `make
# test`, blocks 1-3 in `make test-slow`: CI checks all 200 networks (10 s a block).
@pytest.mark.parametrize(
    "block", [0, *(pytest.param(b, marks=pytest.mark.slow) for b in (1, 2, 3))]
)
def test_no_wrong_certificate_on_random_networks(block):
    loss_fn = nn.CrossEntropyLoss()
    wrong, certified = [], 0
    for i in range(50 * block, 50 * (block + 1)):
        model, data = random_problem(i)
        exact = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, data)).flip(0)
        for k in (1, 2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # not converged: allowed
                res = be.hessian_eigenvalues(model, loss_fn, data, k=k, tol=TOL, seed=i)
            if not res.converged:
                continue
            certified += 1
            assert (res.residuals <= TOL * res.eigenvalues.abs()).all()
            err = (res.eigenvalues - exact[:k]).abs() / exact[:k].abs()
            if (err > TOL).any():
                wrong.append((i, k, res.eigenvalues.tolist(), exact[:k].tolist()))
    assert certified >= 140  # the family is not dodged by declining to converge
    assert not wrong, wrong


def test_the_residual_bound_holds_on_dense_matrices():
    """Some eigenvalue lies within each residual of each returned value (any spectrum)."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
        lam = torch.randn(60, generator=g, dtype=torch.float64)
        A = Q @ torch.diag(lam) @ Q.T
        res = be.lanczos(A, 3, tol=1e-2, max_iter=8, seed=seed)
        dist = (res.eigenvalues[:, None] - lam[None, :]).abs().min(dim=1).values
        assert (dist <= res.residuals * (1 + 1e-8) + 1e-12).all()


@pytest.mark.parametrize("seed", range(10))
def test_an_informed_start_cannot_hide_the_top(seed):
    """D = 3000, lambda_1 = 10 and lambda_2 = 9.8 above a bulk in [-1, 5], and a "gradient"
    that lies mostly along e_2 (as a loss gradient can). A single Krylov vector started from
    random + gradient certified 9.8 as the top in 34 of 60 seeds; the random vector kept
    apart in the start block finds 10 in every one."""
    g = torch.Generator().manual_seed(seed)
    dim = 3000
    lam = torch.cat(
        [torch.tensor([10.0, 9.8, 9.0]), torch.rand(dim - 3, generator=g) * 6 - 1]
    ).double()
    grad = torch.cat(
        [torch.tensor([0.02, 1.0, 0.5]), 0.01 * torch.randn(dim - 3, generator=g)]
    ).double()
    res = be.lanczos(torch.diag(lam), 1, tol=1e-3, v0=grad, seed=seed)
    assert res.converged
    assert abs(float(res.eigenvalues[0]) - 10.0) <= 1e-3 * 10.0
