"""Reading a run directory; no torch, so that ``analysis`` and ``plotting`` can use it.

The layout of a run directory and the format of a record are described in
:mod:`breakeven.tracking.store`, which writes them. :func:`load_run` returns the records as
a tidy pandas DataFrame; :func:`export` writes it to TensorBoard event files (needs the
``tensorboard`` package), Parquet (needs pyarrow) or CSV, and :func:`write_records` writes any
such table (e.g. a sweep's, from :func:`breakeven.analysis.read_runs`).
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "EVAL_MEASURE",
    "EXPORT_FORMATS",
    "SWEEP_FILE",
    "decode_array",
    "default_export_path",
    "export",
    "load_run",
    "read_config",
    "read_records",
    "read_status",
    "read_summary",
    "short_key",
    "write_records",
]

CONFIG, RECORDS, STATUS, CHECKPOINT, SUMMARY, MODEL = (
    "config.json",
    "records.jsonl",
    "status",
    "checkpoint.pt",
    "summary.json",
    "model.pt",
)
SWEEP_FILE = "sweep.json"  # a sweep directory's plan (see breakeven.experiments.sweep)
EVAL_MEASURE = "evaluation"  # the measure name of the training loop's evaluation records
COLUMNS = ["run", "step", "epoch", "measure", "key", "value", "seconds", "matvecs"]


def short_key(key: str) -> str:
    """The name of a dotted config key in run names and tables: its last part
    (``train.lr`` -> ``lr``)."""
    return key.rsplit(".", 1)[-1]


def read_status(path: str | os.PathLike) -> str | None:
    """The status of the run in ``path`` (None if it has none)."""
    p = Path(path) / STATUS
    return p.read_text().strip() if p.exists() else None


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The resolved config of the run in ``path``."""
    p = Path(path) / CONFIG
    if not p.exists():
        raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG}")
    return json.loads(p.read_text())


def read_summary(path: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json of a run that ended, else None."""
    p = Path(path) / SUMMARY
    return json.loads(p.read_text()) if p.exists() else None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of the run in ``path``, in order. An incomplete last line (a
    kill or a full disk during a write) is ignored; a malformed complete line raises
    ``ValueError`` naming it."""
    p = Path(path) / RECORDS
    if not p.exists():
        if not (Path(path) / CONFIG).exists():
            raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG}")
        return []
    data = p.read_bytes()
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is incomplete or empty
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{p}, line {i}: not a JSON record ({e})") from e
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if v is None:
        return math.nan
    return None  # lists, strings: not a scalar


def load_run(path: str | os.PathLike | Iterable[str | os.PathLike]) -> Any:
    """The records of one run directory (or several) as a tidy pandas DataFrame.

    One row per scalar value: columns ``run`` (the directory name), ``step``, ``epoch``,
    ``measure``, ``key``, ``value`` (float; booleans as 0/1, None as NaN), and the record's
    cost ``seconds`` and ``matvecs`` (repeated on each of its rows). Non-scalar values
    (lists) are left out. Incomplete last lines are ignored (see :func:`read_records`).
    """
    import pandas as pd

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    rows = []
    for p in paths:
        run = Path(p).resolve().name
        for r in read_records(p):
            for key, v in r.get("values", {}).items():
                x = _number(v)
                if x is not None:
                    rows.append(
                        (
                            run,
                            r.get("step"),
                            r.get("epoch"),
                            r.get("measure"),
                            key,
                            x,
                            r.get("seconds", math.nan),
                            r.get("matvecs", 0),
                        )
                    )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"step": "int64", "value": "float64", "seconds": "float64"})


EXPORT_FORMATS = ("tensorboard", "parquet", "csv")


def default_export_path(path: str | os.PathLike, to: str) -> Path:
    """Where :func:`export` writes by default: ``<path>/records.parquet``,
    ``<path>/records.csv`` or the directory ``<path>/tensorboard/``."""
    _check_format(to)
    return Path(path) / ("tensorboard" if to == "tensorboard" else f"records.{to}")


