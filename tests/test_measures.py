"""The public estimators against dense float64 answers on the catalogue of tiny cases."""

import functools
import math
import warnings

import pytest
import torch

import breakeven as be
from breakeven.operators.dense import (
    dense_covariance,
    dense_gradients,
    dense_hessian,
    per_example_hessians,
)
from cases import exact_hessian, make_case


@pytest.mark.parametrize("k", [1, 3])
def test_hessian_eigenvalues_equal_eigvalsh(case, k):
    res = be.hessian_eigenvalues(case.model, case.loss_fn, case.data, k=k, tol=1e-10)
    exact = torch.linalg.eigvalsh(exact_hessian(case.name)).flip(0)[:k]
    torch.testing.assert_close(res.eigenvalues, exact, rtol=1e-6, atol=1e-9)
    assert res.converged and res.num_matvecs > 0 and res.seconds > 0
    assert res.bn_mode == "eval" and res.num_examples == len(case.x)
    assert res.eigenvectors.shape == (sum(p.numel() for p in case.model.parameters()), k)


class Saddle(torch.nn.Module):
    """Two linear outputs; the loss mean(o1^2) - 10 mean(o2^2) has a large negative curvature."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.lin(x)


def test_top_is_largest_algebraic_on_a_saddle():
    torch.manual_seed(0)
    model = Saddle().double()
    x = torch.randn(30, 3, dtype=torch.float64)

    def loss(out, _):
        return (out[:, 0] ** 2).mean() - 10 * (out[:, 1] ** 2).mean()

    H = dense_hessian(model, loss, (x, torch.zeros(30)))
    ev = torch.linalg.eigvalsh(H)
    assert ev.abs().argmax() == 0 and ev[0] < 0  # the largest magnitude is negative
    res = be.hessian_eigenvalues(model, loss, (x, torch.zeros(30)), k=1, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues[0], ev[-1], rtol=1e-6, atol=0)
    assert res.eigenvalues[0] > 0


def test_hessian_chunk_size_does_not_change_the_result():
    c = make_case("mlp_ce", n=30)
    a = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, k=2, tol=1e-10)
    b = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, k=2, tol=1e-10, chunk_size=7)
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-9, atol=0)


def test_hessian_trace_converges():
    c = make_case("mlp_ce")
    exact = float(exact_hessian("mlp_ce").trace())
    err = {}
    for n in (8, 512):
        runs = [
            be.hessian_trace(c.model, c.loss_fn, c.data, num_samples=n, seed=s) for s in range(8)
        ]
        err[n] = sum(abs(r.estimate - exact) for r in runs) / len(runs)
        assert all(abs(r.estimate - exact) <= 5 * r.stderr for r in runs)
        assert all(r.num_matvecs == n for r in runs)
    assert err[512] < 0.3 * err[8]


def test_hessian_density_matches_the_spectrum():
    c = make_case("mlp_ce")
    H = exact_hessian("mlp_ce")
    dim = H.shape[0]
    res = be.hessian_density(c.model, c.loss_fn, c.data, num_probes=2, num_steps=dim)
    exact = torch.linalg.eigvalsh(H)
    torch.testing.assert_close(res.nodes[0], exact, rtol=1e-6, atol=1e-8)
    grid = torch.linspace(float(exact[0]) - 1, float(exact[-1]) + 1, 3000, dtype=torch.float64)
    assert abs(float(torch.trapezoid(res.density(grid, 0.05), grid)) - 1) < 1e-3


# --------------------------------------------------------------------------- K


def batches_of(c, m):
    return [(c.x[i : i + m], c.y[i : i + m]) for i in range(0, len(c.x), m)]


@pytest.mark.examples(24)
def test_gradient_covariance_equals_dense(case):
    batches = batches_of(case, 3)  # L = 8, M = 3
    s = be.gradient_covariance(case.model, case.loss_fn, batches)
    K = dense_covariance(dense_gradients(case.model, case.loss_fn, batches))
    r = min(7, K.shape[0])  # rank of K: at most L - 1 and at most D
    exact = torch.linalg.eigvalsh(K).flip(0)[:r]
    torch.testing.assert_close(s.eigenvalues[:r], exact, rtol=1e-8, atol=1e-14)
    assert s.eigenvalues[r:].abs().max() < 1e-12 * s.top  # centring: the L-th is zero
    assert s.top == pytest.approx(float(exact[0]), rel=1e-10)
    if r == 7:
        assert s.smallest_nonzero == pytest.approx(float(exact[6]), rel=1e-8)
        assert s.condition == pytest.approx(float(exact[6] / exact[0]), rel=1e-8)
    assert s.trace == pytest.approx(float(K.trace()), rel=1e-10)
    assert (s.batch_size, s.num_batches) == (3, 8)
    assert s.per_example_top == pytest.approx(3 * s.top)
    assert s.per_example_trace == pytest.approx(3 * s.trace)


def test_eigenvectors_and_alignment_against_dense():
    c = make_case("mlp_ce", n=40)
    batches = batches_of(c, 4)  # L = 10
    s = be.gradient_covariance(c.model, c.loss_fn, batches)
    K = dense_covariance(dense_gradients(c.model, c.loss_fn, batches))
    _, vecs = torch.linalg.eigh(K)
    U = vecs.flip(1)[:, :5]
    ours = s.eigenvectors(5)
    torch.testing.assert_close(
        (ours.T @ U).abs(), torch.eye(5, dtype=torch.float64), atol=1e-8, rtol=0
    )
    g = torch.randn(K.shape[0], dtype=torch.float64)
    torch.testing.assert_close(s.projection(g, 5).abs(), (U.T @ g).abs(), rtol=1e-8, atol=1e-12)
    expected = float(g.norm() / (U @ (U.T @ g)).norm())
    assert be.gradient_alignment(g, s, k=5) == pytest.approx(expected, rel=1e-8)
    parts = [p.detach().clone() for p in c.model.parameters()]
    flat = torch.cat([p.reshape(-1) for p in parts])
    assert be.gradient_alignment(parts, s, k=3) == pytest.approx(be.gradient_alignment(flat, s, 3))
    assert be.gradient_alignment(U[:, 0], s, k=5) == pytest.approx(1.0)


@pytest.mark.parametrize("case", ["mlp_ce", "cnn", "cnn_bn"], indirect=True)
@pytest.mark.examples(10)
def test_per_example_covariance_equals_a_loop(case):
    s = be.per_example_gradient_covariance(case.model, case.loss_fn, case.x, case.y, chunk_size=4)
    loop = [(case.x[i : i + 1], case.y[i : i + 1]) for i in range(10)]
    K = dense_covariance(dense_gradients(case.model, case.loss_fn, loop, bn_mode="eval"))
    torch.testing.assert_close(
        s.eigenvalues[:9], torch.linalg.eigvalsh(K).flip(0)[:9], rtol=1e-8, atol=1e-13
    )
    assert (s.batch_size, s.num_batches, s.bn_mode) == (1, 10, "eval")


def test_per_example_covariance_falls_back_with_a_reason():
    c = make_case("lstm", n=8)
    with pytest.warns(RuntimeWarning, match="vmap cannot batch this model"):
        s = be.per_example_gradient_covariance(c.model, c.loss_fn, c.x, c.y)
    loop = [(c.x[i : i + 1], c.y[i : i + 1]) for i in range(8)]
    K = dense_covariance(dense_gradients(c.model, c.loss_fn, loop, bn_mode="eval"))
    torch.testing.assert_close(
        s.eigenvalues[:7], torch.linalg.eigvalsh(K).flip(0)[:7], rtol=1e-8, atol=1e-13
    )


# --------------------------------------------------------------------------- curvature, stability


@functools.cache
def top_curvatures(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top Hessian eigenvector of the case ``name`` (``n`` examples) and each example's
    curvature along it, from dense per-example Hessians; computed once for the three methods
    (seconds for the LSTM): do not modify them."""
    c = make_case(name, n=n)
    e = torch.linalg.eigh(dense_hessian(c.model, c.loss_fn, c.data))[1][:, -1]
    Hi = per_example_hessians(c.model, c.loss_fn, c.x, c.y)
    return e, torch.einsum("d,nde,e->n", e, Hi, e)


