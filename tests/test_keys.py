"""The one vocabulary of record keys (breakeven.records.KEYS): every measure's keys are in it and
it holds no other; legacy names read as today's; one series function, one default of the
accuracy thresholds, one SLQ broadening; the train_accuracy measure and the figures and
tables that find its training accuracy."""

import copy
import fnmatch
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.analysis import DEFAULT_THRESHOLDS, break_even_points, read_runs, series
from breakeven.data import Dataset
from breakeven.experiments.runner import _Progress
from breakeven.measures import MEASURES
from breakeven.plotting import figures, label_of, plot_trajectories, plot_trajectory
from breakeven.plotting._data import resolve, unresolved
from breakeven.plotting.captions import caption
from breakeven.records import (
    EVAL_MEASURE,
    KEYS,
    LEGACY_KEYS,
    canonical_key,
    key_info,
    load_run,
    preferred_measure,
)
from breakeven.tracking import build_tracker
from breakeven.train import TrainConfig, train

BUILTIN = {n: cls for n, cls in MEASURES.items() if cls.__module__.startswith("breakeven.")}
#: Instances whose keys depend on their options, beside each measure's default instance.
VARIANTS = [be.HessianTop(k=3), be.GradientCovariance(num_batches=3, spectrum=True)]


def declared() -> dict[str, set[str]]:
    """{measure: every key or pattern its instances declare}."""
    out = {name: set(cls.keys) | set(cls().emits()) for name, cls in BUILTIN.items()}
    for m in VARIANTS:
        out[m.name] |= set(m.emits())
    return out


