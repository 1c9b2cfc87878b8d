"""Hostile tests of round 13: K's dropped zero columns and threaded Gram (13b026c), the
sharpness measure on the schedule alone (6426f9d), configs compared as config.json holds
them (3e6a16e), and the Tracker's argument checks and lambda ids (82798e7). Each bug
this review found has a test here that failed before its fix."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.errors import ConfigError
from breakeven.experiments import run
from breakeven.operators.dense import dense_hessian
from breakeven.operators.hessian import HessianOperator
from breakeven.records import read_config, read_records, read_status
from breakeven.tracking.store import ConfigMismatchError, callable_id
from helpers import param_norm_tracker, run_config
from test_certificate import random_problem

LOSS = nn.CrossEntropyLoss()
REL = 1e-10


# ================================================================ K (13b026c)


def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return old


def _family(name: str, g: torch.Generator) -> list[torch.Tensor]:
    """(L, d_i) gradient blocks of a hostile family."""
    L = 6
    if name == "zero_in_first_row_only":  # the heuristic fires, but no column is dropped
        G = torch.randn(L, 10000, generator=g)
        G[0, :9000] = 0
        return list(G.split(4096, 1))
    if name == "zero_in_some_rows":  # most entries zero, each column in some rows only
        G = torch.randn(L, 10000, generator=g)
        G[torch.rand(L, 10000, generator=g) < 0.9] = 0
        return list(G.split(4096, 1))
    if name == "mostly_dropped":  # columns zero in every row, a few tiny survivors
        G = torch.randn(L, 12000, generator=g)
        G[:, 50:11900] = 0
        G[4, 6000] = 1e-30
        G[2, 7000] = -0.0
        return list(G.split(4096, 1))
    if name == "widths":  # blocks of 1, 2048, 1, 3000 and 4097 columns
        G = torch.randn(L, 9147, generator=g)
        G[:, 100:8000] = 0
        cuts = [0, 1, 2049, 2050, 5050, 9147]
        return [G[:, a:b] for a, b in itertools.pairwise(cuts)]
    if name == "column_major":  # an (L, D) matrix stored transposed
        G = torch.randn(9000, L, generator=g).T
        G[:, :8500] = 0
        return [G]
    if name == "float64":
        G = torch.randn(L, 5000, generator=g, dtype=torch.float64)
        G[:, :4900] = 0
        G[1:, 0] = 1.0
        return [G]
    if name == "bfloat16":
        G = torch.randn(L, 5000, generator=g).bfloat16()
        G[:, :4900] = 0
        return [G]
    if name == "huge_and_tiny":  # scales 1e-20 .. 1e20 in surviving columns
        G = torch.randn(L, 6000, generator=g, dtype=torch.float64)
        G[:, 100:] = 0
        G[:, :50] *= 1e20
        G[:, 50:100] *= 1e-20
        return [G]
    raise ValueError(name)


FAMILIES = [
    "zero_in_first_row_only",
    "zero_in_some_rows",
    "mostly_dropped",
    "widths",
    "column_major",
    "float64",
    "bfloat16",
    "huge_and_tiny",
]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> None:
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rel * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_K_equals_the_dense_float64_reference(family, threads):
    g = torch.Generator().manual_seed(FAMILIES.index(family))
    blocks = _family(family, g)
    G = torch.cat(blocks, 1).double()
    L = G.shape[0]
    C = G - G.mean(0)
    K_gram = C @ C.T / L
    old = _threads(threads)
    try:
        op = be.GradientCovarianceOperator.from_gradients(blocks, batch_size=1)
        _close(op.gram(), K_gram)
        spec = be.covariance_from_gradients(blocks, 1)
        ev = torch.linalg.eigvalsh(K_gram).flip(0)
        _close(spec.eigenvalues, ev)
        assert spec.trace == pytest.approx(float((C * C).sum()) / L, rel=REL)
        for _ in range(3):
            v = torch.randn(G.shape[1], generator=g, dtype=torch.float64)
            a = torch.randn(L, generator=g, dtype=torch.float64)
            _close(op.matvec(v), C.T @ (C @ v) / L)
            _close(op.centred_products(v), C @ v)
            _close(op.transpose_products(a), C.T @ a)
        # the eigenvectors of K in parameter space are those of the dense K
        k = 2
        U = spec.eigenvectors(k)
        K = C.T @ C / L
        for i in range(k):
            _close(K @ U[:, i], ev[i] * U[:, i], rel=1e-8)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("row", [0, 3])
def test_a_non_finite_gradient_in_a_droppable_column_is_reported(bad, row):
    """A column that is zero in every other gradient and holds nan/inf is never dropped: the
    Gram and the spectrum raise, the products carry the nan."""
    G = torch.randn(5, 5000)
    G[:, :4900] = 0
    G[row, 17] = bad
    for threads in (1, 2):
        old = _threads(threads)
        try:
            with pytest.raises(ValueError, match="not finite"):
                be.covariance_from_gradients([G], 1)
            op = be.GradientCovarianceOperator.from_gradients([G], 1)
            v = torch.randn(5000, dtype=torch.float64)
            assert not torch.isfinite(op.matvec(v)).all()
            assert not torch.isfinite(op.transpose_products(torch.ones(5, dtype=torch.float64)))[17]
        finally:
            torch.set_num_threads(old)


def test_a_non_finite_vector_propagates_through_K():
    G = torch.randn(5, 5000)
    G[:, :4900] = 0  # columns 0..4899 are dropped
    op = be.GradientCovarianceOperator.from_gradients([G], 1)
    C = G.double() - G.double().mean(0)
    v = torch.randn(5000, dtype=torch.float64)
    v[10] = math.nan
    assert torch.isnan(C @ v).all()  # the dense reference
    assert torch.isnan(op.centred_products(v)).all()
    assert torch.isnan(op.matvec(v)).all()
    a = torch.randn(5, dtype=torch.float64)
    for bad in (math.nan, math.inf):
        a[3] = bad
        assert torch.isnan(op.transpose_products(a)[:4900]).all()  # 0 * nan, 0 * inf: nan
        w = torch.randn(5000, dtype=torch.float64)
        w[4000] = bad
        assert torch.isnan(op.centred_products(w)).all()


def test_a_large_finite_vector_stays_finite_through_K():
    """No false nan: 0 * max|v| of finite entries near the float64 limit is 0."""
    G = torch.randn(5, 5000)
    G[:, :4900] = 0
    op = be.GradientCovarianceOperator.from_gradients([G], 1)
    v = torch.zeros(5000, dtype=torch.float64)
    v[:4900] = 1e308  # dropped columns only: C v = 0 exactly
    assert torch.equal(op.centred_products(v), torch.zeros(5, dtype=torch.float64))
    a = torch.full((5,), 1e300, dtype=torch.float64)
    assert torch.isfinite(op.transpose_products(a)).all()


class _Emb(nn.Module):
    """Few of the 6000 tokens are used: the embedding's block is mostly zero columns."""

    def __init__(self, vocab=6000, dim=3, classes=3, sparse=False):
        super().__init__()
        self.e = nn.Embedding(vocab, dim, sparse=sparse)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(self.e(x).mean(1))


