"""A user's own loop keeps its records: ``Tracker(out_dir=...)`` writes the run store that
``breakeven run`` writes (read by the real command line), resumes a loop killed with
SIGKILL without losing or doubling a record, and refuses a bad ``out_dir`` before writing;
measures by name; the records' epoch; ``load_run(tracker)``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import breakeven as be
from breakeven.experiments.runner import resolve_config
from breakeven.records import read_records, read_status
from test_tracking import data, loop

SCRIPT = Path(__file__).with_name("own_loop_script.py")
COLUMNS = ["run", "step", "epoch", "measure", "key", "value", "matvecs"]


def _loop_process(out, ckpt, kill_at=-1, save_state=True, cwd=None):
    """Run tests/own_loop_script.py (12 steps) in a fresh interpreter."""
    args = [sys.executable, str(SCRIPT), str(out), str(ckpt), "12", str(kill_at)]
    return subprocess.run(
        [*args, str(int(save_state))], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "breakeven.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted loop's run directory, written from an empty working directory."""
    root = tmp_path_factory.mktemp("own_loop")
    (root / "cwd").mkdir()
    done = _loop_process(root / "run", root / "user.pt", cwd=root / "cwd")
    assert done.returncode == 0, done.stderr
    return root


def test_own_loop_writes_the_run_store_of_breakeven_run(full):
    run = full / "run"
    # nothing outside out_dir (the loop's own checkpoint is the user's file)
    assert sorted(p.name for p in full.iterdir()) == ["cwd", "run", "user.pt"]
    assert list((full / "cwd").iterdir()) == []
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "lock",
        "model.pt",
        "records.jsonl",
        "status",
        "summary.json",
    ]
    assert read_status(run) == "finished"
    config = json.loads((run / "config.json").read_text())
    assert config["train"] == {
        "model": "mlp",
        "lr": 0.1,
        "momentum": 0.0,
        "batch_size": 16,
        "n_train": 96,
        "steps_per_epoch": 6,
        "seed": 0,
    }
    assert config["track"]["hessian"]["schedule"] == "every(3)"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 12
    state = torch.load(run / "model.pt", weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    records = read_records(run)
    steps = {m: [r["step"] for r in records if r["measure"] == m] for m in config["track"]}
    assert steps == {
        "covariance": [0, 3, 6, 9],
        "hessian": [0, 3, 6, 9],
        "loss_change": [0, 3, 6, 9],
        "lr": [0, 6],
    }
    assert all(r["epoch"] == r["step"] / 6 for r in records)

    show = _cli("show", run)
    assert show.returncode == 0, show.stderr
    assert "finished" in show.stdout and "max lambda_K^1 after step 0" in show.stdout
    verdict = _cli("verdict", run)
    assert verdict.returncode == 0, verdict.stderr
    assert "max_lambda_H_1_after_0" in verdict.stdout
    done = _cli("export", run, "--to", "csv", "--out", full / "cwd" / "r.csv")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).stat().st_size > 0
    frame = be.load_run(run)
    assert set(frame["measure"]) == {"covariance", "hessian", "loss_change", "lr"}


@pytest.mark.slow  # two fresh interpreters that import matplotlib
def test_own_loop_run_is_plotted_and_reported_by_the_command_line(full, tmp_path):
    for args in (
        ("plot", "trajectories", full / "run", "--out", tmp_path / "t.png"),
        ("report", full / "run", "--out", tmp_path / "r.html"),
    ):
        done = _cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert Path(done.stdout.strip()).stat().st_size > 0


@pytest.mark.slow  # SIGKILL, four fresh interpreters
@pytest.mark.parametrize("save_state", [True, False])
def test_a_loop_killed_with_sigkill_resumes_without_lost_or_doubled_records(
    full, tmp_path, save_state
):
    out, ckpt = tmp_path / "run", tmp_path / "user.pt"
    killed = _loop_process(out, ckpt, kill_at=10, save_state=save_state)
    assert killed.returncode == -signal.SIGKILL
    assert read_status(out) == "running"
    assert max(r["step"] for r in read_records(out)) == 9  # past the loop's checkpoint (8)
    resumed = _loop_process(out, ckpt, save_state=save_state)
    assert resumed.returncode == 0, resumed.stderr
    assert read_status(out) == "finished"
    a = be.load_run(full / "run").assign(run="r")
    b = be.load_run(out).assign(run="r")
    keys = ["step", "measure", "key"]
    assert not b.duplicated(keys).any()
    pd_equal = a[keys].reset_index(drop=True).equals(b[keys].reset_index(drop=True))
    assert pd_equal  # the same records, in the same order
    if save_state:  # the tracker's state saved with the loop's: bitwise the same values
        assert a[COLUMNS].equals(b[COLUMNS])


