"""Sweeps: the plan (grid x seeds, comparable K), the local and Ray backends, resuming, and a
diverged run reported but never fatal; ``breakeven sweep`` and ``breakeven verdict``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from breakeven.analysis import read_runs, verdicts
from breakeven.cli import main
from breakeven.experiments import SweepBusyError, parse_grid, plan_sweep, sweep
from breakeven.records import read_records
from breakeven.train import ConfigError
from cases import write_tiny_npz

TOML = """
name = "tiny"
[sweep]
grid = {{ "train.lr" = [0.05, 0.2] }}
seeds = 2

[run]
checkpoint_every = 4

[train]
model = "mlp"
model_kwargs = {{ hidden = [8] }}
dataset = "npz"
dataset_kwargs = {{ root = "{npz}" }}
lr = 0.1
batch_size = 10
epochs = 2
eval_every = 3
num_threads = 1

[track]
covariance = {{ every = 2, num_batches = 3 }}
hessian = {{ every = 4, k = 1 }}

[scale.quick]
train.epochs = 1
track.covariance.every = 3
"""


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    path = tmp_path / "tiny.toml"
    path.write_text(TOML.format(npz=npz))
    return path


def test_plan_is_the_grid_times_the_seeds(preset):
    plan = plan_sweep(preset)
    assert [r.name for r in plan.runs] == [
        "lr=0.05_seed=0",
        "lr=0.05_seed=1",
        "lr=0.2_seed=0",
        "lr=0.2_seed=1",
    ]
    r = plan.runs[3]
    assert r.params == {"train.lr": 0.2} and r.seed == 1
    assert r.config["train"]["lr"] == 0.2
    assert r.config["train"]["init_seed"] == r.config["train"]["data_seed"] == 1
    assert "sweep" not in r.config and "scale" not in r.config
    assert plan.scale == "full" and r.config["train"]["epochs"] == 2
    quick = plan_sweep(preset, scale="quick", seeds=[3], overrides=["train.batch_size=20"])
    c = quick.runs[0].config
    assert c["train"]["epochs"] == 1 and c["track"]["covariance"]["every"] == 3
    assert c["train"]["batch_size"] == 20 and quick.runs[0].name == "lr=0.05_seed=3"


def test_a_batch_size_sweep_measures_k_at_m_128(preset):
    plan = plan_sweep(preset, grid=parse_grid(["batch_size=5,20"]), seeds=1)
    assert [r.name for r in plan.runs] == ["batch_size=5_seed=0", "batch_size=20_seed=0"]
    for r in plan.runs:
        assert r.config["track"]["covariance"]["batch_size"] == 128
        assert "lr" not in r.params  # the grid replaces the preset's
    assert any("M = 128" in n for n in plan.notes)
    both = plan_sweep(preset, grid=parse_grid(["lr=0.1,0.2", "train.batch_size=5,20"]), seeds=1)
    assert len(both.runs) == 4 and both.runs[1].name == "lr=0.1_batch_size=20_seed=0"


def test_workers_share_the_cores(preset, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    text = preset.read_text().replace("num_threads = 1\n", "")
    preset.write_text(text)
    plan = plan_sweep(preset, workers=4)
    assert plan.threads == 2  # set in each worker, not part of the runs' configs
    assert all("num_threads" not in r.config["train"] for r in plan.runs)
    assert plan_sweep(preset, workers=1).threads is None


def test_a_resume_with_other_workers_is_the_same_sweep(preset, tmp_path):
    text = preset.read_text().replace("num_threads = 1\n", "")
    preset.write_text(text)
    out = tmp_path / "s"
    first = sweep(preset, scale="quick", seeds=1, workers=2, out=out)
    again = sweep(preset, scale="quick", seeds=1, workers=1, out=out)
    assert [s for _, s, _ in first.runs] == [s for _, s, _ in again.runs] == ["finished"] * 2


def test_the_grid_is_never_overridden_and_short_names_are_unique(preset):
    plan = plan_sweep(
        preset, grid=parse_grid(["batch_size=5,20", "track.covariance.num_batches=2,3"]), seeds=1
    )
    assert {r.config["track"]["covariance"]["num_batches"] for r in plan.runs} == {2, 3}
    assert all(r.config["track"]["covariance"]["batch_size"] == 128 for r in plan.runs)
    with pytest.raises(ConfigError, match="end in the same name"):
        plan_sweep(preset, grid=parse_grid(["batch_size=5,20", "track.covariance.batch_size=4,8"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": {"train.lr": []}}, "must list distinct values"),
        ({"grid": {"train.lr": [0.1, 0.1]}}, "must list distinct values"),
        ({"grid": {"lrr": [0.1]}}, "grid key 'lrr' is unknown"),
        ({"grid": {"train.lrr": [0.1]}}, r"unknown config key\(s\) \['lrr'\]"),
        ({"grid": {"train.lr": [-1.0]}}, "lr=-1.0 is invalid"),
        ({"seeds": 0}, "seeds=0 is invalid"),
        ({"seeds": [-1]}, "seeds=.-1. is invalid"),
        ({"scale": "huge"}, r"scale='huge' is invalid: this config offers \['full', 'quick'\]"),
        ({"workers": 0}, "workers=0 is invalid"),
        ({"overrides": ["track.hessian.k=0"]}, "k must be an integer >= 1"),
    ],
)
def test_bad_sweeps_are_refused_before_training(preset, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan_sweep(preset, **kwargs)
    with pytest.raises(ValueError, match="must be key=v1,v2"):
        parse_grid(["lr"])


def test_local_sweep_resumes_and_reports_a_diverged_run(preset, tmp_path):
    out = tmp_path / "sweep"
    grid = {"train.lr": [0.05, 1e38]}  # 1e38 diverges (a linear model: no dead ReLUs)
    ov = ["train.model_kwargs.hidden=[]"]
    seen = []
    outcome = sweep(
        preset, grid=grid, seeds=1, overrides=ov, out=out, on_done=lambda *a: seen.append(a[:2])
    )
    assert [(n, s) for n, s, _ in outcome.runs] == [
        ("lr=0.05_seed=0", "finished"),
        ("lr=1e+38_seed=0", "diverged"),
    ]
    assert seen == [(n, s) for n, s, _ in outcome.runs]
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["grid"] == {"train.lr": [0.05, 1e38]} and len(spec["runs"]) == 2
    runs = read_runs(out)
    assert list(runs.table["status"]) == ["finished", "diverged"]
    assert list(runs.table["lr"]) == [0.05, 1e38]
    # a rerun skips the ended runs: nothing is written again
    first = out / "runs" / "lr=0.05_seed=0" / "records.jsonl"
    before = (first.stat().st_mtime_ns, read_records(first.parent))
    again = sweep(preset, grid=grid, seeds=1, overrides=ov, out=out)
    assert [s for _, s, _ in again.runs] == ["finished", "diverged"]
    assert (first.stat().st_mtime_ns, read_records(first.parent)) == before
    # another plan in the same directory is refused
    with pytest.raises(ConfigError, match="holds another sweep"):
        sweep(preset, grid={"train.lr": [0.1]}, seeds=1, overrides=ov, out=out)


def test_an_interrupted_sweep_runs_only_what_is_missing(preset, tmp_path):
    out = tmp_path / "sweep"
    sweep(preset, seeds=1, out=out, scale="quick")
    done = out / "runs" / "lr=0.05_seed=0"
    stamp = (done / "records.jsonl").stat().st_mtime_ns
    missing = out / "runs" / "lr=0.2_seed=0"
    expected = read_records(missing)
    for p in missing.iterdir():
        p.unlink()
    missing.rmdir()
    outcome = sweep(preset, seeds=1, out=out, scale="quick")
    assert [s for _, s, _ in outcome.runs] == ["finished", "finished"]
    assert (done / "records.jsonl").stat().st_mtime_ns == stamp
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(missing)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in expected]


def test_process_pool_equals_one_process(preset, tmp_path):
    one = sweep(preset, scale="quick", out=tmp_path / "one")
    two = sweep(preset, scale="quick", workers=2, out=tmp_path / "two")
    assert [s for _, s, _ in two.runs] == ["finished"] * 4
    for name, _, _ in one.runs:
        a = read_records(tmp_path / "one" / "runs" / name)
        b = read_records(tmp_path / "two" / "runs" / name)
        assert [r["values"] for r in a] == [r["values"] for r in b]


def test_ray_backend_on_a_local_instance(preset, tmp_path):
    pytest.importorskip("ray")
    local = sweep(preset, scale="quick", seeds=1, out=tmp_path / "local")
    outcome = sweep(preset, scale="quick", seeds=1, workers=2, backend="ray", out=tmp_path / "ray")
    assert [s for _, s, _ in outcome.runs] == ["finished", "finished"]
    for name, _, _ in local.runs:
        a = read_records(tmp_path / "local" / "runs" / name)
        b = read_records(tmp_path / "ray" / "runs" / name)
        assert [r["values"] for r in a] == [r["values"] for r in b]


def test_cli_sweep_then_verdict(preset, tmp_path, capsys):
    out = tmp_path / "s"
    code = main(
        ["sweep", str(preset), "--scale", "quick", "--grid", "lr=0.05,0.2", "--out", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "4 finished" in text and "Conjecture verdicts" in text and "rule:" in text
    assert main(["verdict", str(out)]) == 0
    text = capsys.readouterr().out
    table = verdicts(read_runs(out))
    for verdict in table["verdict"]:
        assert verdict in text
    assert "Break-even points" in text and "lr=0.2_seed=1" in text
    assert main(["sweep", str(preset), "--grid", "lr=", "--out", str(out)]) == 2
    assert "must be key=v1,v2" in capsys.readouterr().err
    assert main(["sweep", str(preset), "--address", "x:1", "--out", str(tmp_path / "z")]) == 2


# ------------------------------------------- one sweep per directory, dead workers, dead parent


@pytest.mark.parametrize(("backend", "workers"), [("local", 1), ("local", 2), ("ray", 2)])
def test_a_sweep_stops_at_once_when_another_holds_its_directory(
    preset, tmp_path, monkeypatch, backend, workers
):
    fcntl = pytest.importorskip("fcntl")
    sweep_module = sys.modules["breakeven.experiments.sweep"]  # the name sweep is the function

    def no_worker(*args):
        raise AssertionError("a worker was started")

    for fn in ("run_one", "_run_pool", "_run_ray"):
        monkeypatch.setattr(sweep_module, fn, no_worker)
    out = tmp_path / "s"
    out.mkdir()
    with open(out / "sweep.lock", "a+b") as held:  # another sweep's lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SweepBusyError, match=r"another sweep is running in .*sweep\.lock"):
            sweep(preset, seeds=1, workers=workers, backend=backend, out=out)
    assert os.listdir(out) == ["sweep.lock"]  # no sweep.json, no run directory


def test_a_sweep_releases_its_directory_when_it_ends(preset, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "s"
    sweep(preset, scale="quick", seeds=1, out=out)
    with pytest.raises(ConfigError, match="holds another sweep"):  # raised while holding it
        sweep(preset, scale="quick", seeds=[5], out=out)
    with open(out / "sweep.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free after both
