"""The training loop: config validation, determinism, equality with a hand-written loop,
divergence, learning-rate decay, conv-only weight decay, tracker hooks."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import breakeven
from breakeven.data import Dataset
from breakeven.models import build_model
from breakeven.tracking import Tracker, every
from breakeven.tracking.hooks import as_hooks
from breakeven.train import (
    _FIELD_CHECKS,
    ConfigError,
    TrainConfig,
    TrainHooks,
    conv_weight_decay_groups,
    evaluate,
    train,
)
from helpers import assert_same_state, same_state, toy

MLP = {"model": "mlp", "model_kwargs": {"hidden": (16,)}, "batch_size": 10}


def params(result) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


# ---------------------------------------------------------------- configuration


def test_unknown_key_is_rejected_with_the_allowed_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learning_rate'\].*'lr'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(TypeError):
        TrainConfig(learning_rate=0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 12.5}, "batch_size"),
        ({"epochs": 2, "steps": 10}, "steps"),
        ({"epochs": 0}, "epochs"),
        ({"model": "vgg16"}, "model"),
        ({"dataset": "svhn"}, "dataset"),
        ({"lr_decay_epochs": (5, 3)}, "lr_decay_epochs"),
        ({"lr_decay_epochs": (0,)}, "lr_decay_epochs"),
        ({"init_seed": -1}, "init_seed"),
        ({"eval_every": -2}, "eval_every"),
        ({"augment": "yes"}, "augment"),
        ({"device": "gpu0"}, "device"),
        ({"dataset_kwargs": {"rooot": "/data"}}, "dataset_kwargs"),
        ({"probe_fraction": 0.0}, "probe_fraction"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(changes, key) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is invalid: must be "):
        TrainConfig.from_dict(changes)


def test_every_field_has_a_row_in_the_table_of_checks() -> None:
    checked = {key for key, _, _ in _FIELD_CHECKS}
    assert checked | {"model_kwargs"} == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("lr_decay_factor", [0, -1.0, True, float("inf")]),
        ("momentum", [True, -0.1, "0.5"]),
        ("eval_batch_size", [0, 2.5, None]),
        ("steps", [0, 2.0, True]),
        ("eval_val_size", [0, "10"]),
        ("data_seed", [-1, 0.5, None]),
        ("drop_last", [1, "no", None]),
        ("channels_last", [0]),
        ("lr_decay_epochs", [(1, 1), (2.5,), "ab"]),
        ("device", [3, None]),
    ],
)
def test_each_invalid_value_of_a_field_names_it(key, values) -> None:
    for value in values:
        with pytest.raises(ConfigError, match=rf"^{key}={re.escape(repr(value))} is invalid: "):
            TrainConfig(**{key: value})


def test_cuda_is_rejected_when_absent() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device='cuda' is invalid"):
        TrainConfig(device="cuda")


def test_config_is_frozen_and_round_trips() -> None:
    c = TrainConfig(lr=0.1, lr_decay_epochs=[100], momentum=0.9, nesterov=True, steps=5)
    assert c.lr_decay_epochs == (100,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert c.replace(lr=0.2).lr == 0.2
    with pytest.raises(ConfigError):
        c.replace(momentum=0.0)  # nesterov needs momentum


def test_bad_model_kwargs_and_useless_weight_decay_stop_before_training() -> None:
    with pytest.raises(ConfigError, match="model_kwargs"):
        train(TrainConfig(model="mlp", model_kwargs={"depth": 3}, steps=1), dataset=toy())
    with pytest.raises(ConfigError, match="no convolution kernels"):
        train(TrainConfig(**MLP, weight_decay=1e-4, steps=1), dataset=toy())
    with pytest.raises(ConfigError, match="augment=True needs images"):
        train(TrainConfig(**MLP, augment=True, steps=1), dataset=toy(shape=(5,)))


# ---------------------------------------------------------------- the loop


def hand_written(cfg: TrainConfig, ds: Dataset, conv_wd: float = 0.0) -> list[torch.Tensor]:
    """The minimal loop anyone would write, with the same seeds."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, **cfg.model_kwargs)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    conv = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    g = torch.Generator().manual_seed(cfg.data_seed)
    n = ds.n_train
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            for w in conv:
                w.grad.add_(w, alpha=conv_wd)
            opt.step()
    return [p.detach() for p in model.parameters()]


def test_matches_a_hand_written_loop_bitwise() -> None:
    ds = toy()
    cfg = TrainConfig(**MLP, lr=0.05, momentum=0.9, nesterov=True, epochs=2, eval_every=0)
    assert same_state(params(train(cfg, dataset=ds)), hand_written(cfg, ds))