def _tracker(out_dir=None, **kw):
    x, y = data()
    kw = {
        "loss_fn": nn.CrossEntropyLoss(),
        "probe": (x[:40], y[:40]),
        "train_data": (x, y),
        "lr": 0.05,
        "batch_size": 16,
        **kw,
    }
    return be.Tracker(
        ["param_norm", ("loss_change", be.every(2))], be.every(3), out_dir=out_dir, **kw
    )


def test_load_run_of_a_tracker_equals_load_run_of_its_directory(tmp_path):
    with _tracker(tmp_path / "run") as tracker:
        loop(tracker, steps=7)
        assert be.load_run(tracker).equals(be.load_run(tmp_path / "run"))
    assert be.load_run(tracker).equals(be.load_run(tmp_path / "run"))
    plain = _tracker()
    loop(plain, steps=7)
    frame = be.load_run(plain)
    assert set(frame["run"]) == {"tracker"} and len(frame) == len(be.load_run(tracker))
    both = be.load_run([tracker, tmp_path / "run"])
    assert len(both) == 2 * len(frame)


def test_an_exception_marks_the_run_failed_and_a_new_tracker_resumes_it(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with _tracker(out) as tracker:
            loop(tracker, steps=7)
            raise RuntimeError("boom")
    assert read_status(out) == "failed: RuntimeError: boom"
    before = read_records(out)
    assert [r["step"] for r in before if r["measure"] == "param_norm"] == [0, 3, 6]
    resumed = _tracker(out)
    assert resumed.records_ == before  # continues the records
    assert resumed.summary()["param_norm"]["records"] == 3
    model, x, y = loop(None, steps=0), *data()
    # the loop resumes from its step 4: the records of steps >= 4 are replayed, not doubled
    with resumed:
        for step in range(4, 9):
            xb, yb = x[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            resumed.before_step(step, model, (xb, yb), loss)
            resumed.after_step(step, model)
    records = read_records(out)
    assert [(r["step"], r["measure"]) for r in records] == [
        (0, "param_norm"),
        (0, "loss_change"),
        (2, "loss_change"),
        (3, "param_norm"),
        (4, "loss_change"),
        (6, "param_norm"),
        (6, "loss_change"),
        (8, "loss_change"),
    ]
    assert records == resumed.records_ and read_status(out) == "finished"
    assert json.loads((out / "summary.json").read_text())["steps"] == 9


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_bad_out_dir_is_refused_before_anything_is_written(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(be.OutputDirError, match="is a file, not a directory"):
        _tracker(a_file)
    assert a_file.read_text() == "mine"

    other = tmp_path / "other"
    with _tracker(other) as tracker:
        loop(tracker, steps=4)
    before = _files(other)
    with pytest.raises(be.ConfigMismatchError, match=r"train\.lr"):
        _tracker(other, lr=0.1)
    with pytest.raises(be.RunStoreError, match="has ended"):
        _tracker(other)
    assert _files(other) == before

    config = resolve_config({"train": {"lr": 0.1}}).to_dict()
    run_dir = tmp_path / "cli"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(be.ConfigMismatchError, match="differing keys"):
        _tracker(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "lock"]

    fresh = tmp_path / "fresh"
    with pytest.raises(TypeError, match=r"cannot be written to config\.json"):
        _tracker(fresh, config={"opt": object()})
    with pytest.raises(ValueError, match=r"config gives \['lr'\]"):
        _tracker(fresh, config={"lr": 1.0})
    assert not fresh.exists()


@pytest.mark.parametrize("name", sorted(be.MEASURES))
def test_each_registered_name_is_a_measure(name):
    tracker = be.Tracker([name, ("lr", 5)] if name != "lr" else [name])
    m, schedule = tracker.measures[0]
    assert type(m) is be.MEASURES[name] and m.name == name and repr(schedule) == "every(100)"


def test_every_registered_name_records_in_a_loop():
    x, y = data()
    tracker = be.Tracker(
        [(n, be.at([2])) for n in sorted(be.MEASURES)],
        probe=(x[:40], y[:40]),
        train_data=(x, y),
        val_data=(x[200:], y[200:]),
        lr=0.05,
        batch_size=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Lanczos on a tiny model
        loop(tracker, steps=3, adam=True)  # Adam: the preconditioned measures read its state
    assert sorted(r["measure"] for r in tracker.records_) == sorted(be.MEASURES)


def test_what_is_not_a_measure_says_what_to_pass():
    with pytest.raises(ValueError, match=r"unknown measure 'covarianc': pass a registered name"):
        be.Tracker(["covarianc"])
    with pytest.raises(TypeError, match=r"is a class: pass an instance, GradientCovariance"):
        be.Tracker([be.GradientCovariance])
    with pytest.raises(TypeError, match=r"not a measure: 3; pass a Measure instance"):
        be.Tracker([3])


@pytest.mark.parametrize(
    "n, batch_size, drop_last, expected",
    [(256, 16, False, 16), (250, 16, False, 16), (250, 16, True, 15), (15, 16, False, 1)],
)
def test_steps_per_epoch_is_derived_from_the_data_and_batch_size(
    n, batch_size, drop_last, expected
):
    x, y = data()
    kw = {"batch_size": batch_size, "drop_last": drop_last, "probe": (x, y), "lr": 0.1}
    by_data = be.Tracker([("lr", 1)], train_data=(x[:n], y[:n]), **kw)
    by_n = be.Tracker([("lr", 1)], train_data=(x, y), n_train=n, **kw)
    for tracker in (by_data, by_n):
        assert tracker.steps_per_epoch is None  # derived at the first step
        assert tracker.run_config()["train"]["steps_per_epoch"] == expected
        loop(tracker, steps=2)
        assert tracker.steps_per_epoch == expected
        assert [r["epoch"] for r in tracker.records_] == [0.0, 1 / expected]


def test_steps_per_epoch_from_a_dataloader_and_refusals():
    x, y = data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:250], y[:250]), batch_size=16, drop_last=True
    )
    assert be.Tracker(["lr"], steps_per_epoch=loader).steps_per_epoch == 15
    with pytest.raises(ValueError, match="exceeds the 15 training examples"):
        be.Tracker(["lr"], n_train=15, batch_size=16, drop_last=True)
    with pytest.raises(TypeError, match="steps_per_epoch must be an int or a DataLoader"):
        be.Tracker(["lr"], steps_per_epoch=2.5)


def test_records_carry_epochs_and_per_epoch_schedules_work_in_the_readme_loop():
    x, y = data()
    tracker = be.Tracker(
        [be.GradientCovariance(num_batches=3), ("lr", be.per_epoch(1))],
        be.every(3),
        probe=(x[:40], y[:40]),
        train_data=(x[:64], y[:64]),
        lr=0.05,
        batch_size=16,
    )
    loop(tracker, steps=9)
    assert [(r["step"], r["epoch"]) for r in tracker.records_ if r["measure"] == "lr"] == [
        (0, 0.0),
        (4, 1.0),
        (8, 2.0),
    ]
    assert all(r["epoch"] == r["step"] / 4 for r in tracker.records_)


def test_an_epoch_that_cannot_be_derived_is_said_once():
    x, y = data()
    tracker = be.Tracker(
        ["param_norm"], be.every(2), probe=(x[:40], y[:40]), train_data=(x, y), lr=0.05
    )
    with pytest.warns(RuntimeWarning, match="epoch is None.*without batch_size") as caught:
        loop(tracker, steps=5)
    assert len([w for w in caught if "epoch is None" in str(w.message)]) == 1
    assert all(r["epoch"] is None for r in tracker.records_)
