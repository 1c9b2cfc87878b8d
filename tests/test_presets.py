"""The bundled presets (one per paper experiment): each resolves and plans at every scale it
offers, builds its tracker, says what it is, holds the paper's numbers, keeps its quick scale
small, and fails with the loader's message when its dataset is missing."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest

from breakeven.cli import main
from breakeven.data import _base
from breakeven.experiments import list_presets, load_config, resolve_config
from breakeven.experiments.runner import apply_scale, list_scales
from breakeven.experiments.sweep import FIXED_M, plan_sweep
from breakeven.measures import MEASURES
from breakeven.tracking import build_tracker
from breakeven.tracking.schedules import parse_schedule
from breakeven.train import TrainConfig

PRESETS = list_presets()
SCALES = [(name, scale) for name in PRESETS for scale in list_scales(load_config(name))]
SCHEDULE_KEYS = ("every", "at", "log_spaced", "schedule")
#: Training-set sizes of the full datasets (the standard splits the loaders read).
DATASET_SIZES = {
    "cifar10": 50_000,
    "fashion_mnist": 60_000,
    "imdb": 25_000,
    "mnli": 392_702,
    "imagenet": 1_281_167,
}
#: Measures that reuse another measure's result of the same step (read from its cache).
USES = {
    "stability": "hessian",
    "edge_of_stability": "hessian",
    "alignment": "covariance",
    "noise_scale": "covariance",
}


def _full(name: str) -> dict[str, Any]:
    return apply_scale(load_config(name), "full")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _kind(name: str, options: dict[str, Any]) -> str:
    return options.get("measure", name)


def _covariances(track: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: o for n, o in track.items() if _kind(n, o) == "covariance"}


def _schedule(options: dict[str, Any]) -> tuple[str, Any]:
    keys = [k for k in SCHEDULE_KEYS if k in options]
    return (keys[0], options[keys[0]]) if keys else ("every", 100)


def _n_train(train: TrainConfig) -> int:
    full = DATASET_SIZES[train.dataset]
    return min(train.n_train, full) if train.n_train is not None else full


def test_every_preset_offers_a_quick_scale() -> None:
    assert len(PRESETS) >= 17
    for name in PRESETS:
        assert list_scales(load_config(name))[:2] == ["full", "quick"], name


#: Scales that run the paper's model on real FashionMNIST (installed here) in place of CIFAR-10.
FASHION = [(n, s) for n, s in SCALES if s == "fashion"]


def test_the_paper_s_simplecnn_sweeps_have_a_fashion_mnist_scale() -> None:
    assert {"fig4_simplecnn_lr", "sec43_simplecnn_bn_lr"} <= {n for n, _ in FASHION}


@pytest.mark.parametrize(("name", "scale"), FASHION)
def test_a_fashion_scale_keeps_the_experiment_on_real_fashion_mnist(name: str, scale: str) -> None:
    keep = ("model", "lr", "batch_size", "momentum", "weight_decay", "augment")
    full = resolve_config(_full(name)).train
    fashion = resolve_config(apply_scale(load_config(name), scale)).train
    assert fashion.dataset == "fashion_mnist"
    assert {k: getattr(full, k) for k in keep} == {k: getattr(fashion, k) for k in keep}
    assert load_config(name)["sweep"]["seeds"] >= 2


def test_a_scale_table_replaces_a_value_that_is_not_a_table() -> None:
    config = {
        "train": {"model": "mlp"},
        "track": {"hessian": {"k": 1, "schedule": [{"every": 60}]}},
        "scale": {"s": {"track": {"hessian": {"schedule": {"at": [0, 10]}, "tol": 1e-4}}}},
    }
    out = apply_scale(config, "s")
    assert out["track"]["hessian"] == {"k": 1, "schedule": {"at": [0, 10]}, "tol": 1e-4}
    assert parse_schedule(out["track"]["hessian"]["schedule"])(10)


@pytest.mark.parametrize(("name", "scale"), SCALES)
def test_preset_resolves_plans_and_builds_its_tracker(name: str, scale: str) -> None:
    raw = load_config(name)
    rc = resolve_config(apply_scale(raw, scale))
    build_tracker(rc.track)
    plan = plan_sweep(name, scale=scale)
    grid = raw["sweep"]["grid"]
    assert len(plan.runs) == math.prod(len(v) for v in grid.values()) * raw["sweep"]["seeds"]
    for run in plan.runs:
        run_rc = resolve_config(run.config)
        build_tracker(run_rc.track)
        for key, value in run.params.items():
            assert _get(run.config, key) == value
        assert run_rc.train.init_seed == run_rc.train.data_seed == run.seed


def test_presets_command_lists_each_with_its_description(capsys) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in PRESETS:
        description = load_config(name)["description"]
        assert description and "\n" not in description and len(description) <= 130, name
        assert any(re.fullmatch(rf"{name}\s+{re.escape(description)}", ln) for ln in lines), name


@pytest.mark.parametrize("name", PRESETS)
def test_grid_keys_are_real_config_keys(name: str) -> None:
    raw = load_config(name)
    assert set(raw["sweep"]) <= {"grid", "seeds"}
    for key in raw["sweep"]["grid"]:
        table, *rest = key.split(".")
        if table == "train":
            assert len(rest) == 1 and rest[0] in TrainConfig.__dataclass_fields__, key
        else:
            assert table == "track" and len(rest) == 2, key
            measure, option = rest
            options = raw["track"][measure]
            params = inspect.signature(MEASURES[_kind(measure, options)].__init__).parameters
            assert option in params or option in SCHEDULE_KEYS, key


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("scale", ["full", "quick"])
def test_k_uses_m_128_when_the_batch_size_is_swept_else_m_equal_s(name: str, scale: str) -> None:
    raw = load_config(name)
    swept = "train.batch_size" in raw["sweep"]["grid"]
    for run in plan_sweep(name, scale=scale).runs:
        rc = resolve_config(run.config)
        covariances = _covariances(rc.track)
        assert "covariance" in covariances
        for mname, opts in covariances.items():
            if swept:
                assert opts["batch_size"] == FIXED_M, (run.name, mname)
            elif mname == "covariance":  # M = S: unset, or S itself
                assert opts.get("batch_size", rc.train.batch_size) == rc.train.batch_size


@pytest.mark.parametrize(("name", "scale"), SCALES)
def test_k_batches_fit_in_the_training_set(name: str, scale: str) -> None:
    """Each of K's batches fits (L x M may exceed N: the paper's L = 200, M = 128 on IMDB's
    25,000 reviews; the batches are then drawn independently)."""
    for run in plan_sweep(name, scale=scale).runs:
        rc = resolve_config(run.config)
        n = _n_train(rc.train)
        for mname, opts in _covariances(rc.track).items():
            M = opts.get("batch_size") or rc.train.batch_size
            L = opts.get("num_batches", 25)
            assert (M if M > 1 else L) <= n, f"{run.name}: {mname} needs {L} x {M} of {n}"


@pytest.mark.parametrize(("name", "scale"), SCALES)
def test_dependent_measures_follow_and_share_the_schedule(name: str, scale: str) -> None:
    """Stability, alignment, ... reuse the Hessian or K of the same step only when they run
    after it at the same steps; otherwise they compute a default one again."""
    track = resolve_config(apply_scale(load_config(name), scale)).track
    order = list(track)
    for mname, opts in track.items():
        base = USES.get(_kind(mname, opts))
        if base is not None:
            assert base in track and order.index(base) < order.index(mname), (name, mname)
            assert _schedule(opts) == _schedule(track[base]), (name, mname)


# Quick-scale budget: on 2 CPU cores one K of 25 batches of 128 takes ~10-50 s for SimpleCNN,
# lambda_H^1 on 250 examples ~6-16 s, an evaluation of 11,000 CIFAR images ~5-15 s.
QUICK_LIMITS = {"n_train": 5000, "steps": 1600, "probe": 250, "K": 10, "H": 5, "evals": 8}


def _count(spec: tuple[str, Any], steps: int, per_epoch: int) -> int:
    schedule = parse_schedule({spec[0]: spec[1]})
    return sum(schedule(s, per_epoch) for s in range(steps))


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "mlp_fashion"])  # an MLP: cheap
def test_quick_scale_is_small(name: str) -> None:
    lim = QUICK_LIMITS
    for run in plan_sweep(name, scale="quick").runs:
        rc = resolve_config(run.config)
        t = rc.train
        n = _n_train(t)
        steps, per_epoch = t.total_steps(n), t.steps_per_epoch(n)
        assert t.n_train is not None and t.n_train <= lim["n_train"], run.name
        assert steps <= lim["steps"], run.name
        assert round(t.probe_fraction * n) <= lim["probe"], run.name
        if t.eval_every:
            assert math.ceil(steps / t.eval_every) + 1 <= lim["evals"], run.name
        for mname, opts in rc.track.items():
            count = _count(_schedule(opts), steps, per_epoch)
            kind = _kind(mname, opts)
            if kind == "covariance":
                assert 1 <= count <= lim["K"], (run.name, mname, count)
            if kind == "hessian":
                assert 1 <= count <= lim["H"], (run.name, mname, count)


@pytest.mark.parametrize("name", PRESETS)
def test_a_scale_only_shrinks_the_run(name: str) -> None:
    """The quick scale keeps the experiment's hyperparameters; it changes only its size."""
    keep = ("model", "dataset", "lr", "batch_size", "momentum", "weight_decay", "augment")
    keep += ("lr_decay_factor", "probe_fraction")
    full = resolve_config(_full(name)).train
    quick = resolve_config(apply_scale(load_config(name), "quick")).train
    assert {k: getattr(full, k) for k in keep} == {k: getattr(quick, k) for k in keep}


