"""Nothing lost, nothing overwritten: every decision about a run directory is taken under its
lock, a finished run is never reopened, records are cut only past a checkpoint, ambiguous
directories are refused unchanged, SIGTERM ends a run resumably, and a resume runs with the
thread count of the run it continues."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
import torch

from breakeven.experiments import run
from breakeven.experiments import runner as runner_mod
from breakeven.records import RunStoreError, read_records, read_status
from breakeven.tracking import store as store_mod
from breakeven.tracking.store import ConfigMismatchError, RunStore
from helpers import assert_same_state


@pytest.fixture
def config(tiny_npz: Path) -> dict:
    """A tiny run on the tiny .npz data: 6 steps an epoch, 18 steps, a checkpoint every 4."""
    return {
        "run": {"checkpoint_every": 4},
        "train": {
            "model": "mlp",
            "model_kwargs": {"hidden": [8]},
            "dataset": "npz",
            "dataset_kwargs": {"root": str(tiny_npz)},
            "batch_size": 10,
            "lr": 0.1,
            "epochs": 3,
            "eval_every": 5,
        },
        "track": {"covariance": {"every": 2, "num_batches": 3}, "hessian": {"every": 6}},
    }


class StopAt:
    """A progress display that presses Ctrl-C once ``step`` steps are done, and notes the
    thread count and SIGTERM handler it sees at each step."""

    def __init__(self, step: int | None = None) -> None:
        self.step, self.threads, self.handlers, self.loss = step, [], [], None

    def start(self, total: int, first: int = 0) -> None:
        pass

    def update(self, step: int) -> None:
        self.threads.append(torch.get_num_threads())
        self.handlers.append(signal.getsignal(signal.SIGTERM))
        if self.step is not None and step >= self.step:
            raise KeyboardInterrupt

    def record(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def interrupt(config: dict, out: Path, step: int) -> None:
    """Run ``config`` into ``out`` and press Ctrl-C after ``step`` steps."""
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=lambda: StopAt(step))
    assert read_status(out) == "failed: interrupted"


def files(path: Path) -> dict[str, bytes]:
    """The run directory's files and their bytes (the lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "lock"}


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def rec(step: int) -> dict:
    return {
        "step": step,
        "epoch": 0.0,
        "measure": "m",
        "values": {"x": 1.0},
        "seconds": 0.1,
        "matvecs": 1,
    }


# ---------------------------------------------------------------- races between two runs


def test_finish_holds_the_lock_until_the_status_is_final(tmp_path: Path, monkeypatch) -> None:
    """While one process writes model.pt, summary.json and the status, a second open is
    refused; afterwards it finds the run ended, its records whole."""
    path, cfg = tmp_path / "r", {"a": 1}
    first = RunStore(path)
    first.open(cfg)
    for i in range(3):
        first.append(rec(i))
    first.save_checkpoint({"step": 3})
    first.append(rec(3))
    seen, real_replace = [], store_mod.os.replace

    def replace(src, dst) -> None:  # each atomic write of finish(): try a second writer
        try:
            RunStore(path).open(cfg)
            seen.append((Path(dst).name, "opened"))
        except RunStoreError as e:
            seen.append((Path(dst).name, "refused" if "another process" in str(e) else str(e)))
        real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", replace)
    first.finish("finished", {"steps": 4}, {"w": torch.ones(2)})
    monkeypatch.undo()
    assert seen == [("model.pt", "refused"), ("summary.json", "refused"), ("status", "refused")]
    assert [r["step"] for r in read_records(path)] == [0, 1, 2, 3]
    second = RunStore(path)
    assert second.open(cfg) is None and second.ended_ == "finished"
    assert [r["step"] for r in read_records(path)] == [0, 1, 2, 3]
    assert read_status(path) == "finished" and not (path / "checkpoint.pt").exists()


@pytest.mark.parametrize("stopped_at", [2, 9])  # before the first checkpoint, and after two
def test_a_run_that_ends_while_another_loads_its_data_is_left_alone(
    config, tmp_path, monkeypatch, stopped_at
) -> None:
    """A second ``run`` of an interrupted run reads the status, loads its data; meanwhile a
    first one resumes the run and finishes it. The second then finds it ended (decided under
    the lock): nothing is cut or retrained."""
    out = tmp_path / "run"
    interrupt(config, out, stopped_at)
    real, after_first = runner_mod.prepare_dataset, {}

    def prepare_dataset(*args, **kwargs):
        if not after_first:  # the other process finishes the run during this load
            after_first["outcome"] = "busy"
            after_first["outcome"] = run(config, out)
            after_first["files"] = files(out)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "prepare_dataset", prepare_dataset)
    second = run(config, out)
    assert after_first["outcome"].status == "finished" and after_first["outcome"].result
    assert second.status == "finished" and second.result is None and second.steps == 18
    assert files(out) == after_first["files"]


# ---------------------------------------------------------------- ambiguous directories


@pytest.mark.parametrize(
    "status", [None, b"", b"junk\n", b"\xff\xfe\n", b"finishe\n", b"failed: disk\n"]
)
def test_an_ended_run_whose_status_was_lost_is_refused_unchanged(config, tmp_path, status):
    out = tmp_path / "run"
    assert run(config, out).status == "finished"
    if status is None:
        (out / "status").unlink()
    else:
        (out / "status").write_bytes(status)
    before = files(out)
    with pytest.raises(RunStoreError, match=r"summary\.json says the run ended \('finished'\)"):
        run(config, out)
    assert files(out) == before  # nothing wiped, nothing retrained
    (out / "status").write_text("finished\n")  # what the message says to do
    again = run(config, out)
    assert again.status == "finished" and again.result is None
    assert {k: v for k, v in files(out).items() if k != "status"} == {
        k: v for k, v in before.items() if k != "status"
    }


