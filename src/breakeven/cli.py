"""The ``breakeven`` command: a thin shell over :mod:`breakeven.experiments`.

::

    breakeven run CONFIG_OR_PRESET [--scale quick|full] [--set key=value ...] [--out DIR]
                  [--log tensorboard|mlflow|wandb ...]
    breakeven sweep PRESET [--scale quick|full] [--grid key=v1,v2,...] [--seeds N]
                    [--workers N] [--backend local|ray] [--address ADDR] [--set ...] [--out DIR]
                    [--log tensorboard|mlflow|wandb ...]
    breakeven verdict SWEEP_DIR... [--support F] [--min-pairs N] [--thresholds a,b,...]
    breakeven presets
    breakeven show RUN_OR_SWEEP
    breakeven export RUN_OR_SWEEP [--to tensorboard|parquet|csv] [--out PATH]
    breakeven report RUN_OR_SWEEP... [--out report.html] [--thresholds a,b,...]
                     [--progress | --no-progress]
    breakeven plot KIND RUN_OR_SWEEP... --out FILE.png|pdf|svg [--keys K1,K2] [--thresholds a,b]
    breakeven --version

Options that take several values take them comma-separated (``--thresholds 0.5,0.65``);
repeating the option adds more. The old spellings ``--threshold T`` and ``--key K`` of
``plot`` still work (deprecated, hidden from ``--help``).

Exit codes: 0 finished, 1 the run failed or diverged, 2 invalid config, arguments or output
directory (nothing was trained), or a run or sweep file that cannot be read or written safely
(a one-line message naming the file); 130 / 143 ``breakeven run`` was interrupted (Ctrl-C) /
terminated (SIGTERM): its status says so, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Only light modules at the top: the commands that read records (show, verdict, export,
# presets, --help) never import torch; run and sweep import it when they start.
from ._core.formatting import fmt, package_version
from .errors import ConfigError, CorruptDatasetError, DatasetNotFoundError
from .records import (
    EVAL_MEASURE,
    RunStoreError,
    canonical_key,
    export_run,
    inside,
    key_symbol,
    load_run,
    read_config,
    read_records,
    read_status,
    read_summary,
)

__all__ = ["main", "summarize"]


LOG_HELP = (
    "log every record live: tensorboard, mlflow or wandb (repeat for several; under "
    "<run>/logs/ by default), or one option, e.g. wandb.project=NAME or "
    "mlflow.tracking_uri=URI"
)

EXIT_CODES = """exit codes:
  0    finished (every run of a sweep finished or diverged; a command that reads records)
  1    a run failed or diverged (run), or a run of the sweep failed (sweep)
  2    invalid arguments, config or output directory (nothing was trained), a dataset
       that cannot be found or read (reported once), or a run or sweep file that cannot
       be read or written safely (a one-line message naming the file; `show` of a
       sweep still prints its other runs)
  130  `breakeven run` was interrupted (Ctrl-C): its status says so; rerun to resume
  143  `breakeven run` was terminated (SIGTERM): its status says so; rerun to resume