# (preset, key in the full-scale config or "sweep.grid"/"sweep.seeds", the paper's value)
PAPER_VALUES = [
    # Sec. 4.1: eta 0.01 and 0.001, 5 random initialisations, SimpleCNN on CIFAR-10
    ("sec41_simplecnn_early", "sweep.grid", {"train.lr": [0.01, 0.001]}),
    ("sec41_simplecnn_early", "sweep.seeds", 5),
    ("sec41_simplecnn_early", "train.model", "simple_cnn"),
    ("sec41_simplecnn_early", "track.covariance.spectrum", True),  # Fig. 3
    # App. D: SimpleCNN, eta = 0.05 when S varies, S = 128 when eta varies
    ("fig4_simplecnn_batch", "train.lr", 0.05),
    ("fig4_simplecnn_lr", "train.batch_size", 128),
    # App. D: ResNet-32, 200 epochs, batch 128, weight decay 1e-4 on conv kernels, augmented
    ("fig4_resnet32_lr", "train.model", "resnet32"),
    ("fig4_resnet32_lr", "train.epochs", 200),
    ("fig4_resnet32_lr", "train.batch_size", 128),
    ("fig4_resnet32_lr", "train.weight_decay", 1e-4),
    ("fig4_resnet32_lr", "train.augment", True),
    ("fig4_resnet32_batch", "train.lr", 0.05),
    ("fig4_resnet32_batch", "train.epochs", 200),
    ("fig4_resnet32_batch", "train.weight_decay", 1e-4),
    ("fig4_resnet32_batch", "train.augment", True),
    # App. D / C: LSTM on IMDB, vocabulary 20,000, length 80, 100 epochs, 2 seeds, L = 200
    ("fig4_lstm_lr", "train.batch_size", 128),
    ("fig4_lstm_lr", "train.epochs", 100),
    ("fig4_lstm_lr", "train.dataset_kwargs", {"vocab_size": 20000, "maxlen": 80}),
    ("fig4_lstm_lr", "train.model_kwargs", {"vocab_size": 20000, "hidden_size": 100}),
    ("fig4_lstm_lr", "track.covariance.num_batches", 200),
    ("fig4_lstm_lr", "sweep.seeds", 2),
    ("fig4_lstm_batch", "train.lr", 1.0),
    ("fig4_lstm_batch", "train.epochs", 100),
    ("fig4_lstm_batch", "train.dataset_kwargs", {"vocab_size": 20000, "maxlen": 80}),
    ("fig4_lstm_batch", "track.covariance.num_batches", 200),
    ("fig4_lstm_batch", "sweep.seeds", 2),
    # App. D: BERT-base (pretrained, multilingual) on MNLI, length 40, 20 epochs, batch 32
    ("fig6_bert_lr", "train.model", "bert_base"),
    ("fig6_bert_lr", "train.batch_size", 32),
    ("fig6_bert_lr", "train.epochs", 20),
    ("fig6_bert_lr", "train.dataset_kwargs.maxlen", 40),
    ("fig6_bert_lr", "sweep.seeds", 3),
    # App. D: DenseNet-121 on ImageNet, 10 epochs, batch 32, no augmentation
    ("fig6_densenet_lr", "train.model", "densenet121"),
    ("fig6_densenet_lr", "train.batch_size", 32),
    ("fig6_densenet_lr", "train.epochs", 10),
    ("fig6_densenet_lr", "train.augment", False),
    # App. C: M = 1 against M = 128 on 10% of CIFAR-10, eta 0.1, 0.01, 0.001
    ("appc_simplecnn_m1", "sweep.grid", {"train.lr": [0.1, 0.01, 0.001]}),
    ("appc_simplecnn_m1", "train.n_train", 5000),
    ("appc_simplecnn_m1", "track.covariance.batch_size", 128),
    ("appc_simplecnn_m1", "track.covariance_m1.batch_size", 1),
    ("appc_simplecnn_m1", "track.covariance_m1.measure", "covariance"),
    # App. E: the MLP on FashionMNIST, batch 64, 200 epochs
    ("mlp_fashion", "train.batch_size", 64),
    ("mlp_fashion", "train.epochs", 200),
    # App. F: momentum 0.1, 0.5, 0.9; momentum 0.9 with eta 0.01 and 0.001
    ("appf_simplecnn_momentum", "sweep.grid", {"train.momentum": [0.1, 0.5, 0.9]}),
    ("appf_simplecnn_momentum_lr", "train.momentum", 0.9),
    ("appf_simplecnn_momentum_lr", "sweep.grid", {"train.lr": [0.01, 0.001]}),
    # App. G: the learning rate divided by 10 after epoch 100
    ("appg_simplecnn_lrdecay", "train.lr_decay_epochs", [100]),
    ("appg_simplecnn_lrdecay", "train.lr_decay_factor", 0.1),
    # Sec. 4.3 / App. H: eta in {0.001, 0.01, 0.1, 1.0} with and without BN; S down to 10
    ("sec43_simplecnn_bn_lr", "sweep.grid", {"train.lr": [0.001, 0.01, 0.1, 1.0]}),
    ("sec43_simplecnn_bn_lr", "train.model", "simple_cnn_bn"),
    ("sec43_simplecnn_bn_lr", "track.alignment.k", 5),
    ("sec43_simplecnn_nobn_lr", "sweep.grid", {"train.lr": [0.001, 0.01, 0.1, 1.0]}),
    ("sec43_simplecnn_nobn_lr", "train.model", "simple_cnn"),
    ("sec43_simplecnn_nobn_lr", "track.alignment.k", 5),
    ("apph_simplecnn_bn_batch", "train.model", "simple_cnn_bn"),
]


