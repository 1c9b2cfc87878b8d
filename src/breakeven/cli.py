"""The ``breakeven`` command: a thin shell over :mod:`breakeven.experiments`.

::

    breakeven run CONFIG_OR_PRESET [--scale quick|full] [--set key=value ...] [--out DIR]
    breakeven sweep PRESET [--scale quick|full] [--grid key=v1,v2,...] [--seeds N]
                    [--workers N] [--backend local|ray] [--address ADDR] [--set ...] [--out DIR]
    breakeven verdict SWEEP_DIR... [--support F] [--min-pairs N] [--thresholds a,b,...]
    breakeven presets
    breakeven show RUN_DIR
    breakeven export RUN_OR_SWEEP [--to tensorboard|parquet|csv] [--out PATH]
    breakeven report RUN_OR_SWEEP... [--out report.html] [--thresholds a,b,...]
                     [--progress | --no-progress]
    breakeven plot KIND RUN_OR_SWEEP... --out FILE.png|pdf|svg [--key KEY ...] [--threshold T ...]

Exit codes: 0 finished, 1 the run failed or diverged, 2 invalid config, arguments or output
directory (nothing was trained), or a run or sweep file that cannot be read or written safely
(a one-line message naming the file); 130 / 143 ``breakeven run`` was interrupted (Ctrl-C) /
terminated (SIGTERM): its status says so, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Only light modules at the top: the commands that read records (show, verdict, export,
# presets, --help) never import torch; run and sweep import it when they start.
from .errors import ConfigError, CorruptDatasetError, DatasetNotFoundError
from .records import (
    EVAL_MEASURE,
    RunStoreError,
    export,
    inside,
    load_run,
    read_config,
    read_records,
    read_status,
    read_summary,
)

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
    r.add_argument("--scale", help="a preset's scale: full (the paper's values, default) or quick")
    w = sub.add_parser("sweep", help="run a preset over a grid of values and seeds (resumable)")
    w.add_argument("config", help="a TOML file or a preset name (see `breakeven presets`)")
    w.add_argument("--scale", help="full (the paper's values, default) or quick (minutes on a CPU)")
    w.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="swept values, e.g. lr=0.1,0.01 (repeat for a product; replaces the preset's grid)",
    )
    w.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the preset's)")
    w.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    w.add_argument("--backend", choices=["local", "ray"], default="local")
    w.add_argument("--address", help="Ray cluster address (--backend ray; default: local Ray)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    w.add_argument("--out", help="sweep directory (default runs/sweeps/<preset>-<scale>)")
    v = sub.add_parser("verdict", help="break-even points and conjecture verdicts of sweeps")
    v.add_argument("paths", nargs="+", metavar="SWEEP_DIR")
    v.add_argument("--support", type=float, help="fraction of ordered pairs (default 0.8)")
    v.add_argument("--min-pairs", type=int, help="fewest untied pairs for a verdict (default 3)")
    v.add_argument("--thresholds", help=THRESHOLDS_HELP)
    sub.add_parser("presets", help="list the bundled presets")
    s = sub.add_parser("show", help="summary table of a run directory")
    s.add_argument("run_dir")
    e = sub.add_parser(
        "export", help="write the records of a run or a sweep as a tidy table or TensorBoard events"
    )
    e.add_argument("run_dir", metavar="RUN_OR_SWEEP", help="a run directory or a sweep directory")
    e.add_argument(
        "--to",
        choices=["tensorboard", "parquet", "csv"],
        default="csv",
        help="csv (default) or parquet: one tidy table, all runs of a sweep in it; "
        "tensorboard: event files, one subdirectory per run",
    )
    e.add_argument(
        "--out",
        help="file (or, for tensorboard, directory) to write "
        "(default RUN_OR_SWEEP/records.<ext> or RUN_OR_SWEEP/tensorboard/)",
    )
    rp = sub.add_parser("report", help="one self-contained HTML report of runs and sweeps")
    rp.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP")
    rp.add_argument("--out", help="the HTML file (default: report.html in the first directory)")
    rp.add_argument("--thresholds", help=THRESHOLDS_HELP)
    rp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress bar on stderr over the figures drawn (default: when stderr is a terminal)",
    )
    f = sub.add_parser("plot", help="draw a figure of runs and sweeps (PNG, PDF or SVG)")
    f.add_argument("kind", metavar="KIND", help="one of: " + ", ".join(PLOT_KINDS))
    f.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP")
    f.add_argument("--out", required=True, help="the file to write: .png, .pdf or .svg")
    f.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help="trajectories: a key to plot (repeat; 'measure:key' picks the measure); "
        "embedding: the background key; m1-vs-m128: the K key",
    )
    f.add_argument(
        "--threshold",
        action="append",
        type=float,
        metavar="ACC",
        help="trajectories, batchnorm: training accuracy marked by dashed lines (repeat)",
    )
    f.add_argument(
        "--smooth",
        type=int,
        help="trajectories, batchnorm: moving-average window (a series of fewer than 3 windows "
        "of records is drawn unsmoothed)",
    )
    f.add_argument("--x", choices=["epoch", "step"], help="the x axis of curves over training")
    f.add_argument(
        "--until-accuracy",
        type=float,
        metavar="ACC",
        help="embedding: embed each run's steps up to its first evaluation with training "
        "accuracy >= ACC (the paper's Fig. 1: 0.65); default: all steps",
    )
    return p


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def summarize(run_dir: str | Path) -> list[tuple[str, str]]:
    """The rows of ``breakeven show``: status, steps, final loss/accuracy, the maxima of
    lambda_K^1 and lambda_H^1 along the trajectory (over steps >= 1, as in every table:
    :func:`breakeven.analysis.trajectory_max`; rows ``max lambda_K^1 after step 0``, with
    their steps), and the measurement time per measure as a fraction of the training wall
    time."""
    from .analysis import TOP_EIGENVALUES, series, trajectory_max

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
    frame = load_run(path)
    for key, measure in TOP_EIGENVALUES:
        m = trajectory_max(series(frame, key, measure))
        if m is not None:
            rows.append((_max_label(key), f"{_fmt(m.value)} (step {m.step})"))
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
    from .experiments.configs import PRESETS_DIR, list_presets, load_config

    names = list_presets()
    width = max((len(n) for n in names), default=0)
    for name in names:
        description = load_config(PRESETS_DIR / f"{name}.toml").get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def _max_label(key: str) -> str:
    """The label of the maximum of ``key`` along a trajectory in printed rows
    (``lambda_K_1`` -> ``max lambda_K^1 after step 0``)."""
    name, _, index = key.rpartition("_")
    return f"max {name}^{index} after step 0"


def _table(df: Any) -> str:
    """A DataFrame as aligned text, floats to 4 significant digits, missing values (NaN,
    None) as ``-``."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype.kind == "O":
            df[c] = df[c].map(lambda v: "-" if v is None else v)
    return df.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")


