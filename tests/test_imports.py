"""Imports: the package imports its names on first use, and reading records never imports
torch (library and command line), each checked in a fresh interpreter."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import breakeven
from test_analysis import peaked_sweep
from test_export import _make_run

INIT = Path(breakeven.__file__)
HEAVY = ("torch", "pandas", "numpy")
# Seconds for one fresh interpreter: a few normally, minutes on a shared, busy machine.
TIMEOUT = 600


def _loaded_after(code: str) -> list[str]:
    """Which of HEAVY a fresh interpreter (this PYTHONPATH) has imported after ``code``."""
    probe = (
        f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _cli(*args: str) -> tuple[int, list[str], str]:
    """Run ``python -m breakeven.cli ARGS`` (as the console script does) in a fresh interpreter:
    its exit code, which of HEAVY it imported (reported at exit), and its stdout."""
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: print('LOADED', json.dumps([m for m in {HEAVY!r} "
        "if m in sys.modules]), file=sys.stderr))\n"
        f"sys.argv = ['breakeven', *{list(args)!r}]\n"
        "runpy.run_module('breakeven.cli', run_name='__main__')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    line = [x for x in p.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return p.returncode, json.loads(line.removeprefix("LOADED ")), p.stdout


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A sweep directory (two learning rates, two seeds) and a run written by the RunStore."""
    root = tmp_path_factory.mktemp("imports")
    values = {(lr, s): (10 / lr + s, 1 / lr + s) for lr in (0.1, 0.01) for s in (0, 1)}
    sweep = peaked_sweep(root / "sweep", [0.1, 0.01], [0, 1], values)
    run = _make_run(root / "run", 0.1)
    return {"sweep": str(sweep), "run": str(run), "root": root}


# ---------------------------------------------------------------- the lazy package


def _static_imports() -> dict[str, tuple[str, str]]:
    """The names the ``if TYPE_CHECKING:`` block of breakeven/__init__.py imports, each with
    its module and its name there (what type checkers see)."""
    tree = ast.parse(INIT.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))
    return {
        a.asname or a.name: ("breakeven." + node.module, a.name)
        for node in block.body
        for a in node.names
    }


def test_every_public_name_is_the_object_of_its_module():
    static = _static_imports()
    assert set(static) == set(breakeven.__all__) - {"__version__"}
    for name, (module, attr) in static.items():
        assert getattr(breakeven, name) is getattr(importlib.import_module(module), attr), name


def test_dir_lists_every_public_name_and_unknown_names_raise():
    assert set(breakeven.__all__) <= set(dir(breakeven))
    with pytest.raises(AttributeError, match=r"^module 'breakeven' has no attribute 'nope'$"):
        breakeven.nope  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope' from 'breakeven'"):
        from breakeven import nope  # noqa: F401


@pytest.mark.parametrize(
    "code",
    [
        # each name first, then the submodule of the same name
        "import breakeven as be; f = be.train; import breakeven.train; assert be.train is f",
        "import breakeven.experiments as ex; f = ex.sweep; import breakeven.experiments.sweep; "
        "assert ex.sweep is f",
        # the submodule first (as the runner does), then the name
        "import breakeven.train; import breakeven as be; assert callable(be.train); "
        "assert be.train is sys.modules['breakeven.train'].train",
        "import breakeven.experiments.sweep; import breakeven.experiments as ex; "
        "assert ex.sweep is sys.modules['breakeven.experiments.sweep'].sweep",
        "from breakeven import *; assert train is sys.modules['breakeven.train'].train",
    ],
)
def test_a_submodule_never_hides_the_public_name_it_shares(code):
    _loaded_after(code)  # an assertion error there fails the subprocess


@pytest.mark.parametrize(
    "package",
    ["breakeven.experiments", "breakeven.integrations"],
)
def test_lazy_subpackages_resolve_their_public_names(package):
    if package == "breakeven.integrations":
        pytest.importorskip("lightning")
        pytest.importorskip("transformers")
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=rf"^module '{package}' has no attribute 'nope'$"):
        module.nope  # noqa: B018


# ---------------------------------------------------------------- no torch to read records


@pytest.mark.parametrize(
    "code",
    [
        "import breakeven",
        "import breakeven.records",
        "import breakeven.analysis",
        "import breakeven.errors",
        "import breakeven.experiments.configs",
        "from breakeven import ConfigError, RunStoreError, load_run, read_records, verdicts",
        "from breakeven.experiments import list_presets, load_config; list_presets()",
    ],
)
def test_importing_the_light_modules_does_not_import_torch(code):
    assert "torch" not in _loaded_after(code)


def test_reading_runs_and_verdicts_do_not_import_torch(dirs):
    code = (
        "from breakeven.analysis import break_even_points, read_runs, verdicts\n"
        f"runs = read_runs({dirs['sweep']!r})\n"
        "assert len(runs.table) == 4, runs.table\n"
        "break_even_points(runs); verdicts(runs)\n"
        f"from breakeven.records import load_run; assert len(load_run({dirs['run']!r}))\n"
    )
    loaded = _loaded_after(code)
    assert "torch" not in loaded and "pandas" in loaded  # it did read the records


COMMANDS = ["run", "sweep", "verdict", "presets", "show", "export", "report", "plot"]


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_imports_neither_torch_nor_numpy_nor_pandas(args):
    code, loaded, out = _cli(*args)
    assert code == 0 and "usage: breakeven" in out
    assert loaded == []


@pytest.mark.parametrize(
    "args",
    [
        ["presets"],
        ["show", "{run}"],
        ["show", "{sweep}/runs/lr=0.1_seed=0"],
        ["verdict", "{sweep}"],
        ["verdict", "{sweep}", "--thresholds", "0.5,0.7", "--min-pairs", "1"],
        ["export", "{run}", "--out", "{root}/run.csv"],
        ["export", "{sweep}", "--to", "csv", "--out", "{root}/sweep.csv"],
        ["export", "{sweep}", "--to", "parquet", "--out", "{root}/sweep.parquet"],
        ["export", "{run}", "--to", "tensorboard", "--out", "{root}/tb"],
        ["report", "{sweep}", "--out", "{root}/report.html"],
    ],
)
def test_commands_that_read_records_do_not_import_torch(dirs, args):
    code, loaded, out = _cli(*[a.format(**dirs) for a in args])
    assert code == 0, out
    assert "torch" not in loaded
    if args[0] == "export":
        assert Path(out.strip()).exists()


def test_run_still_imports_torch_when_it_trains(tmp_path):
    """The negative control: the probe sees torch where it is imported (``run``)."""
    code, loaded, _ = _cli("run", str(tmp_path / "missing.toml"))
    assert code == 2 and "torch" in loaded
