"""The ``breakeven`` command and config handling: presets, TOML and ``--set`` parsing, errors
that name the key before any training, the summary table and the progress display."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
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
from helpers import run_config


@pytest.fixture
def config(tmp_path: Path, tiny_npz: Path) -> Path:
    """A tiny run config on a tiny .npz dataset (uint8 8x8 images, 3 classes)."""
    return run_config(tmp_path / "tiny.toml", tiny_npz)


def test_presets_are_listed_and_valid(capsys) -> None:
    assert "mlp_fashion" in list_presets()
    assert main(["presets"]) == 0
    assert "mlp_fashion" in capsys.readouterr().out
    for name in list_presets():
        rc = resolve_config(load_config(name))
        build_tracker(rc.track)  # every option of the preset is accepted
    rc = resolve_config(load_config("mlp_fashion"))
    assert (rc.train.model, rc.train.dataset, rc.train.batch_size, rc.train.lr) == (
        "mlp",
        "fashion_mnist",
        64,
        0.1,
    )
    assert rc.track["covariance"] == {"every": 50, "num_batches": 25, "spectrum": True}
    assert rc.track["hessian"]["every"] == 500 and rc.train.probe_fraction == 0.05
    assert rc.train.epochs == 200  # the paper's length; the quick scale is 2 epochs
    quick = resolve_config(apply_scale(load_config("mlp_fashion"), "quick"))
    assert quick.train.epochs == 2 and quick.track["covariance"]["every"] == 25


def test_set_values_are_read_as_toml() -> None:
    cfg = apply_overrides(
        {"train": {"lr": 0.1}},
        [
            "lr=0.05",
            "train.lr_decay_epochs=[1, 2]",
            "model=mlp",
            "augment=true",
            "track.hessian.every=epoch",
            "run.checkpoint_every=7",
            'name="x"',
        ],
    )
    assert cfg["train"] == {"lr": 0.05, "lr_decay_epochs": [1, 2], "model": "mlp", "augment": True}
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


def _breakeven(*args: str) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess."""
    cmd = [sys.executable, "-m", "breakeven.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_verdict_prints_one_maximum_the_break_even_crossing_and_how_sure(tmp_path) -> None:
    from test_analysis import LRS, peaked_sweep

    values = {(lr, s): (0.05 / lr + s, 5.0 / lr + s) for lr in LRS for s in (0, 1)}
    trace = {(lr, s): (100.0 / lr, 0.5) for lr in LRS for s in (0, 1)}
    root = peaked_sweep(tmp_path, LRS, [0, 1], values, trace=trace)
    stab = {0.1: [2.46, 1.5, 0.8, 0.9, 1.2], 0.01: [0.5, 0.9, 1.2, 0.8, 1.5]}
    for lr in LRS:
        for s in (0, 1):
            path = root / "runs" / f"lr={lr}_seed={s}"
            lines = (path / "records.jsonl").read_text().splitlines()
            for i, line in enumerate(lines):
                rec = json.loads(line)
                if rec["measure"] == "covariance" and rec["step"] == 0:
                    rec["values"]["lambda_K_1"] = 0.5606  # the largest, at initialisation
                    lines[i] = json.dumps(rec)
            for i, step in enumerate((0, 10, 20, 30, 40) if (lr, s) != (0.01, 1) else ()):
                rec = {"step": step, "epoch": step / 20, "measure": "stability"}
                lines.append(json.dumps({**rec, "values": {"stability": stab[lr][i]}}))
            (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    done = _breakeven("verdict", str(root))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    points, verdicts = out.split("Conjecture verdicts")
    header = points.splitlines()[1].split()
    for column in (
        "unstable_at_init",
        "first_stable_step",
        "break_even_after_step",
        "break_even_step",
        "max_lambda_K_1_after_0",
        "max_lambda_K_1_after_0_step",
        "max_lambda_H_1_after_0",
    ):
        assert column in header
    rows = {line.split()[0]: dict(zip(header, line.split())) for line in points.splitlines()[2:6]}
    assert rows["lr=0.1_seed=0"]["unstable_at_init"] == "True"
    assert rows["lr=0.1_seed=0"]["first_stable_step"] == "20"
    assert rows["lr=0.1_seed=0"]["break_even_after_step"] == "30"
    assert rows["lr=0.1_seed=0"]["break_even_step"] == "40"
    assert rows["lr=0.01_seed=0"]["unstable_at_init"] == "False"
    assert rows["lr=0.01_seed=0"]["break_even_after_step"] == "10"
    assert rows["lr=0.01_seed=0"]["break_even_step"] == "20"
    assert rows["lr=0.01_seed=1"]["unstable_at_init"] == "-"  # stability not tracked
    assert rows["lr=0.01_seed=1"]["break_even_step"] == "-"
    assert rows["lr=0.1_seed=0"]["max_lambda_K_1_after_0"] == "0.5"  # 0.5606 is at step 0
    assert "0.5606" not in out
    assert "first crossing of 1 from below" in points
    assert "ties_within_noise" in verdicts and "at_end" in verdicts
    trace_row = next(line for line in verdicts.splitlines() if "Tr(H)" in line)
    assert "supported" in trace_row
    assert (
        "lr=0.01: 5.5 ± 0.7071 (n=2); lr=0.1: 1 ± 0.7071 (n=2)" in verdicts
    )  # lambda_K^1 over steps >= 1
    assert "maxima over steps >= 1" in verdicts


def test_show_prints_the_maxima_after_step_0(tmp_path) -> None:
    from test_analysis import peaked_run

    peaked_run(tmp_path / "a", 0.1, 0, peak_k=4.0, peak_h=8.0)
    path = tmp_path / "a"
    lines = (path / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["values"]["lambda_K_1"] = 100.0  # the largest value, at step 0
    lines[0] = json.dumps(rec)
    (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    done = _breakeven("show", str(path))
    assert done.returncode == 0, done.stderr
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in done.stdout.splitlines())
    assert rows["max lambda_K^1 after step 0"] == "4 (step 20)"
    assert rows["max lambda_H^1 after step 0"] == "8 (step 30)"
