"""Data-parallel measurement: under torchrun (2 CPU processes, gloo) each rank holds half of
the data, and every rank gets the eigenvalues, Tr(H), s^2 and K of one process on all of it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import breakeven as be


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_two_ranks_equal_one_process(tmp_path):
    script = Path(__file__).parent / "distributed_script.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(script),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    emitted = [r.pop("emitted_ranks") for r in ranks]
    assert ranks[0] == ranks[1]  # every rank gets the same numbers, bitwise
    for name in ("mlp_ce", "cnn_bn"):
        r = ranks[0][name]
        assert r["mine"] == pytest.approx(r["full"], rel=1e-9)
        assert r["trace"][1] == pytest.approx(r["trace"][0], rel=1e-9)
        assert r["s2"][1] == pytest.approx(r["s2"][0], rel=1e-9)
        assert r["K_mine"] == pytest.approx(r["K_full"], rel=1e-9, abs=1e-15)
    assert "same number of batches of the same size M on every rank" in ranks[0]["uneven"]
    # a user's data-parallel loop with Tracker(distributed=True): every rank records the
    # single-process values, and only rank 0 emits records
    single, loop = ranks[0]["loop_single"], ranks[0]["loop_ranks"]
    assert [r[:2] for r in loop] == [r[:2] for r in single]
    for (step, measure, got), (_, _, want) in zip(loop, single, strict=True):
        if measure == "covariance":  # each rank draws its own batches: a different sample
            assert got["L"] == want["L"] == 4 and got["lambda_K_1"] > 0
            continue
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-8, abs=1e-12), (step, measure, key)
    assert emitted == [len(loop), 0]


def test_distributed_needs_a_process_group():
    from cases import make_case

    c = make_case("mlp_ce")
    with pytest.raises(ValueError, match=r"distributed=True needs torch\.distributed initialised"):
        be.hessian_eigenvalues(c.model, c.loss_fn, c.data, distributed=True)
    with pytest.raises(ValueError, match=r"distributed=True needs torch\.distributed initialised"):
        be.gradient_covariance(c.model, c.loss_fn, [c.data, c.data], distributed=True)


def _config(tmp_path, epochs):
    from helpers import run_config, write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz", n=200, n_train=160)
    train = {"model_kwargs": {"hidden": [16]}, "batch_size": 16, "epochs": epochs, "eval_every": 10}
    track = {
        "covariance": {"every": 5, "num_batches": 4},
        "hessian": {"every": 10, "k": 1},
        "stability": {"every": 10},
        "loss_change": {"every": 5},
    }
    path = tmp_path / f"tiny{epochs}.toml"
    return run_config(path, npz, run={"checkpoint_every": 10}, train=train, track=track)


def _torchrun(config, out):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "breakeven.cli",
        "run",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]


def _values(path):
    from breakeven.records import read_records

    return [(r["step"], r["measure"], r["values"]) for r in read_records(path)]


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_breakeven_run_under_torchrun_equals_one_process(tmp_path):
    from breakeven.experiments import run

    config = _config(tmp_path, epochs=2)
    run(config, tmp_path / "one")
    done = subprocess.run(
        _torchrun(config, tmp_path / "two"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("status") == 1  # rank 0 alone reports
    one, two = _values(tmp_path / "one"), _values(tmp_path / "two")
    assert [r[:2] for r in one] == [r[:2] for r in two]
    for (step, measure, want), (_, _, got) in zip(one, two, strict=True):
        if measure == "covariance":  # each rank draws its own batches: another sample
            continue
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, measure, key)


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_a_rank_killed_under_torchrun_resumes_on_all(tmp_path):
    import os
    import signal
    import time

    config = _config(tmp_path, epochs=12)  # 120 steps, a checkpoint every 10
    whole = subprocess.run(
        _torchrun(config, tmp_path / "whole"), capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    agent = subprocess.Popen(
        _torchrun(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    assert len(children) == 2 and (out / "checkpoint.pt").exists()
    os.kill(int(children[-1]), signal.SIGKILL)  # one rank dies mid-run
    assert agent.wait(timeout=120) != 0
    assert (out / "status").read_text().strip() != "finished"
    again = subprocess.run(_torchrun(config, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from the checkpoint at step" in again.stdout
    assert _values(out) == _values(tmp_path / "whole")
