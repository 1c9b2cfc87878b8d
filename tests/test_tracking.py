"""Schedules, the measures as tracked quantities, and the Tracker in plain and our loops."""

import math

import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.measures import MEASURES
from breakeven.records import decode_array
from breakeven.tracking import at, build_tracker, every, log_spaced, parse_schedule, per_epoch
from helpers import assert_same_state


def test_schedules_compose():
    s = every(10) | at([3, 7]) | log_spaced(1, 1000, 4)
    assert [t for t in range(25) if s(t)] == [0, 1, 3, 7, 10, 20]
    assert s(100) and s(1000) and not s(999)
    assert [t for t in range(12) if per_epoch(2)(t, 3)] == [0, 6]
    assert repr(every(5) | at([1])) == "every(5) | at([1])"
    with pytest.raises(ValueError, match="steps per epoch"):
        per_epoch(1)(3)
    with pytest.raises(ValueError, match="positive integer"):
        every(0)


def test_parse_schedule():
    assert parse_schedule(5)(10) and not parse_schedule(5)(11)
    assert parse_schedule("epoch")(4, 4) and not parse_schedule("epoch")(5, 4)
    assert parse_schedule("2 epochs")(8, 4) and not parse_schedule("2 epochs")(4, 4)
    assert parse_schedule({"at": [2]})(2)
    assert parse_schedule([{"at": [3]}, 10])(3)
    for bad in ("weekly", True, {"at": [1], "every": 2}, [], 1.5):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(256, 1, 6, 6, generator=g), torch.randint(0, 4, (256,), generator=g)


def make():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(48, 4),
    )
    return (model, *data())


ALL = {
    "covariance": {"every": 3, "num_batches": 5, "spectrum": True},
    "alignment": {"every": 3, "k": 2},
    "noise_scale": {"every": 3},
    "hessian": {"every": 2, "k": 2},
    "hessian_trace": {"every": 4, "num_samples": 3},
    "hessian_density": {"at": [4], "num_steps": 5},
    "stability": {"every": 4, "chunk_size": 16},
    "edge_of_stability": {"every": 4},
    "sharpness": {"every": 1, "refresh": 4},
    "loss_change": {"every": 1},
    "probe": {"every": 2},
    "validation": {"every": 5},
    "train_accuracy": {"every": 5, "num_examples": 64},
    "batchnorm": {"every": 2},
    "param_norm": {"every": 2},
    "lr": {"every": 2},
    "predictions": {"every": 5, "num_examples": 10},
}


#: The measures that read Adam's state: measured in a loop with Adam (``loop(adam=True)``).
ADAM = {
    "covariance": {"every": 3, "num_batches": 5},
    "preconditioned_covariance": {"every": 3, "k": 2},
    "preconditioned_sharpness": {"every": 2, "k": 2},
}


