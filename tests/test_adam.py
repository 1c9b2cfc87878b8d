"""Adam and AdamW: training with them (config, checkpoints, resume), the preconditioned
sharpness and gradient covariance read from their state, and the Adam presets, verdicts and
figure."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from breakeven.data import Dataset
from breakeven.experiments import run
from breakeven.records import read_records, read_status
from breakeven.train import ConfigError, TrainConfig, build_optimizer, train
from helpers import run_config, write_tiny_npz


def toy(n: int = 90, shape: tuple[int, ...] = (1, 6, 6), classes: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 30, *shape, generator=g)
    y = (x.flatten(1) @ torch.randn(math.prod(shape), classes, generator=g)).argmax(1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], classes)


ADAM = dict(
    model="mlp",
    model_kwargs={"hidden": (16,)},
    batch_size=10,
    lr=0.01,
    epochs=3,
    lr_decay_epochs=(2,),
)
CNN = dict(model="test_adam_cnn", batch_size=8, lr=0.003, steps=13)


def _tiny_cnn(input_shape, num_classes) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * (h - 2) * (w - 2), num_classes)
    )


@pytest.fixture(autouse=True)
def tiny_cnn_model(monkeypatch) -> None:
    """Register the test model for this module's tests only."""
    from breakeven import models

    monkeypatch.setitem(models._REGISTRY, "test_adam_cnn", (_tiny_cnn, (3, 8, 8), 3))


# ---------------------------------------------------------------- A. config and training


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"optimizer": "Adam"}, "optimizer"),
        ({"optimizer": "adam", "betas": (0.9,)}, "betas"),
        ({"optimizer": "adam", "betas": (0.9, 1.0)}, "betas"),
        ({"optimizer": "adamw", "betas": (-0.1, 0.99)}, "betas"),
        ({"optimizer": "adam", "betas": "0.9, 0.99"}, "betas"),
        ({"optimizer": "adam", "betas": (True, 0.99)}, "betas"),
        ({"optimizer": "adam", "eps": 0.0}, "eps"),
        ({"optimizer": "adamw", "eps": math.inf}, "eps"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum"),
        ({"betas": (0.8, 0.99)}, "betas"),  # Adam's keys are refused with SGD
        ({"eps": 1e-6}, "eps"),
    ],
)
def test_invalid_optimizer_values_name_the_key_before_anything_is_written(
    changes, key, tmp_path
) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is invalid: must be "):
        TrainConfig.from_dict(changes)
    out = tmp_path / "run"
    config = {
        "train": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
            "steps": 1,
        }
    }
    with pytest.raises(ConfigError, match=rf"{key}="):
        run(config, out)
    assert not out.exists()


def test_adam_config_round_trips_and_sgd_configs_read_as_before() -> None:
    c = TrainConfig(optimizer="adamw", betas=[0.8, 0.99], eps=1e-6, weight_decay=0.1, steps=3)
    assert c.betas == (0.8, 0.99) and TrainConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["betas"] == [0.8, 0.99] and c.to_dict()["optimizer"] == "adamw"
    sgd = TrainConfig(lr=0.1, steps=3).to_dict()
    assert not {"optimizer", "betas", "eps"} & set(sgd)  # run directories of earlier versions
    assert TrainConfig.from_dict(sgd) == TrainConfig(lr=0.1, steps=3)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("which", ["adam", "adamw"])