"""

#: Examples shown at the end of each subcommand's help.
EXAMPLES = {
    "run": """examples:
  breakeven run fig4_simplecnn_lr --scale quick
  breakeven run my.toml --set train.lr=0.05 --set track.covariance.every=100 --out runs/a""",
    "sweep": """examples:
  breakeven sweep fig4_simplecnn_lr --scale quick --workers 2
  breakeven sweep fig4_simplecnn_lr --grid lr=0.1,0.01 --grid batch_size=64,128 --seeds 3""",
    "verdict": """examples:
  breakeven verdict runs/sweeps/fig4_simplecnn_lr-quick
  breakeven verdict runs/sweeps/a runs/sweeps/b --thresholds 0.5,0.65 --min-pairs 2""",
    "presets": """example:
  breakeven presets""",
    "show": """examples:
  breakeven show runs/fig4_simplecnn_lr
  breakeven show runs/sweeps/fig4_simplecnn_lr-quick    (one line per run)""",
    "export": """examples:
  breakeven export runs/sweeps/fig4_simplecnn_lr-quick --to parquet
  breakeven export runs/fig4_simplecnn_lr --to tensorboard --out tb/""",
    "report": """examples:
  breakeven report runs/sweeps/fig4_simplecnn_lr-quick
  breakeven report runs/sweeps/a runs/sweeps/b --out report.html --thresholds 0.5,0.65""",
    "plot": """examples:
  breakeven plot trajectories runs/sweeps/fig4_simplecnn_lr-quick --out traj.png
  breakeven plot trajectories RUN --keys lambda_K_1,trace_K --thresholds 0.5,0.65 --out t.svg""",
}


def _preset_scales() -> list[str]:
    """The scales the bundled presets offer (``full`` first), read from their TOML files."""
    from .experiments.configs import FULL, PRESETS_DIR, list_presets, list_scales, load_config

    scales = [FULL]
    for name in list_presets():
        for scale in list_scales(load_config(PRESETS_DIR / f"{name}.toml")):
            if scale not in scales:
                scales.append(scale)
    return scales


def _accuracy(text: str) -> float:
    """A training accuracy: a number in (0, 1] (argparse ``type``; ValueError otherwise)."""
    value = float(text)
    if not 0 < value <= 1:  # also refuses nan
        raise ValueError(text)
    return value


def _comma_list(convert: Any) -> Any:
    """An argparse ``type``: ``"a,b"`` as a list of ``convert``-ed items (empty items dropped)."""

    def parse(text: str) -> list[Any]:
        try:
            values = [convert(t.strip()) for t in text.split(",") if t.strip()]
            if not values:
                raise ValueError(text)
            return values
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is invalid: must be comma-separated values like 0.5,0.65"
                + (" (accuracies in (0, 1])" if convert is _accuracy else "")
            ) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


#: Old spellings that still work, hidden from ``--help``: old -> new.
DEPRECATED = {"--threshold": "--thresholds", "--key": "--keys"}


def _list_option(
    parser: argparse.ArgumentParser, name: str, old: str, convert: Any, metavar: str, help: str
) -> None:
    """``--NAME A,B,...`` (also repeated: the lists are joined), and ``--OLD A`` (the old,
    repeated spelling) as a deprecated alias of it, hidden from ``--help`` (listed in
    :data:`DEPRECATED`)."""
    dest = name.removeprefix("--")
    parser.add_argument(
        name,
        dest=dest,
        action="extend",
        type=_comma_list(convert),
        metavar=f"{metavar},...",
        help=help + " (comma-separated; repeating the option adds more)",
    )
    assert old in DEPRECATED
    parser.add_argument(
        old, dest=dest, action="extend", type=_comma_list(convert), help=argparse.SUPPRESS
    )


def _sub(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="breakeven",
        description="Track the break-even point of neural-network training.",
        epilog=EXIT_CODES
        + "\nRun `breakeven COMMAND --help` for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scales = ", ".join(_preset_scales())
    scale_help = (
        "the config's scale: full (its own values, for a preset the paper's; default) or the "
        f"name of one of its [scale.NAME] tables; the presets offer: {scales}."
    )
    r = _sub(sub, "run", "train and track one run (resumes an interrupted one)")
    r.add_argument("config", help="a TOML file or a preset name (see `breakeven presets`)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=0.05 or track.covariance.every=100 "
        "(repeat for more)",
    )
    r.add_argument("--out", help="run directory (default runs/<name>[-<hash of the --set>])")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log", action="append", default=[], metavar="SINK[.KEY=VALUE]", help=LOG_HELP)
    r.add_argument("--scale", metavar="SCALE", help=scale_help)
    w = _sub(sub, "sweep", "run a preset over a grid of values and seeds (resumable)")
    w.add_argument("config", help="a TOML file or a preset name (see `breakeven presets`)")
    w.add_argument("--scale", metavar="SCALE", help=scale_help)
    w.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="swept values, e.g. lr=0.1,0.01 (repeat for a product; replaces the preset's grid)",
    )
    w.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the preset's)")
    w.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    w.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: worker processes on this machine (default); ray: Ray tasks of one CPU",
    )
    w.add_argument("--address", help="Ray cluster address (--backend ray; default: local Ray)")
    w.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run, e.g. train.epochs=2 (repeat for more)",
    )
    w.add_argument("--out", help="sweep directory (default runs/sweeps/<preset>-<scale>)")
    w.add_argument("--log", action="append", default=[], metavar="SINK[.KEY=VALUE]", help=LOG_HELP)
    v = _sub(sub, "verdict", "break-even points and conjecture verdicts of sweeps")
    v.add_argument(
        "paths", nargs="+", metavar="SWEEP_DIR", help="sweep (or run) directories, read together"
    )
    v.add_argument("--support", type=float, help="fraction of ordered pairs (default 0.8)")
    v.add_argument("--min-pairs", type=int, help="fewest untied pairs for a verdict (default 3)")
    _list_option(v, "--thresholds", "--threshold", _accuracy, "ACC", THRESHOLDS_HELP)
    _sub(sub, "presets", "list the bundled presets")
    s = _sub(sub, "show", "summary table of a run directory, or one line per run of a sweep")
    s.add_argument("run_dir", metavar="RUN_OR_SWEEP", help="a run directory or a sweep directory")
    e = _sub(
        sub, "export", "write the records of a run or a sweep as a tidy table or TensorBoard events"
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
    rp = _sub(sub, "report", "one self-contained HTML report of runs and sweeps")
    rp.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_SWEEP",
        help="run and sweep directories, reported together",
    )
    rp.add_argument("--out", help="the HTML file (default: report.html in the first directory)")
    _list_option(rp, "--thresholds", "--threshold", _accuracy, "ACC", THRESHOLDS_HELP)
    rp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress bar on stderr over the figures drawn (default: when stderr is a terminal)",
    )
    f = _sub(sub, "plot", "draw a figure of runs and sweeps (PNG, PDF or SVG)")
    # not choices=: plot() names the kinds in its one-line error (exit 2, as for other errors)
    f.add_argument("kind", metavar="KIND", help="one of: " + ", ".join(PLOT_KINDS))
    f.add_argument(
        "paths", nargs="+", metavar="RUN_OR_SWEEP", help="run and sweep directories, drawn together"
    )
    f.add_argument("--out", required=True, help="the file to write: .png, .pdf or .svg")
    _list_option(
        f,
        "--keys",
        "--key",
        str,
        "KEY",
        "trajectories: the keys to plot ('measure:key' picks the measure); "
        "embedding: the background key; m1-vs-m128: the K key",
    )
    _list_option(
        f,
        "--thresholds",
        "--threshold",
        _accuracy,
        "ACC",
        "trajectories, batchnorm: training accuracies marked by dashed lines",
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


_fmt = functools.partial(fmt, nan="-")  # a missing or NaN value shows as "-"


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
        v = {canonical_key(k): x for k, x in evals[-1]["values"].items()}
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
    from .records import SWEEP_FILE

    if (Path(run_dir) / SWEEP_FILE).exists():
        return _show_sweep(Path(run_dir))
    rows = summarize(run_dir)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _show_sweep(path: Path) -> int:
    """``breakeven show SWEEP_DIR``: the sweep's runs in its plan's order, one line each
    (status, steps, final validation accuracy, the maxima of ``breakeven show RUN``); a
    run not started yet shows ``not started``. A run whose files cannot be read shows
    ``cannot be read:`` and why (naming the file) on its line, after which the others are
    still shown; the exit code is then 2 (else 0)."""
    from .analysis import TOP_EIGENVALUES
    from .records import read_sweep_spec

    maxima = [_max_label(key) for key, _ in TOP_EIGENVALUES]
    header = ["run", "status", "steps", "val acc", *maxima]
    table: list[list[str]] = [header]
    unreadable: dict[int, str] = {}  # row -> why
    for run in read_sweep_spec(path).get("runs", []):
        run_dir = inside(path, "runs", run["name"])
        try:
            rows = dict(summarize(run_dir))
        except FileNotFoundError:  # no config.json: the sweep has not reached this run
            table.append([run["name"], "not started"] + ["-"] * (len(header) - 2))
            continue
        except RunStoreError as e:
            unreadable[len(table)] = f"cannot be read: {e}"
            table.append([run["name"]])
            continue
        val = rows.get("final val loss / acc", "- / -").rpartition(" / ")[2]
        table.append(
            [run["name"], rows["status"], rows["steps"], val, *(rows.get(m, "-") for m in maxima)]
        )
    widths = [max(len(row[i]) for row in table if len(row) > i) for i in range(len(header))]
    print(f"sweep {path}: {len(table) - 1} runs")
    for i, row in enumerate(table):
        cells = [*row, unreadable[i]] if i in unreadable else row
        print("  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip())
    return 2 if unreadable else 0


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
    (``lambda_K_1`` -> ``max lambda_K^1 after step 0``; the key catalogue's symbol)."""
    return f"max {key_symbol(key)} after step 0"


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
        args.paths, args.thresholds, **{k: v for k, v in rule.items() if v is not None}
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
        decide_verdict,
        read_runs,
        verdicts,
    )

    try:  # the rule's options, checked before anything is printed
        decide_verdict(0, 0, **rule)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
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
        from .analysis.verdicts import no_verdict_reason

        print(f"No verdicts: {no_verdict_reason(runs)}")
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
            log=args.log,
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
            args.config,
            args.out,
            args.overrides,
            scale=args.scale,
            progress=not args.no_progress,
            log=args.log,
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
        print(export_run(path, args.to, args.out))
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
THRESHOLDS_HELP = "training accuracies to report crossings of (default 0.5,0.65,0.8)"


def _report(args: argparse.Namespace) -> int:
    from .plotting import report

    out = args.out or inside(args.paths[0], "report.html")
    given = {} if args.thresholds is None else {"thresholds": args.thresholds}
    print(report(args.paths, out, progress=args.progress, **given))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plotting import plot

    given = {
        "thresholds": args.thresholds,
        "smooth": args.smooth,
        "x": args.x,
        "until_accuracy": args.until_accuracy,
    }
    options = {k: v for k, v in given.items() if v is not None}
    try:
        print(plot(args.kind, args.paths, args.out, keys=args.keys, **options))
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
