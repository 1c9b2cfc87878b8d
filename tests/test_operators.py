"""Every curvature operator against a dense float64 torch.func reference on tiny cases."""

import dataclasses

import pytest
import torch

import breakeven as be
from breakeven._core.functional import functional_loss
from breakeven._core.params import flatten, trainable, unflatten
from breakeven._core.state import measuring
from breakeven.operators.covariance import _centred_blocks, centred_gram
from breakeven.operators.dense import dense_covariance, dense_gradients, dense_hessian
from cases import exact_hessian, make_case


@pytest.mark.parametrize("method", ["reverse", "forward"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_hessian_operator_equals_dense(case, method, chunk_size):
    H = exact_hessian(case.name)
    op = be.HessianOperator(
        case.model, case.loss_fn, case.data, chunk_size=chunk_size, method=method
    )
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-10, atol=1e-12)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == op.shape[0] + 1


def test_linear_mse_closed_form():
    c = make_case("linear_mse", n=9)
    xt = torch.cat([c.x, torch.ones(9, 1, dtype=torch.float64)], dim=1)
    H = 2 / 9 * xt.T @ xt  # weight (1, 4) row-major, then bias
    op = be.HessianOperator(c.model, c.loss_fn, c.data, chunk_size=2)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-12, atol=1e-12)


def test_iterable_data_equals_tuple():
    c = make_case("mlp_ce")
    batches = [(c.x[:5], c.y[:5]), (c.x[5:], c.y[5:])]
    a = be.HessianOperator(c.model, c.loss_fn, batches).to_dense()
    b = be.HessianOperator(c.model, c.loss_fn, c.data).to_dense()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [4, 6])
def test_train_mode_batchnorm_is_defined_by_the_chunks(chunk_size):
    c = make_case("cnn_bn")
    op = be.HessianOperator(c.model, c.loss_fn, c.data, chunk_size=chunk_size, bn_mode="train")
    H = dense_hessian(c.model, c.loss_fn, c.data, chunk_size=chunk_size, bn_mode="train")
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-10, atol=1e-12)
    # and it differs from the eval-mode Hessian: the mode matters and is recorded
    assert not torch.allclose(H, dense_hessian(c.model, c.loss_fn, c.data))


def test_forward_mode_with_train_batchnorm_is_refused():
    c = make_case("cnn_bn")
    with pytest.raises(ValueError, match="method='reverse'"):
        be.HessianOperator(c.model, c.loss_fn, c.data, bn_mode="train", method="forward")


