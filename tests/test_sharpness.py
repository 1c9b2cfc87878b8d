"""The ``sharpness`` measure (lambda_H^1 at every step) against dense float64 Hessians."""

import warnings

import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.measures import MEASURES
from breakeven.measures.tracked import eos_threshold
from breakeven.operators.dense import dense_hessian
from helpers import assert_same_state
from test_certificate import random_problem

LOSS = nn.CrossEntropyLoss()


def run(model, data, spec, steps, lr=0.05, momentum=0.0, jump=None, dense=True):
    """Full-batch SGD on ``data`` with a tracker of ``spec``; at each step, before the
    tracker measures, the dense Hessian and the vector the measure carries. ``jump``:
    {step: factor} multiplies the parameters by ``factor`` just before that step."""
    tracker = be.build_tracker(
        spec, probe=data, train_data=data, lr=lr, momentum=momentum, batch_size=len(data[1])
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    seen = []
    for step in range(steps):
        if jump and step in jump:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(jump[step])
        H = dense_hessian(model, LOSS, data) if dense else None
        v = tracker.state_.get("sharpness", {}).get("v")
        seen.append((H, None if v is None else v.clone()))
        opt.zero_grad()
        LOSS(model(data[0]), data[1]).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an unconverged full solve
            tracker.before_step(step, model)
        opt.step()
        tracker.after_step(step, model)
    recs = [r for r in tracker.records_ if r["measure"] == "sharpness"]
    return recs, seen


TRACK_ONLY = {"sharpness": {"every": 1, "tol_fallback": float("inf"), "refresh": None}}


def test_registered_by_name():
    assert MEASURES["sharpness"] is be.Sharpness
    assert isinstance(be.build_tracker({"sharpness": {"every": 1}}).measures[0][0], be.Sharpness)


def test_theta_is_a_lower_bound_and_an_eigenvalue_lies_within_r():
    """On tracked steps (never a fallback here), over random networks and seeds."""
    spec = {"sharpness": dict(TRACK_ONLY["sharpness"])}
    tracked = 0
    for i in range(8):
        model, data = random_problem(i)
        recs, seen = run(model, data, spec, steps=6, lr=0.3)
        for r, (H, _) in zip(recs, seen, strict=True):
            ev = torch.linalg.eigvalsh(H)
            v = r["values"]
            theta, res = v["sharpness"], v["sharpness_residual"]
            assert theta <= float(ev[-1]) + 1e-10 * abs(float(ev[-1]))
            assert float((ev - theta).abs().min()) <= res + 1e-10
            assert v["sharpness_upper"] == pytest.approx(theta + res)
            tracked += not v["sharpness_fallback"]
    assert tracked == 8 * 5  # every step after the first was one product


def test_the_residual_is_that_of_the_carried_vector():
    model, data = random_problem(3)
    recs, seen = run(model, data, TRACK_ONLY, steps=4)
    for r, (H, v) in list(zip(recs, seen))[1:]:
        w = H @ v
        theta = float(v @ w)
        assert r["values"]["sharpness"] == pytest.approx(theta, rel=1e-12)
        assert r["values"]["sharpness_residual"] == pytest.approx(
            float((w - theta * v).norm()), rel=1e-9, abs=1e-14
        )
        assert r["matvecs"] == 1


def test_a_full_solve_matches_eigvalsh():
    """At the first measurement and on refresh steps the value is Lanczos' to ``tol``."""
    spec = {"sharpness": {"every": 1, "refresh": 2, "tol": 1e-8}}
    for i in range(3):
        model, data = random_problem(10 + i)
        recs, seen = run(model, data, spec, steps=5)
        solved = [r["step"] for r in recs if r["values"]["sharpness_fallback"]]
        assert solved[0] == 0 and all(b - a <= 2 for a, b in zip(solved, [*solved[1:], 5]))
        for r, (H, _) in zip(recs, seen):
            if r["values"]["sharpness_fallback"]:
                top = float(torch.linalg.eigvalsh(H)[-1])
                assert r["values"]["sharpness"] == pytest.approx(top, rel=1e-6)
                assert r["values"]["sharpness_residual"] <= 1e-8 * abs(top)


def test_falls_back_exactly_when_the_residual_criterion_fails():
    """A sudden jump of the parameters rotates the top eigenvector: the carried vector's
    residual exceeds tol_fallback |theta| there, a full solve runs at that step and its
    value is lambda_max again; elsewhere the tracked value stands."""
    tol_fallback = 1e-2
    spec = {"sharpness": {"every": 1, "refresh": None, "tol_fallback": tol_fallback, "tol": 1e-8}}
    fired = 0
    for i in range(3):
        model, data = random_problem(20 + i)
        recs, seen = run(model, data, spec, steps=7, lr=0.01, jump={4: 2.5})
        for r, (H, v) in list(zip(recs, seen))[1:]:
            w = H @ v
            theta = float(v @ w)
            violated = float((w - theta * v).norm()) > tol_fallback * abs(theta)
            values = r["values"]
            assert values["sharpness_fallback"] == float(violated)
            if violated:
                top = float(torch.linalg.eigvalsh(H)[-1])
                assert values["sharpness"] == pytest.approx(top, rel=1e-6)
                assert r["matvecs"] > 1
            else:
                assert r["matvecs"] == 1
        fired += recs[4]["values"]["sharpness_fallback"] == 1.0
    assert fired == 3  # the jump broke the criterion in every case


def test_one_product_per_tracked_step_and_solves_only_when_due():
    """Over a schedule: every tracked step costs one product; full solves run at the first
    measurement, on the refresh schedule and when the residual fails, nowhere else; the
    amortised cost is then 1 + (solves' products - solves) / steps."""
    refresh = 5
    spec = {"sharpness": {"every": 1, "refresh": refresh, "tol_fallback": 1e9}}
    model, data = random_problem(5)
    recs, _ = run(model, data, spec, steps=11, lr=0.01, dense=False)
    solves = [r for r in recs if r["values"]["sharpness_fallback"]]
    assert [r["step"] for r in solves] == [0, 5, 10]
    assert all(r["matvecs"] == 1 for r in recs if not r["values"]["sharpness_fallback"])
    total = sum(r["matvecs"] for r in recs)
    assert total == len(recs) - len(solves) + sum(r["matvecs"] for r in solves)
    # on a schedule every other step, the refresh counts training steps
    spec = {"sharpness": {"every": 2, "refresh": 4, "tol_fallback": 1e9}}
    recs, _ = run(model, data, spec, steps=9, lr=0.01, dense=False)
    assert [r["step"] for r in recs if r["values"]["sharpness_fallback"]] == [0, 4, 8]


@pytest.mark.parametrize("refresh", [3, 4])
def test_on_the_schedule_alone_the_cost_is_bounded_whatever_the_residual(refresh):
    """tol_fallback=inf: parameter jumps that turn the top eigenvector (a residual far past
    any tolerance) call no solve; solves run at the first measurement and every ``refresh``
    steps only, so n steps cost at most n + ceil(n / refresh) (m - 1) products, m those of
    the dearest solve;
    theta stays a certified lower bound and an eigenvalue lies within r of it."""
    spec = {"sharpness": {"every": 1, "refresh": refresh, "tol_fallback": float("inf")}}
    for i in range(3):
        model, data = random_problem(30 + i)
        recs, seen = run(model, data, spec, steps=9, lr=0.01, jump={2: 2.5, 5: 0.5, 7: 2.0})
        solved = [r["step"] for r in recs if r["values"]["sharpness_fallback"]]
        assert solved == list(range(0, 9, refresh))
        m, n = max(r["matvecs"] for r in recs), len(recs)
        assert sum(r["matvecs"] for r in recs) <= n + len(solved) * (m - 1)
        assert all(r["matvecs"] == 1 for r in recs if r["step"] not in solved)
        assert (
            max(r["values"]["sharpness_residual"] / r["values"]["sharpness"] for r in recs) > 1e-2
        )
        for r, (H, _) in zip(recs, seen, strict=True):
            ev = torch.linalg.eigvalsh(H)
            theta, res = r["values"]["sharpness"], r["values"]["sharpness_residual"]
            assert 0 < theta <= float(ev[-1]) * (1 + 1e-10)
            assert float((ev - theta).abs().min()) <= res + 1e-10


def test_a_vector_turned_to_negative_curvature_falls_back():
    """theta <= 0 is never the top of a Hessian with a positive eigenvalue: a carried vector
    set to the most negative eigenvector (residual 0, any tolerance met) calls a solve, whose
    value is lambda_max."""
    for i in range(3):
        model, data = random_problem(40 + i)
        H = dense_hessian(model, LOSS, data)
        ev, vecs = torch.linalg.eigh(H)
        assert ev[0] < 0 < ev[-1]
        tracker = be.build_tracker(
            {"sharpness": {"every": 1, "refresh": None, "tol": 1e-8}},
            probe=data,
            train_data=data,
            lr=0.01,  # the parameters never move: no optimizer step
            batch_size=len(data[1]),
        )
        for step in range(2):
            if step == 1:
                tracker.state_["sharpness"]["v"] = vecs[:, 0].to(torch.float32)
            tracker.before_step(step, model)
            tracker.after_step(step, model)
        last = tracker.records_[-1]["values"]
        assert last["sharpness_fallback"] == 1.0
        assert last["sharpness"] == pytest.approx(float(ev[-1]), rel=1e-6)


def test_eos_ratio_uses_the_momentum_aware_threshold():
    model, data = random_problem(1)
    spec = {"sharpness": {"every": 1}}
    recs, _ = run(model, data, spec, steps=2, lr=0.05, momentum=0.9, dense=False)
    for r in recs:
        v = r["values"]
        assert v["eos_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.05) == eos_threshold(0.05, 0.9)
        assert v["eos_ratio"] == pytest.approx(v["sharpness"] / v["eos_threshold"])


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_training_is_bitwise_unchanged(bn_mode):
    """BatchNorm, dropout, momentum: the parameters after training with the measure at
    every step are bitwise those without it."""
    from test_tracking import loop, tracker_for_loop

    spec = {"sharpness": {"every": 1, "refresh": 3, "bn_mode": bn_mode, "chunk_size": 8}}
    tracker = tracker_for_loop(spec)
    tracked = loop(tracker, steps=6)
    plain = loop(None, steps=6)
    assert_same_state(tracked, plain)
    fallbacks = [r["values"]["sharpness_fallback"] for r in tracker.records_]
    assert len(fallbacks) == 6 and fallbacks[0] == 1.0


def test_state_dict_resumes_identically():
    """The carried vector survives state_dict."""
    from test_tracking import make, tracker_for_loop

    spec = {"sharpness": {"every": 1, "refresh": 4, "tol_fallback": 1e9}}

    def records(switch_at=None):
        tracker = tracker_for_loop(spec)
        model, x, y = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(6):
            if step == switch_at:
                state = tracker.state_dict()
                tracker = tracker_for_loop(spec)
                tracker.load_state_dict(state)
            xb, yb = x[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            tracker.before_step(step, model, (xb, yb))
            opt.step()
            tracker.after_step(step, model)
        return [(r["step"], r["values"]) for r in tracker.records_]

    full, resumed = records(), records(switch_at=3)
    assert [r for r in full if r[0] >= 3] == resumed
    assert [v["sharpness_fallback"] for _, v in full] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"tol_fallback": 0}, "tol_fallback must be a positive number"),
        ({"tol_fallback": "big"}, "tol_fallback must be a positive number"),
        ({"tol": -1.0}, "tol must be a positive number"),
        ({"tol": 0.1, "tol_fallback": 0.01}, "choose tol <= tol_fallback"),
        ({"refresh": 0}, "refresh must be an integer >= 1"),
        ({"refresh": 2.5}, "refresh must be an integer >= 1"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"bn_mode": "test"}, "bn_mode"),
        ({"k": 2}, "unknown option"),
    ],
)
def test_bad_options_are_refused_before_training(options, match):
    with pytest.raises(ValueError, match=match) as err:
        be.build_tracker({"sharpness": {"every": 1, **options}})
    assert "track.sharpness" in str(err.value)