@pytest.mark.parametrize(("name", "key", "value"), PAPER_VALUES)
def test_paper_values(name: str, key: str, value: Any) -> None:
    raw = load_config(name)
    cfg = raw if key.startswith("sweep.") else _full(name)
    assert _get(cfg, key) == value


def test_paper_values_common_to_all_presets() -> None:
    """App. C: the Hessian on a 5% probe, L = 25 (200 on IMDB; the whole 10% subset in
    Fig. 9); Sec. 4.2: BERT and DenseNet vary only the learning rate; App. H goes down to
    S = 10 with the lr sweep's 4 etas in Sec. 4.3 both with and without BN."""
    for name in PRESETS:
        full = _full(name)
        rc = resolve_config(full)
        assert rc.train.probe_fraction == 0.05, name
        for mname, opts in _covariances(rc.track).items():
            expected = {"imdb": 200}.get(rc.train.dataset, 25)
            if name == "appc_simplecnn_m1":  # the whole 5,000-example subset
                expected = 5000 // (opts["batch_size"])
            assert opts.get("num_batches", 25) == expected, (name, mname)
        grid = load_config(name)["sweep"]["grid"]
        if rc.train.model in ("bert_base", "densenet121"):
            assert list(grid) == ["train.lr"], name
        if name.endswith("_batch"):
            assert list(grid) == ["train.batch_size"], name
    assert min(load_config("apph_simplecnn_bn_batch")["sweep"]["grid"]["train.batch_size"]) == 10
    sizes = load_config("fig4_simplecnn_batch")["sweep"]["grid"]["train.batch_size"]
    assert {10, 100} <= set(sizes)  # the two S the text reports Tr(K) for


