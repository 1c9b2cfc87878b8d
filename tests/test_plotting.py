"""Figures from records: the plotted data checked against synthetic run and sweep directories
with known values (no training)."""

import ast
import base64
import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from breakeven.analysis import break_even_points, read_runs
from breakeven.cli import PLOT_KINDS, main
from breakeven.plotting import (
    FIGURES,
    available_figures,
    embed_predictions,
    exact_knn,
    plot,
    plot_batchnorm,
    plot_edge_of_stability,
    plot_embedding,
    plot_hessian_vs_covariance,
    plot_loss_change_vs_covariance,
    plot_m1_vs_m128,
    plot_spectra,
    plot_stability,
    plot_trajectories,
    plot_trajectory,
    report,
)
from breakeven.plotting.captions import caption
from breakeven.plotting.figures import UNRESOLVED_LABEL
from helpers import write_run, write_sweep

PLOTTING = Path(__file__).parents[1] / "src" / "breakeven" / "plotting"
STEPS = list(range(0, 100, 10))  # 0, 10, ..., 90
ACC = [0.1, 0.2, 0.35, 0.5, 0.6, 0.66, 0.7, 0.8, 0.85, 0.9]  # >= 0.5 at 30, >= 0.65 at 50
ALL = (
    "evaluation",
    "covariance",
    "covariance_m1",
    "hessian",
    "hessian_density",
    "loss_change",
    "stability",
    "edge_of_stability",
    "alignment",
    "batchnorm",
    "predictions",
    "preconditioned_sharpness",
)


def epoch(step):
    return step / 40


def encode(arr):
    arr = np.ascontiguousarray(arr)
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.tobytes()).decode(),
    }


def known_run(path, lr=0.1, seed=0, measures=ALL, stability=None, predictions_every=20, acc=ACC):
    """A run directory with known records (training accuracy ``acc`` at STEPS); returns
    {(measure, key): {step: value}}."""
    rng = np.random.default_rng(int(1000 * lr) + seed)
    cfg = {
        "name": "synthetic",
        "train": {"model": "mlp", "dataset": "fashion_mnist", "lr": lr, "batch_size": 64},
        "train_seed": seed,
    }
    cfg["train"]["init_seed"] = seed
    recs, known = [], {}

    def add(step, measure, values, arrays=None):
        r = {"step": step, "epoch": epoch(step), "measure": measure, "values": values}
        r.update(seconds=0.01, matvecs=0)
        if arrays:
            r["arrays"] = arrays
        recs.append(r)
        for k, v in values.items():
            known.setdefault((measure, k), {})[step] = v

    lam_k = {s: float(1 + 4 * rng.random()) for s in STEPS}
    lam_h = {s: float(10 + 5 * rng.random()) for s in range(0, 100, 20)}
    lam_h[60] = 40.0  # the peak of lambda_H^1
    for i, s in enumerate(STEPS):
        if "evaluation" in measures:
            add(s, "evaluation", {"train_acc": acc[i], "train_loss": 2 - acc[i], "lr": lr})
        if "covariance" in measures:
            eig = np.sort(rng.random(5))[::-1] * lam_k[s] * 0.9
            values = {
                "lambda_K_1": lam_k[s],
                "condition_K": float(eig[-1] / lam_k[s]),
                "trace_K": 10 ** (i / 3),  # 1 .. 1000: spans 3 decades
                "M": 64.0,
                "L": 6.0,
                "eig_K_0": lam_k[s],
                **{f"eig_K_{j + 1}": float(e) for j, e in enumerate(eig[1:])},
                "eig_K_5": 1e-17,  # the L-th: zero by centring
            }
            add(s, "covariance", values)
        if "covariance_m1" in measures:
            add(s + 3, "covariance_m1", {"lambda_K_1": float(64 * rng.random()), "M": 1.0})
        if "loss_change" in measures:
            add(s + 2, "loss_change", {"delta_loss": float(rng.normal()), "loss_before": 1.0})
        if "stability" in measures:
            st = stability[i] if stability is not None else 0.5
            add(s, "stability", {"stability": st, "break_even": float(st >= 1), "s2": 1.0})
        if "edge_of_stability" in measures:
            lh = float(10 + 30 * rng.random())
            add(s, "edge_of_stability", {"lambda_H_1": lh, "eos_threshold": 2 / lr})
        if "alignment" in measures:
            add(s, "alignment", {"alignment": float(1 + rng.random()), "k": 5.0})
        if "batchnorm" in measures:
            g = float(3 + rng.random())
            add(s, "batchnorm", {"gamma_norm/bn1": g + 1, "gamma_norm_last": g})
        if "hessian" in measures and s in lam_h:
            add(s, "hessian", {"lambda_H_1": lam_h[s], "lambda_H_2": 5.0, "lambda_H_3": 1.0})
        if "preconditioned_sharpness" in measures:  # Adam's (no random draw: others unchanged)
            values = {"precond_lambda_H_1": 100.0 + i, "precond_eos_threshold": 38 / lr}
            add(s, "preconditioned_sharpness", values)
        if "hessian_density" in measures and s in (0, 30, 70):
            nodes = np.sort(rng.normal(size=8)) * 3
            w = rng.random(8)
            w[:4] /= w[:4].sum()  # two probes of 4 nodes, each probe's weights sum to 1
            w[4:] /= w[4:].sum()
            values = {f"node_{j}": float(v) for j, v in enumerate(nodes)}
            values.update({f"weight_{j}": float(v) for j, v in enumerate(w)})
            add(s, "hessian_density", values)
        if "predictions" in measures and s % predictions_every == 0:
            logits = rng.normal(size=(6, 3)) + s / 30
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            add(s, "predictions", {}, {"predictions": encode(p.astype(np.float16))})
    recs.sort(key=lambda r: r["step"])
    write_run(path, recs, config=cfg)
    return known