def test_train_mode_batchnorm_hessian_against_finite_differences():
    """torch.func's Hessian is wrong here (torch 2.13): check against an independent oracle."""
    c = make_case("cnn_bn")
    params = trainable(c.model)
    theta, eps = flatten(params.values()), 1e-6
    with measuring(c.model, "train"):
        f = functional_loss(c.model, c.loss_fn)

        def grad(t):
            t = t.clone().requires_grad_(True)
            return torch.autograd.grad(f(unflatten(t, params), c.x, c.y), t)[0]

        fd = torch.stack(
            [
                (grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps)
                for e in torch.eye(len(theta), dtype=torch.float64)
            ],
            dim=1,
        )
    op = be.HessianOperator(c.model, c.loss_fn, c.data, bn_mode="train")
    torch.testing.assert_close(op.to_dense(), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.examples(20)
def test_covariance_operator_equals_dense(case):
    batches = [(case.x[i : i + 4], case.y[i : i + 4]) for i in range(0, 20, 4)]
    op = be.GradientCovarianceOperator(case.model, case.loss_fn, batches)
    K = dense_covariance(dense_gradients(case.model, case.loss_fn, batches))
    torch.testing.assert_close(op.to_dense(), K, rtol=1e-10, atol=1e-13)
    nonzero = torch.linalg.eigvalsh(K).flip(0)[:4]
    torch.testing.assert_close(torch.linalg.eigvalsh(op.gram()).flip(0)[:4], nonzero)


def test_gram_is_accumulated_in_float64():
    """Gradients whose spread spans four decades: lambda_K^* many decades below lambda_K^1."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -5, 25, dtype=torch.float64)[:, None]
    grads = (1.0 + scales * torch.randn(25, 3000, generator=g, dtype=torch.float64)).float()
    exact = grads.double() - grads.double().mean(0)
    exact = torch.linalg.eigvalsh(exact @ exact.T / 25)
    ours = torch.linalg.eigvalsh(centred_gram(grads))
    torch.testing.assert_close(ours[1:], exact[1:], rtol=1e-8, atol=0)
    # the float32 route loses lambda_K^* entirely
    c32 = grads - grads.mean(0)
    e32 = torch.linalg.eigvalsh((c32 @ c32.T / 25).double())
    assert (e32[1] - exact[1]).abs() / exact[1] > 1e-2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gram_and_products_with_zero_columns_equal_dense(seed, threads):
    """Blocks whose gradients are mostly zero (an embedding's unseen rows) drop the columns that
    are zero in every gradient; with several threads the Gram is a batched product of column
    chunks. Both must equal the dense float64 K, also where a dropped-looking column holds a
    nan or is zero in the first gradient only."""
    g = torch.Generator().manual_seed(seed)
    L, D = 6, 3 * 4096 + 77
    grads = torch.randn(L, D, generator=g) * 10.0 ** torch.randint(-3, 3, (1,), generator=g)
    dense_part = int(torch.randint(0, 2, (1,), generator=g))  # one block stays dense or not
    zero = torch.rand(D, generator=g) < 0.9
    zero[: 4096 * dense_part] = False
    grads[:, zero] = 0.0
    grads[0, 5000] = 0.0  # zero in the first gradient only: kept
    blocks = list(grads.split(4096, dim=1))
    G = grads.double() - grads.double().mean(0)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        op = be.GradientCovarianceOperator.from_gradients(blocks, batch_size=1)
        torch.testing.assert_close(op.gram(), G @ G.T / L, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op.matvec(v), G.T @ (G @ v) / L, rtol=1e-12, atol=1e-12)
        kept = sum(b.shape[1] for _, b in _centred_blocks(blocks))
        dense = 4096 * dense_part
        assert kept == dense + int(grads[:, dense:].ne(0).any(0).sum())  # the zeros were dropped
        grads[1, int(zero.nonzero()[0])] = float("nan")
        with pytest.raises(ValueError, match="not finite"):
            centred_gram(blocks)
    finally:
        torch.set_num_threads(old)


@pytest.mark.filterwarnings("ignore:torch.func.vmap cannot batch:RuntimeWarning")
def test_rank_one_factors_of_linear_layers_equal_the_materialised_gradients(case):
    """Per-example K keeps each linear weight's gradients as factors (a_i, delta_i): the
    Gram, C v, C^T a, |g|^2 and the rows equal those of the materialised gradients."""
    from breakeven.operators.covariance import (
        GradientCovarianceOperator,
        RankOneRows,
        _per_example_blocks,
    )

    kw = {"chunk_size": 5, "bn_mode": "eval"}
    factored = _per_example_blocks(
        case.model, case.loss_fn, case.x, case.y, factor_linear=True, **kw
    )
    plain = _per_example_blocks(case.model, case.loss_fn, case.x, case.y, factor_linear=False, **kw)
    linears = [m for m in case.model.modules() if isinstance(m, torch.nn.Linear)]
    # the LSTM falls back to a loop (vmap cannot batch it): nothing is factored there
    expected = 0 if case.name == "lstm" else len(linears)
    assert sum(isinstance(b, RankOneRows) for b in factored) == expected
    F = GradientCovarianceOperator.from_gradients(factored, 1)
    P = GradientCovarianceOperator.from_gradients(plain, 1)
    torch.testing.assert_close(F.gradients, P.gradients, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(F.gram(), P.gram(), rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(F.shape[0], generator=g, dtype=torch.float64)
    a = torch.randn(F.num_batches, generator=g, dtype=torch.float64)
    torch.testing.assert_close(F.centred_products(v), P.centred_products(v), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        F.transpose_products(a), P.transpose_products(a), rtol=1e-9, atol=1e-12
    )
    assert F.mean_norm_sq() == pytest.approx(P.mean_norm_sq(), rel=1e-10)
    torch.testing.assert_close(F @ v, P @ v, rtol=1e-9, atol=1e-12)


class _Twice(torch.nn.Module):  # f called twice; seq on a 3-D input
    def __init__(self):
        super().__init__()
        self.f, self.seq = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.seq(x).mean(1) + self.f(self.f(x.mean(1)))[:, :3]


class _Rows(torch.nn.Module):  # one example's sequence flattened to (T, d) rows
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.reshape(-1, 4)).reshape(x.shape[0], -1, 3).mean(1)


class _Direct(torch.nn.Module):  # fc's weight also used outside fc
    def __init__(self):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x.mean(1)))
        return self.out(torch.tanh(h @ self.fc.weight.T))


class _Tied(torch.nn.Module):  # two modules share one weight
    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
        self.fc2.weight = self.fc.weight
        self.out = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc(x.mean(1))))))


@pytest.mark.parametrize(
    ("model", "factored"), [(_Twice, []), (_Rows, []), (_Direct, ["out"]), (_Tied, ["out"])]
)
def test_only_true_rank_one_layers_are_factored(model, factored):
    """A layer called twice, on several rows per example, whose weight is also used outside
    it or shared, is not factored; the Gram always equals the materialised one."""
    from breakeven.operators.covariance import RankOneRows, _per_example_blocks, centred_gram

    torch.manual_seed(0)
    m = model().double()
    x, y = torch.randn(6, 5, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    loss = torch.nn.CrossEntropyLoss()
    blocks = _per_example_blocks(m, loss, x, y, chunk_size=None, bn_mode="eval")
    names = [n for n, p in m.named_parameters()]
    assert [n.rsplit(".", 1)[0] for n, b in zip(names, blocks) if isinstance(b, RankOneRows)] == (
        factored
    )
    plain = _per_example_blocks(m, loss, x, y, chunk_size=None, bn_mode="eval", factor_linear=False)
    torch.testing.assert_close(centred_gram(blocks), centred_gram(plain), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("storage", ["cpu", "disk"])
@pytest.mark.parametrize("case", ["mlp_ce", "cnn_bn"], indirect=True)
def test_stored_gradients_give_the_same_operator(case, storage):
    """K from gradients kept in host memory or a temporary file, one batch at a time,
    equals K from the vmap pass (Gram, products, the gradients themselves)."""
    from breakeven.operators.covariance import GradientCovarianceOperator

    batches = [(case.x[i : i + 3], case.y[i : i + 3]) for i in range(0, 12, 3)]
    ref = GradientCovarianceOperator(case.model, case.loss_fn, batches)
    op = GradientCovarianceOperator(case.model, case.loss_fn, batches, storage=storage)
    torch.testing.assert_close(op.gradients, ref.gradients, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.gram(), ref.gram(), rtol=1e-10, atol=1e-14)
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op @ v, ref @ v, rtol=1e-10, atol=1e-14)
    assert op.mean_norm_sq() == pytest.approx(ref.mean_norm_sq(), rel=1e-12)
    torch.testing.assert_close(
        op.to_dense(), dense_covariance(ref.gradients), rtol=1e-8, atol=1e-12
    )
    with pytest.raises(ValueError, match="storage='gpu' is invalid"):
        GradientCovarianceOperator(case.model, case.loss_fn, batches, storage="gpu")


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_hessian_matmat_equals_one_product_per_column(case, chunk_size):
    V = torch.randn(
        exact_hessian(case.name).shape[0],
        4,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )
    op = be.HessianOperator(case.model, case.loss_fn, case.data, chunk_size=chunk_size)
    HV = op @ V
    assert op.num_matvecs == 4
    torch.testing.assert_close(HV, exact_hessian(case.name) @ V, rtol=1e-8, atol=1e-10)
    for j in range(4):
        torch.testing.assert_close(HV[:, j], op @ V[:, j], rtol=1e-10, atol=1e-12)


def test_hutchinson_blocks_do_not_change_the_estimate():
    c = make_case("cnn_bn")
    op = be.HessianOperator(c.model, c.loss_fn, c.data)
    one = be.hutchinson(op, 10, seed=3, block_size=1)
    four = be.hutchinson(op, 10, seed=3, block_size=4)
    torch.testing.assert_close(one.samples, four.samples, rtol=1e-10, atol=1e-12)
    dense = be.hutchinson(exact_hessian("cnn_bn"), 10, seed=3, block_size=4)
    torch.testing.assert_close(dense.samples, one.samples, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="block_size"):
        be.hutchinson(op, 10, block_size=0)


def test_disk_storage_keeps_bfloat16_gradients():
    from breakeven.operators.covariance import GradientCovarianceOperator

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3).to(torch.bfloat16)
    x, y = torch.randn(8, 4).to(torch.bfloat16), torch.randint(0, 3, (8,))
    batches = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    loss = torch.nn.CrossEntropyLoss()
    disk = GradientCovarianceOperator(m, loss, batches, storage="disk")
    cpu = GradientCovarianceOperator(m, loss, batches, storage="cpu")
    assert disk.gradients.dtype == torch.bfloat16
    assert torch.equal(disk.gradients, cpu.gradients) and torch.equal(disk.gram(), cpu.gram())


def test_k_of_convolutional_and_recurrent_models_is_computed_by_a_loop():
    """vmap over the batches pays for matrix products only; convolutions and recurrent
    modules take the loop of plain backward passes (the training loop's own cost). Both
    paths are checked against dense gradients on the catalogue (test_measures)."""
    from breakeven.operators.covariance import _vmap_pays, gradient_blocks, stored_gradient_blocks

    assert _vmap_pays(make_case("mlp_ce").model) and _vmap_pays(make_case("linear_mse").model)
    assert not _vmap_pays(make_case("cnn").model) and not _vmap_pays(make_case("lstm").model)
    c = make_case("cnn")
    xs, ys = c.x.reshape(4, 3, 1, 6, 6), c.y.reshape(4, 3)
    looped = stored_gradient_blocks(c.model, c.loss_fn, xs, ys, bn_mode="train", storage="memory")
    vmapped = gradient_blocks(c.model, c.loss_fn, xs, ys, bn_mode="train", per_pass=None)
    torch.testing.assert_close(torch.cat(looped, 1), torch.cat(vmapped, 1), rtol=1e-12, atol=1e-14)


class _ReadsAValue(torch.nn.Module):
    """A tiny model vmap cannot batch: its forward pass reads a value (``.item()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        h = self.lin(x)
        return h if h.abs().sum().item() >= 0 else -h


@pytest.mark.parametrize("n_models", [1, 2])
def test_a_model_vmap_cannot_batch_warns_once_per_model_in_one_line(n_models):
    import warnings

    torch.manual_seed(0)
    models = [_ReadsAValue().double() for _ in range(n_models)]
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    loss_fn = torch.nn.functional.cross_entropy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # three measurements of each model
            results = [be.per_example_gradient_covariance(m, loss_fn, x, y) for m in models]
    assert len(caught) == n_models, [str(w.message) for w in caught]  # nothing from PyTorch
    for w in caught:
        message = str(w.message)
        assert w.category is RuntimeWarning and "\n" not in message and len(message) < 250
        assert message.startswith("torch.func.vmap cannot batch this model (_ReadsAValue;")
    for m, s in zip(models, results):  # the loop gives the exact per-example K
        loop = [(x[i : i + 1], y[i : i + 1]) for i in range(6)]
        K = dense_covariance(dense_gradients(m, loss_fn, loop, bn_mode="eval"))
        torch.testing.assert_close(
            s.eigenvalues[:5], torch.linalg.eigvalsh(K).flip(0)[:5], rtol=1e-8, atol=1e-13
        )


@pytest.mark.examples(10)
def test_per_example_gradients_and_covariance_from_gradients_equal_dense(case):
    """``be.per_example_gradients``: row i is the gradient of example i's loss (a batch of
    one, eval-mode BatchNorm), flattened in parameter order; ``be.covariance_from_gradients``
    of it: the spectrum of the dense (1/L) centred covariance, in float64."""
    c = case
    G = be.per_example_gradients(c.model, c.loss_fn, c.x, c.y)
    ref = dense_gradients(
        c.model, c.loss_fn, [(c.x[i : i + 1], c.y[i : i + 1]) for i in range(10)], bn_mode="eval"
    )
    torch.testing.assert_close(G, ref, rtol=1e-10, atol=1e-12)
    K = dense_covariance(ref)
    spec = be.covariance_from_gradients(G)
    k = min(9, K.shape[0])  # the non-zero eigenvalues: at most L - 1 and D
    torch.testing.assert_close(
        spec.eigenvalues[:k], torch.linalg.eigvalsh(K).flip(0)[:k], rtol=1e-8, atol=1e-12
    )
    assert spec.trace == pytest.approx(float(K.trace()), rel=1e-10)
    assert (spec.batch_size, spec.num_batches, spec.bn_mode) == (1, 10, None)
    assert spec.eigenvalues.dtype == torch.float64
    # the same spectrum as the estimator that never forms G
    per = be.per_example_gradient_covariance(c.model, c.loss_fn, c.x, c.y)
    torch.testing.assert_close(spec.eigenvalues, per.eigenvalues, rtol=1e-8, atol=1e-12)
    # float32 gradients: the Gram is still float64
    spec32 = be.covariance_from_gradients(G.float())
    assert spec32.eigenvalues.dtype == torch.float64
    assert spec32.resolution == pytest.approx(torch.finfo(torch.float32).eps * spec32.top)


@pytest.mark.parametrize("name", ["mlp_ce", "cnn_bn"])
def test_covariance_from_batch_gradients_is_gradient_covariance(name):
    c = make_case(name, n=20)
    batches = [(c.x[i : i + 4], c.y[i : i + 4]) for i in range(0, 20, 4)]
    ref = be.gradient_covariance(c.model, c.loss_fn, batches)
    G = dense_gradients(c.model, c.loss_fn, batches)
    spec = be.covariance_from_gradients(G, batch_size=4)
    assert type(spec) is type(ref)
    for f in dataclasses.fields(ref):
        a, b = getattr(spec, f.name), getattr(ref, f.name)
        if f.name in ("seconds", "operator", "bn_mode"):
            continue
        if isinstance(a, torch.Tensor):
            if f.name == "gram_eigenvectors":  # up to sign
                a, b = a.abs(), b.abs()
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
        else:
            assert a == pytest.approx(b, rel=1e-8, abs=1e-14), f.name
    by_blocks = be.covariance_from_gradients(list(G.split(3, dim=1)), batch_size=4)
    torch.testing.assert_close(by_blocks.eigenvalues, spec.eigenvalues, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="at least 2 gradients"):
        be.covariance_from_gradients(G[:1])
