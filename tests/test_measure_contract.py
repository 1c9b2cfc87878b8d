"""The measure contract: a typed Measurement, declared keys, requirements that order the
measures of a step, and registration by name (a user's measure in a loop and in a config)."""

import fnmatch
import math

import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.cli import main
from breakeven.measures import tracked
from breakeven.records import read_records
from helpers import run_config
from test_tracking import ADAM, ALL, loop, make, tracker_for_loop

# The README's example of a user-defined measure, run verbatim below.
README_EXAMPLE = '''
import math

import breakeven as be


@be.register_measure("grad_norm")
class GradientNorm(be.Measure):
    """||g||, the norm of the step's mini-batch gradient, and the relative size of the
    plain SGD step, lr ||g|| / ||theta|| (over the trainable parameters)."""

    keys = ("grad_norm", "relative_step")

    def measure(self, ctx: be.Context) -> be.Measurement:
        g = math.sqrt(sum(float(t.double().square().sum()) for t in ctx.gradient))
        params = [p.detach() for p in ctx.model.parameters() if p.requires_grad]
        w = math.sqrt(sum(float(p.double().square().sum()) for p in params))
        return be.Measurement({"grad_norm": g, "relative_step": ctx.lr * g / w})


# in a loop:    be.Tracker([GradientNorm()], be.every(10), probe=..., train_data=..., lr=0.1)
# in a config:  [track]
#               grad_norm = { every = 10 }
'''


@pytest.fixture
def registry():
    """The measure registry, restored after the test: what a test registers vanishes."""
    saved = dict(be.MEASURES)
    yield be.MEASURES
    be.MEASURES.clear()
    be.MEASURES.update(saved)


def _plain(values):
    """Values with NaN as None, so that two equal records compare equal."""
    return {k: None if math.isnan(v) else v for k, v in values.items()}


# --------------------------------------------------------------------------- declared keys

KEY_VARIANTS = [
    ALL,  # covariance with its spectrum, hessian k = 2, every other measure with its defaults
    {
        "covariance": {"every": 1, "num_batches": 3},
        "hessian": {"every": 1, "k": 3},
        "hessian_density": {"every": 1, "num_probes": 2, "num_steps": 3},
        "alignment": {"every": 1, "k": 1},
    },
    {
        "k1": {
            "measure": "covariance",
            "every": 1,
            "num_batches": 4,
            "batch_size": 1,
            "spectrum": True,
        },
        "hessian": {"every": 1, "k": 1, "tol": 1e-2},
        "noise_scale": {"every": 1},
        "edge_of_stability": {"every": 1},
        "stability": {"every": 1, "bn_mode": "train"},
    },
    ADAM,  # the measures that read Adam's state, in a loop with Adam
]


@pytest.mark.parametrize("spec", KEY_VARIANTS)
def test_every_builtin_measure_emits_exactly_its_declared_keys(spec):
    tracker = tracker_for_loop(spec)
    loop(tracker, steps=5, adam=spec is ADAM)
    declared = {m.name: m.emits() for m, _ in tracker.measures}
    assert {r["measure"] for r in tracker.records_} == set(spec)  # each one was measured
    for r in tracker.records_:
        keys, patterns = set(r["values"]), declared[r["measure"]]
        undeclared = [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in patterns)]
        unmatched = [p for p in patterns if not fnmatch.filter(keys, p)]
        assert (undeclared, unmatched) == ([], []), r["measure"]


def test_the_key_variants_cover_every_builtin_measure():
    kinds = {opts.get("measure", name) for spec in KEY_VARIANTS for name, opts in spec.items()}
    assert kinds == {n for n, cls in be.MEASURES.items() if cls.__module__.startswith("breakeven.")}


def test_option_dependent_keys_are_exact():
    assert be.HessianTop(k=2).emits() == (
        "lambda_H_1",
        "lambda_H_2",
        "residual_H_1",
        "residual_H_2",
        "converged",
    )
    cov = be.GradientCovariance(num_batches=3, spectrum=True).emits()
    assert cov[-3:] == ("eig_K_0", "eig_K_1", "eig_K_2")
    assert be.GradientCovariance(num_batches=3).emits() == be.GradientCovariance.keys


# --------------------------------------------------------------------------- order, sharing


