"""Resume: a run continued from any checkpoint ends bitwise where the uninterrupted run ends
(parameters, losses, history, tracker records), in-process and after SIGKILLs of a real
``python -m breakeven.cli run`` subprocess."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from breakeven import models
from breakeven.experiments import run
from breakeven.records import read_records, read_status
from breakeven.tracking import build_tracker
from breakeven.train import TrainConfig, train
from helpers import assert_same_state, run_config, toy, write_npz


def _dropout_bn(input_shape, num_classes, hidden: int = 12) -> nn.Module:
    """BatchNorm (running statistics) and dropout (global RNG): both must survive a resume."""
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(hidden, num_classes),
    )


TOY = {"n": 90, "n_test": 30}  # the data of the in-process runs


TRACK = {
    "covariance": {"every": 4, "num_batches": 3},
    "hessian": {"every": 6, "k": 2},
    "loss_change": {"every": 5},
}


def strip(records: list[dict]) -> list[dict]:
    """Records without their timings (the only field that may differ between runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def history(result) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


CASES = {
    # per epoch 9 steps; checkpoints every 4 land mid-epoch; lr decays; Nesterov momentum
    "mlp": dict(
        model="mlp",
        model_kwargs={"hidden": (16,)},
        batch_size=10,
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        epochs=3,
        lr_decay_epochs=(2,),
    ),
    # BatchNorm running statistics and dropout noise; evaluation every 5 steps
    "dropout_bn": dict(
        model="test_resume_dropout_bn", batch_size=8, lr=0.05, momentum=0.5, steps=25, eval_every=5
    ),
}


@pytest.fixture(autouse=True)
def dropout_bn_model(monkeypatch) -> None:
    """Register the test model for this module's tests only (the registry stays as it was)."""
    monkeypatch.setitem(models._REGISTRY, "test_resume_dropout_bn", (_dropout_bn, (1, 6, 6), 3))


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_from_every_checkpoint_is_bitwise_equal(case: str) -> None:
    cfg, ds = TrainConfig(**CASES[case]), toy(**TOY)
    full_tracker = build_tracker(TRACK)
    states: list[dict] = []
    full = train(cfg, full_tracker, dataset=ds, checkpoint_every=4, on_checkpoint=states.append)
    assert full.status == "finished" and len(states) == (full.steps - 1) // 4
    for state in states:
        s = state["step"]
        tracker = build_tracker(TRACK)
        resumed = train(cfg, tracker, dataset=ds, resume=state)
        assert_same_state(resumed.model, full.model, f"parameters differ, resumed at {s}")
        assert resumed.losses == full.losses and history(resumed) == history(full)
        before = [r for r in full_tracker.records_ if r["step"] < s]
        assert strip(before + tracker.records_) == strip(full_tracker.records_)


def test_checkpoint_state_is_a_copy_and_resume_is_checked() -> None:
    cfg, ds = TrainConfig(**CASES["mlp"]), toy(**TOY)
    states: list[dict] = []
    train(cfg, dataset=ds, checkpoint_every=9, on_checkpoint=states.append)
    assert [s["step"] for s in states] == [9, 18]
    w0, w1 = states[0]["model"]["net.0.weight"], states[1]["model"]["net.0.weight"]
    assert not torch.equal(w0, w1)  # each state is a snapshot, not a live reference
    with pytest.raises(ValueError, match="different config"):
        train(cfg.replace(lr=0.2), dataset=ds, resume=states[0])
    with pytest.raises(ValueError, match="on_checkpoint"):
        train(cfg, dataset=ds, checkpoint_every=3)


# ---------------------------------------------------------------- SIGKILL, real subprocess


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory) -> dict:
    """A tiny .npz dataset, its config, and one uninterrupted run to compare with."""
    root = tmp_path_factory.mktemp("kill")
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(1040, 16, 16), dtype=np.uint8)
    y = (x.reshape(len(x), -1).astype(np.float32) @ g.standard_normal((256, 4))).argmax(1)
    npz = root / "tiny.npz"
    write_npz(npz, x, y, 960)
    train = {
        "model_kwargs": {"hidden": [256, 256]},
        "lr": 0.05,
        "momentum": 0.9,
        "batch_size": 32,
        "epochs": 4,
        "eval_every": 20,
    }
    track = {"covariance": {"every": 10, "num_batches": 4}, "loss_change": {"every": 10}}
    config = run_config(
        root / "tiny.toml", npz, run={"checkpoint_every": 40}, train=train, track=track
    )
    ref = root / "reference"  # in this process: a subprocess would cost 5 s of imports
    assert run(config, ref).status == "finished"
    return {"root": root, "config": config, "ref": ref}


