"""Hostile tests of round 14: K keeps v's nan at dropped columns and sparse embeddings are
measured (0bc368c); numpy numbers, int64 seeds, bound methods and recursive lambdas in the
Tracker (f673aee). Each bug this review found has a test here that failed before its fix."""

from __future__ import annotations

import functools
import json
import threading
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import breakeven as be
from breakeven._core.state import measuring
from breakeven.cli import main
from breakeven.tracking import store
from breakeven.tracking.store import callable_id
from helpers import param_norm_tracker, run_config

LOSS = nn.CrossEntropyLoss()


# ================================================= sparse embeddings while measuring


class _SparseEmb(nn.Module):
    def __init__(self, vocab=30, dim=4, bag=False, dropout=0.0):
        super().__init__()
        self.bag = bag
        if bag:
            self.e = nn.EmbeddingBag(vocab, dim, mode="sum", sparse=True)
        else:
            self.e = nn.Embedding(vocab, dim, sparse=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, 3)

    def forward(self, x):
        if self.bag:
            w = torch.linspace(0.5, 1.5, x.numel(), dtype=self.fc.weight.dtype).view(x.shape)
            h = self.e(x, per_sample_weights=w)
        else:
            h = self.e(x).mean(1)
        return self.fc(self.drop(h))


def _tokens(n=8, seed=0, vocab=30):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, 4), generator=g), torch.randint(0, 3, (n,), generator=g)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_measuring_restores_the_sparse_flag_on_exceptions(exc):
    model = _SparseEmb()
    with pytest.raises(exc):
        with measuring(model):
            assert not model.e.sparse
            raise exc()
    assert model.e.sparse and model.training


def test_nested_measuring_restores_the_sparse_flag_at_the_outer_exit():
    model = _SparseEmb()
    with measuring(model):
        with measuring(model):
            assert not model.e.sparse
        assert not model.e.sparse
    assert model.e.sparse


@pytest.mark.parametrize("what", ["K", "per_example_K", "H"])
def test_a_loss_fn_interrupted_mid_measurement_restores_the_sparse_flag(what):
    model = _SparseEmb().double()
    x, y = _tokens()

    def interrupted(out, t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        if what == "K":
            be.gradient_covariance(
                model, interrupted, [(x[i : i + 2], y[i : i + 2]) for i in (0, 2, 4)]
            )
        elif what == "per_example_K":
            be.per_example_gradient_covariance(model, interrupted, x, y)
        else:
            be.hessian_eigenvalues(model, interrupted, (x, y), k=1)
    assert model.e.sparse and model.training


@pytest.mark.parametrize("what", ["K", "per_example_K"])
def test_embedding_bag_with_per_sample_weights_sparse_equals_dense(what):
    torch.manual_seed(0)
    sparse = _SparseEmb(bag=True).double()
    dense = _SparseEmb(bag=True).double()
    dense.load_state_dict(sparse.state_dict())
    dense.e.sparse = False
    x, y = _tokens()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = []
        for m in (sparse, dense):
            if what == "K":
                batches = [(x[i : i + 2], y[i : i + 2]) for i in (0, 2, 4, 6)]
                got.append(be.gradient_covariance(m, LOSS, batches).eigenvalues)
            else:
                got.append(be.per_example_gradient_covariance(m, LOSS, x, y).eigenvalues)
    torch.testing.assert_close(got[0], got[1], rtol=1e-9, atol=0)
    assert sparse.e.sparse


def _train(measures, steps=6, model_fn=None, weight_decay=0.0):
    torch.manual_seed(0)
    model = model_fn() if model_fn else _SparseEmb(dropout=0.2)
    x, y = _tokens(48)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=weight_decay)
    tracker = None
    if measures is not None:
        tracker = be.Tracker(
            measures,
            be.every(2),
            loss_fn=LOSS,
            probe=(x[:16], y[:16]),
            train_data=(x, y),
            lr=0.1,
            batch_size=8,
        )
    sparse_grads = []
    for step in range(steps):
        xb, yb = x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8]
        opt.zero_grad()
        loss = LOSS(model(xb), yb)
        loss.backward()
        if tracker:
            tracker.before_step(step, model, (xb, yb), loss)
        sparse_grads.append(model.e.weight.grad.is_sparse)
        opt.step()
        if tracker:
            tracker.after_step(step, model)
    if tracker:
        tracker.close()
    return model, sparse_grads, tracker