def write_series(path, values, lr=0.1, momentum=0.0):
    """A run directory holding exactly ``values``: {(measure, key): {step: value}}, a record
    per (step, measure), epoch = step / 40."""
    train = {"model": "mlp", "dataset": "fashion_mnist", "lr": lr, "momentum": momentum}
    recs = {}
    for (measure, key), by_step in values.items():
        for step, v in by_step.items():
            r = recs.setdefault((step, measure), {"step": step, "epoch": epoch(step)})
            r.update(measure=measure, values={**r.get("values", {}), key: v})
    rows = [recs[k] for k in sorted(recs)]
    return write_run(path, rows, config={"name": "s", "train": train})


def known_sweep(root, lrs=(0.1, 0.01), seeds=(0, 1), **kw):
    """A sweep of :func:`known_run` runs named ``lr<lr>_s<seed>``; returns {name: known}."""
    one = functools.partial(known_run, **kw)
    return write_sweep(root, lrs, seeds, one, name="lr{lr}_s{seed}")


def lines(ax, prefix):
    return {ln.get_gid(): ln for ln in ax.lines if str(ln.get_gid()).startswith(prefix)}


def points(ax, gid):
    (c,) = [c for c in ax.collections if c.get_gid() == gid]
    return np.asarray(c.get_offsets())


def centred_mean(y, w):
    """Mean of y[i - w//2 .. i + (w-1)//2], clipped at the ends (an even window: one more
    value before i than after, as pandas' centred rolling window)."""
    lo, hi = w // 2, (w - 1) // 2
    return np.array([np.mean(y[max(0, i - lo) : i + hi + 1]) for i in range(len(y))])


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    known = known_run(root / "run", stability=[0.5, 0.8, 0.9, 1.2, 0.7, 1.5, 2, 1, 1, 1])
    return root / "run", known


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return root, known_sweep(root)


# ----------------------------------------------------------------------------- rooms


def test_plotting_never_imports_torch_or_the_model_rooms():
    forbidden = ("torch", "breakeven.operators", "breakeven.measures", "breakeven.tracking")
    files = sorted(PLOTTING.glob("*.py"))
    assert len(files) >= 4
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative to breakeven.plotting
                    base = ["breakeven", "plotting"][: 3 - node.level]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{f.name} imports {name}"


def test_cli_kinds_match_the_figures():
    assert tuple(FIGURES) == PLOT_KINDS


# ----------------------------------------------------------------------------- trajectories


def test_trajectory_raw_smoothed_thresholds_and_log_scale(one):
    path, known = one
    fig = plot_trajectory(path, "lambda_K_1", smooth=3, thresholds=(0.5, 0.65, 0.99))
    ax = fig.axes[0]
    vals = known[("covariance", "lambda_K_1")]
    x = np.array([epoch(s) for s in STEPS])
    y = np.array([vals[s] for s in STEPS])
    raw, smooth = lines(ax, "raw:")["raw:run"], lines(ax, "smooth:")["smooth:run"]
    np.testing.assert_array_equal(raw.get_xdata(), x)
    np.testing.assert_array_equal(raw.get_ydata(), y)
    assert raw.get_alpha() < 0.5  # faint
    np.testing.assert_allclose(smooth.get_ydata(), centred_mean(y, 3), rtol=1e-12)
    vlines = lines(ax, "threshold:")
    assert set(vlines) == {"threshold:run:0.5", "threshold:run:0.65"}  # 0.99 never reached
    assert vlines["threshold:run:0.5"].get_xdata()[0] == epoch(30)
    assert vlines["threshold:run:0.65"].get_xdata()[0] == epoch(50)
    assert r"\lambda_K^1" in ax.get_ylabel() and ax.get_xlabel() == "epoch"
    assert ax.get_yscale() == "linear"  # 1..5: less than 2 decades
    assert ax.get_legend().get_texts()[0].get_text() == "lr=0.1"

    ax = plot_trajectory(path, "trace_K", smooth=1, x="step").axes[0]
    assert ax.get_yscale() == "log"  # 1..1000
    np.testing.assert_array_equal(lines(ax, "raw:")["raw:run"].get_xdata(), STEPS)
    assert not lines(ax, "smooth:")
    assert lines(ax, "threshold:")["threshold:run:0.65"].get_xdata()[0] == 50
    assert plot_trajectory(path, "trace_K", log=False).axes[0].get_yscale() == "linear"
    # a key that is negative somewhere never gets a log scale
    assert plot_trajectory(path, "delta_loss").axes[0].get_yscale() == "linear"
    # "measure:key" picks the measure
    ax = plot_trajectory(path, "covariance_m1:lambda_K_1", smooth=1).axes[0]
    m1 = known[("covariance_m1", "lambda_K_1")]
    np.testing.assert_array_equal(lines(ax, "raw:")["raw:run"].get_ydata(), list(m1.values()))
    assert "covariance_m1" in ax.get_ylabel()


def test_trajectories_of_a_sweep_colour_by_value_and_thin_seeds(sweep):
    root, known = sweep
    fig = plot_trajectories(root, smooth=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        r"$\lambda_K^1$",
        r"$\lambda_K^*/\lambda_K^1$",
        r"$\mathrm{Tr}(\mathbf{K})$",
        r"$\lambda_H^1$",
    ]
    ax = fig.axes[0]
    sm = lines(ax, "smooth:")
    assert len(sm) == 4
    colour = {g: sm[g].get_color() for g in sm}
    assert colour["smooth:lr0.1_s0"] == colour["smooth:lr0.1_s1"]
    assert colour["smooth:lr0.01_s0"] == colour["smooth:lr0.01_s1"]
    assert colour["smooth:lr0.1_s0"] != colour["smooth:lr0.01_s0"]
    single = plot_trajectory(root / "runs" / "lr0.1_s0", "lambda_K_1", smooth=3).axes[0]
    assert (
        sm["smooth:lr0.1_s0"].get_linewidth()
        < lines(single, "smooth:")["smooth:lr0.1_s0"].get_linewidth()
    )
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:2] == ["lr=0.01", "lr=0.1"]
    assert "0.65" in texts[2]  # the thresholds' entry
    y = [known["lr0.01_s1"][("covariance", "lambda_K_1")][s] for s in STEPS]
    np.testing.assert_array_equal(lines(ax, "raw:")["raw:lr0.01_s1"].get_ydata(), y)
    # lambda_H_1 is read from the hessian measure (preferred over stability / EoS)
    h = lines(fig.axes[3], "raw:")["raw:lr0.1_s0"]
    np.testing.assert_array_equal(
        h.get_ydata(), list(known["lr0.1_s0"][("hessian", "lambda_H_1")].values())
    )