def _check_format(to: str) -> None:
    if to not in EXPORT_FORMATS:
        raise ValueError(f"to={to!r} is invalid: must be 'tensorboard', 'parquet' or 'csv'")


def _require(to: str) -> None:
    """Raise a clear ImportError when the package that writes ``to`` is missing."""
    if to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "exporting to Parquet needs pyarrow: pip install pyarrow "
                "(or pip install 'breakeven[parquet]'; or use to='csv')"
            ) from e
    elif to == "tensorboard":
        try:
            from tensorboard.summary import Writer  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "exporting to TensorBoard needs the tensorboard package: "
                "pip install 'breakeven[tensorboard]'"
            ) from e


def write_records(records: Any, to: str, out: str | os.PathLike) -> Path:
    """Write a tidy records table (the :func:`load_run` columns, several runs told apart by
    ``run``) to ``out``; returns ``out``.

    ``to='parquet'`` (needs pyarrow) or ``'csv'``: one file, the table as it is.
    ``to='tensorboard'`` (needs the ``tensorboard`` package): event files in one
    subdirectory of ``out`` per run (``out/<run>/``, so ``tensorboard --logdir out`` shows
    the runs side by side), one scalar series per measure and key, tagged
    ``<measure>/<key>`` (e.g. ``covariance/lambda_K_1``, ``hessian/lambda_H_1``,
    ``evaluation/val_loss``), at ``global_step = step``. TensorBoard stores each value as a
    float32 (NaN stays NaN). Event files left in ``out/<run>/`` by an earlier export are
    removed first, so exporting again replaces the series instead of doubling them.
    """
    _check_format(to)
    _require(to)
    target = Path(out)
    if to == "parquet":
        records.to_parquet(target, index=False)
    elif to == "csv":
        records.to_csv(target, index=False)
    else:
        _write_tensorboard(records, target)
    return target


def _write_tensorboard(records: Any, out: Path) -> None:
    from tensorboard.summary import Writer

    out.mkdir(parents=True, exist_ok=True)
    for run, frame in records.groupby("run", sort=False):
        run_dir = out / str(run)
        if run_dir.resolve() == out.resolve() or out.resolve() not in run_dir.resolve().parents:
            raise ValueError(f"run name {run!r} does not name a subdirectory of {out}")
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.glob("events.out.tfevents.*"):
            old.unlink()
        writer = Writer(str(run_dir))
        try:
            tags = frame["measure"].astype(str) + "/" + frame["key"].astype(str)
            for tag, step, value in zip(tags, frame["step"], frame["value"]):
                writer.add_scalar(tag, float(value), int(step))
        finally:
            writer.close()


def export(
    path: str | os.PathLike, to: str = "parquet", out: str | os.PathLike | None = None
) -> Path:
    """Write the records of the run directory ``path`` (:func:`load_run`) with
    :func:`write_records` as ``to='tensorboard'``, ``'parquet'`` or ``'csv'`` to ``out``
    (default :func:`default_export_path`: ``<path>/records.<ext>`` or ``<path>/tensorboard/``);
    returns the file or directory written. A missing writer package raises ImportError
    naming what to install, before anything is read.

    A sweep directory (``sweep.json`` and ``runs/``) is read by
    :func:`breakeven.analysis.read_runs`; ``breakeven export SWEEP`` writes all its runs
    (one file, or one TensorBoard subdirectory per run), as does
    ``write_records(read_runs(sweep).records, to, out)``.
    """
    _check_format(to)
    _require(to)
    if not (Path(path) / CONFIG).exists() and (Path(path) / SWEEP_FILE).exists():
        raise ValueError(
            f"{path} is a sweep directory: export it with `breakeven export {path}` or "
            "write_records(breakeven.analysis.read_runs(path).records, to, out)"
        )
    df = load_run(path)
    return write_records(df, to, out if out is not None else default_export_path(path, to))


def decode_array(d: dict[str, Any]) -> Any:
    """The numpy array of a record's ``arrays`` entry (``{"dtype", "shape", "data"}``, base64
    bytes; see ``breakeven.measures.tracked.encode_array``)."""
    import numpy as np

    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])
