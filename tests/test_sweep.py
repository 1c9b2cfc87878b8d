"""Sweeps: the plan (grid x seeds, comparable K), the local and Ray backends, resuming, and a
diverged run reported but never fatal; ``breakeven sweep`` and ``breakeven verdict``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breakeven.analysis import read_runs, verdicts
from breakeven.cli import main
from breakeven.experiments import SweepBusyError, parse_grid, plan_sweep, sweep
from breakeven.records import read_records, read_status, read_summary
from breakeven.train import ConfigError
from helpers import run_config, write_tiny_npz


@pytest.fixture
def preset(tmp_path: Path, tiny_npz: Path) -> Path:
    return run_config(
        tmp_path / "tiny.toml",
        tiny_npz,
        name="tiny",
        sweep={"grid": {"train.lr": [0.05, 0.2]}, "seeds": 2},
        run={"checkpoint_every": 4},
        train={"eval_every": 3},
        track={"covariance": {"every": 2, "num_batches": 3}, "hessian": {"every": 4, "k": 1}},
        scale={"quick": {"train": {"epochs": 1}, "track": {"covariance": {"every": 3}}}},
    )


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


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
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


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
def test_process_pool_equals_one_process(preset, tmp_path):
    one = sweep(preset, scale="quick", out=tmp_path / "one")
    two = sweep(preset, scale="quick", workers=2, out=tmp_path / "two")
    assert [s for _, s, _ in two.runs] == ["finished"] * 4
    for name, _, _ in one.runs:
        a = read_records(tmp_path / "one" / "runs" / name)
        b = read_records(tmp_path / "two" / "runs" / name)
        assert [r["values"] for r in a] == [r["values"] for r in b]


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
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

    for fn in ("run_one", "_run_processes", "_run_ray"):
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


@pytest.mark.parametrize(
    ("exitcode", "text"),
    [
        (-9, "killed by signal 9 (SIGKILL)"),
        (-15, "killed by signal 15 (SIGTERM)"),
        (-11, "killed by signal 11 (SIGSEGV)"),
        (-200, "killed by signal 200"),
        (1, "exit code 1"),
        (3, "exit code 3"),
    ],
)
def test_how_a_worker_died_is_named(exitcode, text):
    from breakeven.experiments.sweep import _how_it_died

    assert _how_it_died(exitcode) == text


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_worker_runs_jobs_until_its_connection_ends_and_none_once_its_parent_is_gone(
    preset, tmp_path, parent_alive
):
    import multiprocessing as mp

    from breakeven.experiments.sweep import _work

    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    parent = os.getpid() if parent_alive else os.getpid() + 2**22  # above any pid
    proc = ctx.Process(target=_work, args=(child, parent))
    proc.start()
    child.close()
    runs = plan_sweep(preset, scale="quick", seeds=1).runs
    outs = [tmp_path / r.name for r in runs]
    for run, out in zip(runs, outs, strict=True):
        conn.send((run.config, str(out), None))
        if parent_alive:
            assert conn.recv()[0] == "finished"  # one job after the other
    conn.close()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert [out.exists() for out in outs] == [parent_alive] * len(outs)


SLOW_TRAIN = {  # 48 steps of a larger MLP
    "model_kwargs": {"hidden": [256, 256]},
    "lr": 0.05,
    "epochs": 8,
    "eval_every": 6,
    "num_threads": None,
}
SLOW_TRACK = {"covariance": {"every": 3, "num_batches": 4}, "hessian": {"every": 6, "k": 1}}
SLOW_GRID = {"train.lr": [0.05, 0.1]}
SLOW_RUNS = ["lr=0.05_seed=0", "lr=0.05_seed=1", "lr=0.1_seed=0", "lr=0.1_seed=1"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> dict:
    """A config whose runs take seconds (48 steps, a checkpoint every 3), the torch threads
    of each of its runs under ``--workers 2``, and the records of its uninterrupted sweep
    with two workers (lr 0.05, 0.1 x seeds 0, 1; in this process, with those threads)."""
    import torch

    root = tmp_path_factory.mktemp("slow")
    npz = write_tiny_npz(root / "tiny.npz")
    every_3 = {"checkpoint_every": 3}
    config = run_config(
        root / "slow.toml", npz, name="slow", run=every_3, train=SLOW_TRAIN, track=SLOW_TRACK
    )
    ref = root / "reference"
    threads = plan_sweep(config, grid=SLOW_GRID, seeds=2, workers=2).threads
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outcome = sweep(config, grid=SLOW_GRID, seeds=2, out=ref)
    finally:
        torch.set_num_threads(before)
    assert [s for _, s, _ in outcome.runs] == ["finished"] * 4
    records = {n: _values(ref / "runs" / n) for n in SLOW_RUNS}
    return {"config": config, "threads": threads, "records": records}


def _values(path: Path) -> list:
    return [(r["step"], r["measure"], r["values"]) for r in read_records(path)]


def _sweep_cmd(config: Path, out: Path, workers: int, runs: str = "lr=0.05,0.1") -> list[str]:
    """``breakeven sweep`` of the slow config over the lr values ``runs`` and seeds 0, 1, or
    ``runs="one"``: lr 0.05, seed 0 alone."""
    grid, seeds = ("lr=0.05", "1") if runs == "one" else (runs, "2")
    return [
        sys.executable,
        "-m",
        "breakeven.cli",
        "sweep",
        str(config),
        "--grid",
        grid,
        "--seeds",
        seeds,
        "--workers",
        str(workers),
        "--out",
        str(out),
    ]


def _start(cmd: list[str], threads: int | None = None) -> subprocess.Popen:
    """Start ``cmd``; ``threads``: torch's default thread count in it (OMP_NUM_THREADS)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _wait_until(ready, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll ``ready()``; fail if ``proc`` ends first or ``timeout`` passes."""
    t0 = time.monotonic()
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) too early: {_finish(proc)[1]}")
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _workers(pid: int) -> list[int]:
    """The worker processes of the sweep ``pid`` (not multiprocessing's resource tracker)."""
    return [c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path.resolve()) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