def test_trajectories_default_keys_that_exist_and_missing_keys(tmp_path):
    known_run(tmp_path / "r", measures=("evaluation", "covariance"))
    fig = plot_trajectories(tmp_path / "r")
    assert len(fig.axes) == 3  # no lambda_H_1 recorded
    with pytest.raises(ValueError, match=r"lambda_H_1.*track.hessian.every"):
        plot_trajectories(tmp_path / "r", ["lambda_K_1", "lambda_H_1"])
    known_run(tmp_path / "e", measures=("evaluation",))
    with pytest.raises(ValueError, match=r"track\.covariance\.every"):
        plot_trajectories(tmp_path / "e")


def test_batchnorm_panel(one, tmp_path):
    path, known = one
    fig = plot_batchnorm(path, smooth=1)
    assert len(fig.axes) == 4
    assert r"\|g\|/\|g_5\|" in fig.axes[0].get_ylabel()
    assert r"\|\gamma\|" in fig.axes[1].get_ylabel()
    for ax, key in zip(fig.axes, [("alignment", "alignment"), ("batchnorm", "gamma_norm_last")]):
        np.testing.assert_array_equal(
            lines(ax, "raw:")["raw:run"].get_ydata(), list(known[key].values())
        )
    known_run(tmp_path / "nobn", measures=("covariance", "alignment"))
    with pytest.raises(ValueError, match=r"gamma_norm_last.*track.batchnorm"):
        plot_batchnorm(tmp_path / "nobn")


# ----------------------------------------------------------------------------- never hide data


def drawn(ax, run):
    """The raw and smoothed lines of ``run`` in ``ax`` (smoothed: None when not drawn)."""
    return lines(ax, "raw:").get(f"raw:{run}"), lines(ax, "smooth:").get(f"smooth:{run}")


def test_a_series_of_three_is_drawn_as_recorded_not_flattened(tmp_path):
    # the quick preset: lambda_H^1 measured 3 times per run; a window of 5 made it a constant
    rising, falling = {0: 25.0, 40: 40.0, 80: 55.0}, {0: 42.0, 40: 30.0, 80: 19.0}
    for name, h in (("up", rising), ("down", falling)):
        write_series(tmp_path / name, {("hessian", "lambda_H_1"): h})
    runs = read_runs([tmp_path / "up", tmp_path / "down"])
    for fig in (plot_trajectories(runs), plot_trajectory(runs, "lambda_H_1")):
        ax = fig.axes[-1]
        for run, h in (("up", rising), ("down", falling)):
            raw, smooth = drawn(ax, run)
            assert smooth is None
            np.testing.assert_array_equal(raw.get_ydata(), list(h.values()))
            np.testing.assert_array_equal(raw.get_xdata(), [epoch(s) for s in h])
            assert raw.get_marker() == "o"  # sparse: each record marked
            assert raw.get_alpha() is None  # not faint: it is the curve
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert not any("moving average" in t for t in texts)


def test_smoothing_rule_over_lengths_and_windows(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8, 9, 14, 15, 16, 40):
        steps = [10 * i for i in range(n)]
        y = rng.normal(size=n).cumsum() + 10
        path = write_series(tmp_path / f"n{n}", {("covariance", "lambda_K_1"): dict(zip(steps, y))})
        for w in (0, 1, 2, 3, 5):
            ax = plot_trajectory(path, "lambda_K_1", smooth=w).axes[0]
            raw, smooth = drawn(ax, f"n{n}")
            np.testing.assert_array_equal(raw.get_ydata(), y)  # always the recorded values
            np.testing.assert_array_equal(raw.get_xdata(), [epoch(s) for s in steps])
            assert (raw.get_marker() == "o") == (n < 15), (n, w)
            texts = [t.get_text() for t in ax.get_legend().get_texts()]
            if w > 1 and n >= 3 * w:
                np.testing.assert_allclose(smooth.get_ydata(), centred_mean(y, w), rtol=1e-12)
                assert raw.get_alpha() < 1 and raw.get_linewidth() < smooth.get_linewidth()
                assert f"moving average of {w}" in texts and "recorded values" in texts
            else:
                assert smooth is None, (n, w)
                assert not any("moving average" in t for t in texts)


def test_batchnorm_panel_smooths_long_series_only_and_keeps_the_records(tmp_path):
    long = [10 * i for i in range(20)]
    values = {
        ("alignment", "alignment"): {s: 1 + (s % 7) / 10 for s in long},
        ("batchnorm", "gamma_norm_last"): {0: 3.0, 100: 3.5, 190: 2.5},
        ("covariance", "lambda_K_1"): {s: 2 + np.sin(s) for s in long},
        ("covariance", "condition_K"): {0: 0.1, 190: 0.3},
    }
    path = write_series(tmp_path / "bn", values)
    fig = plot_batchnorm(path)
    for ax, key in zip(fig.axes, values):
        raw, smooth = drawn(ax, "bn")
        y = list(values[key].values())
        np.testing.assert_array_equal(raw.get_ydata(), y)
        if len(y) >= 15:
            np.testing.assert_allclose(smooth.get_ydata(), centred_mean(np.array(y), 5))
            assert raw.get_alpha() < 1 and raw.get_marker() == "None"
        else:
            assert smooth is None and raw.get_marker() == "o"


def test_one_smoothing_helper():
    # every moving average of the figures is _data.moving_average, called from one place
    calls = []
    for f in sorted(PLOTTING.glob("*.py")):
        text = f.read_text()
        assert ".rolling(" not in text or f.name == "_data.py", f.name
        calls += [f.name for _ in re.finditer(r"\bmoving_average\(", text)]
    assert sorted(calls) == ["_data.py", "figures.py"]  # its definition, its one use