def test_training_with_adam_is_torchs_adam_step_by_step(which, seed) -> None:
    """breakeven.train with optimizer=adam/adamw gives bitwise the parameters of a
    hand-written loop with torch.optim.Adam/AdamW (weight decay: conv kernels / all)."""
    wd = 0.05
    cfg = TrainConfig(
        **CNN,
        optimizer=which,
        betas=(0.8, 0.95),
        eps=1e-7,
        weight_decay=wd,
        init_seed=seed,
        data_seed=seed,
    )
    ds = toy(shape=(3, 8, 8))
    result = train(cfg, dataset=ds)
    from breakeven.models import build_model

    torch.manual_seed(seed)
    model = build_model("test_adam_cnn", ds.input_shape, ds.num_classes)
    conv = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    rest = [p for p in model.parameters() if all(p is not q for q in conv)]
    if which == "adam":
        opt = torch.optim.Adam(
            [{"params": conv, "weight_decay": wd}, {"params": rest}],
            lr=cfg.lr,
            betas=(0.8, 0.95),
            eps=1e-7,
        )
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=(0.8, 0.95), eps=1e-7, weight_decay=wd
        )
    gen, n, step = torch.Generator().manual_seed(seed), len(ds.y_train), 0
    while step < cfg.steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            if step == cfg.steps:
                break
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
            step += 1
    a, b = result.model.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adamw_weight_decay_needs_no_conv_kernels_but_adams_does() -> None:
    ds = toy()
    assert train(TrainConfig(**ADAM, optimizer="adamw", weight_decay=0.1), dataset=ds).steps
    with pytest.raises(ConfigError, match=r"no convolution kernels.*optimizer='adamw'"):
        train(TrainConfig(**ADAM, optimizer="adam", weight_decay=0.1), dataset=ds)


def _same_state(a, b) -> bool:
    """Nested state dicts bitwise equal (tensors by torch.equal and dtype)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("which", ["adam", "adamw"])
def test_resume_from_every_checkpoint_keeps_params_and_adam_state_bitwise(which) -> None:
    """Stopped at any checkpoint and resumed, the run goes on bitwise: at every later
    checkpoint and at the end, the parameters and the optimizer state (moments and step)
    equal the uninterrupted run's."""
    from breakeven.tracking import build_tracker

    track = {"covariance": {"every": 4, "num_batches": 3}, "preconditioned_sharpness": {"every": 5}}
    cfg, ds = TrainConfig(**ADAM, optimizer=which, weight_decay=0.01 * (which == "adamw")), toy()
    states: list[dict] = []
    full_tracker = build_tracker(track)
    full = train(cfg, full_tracker, dataset=ds, checkpoint_every=4, on_checkpoint=states.append)
    assert full.status == "finished" and len(states) == (full.steps - 1) // 4
    assert all(s["optimizer"]["state"] for s in states)  # Adam's moments are in the checkpoints
    by_step = {s["step"]: s for s in states}
    for state in states:
        later: list[dict] = []
        tracker = build_tracker(track)
        resumed = train(
            cfg, tracker, dataset=ds, resume=state, checkpoint_every=4, on_checkpoint=later.append
        )
        a, b = resumed.model.state_dict(), full.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed at {state['step']}"
        assert resumed.losses == full.losses
        for s in later:
            ref = by_step[s["step"]]
            assert _same_state(s["optimizer"], ref["optimizer"]), f"at {s['step']}"
            assert _same_state(s["model"], ref["model"])
        before = [r for r in full_tracker.records_ if r["step"] < state["step"]]
        strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
        assert strip(before + tracker.records_) == strip(full_tracker.records_)


@pytest.mark.slow  # two fresh interpreters that train (make test-slow; CI runs it)
def test_cli_run_takes_the_optimizer_from_set_and_stores_its_state(tmp_path) -> None:
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    track = {"covariance": None, "hessian": None, "preconditioned_sharpness": {"every": 3}}
    config = run_config(tmp_path / "tiny.toml", npz, train={"lr": 0.01}, track=track)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "breakeven.cli",
        "run",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        'train.optimizer="adamw"',
        "--set",
        "train.betas=[0.8, 0.9]",
        "--set",
        "train.eps=1e-6",
        "--set",
        "train.weight_decay=0.01",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_status(out) == "finished"
    import json

    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert (train_cfg["optimizer"], train_cfg["betas"], train_cfg["eps"]) == (
        "adamw",
        [0.8, 0.9],
        1e-6,
    )
    recs = [r for r in read_records(out) if r["measure"] == "preconditioned_sharpness"]
    assert [r["step"] for r in recs] == [0, 3, 6, 9]
    assert math.isnan(recs[0]["values"]["precond_lambda_H_1"])  # no Adam state before step 1
    threshold = (2 + 2 * 0.8) / ((1 - 0.8) * 0.01)
    for r in recs[1:]:
        v = r["values"]
        assert v["precond_lambda_H_1"] > 0
        assert v["precond_eos_threshold"] == pytest.approx(threshold)
        assert v["precond_eos_ratio"] == pytest.approx(v["precond_lambda_H_1"] / threshold)
    bad = subprocess.run(
        [*cmd[:-8], "--set", 'train.optimizer="adagrad"'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "optimizer='adagrad' is invalid" in bad.stderr


def test_build_optimizer_classes() -> None:
    model = nn.Linear(3, 2)
    assert type(build_optimizer(model, TrainConfig())) is torch.optim.SGD
    assert type(build_optimizer(model, TrainConfig(optimizer="adam"))) is torch.optim.Adam
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1, betas=(0.5, 0.6)))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["betas"] == (0.5, 0.6)
    assert opt.param_groups[0]["weight_decay"] == 0.1


