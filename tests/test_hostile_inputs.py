"""What a hostile review of this round's features found, each refused clearly (or measured
right) before it can write a file or a wrong number."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import breakeven as be
from breakeven.cli import main
from breakeven.errors import ConfigError
from breakeven.experiments import run
from breakeven.records import read_records
from breakeven.tracking.sinks import parse_log
from helpers import run_config, write_run, write_sweep
from test_tracking import data, loop, make


def tracker(**kw):
    x, y = data()
    return be.Tracker(probe=(x[:40], y[:40]), train_data=(x, y), batch_size=16, **kw)


# ---------------------------------------------------------------- the Tracker's own loop


def test_steps_that_do_not_increase_are_refused():
    """The README loop's ``enumerate(loader)`` nested in an epoch loop restarts at 0: the
    records would mix epochs silently."""
    tr = tracker(measures=["param_norm"], schedule=1, lr=0.05)
    loop(tr, steps=3)
    with pytest.raises(ValueError, match=r"step=0 after step=2: the steps must increase"):
        loop(tr, steps=3)


def test_a_closed_tracker_records_nothing_more(tmp_path):
    with tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=tmp_path / "r") as tr:
        loop(tr, steps=3)
    with pytest.raises(RuntimeError, match=r"has ended \(finished\)"):
        loop(tr, steps=3)
    assert len(tr.records_) == len(read_records(tmp_path / "r")) == 3


@pytest.mark.parametrize("where", ["sweep", "runs", "inside_run"])
def test_out_dir_in_a_sweep_or_inside_a_run_is_refused_before_any_file(tmp_path, where):
    sweep = tmp_path / "sweep"
    write_sweep(sweep, [0.1], [0], lambda p, lr, s: write_run(p, [], config={"lr": lr}))
    target = {
        "sweep": sweep,
        "runs": sweep / "runs",
        "inside_run": sweep / "runs" / "lr=0.1_seed=0" / "sub",
    }[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(be.OutputDirError, match=r"sweep directory|lies inside a"):
        tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=target)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_project_folder_with_its_own_config_json_is_not_a_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a user's project, not a run
    tr = tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=tmp_path / "runs" / "a")
    loop(tr, steps=2)
    tr.close()
    assert len(read_records(tmp_path / "runs" / "a")) == 2


# ---------------------------------------------------------------- Adam


def test_the_adam_threshold_is_the_optimizer_s_learning_rate():
    """A Tracker ``lr`` that is not the optimizer's (or a scheduler's change of it) must not
    move 38/eta: the measure reads eta where it reads P, from the optimizer."""
    model, x, y = make()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tr = be.Tracker(
        ["preconditioned_sharpness"],
        1,
        optimizer=opt,
        probe=(x[:40], y[:40]),
        train_data=(x, y),
        lr=0.1,
        batch_size=16,
    )
    for step in range(3):
        xb, yb = x[16 * step : 16 * step + 16], y[16 * step : 16 * step + 16]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        tr.before_step(step, model, (xb, yb), loss)
        opt.step()
        tr.after_step(step, model)
    thresholds = [r["values"]["precond_eos_threshold"] for r in tr.records_]
    assert thresholds == pytest.approx([38 / 0.01] * 3)


def test_a_run_tracking_adam_measures_under_sgd_is_refused_before_any_file(tmp_path, tiny_npz):
    track = {"preconditioned_sharpness": {"every": 3}}
    config = run_config(tmp_path / "c.toml", tiny_npz, track=track)
    with pytest.raises(ConfigError, match=r"track.preconditioned_sharpness: .*optimizer"):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- live logging options


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"tensorboard": {"log_dir": 5}}, r"log.tensorboard.log_dir=5 is invalid"),
        ({"mlflow": {"experiment": 3}}, r"log.mlflow.experiment=3 is invalid"),
        ({"mlflow": {"tracking_uri": ""}}, r"log.mlflow.tracking_uri='' is invalid"),
        ({"wandb": {"mode": "bogus"}}, r"must be one of \['online', 'offline', 'disabled'\]"),
        ({"wandb": {"tags": "abc"}}, r"log.wandb.tags='abc' is invalid: must be a list"),
    ],
)
def test_sink_option_values_are_checked(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_log(table)


# ---------------------------------------------------------------- building blocks


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_covariance_from_gradients_refuses_a_bad_batch_size(batch_size):
    G = torch.randn(5, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        be.covariance_from_gradients(G, batch_size=batch_size)


@pytest.mark.parametrize("G", [torch.ones(4, 3, dtype=torch.long), torch.randn(4)])
def test_covariance_from_gradients_refuses_what_is_not_a_real_matrix(G):
    with pytest.raises(ValueError, match="real floating-point"):
        be.covariance_from_gradients(G)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan])
def test_a_density_width_must_be_finite_and_positive(sigma):
    res = be.slq(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)), num_probes=1)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        res.density(sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        res.grid(sigma=sigma)


def test_train_accuracy_indices():
    assert be.TrainAccuracy(indices=np.arange(3)).indices == (0, 1, 2)  # numpy integers
    with pytest.raises(ValueError, match="indices must be distinct"):
        be.TrainAccuracy(indices=[1, 1])
    tr = tracker(measures=[be.TrainAccuracy(indices=[0, 999])], schedule=1, lr=0.05)
    with pytest.raises(ValueError, match="indices name example 999; there are 256"):
        loop(tr, steps=1)


# ---------------------------------------------------------------- the command line


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    write_sweep(root, [0.1, 0.01], [0], lambda p, lr, s: write_run(p, [], config={"lr": lr}))
    return root


@pytest.mark.parametrize("bad", ["1.5", "-1", "nan", "0", ",", ""])
def test_accuracy_thresholds_must_lie_in_zero_one(sweep_dir, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(["verdict", str(sweep_dir), "--thresholds", bad])
    assert e.value.code == 2 and "is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value"), [("--support", "1.5"), ("--min-pairs", "0")])
def test_a_bad_verdict_rule_exits_2_before_printing(sweep_dir, capsys, option, value):
    assert main(["verdict", str(sweep_dir), option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ")