def test_weight_decay_acts_on_conv_kernels_only() -> None:
    ds = toy(n=24, shape=(3, 12, 12))
    cfg = TrainConfig(
        model="simple_cnn",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.05,
        batch_size=8,
        epochs=1,
        eval_every=0,
    )
    assert same_state(params(train(cfg, dataset=ds)), hand_written(cfg, ds, conv_wd=0.05))
    groups = conv_weight_decay_groups(build_model("simple_cnn"), 1e-4)
    assert [len(g["params"]) for g in groups] == [4, 8] and groups[1]["weight_decay"] == 0.0
    assert all(p.dim() == 4 for p in groups[0]["params"])


def test_same_config_same_bits_and_the_two_seeds_are_separate() -> None:
    ds = toy()
    batches: dict[str, list] = {}

    class Record:
        def __init__(self, key: str) -> None:
            self.key = key
            batches[key] = []

        def before_step(self, step, model, batch, loss) -> None:
            batches[self.key].append(batch[1].clone())

    base = TrainConfig(**MLP, lr=0.1, momentum=0.5, steps=25, eval_every=0)
    a = train(base, Record("a"), dataset=ds)
    b = train(base, Record("b"), dataset=ds)
    assert same_state(params(a), params(b)) and a.losses == b.losses
    c = train(base.replace(init_seed=1), Record("init"), dataset=ds)
    d = train(base.replace(data_seed=1), Record("data"), dataset=ds)
    assert not same_state(params(a), params(c)) and not same_state(params(a), params(d))
    assert same_state(batches["a"], batches["init"])
    assert not same_state(batches["a"], batches["data"])


def test_global_rng_and_thread_count_are_left_alone() -> None:
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    seen = []

    class Threads:
        def on_start(self, model, dataset, config) -> None:
            seen.append(torch.get_num_threads())

    train(TrainConfig(**MLP, steps=3, eval_every=0, num_threads=2), Threads(), dataset=toy())
    assert torch.equal(torch.get_rng_state(), state)
    assert seen == [2] and torch.get_num_threads() == threads


def test_absurd_learning_rate_diverges_cleanly() -> None:
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": ()}, lr=1e38, batch_size=16, steps=20)
    result = train(cfg, dataset=toy())
    assert result.status == "diverged" and result.diverged_at is not None
    assert result.steps == result.diverged_at == len(result.losses) < 20
    assert all(math.isfinite(v) for v in result.losses)


def test_a_finished_run_and_its_history() -> None:
    ds = toy(n=100)
    cfg = TrainConfig(**MLP, lr=0.1, momentum=0.9, epochs=3, lr_decay_epochs=(1, 2))
    result = train(cfg, dataset=ds)
    assert result.status == "finished" and result.diverged_at is None
    assert result.steps == 3 * 10 == len(result.losses)  # ceil(100 / 10) steps per epoch
    assert [h["step"] for h in result.history] == [0, 10, 20, 30]
    assert [h["lr"] for h in result.history[1:]] == pytest.approx([0.1, 0.01, 0.001])
    assert result.final["train_acc"] > result.history[0]["train_acc"]
    assert set(result.final) == {
        "step",
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "seconds",
    }
    every = train(cfg.replace(eval_every=7), dataset=ds)
    assert [h["step"] for h in every.history] == [0, 7, 14, 21, 28, 30]
    assert same_state(params(every), params(result))  # evaluating does not change training
    short = train(cfg.replace(epochs=None, steps=4, drop_last=True), dataset=ds)
    assert short.steps == 4 and short.history[-1]["step"] == 4


def test_n_train_subset_and_partial_last_batch() -> None:
    result = train(TrainConfig(**MLP, n_train=25, epochs=1, eval_every=0), dataset=toy())
    assert result.steps == 3 and result.history == []
    dropped = train(
        TrainConfig(**MLP, n_train=25, epochs=1, drop_last=True, eval_every=0), dataset=toy()
    )
    assert dropped.steps == 2


def test_tracker_hooks_see_the_gradient_before_the_update() -> None:
    calls: list[tuple] = []

    class Tracker:
        def on_start(self, model, dataset, config) -> None:
            calls.append(("start", dataset.name, config.steps))

        def before_step(self, step, model, batch, loss) -> None:
            w = model.net[0].weight
            calls.append(("before", step, w.grad is not None, w.detach().clone(), loss.item()))

        def after_step(self, step, model) -> None:
            calls.append(("after", step, model.net[0].weight.detach().clone()))

        def on_end(self, result) -> None:
            calls.append(("end", result.status, result.steps))

    train(TrainConfig(**MLP, lr=0.1, steps=3, eval_every=0), Tracker(), dataset=toy())
    assert calls[0] == ("start", "toy", 3) and calls[-1] == ("end", "finished", 3)
    steps = calls[1:-1]
    assert [c[:2] for c in steps] == [
        ("before", 0),
        ("after", 0),
        ("before", 1),
        ("after", 1),
        ("before", 2),
        ("after", 2),
    ]
    assert all(c[2] for c in steps[::2])  # .grad is populated
    assert not torch.equal(steps[0][3], steps[1][2])  # the update happens in between


