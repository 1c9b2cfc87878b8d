"""Exports of runs and sweeps: the tidy table as CSV or Parquet (one file for a sweep), and
TensorBoard event files (one subdirectory per run) read back scalar by scalar."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from breakeven.analysis import read_runs
from breakeven.cli import main
from breakeven.records import default_export_path, export_run, load_run, write_records
from helpers import write_run, write_sweep

SRC = Path(__file__).parents[1] / "src" / "breakeven"


def _make_run(path: Path, lr: float, steps: int = 4) -> Path:
    """A run directory written by the run store: covariance, hessian (with a NaN and a
    boolean-like flag), a key with a slash, a non-scalar value, and evaluation records."""
    records = []
    for step in range(steps):
        records.append(
            {
                "step": step,
                "epoch": step / 2,
                "measure": "covariance",
                "values": {"lambda_K_1": lr * (step + 1) + 0.123456789, "M": 8.0},
                "seconds": 0.01,
                "matvecs": 3,
            }
        )
        if step % 2 == 0:
            records.append(
                {
                    "step": step,
                    "epoch": step / 2,
                    "measure": "hessian",
                    "values": {
                        "lambda_H_1": 1e-3 / lr + step,
                        "residual_H_1": math.nan if step == 0 else 1e-5,
                        "converged": True,
                        "gamma_norm/layers.0": 2.5,
                        "eigs": [1.0, 2.0],  # not a scalar: left out
                    },
                    "seconds": 0.02,
                    "matvecs": 10,
                }
            )
    records.append(
        {
            "step": steps,
            "epoch": steps / 2,
            "measure": "evaluation",
            "values": {"train_loss": 0.5 - lr, "val_acc": 0.75},
            "seconds": 0.0,
            "matvecs": 0,
        }
    )
    config = {"name": path.name, "train": {"lr": lr, "batch_size": 8}, "track": {}}
    return write_run(path, records, config=config, summary={"steps": steps})


def _make_sweep(path: Path) -> Path:
    write_sweep(path, (0.1, 0.01), (0,), lambda run, lr, seed: _make_run(run, lr), name="lr{lr}")
    return path


def _read_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (
        TENSORS,
        EventAccumulator,
    )
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir), size_guidance={TENSORS: 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


def _expected(records: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for m, k, s, v in zip(records["measure"], records["key"], records["step"], records["value"]):
        out.setdefault(f"{m}/{k}", []).append((int(s), float(np.float32(v))))
    return out


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for tag in a:
        if len(a[tag]) != len(b[tag]):
            return False
        for (s1, v1), (s2, v2) in zip(a[tag], b[tag]):
            if s1 != s2 or not (v1 == v2 or (math.isnan(v1) and math.isnan(v2))):
                return False
    return True


# ---------------------------------------------------------------- tables


def test_csv_of_a_run_and_of_a_sweep(tmp_path: Path, capsys) -> None:
    run = _make_run(tmp_path / "one", 0.1)
    assert main(["export", str(run), "--to", "csv"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "records.csv")
    back = pd.read_csv(run / "records.csv")
    df = load_run(run)
    assert list(back.columns) == [
        "run",
        "step",
        "epoch",
        "measure",
        "key",
        "value",
        "seconds",
        "matvecs",
    ]
    assert len(back) == len(df) and set(back["measure"]) == {"covariance", "hessian", "evaluation"}
    assert np.allclose(back["value"], df["value"], equal_nan=True, rtol=1e-15)
    assert "eigs" not in set(back["key"])

    sweep = _make_sweep(tmp_path / "sweep")
    assert main(["export", str(sweep), "--to", "csv"]) == 0
    table = pd.read_csv(sweep / "records.csv")
    expected = read_runs(sweep).records
    assert sorted(table["run"].unique()) == ["lr0.01", "lr0.1"]
    assert len(table) == len(expected)
    for run_name in ("lr0.01", "lr0.1"):
        one = load_run(sweep / "runs" / run_name)
        mine = table[table["run"] == run_name]
        assert np.allclose(mine["value"], one["value"], equal_nan=True, rtol=1e-15)
    out = tmp_path / "elsewhere.csv"
    assert main(["export", str(sweep), "--out", str(out)]) == 0  # csv is the default
    assert len(pd.read_csv(out)) == len(expected)


def test_parquet_of_a_sweep(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    sweep = _make_sweep(tmp_path / "sweep")
    assert main(["export", str(sweep), "--to", "parquet"]) == 0
    assert pd.read_parquet(sweep / "records.parquet").equals(read_runs(sweep).records)
    run = sweep / "runs" / "lr0.1"
    assert export_run(run, "parquet") == run / "records.parquet"
    assert pd.read_parquet(run / "records.parquet").equals(load_run(run))


# ---------------------------------------------------------------- tensorboard


def test_tensorboard_events_hold_every_scalar_of_every_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    sweep = _make_sweep(tmp_path / "sweep")
    assert main(["export", str(sweep), "--to", "tensorboard"]) == 0
    out = sweep / "tensorboard"
    assert sorted(p.name for p in out.iterdir()) == ["lr0.01", "lr0.1"]
    records = read_runs(sweep).records
    for run_name in ("lr0.01", "lr0.1"):
        got = _read_events(out / run_name)
        want = _expected(records[records["run"] == run_name])
        assert "evaluation/val_acc" in got and "hessian/gamma_norm/layers.0" in got
        assert got["covariance/lambda_K_1"][:2] == want["covariance/lambda_K_1"][:2]
        assert _same(got, want)

    # exporting again replaces the series (no doubled points)
    assert main(["export", str(sweep), "--to", "tensorboard"]) == 0
    assert len(list((out / "lr0.1").glob("events.out.tfevents.*"))) == 1
    assert _same(_read_events(out / "lr0.1"), _expected(records[records["run"] == "lr0.1"]))


def test_tensorboard_export_of_one_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = _make_run(tmp_path / "solo", 0.05)
    target = export_run(run, "tensorboard")
    assert target == default_export_path(run, "tensorboard") == run / "tensorboard"
    assert _same(_read_events(target / "solo"), _expected(load_run(run)))
    custom = write_records(load_run(run), "tensorboard", tmp_path / "tb")
    assert (custom / "solo").is_dir()


def test_missing_tensorboard_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    run = _make_run(tmp_path / "run", 0.1)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.summary", None)
    with pytest.raises(ImportError, match=r"pip install 'breakeven\[tensorboard\]'"):
        export_run(run, "tensorboard")
    assert main(["export", str(run), "--to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'breakeven[tensorboard]'" in err
    assert not (run / "tensorboard").exists()


def test_export_errors(tmp_path: Path, capsys) -> None:
    run = _make_run(tmp_path / "run", 0.1)
    with pytest.raises(ValueError, match="'tensorboard', 'parquet' or 'csv'"):
        export_run(run, "xlsx")
    sweep = _make_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match="is a sweep directory"):
        export_run(sweep, "csv")
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    pytest.importorskip("tensorboard")
    frame = load_run(run)
    frame["run"] = "../escape"
    with pytest.raises(ValueError, match="does not name a subdirectory"):
        write_records(frame, "tensorboard", tmp_path / "tb")


def test_records_module_imports_no_torch_and_no_analysis() -> None:
    """records.py is the base of analysis and plotting: its module-level imports are the
    standard library only (pandas, pyarrow and tensorboard are imported inside functions)."""
    tree = ast.parse((SRC / "records.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    assert names <= {
        "__future__",
        "base64",
        "json",
        "math",
        "os",
        "collections",
        "pathlib",
        "stat",
        "typing",
    }, names