def _verdict(args: argparse.Namespace) -> int:
    rule = {"support": args.support, "min_pairs": args.min_pairs}
    return _print_verdicts(
        args.paths, _thresholds(args.thresholds), **{k: v for k, v in rule.items() if v is not None}
    )


def _print_verdicts(
    paths: Sequence[str], thresholds: Sequence[float] | None = None, **rule: Any
) -> int:
    """Print the break-even points (at the training accuracies ``thresholds``, default
    :data:`breakeven.analysis.DEFAULT_THRESHOLDS`) and the conjecture verdicts (``rule``: the
    options of :func:`breakeven.verdicts`) of run and sweep directories."""
    from .analysis import (
        BREAK_EVEN_NOTE,
        DEFAULT_THRESHOLDS,
        break_even_points,
        read_runs,
        verdicts,
    )

    if thresholds is None:
        thresholds = DEFAULT_THRESHOLDS
    runs = read_runs(paths)
    points = break_even_points(runs, thresholds)
    cols = [c for c in points.columns if not c.endswith("_epoch") or c.startswith("acc_")]
    print("Break-even points (steps; train acc interpolated between evaluations)")
    print(_table(points[cols]))
    print(BREAK_EVEN_NOTE)
    table = verdicts(runs, **rule)
    print()
    if table.empty:
        print(
            "No verdicts: the sweep varies no key with a predicted direction "
            "(lr, batch_size, momentum)"
        )
        return 0
    print("Conjecture verdicts (each run's maximum over its trajectory after step 0)")
    print(_table(table.drop(columns=["rule", "left_out"])))
    print(f"rule: {table['rule'].iloc[0]}")
    if table["left_out"].iloc[0]:
        print(f"left out: {table['left_out'].iloc[0]}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .experiments import parse_grid, sweep

    grid = parse_grid(args.grid) if args.grid else None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = None

    def on_done(name: str, status: str, seconds: float) -> None:
        line = f"{name}: {status} ({seconds:.0f} s)"
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            print(line, flush=True)

    from .experiments import plan_sweep

    plan = plan_sweep(
        args.config,
        grid=grid,
        seeds=args.seeds,
        scale=args.scale,
        overrides=args.overrides,
        workers=args.workers,
    )
    for note in plan.notes:
        print(f"note: {note}")
    if tqdm is not None:
        bar = tqdm(total=len(plan.runs), unit="run", file=sys.stderr, dynamic_ncols=True)
    try:
        outcome = sweep(
            plan,
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            out=args.out,
            on_done=on_done,
        )
    finally:
        if bar is not None:
            bar.close()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(outcome.counts.items()))
    print(f"sweep {outcome.path}: {counts}")
    if outcome.dataset_error is not None:
        print(f"error: {outcome.dataset_error}", file=sys.stderr)
        return 2
    if all(s.startswith("failed") or s == "skipped" for _, s, _ in outcome.runs):
        return 1
    print()
    _print_verdicts([str(outcome.path)])
    return 0 if all(s in ("finished", "diverged") for _, s, _ in outcome.runs) else 1


