"""Never writing outside the place the user named, and readers that never crash obscurely:
names checked before anything is written, planted symbolic links never followed (tested with
real links through the real command line), malformed run files reported as one error naming
the file and line, and strict JSON for NaN and infinities."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from breakeven.cli import main
from breakeven.experiments import default_out_dir, plan_sweep, resolve_config, run, sweep
from breakeven.records import (
    MAX_NAME_BYTES,
    RunFileError,
    RunStoreError,
    UnsafePathError,
    atomic_write,
    inside,
    load_run,
    name_problem,
    open_for_writing,
    read_config,
    read_records,
    read_status,
    read_summary,
    read_sweep_spec,
)
from breakeven.tracking.store import RUN_FILES, RunStore
from breakeven.train import ConfigError
from helpers import run_config, write_run


@pytest.fixture
def config(tmp_path: Path, tiny_npz: Path) -> Path:
    """A tiny run config (3 steps on a tiny .npz dataset) with a one-run sweep table."""
    train = {"model_kwargs": {"hidden": [4]}, "batch_size": 20, "epochs": 1, "eval_every": 3}
    return run_config(
        tmp_path / "tiny.toml",
        tiny_npz,
        name="tiny",
        sweep={"grid": {"train.lr": [0.1]}, "seeds": 1},
        run={"checkpoint_every": 2},
        train=train,
        track=None,
    )


@pytest.fixture
def victim(tmp_path: Path):
    """A file outside every directory the tool is given, and a check that it is unchanged."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    before = path.stat().st_mtime_ns

    def unchanged() -> bool:
        return path.read_text() == "precious\n" and path.stat().st_mtime_ns == before

    unchanged.path = path
    return unchanged


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command line: ``python -m breakeven.cli ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "breakeven.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def one_error_line(text: str) -> str:
    """The CLI's error: one line starting with ``error:``, the last one, and no traceback
    (a sweep's progress bar may come before it)."""
    lines = [line for line in text.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and text.strip().endswith(lines[0]), text
    assert "Traceback" not in text, text
    return lines[0]


def make_run(path: Path, **values: float) -> Path:
    """A finished run directory written by the run store (no training)."""
    records = []
    for step in range(3):
        v = {"lambda_K_1": 1.0 + step, **values}
        records.append(
            {
                "step": step,
                "epoch": step / 3,
                "measure": "covariance",
                "values": v,
                "seconds": 0.1,
                "matvecs": 2,
            }
        )
    v = {"train_loss": 0.5, "train_acc": 0.6}
    records.append(
        {
            "step": 3,
            "epoch": 1.0,
            "measure": "evaluation",
            "values": v,
            "seconds": 0.0,
            "matvecs": 0,
        }
    )
    config = {"name": path.name, "train": {"lr": 0.1}, "track": {}}
    return write_run(path, records, config=config, summary={"steps": 3, "seconds": 1.0})


# ---------------------------------------------------------------- names


BAD_NAMES = [
    "",
    ".",
    "..",
    "a/b",
    "/abs/olute",
    "../up",
    "a\\b",
    "a\x00b",
    "a\nb",
    "tab\there",
    "x" * (MAX_NAME_BYTES + 1),
    "é" * (MAX_NAME_BYTES // 2 + 1),
    3,
    None,
]
GOOD_NAMES = ["mlp_fashion", "lr=0.1_seed=0", "a.b", "..a", "é", "x" * MAX_NAME_BYTES]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_saying_what_is_allowed(name, tmp_path: Path) -> None:
    why = name_problem(name)
    assert why is not None and "not '.' or '..', without '/'" in why
    with pytest.raises(ConfigError, match=r"name=.* is invalid: .*a name is 1 to 200 bytes"):
        resolve_config({"name": name})
    with pytest.raises(UnsafePathError, match="does not name a subdirectory or file inside"):
        inside(tmp_path, "ok", name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_names_are_accepted(name, tmp_path: Path) -> None:
    assert name_problem(name) is None
    assert resolve_config({"name": name}).name == name
    assert inside(tmp_path, name) == tmp_path / name
    assert default_out_dir({"name": name}) == Path("runs") / name


@pytest.mark.parametrize("name", ["..", ".", "/abs/x", "a/b", "x" * 300])
def test_a_run_name_never_writes_outside_runs(name, config, tmp_path, monkeypatch, capsys):
    """``name = ".."`` once wrote the run into the current directory, ``"."`` into runs/."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "model.pt").write_text("mine")
    assert main(["run", str(config), "--set", f"name={json.dumps(name)}", "--no-progress"]) == 2
    assert "is invalid" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in work.iterdir()) == ["model.pt"]
    assert (work / "model.pt").read_text() == "mine"


@pytest.mark.slow  # a fresh interpreter: test_a_run_name_never_writes_outside_runs is in-process
def test_a_run_named_dotdot_through_the_real_command_line(config, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('name = "tiny"', 'name = ".."'))
    done = cli("run", str(bad), "--no-progress", cwd=work)
    assert done.returncode == 2
    assert "name='..' is invalid" in one_error_line(done.stderr)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({"sweep./abs/dir/X": [1, 2]}, "grid key 'sweep./abs/dir/X' is unknown"),
        ({"scale./abs/X": [1]}, "grid key 'scale./abs/X' is unknown"),
        ({"name.x": [1]}, "grid key 'name.x' is unknown"),
        ({"train.model_kwargs./abs/X": [1]}, r"run name '/abs/X=1_seed=0', which is invalid"),
        ({"train.lr": [0.1], "train.model_kwargs.a\\b": [1]}, r"run name 'lr=0.1_a.*contains"),
    ],
)
def test_grid_keys_cannot_make_paths(config, grid, match) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_sweep(config, grid=grid)
    table = ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in grid.items())
    config.write_text(config.read_text().replace('"train.lr" = [0.1]', table))
    with pytest.raises(ConfigError, match=match):
        plan_sweep(config)  # the same grid in the TOML's [sweep] table


def test_grid_values_are_made_plain(config) -> None:
    plan = plan_sweep(config, grid={"train.model_kwargs.hidden": [[4], [2, 2]], "lr": [0.1]})
    assert [r.name for r in plan.runs] == ["hidden=4_lr=0.1_seed=0", "hidden=2-2_lr=0.1_seed=0"]


def test_a_sweep_name_and_scale_make_one_plain_directory_name(config) -> None:
    config.write_text(config.read_text().replace('name = "tiny"', 'name = "a/b"'))
    with pytest.raises(ConfigError, match=r"name='a/b' with scale 'full' is invalid"):
        plan_sweep(config)


@pytest.mark.slow  # a fresh interpreter: test_grid_keys_cannot_make_paths is in-process
def test_an_absolute_grid_key_through_the_real_command_line(config, tmp_path) -> None:
    target = tmp_path / "elsewhere"
    out = tmp_path / "sweep"
    done = cli("sweep", str(config), "--grid", f"sweep.{target}/X=1,2", "--out", str(out))
    assert done.returncode == 2
    assert "is unknown: use train.<key>" in one_error_line(done.stderr)
    assert not target.exists() and not out.exists()


# ---------------------------------------------------------------- planted symbolic links


def test_inside_and_open_for_writing_never_follow_links(tmp_path: Path, victim) -> None:
    root = tmp_path / "root"
    (root / "runs").mkdir(parents=True)
    (root / "link").symlink_to(victim.path)
    (root / "dirlink").symlink_to(victim.path.parent, target_is_directory=True)
    for parts in (["link"], ["dirlink", "x"], ["dirlink"]):
        with pytest.raises(UnsafePathError, match="is a symbolic link"):
            inside(root, *parts)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        open_for_writing(root / "link", append=True)
    with open_for_writing(root / "link") as f:  # a new file: the link is removed, not followed
        f.write(b"new")
    assert not (root / "link").is_symlink() and (root / "link").read_bytes() == b"new"
    (root / "tmp-target.tmp").symlink_to(victim.path)
    atomic_write(root / "tmp-target", lambda f: f.write(b"x"))
    (root / "over").symlink_to(victim.path)
    atomic_write(root / "over", lambda f: f.write(b"y"))  # rename replaces the link itself
    assert (root / "over").read_bytes() == b"y" and not (root / "over").is_symlink()
    os.mkfifo(root / "fifo")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_for_writing(root / "fifo", append=True)  # does not block without a reader
    assert victim()


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_link_where_a_run_file_goes_is_refused_before_anything_is_written(
    name, tmp_path: Path, victim
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(victim.path)
    store = RunStore(out)
    with pytest.raises(UnsafePathError, match=f"{name} is a symbolic link"):
        store.open({"name": "run"})
    assert sorted(p.name for p in out.iterdir()) == [name] and victim()


def test_stale_temporary_links_are_removed_not_followed(tmp_path: Path, victim) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in RUN_FILES:
        (out / f"{name}.tmp").symlink_to(victim.path)
    (out / ".write-test").symlink_to(victim.path)
    make_run(out)
    assert read_status(out) == "finished" and victim()
    assert not any(p.is_symlink() for p in out.iterdir())


@pytest.mark.slow  # end to end (make test-slow): the quick tests above cover each planted link
def test_cli_run_replaces_planted_temporary_links(config, tmp_path, victim) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in (
        ".write-test",
        "status.tmp",
        "checkpoint.pt.tmp",
        "summary.json.tmp",
        "model.pt.tmp",
        "config.json.tmp",
    ):
        (out / name).symlink_to(victim.path)
    done = cli("run", str(config), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert victim() and read_status(out) == "finished"
    assert not any(p.is_symlink() for p in out.iterdir())


def test_cli_run_refuses_a_linked_records_file(config, tmp_path, victim) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "records.jsonl").symlink_to(victim.path)
    done = cli("run", str(config), "--out", str(out), "--no-progress")
    assert done.returncode == 2
    assert "records.jsonl is a symbolic link" in one_error_line(done.stderr)
    assert victim() and sorted(p.name for p in out.iterdir()) == ["records.jsonl"]


def test_cli_export_never_writes_through_links(tmp_path, victim) -> None:
    out = make_run(tmp_path / "run")
    (out / "records.csv.tmp").symlink_to(victim.path)
    done = cli("export", str(out), "--to", "csv")
    assert done.returncode == 0, done.stderr
    assert victim() and not (out / "records.csv").is_symlink()
    assert len((out / "records.csv").read_text().splitlines()) == 1 + 5
    (out / "records.csv").unlink()
    (out / "records.csv").symlink_to(victim.path)
    done = cli("export", str(out), "--to", "csv")
    assert done.returncode == 2
    assert "records.csv is a symbolic link" in one_error_line(done.stderr)
    assert victim()


def test_cli_report_never_writes_through_links(tmp_path, victim, capsys) -> None:
    out = make_run(tmp_path / "run")
    (out / "report.html.tmp").symlink_to(victim.path)
    done = cli("report", str(out))
    assert done.returncode == 0, done.stderr
    assert victim() and (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    (out / "report.html").unlink()
    (out / "report.html").symlink_to(victim.path)
    assert main(["report", str(out)]) == 2  # the default path: refused
    assert "report.html is a symbolic link" in one_error_line(capsys.readouterr().err)
    assert victim()


@pytest.mark.slow  # end to end (make test-slow): the quick tests above cover each planted link
def test_cli_sweep_replaces_planted_temporary_links(config, tmp_path, victim) -> None:
    out = tmp_path / "sweep"
    member = out / "runs" / "lr=0.1_seed=0"
    member.mkdir(parents=True)
    (out / "sweep.json.tmp").symlink_to(victim.path)
    (member / ".write-test").symlink_to(victim.path)
    (member / "status.tmp").symlink_to(victim.path)
    done = cli("sweep", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert victim() and read_sweep_spec(out)["runs"][0]["name"] == member.name
    assert read_status(member) == "finished"


def test_cli_sweep_refuses_linked_directories(config, tmp_path, victim) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "runs").symlink_to(victim.path.parent, target_is_directory=True)
    done = cli("sweep", str(config), "--out", str(out))
    assert done.returncode == 2
    assert "runs is a symbolic link" in one_error_line(done.stderr)
    assert list(out.iterdir()) == [out / "runs"]  # refused before sweep.json was written
    (out / "runs").unlink()
    (out / "runs").mkdir()
    member = out / "runs" / "lr=0.1_seed=0"
    member.symlink_to(victim.path.parent, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"lr=0\.1_seed=0 is a symbolic link"):
        sweep(config, out=out)
    member.unlink()
    (out / "sweep.json").symlink_to(victim.path)
    with pytest.raises(UnsafePathError, match=r"sweep\.json is a symbolic link"):
        sweep(config, out=out)
    assert victim() and sorted(p.name for p in victim.path.parent.iterdir()) == ["victim.txt"]


# ---------------------------------------------------------------- readers


DEEP = b"[" * 100_000 + b"\n"
CORRUPT = [
    ("records.jsonl", b"\xff\xfe\n", r"records.jsonl, line 1: not UTF-8"),
    (
        "records.jsonl",
        b'{"step": 0, "measure": "m", "values": {}}\n[1, 2]\n',
        r"records.jsonl, line 2: a record must be an object, not a list",
    ),
    (
        "records.jsonl",
        b'{"step": "5", "measure": "m", "values": {}}\n',
        r"records.jsonl, line 1: step must be an integer, not a string",
    ),
    (
        "records.jsonl",
        b'{"step": 5, "measure": "m", "values": {"x": "big"}}\n',
        r"line 1: values\['x'\] must be a number, null or a list, not a string",
    ),
    (
        "records.jsonl",
        b'{"step": 5, "measure": "m", "values": [1]}\n',
        r"line 1: values must be an object, not a list",
    ),
    (
        "records.jsonl",
        b'{"step": 5, "measure": "m", "values": {}, "seconds": "1"}\n',
        r"line 1: seconds must be a number or null, not a string",
    ),
    ("records.jsonl", b'{"step": 5, "measure": "m"}\n', r"line 1: a record must have 'values'"),
    ("records.jsonl", DEEP, r"records.jsonl, line 1: not a JSON record \(nested too deeply\)"),
    ("config.json", b"[1, 2]", r"config.json: the content must be an object, not a list"),
    ("config.json", b'{"train": [1]}', r"config.json: train must be an object, not a list"),
    ("config.json", b'{"name": 1}', r"config.json: name must be a string, not an integer"),
    ("config.json", b'{\n"a": \xff}', r"config.json, line 2: not UTF-8 text"),
    ("config.json", b'{"a": 1,}', r"config.json, line 1: not valid JSON"),
    ("config.json", DEEP, r"config.json: JSON nested too deeply to read"),
    ("summary.json", b'{"steps": "many"}', r"summary.json: steps must be an integer or null"),
    ("summary.json", b'{"seconds": [1]}', r"summary.json: seconds must be a number or null"),
    ("summary.json", b'"finished"', r"summary.json: the content must be an object"),
    ("summary.json", DEEP, r"summary.json: JSON nested too deeply"),
    ("status", b"fin\xffished", r"status, line 1: not UTF-8 text"),
]


#: The commands that read each run file.
COMMANDS = {
    "records.jsonl": ("show", "export", "verdict", "report"),
    "config.json": ("show", "verdict", "report"),
    "summary.json": ("show",),
    "status": ("show", "verdict", "report"),
}


@pytest.mark.parametrize(("name", "data", "match"), CORRUPT)
def test_a_malformed_run_file_is_one_error_naming_it(name, data, match, tmp_path, capsys):
    out = make_run(tmp_path / "run")
    (out / name).write_bytes(data)
    with pytest.raises(RunFileError, match=match):
        read_config(out), read_records(out), read_summary(out), read_status(out)
    if name == "records.jsonl":
        with pytest.raises(RunFileError, match=match):
            load_run(out)
    if name == "config.json":
        with pytest.raises(RunFileError, match=match):
            RunStore(out).open({})
    for command in COMMANDS[name]:
        assert main([command, str(out)]) == 2
        assert f"{out / name}" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_fifo_or_directory_in_place_of_a_run_file_never_blocks(name, tmp_path, capsys):
    out = make_run(tmp_path / "run")
    (out / name).unlink()
    os.mkfifo(out / name)  # nobody writes to it: reading it would block forever
    for command in COMMANDS[name]:
        assert main([command, str(out)]) == 2
        assert f"{name} is not a regular file" in one_error_line(capsys.readouterr().err)
    if name in ("records.jsonl", "config.json"):  # the writer reads them when it resumes
        (out / "status").write_text("failed: interrupted\n")  # resumable: records are read
        for ended in ("summary.json", "model.pt"):
            (out / ended).unlink()
        with pytest.raises(RunStoreError, match="not a regular file"):
            RunStore(out).open({"name": "run", "train": {"lr": 0.1}, "track": {}})
    (out / name).unlink()
    (out / name).mkdir()
    with pytest.raises(RunFileError, match=f"{name} is not a regular file"):
        read_config(out), read_records(out), read_summary(out), read_status(out)


def test_a_fifo_through_the_real_command_line(tmp_path) -> None:
    out = make_run(tmp_path / "run")
    (out / "records.jsonl").unlink()
    os.mkfifo(out / "records.jsonl")
    done = cli("show", str(out))  # subprocess.run's timeout fails the test if it hangs
    assert done.returncode == 2
    assert "records.jsonl is not a regular file" in one_error_line(done.stderr)


def test_an_incomplete_last_line_is_still_ignored_but_not_a_middle_one(tmp_path) -> None:
    out = make_run(tmp_path / "run")
    good = (out / "records.jsonl").read_bytes()
    (out / "records.jsonl").write_bytes(good + b'{"step": 9, "meas')
    assert len(read_records(out)) == 4
    (out / "records.jsonl").write_bytes(good + b'{"step": 9, "meas\n' + good)
    with pytest.raises(RunFileError, match=r"records.jsonl, line 5: not a JSON record"):
        read_records(out)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([], r"sweep.json: the content must be an object, not a list"),
        ({"runs": [{"name": "../../x"}]}, r"runs\[0\].name='../../x' is invalid"),
        ({"runs": [{"name": "a", "params": 1}]}, r"runs\[0\]\.params must be an object"),
        ({"runs": {"a": 1}}, r"runs must be a list, not an object"),
        ({"grid": [], "runs": []}, r"grid must be an object"),
        ({"notes": [1], "runs": []}, r"each of notes must be a string"),
    ],
)
def test_a_malformed_sweep_file_is_one_error_naming_it(spec, match, tmp_path, capsys) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    with pytest.raises(RunFileError, match=match):
        read_sweep_spec(tmp_path)
    assert main(["verdict", str(tmp_path)]) == 2
    assert "sweep.json" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- NaN and infinities


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinities_are_strict_json_and_read_back_as_floats(tmp_path: Path) -> None:
    out = tmp_path / "run"
    store = RunStore(out)
    store.open({"name": "run", "train": {"lr": 0.1}})
    values = {
        "nan": math.nan,
        "inf": math.inf,
        "minus": -math.inf,
        "x": 1.5,
        "flag": True,
        "eigs": [1.0, math.nan, math.inf],
    }
    store.append(
        {
            "step": 0,
            "epoch": 0.0,
            "measure": "m",
            "values": values,
            "seconds": math.inf,
            "matvecs": 0,
        }
    )
    summary = {
        "status": "diverged",
        "steps": 1,
        "seconds": 2.0,
        "last_loss": math.nan,
        "final": {"val_loss": math.inf},
    }
    store.finish("diverged", summary, {})
    line = (out / "records.jsonl").read_text()
    record = strict(line)
    assert record["values"] == {
        "nan": None,
        "inf": "inf",
        "minus": "-inf",
        "x": 1.5,
        "flag": True,
        "eigs": [1.0, None, "inf"],
    }
    assert record["seconds"] == "inf"
    assert strict((out / "summary.json").read_text())["last_loss"] is None
    (back,) = read_records(out)
    v = back["values"]
    assert math.isnan(v["nan"]) and v["inf"] == math.inf and v["minus"] == -math.inf
    assert v["x"] == 1.5 and v["flag"] is True and back["seconds"] == math.inf
    assert v["eigs"][0] == 1.0 and math.isnan(v["eigs"][1]) and v["eigs"][2] == math.inf
    s = read_summary(out)
    assert s["last_loss"] is None and s["seconds"] == 2.0
    df = load_run(out).set_index("key")["value"]
    assert math.isnan(df["nan"]) and df["inf"] == math.inf and df["minus"] == -math.inf


def test_old_runs_with_bare_nan_still_read(tmp_path: Path) -> None:
    out = make_run(tmp_path / "run")
    record = {"step": 7, "measure": "m", "values": {"a": math.nan, "b": math.inf, "c": -math.inf}}
    with open(out / "records.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")  # json.dumps writes bare NaN, Infinity
    assert "NaN" in (out / "records.jsonl").read_text()
    v = read_records(out)[-1]["values"]
    assert math.isnan(v["a"]) and v["b"] == math.inf and v["c"] == -math.inf
    (out / "summary.json").write_text('{"steps": 3, "last_loss": NaN, "seconds": Infinity}')
    s = read_summary(out)
    assert math.isnan(s["last_loss"]) and s["seconds"] == math.inf


def test_a_run_with_nan_values_writes_strict_json(tmp_path, config) -> None:
    out = run(config, tmp_path / "run", {"train.lr": 1e38, "train.model_kwargs.hidden": []})
    assert out.status == "diverged"
    for line in (out.path / "records.jsonl").read_text().splitlines():
        strict(line)
    strict((out.path / "summary.json").read_text())
    strict((out.path / "config.json").read_text())
    assert read_summary(out.path)["status"] == "diverged"


def test_errors_are_run_store_errors() -> None:
    assert issubclass(RunFileError, RunStoreError) and issubclass(RunFileError, ValueError)
    assert issubclass(UnsafePathError, RunStoreError)
