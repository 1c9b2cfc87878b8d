"""Reading a run directory; no torch, so that ``analysis`` and ``plotting`` can use it.

The layout of a run directory and the format of a record are described in
:mod:`breakeven.tracking.store`, which writes them. :func:`load_run` returns the records as
a tidy pandas DataFrame; :func:`export` writes it to Parquet (needs pyarrow) or CSV.
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
    "decode_array",
    "export",
    "load_run",
    "read_config",
    "read_records",
    "read_status",
    "read_summary",
]

CONFIG, RECORDS, STATUS, CHECKPOINT, SUMMARY, MODEL = (
    "config.json",
    "records.jsonl",
    "status",
    "checkpoint.pt",
    "summary.json",
    "model.pt",
)
COLUMNS = ["run", "step", "epoch", "measure", "key", "value", "seconds", "matvecs"]


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


def export(
    path: str | os.PathLike, to: str = "parquet", out: str | os.PathLike | None = None
) -> Path:
    """Write :func:`load_run` of ``path`` to ``out`` (default ``<path>/records.<ext>``) as
    ``to='parquet'`` (needs pyarrow) or ``'csv'``; returns the file written."""
    if to not in ("parquet", "csv"):
        raise ValueError(f"to={to!r} is invalid: must be 'parquet' or 'csv'")
    if to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "exporting to Parquet needs pyarrow: pip install pyarrow (or use to='csv')"
            ) from e
    df = load_run(path)
    target = Path(out) if out is not None else Path(path) / f"records.{to}"
    if to == "parquet":
        df.to_parquet(target, index=False)
    else:
        df.to_csv(target, index=False)
    return target


def decode_array(d: dict[str, Any]) -> Any:
    """The numpy array of a record's ``arrays`` entry (``{"dtype", "shape", "data"}``, base64
    bytes; see ``breakeven.measures.tracked.encode_array``)."""
    import numpy as np

    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])