def test_edge_of_stability_figure_draws_the_dense_series(tmp_path):
    """With sharpness records the figure draws them (every step, never smoothed), one run
    per learning rate, against each run's threshold; `available_figures`, the caption and
    `breakeven plot` go the same way; without them it draws edge_of_stability's."""
    import numpy as np

    from breakeven.plotting import available_figures, caption, plot, plot_edge_of_stability
    from test_plotting import lines, write_series

    rng = np.random.default_rng(0)
    dense = {}
    for lr in (0.1, 0.03, 0.01):
        steps = range(200)
        dense[lr] = {s: float(2 / lr * (1 - np.exp(-s / 50)) + rng.normal()) for s in steps}
        write_series(
            tmp_path / f"lr{lr}",
            {
                ("sharpness", "sharpness"): dense[lr],
                ("sharpness", "eos_threshold"): {s: 2 / lr for s in steps},
                ("edge_of_stability", "lambda_H_1"): {0: 1.0, 100: 2.0},
                ("edge_of_stability", "eos_threshold"): {0: 2 / lr, 100: 2 / lr},
            },
            lr=lr,
        )
    runs = be.read_runs([tmp_path / f"lr{lr}" for lr in (0.1, 0.03, 0.01)])
    fig = plot_edge_of_stability(runs)
    ax = fig.axes[0]
    for lr in (0.1, 0.03, 0.01):
        run = f"lr{lr}"
        (line,) = lines(ax, f"sharpness:{run}").values()
        np.testing.assert_array_equal(line.get_ydata(), list(dense[lr].values()))
        assert line.get_marker() in ("None", "", None)  # a dense series: a line, no markers
        thr = lines(ax, f"eos_threshold:{run}")[f"eos_threshold:{run}"]
        np.testing.assert_allclose(thr.get_ydata(), 2 / lr)
    assert not lines(ax, "smooth:") and not lines(ax, "lambda_H_1:")
    assert "every step" in caption("edge-of-stability", fig, runs)
    assert available_figures(runs)["edge-of-stability"] == ""
    out = plot("edge-of-stability", runs, tmp_path / "eos.png")
    assert out.stat().st_size > 0
    old = plot_edge_of_stability(runs, measure="edge_of_stability").axes[0]
    assert len(lines(old, "lambda_H_1:")) == 3 and not lines(old, "sharpness:")
