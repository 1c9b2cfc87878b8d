"""The command line as people meet it, through the real ``breakeven`` command (a subprocess):
``--version``, help for every option with the choices and examples, the exit codes, one shape
for options that take several values, ``show`` on a sweep, and a missing dataset reported once
with nothing left behind."""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from breakeven.cli import DEPRECATED, PLOT_KINDS, THRESHOLDS_HELP, _parser
from breakeven.experiments.configs import PRESETS_DIR, list_presets, list_scales, load_config
from helpers import run_config
from test_analysis import peaked_sweep

COMMANDS = ["run", "sweep", "verdict", "presets", "show", "export", "report", "plot"]


def _breakeven(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess (this interpreter and PYTHONPATH)."""
    cmd = [sys.executable, "-m", "breakeven.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A sweep of four written runs (two learning rates, two seeds) whose plan names a fifth
    run not started yet."""
    root = tmp_path_factory.mktemp("usability") / "sweep"
    values = {(lr, s): (10 / lr + s, 1 / lr + s) for lr in (0.1, 0.01) for s in (0, 1)}
    peaked_sweep(root, [0.1, 0.01], [0, 1], values)
    spec = json.loads((root / "sweep.json").read_text())
    spec["runs"].append({"name": "lr=0.001_seed=0", "params": {"train.lr": 0.001}, "seed": 0})
    (root / "sweep.json").write_text(json.dumps(spec))
    return root


# ---------------------------------------------------------------- help, version, exit codes


def test_version_is_the_package_metadata():
    done = _breakeven("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"breakeven {version('breakeven')}"


def test_every_option_and_positional_of_every_command_has_help():
    parsers = _subparsers()
    assert sorted(parsers) == sorted(COMMANDS)
    for name, parser in parsers.items():
        for action in parser._actions:
            if set(action.option_strings) & set(DEPRECATED):
                assert action.help == argparse.SUPPRESS  # hidden old spellings
                continue
            what = f"{name} {action.option_strings or action.dest}"
            assert action.help and action.help.strip(), what
        assert "example" in (parser.epilog or ""), name
        assert f"breakeven {name}" in parser.epilog, name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_examples(command):
    done = _breakeven(command, "--help")
    assert done.returncode == 0, done.stderr
    examples = done.stdout.split("example")[-1]
    assert f"breakeven {command}" in examples
    # examples are shown as written (RawDescriptionHelpFormatter), one per line
    assert all(line.startswith("  breakeven ") for line in examples.splitlines()[1:] if line)


def test_help_documents_the_exit_codes_the_command_returns(tmp_path):
    done = _breakeven("--help")
    assert done.returncode == 0
    codes = dict(re.findall(r"^  (\d+)\s+(.*)$", done.stdout.split("exit codes:")[1], re.M))
    assert set(codes) == {"0", "1", "2", "130", "143"}
    assert "--version" in done.stdout
    # 2: invalid arguments (argparse), an unknown config, a directory that holds no run
    assert _breakeven("plot", "nope", str(tmp_path), "--out", "x.png").returncode == 2
    assert _breakeven("run", str(tmp_path / "missing.toml")).returncode == 2
    assert _breakeven("show", str(tmp_path)).returncode == 2


def test_the_choices_are_listed_from_the_registries():
    from breakeven.analysis import DEFAULT_THRESHOLDS
    from breakeven.plotting import FIGURES

    assert PLOT_KINDS == tuple(FIGURES)
    plot_help = " ".join(_breakeven("plot", "--help").stdout.split())
    for kind in FIGURES:
        assert kind in plot_help.replace("- ", "-")  # argparse may wrap at a hyphen
    scales = {
        s for n in list_presets() for s in list_scales(load_config(PRESETS_DIR / f"{n}.toml"))
    }
    assert {"full", "quick"} <= scales
    for command in ("run", "sweep"):
        text = " ".join(_breakeven(command, "--help").stdout.split())
        offered = re.search(r"the presets offer: ([\w, ]+)\.", text).group(1)
        assert set(offered.replace(" ", "").split(",")) == scales
    assert ",".join(format(t, "g") for t in DEFAULT_THRESHOLDS) in THRESHOLDS_HELP


# ---------------------------------------------------------------- one shape for lists


@pytest.mark.parametrize(
    "given",
    [
        ["--thresholds", "0.5,0.7"],
        ["--thresholds", "0.5", "--thresholds", "0.7"],
        ["--thresholds", "0.5,", "--thresholds", " 0.7"],
        ["--threshold", "0.5", "--threshold", "0.7"],  # the old spelling
    ],
)
@pytest.mark.parametrize("command", ["verdict", "report", "plot"])
def test_every_command_takes_lists_comma_separated_or_repeated(command, given, capsys):
    head = {"verdict": ["verdict", "S"], "report": ["report", "S"]}
    argv = head.get(command, ["plot", "trajectories", "S", "--out", "x.png"])
    assert _parser().parse_args(argv + given).thresholds == [0.5, 0.7]
    if command == "plot":
        for keys in (["--keys", "a,b", "--keys", "c"], ["--key", "a,b", "--key", "c"]):
            assert _parser().parse_args(argv + given + keys).keys == ["a", "b", "c"]
    with pytest.raises(SystemExit) as e:
        _parser().parse_args([*argv, "--thresholds", "0.5,high"])
    assert e.value.code == 2 and "'0.5,high' is invalid" in capsys.readouterr().err


@pytest.mark.slow  # five fresh interpreters: the parser test above covers each spelling
def test_lists_through_the_command_line_and_the_old_spelling_still_works(sweep_dir, tmp_path):
    headers = []
    for given in (["--thresholds", "0.5,0.7"], ["--threshold", "0.5", "--threshold", "0.7"]):
        done = _breakeven("verdict", str(sweep_dir), *given)
        assert done.returncode == 0, done.stderr
        header = done.stdout.splitlines()[1].split()
        headers.append([c for c in header if c.startswith("acc_")])
        assert done.stderr == ""
    assert headers[0] == headers[1] == ["acc_0.5_epoch", "acc_0.7_epoch"]
    done = _breakeven("verdict", str(sweep_dir), "--thresholds", "0.5,high")
    assert done.returncode == 2 and "'0.5,high' is invalid" in done.stderr
    for given in (
        ["--keys", "lambda_K_1,lambda_H_1"],
        ["--key", "lambda_K_1", "--key", "lambda_H_1"],
    ):
        out = tmp_path / f"{given[0].strip('-')}.svg"
        done = _breakeven("plot", "trajectories", str(sweep_dir), "--out", str(out), *given)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 0


# ---------------------------------------------------------------- show on a sweep


def test_show_prints_one_line_per_run_of_a_sweep(sweep_dir):
    done = _breakeven("show", str(sweep_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"sweep {sweep_dir}: 5 runs"
    header, rows = lines[1].split(), [line.split() for line in lines[2:]]
    assert header[:4] == ["run", "status", "steps", "val"]
    names = [r["name"] for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]]
    assert [r[0] for r in rows] == names  # the plan's order, one line each
    assert all(r[1:3] == ["finished", "40"] for r in rows[:4])
    assert rows[4][1:3] == ["not", "started"]
    assert rows[2][4:6] == ["1000", "(step"]  # max lambda_K^1 of lr=0.01, seed 0
    assert len(lines) == 2 + len(names)


# ---------------------------------------------------------------- a missing dataset

MISSING = """
[sweep]
grid = {{ "train.lr" = [0.1, 0.05, 0.02] }}
seeds = 2

[train]
model = "mlp"
model_kwargs = {{ hidden = [4] }}
dataset = "{dataset}"
batch_size = 10
epochs = 1
"""


@pytest.fixture
def no_data(tmp_path) -> dict[str, str]:
    """An environment where no dataset can be found: $BREAKEVEN_DATA and the user data
    directory are empty; skips when the system folder holds the dataset used."""
    dataset, folder = "cifar10", "cifar-10-batches-py"
    from breakeven.data import SYSTEM_DATA_DIRS

    if any((d / folder).exists() for d in SYSTEM_DATA_DIRS):
        pytest.skip(f"{folder} is installed system-wide")
    (tmp_path / "data").mkdir()
    (tmp_path / "xdg").mkdir()
    config = tmp_path / "missing.toml"
    config.write_text(MISSING.format(dataset=dataset))
    env = {"BREAKEVEN_DATA": str(tmp_path / "data"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    return {"config": str(config), **env}


def test_a_missing_dataset_stops_a_sweep_once_before_any_run(no_data, tmp_path):
    out = tmp_path / "sweep"
    env = {k: no_data[k] for k in ("BREAKEVEN_DATA", "XDG_DATA_HOME")}
    done = _breakeven("sweep", no_data["config"], "--workers", "2", "--out", str(out), env=env)
    both = done.stdout + done.stderr
    assert done.returncode == 2, both
    assert both.count("CIFAR-10 not found") == 1, both
    assert "6 skipped" in done.stdout
    assert not (out / "runs").exists()
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("out", [True, False])
def test_a_missing_dataset_leaves_no_run_directory(no_data, tmp_path, out):
    env = {k: no_data[k] for k in ("BREAKEVEN_DATA", "XDG_DATA_HOME")}
    work = tmp_path / "work"
    work.mkdir()
    args = ["run", no_data["config"], "--no-progress"]
    if out:
        args += ["--out", str(work / "run")]
    cmd = [sys.executable, "-m", "breakeven.cli", *args]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=work, env={**os.environ, **env}
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("CIFAR-10 not found") == 1
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------- the progress bar


def test_the_progress_bar_ends_with_the_final_evaluation(tmp_path, tiny_npz):
    from breakeven.experiments import run
    from breakeven.experiments.runner import _Progress
    from breakeven.records import read_summary

    # 12 steps, evaluated every 4: at the last step
    config = run_config(tmp_path / "tiny.toml", tiny_npz)
    for use_tqdm in (False, True):
        if use_tqdm:
            pytest.importorskip("tqdm")
        stream = io.StringIO()
        out = tmp_path / f"run-{use_tqdm}"
        run(config, out, progress=functools.partial(_Progress, use_tqdm, stream))
        final = read_summary(out)["final"]
        last = re.split(r"[\r\n]+", stream.getvalue().strip())[-1]
        assert f"acc{'=' if use_tqdm else ' '}{final['val_acc']:.3f}" in last, last


@pytest.mark.parametrize("use_tqdm", [False, True])
def test_an_evaluation_after_the_last_step_reaches_the_bar(use_tqdm):
    """The runner's order at the end: the last step updates the bar, then the final
    evaluation (and measurements) arrive: the bar must end with them."""
    from breakeven.experiments.runner import _Progress

    if use_tqdm:
        pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = _Progress(use_tqdm=use_tqdm, stream=stream)
    bar.start(12)
    bar.record({"step": 8, "measure": "eval", "values": {"val_acc": 0.5}})
    bar.loss = 0.3
    bar.update(12)
    bar.record({"step": 12, "measure": "eval", "values": {"val_acc": 0.75}})
    bar.record({"step": 12, "measure": "hessian", "values": {"lambda_H_1": 7.0}})
    bar.close()
    last = re.split(r"[\r\n]+", stream.getvalue().strip())[-1]
    sep = "=" if use_tqdm else " "
    assert f"acc{sep}0.750" in last and f"λH1{sep}7" in last, last