def test_stability_star_and_its_legend_only_where_a_run_reached_one(tmp_path):
    cases = {
        "below": [0.2, 0.5, 0.9],
        "at_once": [1.0, 0.4, 0.3],
        "later": [0.5, 0.8, 1.3, 0.9, 1.1],
        "close": [0.999, 0.9999, 0.99],
    }
    for name, st in cases.items():
        steps = [20 * i for i in range(len(st))]
        write_series(tmp_path / name, {("stability", "stability"): dict(zip(steps, st))})
    table = break_even_points(read_runs([tmp_path / n for n in cases]), ())
    want = dict(zip(table["run"], table["break_even_step"]))
    assert np.isnan(want["below"]) and np.isnan(want["close"]) and want["later"] == 40
    assert np.isnan(want["at_once"])  # unstable at initialisation: no crossing from below
    for name, st in cases.items():
        ax = plot_stability(tmp_path / name).axes[0]
        line = lines(ax, "stability:")[f"stability:{name}"]
        np.testing.assert_array_equal(line.get_ydata(), st)
        assert line.get_marker() == "o"
        stars = lines(ax, "break_even:")
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        if np.isnan(want[name]):
            assert not stars and "break-even point" not in texts
        else:
            assert stars[f"break_even:{name}"].get_xdata()[0] == want[name]
            assert "break-even point" in texts
    runs = read_runs([tmp_path / n for n in cases])
    ax = plot_stability(runs).axes[0]
    assert set(lines(ax, "break_even:")) == {"break_even:later"}


def test_edge_of_stability_names_the_threshold_of_the_configs(tmp_path):
    for name, momentum in (("plain", 0.0), ("heavy", 0.9)):
        thr = (2 + 2 * momentum) / 0.1
        write_series(
            tmp_path / name,
            {
                ("edge_of_stability", "lambda_H_1"): {0: 5.0, 50: 30.0, 100: 12.0},
                ("edge_of_stability", "eos_threshold"): {0: thr, 50: thr, 100: thr},
            },
            momentum=momentum,
        )
    ax = plot_edge_of_stability(tmp_path / "plain").axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert r"$2/\eta$" in ax.get_title() and r"$2/\eta$" in texts
    assert "beta" not in ax.get_title() + ax.get_ylabel() + "".join(texts)
    lam = lines(ax, "lambda_H_1:")["lambda_H_1:plain"]
    np.testing.assert_array_equal(lam.get_ydata(), [5.0, 30.0, 12.0])
    assert lam.get_marker() == "o"
    for runs in (tmp_path / "heavy", [tmp_path / "plain", tmp_path / "heavy"]):
        ax = plot_edge_of_stability(runs).axes[0]
        assert r"(2 + 2\beta)/\eta" in ax.get_title()


# ----------------------------------------------------------------------------- scatters


def test_hessian_and_loss_change_against_lambda_k(sweep):
    root, known = sweep
    fig = plot_hessian_vs_covariance(root)
    ax = fig.axes[0]
    k = known["lr0.1_s1"]
    # hessian every 20 steps (sparser): each paired with K at the same step
    xy = points(ax, "points:lr0.1_s1")
    hs = sorted(k[("hessian", "lambda_H_1")])
    np.testing.assert_array_equal(xy[:, 0], [k[("covariance", "lambda_K_1")][s] for s in hs])
    np.testing.assert_array_equal(xy[:, 1], [k[("hessian", "lambda_H_1")][s] for s in hs])
    assert r"\lambda_H^1" in ax.get_ylabel() and r"\lambda_K^1" in ax.get_xlabel()
    assert len(ax.collections) == 4

    ax = plot_loss_change_vs_covariance(root).axes[0]
    # loss_change at steps 2, 12, ...: K step s paired with the nearest, s + 2
    xy = points(ax, "points:lr0.1_s1")
    np.testing.assert_array_equal(xy[:, 0], [k[("covariance", "lambda_K_1")][s] for s in STEPS])
    np.testing.assert_array_equal(
        xy[:, 1], [k[("loss_change", "delta_loss")][s + 2] for s in STEPS]
    )
    assert r"\Delta\mathcal{L}" in ax.get_ylabel() and ax.get_yscale() == "linear"
    assert lines(ax, "zero")["zero"].get_ydata()[0] == 0


def test_m1_against_m128_with_pearson_r(sweep, tmp_path):
    root, known = sweep
    ax = plot_m1_vs_m128(root).axes[0]
    xs, ys = [], []
    for run, k in known.items():
        xy = points(ax, f"points:{run}")
        x = [k[("covariance", "lambda_K_1")][s] for s in STEPS]
        y = [k[("covariance_m1", "lambda_K_1")][s + 3] for s in STEPS]  # nearest step
        np.testing.assert_array_equal(xy[:, 0], x)
        np.testing.assert_array_equal(xy[:, 1], y)
        xs += x
        ys += y
    r = float(re.search(r"Pearson r = (-?[0-9.]+)", ax.get_title()).group(1))
    assert r == pytest.approx(np.corrcoef(xs, ys)[0, 1], abs=6e-4)
    assert "M = 64" in ax.get_xlabel() and "M = 1 " in ax.get_ylabel()
    known_run(tmp_path / "r", measures=("covariance",))
    with pytest.raises(ValueError, match=r"covariance_m1.*batch_size = 1"):
        plot_m1_vs_m128(tmp_path / "r")


# ----------------------------------------------------------------------------- spectra