def _checkpointed(out: Path) -> list[str]:
    """The runs in ``out`` that are running and checkpointed (a run that ended has no
    checkpoint)."""
    return sorted(p.parent.name for p in (out / "runs").glob("*/checkpoint.pt"))


def _kill_the_sweep(proc: subprocess.Popen, out: Path, runs: int) -> list[str]:
    """SIGKILL a sweep once ``runs`` of its runs checkpointed, and return their names: its
    workers end with it, those runs stay interrupted, and no run starts after it."""
    _wait_until(lambda: len(_checkpointed(out)) >= runs, proc)
    started = sorted(os.listdir(out / "runs"))
    _kill(proc)
    interrupted = _checkpointed(out)
    assert len(interrupted) >= runs
    assert [read_status(out / "runs" / n) for n in interrupted] == ["running"] * len(interrupted)
    assert sorted(os.listdir(out / "runs")) == started
    return interrupted


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a sweep; its child processes must end: at once, or (a worker still importing
    its modules when the sweep died) without starting its run."""
    children = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        t0 = time.monotonic()
        while any(_alive(c) for c in children):
            assert time.monotonic() - t0 < 30, "the workers outlived the sweep"
            time.sleep(0.01)
    finally:
        for c in filter(_alive, children):  # leave no orphan behind when the test fails
            os.kill(c, signal.SIGKILL)
        proc.stdout.close()


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@linux_only
def test_a_killed_sweep_takes_its_workers_along_and_its_rerun_resumes_it(slow, tmp_path):
    out = tmp_path / "s"
    cmd = _sweep_cmd(slow["config"], out, workers=2)
    interrupted = _kill_the_sweep(_start(cmd), out, runs=2)
    code, text = _finish(_start(cmd))  # the same command again
    assert code == 0, text
    assert "4 finished" in text
    for name in SLOW_RUNS:
        assert _values(out / "runs" / name) == slow["records"][name], name
    for name in interrupted:
        assert read_summary(out / "runs" / name)["resumed_from"] > 0


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@linux_only
def test_a_sweep_resumed_with_other_workers_keeps_each_runs_threads(slow, tmp_path):
    """Killed under --workers 2 (cpus // 2 threads per run), resumed with --workers 1 in a
    process whose default is one thread more: the run resumes with its own thread count, so
    its records are those of the uninterrupted sweep."""
    out = tmp_path / "s"
    _kill_the_sweep(_start(_sweep_cmd(slow["config"], out, 2, runs="one")), out, runs=1)
    again = _start(_sweep_cmd(slow["config"], out, 1, runs="one"), slow["threads"] + 1)
    code, text = _finish(again)
    assert code == 0 and "1 finished" in text, text
    name = SLOW_RUNS[0]
    assert read_summary(out / "runs" / name)["resumed_from"] > 0
    assert _values(out / "runs" / name) == slow["records"][name]


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@linux_only
def test_a_killed_worker_fails_only_its_own_run(slow, tmp_path):
    out = tmp_path / "s"
    proc = _start(_sweep_cmd(slow["config"], out, workers=2))
    _wait_until(lambda: len(_checkpointed(out)) >= 2, proc)  # both workers mid-run
    name = _checkpointed(out)[0]
    lock = out / "runs" / name / "lock"
    (victim,) = [w for w in _workers(proc.pid) if _holds(w, lock)]
    os.kill(victim, signal.SIGKILL)
    code, text = _finish(proc)
    assert code == 1, text
    assert f"{name}: failed: the worker process died: killed by signal 9 (SIGKILL)" in text
    assert "1 failed, 3 finished" in text
    assert read_status(out / "runs" / name) == "running"  # interrupted: a rerun resumes it
    others = [n for n in SLOW_RUNS if n != name]
    for other in others:  # the other worker's run and the queued runs went on
        assert read_status(out / "runs" / other) == "finished"
        assert _values(out / "runs" / other) == slow["records"][other], other


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@linux_only
def test_a_second_sweep_on_a_directory_stops_at_once(slow, tmp_path):
    out = tmp_path / "s"
    cmd = _sweep_cmd(slow["config"], out, workers=2)
    first = _start(cmd)
    _wait_until((out / "sweep.json").exists, first)  # written while holding the lock
    spec = (out / "sweep.json").stat().st_mtime_ns
    code, text = _finish(_start(cmd))
    assert code == 2, text
    assert f"error: another sweep is running in {out}" in text and "sweep.lock" in text
    assert not any(name in text for name in SLOW_RUNS)  # no run reported, none failed
    assert (out / "sweep.json").stat().st_mtime_ns == spec
    assert first.poll() is None  # the first sweep goes on
    _kill(first)
