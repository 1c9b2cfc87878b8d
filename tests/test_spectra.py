"""Lanczos, Hutchinson and SLQ on dense matrices (the oracle is torch.linalg.eigvalsh)."""

import math

import pytest
import torch

import breakeven as be


def sym(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), generator=g, dtype=torch.float64))
    return q @ torch.diag(ev) @ q.T


def random_sym(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_top_k_equals_eigvalsh(k, seed):
    A = random_sym(120, seed)
    res = be.lanczos(A, k, tol=1e-12, max_iter=120)
    exact = torch.linalg.eigvalsh(A).flip(0)[:k]
    torch.testing.assert_close(res.eigenvalues, exact, rtol=1e-6, atol=0)
    assert res.converged
    # eigenvectors: unit, and residuals are what they say
    V = res.eigenvectors
    torch.testing.assert_close(V.norm(dim=0), torch.ones(k, dtype=torch.float64))
    true_res = (A @ V - V * res.eigenvalues).norm(dim=0)
    torch.testing.assert_close(res.residuals, true_res, rtol=1e-3, atol=1e-8)


def test_largest_algebraic_not_largest_magnitude():
    A = sym([-50.0, -3.0, 2.0, 1.0, 0.5] + [0.1] * 20)
    res = be.lanczos(A, 2, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([2.0, 1.0], dtype=torch.float64))
    low = be.lanczos(A, 1, tol=1e-10, which="SA")
    assert math.isclose(float(low.eigenvalues[0]), -50.0, rel_tol=1e-8)


def test_error_bound_stopping_meets_the_tolerance():
    for seed in range(5):
        A = sym(torch.cat([torch.tensor([10.0, 6.0]), torch.rand(300) * 3]), seed)
        res = be.lanczos(A, 1, tol=1e-3, seed=seed)
        assert res.converged
        assert abs(float(res.eigenvalues[0]) - 10.0) / 10.0 <= 1e-3
        assert float(res.residuals[0]) <= 1e-3 * 10.0


def test_warm_start_from_the_previous_eigenvector():
    A = random_sym(200, 3)
    first = be.lanczos(A, 1, tol=1e-8)
    B = A + 1e-3 * random_sym(200, 4)  # one small step later
    warm = be.lanczos(B, 1, tol=1e-3, v0=first.eigenvectors[:, 0])
    assert warm.num_matvecs <= 4
    exact = torch.linalg.eigvalsh(B)[-1]
    assert abs(float(warm.eigenvalues[0]) - float(exact)) / float(exact) <= 1e-3


def test_invariant_subspace_restarts():
    A = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    v0 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # spans 2 eigenvectors
    res = be.lanczos(A, 4, tol=1e-12, v0=v0)
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=torch.float64)
    )


def test_operator_and_dense_agree():
    A = random_sym(50, 7)

    class Op(be.LinearOperator):
        shape, dtype, device = (50, 50), torch.float64, torch.device("cpu")

        def matvec(self, v):
            return A @ v

    a, b = be.lanczos(A, 3, tol=1e-10), be.lanczos(Op(), 3, tol=1e-10)
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues)
    torch.testing.assert_close(Op().to_dense(), A)


def test_hutchinson_converges_to_the_trace():
    A = random_sym(80, 1) + 3 * torch.eye(80, dtype=torch.float64)
    exact = float(A.trace())
    errors = {}
    for n in (16, 1024):
        runs = [be.hutchinson(A, n, seed=s) for s in range(20)]
        errors[n] = sum(abs(r.estimate - exact) for r in runs) / len(runs)
        # the stated standard error is honest: no run is more than 5 of them away
        assert all(abs(r.estimate - exact) <= 5 * r.stderr for r in runs)
    assert errors[1024] < 0.3 * errors[16]  # about 1/8 expected (1/sqrt(64))


def test_slq_nodes_weights_and_trace():
    A = random_sym(60, 2)
    exact = torch.linalg.eigvalsh(A)
    full = be.slq(A, num_probes=3, num_steps=60)
    # a full Krylov space reproduces the spectrum exactly, with weights summing to one
    for nodes in full.nodes:
        torch.testing.assert_close(nodes, exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(full.weights.sum(dim=1), torch.ones(3, dtype=torch.float64))
    grid = torch.linspace(float(exact[0]) - 3, float(exact[-1]) + 3, 4000, dtype=torch.float64)
    density = full.density(grid, sigma=0.1)
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 1e-3


@pytest.mark.parametrize(
    "eigenvalues",
    [[-2.0, 0.5, 1.0, 40.0], [3.0] * 6, [1e-4, 2e-4, 5e-4, 1e-3], list(range(-20, 21))],
)
@pytest.mark.parametrize("sigma", [None, 0.5])
def test_slq_density_defaults_to_a_grid_over_the_ritz_values(eigenvalues, sigma):
    A = sym(eigenvalues, seed=len(eigenvalues))
    res = be.slq(A, num_probes=2, num_steps=len(eigenvalues))
    grid = res.grid(sigma=sigma)
    width = res.sigma() if sigma is None else sigma
    assert len(grid) >= 400 and grid.dtype == torch.float64
    assert float(grid[1] - grid[0]) <= width / 3 * (1 + 1e-9)  # the kernels are resolved
    torch.testing.assert_close(grid[0], res.nodes.min() - 3 * width)
    torch.testing.assert_close(grid[-1], res.nodes.max() + 3 * width)
    density = res.density(sigma=sigma)
    torch.testing.assert_close(density, res.density(grid, sigma))
    # the grid holds the whole density: it integrates to one (tails beyond 3 sigma: 0.3%)
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 5e-3
    with pytest.raises(ValueError, match="num_points"):
        res.grid(num_points=1)


@pytest.mark.parametrize("estimator", ["slq", "hutchinson"])
def test_slow_estimators_show_progress_over_their_products(estimator, capsys):
    A = random_sym(12, 3)
    if estimator == "slq":
        res = be.slq(A, num_probes=3, num_steps=80, progress=True)  # capped at D = 12
        used = res.num_matvecs
        assert used == 36
    else:
        used = be.hutchinson(A, 7, block_size=3, progress=True).num_matvecs
    err = capsys.readouterr().err
    assert f"{used}/{used}" in err and "product" in err
    (be.slq(A, num_probes=1) if estimator == "slq" else be.hutchinson(A, 3))
    assert capsys.readouterr().err == ""  # off by default


def test_slq_trace_converges():
    A = random_sym(100, 5) + 2 * torch.eye(100, dtype=torch.float64)
    exact = float(A.trace())
    err = {
        n: sum(
            abs(be.slq(A, num_probes=n, num_steps=20, seed=s).trace() - exact) for s in range(10)
        )
        for n in (2, 128)
    }
    assert err[128] < 0.3 * err[2]