@pytest.fixture(scope="module")
def evaluation_keys() -> set[str]:
    """The keys of the training loop's evaluation records (as the runner writes them)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    ds = Dataset("toy", x[:30], y[:30], x[30:], y[30:], 3)
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": (4,)}, batch_size=10, steps=2)
    entry = train(cfg, dataset=ds).final
    return set(entry) - {"step", "epoch", "seconds"}  # as runner.on_evaluate leaves them out


def test_every_key_a_measure_declares_is_in_the_catalogue(evaluation_keys):
    for name, keys in declared().items():
        for key in keys:
            info = key_info(key)
            assert info is not None, f"{name} emits {key!r}, which KEYS does not hold"
            assert name in info.measures, f"KEYS[{key!r}] does not name {name}"
    for key in evaluation_keys:
        assert EVAL_MEASURE in KEYS[key].measures, key


def test_the_catalogue_holds_no_key_that_nothing_emits(evaluation_keys):
    emitted = declared()
    assert set(BUILTIN) >= {m for info in KEYS.values() for m in info.measures} - {EVAL_MEASURE}
    for key, info in KEYS.items():
        assert info.measures, key
        for m in info.measures:
            if m == EVAL_MEASURE:
                assert key in evaluation_keys, key
                continue
            assert any(
                key == e or fnmatch.fnmatchcase(e, key) or fnmatch.fnmatchcase(key, e)
                for e in emitted[m]
            ), f"KEYS[{key!r}] names {m}, which does not emit it"
    # legacy names are not keys of today, and each maps to one
    assert set(LEGACY_KEYS) == {"val_accuracy", "probe_accuracy"}
    assert not set(LEGACY_KEYS) & set(KEYS)
    assert {canonical_key(k) for k in LEGACY_KEYS} == {"val_acc", "probe_acc"}


def test_accuracies_use_the_short_name_everywhere(evaluation_keys):
    keys = set().union(*declared().values()) | evaluation_keys
    assert {"val_acc", "probe_acc", "train_acc"} <= keys
    assert not any(k.endswith("_accuracy") for k in keys)


def test_labels_come_from_the_catalogue():
    assert label_of("lambda_K_1") == r"$\lambda_K^1$"
    assert label_of("lambda_H_3") == r"$\lambda_H^{3}$"
    assert label_of("gamma_norm/bn1") == r"$\|\gamma\|$ (bn1)"
    assert label_of("probe_acc") == label_of("probe_accuracy") == "probe accuracy"
    assert label_of("train_acc", "train_accuracy") == "training accuracy"  # no [measure]
    assert label_of("lambda_K_1", "covariance_m1") == r"$\lambda_K^1$ [covariance_m1]"
    assert label_of("rank_K") == "rank_K" and label_of("custom_key") == "custom_key"


@pytest.mark.parametrize(
    ("key", "present", "want"),
    [
        ("lambda_H_1", ["edge_of_stability", "stability"], "stability"),
        ("lambda_H_1", ["stability", "edge_of_stability", "hessian"], "hessian"),
        ("train_acc", ["train_accuracy", "evaluation"], "evaluation"),
        ("train_acc", ["train_accuracy"], "train_accuracy"),
        ("lambda_K_1", ["covariance_m1", "covariance"], "covariance"),
        ("lambda_K_1", ["covariance_m1"], "covariance_m1"),
        ("custom", ["zeta", "alpha"], "alpha"),
        ("custom", [], None),
    ],
)
def test_a_bare_key_is_read_from_the_catalogue_s_first_measure(key, present, want):
    assert preferred_measure(key, present) == want


# --------------------------------------------------------------------------- run directories


def write_records(path, records, lr=0.1):
    path.mkdir(parents=True)
    train_ = {"model": "mlp", "dataset": "fashion_mnist", "lr": lr, "batch_size": 64}
    (path / "config.json").write_text(json.dumps({"name": "k", "train": train_}))
    (path / "status").write_text("finished\n")
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rec(step, measure, **values):
    return {"step": step, "epoch": step / 10, "measure": measure, "values": values}


def test_a_run_written_with_the_old_accuracy_names_reads_as_today(tmp_path):
    old = write_records(
        tmp_path / "old",
        [
            rec(s, m, **{f"{p}_loss": 1.0 - s / 100, f"{p}_accuracy": s / 100})
            for s in range(0, 50, 10)
            for m, p in (("validation", "val"), ("probe", "probe"))
        ],
    )
    new = write_records(
        tmp_path / "new",
        [
            rec(s, m, **{f"{p}_loss": 1.0 - s / 100, f"{p}_acc": s / 100})
            for s in range(0, 50, 10)
            for m, p in (("validation", "val"), ("probe", "probe"))
        ],
    )
    a, b = load_run(old), load_run(new)
    assert set(a["key"]) == set(b["key"]) == {"val_loss", "val_acc", "probe_loss", "probe_acc"}
    assert a.drop(columns="run").equals(b.drop(columns="run"))
    runs = read_runs([old, new])
    for key in ("val_acc", "probe_acc"):
        df = series(runs.records, key)
        assert len(df) == 10 and set(df["run"]) == {"old", "new"}
        assert resolve(runs, key)[1] == key
    ax = plot_trajectory(old, "val_acc").axes[0]
    line = next(ln for ln in ax.lines if ln.get_gid() == "raw:old")
    np.testing.assert_array_equal(line.get_ydata(), [0.0, 0.1, 0.2, 0.3, 0.4])
    assert ax.get_ylabel() == "validation accuracy"


def test_the_progress_display_reads_the_accuracy_under_either_name():
    for key in ("val_acc", "val_accuracy"):
        p = _Progress(use_tqdm=False)
        p.record({"values": {key: 0.75, "lambda_K_1": 2.0}})
        p.record({"values": {"lambda_H_1": 3.0}})  # a record without them keeps them
        assert (p.acc, p.lam_k, p.lam_h) == (0.75, 2.0, 3.0)


# --------------------------------------------------------------------------- one series


def test_one_series_picks_the_measure_keeps_the_last_finite_record_and_the_unresolved(tmp_path):
    nan = float("nan")
    records = [
        rec(0, "edge_of_stability", lambda_H_1=5.0),
        rec(0, "stability", lambda_H_1=4.0),
        rec(10, "stability", lambda_H_1=nan),
        rec(10, "stability", lambda_H_1=6.0),  # the finite record of step 10
        rec(10, "stability", lambda_H_1=nan),  # ... wins over a later NaN
        rec(20, "stability", lambda_H_1=nan),  # recorded, not resolved
        rec(30, "stability", lambda_H_1=7.0),
        rec(30, "stability", lambda_H_1=8.0),  # the last finite one wins
    ]
    runs = read_runs([write_records(tmp_path / "r", records)])
    df = series(runs.records, "lambda_H_1")  # stability before edge_of_stability
    assert df["step"].tolist() == [0, 10, 30] and df["value"].tolist() == [4.0, 6.0, 8.0]
    rows = series(runs.records, "lambda_H_1", "stability", run="r", dropna=False)
    assert rows["step"].tolist() == [0, 10, 20, 30]
    assert unresolved(rows)[["step", "epoch"]].values.tolist() == [[20, 2.0]]
    assert series(runs.records, "lambda_H_1", "stability", run="other").empty


def test_a_trajectory_selects_each_run_s_records_once(tmp_path, monkeypatch):
    nan = float("nan")
    paths = [
        write_records(
            tmp_path / f"r{i}",
            [rec(s, "covariance", lambda_K_star=nan if s == 20 else 1.0 + s) for s in range(50)],
        )
        for i in range(3)
    ]
    calls = {"series": 0, "unresolved": 0}

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(figures, "series", counted("series", figures.series))
    monkeypatch.setattr(figures, "unresolved", counted("unresolved", figures.unresolved))
    ax = plot_trajectory(paths, "lambda_K_star").axes[0]
    assert calls == {"series": 3, "unresolved": 3}
    marks = [ln for ln in ax.lines if str(ln.get_gid()).startswith("unresolved:")]
    assert len(marks) == 3 and all(list(m.get_xdata()) == [2.0] for m in marks)


# --------------------------------------------------------------------------- thresholds


def test_one_default_of_the_accuracy_thresholds(tmp_path):
    assert figures.DEFAULT_THRESHOLDS is DEFAULT_THRESHOLDS
    acc = [0.1, 0.55, 0.7, 0.9]
    path = write_records(
        tmp_path / "r",
        [rec(10 * i, "evaluation", train_acc=a) for i, a in enumerate(acc)]
        + [rec(10 * i, "covariance", lambda_K_1=1.0 + i) for i in range(4)],
    )
    ax = plot_trajectories(path, keys=["lambda_K_1"]).axes[0]
    drawn = {ln.get_gid(): ln.get_xdata()[0] for ln in ax.lines if "threshold:" in ln.get_gid()}
    table = break_even_points(read_runs([path])).iloc[0]
    assert len(drawn) == len(DEFAULT_THRESHOLDS)
    for t in DEFAULT_THRESHOLDS:  # the figure's lines are the table's crossings
        assert drawn[f"threshold:r:{t:g}"] == table[f"acc_{t:g}_epoch"]


# --------------------------------------------------------------------------- SLQ broadening


@pytest.mark.parametrize("sigma", [None, 0.05, 0.3])
def test_one_slq_broadening(sigma):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    res = be.slq((a + a.T) / 2, num_probes=3, num_steps=8, seed=1)
    nodes, weights = res.nodes.numpy(), res.weights.numpy()
    span = nodes.max() - nodes.min()
    grid = np.linspace(nodes.min() - 1, nodes.max() + 1, 5001)
    d = res.density(torch.from_numpy(grid)).numpy() if sigma is None else None
    d = res.density(torch.from_numpy(grid), sigma).numpy() if sigma is not None else d
    sigma2 = 1e-5 if sigma is None else sigma**2 / max(1.0, span)
    _, plotted = figures.spectral_density(nodes.ravel(), weights.ravel(), grid, sigma2=sigma2)
    area = np.sum((d[1:] + d[:-1]) / 2 * np.diff(grid))
    np.testing.assert_allclose(d / area, plotted, rtol=1e-9, atol=1e-12 * plotted.max())
    if sigma is None:  # the figures' width, PyHessian's: s^2 = 1e-5 * max(1, span)
        s = math.sqrt(1e-5 * max(1.0, span))
        assert d.max() >= weights.max() / 3 / (s * math.sqrt(2 * math.pi)) * 0.99


# --------------------------------------------------------------------------- train_accuracy


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3)
    )
    model.append(nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(120, 1, 6, 6, generator=g), torch.randint(0, 3, (120,), generator=g)


def by_hand(model, x, y):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = m(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


@pytest.mark.parametrize(
    ("options", "subset"),
    [
        ({}, slice(None)),  # default 1000: all of the 120 examples
        ({"num_examples": 50}, slice(0, 50)),
        ({"indices": [7, 3, 99]}, [7, 3, 99]),  # any order (distinct: test_hostile_inputs)
    ],
)
def test_train_accuracy_evaluates_a_fixed_subset_and_changes_nothing(options, subset):
    model, x, y = model_and_data()
    tracker = build_tracker(
        {"train_accuracy": {"every": 1, **options}},
        probe=(x[:20], y[:20]),
        train_data=(x, y),
        lr=0.1,
        batch_size=16,
        steps_per_epoch=8,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        xb, yb = x[16 * step : 16 * (step + 1)], y[16 * step : 16 * (step + 1)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        want = by_hand(model, x[subset], y[subset])
        state = copy.deepcopy(model.state_dict())
        grads = [p.grad.clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        tracker.before_step(step, model, (xb, yb), loss)  # measures at these parameters
        assert model.training and all(m.training for m in model.modules())
        assert torch.equal(torch.get_rng_state(), rng)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        opt.step()
        tracker.after_step(step, model)  # writes the record
        values = tracker.records_[-1]["values"]
        assert (values["train_loss"], values["train_acc"]) == pytest.approx(want, rel=1e-6)
    assert [r["measure"] for r in tracker.records_] == ["train_accuracy"] * 3


def test_train_accuracy_options_are_checked():
    for bad in ({"num_examples": 0}, {"indices": []}, {"indices": [1, -2]}, {"indices": [1.5]}):
        with pytest.raises(ValueError):
            be.TrainAccuracy(**bad)
    with pytest.raises(ValueError, match="indices name example 120; there are 120"):
        be.TrainAccuracy(indices=[0, 120]).check(10, 120, 16)


def test_figures_and_tables_find_the_measure_s_training_accuracy(tmp_path):
    acc = [0.1, 0.3, 0.6, 0.7, 0.9]
    other = [rec(10 * i, "stability", stability=st) for i, st in enumerate([0.5, 0.8, 1.2, 1, 1])]
    other += [rec(10 * i, "covariance", lambda_K_1=1.0 + i) for i in range(5)]
    paths = {
        m: write_records(
            tmp_path / m.replace("_", "-"),
            [rec(10 * i, m, train_acc=a, train_loss=1 - a) for i, a in enumerate(acc)] + other,
        )
        for m in ("evaluation", "train_accuracy")
    }
    tables = {m: break_even_points(read_runs([p])).drop(columns="run") for m, p in paths.items()}
    assert tables["train_accuracy"].equals(tables["evaluation"])
    row = tables["train_accuracy"].iloc[0]
    assert row["break_even_train_acc"] == 0.6 and row["acc_0.5_epoch"] == 2.0
    for m, p in paths.items():
        fig = plot_trajectories(p, keys=["lambda_K_1"])
        ax = fig.axes[0]
        gids = {ln.get_gid() for ln in ax.lines if "threshold:" in ln.get_gid()}
        assert gids == {f"threshold:{p.name}:{t:g}" for t in (0.5, 0.65, 0.8)}, m
        text = caption("trajectories", fig, read_runs([p]), {})
        assert "no training accuracy recorded" not in text
    # both recorded: the evaluation's is read
    both = write_records(
        tmp_path / "both",
        [rec(10 * i, "evaluation", train_acc=a) for i, a in enumerate(acc)]
        + [rec(10 * i, "train_accuracy", train_acc=0.0) for i in range(5)],
    )
    assert series(read_runs([both]).records, "train_acc")["value"].tolist() == acc


def test_a_missing_key_names_every_measure_that_records_it():
    from breakeven.plotting._data import missing

    text = missing(None, "train_acc")
    assert "--set train.eval_every=N" in text and "--set track.train_accuracy.every=N" in text
    assert text.index("eval_every") < text.index("train_accuracy")  # the preferred one first
    assert missing(None, "lambda_K_1").endswith("track it with --set track.covariance.every=N")
    assert "track.covariance.spectrum=true" in missing(None, "eig_K_3")
    assert "no tracked measure recorded it" in missing(None, "custom_key")