def _count_calls(monkeypatch, function):
    """A list that grows by one at each call of the measures' ``function`` (by name)."""
    calls, real = [], getattr(tracked, function)
    monkeypatch.setattr(tracked, function, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize(
    ("dependents", "required", "computes"),
    [
        (["stability"], ["hessian"], "hessian_eigenvalues"),
        (["stability", "edge_of_stability"], ["hessian"], "hessian_eigenvalues"),
        (["alignment", "noise_scale"], ["covariance"], "gradient_covariance"),
    ],
)
def test_a_measure_listed_before_what_it_requires_reuses_it(
    monkeypatch, dependents, required, computes
):
    calls = _count_calls(monkeypatch, computes)
    options = {"hessian": {"tol": 1e-6}, "covariance": {"num_batches": 4}, "alignment": {"k": 2}}
    got = []
    for order in (dependents + required, required + dependents):
        calls.clear()
        tracker = tracker_for_loop({n: {"every": 1, **options.get(n, {})} for n in order})
        loop(tracker, steps=3)
        assert len(calls) == 3  # one Lanczos (or one K) per step, whatever the config order
        assert all(r["matvecs"] == 0 for r in tracker.records_ if r["measure"] in dependents)
        got.append({(r["step"], r["measure"]): _plain(r["values"]) for r in tracker.records_})
        assert [r["measure"] for r in tracker.records_[: len(order)]] == required + dependents
    assert got[0] == got[1]  # the same values in both orders


def test_stability_alone_still_computes_its_eigenpair(monkeypatch):
    calls = _count_calls(monkeypatch, "hessian_eigenvalues")
    tracker = tracker_for_loop({"stability": {"every": 1}})
    loop(tracker, steps=2)
    assert len(calls) == 2 and all(r["matvecs"] > 0 for r in tracker.records_)


def test_what_a_renamed_table_shares_keeps_the_measure_name(monkeypatch):
    calls = _count_calls(monkeypatch, "hessian_eigenvalues")
    spec = {
        "st": {"measure": "stability", "every": 1},
        "top": {"measure": "hessian", "every": 1, "tol": 1e-6},
    }
    tracker = tracker_for_loop(spec)
    loop(tracker, steps=2)
    assert len(calls) == 2
    assert [r["measure"] for r in tracker.records_] == ["top", "st", "top", "st"]
    st = [r for r in tracker.records_ if r["measure"] == "st"]
    top = [r for r in tracker.records_ if r["measure"] == "top"]
    assert all(r["matvecs"] == 0 for r in st)
    assert [r["values"]["lambda_H_1"] for r in st] == [r["values"]["lambda_H_1"] for r in top]


def test_the_first_of_a_measure_tracked_twice_is_the_one_shared():
    spec = {
        "k1": {"measure": "covariance", "every": 1, "num_batches": 4, "batch_size": 1},
        "covariance": {"every": 1, "num_batches": 3},
        "noise_scale": {"every": 1},
    }
    tracker = tracker_for_loop(spec)
    loop(tracker, steps=1)
    by = {r["measure"]: r for r in tracker.records_}
    assert by["noise_scale"]["matvecs"] == 0
    M, trace = by["k1"]["values"]["M"], by["k1"]["values"]["trace_K"]
    assert by["noise_scale"]["values"]["trace_sigma"] == pytest.approx(M * trace)


def test_a_fallback_counts_its_cost():
    tracker = tracker_for_loop({"edge_of_stability": {"every": 1}, "alignment": {"every": 1}})
    loop(tracker, steps=1)
    by = {r["measure"]: r for r in tracker.records_}
    assert by["edge_of_stability"]["matvecs"] > 0
    assert by["alignment"]["matvecs"] == 25  # the default K: L = 25 gradients


class _Needs(be.Measure):
    """An unregistered measure (named in its class) that requires another."""

    name = "needs_b"
    requires = ("b",)
    keys = ("x",)

    def measure(self, ctx):
        return be.Measurement({"x": 1.0})


class _B(_Needs):
    name = "b"
    requires = ("needs_b",)


def test_a_cycle_of_requirements_is_refused_when_the_tracker_is_built():
    with pytest.raises(ValueError, match=r"cycle \(needs_b requires \['b'\], b requires"):
        be.Tracker([_Needs(), _B()], lr=0.1)
    hessian, stability = be.HessianTop(), be.Stability()
    hessian.requires = ("stability",)
    with pytest.raises(ValueError, match="form a cycle"):
        be.Tracker([stability, hessian], lr=0.1)
    be.Tracker([_Needs(), be.HessianTop()], lr=0.1)  # a requirement not tracked is optional


# --------------------------------------------------------------------------- the contract


def test_the_base_class_declares_the_contract():
    m = be.Measure()
    assert m.requires == () and m.keys == () and m.emits() == ()
    assert m.after(None, {}) is None
    r = be.Measurement({"a": 1.0})
    assert r.matvecs == 0 and r.arrays is None and r.shared is None
    with pytest.raises(AttributeError):
        r.matvecs = 3  # frozen


def test_a_measure_breaking_the_contract_is_named():
    class Old(_Needs):
        name = "old"
        requires = ()

        def measure(self, ctx):
            return {"x": 1.0, "matvecs": 3}  # today's dict with reserved keys

    class Typo(_Needs):
        name = "typo"
        requires = ()

        def measure(self, ctx):
            return be.Measurement({"x": 1.0, "y": 2.0})

    class Unnamed(be.Measure):
        pass

    with pytest.raises(TypeError, match=r"Old\.measure\(\) returned dict; .*Measurement"):
        loop(be.Tracker([Old()], be.every(1), **_data()), steps=1)
    with pytest.raises(ValueError, match=r"'typo' emitted undeclared key\(s\) \['y'\]"):
        loop(be.Tracker([Typo()], be.every(1), **_data()), steps=1)
    with pytest.raises(ValueError, match="has no name: register it"):
        be.Tracker([Unnamed()])


def _data():
    _, x, y = make()
    return {"probe": (x[:40], y[:40]), "train_data": (x, y), "lr": 0.05, "batch_size": 16}


def test_after_adds_to_the_record_of_the_step():
    class Twice(_Needs):
        name = "twice"
        requires = ()
        keys = ("before", "after")

        def measure(self, ctx):
            return be.Measurement({"before": 1.0}, matvecs=2, arrays={"a": {"x": 1}})

        def after(self, ctx, values):
            return be.Measurement({"after": values["before"] + 1}, matvecs=3)

    tracker = be.Tracker([Twice()], be.every(2), **_data())
    loop(tracker, steps=3)
    assert [(r["step"], r["values"], r["matvecs"], r["arrays"]) for r in tracker.records_] == [
        (0, {"before": 1.0, "after": 2.0}, 5, {"a": {"x": 1}}),
        (2, {"before": 1.0, "after": 2.0}, 5, {"a": {"x": 1}}),
    ]


# --------------------------------------------------------------------------- registration


def test_registration_refuses_a_clash_and_a_bad_class(registry):
    class Another(_Needs):
        requires = ()

    with pytest.raises(ValueError, match="'hessian' is already registered"):
        be.register_measure("hessian")(Another)
    be.register_measure("another")(Another)
    with pytest.raises(ValueError, match="'another' is already registered"):
        be.register_measure("another")(type("Copy", (Another,), {}))
    with pytest.raises(ValueError, match="sets name='b', registered as 'c'"):
        be.register_measure("c")(_B)
    with pytest.raises(ValueError, match=r"requires \['nothing'\]: a measure may require only"):
        be.register_measure("d")(type("D", (Another,), {"requires": ("nothing",)}))
    with pytest.raises(ValueError, match=r"requires \['e'\]"):
        be.register_measure("e")(type("E", (Another,), {"requires": ("e",)}))
    with pytest.raises(TypeError, match="keys must be a tuple"):
        be.register_measure("f")(type("F", (Another,), {"keys": "x"}))
    with pytest.raises(TypeError, match="decorates a Measure subclass"):
        be.register_measure("g")(dict)
    with pytest.raises(ValueError, match="non-empty string"):
        be.register_measure("")
    assert "another" in be.MEASURES and not {"c", "d", "e", "f", "g"} & set(be.MEASURES)


def test_the_readme_measure_in_a_loop(registry):
    namespace = {}
    exec(README_EXAMPLE, namespace)
    assert be.MEASURES["grad_norm"] is namespace["GradientNorm"]
    tracker = tracker_for_loop({"grad_norm": {"every": 2}, "param_norm": {"every": 2}})
    loop(tracker, steps=4)
    got = {(r["measure"], r["step"]): r["values"] for r in tracker.records_}
    assert set(got) == {(m, s) for m in ("grad_norm", "param_norm") for s in (0, 2)}
    for step in (0, 2):
        g, w = got[("grad_norm", step)], got[("param_norm", step)]["param_norm"]
        assert g["relative_step"] == pytest.approx(0.05 * g["grad_norm"] / w)
    model, x, y = make()  # the first step's gradient, computed by hand
    torch.manual_seed(1)
    nn.functional.cross_entropy(model(x[:16]), y[:16]).backward()
    norm = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    assert got[("grad_norm", 0)]["grad_norm"] == pytest.approx(norm, rel=1e-12)


# helpers.run_config's tiny run, one epoch, with these measures every 2 steps
TRAIN = {"epochs": 1, "eval_every": None}
EVERY_2 = {"every": 2}


def test_a_cycle_stops_breakeven_run_before_its_folder_exists(registry, tmp_path, tiny_npz, capsys):
    first = be.register_measure("first")(type("First", (_Needs,), {"requires": ()}))
    be.register_measure("second")(type("Second", (_Needs,), {"requires": ("first",)}))
    first.requires = ("second",)  # a cycle no registration order could make
    track = {"covariance": None, "hessian": None, "first": EVERY_2, "second": EVERY_2}
    config = run_config(tmp_path / "cycle.toml", tiny_npz, run=None, train=TRAIN, track=track)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    assert "requirements form a cycle (first requires ['second']" in capsys.readouterr().err
    assert not out.exists()


def test_the_readme_measure_in_breakeven_run(registry, tmp_path, tiny_npz):
    exec(README_EXAMPLE, {})
    track = {"covariance": None, "hessian": EVERY_2, "grad_norm": EVERY_2}
    config = run_config(tmp_path / "user.toml", tiny_npz, run=None, train=TRAIN, track=track)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    records = [r for r in read_records(out) if r["measure"] == "grad_norm"]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(set(r["values"]) == {"grad_norm", "relative_step"} for r in records)
    assert all(r["values"]["grad_norm"] > 0 and r["matvecs"] == 0 for r in records)
