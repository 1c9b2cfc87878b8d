"""The ``breakeven`` command: a thin shell over :mod:`breakeven.experiments`.

::

    breakeven run CONFIG_OR_PRESET [--set key=value ...] [--out DIR] [--no-progress]
    breakeven presets
    breakeven show RUN_DIR
    breakeven export RUN_DIR [--to parquet|csv] [--out FILE]

Exit codes: 0 finished, 1 the run failed or diverged, 2 invalid config, arguments or output
directory (nothing was trained).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import CorruptDatasetError, DatasetNotFoundError
from .experiments import list_presets, load_config, run
from .experiments.runner import EVAL_MEASURE, PRESETS_DIR
from .tracking.store import (
    RunStoreError,
    export,
    read_config,
    read_records,
    read_status,
    read_summary,
)
from .train import ConfigError

__all__ = ["main", "summarize"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="breakeven", description="Track the break-even point of neural-network training."
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and track one run (resumes an interrupted one)")
    r.add_argument("config", help="a TOML file or a preset name (see `breakeven presets`)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=0.05 or track.covariance.every=100",
    )
    r.add_argument("--out", help="run directory (default runs/<name>[-<hash of the --set>])")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("presets", help="list the bundled presets")
    s = sub.add_parser("show", help="summary table of a run directory")
    s.add_argument("run_dir")
    e = sub.add_parser("export", help="write a run's records as a tidy table")
    e.add_argument("run_dir")
    e.add_argument("--to", choices=["parquet", "csv"], default="csv")
    e.add_argument("--out", help="file to write (default RUN_DIR/records.<ext>)")
    return p


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def summarize(run_dir: str | Path) -> list[tuple[str, str]]:
    """The rows of ``breakeven show``: status, steps, final loss/accuracy, max lambda_K^1 and
    lambda_H^1 (with their steps), and the measurement time per measure as a fraction of
    the training wall time."""
    path = Path(run_dir)
    config = read_config(path)
    records = read_records(path)
    summary = read_summary(path) or {}
    rows = [("run", str(path)), ("config", str(config.get("name", "-")))]
    rows.append(("status", read_status(path) or "-"))
    last_step = max((r["step"] for r in records), default=0)
    rows.append(("steps", _fmt(summary.get("steps", last_step), "d")))
    evals = [r for r in records if r["measure"] == EVAL_MEASURE]
    if evals:
        v = evals[-1]["values"]
        rows.append(
            (
                "final train loss / acc",
                f"{_fmt(v.get('train_loss'))} / {_fmt(v.get('train_acc'), '.4f')}",
            )
        )
        rows.append(
            ("final val loss / acc", f"{_fmt(v.get('val_loss'))} / {_fmt(v.get('val_acc'), '.4f')}")
        )
    elif summary.get("last_loss") is not None:
        rows.append(("last mini-batch loss", _fmt(summary["last_loss"])))
    for key, label in (("lambda_K_1", "max lambda_K^1"), ("lambda_H_1", "max lambda_H^1")):
        found = [(r["values"][key], r["step"]) for r in records if key in r.get("values", {})]
        found = [(v, s) for v, s in found if v is not None and not math.isnan(v)]
        if found:
            v, s = max(found)
            rows.append((label, f"{_fmt(v)} (step {s})"))
    total = summary.get("seconds")
    rows.append(("wall time", f"{total:.1f} s" if total else "- (run not ended)"))
    cost: dict[str, float] = {}
    for r in records:
        cost[r["measure"]] = cost.get(r["measure"], 0.0) + float(r.get("seconds") or 0.0)
    for measure, seconds in sorted(cost.items()):
        share = f" ({100 * seconds / total:.1f}% of wall time)" if total else ""
        rows.append((f"time: {measure}", f"{seconds:.2f} s{share}"))
    return rows


def _show(run_dir: str) -> int:
    rows = summarize(run_dir)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _presets() -> int:
    names = list_presets()
    width = max((len(n) for n in names), default=0)
    for name in names:
        description = load_config(PRESETS_DIR / f"{name}.toml").get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    outcome = run(args.config, args.out, args.overrides, progress=not args.no_progress)
    if outcome.result is None and outcome.error is None:
        print(f"{outcome.path}: the run has already ended ({outcome.status}); nothing to do")
    elif outcome.resumed_from is not None:
        print(f"resumed from the checkpoint at step {outcome.resumed_from}")
    if outcome.error is not None:
        print(f"error: {outcome.status}", file=sys.stderr)
        return 1
    _show(str(outcome.path))
    return 0 if outcome.status == "finished" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``breakeven`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "presets":
            return _presets()
        if args.command == "show":
            return _show(args.run_dir)
        print(export(args.run_dir, args.to, args.out))
        return 0
    except (ConfigError, RunStoreError, DatasetNotFoundError, CorruptDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