def _loop_gradients(model, batches):
    rows = []
    for x, y in batches:
        model.zero_grad()
        LOSS(model(x), y).backward()
        rows.append(torch.cat([p.grad.to_dense().reshape(-1).double() for p in model.parameters()]))
    return torch.stack(rows)


def _embedding_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randint(0, 4, (4, 5), generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(6)
    ]
    batches[3][0][0, 0] = 5999  # one rare token in one batch only
    return batches


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("storage", ["memory", "cpu", "disk"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_K_of_an_embedding_model_with_few_tokens(dtype, storage, threads):
    torch.manual_seed(0)
    model = _Emb().to(dtype)
    batches = _embedding_batches()
    old = _threads(threads)
    try:
        spec = be.gradient_covariance(model, LOSS, batches, storage=storage)
    finally:
        torch.set_num_threads(old)
    G = spec.operator.gradients.double()  # the stored gradients, as the operator holds them
    if dtype == torch.float64:
        _close(G, _loop_gradients(model, batches), rel=1e-12)
    L = G.shape[0]
    C = G - G.mean(0)
    _close(spec.eigenvalues, torch.linalg.eigvalsh(C @ C.T / L).flip(0))
    assert spec.trace == pytest.approx(float((C * C).sum()) / L, rel=REL)
    v = torch.randn(G.shape[1], dtype=torch.float64)
    _close(spec.operator.matvec(v), C.T @ (C @ v) / L)


@pytest.mark.parametrize("threads", [1, 2])
def test_per_example_K_of_an_embedding_model_with_few_tokens(threads):
    torch.manual_seed(0)
    model = _Emb().double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 4, (7, 5), generator=g), torch.randint(0, 3, (7,), generator=g)
    x[2, 0] = 5999
    old = _threads(threads)
    try:
        spec = be.per_example_gradient_covariance(model, LOSS, x, y)
    finally:
        torch.set_num_threads(old)
    G = _loop_gradients(model, [(x[i : i + 1], y[i : i + 1]) for i in range(7)])
    C = G - G.mean(0)
    _close(spec.eigenvalues, torch.linalg.eigvalsh(C @ C.T / 7).flip(0), rel=1e-9)
    v = torch.randn(G.shape[1], dtype=torch.float64)
    _close(spec.operator.matvec(v), C.T @ (C @ v) / 7, rel=1e-9)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_K_of_a_sparse_embedding(storage):
    torch.manual_seed(0)
    model = _Emb(vocab=60, sparse=True).double()
    batches = [(x % 60, y) for x, y in _embedding_batches()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            spec = be.gradient_covariance(model, LOSS, batches, storage=storage)
        except (ValueError, TypeError) as e:  # a clear refusal naming the embedding would do
            assert "sparse" in str(e)
            return
    G = _loop_gradients(model, batches)
    C = G - G.mean(0)
    _close(spec.eigenvalues, torch.linalg.eigvalsh(C @ C.T / 6).flip(0))
    assert model.e.sparse  # restored


def test_H_and_per_example_K_of_a_sparse_embedding_equal_the_dense_ones():
    """Measuring gives a sparse embedding dense gradients meanwhile: the same numbers as the
    same model with sparse=False, and training still gets sparse gradients after."""
    torch.manual_seed(0)
    sparse = _Emb(vocab=60, sparse=True).double()
    dense = _Emb(vocab=60).double()
    dense.load_state_dict(sparse.state_dict())
    x, y = next(iter(_embedding_batches()))
    x = x % 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = [
            (
                be.hessian_eigenvalues(m, LOSS, (x, y), k=2).eigenvalues,
                be.per_example_gradient_covariance(m, LOSS, x, y).eigenvalues,
            )
            for m in (sparse, dense)
        ]
    for a, b in zip(*got):
        _close(a, b, rel=1e-9)
    LOSS(sparse(x), y).backward()
    assert sparse.e.weight.grad.is_sparse


# ================================================================ sharpness (6426f9d)


class _Count:
    """Counts the Hessian-vector products actually computed (columns of batched ones)."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = HessianOperator._hvp_from_graph

        def counted(leaves, grads, v_parts, retain, batched=False):
            self.n += v_parts[0].shape[0] if batched else 1
            return orig(leaves, grads, v_parts, retain, batched=batched)

        monkeypatch.setattr(HessianOperator, "_hvp_from_graph", staticmethod(counted))


def _sharpness_run(i, spec, steps, lr_factor):
    """Full-batch SGD at lr = lr_factor * 2 / lambda_max(0) with the measure at every step;
    per step: the record, the dense Hessian before the step and the vector carried in."""
    model, data = random_problem(100 + i)
    lam0 = float(torch.linalg.eigvalsh(dense_hessian(model, LOSS, data))[-1])
    lr = lr_factor * 2 / lam0
    tracker = be.build_tracker(spec, probe=data, train_data=data, lr=lr, batch_size=len(data[1]))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for step in range(steps):
        H = dense_hessian(model, LOSS, data)
        carried = tracker.state_.get("sharpness", {}).get("v")
        carried = None if carried is None else carried.clone()
        opt.zero_grad()
        LOSS(model(data[0]), data[1]).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tracker.before_step(step, model)
        opt.step()
        tracker.after_step(step, model)
        after = tracker.state_["sharpness"]["v"].clone()
        out.append((tracker.records_[-1], H, carried, after))
    return out


@pytest.mark.parametrize(
    "refresh,tol_fallback",
    [
        (3, math.inf),
        (None, 1e-2),
        (1, 1e-7),
        *(  # the rest of the grid: make test-slow
            pytest.param(r, t, marks=pytest.mark.slow)
            for r, t in itertools.product([1, 3, None], [math.inf, 1e-2, 1e-7])
            if (r, t) not in [(3, math.inf), (None, 1e-2), (1, 1e-7)]
        ),
    ],
)
def test_sharpness_is_honest_at_every_step_beyond_the_edge(monkeypatch, refresh, tol_fallback):
    """lr 1.1 x 2/lambda_max: the top eigenvector turns between steps. At every step theta <=
    lambda_max, an eigenvalue lies within r of theta, a solve's r is its vector's true
    residual, and ``matvecs`` counts the products computed."""
    count = _Count(monkeypatch)
    spec = {
        "sharpness": {
            "every": 1,
            "refresh": refresh,
            "tol_fallback": tol_fallback,
            "tol": min(1e-3, tol_fallback),
        }
    }
    for i in range(4):
        count.n = 0
        out = _sharpness_run(i, spec, steps=10, lr_factor=1.1)
        for rec, H, _, after in out:
            ev = torch.linalg.eigvalsh(H)
            v = rec["values"]
            theta, r = v["sharpness"], v["sharpness_residual"]
            assert theta <= float(ev[-1]) + 1e-10 * abs(float(ev[-1]))
            assert float((ev - theta).abs().min()) <= r * (1 + 1e-9) + 1e-13
            if v["sharpness_fallback"]:
                u = after.double()
                assert float((H @ u - theta * u).norm()) <= r * (1 + 1e-6) + 1e-13
        assert sum(rec["matvecs"] for rec, *_ in out) == count.n


def test_sharpness_on_the_schedule_alone_solves_exactly_on_schedule_or_theta_le_0():
    """tol_fallback=inf: a solve runs at the first measurement, ``refresh`` steps after the
    last solve, and at a step whose carried theta <= 0, nowhere else; the cost is then
    n + (solves)(m - 1) <= n + (ceil(n / refresh) + theta<=0 steps)(m - 1)."""
    refresh, n = 3, 12
    spec = {"sharpness": {"every": 1, "refresh": refresh, "tol_fallback": math.inf}}
    extra_seen = 0
    for i in range(8):
        out = _sharpness_run(i, spec, steps=n, lr_factor=1.1)
        last = None
        negative = 0
        for rec, H, carried, _ in out:
            step, v = rec["step"], rec["values"]
            theta_carried = (
                None if carried is None else float(carried.double() @ H @ carried.double())
            )
            due = last is None or step - last >= refresh
            neg = theta_carried is not None and theta_carried <= 0
            assert v["sharpness_fallback"] == float(due or neg), (i, step, theta_carried)
            if v["sharpness_fallback"]:
                last = step
            negative += neg and not due
        m = max(rec["matvecs"] for rec, *_ in out)
        total = sum(rec["matvecs"] for rec, *_ in out)
        assert total <= n + (math.ceil(n / refresh) + negative) * (m - 1)
        extra_seen += negative
    assert extra_seen > 0  # the theta <= 0 solves happen at the edge of stability


@pytest.mark.parametrize(
    "options",
    [
        {"tol_fallback": -1.0},
        {"tol_fallback": math.nan},
        {"tol_fallback": -math.inf},
        {"tol_fallback": "inf"},
        {"tol_fallback": True},
        {"tol_fallback": None},
        {"refresh": 0},
        {"refresh": True},
        {"refresh": math.inf},
        {"refresh": -1},
        {"tol": math.nan, "tol_fallback": math.inf},
    ],
)
def test_sharpness_hostile_options_are_refused(options):
    with pytest.raises(ValueError, match=r"track\.sharpness: (tol_fallback|refresh|tol) must be"):
        be.build_tracker({"sharpness": {"every": 1, **options}})


@pytest.mark.parametrize("toml_value", ['"inf"', "-inf", "nan", '"1e-2"', "0.0", "-0.0", "-1e309"])
def test_sharpness_hostile_toml_values_are_refused_before_any_file(tmp_path, tiny_npz, toml_value):
    cfg = run_config(tmp_path / "c.toml", tiny_npz, track={"sharpness": {"every": 1}})
    cfg.write_text(
        cfg.read_text().replace(
            "sharpness = { every = 1 }", f"sharpness = {{ every = 1, tol_fallback = {toml_value} }}"
        )
    )
    assert "tol_fallback" in cfg.read_text()
    with pytest.raises(ConfigError, match="tol_fallback must be a positive number"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ================================================================ config.json inf (3e6a16e)


def _inf_config(tmp_path, tiny_npz, value="inf", name="c"):
    cfg = run_config(
        tmp_path / f"{name}.toml",
        tiny_npz,
        name="r",
        track={"sharpness": {"every": 2, "refresh": 3, "tol_fallback": math.inf}},
        train={"epochs": 2},
    )
    text = cfg.read_text().replace("tol_fallback = inf", f"tol_fallback = {value}")
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize("again", ["inf", "+inf", "1e309"])
def test_a_finished_run_with_an_infinite_option_is_recognised(tmp_path, tiny_npz, again):
    first = run(_inf_config(tmp_path, tiny_npz), tmp_path / "out")
    assert first.status == "finished" and first.steps > 0
    assert read_config(tmp_path / "out")["track"]["sharpness"]["tol_fallback"] == "inf"
    n = len(read_records(tmp_path / "out"))
    second = run(_inf_config(tmp_path, tiny_npz, again, "d"), tmp_path / "out")
    assert second.status == "finished" and second.steps == first.steps
    assert second.result is None  # nothing trained again
    assert len(read_records(tmp_path / "out")) == n


@pytest.mark.parametrize("other", ["1e308", "1e-2"])
def test_a_finished_inf_run_refuses_a_different_value(tmp_path, tiny_npz, other):
    run(_inf_config(tmp_path, tiny_npz), tmp_path / "out")
    with pytest.raises(ConfigMismatchError, match=r"track\.sharpness\.tol_fallback"):
        run(_inf_config(tmp_path, tiny_npz, other, "d"), tmp_path / "out")


def test_an_interrupted_inf_run_resumes_and_ends_as_the_uninterrupted_one(
    tmp_path, tiny_npz, monkeypatch
):
    whole = run(_inf_config(tmp_path, tiny_npz), tmp_path / "whole")
    from breakeven.tracking import tracker as tracker_mod

    orig = tracker_mod.Tracker.after_step
    state = {"armed": True}

    def interrupting(self, step, model):
        orig(self, step, model)
        if state["armed"] and step == 7:
            state["armed"] = False
            raise KeyboardInterrupt

    monkeypatch.setattr(tracker_mod.Tracker, "after_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(_inf_config(tmp_path, tiny_npz), tmp_path / "cut")
    assert read_status(tmp_path / "cut").startswith("failed")
    resumed = run(_inf_config(tmp_path, tiny_npz), tmp_path / "cut")
    assert resumed.status == "finished" and resumed.resumed_from is not None

    def strip(records):
        return [(r["step"], r["measure"], r["values"]) for r in records]

    assert strip(read_records(tmp_path / "cut")) == strip(read_records(tmp_path / "whole"))
    assert whole.steps == resumed.steps


# ============================================== Tracker checks, lambda ids (82798e7)


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": -1e-300},
        {"lr": 1e309},
        {"lr": [0.1]},
        {"lr": "inf"},
        {"momentum": 0.9999999999999999 + 1e-16},
        {"momentum": math.inf},
        {"momentum": "0.9"},
        {"seed": -(2**70)},
        {"seed": 3.0},
        {"seed": np.float64(3)},
        {"sinks": b"tensorboard"},
        {"sinks": [b"tb"]},
        {"sinks": ["tensorboard", "wandb"]},
    ],
)
def test_more_hostile_tracker_arguments_are_refused_before_any_file(tmp_path, kw):
    with pytest.raises((ValueError, TypeError)):
        param_norm_tracker(**kw, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "kw", [{"lr": np.float32(0.1)}, {"lr": np.int64(1)}, {"momentum": np.float32(0.5)}]
)
def test_numpy_scalars_are_numbers(kw):
    param_norm_tracker(**kw)


def test_a_fractional_batch_size_is_refused_before_any_file(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        param_norm_tracker(batch_size=2.5, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kw", [{"batch_size": -8}, {"n_train": -1}, {"n_train": 0}])
def test_the_no_step_per_epoch_message_tells_the_truth(kw):
    with pytest.raises(ValueError) as err:
        param_norm_tracker(**kw, drop_last=False)
    assert "drop_last=True" not in str(err.value)


def _resume_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "lr_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, torch
            import breakeven as be
            {body}
            x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
            y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
            model = torch.nn.Linear(3, 2)
            try:
                tr = be.Tracker([("param_norm", be.every(1))], probe=(x, y), train_data=(x, y),
                                lr=LR, batch_size=8, out_dir=sys.argv[1])
            except be.ConfigMismatchError as e:
                print("MISMATCH", e); sys.exit(3)
            with tr:
                for step in range(int(sys.argv[2])):
                    tr.before_step(step, model, (x[:8], y[:8])); tr.after_step(step, model)
                if sys.argv[3] == "fail":
                    raise SystemExit(5)
            """
        )
    )
    return script