@pytest.mark.examples(8)
@pytest.mark.parametrize("method", ["auto", "forward", "reverse"])
def test_curvature_variance_equals_explicit_per_example_hessians(case, method):
    e, exact = top_curvatures(case.name, len(case.x))
    ours = be.per_example_curvatures(
        case.model, case.loss_fn, case.data, e, method=method, chunk_size=3
    )
    torch.testing.assert_close(ours, exact, rtol=1e-9, atol=1e-12)
    var = be.curvature_variance(case.model, case.loss_fn, case.data, e, method=method)
    assert var == pytest.approx(float(exact.var(unbiased=False)), rel=1e-8)


def test_curvature_of_mean_is_the_rayleigh_quotient():
    c = make_case("mlp_ce")
    res = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, tol=1e-10)
    curv = be.per_example_curvatures(c.model, c.loss_fn, c.data, res.eigenvectors[:, 0])
    assert float(curv.mean()) == pytest.approx(float(res.eigenvalues[0]), rel=1e-8)


def test_stability_formula():
    # S = N: no noise term; the break-even point of full-batch GD is lambda = 2 / eta
    assert be.stability(0.1, 100, 100, 20.0, 5.0) == pytest.approx(1.0)
    assert be.stability(0.1, 100, 100, 10.0, 5.0) == pytest.approx(0.0)
    # noise term: s^2 eta^2 (N - S) / (S (N - 1))
    got = be.stability(0.01, 10, 1001, 50.0, 400.0)
    assert got == pytest.approx(0.25 + 400 * 1e-4 * 991 / (10 * 1000))
    with pytest.raises(ValueError, match="batch_size"):
        be.stability(0.1, 0, 100, 1.0, 1.0)
    with pytest.raises(ValueError, match="eta"):
        be.stability(-0.1, 10, 100, 1.0, 1.0)


