"""Data-parallel measurement: under torchrun (2 CPU processes, gloo) each rank holds half of
the data, and every rank gets the eigenvalues, Tr(H), s^2 and K of one process on all of it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import breakeven as be


def test_two_ranks_equal_one_process(tmp_path):
    script = Path(__file__).parent / "distributed_script.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", str(script), str(tmp_path)]  # fmt: skip
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