def cli(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "breakeven.cli",
        "run",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60, sig=signal.SIGKILL) -> None:
    """Send ``sig`` (SIGKILL) to ``proc`` as soon as ``ready()``; fail if it ended before."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before the kill point: "
                f"{proc.stderr.read().decode()[-2000:]}"
            )
        assert time.monotonic() - t0 < timeout, "the kill point never came"
        time.sleep(0.002)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_sigkill_at_several_points_then_rerun_gives_the_uninterrupted_run(
    kill_setup, tmp_path
) -> None:
    """One run directory, killed three times (before its first checkpoint, after one, after a
    later one with a half-written last line and a stale temporary checkpoint, as a kill during
    a write leaves them), then rerun to its end: the same records (no record lost or
    duplicated) and bitwise the same parameters as the uninterrupted run."""
    config, out = kill_setup["config"], tmp_path / "run"
    records, ckpt = out / "records.jsonl", out / "checkpoint.pt"
    lines = lambda: count_lines(records)  # noqa: E731

    kill_when(cli(config, out), lambda: lines() >= 3)  # before the first checkpoint (step 40)
    assert read_status(out) == "running" and not ckpt.exists()
    kill_when(cli(config, out), lambda: ckpt.exists() and lines() >= 16)  # after it
    assert read_status(out) == "running"
    first_ckpt = ckpt.stat().st_ino
    # after the later checkpoint (step 80) of a run resumed at step 40 (os.replace: new inode)
    kill_when(cli(config, out), lambda: ckpt.exists() and ckpt.stat().st_ino != first_ckpt)
    assert read_status(out) == "running"
    with open(records, "ab") as f:
        f.write(b'{"step": 999, "measure": "covar')
    (out / "checkpoint.pt.tmp").write_bytes(b"partial")
    assert all(r["step"] != 999 for r in read_records(out))  # never read back

    proc = cli(config, out)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert not (out / "checkpoint.pt.tmp").exists() and not ckpt.exists()
    assert read_status(out) == "finished"
    assert strip(read_records(out)) == strip(read_records(kill_setup["ref"]))
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(kill_setup["ref"] / "model.pt", weights_only=True)
    assert_same_state(a, b)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 120 and summary["resumed_from"] == 80


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_sigterm_marks_the_run_terminated_and_the_same_command_resumes_it(
    kill_setup, tmp_path
) -> None:
    """SIGTERM, what batch schedulers send, mid-run: exit code 143, one line on stderr (no
    traceback), status ``failed: terminated``; the same command then resumes to the
    uninterrupted run's records and parameters."""
    config, out = kill_setup["config"], tmp_path / "run"
    proc = cli(config, out)
    kill_when(proc, lambda: (out / "checkpoint.pt").exists(), sig=signal.SIGTERM)
    err = proc.stderr.read().decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "error: terminated (SIGTERM); run the same command again to resume" in err
    assert "Traceback" not in err
    assert read_status(out) == "failed: terminated"

    proc = cli(config, out)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert read_status(out) == "finished"
    assert json.loads((out / "summary.json").read_text())["resumed_from"] in (40, 80)
    assert strip(read_records(out)) == strip(read_records(kill_setup["ref"]))
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(kill_setup["ref"] / "model.pt", weights_only=True)
    assert_same_state(a, b)