# ---------------------------------------------------------------- B. Adam's geometry


def _adam_steps(case, which: str, steps: int, seed: int, wd: float = 0.0, **kw):
    """``steps`` Adam/AdamW updates of ``case.model`` on random halves of its data, with
    Adam's second moment computed by hand beside it: returns (optimizer, v, t)."""
    cls = torch.optim.Adam if which == "adam" else torch.optim.AdamW
    betas = kw.pop("betas", (0.9, 0.95))
    opt = cls(case.model.parameters(), lr=1e-2, betas=betas, weight_decay=wd, **kw)
    params = [p for p in case.model.parameters() if p.requires_grad]
    v = [torch.zeros_like(p) for p in params]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(case.y), generator=g)[: len(case.y) // 2]
        opt.zero_grad()
        case.loss_fn(case.model(case.x[idx]), case.y[idx]).backward()
        for i, p in enumerate(params):
            grad = p.grad + wd * p.detach() if which == "adam" else p.grad  # Adam's L2 term
            v[i] = betas[1] * v[i] + (1 - betas[1]) * grad**2
        opt.step()
    return opt, torch.cat([t.reshape(-1) for t in v]), steps


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["mlp_ce", "cnn", "linear_mse"])
@pytest.mark.parametrize("which", ["adam", "adamw"])
def test_adam_preconditioner_is_the_bias_corrected_second_moment(which, name, seed) -> None:
    from breakeven.operators.preconditioned import adam_preconditioner
    from cases import make_case

    case = make_case(name, seed=seed)
    eps = 1e-6
    opt, v, t = _adam_steps(case, which, 2 + seed, seed, wd=0.1, eps=eps)
    before = _copy_state(opt)
    p = adam_preconditioner(opt, case.model)
    expected = (v / (1 - 0.95**t)).sqrt() + eps
    torch.testing.assert_close(p.diagonal, expected, rtol=1e-12, atol=0)
    assert (p.lr, p.betas, p.step) == (1e-2, (0.9, 0.95), t)
    assert p.threshold == pytest.approx(3.8 / (0.1 * 1e-2))  # (2 + 2 beta_1)/((1 - beta_1) eta)
    assert _same_state(opt.state_dict(), before)  # read, never written


def _copy_state(opt):
    import copy

    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["mlp_ce", "cnn", "cnn_bn", "linear_mse"])
def test_preconditioned_operator_is_dense_p_half_h_p_half(name, seed) -> None:
    from breakeven.operators import HessianOperator
    from breakeven.operators.dense import dense_hessian
    from breakeven.operators.preconditioned import PreconditionedOperator
    from cases import make_case

    case = make_case(name, seed=seed)
    H = dense_hessian(case.model, case.loss_fn, case.data)
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(H.shape[0], generator=g, dtype=torch.float64) * 10 + 1e-3
    op = PreconditionedOperator(HessianOperator(case.model, case.loss_fn, case.data), P)
    s = P.rsqrt()
    torch.testing.assert_close(op.to_dense(), s[:, None] * H * s[None, :], rtol=1e-10, atol=1e-12)
    V = torch.randn(H.shape[0], 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op @ V, (s[:, None] * H * s[None, :]) @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preconditioned_covariance_operator_is_dense(seed) -> None:
    from breakeven.measures.preconditioned import preconditioned_covariance
    from breakeven.operators import GradientCovarianceOperator
    from breakeven.operators.dense import dense_covariance
    from breakeven.operators.preconditioned import PreconditionedOperator

    g = torch.Generator().manual_seed(seed)
    L, D = 5 + seed, 30
    grads = torch.randn(L, D, generator=g, dtype=torch.float64)
    P = torch.rand(D, generator=g, dtype=torch.float64) + 0.01
    op = GradientCovarianceOperator.from_gradients(grads, batch_size=4)
    dense = P.rsqrt()[:, None] * dense_covariance(grads) * P.rsqrt()[None, :]
    torch.testing.assert_close(PreconditionedOperator(op, P).to_dense(), dense)
    res = preconditioned_covariance(op, P, k=2)
    # the eigenvalues of P^{-1} K (not symmetric), dense
    ref = torch.linalg.eigvals(dense_covariance(grads) / P[:, None]).real.sort().values
    torch.testing.assert_close(res.eigenvalues, ref.flip(0)[:2], rtol=1e-6, atol=0)
    assert res.converged and bool((res.residuals <= 1e-6 * res.eigenvalues).all())
    with pytest.raises(ValueError, match="k must be between 1 and L - 1"):
        preconditioned_covariance(op, P, k=L)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["mlp_ce", "cnn"])