@pytest.mark.parametrize(
    "measures",
    [
        ["hessian"],
        ["covariance"],
        ["sharpness"],
        ["hessian", "covariance", "sharpness", "noise_scale", "hessian_trace", "loss_change"],
    ],
)
def test_training_with_a_tracker_is_bitwise_the_run_without(measures):
    base, _, _ = _train(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, sparse_grads, tracker = _train(measures)
    assert tracker.records_
    assert all(sparse_grads) and model.e.sparse
    for a, b in zip(base.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_alignment_with_a_sparse_embedding():
    """The measures differentiate with dense embedding gradients, but the step's own
    gradient (ctx.gradient, read from .grad) is sparse: 'alignment' flattens it with
    reshape, which sparse tensors do not have."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sparse_grads, tracker = _train(["alignment"])
    assert tracker.records_ and all(sparse_grads)


# ================================================= nan propagation of K (0bc368c)


class _Mixed(nn.Module):
    """An embedding with unused rows (dropped columns) and two Linear layers (RankOneRows
    blocks in per-example K)."""

    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(200, 3)
        self.fc = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc(self.e(x).mean(1))))


@pytest.fixture(scope="module")
def mixed_specs():
    torch.manual_seed(0)
    model = _Mixed().double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 4, (8, 5), generator=g), torch.randint(0, 3, (8,), generator=g)
    specs = {"per_example": be.per_example_gradient_covariance(model, LOSS, x, y)}
    batches = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    for storage in ("memory", "cpu", "disk"):
        specs[storage] = be.gradient_covariance(model, LOSS, batches, storage=storage)
    return specs


@pytest.mark.parametrize("which", ["per_example", "memory", "cpu", "disk"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("column", ["dropped", "bias"])
def test_K_propagates_a_non_finite_v_everywhere(mixed_specs, which, bad, column):
    spec = mixed_specs[which]
    op = spec.operator
    D = op.shape[0]
    v = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v[3 * 100 + 1 if column == "dropped" else D - 1] = bad  # embedding row 100 is unused
    # as the dense products: no entry finite (nan, or +-inf where a factor is non-zero)
    assert not op.matvec(v).isfinite().any()
    assert not op.centred_products(v).isfinite().any()
    assert not spec.projection(v, 1).isfinite().any()
    a = torch.randn(op.num_batches, dtype=torch.float64)
    a[0] = bad
    assert not op.transpose_products(a).isfinite().any()


@pytest.mark.parametrize("which", ["per_example", "memory", "cpu", "disk"])
def test_K_gives_no_false_nan(mixed_specs, which):
    op = mixed_specs[which].operator
    D = op.shape[0]
    for v in (
        torch.full((D,), 1e300, dtype=torch.float64),
        torch.full((D,), torch.finfo(torch.float32).max),
        torch.zeros(D, dtype=torch.float64),
    ):
        assert torch.isfinite(op.centred_products(v)).all()
    assert torch.isfinite(op.matvec(torch.full((D,), torch.finfo(torch.float32).max))).all()
    assert torch.equal(op.matvec(torch.zeros(D)), torch.zeros(D, dtype=torch.float64))


# ================================================= numbers and seeds (f673aee)


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": np.longdouble("0.1")},
        {"momentum": np.longdouble("0.5")},
        {"momentum": Fraction(1, 10)},
    ],
    ids=["lr-longdouble", "momentum-longdouble", "momentum-Fraction"],
)
def test_a_real_number_is_written_or_refused_before_any_file(tmp_path, kw):
    """is_real now takes any numbers.Real: np.longdouble and Fraction pass the checks, then
    config.json cannot hold them, and the TypeError comes after out_dir (and its lock) was
    created (before f673aee they were refused by a ValueError before any file)."""
    out = tmp_path / "r"
    try:
        tracker = param_norm_tracker(out_dir=out, **kw)
    except (TypeError, ValueError) as e:
        assert "JSON serializable" not in str(e), e
        assert not out.exists(), sorted(p.name for p in out.iterdir())
        return
    tracker.close()
    key, value = next(iter(kw.items()))
    assert json.loads((out / "config.json").read_text())["train"][key] == float(value)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float16(0.5), np.float64(0.5), np.int64(1)])
def test_a_numpy_lr_resumes_the_run_of_the_same_python_number(tmp_path, value):
    out = tmp_path / "r"
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    plain = float(value) if isinstance(value, np.floating) else int(value)
    with param_norm_tracker(out_dir=out, lr=plain) as tr:
        tr.before_step(0, model, (x, y))
        tr.after_step(0, model)
    # the config is compared first: a mismatch is a ConfigMismatchError, the same config
    # a RunStoreError (the run has ended)
    with pytest.raises(Exception) as err:
        param_norm_tracker(out_dir=out, lr=value)
    assert not isinstance(err.value, store.ConfigMismatchError)


def test_np_bool_and_decimal_are_refused(tmp_path):
    from decimal import Decimal

    for kw in ({"lr": np.bool_(True)}, {"momentum": np.bool_(False)}, {"lr": Decimal("0.1")}):
        with pytest.raises(ValueError):
            param_norm_tracker(out_dir=tmp_path / "r", **kw)
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "key, value",
    [("init_seed", 2**63), ("data_seed", 2**63), ("init_seed", 2**64), ("init_seed", -1)],
)
def test_a_seed_beyond_int64_in_toml_stops_with_exit_code_2(tiny_npz, tmp_path, key, value, capsys):
    config = run_config(
        tmp_path / "run.toml",
        tiny_npz,
        train={"epochs": 1, "eval_every": None, key: value},
        track=None,
    )
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    assert "2**63 - 1" in capsys.readouterr().err
    assert not out.exists()


def test_a_seed_beyond_int64_by_set_stops_with_exit_code_2(tiny_npz, tmp_path):
    config = run_config(tmp_path / "run.toml", tiny_npz, train={"epochs": 1, "eval_every": None})
    out = tmp_path / "out"
    argv = ["run", str(config), "--out", str(out), "--no-progress"]
    assert main([*argv, "--set", "train.data_seed=9223372036854775808"]) == 2
    assert not out.exists()


def test_the_largest_seed_trains(tiny_npz, tmp_path):
    config = run_config(
        tmp_path / "run.toml",
        tiny_npz,
        train={"epochs": 1, "eval_every": None, "init_seed": 2**63 - 1, "data_seed": 2**63 - 1},
        track=None,
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0


# ================================================= callable_id of bound methods (f673aee)


class _Sched:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def lr(self, step):
        return 0.1

    @classmethod
    def by_class(cls, step):
        return 0.1

    @staticmethod
    def static(step):
        return 0.1


class _Slots:
    __slots__ = ("base",)

    def __init__(self, base):
        self.base = base

    def lr(self, step):
        return self.base


class _ModuleWithSchedule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def lr(self, step):
        return 0.1


def test_bound_methods_of_objects_with_json_state():
    assert callable_id(_Sched(a=1).lr) != callable_id(_Sched(a=2).lr)
    assert callable_id(_Sched(a=1).lr) == callable_id(_Sched(a=1).lr)
    assert callable_id(_Sched(w=torch.ones(2)).lr) != callable_id(_Sched(w=torch.zeros(2)).lr)
    assert callable_id(_Sched.static) == f"{__name__}._Sched.static"
    assert not getattr(store._NAMING, "ids", set())


def test_recursive_and_raising_nested_functions_leave_no_trace():
    def make_mutual():
        def a(s):
            return b(s - 1) if s else 0.1

        def b(s):
            return a(s)

        return a

    assert callable_id(make_mutual()) == callable_id(make_mutual())
    assert not getattr(store._NAMING, "ids", set())

    def make_bad():
        bad = object()

        def f(s):
            return (f, bad)

        return f

    with pytest.raises(TypeError, match="closes over"):
        callable_id(make_bad(), "lr")
    assert not getattr(store._NAMING, "ids", set())

    def close(m):
        return lambda s: m(s)

    assert callable_id(close(_Sched(a=1).lr)) != callable_id(close(_Sched(a=2).lr))


def test_a_classmethod_is_named():
    """A classmethod is a MethodType bound to the class: vars(cls) holds functions,
    classmethod objects and descriptors, and naming it raises TypeError (before f673aee it
    was named by its qualname)."""
    assert callable_id(_Sched.by_class, "lr").startswith(f"{__name__}._Sched.by_class")


def test_methods_of_slotted_objects_with_other_state_are_told_apart():
    """An object with __slots__ has no __dict__: its state is hashed as {}, so another
    object's method resumes silently (what f673aee set out to prevent)."""
    assert callable_id(_Slots(1).lr) != callable_id(_Slots(2).lr)


def test_an_object_holding_its_own_bound_method_is_named_without_recursion_error():
    class Holder:
        def __init__(self):
            self.fn = functools.partial(self.lr)

        def lr(self, step):
            return 0.1

    try:
        callable_id(Holder().lr, "lr")
    except TypeError:
        pass  # a clear refusal would do; a RecursionError does not


@pytest.mark.parametrize(
    "method",
    [_ModuleWithSchedule().lr, _Sched(inner=_Sched(a=1)).lr, _Sched(opt=object()).lr],
    ids=["nn.Module", "nested object", "object attribute"],
)
def test_a_method_of_an_object_with_non_json_state_is_refused_clearly(method):
    """Before f673aee these were named by their qualname; now a TypeError names an
    attribute value (for a Module: 'lr: set() cannot be written to config.json') and
    neither the method nor that it is the object's attributes that must be JSON."""
    try:
        callable_id(method, "lr")
    except TypeError as e:
        assert "lr" in str(e).replace("lr:", "") and "attribute" in str(e), str(e)


def test_the_alignment_of_a_sparse_gradient_is_that_of_its_dense_values():
    torch.manual_seed(0)
    model = _SparseEmb().double()
    x, y = _tokens(8)
    LOSS(model(x), y).backward()
    sparse = [p.grad for p in model.parameters()]
    assert sparse[0].is_sparse
    dense = [g.to_dense() for g in sparse]
    batches = [(x[i : i + 2], y[i : i + 2]) for i in (0, 2, 4, 6)]
    spec = be.gradient_covariance(model, LOSS, batches)
    assert be.gradient_alignment(sparse, spec, 2) == be.gradient_alignment(dense, spec, 2)


class _Gate:
    """A closure value whose conversion to JSON (``tolist``) waits until released."""

    def __init__(self):
        self.calls = 0
        self.entered = threading.Event()
        self.go = threading.Event()

    def tolist(self):
        self.calls += 1
        self.entered.set()
        self.go.wait(10)
        return [1]


def test_two_threads_naming_the_same_lambda_get_the_same_id():
    """_NAMING is one module-level set: while one thread names a nested function, another
    thread naming the same function gets '<itself>' as its whole id."""
    gate = _Gate()

    def make():
        g = gate

        def f(s):
            return g

        return f

    f = make()
    ids = {}
    a = threading.Thread(target=lambda: ids.setdefault("a", callable_id(f)))
    a.start()
    assert gate.entered.wait(10)
    b = threading.Thread(target=lambda: ids.setdefault("b", callable_id(f)))
    b.start()
    b.join(0.5)
    gate.go.set()
    a.join(10)
    b.join(10)
    assert ids["a"] == ids["b"], ids


class _MaxNorm(nn.Module):
    def __init__(self, sparse=False):
        super().__init__()
        self.e = nn.Embedding(30, 4, max_norm=0.5, sparse=sparse)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.e(x).mean(1))


@pytest.mark.parametrize("what", ["K", "per_example_K"])
def test_K_does_not_write_a_max_norm_embedding(what):
    """Embedding(max_norm=) renormalises the rows it looks up in place; K's forward runs
    on detached parameters that share the parameters' storage, so measuring K rewrites
    them ('Parameters and .grad are never written'), and a Tracker measuring K changes
    the training (with weight decay) against the run without it. H does not write them."""
    torch.manual_seed(0)
    model = _MaxNorm().double()
    x, y = _tokens(8)
    before = model.e.weight.detach().clone()
    if what == "K":
        be.gradient_covariance(model, LOSS, [(x[i : i + 2], y[i : i + 2]) for i in (0, 2, 4)])
    else:
        be.per_example_gradient_covariance(model, LOSS, x, y)
    assert torch.equal(model.e.weight, before)


def test_H_does_not_write_a_max_norm_embedding():
    torch.manual_seed(0)
    model = _MaxNorm().double()
    x, y = _tokens(8)
    before = model.e.weight.detach().clone()
    be.hessian_eigenvalues(model, LOSS, (x, y), k=1)
    assert torch.equal(model.e.weight, before)


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum": Fraction(1, 2)},
        {"betas": (Fraction(1, 2), 0.9)},
        {"betas": (np.float32(0.5), 0.9)},
    ],
    ids=["momentum-Fraction", "betas-Fraction", "betas-float32"],
)
def test_a_fraction_in_train_config_is_refused_or_trains(kw):
    """TrainConfig's checks now take any numbers.Real: momentum=Fraction(1, 2) passes them
    and torch's SGD then fails at the first step ('mul_(): argument 'other' (position 1)
    must be Tensor, not Fraction'), and Adam refuses betas of a Fraction or an np.float32
    ('betas must be either both floats or both Tensors'); before f673aee a ConfigError
    refused them."""
    from helpers import toy

    if "betas" in kw:
        kw = {**kw, "optimizer": "adam"}
    try:
        config = be.TrainConfig(
            model="mlp",
            model_kwargs={"hidden": [4]},
            batch_size=32,
            epochs=1,
            eval_every=None,
            num_threads=1,
            **kw,
        )
    except be.ConfigError:
        return
    be.train(config, dataset=toy(n=64))


@pytest.mark.parametrize("key", ["init_seed", "data_seed"])
def test_train_config_takes_a_numpy_integer_seed_as_the_tracker_does(key):
    """Tracker(seed=np.int64(3)) is taken, TrainConfig(init_seed=np.int64(3)) is refused
    with 'must be an integer in [0, 2**63 - 1]' (np.float32 lr is taken since f673aee)."""
    assert be.TrainConfig(**{key: np.int64(3)}).to_dict()[key] == 3


def test_training_a_max_norm_embedding_with_k_measured_is_bitwise_the_run_without():
    """With weight decay every row counts: a measurement that left renormalised rows behind
    changed the trajectory (found: covariance and noise_scale did)."""

    base, _, _ = _train(None, model_fn=_MaxNorm, weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracked, _, _ = _train(
            ["covariance", "noise_scale", "hessian"], model_fn=_MaxNorm, weight_decay=0.1
        )
    for a, b in zip(base.state_dict().values(), tracked.state_dict().values()):
        assert torch.equal(a, b)