@pytest.fixture
def no_datasets(monkeypatch, tmp_path: Path) -> Path:
    """Every place datasets are looked up is an empty folder."""
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("BREAKEVEN_DATA", str(empty))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(_base, "SYSTEM_DATA_DIRS", [tmp_path / "system"])
    return empty


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("fig4_simplecnn_lr", "CIFAR-10"),
        ("fig4_lstm_batch", "IMDB"),
        ("fig6_bert_lr", "MNLI"),
        ("fig6_densenet_lr", "ImageNet"),
    ],
)
def test_a_missing_dataset_gives_the_loaders_error(
    name: str, label: str, no_datasets: Path, tmp_path: Path, capsys
) -> None:
    if label == "ImageNet":
        pytest.importorskip("PIL")  # without Pillow the loader says so instead
    out = tmp_path / "sweep"
    assert main(["sweep", name, "--scale", "quick", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"{label} not found. Looked in:" in captured.err
    assert str(no_datasets) in captured.err and "BREAKEVEN_DATA" in captured.err
    assert "Traceback" not in captured.err
    # the sweep stopped before any run (the dataset is loaded once first), said once
    assert "failed" not in captured.out and " skipped" in captured.out
    assert captured.err.count(f"{label} not found") == 1
    assert not (out / "runs").exists()
