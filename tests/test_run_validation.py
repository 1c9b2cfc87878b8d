"""Clear errors before any state is written: what only the data and the model can tell (batch
size against the training set, the model against the inputs, measure options against the
parameter count, finite data, reserved names) stops ``breakeven run`` with exit code 2 and
one line naming the key, before the run directory exists; the corrected config then runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from breakeven.cli import main
from breakeven.data import CorruptDatasetError
from breakeven.train import ConfigError, TrainConfig, prepare_model, train
from helpers import assert_same_state, run_config, toy

# the tiny run of helpers.run_config, one epoch, evaluated only at the end
TRAIN = {"epochs": 1, "eval_every": None}


def write_npz(path: Path, x: np.ndarray) -> Path:
    """An .npz of ``x`` (the first 60 examples for training), labels in 3 classes."""
    return helpers.write_npz(path, x, np.arange(len(x)) % 3, 60)


@pytest.fixture
def data(tmp_path: Path, tiny_npz: Path) -> dict[str, Path]:
    """The tiny uint8 images, integer features, and float data with NaN or inf in a split."""
    g = np.random.default_rng(0)
    nan = g.standard_normal((80, 8, 8)).astype(np.float32)
    nan[[3, 7, 11], 2, 2] = np.nan
    inf = g.standard_normal((80, 8, 8)).astype(np.float32)
    inf[70, 0, :2] = [np.inf, -np.inf]
    return {
        "images": tiny_npz,
        "integers": write_npz(tmp_path / "ints.npz", g.integers(0, 9, (80, 64)).astype(np.int16)),
        "nan": write_npz(tmp_path / "nan.npz", nan),
        "inf": write_npz(tmp_path / "inf.npz", inf),
    }


CASES = {
    # name: (data, --set overrides, the error message)
    "batch_larger_than_the_data": (
        "images",
        ["train.batch_size=100"],
        r"batch_size=100 is invalid: larger than the 60 training",
    ),
    "batch_larger_than_n_train": (
        "images",
        ["train.n_train=8"],
        r"batch_size=10 .* 8 training examples \(n_train=8\)",
    ),
    "hessian_k_above_the_parameters": (
        "images",
        ["track.hessian.k=600"],
        r"track\.hessian: k=600 is larger than the model.s 538 ",
    ),
    "covariance_m_above_the_data": (
        "images",
        ["track.covariance.batch_size=61"],
        r"track\.covariance: batch_size \(M\) = 61 is larger than ",
    ),
    "per_example_l_above_the_data": (
        "images",
        ["track.covariance.batch_size=1", "track.covariance.num_batches=61"],
        r"track\.covariance: num_batches=61 per-example",
    ),
    "negative_layer_width": (
        "images",
        ["train.model_kwargs.hidden=[-3]"],
        r"model='mlp' with model_kwargs=\{'hidden': \[-3\]\} cannot be built",
    ),
    "zero_layer_width": (
        "images",
        ["train.model_kwargs.hidden=[4, 0]"],
        r"model_kwargs=\{'hidden': \[4, 0\]\} is invalid: .* layers of width 0",
    ),
    "unknown_model_option": (
        "images",
        ["train.model_kwargs.depth=3"],
        r"model='mlp' with model_kwargs=.* cannot be built",
    ),
    "integer_features_for_a_float_model": (
        "integers",
        [],
        r"cannot run on the ints data \(inputs torch\.int64",
    ),
    "images_for_a_token_model": (
        "images",
        ["train.model=lstm", "train.model_kwargs={}"],
        r"model='lstm' .* cannot run on the tiny data",
    ),
    "weight_decay_without_convolutions": (
        "images",
        ["train.weight_decay=0.001"],
        r"weight_decay=0\.001 has no effect",
    ),
    "reserved_measure_name": (
        "images",
        ['track.evaluation.measure="probe"'],
        r"track\.evaluation: the name 'evaluation' is reserved",
    ),
    "nan_in_the_training_inputs": (
        "nan",
        [],
        r"nan\.npz: the data are not finite: x_train holds 3 NaN ",
    ),
    "inf_in_the_test_inputs": ("inf", [], r"x_test holds 2 NaN or infinite value\(s\) of 1280"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_found_with_the_data_stop_before_the_run_directory_exists(
    case, data, tmp_path, capsys
) -> None:
    which, overrides, message = CASES[case]
    config = run_config(tmp_path / "run.toml", data[which], train=TRAIN)
    out = tmp_path / "out"
    argv = ["run", str(config), "--out", str(out), "--no-progress"]
    assert main([*argv, *[a for o in overrides for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not out.exists()  # nothing written: the corrected config may use the directory
    run_config(config, data["images"], train=TRAIN)
    assert main(argv) == 0


def test_the_command_line_reports_a_data_error_in_one_line(data, tmp_path) -> None:
    config = run_config(tmp_path / "run.toml", data["images"], train=TRAIN)
    out = tmp_path / "out"
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
        "train.batch_size=100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: batch_size=100 is invalid"), proc.stderr
    assert not out.exists()


def test_prepare_model_checks_without_changing_any_state() -> None:
    """Its forward pass is in eval mode without gradients: the global RNG, the mode and the
    parameters are those ``train`` starts from."""
    cfg, ds = TrainConfig(model="mlp", model_kwargs={"hidden": [4]}, batch_size=5, steps=1), toy(20)
    rng = torch.get_rng_state()
    a, b = prepare_model(cfg, ds), prepare_model(cfg, ds)
    assert torch.equal(torch.get_rng_state(), rng) and a.training
    assert_same_state(a, b)
    assert all(p.grad is None for p in a.parameters())


def test_train_itself_refuses_what_the_data_rule_out() -> None:
    cfg = TrainConfig(model="mlp", batch_size=5, steps=2)
    with pytest.raises(ConfigError, match=r"batch_size=50 is invalid: larger than the 20"):
        train(cfg.replace(batch_size=50), dataset=toy(20))
    bad = toy(20)
    bad.x_test[0, 0, 0, 0] = float("nan")
    with pytest.raises(CorruptDatasetError, match=r"x_test holds 1 NaN or infinite value\(s\)"):
        train(cfg, dataset=bad)