class Counting(TrainHooks):
    """Overrides one hook only, and keeps a state (its step count) through checkpoints."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def after_step(self, step, model) -> None:
        self.steps.append(step)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state) -> None:
        self.steps = list(state["steps"])


@pytest.mark.parametrize("eval_every", [None, 0, 4])
def test_train_hooks_is_a_base_class_of_no_op_hooks(eval_every) -> None:
    cfg = TrainConfig(**MLP, lr=0.1, momentum=0.5, steps=12, eval_every=eval_every)
    plain = train(cfg, dataset=toy())
    for hooks in (TrainHooks(), Counting(), Tracker([], every(5))):
        result = train(cfg, hooks, dataset=toy())
        assert same_state(params(result), params(plain)) and result.losses == plain.losses
        assert history(result) == history(plain)
    counting = Counting()
    train(cfg, counting, dataset=toy())
    assert counting.steps == list(range(12))
    assert TrainHooks().state_dict() is None and TrainHooks().load_state_dict(None) is None
    assert issubclass(Tracker, TrainHooks) and breakeven.TrainHooks is TrainHooks


def test_an_object_with_some_hooks_is_adapted_and_a_train_hooks_is_itself() -> None:
    class Some:
        def on_end(self, result) -> None:
            self.status = result.status

    some, counting = Some(), Counting()
    assert as_hooks(counting) is counting and type(as_hooks(None)) is TrainHooks
    adapted = as_hooks(some)
    assert isinstance(adapted, TrainHooks) and adapted.state_dict() is None
    adapted.before_step(0, None, None, None)  # missing hooks do nothing
    train(TrainConfig(**MLP, steps=2, eval_every=0), some, dataset=toy())
    assert some.status == "finished"


def test_hooks_state_is_checkpointed_and_a_hooks_without_state_refuses_it() -> None:
    cfg = TrainConfig(**MLP, lr=0.1, steps=10, eval_every=0)
    states: list[dict] = []
    whole = Counting()
    train(cfg, whole, dataset=toy(), checkpoint_every=4, on_checkpoint=states.append)
    assert [s["tracker"] for s in states] == [{"steps": list(range(4))}, {"steps": list(range(8))}]
    resumed = Counting()
    train(cfg, resumed, dataset=toy(), resume=states[0])
    assert resumed.steps == whole.steps
    with pytest.raises(ValueError, match="TrainHooks keeps no state"):
        train(cfg, TrainHooks(), dataset=toy(), resume=states[0])
    empty: list[dict] = []
    train(cfg, TrainHooks(), dataset=toy(), checkpoint_every=4, on_checkpoint=empty.append)
    assert [s["tracker"] for s in empty] == [None, None]
    again = train(cfg, TrainHooks(), dataset=toy(), resume=empty[0])
    assert again.losses == train(cfg, dataset=toy()).losses


def history(result) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


def test_batchnorm_model_with_augmentation_is_deterministic() -> None:
    ds = toy(n=24, shape=(3, 12, 12))
    cfg = TrainConfig(
        model="simple_cnn_bn", lr=0.1, batch_size=8, epochs=1, augment=True, channels_last=True
    )
    a, b = train(cfg, dataset=ds), train(cfg, dataset=ds)
    assert a.status == "finished" and same_state(params(a), params(b))
    assert not same_state(params(a), params(train(cfg.replace(augment=False), dataset=ds)))


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_loads_the_dataset_by_name(monkeypatch) -> None:
    monkeypatch.delenv("BREAKEVEN_DATA", raising=False)
    cfg = TrainConfig(lr=0.1, n_train=640, steps=10, eval_every=10, eval_train_size=200)
    result = train(cfg)
    assert result.status == "finished" and result.steps == 10
    assert result.final["val_acc"] > 0.3  # ten steps of the paper's MLP on real FashionMNIST


def test_validation_on_a_fixed_subset() -> None:
    ds = toy()
    full = train(TrainConfig(**MLP, steps=3, eval_every=3), dataset=ds)
    part = train(TrainConfig(**MLP, steps=3, eval_every=3, eval_val_size=10), dataset=ds)
    assert_same_state(full.model, part.model)
    idx = torch.randperm(32, generator=torch.Generator().manual_seed(1))[:10].sort().values
    loss, acc = evaluate(part.model, ds.x_test[idx], ds.y_test[idx])
    assert part.final["val_loss"] == pytest.approx(loss) and part.final["val_acc"] == acc
    assert full.final["val_loss"] == pytest.approx(evaluate(full.model, ds.x_test, ds.y_test)[0])