@pytest.mark.parametrize("which", ["adam", "adamw"])
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inv_h(which, name, seed) -> None:
    from breakeven.measures.preconditioned import preconditioned_sharpness
    from breakeven.operators.dense import dense_hessian
    from cases import make_case

    case = make_case(name, seed=seed)
    opt, _, _ = _adam_steps(case, which, 3, seed)
    params = {k: p.detach().clone() for k, p in case.model.state_dict().items()}
    res, p = preconditioned_sharpness(case.model, case.loss_fn, case.data, opt, k=2, tol=1e-8)
    H = dense_hessian(case.model, case.loss_fn, case.data)
    ref = torch.linalg.eigvals(H / p.diagonal[:, None]).real.sort().values.flip(0)
    torch.testing.assert_close(res.eigenvalues, ref[:2], rtol=1e-6, atol=1e-9)
    assert res.converged
    after = case.model.state_dict()
    assert all(torch.equal(params[k], after[k]) for k in params)


class _MyAdam(torch.optim.Adam):
    pass


def test_optimizers_that_cannot_be_read_are_refused_with_the_reason() -> None:
    from breakeven.operators.preconditioned import adam_preconditioner
    from cases import make_case

    case = make_case("mlp_ce")
    model = case.model

    def refused(opt, match, m=model):
        with pytest.raises(ValueError, match=match):
            adam_preconditioner(opt, m)

    refused(torch.optim.SGD(model.parameters(), lr=0.1), r"torch.optim.Adam or AdamW, got .*SGD")
    refused(_MyAdam(model.parameters()), "got .*_MyAdam")
    refused(torch.optim.Adam(model.parameters()), r"no state for parameter '0.weight' yet")
    refused(torch.optim.Adam(model.parameters(), amsgrad=True), "amsgrad=True is not supported")
    first, rest = list(model[0].parameters()), list(model[2].parameters())
    two = [{"params": first}, {"params": rest, "betas": (0.5, 0.9)}]
    refused(torch.optim.Adam(two), r"differ in lr \[0.001\] or betas")
    refused(torch.optim.AdamW([{"params": first}, {"params": rest, "lr": 0.1}]), "differ in lr")
    opt, _, _ = _adam_steps(make_case("mlp_ce"), "adam", 1, 0)
    refused(opt, r"parameter '0.weight' is trainable but not in the optimizer")


def _loop(track: bool, which: str, steps: int = 7):
    """A user's loop with torch.optim.Adam/AdamW, with or without the tracker."""
    from breakeven.tracking import Tracker
    from breakeven.tracking.tracker import build_tracker

    ds = toy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Tanh(), nn.Linear(12, 3))
    cls = torch.optim.Adam if which == "adam" else torch.optim.AdamW
    opt = cls(model.parameters(), lr=0.01)
    tracker = None
    if track:
        spec = {
            "covariance": {"every": 2, "num_batches": 4},
            "preconditioned_sharpness": {"every": 2, "k": 2},
            "preconditioned_covariance": {"every": 3, "k": 2},
        }
        data = {"probe": (ds.x_train[:40], ds.y_train[:40]), "train_data": (ds.x_train, ds.y_train)}
        tracker = build_tracker(spec, **data, batch_size=10, optimizer=opt)
        assert isinstance(tracker, Tracker)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = torch.randperm(len(ds.y_train), generator=g)[:10]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        loss.backward()
        if tracker:
            tracker.before_step(step, model, (ds.x_train[idx], ds.y_train[idx]), loss)
        opt.step()
        if tracker:
            tracker.after_step(step, model)
    return model, opt, tracker