def test_lanczos_warns_when_not_converged():
    c = make_case("cnn")
    with pytest.warns(RuntimeWarning, match="did not reach"):
        res = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, k=3, tol=1e-14, max_iter=4)
    assert not res.converged and res.num_matvecs == 4


def test_no_warning_when_converged():
    c = make_case("mlp_ce")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = be.hessian_eigenvalues(c.model, c.loss_fn, c.data)
    assert res.converged and math.isfinite(float(res.eigenvalues[0]))


def test_warm_start_from_an_overtaken_eigenvector_still_finds_the_top():
    """From e_2 alone Lanczos stops at once on lambda_2 (an exact eigenpair); the start
    mixes in the gradient and a random vector, so the top is still found."""
    c = make_case("mlp_ce")
    evals, evecs = torch.linalg.eigh(exact_hessian("mlp_ce"))
    e2 = evecs[:, -2]
    plain = be.lanczos(be.HessianOperator(c.model, c.loss_fn, c.data), 1, v0=e2)
    assert plain.eigenvalues[0] == pytest.approx(float(evals[-2]), rel=1e-8)  # the trap
    res = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, v0=e2, tol=1e-8)
    assert res.eigenvalues[0] == pytest.approx(float(evals[-1]), rel=1e-6)


# --------------------------------------------------------------------------- Eq. 1, one operator


def _bn_net():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(48, 4),
    ).double()
    with torch.no_grad():  # running statistics unlike any chunk's: the two modes differ
        model[1].running_mean.uniform_(-1.0, 1.0)
        model[1].running_var.uniform_(0.2, 3.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 6, 6, generator=g, dtype=torch.float64)
    return model, (x, torch.randint(0, 4, (32,), generator=g))


def _measured(model, probe, spec):
    tracker = be.build_tracker(
        spec, probe=probe, train_data=probe, lr=0.05, batch_size=8, n_train=1000
    )
    tracker.before_step(0, model)
    tracker.after_step(0, model)
    return {r["measure"]: r["values"] for r in tracker.records_}


def _exact_stability(model, probe, bn_mode, chunk):
    H = dense_hessian(model, torch.nn.CrossEntropyLoss(), probe, chunk_size=chunk, bn_mode=bn_mode)
    lam, vecs = torch.linalg.eigh(H)
    s2 = be.curvature_variance(
        model, torch.nn.CrossEntropyLoss(), probe, vecs[:, -1], chunk_size=chunk, bn_mode=bn_mode
    )
    return float(lam[-1]), s2


@functools.cache
def _exact_bn_stability(mode, chunk):
    """:func:`_exact_stability` of :func:`_bn_net` (seconds): computed once per mode and
    chunk size for the tests below."""
    return _exact_stability(*_bn_net(), mode, chunk)


@pytest.mark.parametrize(
    ("hessian", "stability", "mode", "chunk"),
    [
        ({}, {}, "eval", None),
        ({"bn_mode": "train", "chunk_size": 8}, {}, "train", 8),  # follows the hessian measure
        ({}, {"bn_mode": "train", "chunk_size": 8}, "train", 8),  # its own operator
        ({"bn_mode": "train", "chunk_size": 8}, {"bn_mode": "eval"}, "eval", 8),
        (None, {"bn_mode": "train", "chunk_size": 16}, "train", 16),  # no hessian measure
        (None, {"bn_mode": "train"}, "train", 8),  # the SGD step's: chunks of the batch size
        ({"bn_mode": "train"}, {}, "train", None),  # follows the hessian measure, whole probe
    ],
)
def test_stability_takes_lambda_e_and_s2_from_one_operator(hessian, stability, mode, chunk):
    model, probe = _bn_net()
    spec = {"stability": {"every": 1, **stability}}
    if hessian is not None:
        spec = {"hessian": {"every": 1, **hessian}, **spec}
    st = _measured(model, probe, spec)["stability"]
    lam, s2 = _exact_bn_stability(mode, chunk)
    assert st["lambda_H_1"] == pytest.approx(lam, rel=1e-4)
    assert st["s2"] == pytest.approx(s2, rel=1e-3)
    assert st["stability"] == pytest.approx(be.stability(0.05, 8, 1000, lam, s2), rel=1e-3)