def loop(tracker, steps=9, adam=False):
    model, x, y = make()
    if adam:
        opt = torch.optim.Adam(model.parameters(), lr=0.005)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if tracker is not None and hasattr(tracker, "on_optimizer"):
        tracker.on_optimizer(opt)
    torch.manual_seed(1)
    for step in range(steps):
        xb, yb = x[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        if tracker is not None:
            tracker.before_step(step, model, (xb, yb), loss)
        opt.step()
        if tracker is not None:
            tracker.after_step(step, model)
    return model


def tracker_for_loop(spec=ALL, **kw):
    x, y = data()
    return build_tracker(
        spec,
        probe=(x[:40], y[:40]),
        train_data=(x, y),
        val_data=(x[200:], y[200:]),
        lr=0.05,
        momentum=0.9,
        batch_size=16,
        steps_per_epoch=16,
        **kw,
    )


def test_adam_measures_in_a_plain_loop_and_training_unchanged():
    tracker = tracker_for_loop(ADAM)
    tracked = loop(tracker, adam=True)
    plain = loop(None, adam=True)
    for a, b in zip(tracked.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    by = {(r["measure"], r["step"]): r["values"] for r in tracker.records_}
    assert math.isnan(by["preconditioned_sharpness", 0]["precond_lambda_H_1"])  # no state yet
    v = by["preconditioned_sharpness", 4]
    assert v["precond_lambda_H_1"] >= v["precond_lambda_H_2"] and v["adam_step"] == 4
    # the optimizer's lr (0.005), where P comes from, not the tracker's (0.05)
    assert v["precond_eos_threshold"] == pytest.approx(38 / 0.005)
    assert by["preconditioned_covariance", 3]["precond_lambda_K_1"] > 0


def test_every_measure_in_a_plain_loop_and_training_unchanged():
    assert set(ALL) | set(ADAM) == set(MEASURES)  # ADAM: test_adam_measures_in_a_plain_loop
    tracker = tracker_for_loop()
    tracked = loop(tracker)
    plain = loop(None)
    assert_same_state(tracked, plain)
    by = {}
    for r in tracker.records_:
        by.setdefault(r["measure"], []).append(r)
        assert r["seconds"] >= 0 and all(isinstance(v, float) for v in r["values"].values())
    assert [r["step"] for r in by["covariance"]] == [0, 3, 6]
    assert [r["step"] for r in by["hessian_density"]] == [4]
    assert len(by["loss_change"]) == 9
    cov = by["covariance"][0]["values"]
    assert cov["L"] == 5 and cov["M"] == 16 and cov["lambda_K_1"] >= cov["lambda_K_star"] > 0
    assert cov["eig_K_0"] == cov["lambda_K_1"] and "eig_K_4" in cov
    assert by["covariance"][0]["matvecs"] == 5
    assert by["alignment"][0]["values"]["alignment"] >= 1.0
    h = by["hessian"][1]["values"]
    assert h["lambda_H_1"] >= h["lambda_H_2"] and h["converged"] == 1.0
    st = by["stability"][0]["values"]
    expected = be.stability(0.05, 16, 256, st["lambda_H_1"], st["s2"])
    assert st["stability"] == pytest.approx(expected) and st["break_even"] == float(expected >= 1)
    eos = by["edge_of_stability"][0]["values"]
    assert eos["eos_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.05)
    sharp = [r["values"] for r in by["sharpness"]]
    assert len(sharp) == 9 and sharp[0]["sharpness_fallback"] == sharp[4]["sharpness_fallback"] == 1
    assert sharp[0]["eos_threshold"] == eos["eos_threshold"]
    lc = by["loss_change"][0]["values"]
    assert lc["delta_loss"] == pytest.approx(lc["loss_before"] - lc["loss_after"])
    assert set(by["batchnorm"][0]["values"]) == {"gamma_norm/1", "gamma_norm_last"}
    assert by["lr"][0]["values"]["lr"] == 0.05
    preds = decode_array(by["predictions"][0]["arrays"]["predictions"])
    assert preds.shape == (10, 4) and preds.dtype.name == "float16"
    assert preds.astype("float32").sum(1) == pytest.approx([1.0] * 10, abs=1e-2)
    summary = tracker.summary()
    assert summary["hessian"]["records"] == 5 and summary["hessian"]["matvecs"] > 0
    assert 0 < summary["hessian"]["fraction"] < 1


def test_hessian_warm_start_is_used_and_recorded_in_the_state():
    tracker = tracker_for_loop({"hessian": {"every": 1}})
    loop(tracker, steps=4)
    counts = [r["matvecs"] for r in tracker.records_]
    assert counts[-1] < counts[0]  # warm starts need fewer products
    assert tracker.state_dict()["state"]["hessian"]["v0"].shape[1] == 1


def test_state_dict_resumes_identically():
    spec = {"covariance": {"every": 2, "num_batches": 4}, "hessian": {"every": 2}}
    full = tracker_for_loop(spec)
    loop(full, steps=6)
    # the same run, with the tracker state saved after 3 steps and loaded into a new tracker
    first = tracker_for_loop(spec)
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    for step in range(6):
        if step == 3:
            state = first.state_dict()
            first = tracker_for_loop(spec)
            first.load_state_dict(state)
        xb, yb = x[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        first.before_step(step, model, (xb, yb))
        opt.step()
        first.after_step(step, model)
    steps = [(r["measure"], r["step"], r["values"]) for r in full.records_]
    assert [(m, s, v) for m, s, v in steps if s >= 3] == [
        (r["measure"], r["step"], r["values"]) for r in first.records_
    ]


def test_build_tracker_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown measure"):
        build_tracker({"hessain": {}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\]"):
        build_tracker({"hessian": {"kk": 2}})
    with pytest.raises(
        ValueError, match=r"track\.covariance: num_batches \(L\) must be an integer >= 2"
    ):
        build_tracker({"covariance": {"num_batches": 1}})
    with pytest.raises(ValueError, match=r"track\.hessian: k must be an integer >= 1, got 'x'"):
        build_tracker({"hessian": {"k": "x"}})
    with pytest.raises(ValueError, match=r"track\.hessian: bn_mode"):
        build_tracker({"hessian": {"bn_mode": "batch"}})
    with pytest.raises(ValueError, match="one schedule key"):
        build_tracker({"hessian": {"every": 2, "at": [1]}})
    with pytest.raises(ValueError, match=r"track\.hessian: schedule 'weekly'"):
        build_tracker({"hessian": {"every": "weekly"}})


def test_tracker_needs_its_data():
    tracker = be.Tracker([be.HessianTop()], every(1), lr=0.1)
    model, x, y = make()
    with pytest.raises(ValueError, match="probe and train_data"):
        tracker.before_step(0, model, (x[:4], y[:4]))


def test_tracker_in_breakeven_train(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x_train=g.normal(size=(200, 1, 28, 28)).astype("float32"),
        y_train=g.integers(0, 10, 200),
        x_test=g.normal(size=(50, 1, 28, 28)).astype("float32"),
        y_test=g.integers(0, 10, 50),
    )
    config = be.TrainConfig(
        model="mlp",
        dataset="npz",
        dataset_kwargs={"root": str(path)},
        lr=0.05,
        batch_size=20,
        epochs=2,
        lr_decay_epochs=(1,),
        probe_fraction=0.1,
    )
    tracker = build_tracker(
        {"covariance": {"every": "epoch", "num_batches": 4}, "lr": {"every": 5}}
    )
    result = be.train(config, tracker=tracker)
    plain = be.train(config)
    assert_same_state(result.model, plain.model)
    lrs = [(r["step"], r["values"]["lr"]) for r in tracker.records_ if r["measure"] == "lr"]
    assert lrs == [(0, 0.05), (5, 0.05), (10, pytest.approx(0.005)), (15, pytest.approx(0.005))]
    cov = [r for r in tracker.records_ if r["measure"] == "covariance"]
    assert [r["step"] for r in cov] == [0, 10] and [r["epoch"] for r in cov] == [0.0, 1.0]
    assert math.isfinite(tracker.summary()["covariance"]["fraction"])


def test_one_measure_twice_under_two_names():
    spec = {
        "covariance": {"every": 3, "num_batches": 4},
        "covariance_m1": {"measure": "covariance", "every": 3, "num_batches": 8, "batch_size": 1},
    }
    tracker = tracker_for_loop(spec)
    assert [m.name for m, _ in tracker.measures] == ["covariance", "covariance_m1"]
    assert be.GradientCovariance.name == "covariance"  # the class keeps its name
    loop(tracker, steps=4)
    got = {(r["measure"], r["step"]): r["values"] for r in tracker.records_}
    assert set(got) == {(m, s) for m in spec for s in (0, 3)}
    assert got[("covariance", 0)]["M"] == 16 and got[("covariance", 0)]["L"] == 4
    assert got[("covariance_m1", 0)]["M"] == 1 and got[("covariance_m1", 0)]["L"] == 8
    with pytest.raises(ValueError, match="unknown measure 'nope'"):
        build_tracker({"x": {"measure": "nope"}})


def test_k_batches_overlap_only_when_they_cannot_be_disjoint():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    tracker = be.Tracker([be.GradientCovariance()], every(1), train_data=(x, y), lr=0.1)
    disjoint = tracker._sample_batches(2, 5)
    seen = torch.cat([b[1] for b in disjoint])
    assert len(set(seen.tolist())) == 10
    many = tracker._sample_batches(4, 5)  # 20 > 10: each batch on its own
    assert len(many) == 4 and all(len(set(b[1].tolist())) == 5 for b in many)
    with pytest.raises(ValueError, match="cannot draw a batch of 11 from 10"):
        tracker._sample_batches(1, 11)
