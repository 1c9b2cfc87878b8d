"""The ``breakeven`` command and config handling: presets, TOML and ``--set`` parsing, errors
that name the key before any training, the summary table and the progress display."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from breakeven.cli import main, summarize
from breakeven.experiments import (
    apply_overrides,
    apply_scale,
    default_out_dir,
    list_presets,
    load_config,
    resolve_config,
    run,
)
from breakeven.experiments.runner import _Progress
from breakeven.tracking import build_tracker
from breakeven.train import ConfigError
from cases import write_tiny_npz

TOML = """
[run]
checkpoint_every = 5

[train]
model = "mlp"
model_kwargs = {{ hidden = [8] }}
dataset = "npz"
dataset_kwargs = {{ root = "{npz}" }}
lr = 0.1
batch_size = 10
epochs = 2
eval_every = 4
num_threads = 1

[track]
covariance = {{ every = 3, num_batches = 3 }}
hessian = {{ every = "epoch", k = 1 }}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A tiny run config on a tiny .npz dataset (uint8 8x8 images, 3 classes)."""
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    path = tmp_path / "tiny.toml"
    path.write_text(TOML.format(npz=npz))
    return path


def test_presets_are_listed_and_valid(capsys) -> None:
    assert "mlp_fashion" in list_presets()
    assert main(["presets"]) == 0
    assert "mlp_fashion" in capsys.readouterr().out
    for name in list_presets():
        rc = resolve_config(load_config(name))
        build_tracker(rc.track)  # every option of the preset is accepted
    rc = resolve_config(load_config("mlp_fashion"))
    assert (rc.train.model, rc.train.dataset, rc.train.batch_size, rc.train.lr) == (
        "mlp", "fashion_mnist", 64, 0.1)  # fmt: skip
    assert rc.track["covariance"] == {"every": 50, "num_batches": 25, "spectrum": True}
    assert rc.track["hessian"]["every"] == 500 and rc.train.probe_fraction == 0.05
    assert rc.train.epochs == 200  # the paper's length; the quick scale is 2 epochs
    quick = resolve_config(apply_scale(load_config("mlp_fashion"), "quick"))
    assert quick.train.epochs == 2 and quick.track["covariance"]["every"] == 25


def test_set_values_are_read_as_toml() -> None:
    cfg = apply_overrides(
        {"train": {"lr": 0.1}},
        ["lr=0.05", "train.lr_decay_epochs=[1, 2]", "model=mlp", "augment=true",
         "track.hessian.every=epoch", "run.checkpoint_every=7", 'name="x"'],
    )  # fmt: skip
    assert cfg["train"] == {"lr": 0.05, "lr_decay_epochs": [1, 2], "model": "mlp",
                            "augment": True}  # fmt: skip
    assert cfg["track"] == {"hessian": {"every": "epoch"}} and cfg["run"]["checkpoint_every"] == 7
    assert cfg["name"] == "x"
    with pytest.raises(ConfigError, match="must be key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides({}, ["learning_rate=0.1"])
    assert default_out_dir({"name": "a"}) == Path("runs/a")
    assert default_out_dir({"name": "a"}, ["lr=1"]) != default_out_dir({"name": "a"}, ["lr=2"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=-1"], r"lr=-1 is invalid: must be a finite number > 0"),
        (["--set", "train.batchsize=8"], r"unknown config key\(s\) \['batchsize'\]; allowed"),
        (["--set", "foo.bar=1"], r"--set foo.bar: unknown key"),
        (["--set", "run.every=3"], r"unknown run key\(s\) \['every'\]; allowed: \['checkpoint_"),
        (["--set", "run.checkpoint_every=-2"], r"run.checkpoint_every=-2 is invalid"),
        (
            ["--set", "track.hessain.every=5"],
            r"track.hessain: unknown measure 'hessain'; allowed: \[",
        ),
        (["--set", "track.hessian.kk=2"], r"track.hessian: unknown option\(s\) \['kk'\]"),
        (["--set", "track.hessian.every=often"], r"schedule 'often'"),
        (["--set", "track.covariance=3"], r"track.covariance=3 is invalid: must be a table"),
    ],
)
def test_invalid_keys_and_values_stop_before_training(config, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    assert not (out / "config.json").exists()  # nothing was started


def test_invalid_toml_files(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = = 1\n")
    assert main(["run", str(bad), "--no-progress"]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    bad.write_text("[trian]\nlr = 1\n")
    assert main(["run", str(bad), "--no-progress"]) == 2
    assert "unknown top-level key(s) ['trian']" in capsys.readouterr().err
    assert main(["run", "no_such_preset", "--no-progress"]) == 2
    assert "neither a TOML file nor a preset" in capsys.readouterr().err


def test_run_show_export_and_rerun(config, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["run", str(config), "--out", str(out), "--no-progress", "--set", "train.lr=0.05"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "finished" in shown and "max lambda_K^1" in shown and "max lambda_H^1" in shown
    rows = dict(summarize(out))
    assert rows["status"] == "finished" and rows["steps"] == "12"
    assert rows["time: covariance"].endswith("% of wall time)")
    assert main(["show", str(out)]) == 0
    assert "final val loss / acc" in capsys.readouterr().out
    assert main(["export", str(out), "--to", "csv"]) == 0
    assert (out / "records.csv").exists()

    assert main(argv) == 0  # the same command again: the run has ended, nothing to do
    assert "already ended" in capsys.readouterr().out
    argv[-1] = "train.lr=0.2"  # another config into the same folder is refused
    assert main(argv) == 2
    assert "differing keys: train.lr" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2


def test_progress_shows_step_loss_accuracy_lambdas_and_time_left(config, tmp_path) -> None:
    stream = io.StringIO()
    run(config, tmp_path / "a", progress=lambda: _Progress(use_tqdm=False, stream=stream))
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("step 12/12 loss ")
    assert re.search(r" acc [01]\.\d{3} λK1 \d\S* λH1 \d\S* left 0s$", lines[-1]), lines[-1]
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    run(config, tmp_path / "b", progress=lambda: _Progress(stream=stream))
    text = stream.getvalue()
    assert "12/12" in text and "λK1=" in text and "λH1=" in text and "acc=" in text