@pytest.mark.parametrize("which", ["adam", "adamw"])
def test_tracking_in_a_users_loop_changes_neither_params_nor_adam_state(which) -> None:
    plain, plain_opt, _ = _loop(False, which)
    model, opt, tracker = _loop(True, which)
    a, b = model.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _same_state(opt.state_dict(), plain_opt.state_dict())
    recs = {(r["measure"], r["step"]): r["values"] for r in tracker.records_}
    assert math.isnan(recs["preconditioned_sharpness", 0]["precond_lambda_H_1"])
    assert math.isnan(recs["preconditioned_covariance", 0]["precond_lambda_K_1"])
    for step in (2, 4, 6):
        v = recs["preconditioned_sharpness", step]
        assert v["precond_lambda_H_1"] >= v["precond_lambda_H_2"] > -math.inf
        assert v["precond_eos_threshold"] == pytest.approx(38 / 0.01)  # lr from the optimizer
        assert v["precond_eos_ratio"] == pytest.approx(v["precond_lambda_H_1"] / (38 / 0.01))
        assert v["adam_step"] == step and v["precond_converged"] == 1.0
    v = recs["preconditioned_covariance", 3]
    assert v["precond_lambda_K_1"] >= v["precond_lambda_K_2"] > 0
    assert v["precond_converged_K"] == 1.0


