"""Runs and sweeps as tables: what :mod:`breakeven.analysis` and :mod:`breakeven.plotting`
read. Records only; no torch, no model.

A sweep directory (written by ``breakeven sweep``) holds ``sweep.json`` and one run
directory per run under ``runs/``::

    sweep.json   {"kind": "sweep", "preset", "scale", "grid": {dotted key: [values]},
                  "seeds": [...], "overrides": [...],
                  "runs": [{"name", "params": {dotted key: value}, "seed"}, ...]}
    runs/<name>/ a run directory (see breakeven.tracking.store)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import (
    CONFIG,
    SWEEP_FILE,
    load_run,
    read_config,
    read_status,
    read_sweep_spec,
    short_key,
)

__all__ = ["SWEEP_FILE", "Runs", "read_runs", "read_sweep_spec", "short_key"]

#: TrainConfig fields copied into every row of :attr:`Runs.table`.
TRAIN_COLUMNS = ("model", "dataset", "lr", "batch_size", "momentum", "n_train", "init_seed")


@dataclass
class Runs:
    """Runs read from run and sweep directories.

    ``table``: one row per run, columns ``run`` (a unique name), ``path``, ``sweep`` (the
    sweep directory's name, or None), ``seed``, ``status``, the :data:`TRAIN_COLUMNS` of its
    config, and one column per swept key (its :func:`short_key`). ``records``: the tidy
    records of all runs (:func:`breakeven.load_run` columns), ``run`` matching ``table``.
    ``swept``: the short keys swept (in grid order); ``sweeps``: each sweep's ``sweep.json``.
    ``sources``: the run and sweep directories read, as given (empty when built otherwise).
    """

    table: Any
    records: Any
    swept: list[str] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


def _run_row(name: str, path: Path, sweep: str | None, seed: Any, params: dict) -> dict:
    config = read_config(path)
    train = config.get("train", {})
    row: dict[str, Any] = {
        "run": name,
        "path": str(path),
        "sweep": sweep,
        "seed": seed if seed is not None else train.get("init_seed"),
        "status": read_status(path) or "not started",
    }
    row.update({k: train.get(k) for k in TRAIN_COLUMNS})
    # list values (e.g. hidden sizes) as tuples, so that runs can be grouped by them
    row.update({short_key(k): tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    return row


def read_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Runs:
    """Read run directories and sweep directories (mixed) into :class:`Runs`.

    Runs of a sweep that have not started (no ``config.json`` yet) are left out. Run names
    are the run directories' names, prefixed by ``<sweep>/`` when several sweeps are read.
    """
    import pandas as pd

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("read_runs needs at least one run or sweep directory")
    n_sweeps = sum((Path(p) / SWEEP_FILE).exists() for p in items)
    rows, frames, swept, sweeps, configs = [], [], [], [], {}
    for item in items:
        p = Path(item)
        if (p / SWEEP_FILE).exists():
            spec = read_sweep_spec(p)
            sweeps.append(spec)
            for key in spec.get("grid", {}):
                if short_key(key) not in swept:
                    swept.append(short_key(key))
            members = [
                (r["name"], p / "runs" / r["name"], r.get("seed"), r.get("params", {}))
                for r in spec.get("runs", [])
            ]
            prefix = f"{p.resolve().name}/" if n_sweeps > 1 else ""
            sweep_name: str | None = p.resolve().name
        elif (p / CONFIG).exists():
            members = [(p.resolve().name, p, None, {})]
            prefix, sweep_name = "", None
        else:
            raise FileNotFoundError(
                f"{p} is neither a run directory ({CONFIG}) nor a sweep directory ({SWEEP_FILE})"
            )
        for name, run_path, seed, params in members:
            if not (run_path / CONFIG).exists():
                continue
            run = prefix + name
            if run in configs:
                raise ValueError(f"two runs are named {run!r}; read them separately")
            rows.append(_run_row(run, run_path, sweep_name, seed, params))
            configs[run] = read_config(run_path)
            df = load_run(run_path)
            df["run"] = run
            frames.append(df)
    records = pd.concat(frames, ignore_index=True) if frames else load_run([])
    return Runs(pd.DataFrame(rows), records, swept, sweeps, configs, [Path(p) for p in items])