def test_spectra_at_the_peaks(one, tmp_path):
    path, known = one
    fig = plot_spectra(path)
    ax_k, ax_h = fig.axes
    lam = known[("covariance", "lambda_K_1")]
    peak = max(lam, key=lam.get)
    line = lines(ax_k, "K:")["K:run"]
    want = [known[("covariance", f"eig_K_{i}")][peak] for i in range(5)]  # the 6th left out
    np.testing.assert_array_equal(line.get_ydata(), want)
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4, 5])
    assert ax_k.get_yscale() == "log"
    # lambda_H_1 peaks at step 60: the nearest density record is at step 70
    h = lines(ax_h, "H:")["H:run"]
    nodes = np.array([known[("hessian_density", f"node_{i}")][70] for i in range(8)])
    w = np.array([known[("hessian_density", f"weight_{i}")][70] for i in range(8)])
    t = np.asarray(h.get_xdata())
    var = 1e-5 * max(1.0, nodes.max() - nodes.min())
    d = (w * np.exp(-((t[:, None] - nodes) ** 2) / (2 * var))).sum(1) / np.sqrt(2 * np.pi * var)
    d /= np.sum((d[1:] + d[:-1]) / 2 * np.diff(t))
    np.testing.assert_allclose(h.get_ydata(), d, rtol=1e-9, atol=1e-12 * d.max())
    assert t.min() < nodes.min() and t.max() > nodes.max()
    assert ax_h.get_yscale() == "log"

    # without density records: the top-k eigenvalues of the hessian record at the peak
    known_run(tmp_path / "k", measures=("covariance", "hessian"))
    ax_h = plot_spectra(tmp_path / "k").axes[1]
    np.testing.assert_array_equal(lines(ax_h, "H:")["H:k"].get_ydata(), [40.0, 5.0, 1.0])
    # no eigenvalues of K: H alone by default, an error when K is asked for
    known_run(tmp_path / "n", measures=("hessian",))
    (ax,) = plot_spectra(tmp_path / "n").axes
    assert lines(ax, "H:") and not lines(ax, "K:")
    with pytest.raises(ValueError, match=r"track.covariance.spectrum=true"):
        plot_spectra(tmp_path / "n", parts=["K", "H"])
    known_run(tmp_path / "c", measures=("covariance",))
    with pytest.raises(ValueError, match=r"track.hessian_density.every"):
        plot_spectra(tmp_path / "c", parts=["K", "H"])
    assert len(plot_spectra(tmp_path / "c").axes) == 1
    assert lines(plot_spectra(tmp_path / "c").axes[0], "K:")
    known_run(tmp_path / "e", measures=("evaluation",))
    with pytest.raises(ValueError, match="no spectrum recorded"):
        plot_spectra(tmp_path / "e")
    assert "no spectrum recorded" in available_figures(tmp_path / "e")["spectra"]


def test_spectra_titles_name_what_is_drawn_and_where(one, tmp_path):
    fig = plot_spectra(one[0])
    ax_k, ax_h = fig.axes
    assert (ax_k.get_gid(), ax_h.get_gid()) == ("K", "H-density")
    assert "at max" in ax_k.get_title()
    # lambda_H^1 peaks at step 60, the nearest density record is at 70
    assert "nearest the step of max" in ax_h.get_title()
    assert r"$\mathbf{K}$ and $\mathbf{H}$" in fig.get_suptitle()
    known_run(tmp_path / "c", measures=("covariance",))
    fig = plot_spectra(tmp_path / "c")
    assert [ax.get_gid() for ax in fig.axes] == ["K"]
    assert "H" not in fig.get_suptitle().replace(r"\mathbf", "")
    known_run(tmp_path / "h", measures=("hessian",))
    (ax,) = plot_spectra(tmp_path / "h").axes
    assert ax.get_gid() == "H-top" and "at max" in ax.get_title()


# ----------------------------------------------------------------------------- stability


def test_stability_marks_the_break_even_point(one, sweep):
    path, known = one
    ax = plot_stability(path).axes[0]
    st = known[("stability", "stability")]
    line = lines(ax, "stability:")["stability:run"]
    np.testing.assert_array_equal(line.get_xdata(), STEPS)
    np.testing.assert_array_equal(line.get_ydata(), [st[s] for s in STEPS])
    star = lines(ax, "break_even:")["break_even:run"]
    assert star.get_xdata()[0] == 30 and star.get_ydata()[0] == 1.2  # first >= 1
    assert lines(ax, "break_even_line:")["break_even_line:run"].get_xdata()[0] == 30
    assert list(lines(ax, "unit")["unit"].get_ydata()) == [1, 1]
    assert "Eq. 1" in ax.get_title()
    # stability stays at 0.5 in the sweep's runs: no break-even point
    ax = plot_stability(sweep[0]).axes[0]
    assert len(lines(ax, "stability:")) == 4 and not lines(ax, "break_even:")


def test_edge_of_stability(sweep):
    root, known = sweep
    ax = plot_edge_of_stability(root).axes[0]
    for run, lr in (("lr0.1_s0", 0.1), ("lr0.01_s1", 0.01)):
        lam = lines(ax, f"lambda_H_1:{run}")[f"lambda_H_1:{run}"]
        thr = lines(ax, f"eos_threshold:{run}")[f"eos_threshold:{run}"]
        want = known[run][("edge_of_stability", "lambda_H_1")]
        np.testing.assert_array_equal(lam.get_ydata(), [want[s] for s in STEPS])
        np.testing.assert_allclose(thr.get_ydata(), 2 / lr)
        assert thr.get_color() == lam.get_color() and thr.get_linestyle() == "--"
    assert ax.get_yscale() == "linear"  # 10 .. 200: not 2 decades


# ----------------------------------------------------------------------------- what exists


def test_available_figures_says_what_is_missing(tmp_path, one):
    known_run(tmp_path / "r", measures=("evaluation", "covariance"))
    avail = available_figures(read_runs(tmp_path / "r"))
    assert set(avail) == set(FIGURES)
    assert avail["trajectories"] == "" and avail["spectra"] == ""  # K's spectrum alone
    assert "track.stability" in avail["stability"]
    assert "track.hessian" in avail["hessian-vs-covariance"]
    assert "track.loss_change" in avail["loss-change"]
    assert "covariance_m1" in avail["m1-vs-m128"]
    assert "track.batchnorm" in avail["batchnorm"]
    assert "track.edge_of_stability" in avail["edge-of-stability"]
    assert "predictions" in avail["embedding"]
    assert all("\n" not in v for v in avail.values())
    assert all(v == "" for v in available_figures(one[0]).values())


# ----------------------------------------------------------------------------- files, CLI