def test_the_two_batchnorm_modes_are_different_matrices():
    eval_mode = _exact_bn_stability("eval", None)
    train_mode = _exact_bn_stability("train", 8)
    assert abs(eval_mode[1] - train_mode[1]) > 0.1 * min(eval_mode[1], train_mode[1])


@pytest.mark.parametrize("i", range(12))
def test_stability_s2_within_1e_3_of_the_exact_eigenvector(i):
    """The eigenvalue tolerance (1e-3) leaves s^2 off by up to 0.6% on this family; the
    stability measure's residual tolerance (1e-4) keeps it within 1e-3."""
    from test_certificate import random_problem

    model, probe = random_problem(i)
    st = _measured(model, probe, {"hessian": {"every": 1}, "stability": {"every": 1}})["stability"]
    lam, s2 = _exact_stability(model, probe, "eval", None)
    assert st["s2"] == pytest.approx(s2, rel=1e-3)
    assert st["lambda_H_1"] == pytest.approx(lam, rel=1e-4)
    assert st["residual_H_1"] <= 1e-4 * abs(st["lambda_H_1"])


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d, lf: be.hessian_eigenvalues(m, lf, d),
        lambda m, d, lf: be.hessian_trace(m, lf, d, num_samples=2),
        lambda m, d, lf: be.hessian_density(m, lf, d, num_steps=3),
        lambda m, d, lf: be.HessianOperator(m, lf, d),
        lambda m, d, lf: be.curvature_variance(m, lf, d, torch.ones(57, dtype=torch.float64)),
        lambda m, d, lf: be.gradient_covariance(
            m, lf, [(d[0][:4], d[1][:4]), (d[0][4:8], d[1][4:8])]
        ),
        lambda m, d, lf: be.per_example_gradient_covariance(m, lf, *d),
        lambda m, d, lf: be.Tracker([be.HessianTop()], be.every(1), loss_fn=lf),
    ],
)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_a_loss_that_is_not_mean_reduced_is_refused(call, reduction):
    c = make_case("mlp_ce")  # 57 parameters
    with pytest.raises(ValueError, match="reduction='mean'"):
        call(c.model, c.data, torch.nn.CrossEntropyLoss(reduction=reduction))


def test_k_below_the_precision_of_its_gradients_is_unresolved():
    """Gradients of rank 3 (float32): the centred Gram has rank 3, not L - 1 = 7;
    lambda_K^* is round-off, reported unresolved and recorded as NaN."""
    from breakeven.measures.covariance import spectrum_of

    g = torch.Generator().manual_seed(0)
    low = torch.randn(8, 3, generator=g) @ torch.randn(3, 500, generator=g)
    spec = spectrum_of(be.GradientCovarianceOperator.from_gradients(low, batch_size=1))
    assert spec.numerical_rank == 3 and not spec.resolved
    assert spec.smallest_nonzero <= spec.resolution == pytest.approx(1.1920929e-07 * spec.top)
    full = torch.randn(8, 500, generator=g)
    spec = spectrum_of(be.GradientCovarianceOperator.from_gradients(full, batch_size=1))
    assert spec.numerical_rank == 7 and spec.resolved
    spec64 = spectrum_of(be.GradientCovarianceOperator.from_gradients(low.double(), batch_size=1))
    assert spec64.resolution == pytest.approx(2.220446e-16 * spec64.top)


@pytest.mark.parametrize("storage", ["memory", "cpu", "disk"])
def test_k_resolution_is_the_same_wherever_the_gradients_are_kept(storage):
    c = make_case("cnn")
    model = c.model.float()
    batches = [(c.x[i : i + 3].float(), c.y[i : i + 3]) for i in range(0, 12, 3)]
    spec = be.gradient_covariance(model, c.loss_fn, batches, storage=storage)
    assert spec.resolution == pytest.approx(1.1920929e-07 * spec.top)
    assert spec.numerical_rank == 3 and spec.resolved


def test_the_covariance_record_marks_an_unresolved_lambda_k_star():
    c = make_case("mlp_ce", n=64)
    model, (x, y) = c.model.float(), (c.x.float(), c.y)
    with torch.no_grad():  # a flat model: every per-example gradient is zero but the bias part
        for p in model.parameters():
            p.zero_()
    rec = _measured(model, (x, y), {"covariance": {"every": 1, "num_batches": 8, "batch_size": 1}})
    cov = rec["covariance"]
    assert cov["rank_K"] < cov["L"] - 1
    assert math.isnan(cov["lambda_K_star"]) and math.isnan(cov["condition_K"])
    assert cov["resolution_K"] == pytest.approx(1.1920929e-07 * cov["lambda_K_1"])
