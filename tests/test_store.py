"""The run store: records appended and read back whole, atomic status and checkpoints, config
checks on resume, clear errors for unwritable or full disks, the tidy DataFrame and exports."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from breakeven.experiments import run
from breakeven.records import (
    RunStoreError,
    export_run,
    load_run,
    read_records,
    read_status,
    to_json,
)
from breakeven.tracking import store as store_mod
from breakeven.tracking.store import ConfigMismatchError, OutputDirError, RunStore, config_diff
from helpers import toy

TOY = {"n": 60, "shape": (1, 4, 4), "n_test": 20}  # the data of every run here


CONFIG = {
    "run": {"checkpoint_every": 4},
    "train": {
        "model": "mlp",
        "model_kwargs": {"hidden": [8]},
        "batch_size": 10,
        "lr": 0.1,
        "epochs": 2,
        "eval_every": 3,
    },
    "track": {"covariance": {"every": 2, "num_batches": 3}, "hessian": {"every": 5}},
}


def rec(step: int, **values: float) -> dict:
    return {
        "step": step,
        "epoch": step / 10,
        "measure": "m",
        "values": values,
        "seconds": 0.1,
        "matvecs": 1,
    }


# ---------------------------------------------------------------- the store itself


@pytest.mark.parametrize("value", [math.inf, -math.inf, (1, 2), [0.5, math.inf]])
def test_a_config_compares_as_config_json_holds_it(value) -> None:
    """inf is written "inf" and a tuple a list: a config read back equals the one given (a
    finished run of a config with ``tol_fallback = inf`` was refused as another config)."""
    cfg = {"track": {"sharpness": {"tol_fallback": value}}}
    assert config_diff(json.loads(to_json(cfg)), cfg) == []
    assert config_diff(cfg, json.loads(to_json(cfg))) == []
    other = {"track": {"sharpness": {"tol_fallback": 1e308}}}
    assert config_diff(other, cfg) == ["track.sharpness.tol_fallback"]


def test_append_checkpoint_and_reopen_cut_back_to_the_checkpoint(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r")
    assert store.status is None
    assert store.open({"a": 1, "t": (1, 2)}) is None
    assert store.status == "running"
    for i in range(3):
        store.append(rec(i, x=float(i)))
    store.save_checkpoint({"step": 3, "w": torch.arange(3)})
    store.append(rec(3, x=3.0))
    store.append(rec(4, x=4.0))
    store.close()
    assert [r["step"] for r in read_records(tmp_path / "r")] == [0, 1, 2, 3, 4]

    again = RunStore(tmp_path / "r")
    ckpt = again.open({"a": 1, "t": [1, 2]})  # tuples are stored as lists: the same config
    assert ckpt["step"] == 3 and ckpt["n_records"] == 3 and torch.equal(ckpt["w"], torch.arange(3))
    assert [r["step"] for r in read_records(tmp_path / "r")] == [0, 1, 2]  # 3, 4 dropped
    again.append(rec(3, x=3.5))
    again.close()
    assert [r["values"]["x"] for r in read_records(tmp_path / "r")] == [0.0, 1.0, 2.0, 3.5]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "lock",
        "records.jsonl",
        "status",
    ]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    first = RunStore(tmp_path)
    first.open({})
    with pytest.raises(RunStoreError, match="being written by another process"):
        RunStore(tmp_path).open({})
    first.close()  # released (also when the process dies: the OS drops the lock)
    RunStore(tmp_path).open({})


def test_a_half_written_last_line_is_never_read_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open({})
    store.append(rec(0, x=1.0))
    store.append(rec(1, x=2.0))
    store.close()
    with open(tmp_path / "records.jsonl", "ab") as f:
        f.write(b'{"step": 2, "epoch": 0.2, "measure": "m", "values": {"x": 3')
    assert [r["step"] for r in read_records(tmp_path)] == [0, 1]
    assert load_run(tmp_path)["step"].tolist() == [0, 1]
    RunStore(tmp_path).open({})  # no checkpoint: a resume starts afresh, records cut to none
    assert read_records(tmp_path) == [] and (tmp_path / "records.jsonl").read_bytes() == b""


def test_a_corrupt_complete_line_is_an_error_naming_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open({})
    store.append(rec(0, x=1.0))
    store.close()
    with open(tmp_path / "records.jsonl", "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(ValueError, match="line 2: not a JSON record"):
        read_records(tmp_path)


def test_resume_with_another_config_names_the_differing_keys(tmp_path: Path) -> None:
    RunStore(tmp_path).open({"train": {"lr": 0.1, "seed": 0}, "track": {"a": {"every": 5}}})
    with pytest.raises(ConfigMismatchError, match=r"differing keys: track\.a\.every, train\.lr"):
        RunStore(tmp_path).open({"train": {"lr": 0.2, "seed": 0}, "track": {"a": {"every": 6}}})


def test_status_and_checkpoint_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    store.open({})
    store.save_checkpoint({"step": 1})

    def boom(obj, f):  # a failure in the middle of writing the new checkpoint
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.torch, "save", boom)
    with pytest.raises(OSError):
        store.save_checkpoint({"step": 2})
    monkeypatch.undo()
    assert store.load_checkpoint()["step"] == 1  # the old checkpoint is intact
    assert not list(tmp_path.glob("*.tmp"))
    store.set_status("failed: a\nb")
    assert read_status(tmp_path) == "failed: a b"


# ---------------------------------------------------------------- through a run


def test_load_run_is_tidy_and_exports_to_csv(tmp_path: Path) -> None:
    out = run(CONFIG, tmp_path / "run", dataset=toy(**TOY))
    assert out.status == "finished" and out.steps == 12 and read_status(out.path) == "finished"
    df = load_run(out.path)
    assert list(df.columns) == [
        "run",
        "step",
        "epoch",
        "measure",
        "key",
        "value",
        "seconds",
        "matvecs",
    ]
    assert set(df["measure"]) == {"covariance", "hessian", "evaluation"}
    assert (df["run"] == "run").all() and df["value"].dtype == "float64"
    k1 = df[(df.measure == "covariance") & (df.key == "lambda_K_1")]
    assert k1["step"].tolist() == [0, 2, 4, 6, 8, 10] and (k1["value"] > 0).all()
    assert df[df.measure == "evaluation"]["step"].unique().tolist() == [0, 3, 6, 9, 12]
    csv = export_run(out.path, to="csv")
    assert csv == out.path / "records.csv"
    back = pd.read_csv(csv)
    assert len(back) == len(df) and back["value"].tolist() == pytest.approx(df["value"].tolist())
    both = load_run([out.path, out.path])
    assert len(both) == 2 * len(df)


def test_parquet_export_needs_pyarrow(tmp_path: Path, monkeypatch) -> None:
    out = run({**CONFIG, "track": {}}, tmp_path / "run", dataset=toy(**TOY))
    with pytest.raises(ValueError, match="'parquet' or 'csv'"):
        export_run(out.path, to="xlsx")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(ImportError, match="pip install pyarrow"):
            export_run(out.path, to="parquet")
    pytest.importorskip("pyarrow")
    target = export_run(out.path, to="parquet", out=tmp_path / "r.parquet")
    assert pd.read_parquet(target).equals(load_run(out.path))


def test_an_unwritable_output_directory_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match="cannot create the run directory"):
        run(CONFIG, blocker / "run", dataset=toy(**TOY))
    with pytest.raises(OutputDirError, match="cannot create"):
        RunStore(blocker / "run").check_writable()


def test_a_nearly_full_disk_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    usage = store_mod.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(OutputDirError, match=r"only 5\.0 MiB free .* at least 64 MiB"):
        run(CONFIG, tmp_path / "run", dataset=toy(**TOY))
    assert not (tmp_path / "run" / "config.json").exists()  # nothing was started


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_full_disk_mid_run_ends_with_a_failed_status(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while a record is written: the run stops with ``failed: ...``, returns cleanly,
    and every record read back is complete (the partial line is cut off)."""
    real_fsync, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("records.jsonl"):
            calls[0] += 1
            if calls[0] == 8:  # the 8th record, after its line was written and flushed
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    out = run(CONFIG, tmp_path / "run", dataset=toy(**TOY))
    monkeypatch.undo()
    assert out.status.startswith("failed: OSError: [Errno 28] No space left on device")
    assert read_status(out.path) == out.status and isinstance(out.error, OSError)
    data = (out.path / "records.jsonl").read_bytes()
    assert data.endswith(b"\n")  # the partial record was cut off
    records = read_records(out.path)
    assert len(records) == 7 and all(math.isfinite(r["step"]) for r in records)
    assert all(json.loads(line) for line in data.splitlines())
    again = run(CONFIG, tmp_path / "run", dataset=toy(**TOY))  # space is back: the rerun resumes
    assert again.status == "finished" and again.resumed_from is not None
    reference = run(CONFIG, tmp_path / "reference", dataset=toy(**TOY))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(read_records(again.path)) == strip(read_records(reference.path))


def test_an_ended_run_is_not_run_again_and_another_config_is_refused(tmp_path: Path) -> None:
    first = run(CONFIG, tmp_path / "run", dataset=toy(**TOY))
    before = (tmp_path / "run" / "records.jsonl").read_bytes()
    again = run(CONFIG, tmp_path / "run", dataset=toy(**TOY))
    assert again.status == "finished" and again.result is None and again.steps == first.steps
    assert (tmp_path / "run" / "records.jsonl").read_bytes() == before
    with pytest.raises(ConfigMismatchError, match=r"train\.lr"):
        run(CONFIG, tmp_path / "run", {"train.lr": 0.5}, dataset=toy(**TOY))


def test_a_diverged_run_is_recorded_as_diverged(tmp_path: Path) -> None:
    cfg = {"train": {**CONFIG["train"], "lr": 1e38, "model_kwargs": {"hidden": []}}, "track": {}}
    out = run(cfg, tmp_path / "run", dataset=toy(**TOY))
    assert out.status == "diverged" and read_status(out.path) == "diverged"
    assert json.loads((out.path / "summary.json").read_text())["diverged_at"] is not None