def _in_process(script, out, steps, end, seed):
    import os

    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    return subprocess.run(
        [sys.executable, str(script), str(out), str(steps), end],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow  # a second interpreter; test_hostile_inputs checks the id across processes
def test_a_lambda_resumes_in_another_process_and_another_is_refused(tmp_path):
    """The same nested lambda (a closure over a float and a set constant) resumes a failed
    run in a new process with another hash seed; another closure value is refused there."""
    same = (
        "def make(p):\n    return lambda s: p if s in {'a', 'b'} or s >= 0 else 0.0\nLR = make(0.1)"
    )
    other = same.replace("make(0.1)", "make(0.2)")
    out = tmp_path / "run"
    script = _resume_script(tmp_path, same.replace("\n", "\n            "))
    done = _in_process(script, out, 2, "fail", 1)
    assert done.returncode == 5, done.stderr
    assert read_status(out).startswith("failed")
    script2 = _resume_script(tmp_path, other.replace("\n", "\n            "))
    done = _in_process(script2, out, 4, "close", 2)
    assert done.returncode == 3 and "train.lr" in done.stdout, (done.stdout, done.stderr)
    script3 = _resume_script(tmp_path, same.replace("\n", "\n            "))
    done = _in_process(script3, out, 4, "close", 3)
    assert done.returncode == 0, done.stderr
    assert read_status(out) == "finished"
    assert [r["step"] for r in read_records(out)] == [0, 1, 2, 3]


def test_a_lambda_id_survives_its_specialisation():
    """CPython specialises bytecode of hot code: the id is taken of the unspecialised code."""
    f = lambda s: 0.1 * s if s > 3 else 0.1 + s  # noqa: E731
    before = callable_id(f)
    for i in range(20000):
        f(i)
        f(float(i))
    assert callable_id(f) == before


def test_a_recursive_nested_lr_function(tmp_path):
    """A nested function in its own closure is named (no RecursionError), by what it computes."""

    def make(base):
        def lr(s):
            return base if s <= 0 else 0.99 * lr(s - 1)

        return lr

    assert callable_id(make(0.1)) == callable_id(make(0.1)) != callable_id(make(0.2))
    param_norm_tracker(lr=make(0.1), out_dir=tmp_path / "r").close()
    assert (tmp_path / "r" / "config.json").exists()


def test_a_closure_over_a_name_not_yet_assigned_is_named():
    def make():
        def lr(s):
            return later * s

        first = callable_id(lr)
        later = 0.1
        return first, callable_id(lr)

    before, after = make()
    assert before != after  # the empty cell, then its value


class _Schedule:
    def __init__(self, peak):
        self.peak = peak

    def lr(self, step):
        return self.peak


def test_a_bound_method_is_named_with_its_objects_state():
    assert callable_id(_Schedule(0.1).lr) == callable_id(_Schedule(0.1).lr)
    assert callable_id(_Schedule(0.1).lr) != callable_id(_Schedule(0.5).lr)
    with pytest.raises(TypeError, match="lr"):
        callable_id(_Schedule(object()).lr, "lr")


def test_a_bound_method_of_another_schedule_is_refused(tmp_path):
    """A run with a checkpoint does not resume with the method of another schedule."""
    from breakeven.tracking.store import read_config

    with param_norm_tracker(lr=_Schedule(0.1).lr, out_dir=tmp_path / "r"):
        pass
    assert "@" in read_config(tmp_path / "r")["train"]["lr"]
    with pytest.raises(ConfigMismatchError):
        param_norm_tracker(lr=_Schedule(0.5).lr, out_dir=tmp_path / "r")


@pytest.mark.parametrize("seed", [2**64, 2**63, -1])
def test_a_seed_outside_int64_is_refused_before_any_file(tmp_path, seed):
    with pytest.raises(ValueError, match="seed"):
        param_norm_tracker(seed=seed, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="init_seed"):
        be.TrainConfig(model="mlp", dataset="fashion_mnist", init_seed=seed)


def test_the_largest_seed_is_taken(tmp_path):
    param_norm_tracker(seed=2**63 - 1, out_dir=tmp_path / "r").close()
    be.TrainConfig(model="mlp", dataset="fashion_mnist", data_seed=2**63 - 1)


def test_sinks_none_is_no_sinks():
    assert param_norm_tracker(sinks=None).sinks == []