def _run(args: argparse.Namespace) -> int:
    from .experiments.runner import RunTerminated, run

    try:
        outcome = run(
            args.config, args.out, args.overrides, scale=args.scale, progress=not args.no_progress
        )
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (RunTerminated)
        terminated = isinstance(e, RunTerminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"error: {what}; run the same command again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports
        return 0 if outcome.status == "finished" else 1
    if outcome.result is None and outcome.error is None:
        print(f"{outcome.path}: the run has already ended ({outcome.status}); nothing to do")
    elif outcome.resumed_from is not None:
        print(f"resumed from the checkpoint at step {outcome.resumed_from}")
    if outcome.error is not None:
        print(f"error: {outcome.status}", file=sys.stderr)
        return 1
    _show(str(outcome.path))
    return 0 if outcome.status == "finished" else 1


def _export(args: argparse.Namespace) -> int:
    from .records import SWEEP_FILE, default_export_path, write_records

    path = Path(args.run_dir)
    if (path / SWEEP_FILE).exists():
        from .analysis import read_runs

        try:
            records = read_runs(path).records
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        out = args.out if args.out is not None else default_export_path(path, args.to)
        print(write_records(records, args.to, out))
    else:
        print(export(path, args.to, args.out))
    return 0


#: The figure kinds of ``breakeven plot`` (breakeven.plotting.FIGURES; not imported here, so
#: that the other commands do not need matplotlib).
PLOT_KINDS = (
    "trajectories",
    "hessian-vs-covariance",
    "loss-change",
    "spectra",
    "embedding",
    "m1-vs-m128",
    "batchnorm",
    "stability",
    "edge-of-stability",
    "adaptive-edge-of-stability",
)


#: Default: breakeven.analysis.DEFAULT_THRESHOLDS (not imported here: it needs numpy).
THRESHOLDS_HELP = "training accuracies to report crossings of"


def _thresholds(text: str | None) -> list[float] | None:
    """The ``--thresholds`` option as numbers; ``None`` when not given (the default)."""
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--thresholds {text!r}: must be numbers like 0.5,0.65") from None


def _report(args: argparse.Namespace) -> int:
    from .plotting import report

    out = args.out or inside(args.paths[0], "report.html")
    thresholds = _thresholds(args.thresholds)
    given = {} if thresholds is None else {"thresholds": thresholds}
    print(report(args.paths, out, progress=args.progress, **given))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plotting import plot

    given = {
        "thresholds": args.threshold,
        "smooth": args.smooth,
        "x": args.x,
        "until_accuracy": args.until_accuracy,
    }
    options = {k: v for k, v in given.items() if v is not None}
    try:
        print(plot(args.kind, args.paths, args.out, keys=args.key, **options))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``breakeven`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "verdict":
            return _verdict(args)
        if args.command == "presets":
            return _presets()
        if args.command == "show":
            return _show(args.run_dir)
        if args.command == "plot":
            return _plot(args)
        if args.command == "report":
            return _report(args)
        return _export(args)
    except (ConfigError, RunStoreError, DatasetNotFoundError, CorruptDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