def test_the_preconditioned_measures_need_the_optimizer() -> None:
    from breakeven.tracking.tracker import build_tracker

    ds = toy()
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    data = {"probe": (ds.x_train, ds.y_train), "train_data": (ds.x_train, ds.y_train)}
    tracker = build_tracker(
        {"preconditioned_sharpness": {"every": 1}}, lr=0.1, batch_size=10, **data
    )
    with pytest.raises(ValueError, match=r"pass the optimizer to the Tracker"):
        tracker.before_step(0, model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker.on_optimizer(sgd)
    with pytest.raises(ValueError, match=r"AdamW, got torch\.optim\.sgd\.SGD"):
        tracker.before_step(0, model)


# ---------------------------------------------------------------- C. presets, verdicts, figure

ADAM_PRESETS = [
    "adam_mlp_fashion_lr",
    "adamw_mlp_fashion_lr",
    "adam_simplecnn_fashion_lr",
    "adamw_simplecnn_fashion_lr",
]


@pytest.mark.parametrize("name", ADAM_PRESETS)
def test_adam_presets_sweep_lr_with_the_preconditioned_measures(name) -> None:
    from breakeven.experiments import list_presets, load_config, resolve_config
    from breakeven.experiments.runner import apply_scale

    assert name in list_presets()
    for scale in ("full", "quick"):
        rc = resolve_config(apply_scale(load_config(name), scale))
        assert rc.train.optimizer == ("adamw" if name.startswith("adamw") else "adam")
        assert rc.train.dataset == "fashion_mnist" and rc.train.betas == (0.9, 0.999)
        assert rc.train.model == ("mlp" if "mlp" in name else "simple_cnn")
        assert (rc.train.weight_decay > 0) == name.startswith("adamw")
        names = list(rc.track)
        assert names == [
            "covariance",
            "preconditioned_covariance",
            "hessian",
            "preconditioned_sharpness",
        ]
        assert rc.track["covariance"]["spectrum"] is True
        # K in Adam's geometry reuses the step's K: the same schedule
        sched = {k: v for k, v in rc.track["covariance"].items() if k in ("every", "schedule")}
        assert sched == {
            k: v for k, v in rc.track["preconditioned_covariance"].items() if k in sched
        }
    assert len(load_config(name)["sweep"]["grid"]["train.lr"]) == 3


def test_an_adam_preset_runs_as_a_tiny_sweep_and_gets_its_verdict_rows(tmp_path) -> None:
    """A smoke test: adam_mlp_fashion_lr shrunk to a few steps on a tiny dataset, two learning
    rates; the verdict table has the Adam rows, reported as the SGD ones."""
    from breakeven.analysis import read_runs, verdicts
    from breakeven.experiments import sweep

    npz = write_tiny_npz(tmp_path / "tiny.npz")
    ov = [
        'train.dataset="npz"',
        f'train.dataset_kwargs={{root="{npz}"}}',
        "train.n_train=60",
        "train.epochs=1",
        "train.batch_size=10",
        "train.eval_every=3",
        "train.model_kwargs={hidden=[8]}",
        "track.covariance.every=2",
        "track.covariance.num_batches=4",
        "track.preconditioned_covariance.every=2",
        "track.hessian.every=2",
        "track.preconditioned_sharpness.every=2",
    ]
    out = tmp_path / "sweep"
    outcome = sweep(
        "adam_mlp_fashion_lr",
        grid={"train.lr": [0.03, 0.001]},
        seeds=1,
        scale="quick",
        overrides=ov,
        out=out,
    )
    assert [s for _, s, _ in outcome.runs] == ["finished", "finished"]
    runs = read_runs(out)
    table = verdicts(runs, min_pairs=1)
    rows = table.set_index("quantity")
    for label in ("lambda_1(P^-1 H)", "lambda_1(P^-1 K)", "lambda_K^1", "lambda_H^1"):
        assert label in rows.index
        assert rows.loc[label, "pairs"] + rows.loc[label, "ties"] == 1
        assert rows.loc[label, "verdict"] in ("supported", "contradicted", "inconclusive")
    assert (
        rows.loc["lambda_1(P^-1 H)", "prediction"] == "max lambda_1(P^-1 H) lower with more noise"
    )
    assert rows.loc["lambda_1(P^-1 H)", "unresolved"] == 0  # step 0's NaN is not counted


def _write_adam_run(path, lr, seed, peak, beta1=0.9):
    """A run directory with known preconditioned-sharpness records (NaN at step 0)."""
    import json

    path.mkdir(parents=True)
    train = {
        "model": "mlp",
        "dataset": "fashion_mnist",
        "lr": lr,
        "optimizer": "adam",
        "betas": [beta1, 0.999],
        "init_seed": seed,
    }
    (path / "config.json").write_text(json.dumps({"name": "a", "train": train}))
    (path / "status").write_text("finished\n")
    threshold = (2 + 2 * beta1) / ((1 - beta1) * lr)
    recs = []
    for step, frac in ((0, math.nan), (10, 0.3), (20, 1.0), (30, 0.8), (40, 0.7)):
        values = {
            "precond_lambda_H_1": frac * peak,
            "precond_eos_threshold": threshold,
            "precond_eos_ratio": frac * peak / threshold,
        }
        recs.append(
            {
                "step": step,
                "epoch": step / 40,
                "measure": "preconditioned_sharpness",
                "values": values,
            }
        )
        k = {"precond_lambda_K_1": frac * peak / 10}
        recs.append(
            {"step": step, "epoch": step / 40, "measure": "preconditioned_covariance", "values": k}
        )
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _write_adam_sweep(root, peaks, beta1=0.9):
    import json

    runs = []
    for (lr, seed), peak in peaks.items():
        name = f"lr{lr}_s{seed}"
        _write_adam_run(root / "runs" / name, lr, seed, peak, beta1)
        runs.append({"name": name, "params": {"train.lr": lr}, "seed": seed})
    spec = {
        "kind": "sweep",
        "preset": "p",
        "grid": {"train.lr": sorted({k[0] for k in peaks})},
        "runs": runs,
    }
    (root / "sweep.json").write_text(json.dumps(spec))
    return root


@pytest.mark.parametrize(
    "peaks, verdict",
    [
        # a larger eta, a lower max: as predicted, in all 4 pairs
        ({(0.01, 0): 50.0, (0.01, 1): 60.0, (0.001, 0): 400.0, (0.001, 1): 500.0}, "supported"),
        ({(0.01, 0): 500.0, (0.01, 1): 600.0, (0.001, 0): 40.0, (0.001, 1): 50.0}, "contradicted"),
        ({(0.01, 0): 50.0, (0.01, 1): 600.0, (0.001, 0): 400.0, (0.001, 1): 55.0}, "inconclusive"),
    ],
)
def test_adam_verdict_clauses_are_reported_like_the_sgd_ones(tmp_path, peaks, verdict) -> None:
    from breakeven.analysis import read_runs, verdicts

    runs = read_runs(_write_adam_sweep(tmp_path / "s", peaks))
    table = verdicts(runs).set_index("quantity")
    assert set(table.index) == {"lambda_1(P^-1 H)", "lambda_1(P^-1 K)"}  # nothing else recorded
    for label in table.index:
        row = table.loc[label]
        assert row["conjecture"] == 1 and row["key"] == "lr" and row["verdict"] == verdict
        assert row["pairs"] == 4 and row["unresolved"] == 0 and row["open"] == 0
    assert "lr=0.001: " in table.loc["lambda_1(P^-1 H)", "max_after_0"]


def test_sgd_sweeps_get_no_adam_rows(tmp_path) -> None:
    from breakeven.analysis import CLAUSES

    assert [c.measure for c in CLAUSES if c.quantity.startswith("precond_")] == [
        "preconditioned_sharpness",
        "preconditioned_covariance",
    ]


@pytest.mark.parametrize("beta1, label", [(0.9, r"$38/\eta$"), (0.5, r"(1-\beta_1)\eta")])
def test_adaptive_edge_of_stability_figure_draws_the_records(tmp_path, beta1, label) -> None:
    pytest.importorskip("matplotlib")
    from breakeven.plotting import FIGURES, available_figures, caption
    from breakeven.plotting import plot_adaptive_edge_of_stability as plot

    peaks = {(0.01, 0): 50.0, (0.001, 0): 400.0}
    root = _write_adam_sweep(tmp_path / "s", peaks, beta1)
    assert FIGURES["adaptive-edge-of-stability"] is plot
    assert available_figures(root)["adaptive-edge-of-stability"] == ""
    fig = plot(root)
    ax = fig.axes[0]
    by_gid = {ln.get_gid(): ln for ln in ax.lines}
    for lr in (0.01, 0.001):
        run, peak = f"lr{lr}_s0", peaks[(lr, 0)]
        lam, thr = by_gid[f"precond_lambda_H_1:{run}"], by_gid[f"precond_eos_threshold:{run}"]
        # step 0's NaN (no Adam state yet) is not drawn
        np.testing.assert_array_equal(lam.get_xdata(), [10, 20, 30, 40])
        np.testing.assert_array_equal(lam.get_ydata(), [0.3 * peak, peak, 0.8 * peak, 0.7 * peak])
        np.testing.assert_allclose(thr.get_ydata(), (2 + 2 * beta1) / ((1 - beta1) * lr))
        assert thr.get_color() == lam.get_color() and thr.get_linestyle() == "--"
    assert label in ax.get_title() and label in ax.get_ylabel()
    assert any(label in t.get_text() for t in ax.get_legend().get_texts())
    text = caption(
        "adaptive-edge-of-stability", fig, __import__("breakeven").analysis.read_runs(root)
    )
    assert ("38/eta" in text) == (beta1 == 0.9) and "2 runs" in text


def test_adaptive_edge_of_stability_says_what_is_missing(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    import json

    from breakeven.plotting import available_figures, plot_adaptive_edge_of_stability

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "r", "train": {"lr": 0.1}}))
    (run / "status").write_text("finished\n")
    rec = {"step": 0, "epoch": 0, "measure": "hessian", "values": {"lambda_H_1": 1.0}}
    (run / "records.jsonl").write_text(json.dumps(rec) + "\n")
    reason = available_figures(run)["adaptive-edge-of-stability"]
    assert "preconditioned_sharpness" in reason
    with pytest.raises(ValueError, match="preconditioned_sharpness"):
        plot_adaptive_edge_of_stability(run)


def test_cli_plot_draws_the_adaptive_figure(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    root = _write_adam_sweep(tmp_path / "s", {(0.01, 0): 50.0, (0.001, 0): 400.0})
    out = tmp_path / "eos.png"
    cmd = [
        sys.executable,
        "-m",
        "breakeven.cli",
        "plot",
        "adaptive-edge-of-stability",
        str(root),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:4] == b"\x89PNG"