def test_a_run_stopped_after_its_summary_was_written_is_ended(config, tmp_path, monkeypatch):
    """Stopped (here: Ctrl-C) between summary.json, which commits the end, and the final
    status: the status stays ``running``, and the next run completes the end."""
    out = tmp_path / "run"
    real = RunStore.set_status

    def set_status(self, status: str) -> None:
        if status == "finished":
            raise KeyboardInterrupt
        real(self, status)

    monkeypatch.setattr(RunStore, "set_status", set_status)
    with pytest.raises(KeyboardInterrupt):
        run(config, out)
    monkeypatch.undo()
    assert read_status(out) == "running" and (out / "checkpoint.pt").exists()
    records = (out / "records.jsonl").read_bytes()
    again = run(config, out)
    assert again.status == "finished" and again.result is None and again.steps == 18
    assert read_status(out) == "finished" and not (out / "checkpoint.pt").exists()
    assert (out / "records.jsonl").read_bytes() == records


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("status", [None, b"", b"gibberish\n"])
def test_records_beside_a_lost_status_are_refused_unchanged(tmp_path, checkpoint, status):
    path = tmp_path / "r"
    store = RunStore(path)
    store.open({"a": 1})
    for i in range(3):
        store.append(rec(i))
    if checkpoint:
        store.save_checkpoint({"step": 2})
    store.append(rec(3))
    store.close()
    if status is None:
        (path / "status").unlink()
    else:
        (path / "status").write_bytes(status)
    before = files(path)
    with pytest.raises(RunStoreError, match=r"status file .* was lost or changed\. Nothing was"):
        RunStore(path).open({"a": 1})
    assert files(path) == before
    (path / "status").write_text("failed: status lost\n")  # what the message says to do
    RunStore(path).open({"a": 1})
    assert [r["step"] for r in read_records(path)] == ([0, 1, 2] if checkpoint else [])


@pytest.mark.parametrize("same", [True, False])
def test_run_files_without_config_json_are_refused(config, tmp_path, same) -> None:
    out = tmp_path / "run"
    interrupt(config, out, 9)
    (out / "config.json").unlink()
    before = files(out)
    other = config if same else {**config, "train": {**config["train"], "lr": 0.3}}
    with pytest.raises(
        RunStoreError,
        match=r"holds records\.jsonl, status, checkpoint\.pt of a "
        r"run but no config\.json",
    ):
        run(other, out)
    assert files(out) == before and not (out / "config.json").exists()


def test_a_config_corrected_after_a_failure_before_the_first_checkpoint_replaces_it(
    config, tmp_path
) -> None:
    out, corrected = tmp_path / "run", {**config, "train": {**config["train"], "lr": 0.05}}
    interrupt(config, out, 2)  # failed before its first checkpoint (step 4)
    assert not (out / "checkpoint.pt").exists() and read_records(out)
    done = run(corrected, out)
    assert done.status == "finished" and done.resumed_from is None
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.05
    reference = run(corrected, tmp_path / "reference")
    assert strip(read_records(out)) == strip(read_records(reference.path))

    later = tmp_path / "later"  # failed after a checkpoint: its config stays
    interrupt(config, later, 9)
    before = files(later)
    with pytest.raises(ConfigMismatchError, match=r"differing keys: train\.lr"):
        run(corrected, later)
    assert files(later) == before


# ---------------------------------------------------------------- SIGTERM, threads


def test_sigterm_is_handled_only_during_the_run_and_only_when_default(config, tmp_path) -> None:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    seen = StopAt()
    run(config, tmp_path / "a", progress=lambda: seen)
    assert all(callable(h) and h is not signal.SIG_DFL for h in seen.handlers)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored

    def own(signum, frame) -> None:  # the caller's handler is left alone
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        seen = StopAt()
        run(config, tmp_path / "b", progress=lambda: seen)
        assert set(seen.handlers) == {own} and signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)

    outcome = []  # another thread cannot handle signals: the run works without
    worker = threading.Thread(target=lambda: outcome.append(run(config, tmp_path / "c")))
    worker.start()
    worker.join()
    assert outcome[0].status == "finished"


def test_a_resume_runs_with_the_thread_count_of_the_run_it_continues(config, tmp_path) -> None:
    """The config leaves num_threads unset: the run takes torch's count (1), a resume in a
    process with 2 restores 1 for its duration and gives the caller its 2 back."""
    reference = run(config, tmp_path / "reference")
    out = tmp_path / "run"
    try:
        interrupt(config, out, 9)
        assert torch.load(out / "checkpoint.pt", weights_only=True)["num_threads"] == 1
        torch.set_num_threads(2)
        seen = StopAt()
        resumed = run(config, out, progress=lambda: seen)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # as conftest.py set it
    assert resumed.resumed_from == 8 and set(seen.threads) == {1}
    assert json.loads((out / "summary.json").read_text())["num_threads"] == 1
    assert strip(read_records(out)) == strip(read_records(reference.path))
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(reference.path / "model.pt", weights_only=True)
    assert_same_state(a, b)