def test_cli_writes_png_svg_pdf_and_rejects_bad_input(one, tmp_path, capsys):
    path, _ = one
    magic = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}
    for ext, head in magic.items():
        out = tmp_path / f"f.{ext}"
        kind = {"png": "trajectories", "pdf": "stability", "svg": "spectra"}[ext]
        assert main(["plot", kind, str(path), "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out)
        assert out.read_bytes().startswith(head)
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()
    out = tmp_path / "k.png"
    args = ["plot", "trajectories", str(path), "--out", str(out), "--key", "trace_K"]
    assert main([*args, "--key", "alignment", "--threshold", "0.5", "--smooth", "2"]) == 0
    assert out.exists()

    assert main(["plot", "stability", str(path), "--out", str(tmp_path / "f.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and ".png" in err and "'.jpg'" in err
    assert not (tmp_path / "f.jpg").exists()
    known_run(tmp_path / "bare", measures=("covariance",))
    assert main(["plot", "stability", str(tmp_path / "bare"), "--out", str(out)]) == 2
    assert "track.stability.every" in capsys.readouterr().err
    assert main(["plot", "nope", str(path), "--out", str(out)]) == 2
    assert "choose from trajectories" in capsys.readouterr().err
    assert main(["plot", "stability", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="takes no key"):
        plot("stability", path, out, keys=["stability"])


# ----------------------------------------------------------------------------- embedding


def test_embedding_shared_umap_with_nearest_point_background(tmp_path):
    pytest.importorskip("umap")
    known = known_sweep(tmp_path, lrs=(0.1, 0.01), seeds=(0,), predictions_every=40)
    with pytest.warns(UserWarning, match="n_neighbors lowered from 15 to 5"):
        fig = plot_embedding(tmp_path, resolution=40)
    ax = fig.axes[0]
    xy, vals = [], []
    for run in ("lr0.1_s0", "lr0.01_s0"):
        line = lines(ax, f"trajectory:{run}")[f"trajectory:{run}"]
        assert len(line.get_xdata()) == 3  # predictions at steps 0, 40, 80
        xy += list(zip(line.get_xdata(), line.get_ydata()))
        vals += [known[run][("covariance", "lambda_K_1")][s] for s in (0, 40, 80)]
    xy, vals = np.array(xy), np.array(vals)
    (im,) = [i for i in ax.images if i.get_gid() == "background"]
    x0, x1, y0, y1 = im.get_extent()
    assert x0 < xy[:, 0].min() and x1 > xy[:, 0].max()
    gx = x0 + (x1 - x0) * (np.arange(40) + 0.5) / 40
    gy = y0 + (y1 - y0) * (np.arange(40) + 0.5) / 40
    X, Y = np.meshgrid(gx, gy)
    d = (X.ravel()[:, None] - xy[:, 0]) ** 2 + (Y.ravel()[:, None] - xy[:, 1]) ** 2
    np.testing.assert_array_equal(np.asarray(im.get_array()), vals[d.argmin(1)].reshape(40, 40))
    assert "n_neighbors=5" in ax.get_title()
    # one shared embedding, reproducible with the fixed random_state
    with pytest.warns(UserWarning):
        df, info = embed_predictions(tmp_path)
    assert info["n_neighbors"] == 5 and info["n_points"] == 6
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), xy, rtol=1e-6)
    with pytest.raises(ValueError, match=r"track\.predictions\.every"):
        embed_predictions(tmp_path, measure="nothing")
    # the exact neighbours handed to UMAP
    X = np.random.default_rng(0).normal(size=(300, 7))
    X[5] = X[4]  # a duplicate: each is still its own first neighbour
    idx, dist = exact_knn(X, 4, chunk=64)
    full = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(full, -1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    np.fill_diagonal(full, 0)
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4], atol=1e-5)
    np.testing.assert_allclose(dist, np.take_along_axis(full, idx, 1), atol=1e-5)


def test_cli_embedding_until_accuracy_cuts_each_run_at_its_crossing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("umap")
    known_run(tmp_path / "fast", measures=("evaluation", "covariance", "predictions"))
    slow = [a / 2 for a in ACC]  # never reaches 0.65
    known_run(
        tmp_path / "slow", lr=0.01, measures=("evaluation", "covariance", "predictions"), acc=slow
    )
    drawn_figs = []

    @functools.wraps(plot_embedding)
    def spy(*args, **kw):
        drawn_figs.append(plot_embedding(*args, **kw))
        return drawn_figs[-1]

    monkeypatch.setitem(FIGURES, "embedding", spy)
    paths = [str(tmp_path / "fast"), str(tmp_path / "slow")]
    out = tmp_path / "e.png"
    for until, fast_steps in ((None, 5), ("0.65", 3)):
        args = ["plot", "embedding", *paths, "--out", str(out)]
        with pytest.warns(UserWarning, match="n_neighbors lowered"):
            assert main(args + (["--until-accuracy", until] if until else [])) == 0
        assert capsys.readouterr().out.strip() == str(out) and out.exists()
        ax = drawn_figs[-1].axes[0]
        # predictions at steps 0, 20, .., 80; "fast" first reaches 0.65 at step 50
        assert len(lines(ax, "trajectory:fast")["trajectory:fast"].get_xdata()) == fast_steps
        assert len(lines(ax, "trajectory:slow")["trajectory:slow"].get_xdata()) == 5
        if until:
            assert "until training accuracy ≥ 0.65" in ax.get_title()
            assert "1 of 2 runs never reached it" in ax.get_title()
        else:
            assert "until" not in ax.get_title()
    # the option is the embedding's; without training accuracy it says what is missing
    assert (
        main(["plot", "trajectories", paths[0], "--out", str(out), "--until-accuracy", "0.5"]) == 2
    )
    assert "no option until_accuracy" in capsys.readouterr().err
    known_run(tmp_path / "noacc", measures=("covariance", "predictions"))
    args = ["plot", "embedding", str(tmp_path / "noacc"), "--out", str(out)]
    assert main([*args, "--until-accuracy", "0.65"]) == 2
    assert "train_acc" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(4))
def test_unresolved_values_are_marked_along_the_bottom_never_drawn_as_data(tmp_path, seed):
    # lambda_K^* below K's resolution is recorded as NaN (null): the figures mark the step
    # and draw no value there, and the axes' data limits come from the resolved values only
    rng = np.random.default_rng(seed)
    steps = list(range(0, 200, 10))
    values = {s: float(0.01 + rng.random()) for s in steps}
    nan_steps = sorted(
        int(s) for s in rng.choice(steps[1:], size=rng.integers(1, 6), replace=False)
    )
    recorded = {s: (None if s in nan_steps else v) for s, v in values.items()}
    k1 = {s: 1.0 + s for s in steps}
    write_series(
        tmp_path / "r", {("covariance", "condition_K"): recorded, ("covariance", "lambda_K_1"): k1}
    )
    fig = plot_trajectory(tmp_path / "r", "condition_K", x="step", smooth=1, log=False)
    ax = fig.axes[0]
    (raw,) = lines(ax, "raw:").values()
    kept = [s for s in steps if s not in nan_steps]
    assert list(raw.get_xdata()) == kept
    assert list(raw.get_ydata()) == [values[s] for s in kept]
    (marks,) = lines(ax, "unresolved:").values()
    assert list(marks.get_xdata()) == nan_steps
    assert ax.dataLim.y0 == pytest.approx(min(values[s] for s in kept))
    assert UNRESOLVED_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    runs = read_runs(tmp_path / "r")
    panel = plot_trajectories(runs, ["condition_K", "lambda_K_1"], x="step")
    text = caption("trajectories", panel, runs, {"keys": ["condition_K", "lambda_K_1"]})
    assert "recorded as NaN, not resolved" in text


def test_a_figure_without_unresolved_values_says_nothing_of_them(tmp_path):
    write_series(
        tmp_path / "r", {("covariance", "condition_K"): {s: 0.5 for s in range(0, 90, 10)}}
    )
    runs = read_runs(tmp_path / "r")
    fig = plot_trajectories(runs, ["condition_K"], x="step")
    assert not lines(fig.axes[0], "unresolved:")
    legend = fig.axes[0].get_legend()
    assert legend is None or UNRESOLVED_LABEL not in [t.get_text() for t in legend.get_texts()]
    assert "not resolved" not in caption("trajectories", fig, runs, {"keys": ["condition_K"]})


# ----------------------------------------------------------------------------- embedding cache


def count_fits(monkeypatch, fake=False):
    """The number of points of each UMAP fit, as a list that grows with every fit. ``fake``:
    the fit replaced by a quick layout of the points (the cache keeps whatever the fit
    returned, so its tests need not wait for UMAP)."""
    umap = pytest.importorskip("umap")
    calls, real = [], umap.UMAP.fit

    def fit(self, X, *args, **kw):
        calls.append(len(X))
        if not fake:
            return real(self, X, *args, **kw)
        X = np.asarray(X, dtype=np.float64)
        xy = np.column_stack([X[:, 0] * (1 + self.min_dist), X[:, 1] + self.random_state])
        self.embedding_ = xy.astype(np.float32)
        return self

    monkeypatch.setattr(umap.UMAP, "fit", fit)
    return calls


def cache_files(root):
    return sorted((Path(root) / ".breakeven-cache").glob("embedding-*.npz"))


def coordinates(df):
    return df[["run", "step"]].to_numpy(), df[["x", "y"]].to_numpy()


def figure_data(fig):
    ax = fig.axes[0]
    data = [(ln.get_gid(), ln.get_xydata().tolist()) for ln in ax.lines]
    return data, [np.asarray(im.get_array()).tolist() for im in ax.images], ax.get_title()


def test_embedding_reuses_the_umap_of_unchanged_records(tmp_path, monkeypatch):
    fits = count_fits(monkeypatch)  # the real UMAP
    measures = ("evaluation", "covariance", "predictions")  # predictions at 0, 20, .., 80
    known_sweep(tmp_path, lrs=(0.1, 0.01), seeds=(0,), measures=measures)
    first = plot_embedding(tmp_path, n_neighbors=5, resolution=20)
    assert fits == [10]
    (kept,) = cache_files(tmp_path)
    again = plot_embedding(tmp_path, n_neighbors=5, resolution=20)
    assert fits == [10]  # not fitted again
    assert figure_data(again) == figure_data(first)
    df, info = embed_predictions(tmp_path, n_neighbors=5)
    assert info["reused"] and info["cache_file"] == kept and fits == [10]
    fresh, info = embed_predictions(tmp_path, n_neighbors=5, cache=False)
    assert fits == [10, 10] and not info["reused"] and info["cache_file"] is None
    for a, b in zip(coordinates(df), coordinates(fresh), strict=True):
        np.testing.assert_array_equal(a, b)  # the kept coordinates are UMAP's, bit for bit
    assert cache_files(tmp_path) == [kept]
    # the report and `breakeven plot embedding` share it (Fig. 1's cut-off: 3 points a run)
    with pytest.warns(UserWarning, match="n_neighbors lowered"):
        report(tmp_path, tmp_path / "r.html", progress=False)
    assert fits == [10, 10, 6]
    out = tmp_path / "e.png"
    with pytest.warns(UserWarning, match="n_neighbors lowered"):
        argv = ["plot", "embedding", str(tmp_path), "--out", str(out)]
        assert main([*argv, "--until-accuracy", "0.65"]) == 0
    assert fits == [10, 10, 6] and out.exists()
    assert len(cache_files(tmp_path)) == 2
    # runs given as a Runs keep their directories; a Runs built by hand has none: no cache
    runs = read_runs(tmp_path)
    assert embed_predictions(runs, n_neighbors=5)[1]["reused"]
    bare = type(runs)(runs.table, runs.records, runs.swept, runs.sweeps, runs.configs)
    assert embed_predictions(bare, n_neighbors=5)[1]["cache_file"] is None


def test_embedding_cache_misses_whenever_what_determines_it_changes(tmp_path, monkeypatch):
    from breakeven.plotting import embedding as module

    fits = count_fits(monkeypatch, fake=True)
    known_sweep(tmp_path, lrs=(0.1, 0.01), seeds=(0,))  # predictions at 0, 20, .., 80

    def twice(expect_fit, **options):
        """Embed twice: the first fits (or not), the second always reuses it."""
        n = len(fits)
        df, info = embed_predictions(tmp_path, **{"n_neighbors": 4, **options})
        assert len(fits) == n + expect_fit and info["reused"] != expect_fit, options
        again, info = embed_predictions(tmp_path, **{"n_neighbors": 4, **options})
        assert len(fits) == n + expect_fit and info["reused"], options
        for a, b in zip(coordinates(df), coordinates(again), strict=True):
            np.testing.assert_array_equal(a, b)
        return df

    twice(True)
    for changed in ({"n_neighbors": 3}, {"min_dist": 0.2}, {"random_state": 1}):
        twice(True, **changed)
    assert len(twice(True, until_accuracy=0.65)) == 6  # cut at step 50: 3 points a run
    # a cut-off that keeps every point (0.9 first at step 90) embeds the same points
    assert len(twice(False, until_accuracy=0.9)) == 10
    assert len(cache_files(tmp_path)) == 5
    # another version of umap-learn
    real = module.version
    monkeypatch.setattr(module, "version", lambda n: "0.0" if n == "umap-learn" else real(n))
    twice(True)
    monkeypatch.setattr(module, "version", real)
    twice(False)
    # one more predictions record appended, then one array changed in place
    path = tmp_path / "runs" / "lr0.1_s0" / "records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    last = [r for r in recs if r["measure"] == "predictions"][-1]
    path.write_text(path.read_text() + json.dumps({**last, "step": 85}) + "\n")
    assert len(twice(True)) == 11
    arr = np.frombuffer(base64.b64decode(last["arrays"]["predictions"]["data"]), np.float16)
    arr = arr.copy()
    arr[0] += np.float16(0.125)
    last["arrays"]["predictions"]["data"] = base64.b64encode(arr.tobytes()).decode()
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert len(twice(True)) == 10  # the array of step 80 changed
    assert len(fits) == 8 and len(cache_files(tmp_path)) == 8


def _npz(xy, key):
    import io

    buf = io.BytesIO()
    np.savez(buf, xy=xy, key=np.array(key))
    return buf.getvalue()


def test_embedding_ignores_a_corrupt_or_foreign_cache_file_and_replaces_it(tmp_path, monkeypatch):
    import os

    fits = count_fits(monkeypatch, fake=True)
    run = tmp_path / "run"
    known_run(run)
    good, _ = embed_predictions(run, n_neighbors=4)
    (kept,) = cache_files(run)
    data, xy = kept.read_bytes(), good[["x", "y"]].to_numpy()
    bad = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "one byte short": data[:-1],
        "not a zip": b"garbage " * 20,
        "written under another name": _npz(xy + 1, "embedding-0"),
        "fewer points": _npz(xy[:3] + 1, kept.stem),
        "three columns": _npz(np.zeros((5, 3)), kept.stem),
        "not finite": _npz(np.where(xy > xy.min(), xy, np.nan), kept.stem),
        "integers": _npz(np.zeros((5, 2), dtype=int), kept.stem),
        "objects (pickled)": _npz(np.array([[None, 1]] * 5, dtype=object), kept.stem),
        "a FIFO": None,
    }
    for what, content in bad.items():
        kept.unlink()
        if content is None:
            os.mkfifo(kept)
        else:
            kept.write_bytes(content)
        n = len(fits)
        df, info = embed_predictions(run, n_neighbors=4)
        assert len(fits) == n + 1 and not info["reused"], what
        np.testing.assert_array_equal(df[["x", "y"]].to_numpy(), xy)
        assert kept.is_file() and kept.read_bytes() == data, what  # replaced by a good one
        assert embed_predictions(run, n_neighbors=4)[1]["reused"], what
        assert len(fits) == n + 1
    assert not list(kept.parent.glob("*.tmp"))


def test_embedding_without_a_writable_cache_is_computed_each_time(tmp_path, monkeypatch):
    import errno
    import os

    from breakeven.plotting import embedding as module

    fits = count_fits(monkeypatch, fake=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def embed_twice(run):
        n = len(fits)
        for _ in range(2):
            df, info = embed_predictions(run, n_neighbors=4)
            assert not info["reused"]
        assert len(fits) == n + 2
        return df, info

    # the cache folder is a symbolic link: nothing is read or written through it
    run = tmp_path / "link"
    known_run(run)
    (run / ".breakeven-cache").symlink_to(elsewhere, target_is_directory=True)
    assert embed_twice(run)[1]["cache_file"] is None
    assert list(elsewhere.iterdir()) == []
    # the cache file is a symbolic link to a file holding other coordinates: never read
    run = tmp_path / "file-link"
    known_run(run)
    df, info = embed_predictions(run, n_neighbors=4)
    kept = info["cache_file"]
    planted = elsewhere / "planted.npz"
    planted.write_bytes(_npz(df[["x", "y"]].to_numpy() + 1, kept.stem))
    kept.unlink()
    kept.symlink_to(planted)
    again, _ = embed_twice(run)
    np.testing.assert_array_equal(again[["x", "y"]], df[["x", "y"]])
    assert kept.is_symlink() and planted.read_bytes() == _npz(
        df[["x", "y"]].to_numpy() + 1, kept.stem
    )
    # a file where the cache folder would be
    run = tmp_path / "file"
    known_run(run)
    (run / ".breakeven-cache").write_text("mine")
    embed_twice(run)
    assert (run / ".breakeven-cache").read_text() == "mine"
    # a directory that cannot be written (read-only; root writes anyway) or a full disk
    run = tmp_path / "readonly"
    known_run(run)
    if os.geteuid() != 0:
        run.chmod(0o555)
        try:
            embed_twice(run)
        finally:
            run.chmod(0o755)
        assert not (run / ".breakeven-cache").exists()

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(module, "atomic_write", full)
    embed_twice(run)


@pytest.mark.parametrize("text", ["Short", "Adaptive edge of stability: long words " * 2])
def test_a_long_title_puts_its_context_on_a_line_of_its_own(text):
    """The title is never cut at the figure's edge: past one line's width the model and
    dataset go on a second line."""
    import types

    import pandas as pd

    runs = types.SimpleNamespace(table=pd.DataFrame({"model": ["mlp"], "dataset": ["fashion"]}))
    from breakeven.plotting import figures as f

    title = f._title(text, runs)
    assert title.replace("\n", " ") == f"{text} (mlp on fashion)"
    assert len(title.split("\n")) == (1 if len(text) < 40 else 2)
