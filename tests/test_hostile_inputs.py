"""What a hostile review of this round's features found, each refused clearly (or measured
right) before it can write a file or a wrong number."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import breakeven as be
from breakeven._core.data import is_pair
from breakeven._core.formatting import package_version
from breakeven.cli import main
from breakeven.errors import ConfigError
from breakeven.experiments import run
from breakeven.records import read_config, read_records
from breakeven.tracking.sinks import parse_log
from breakeven.tracking.store import RunStore, jsonable
from helpers import run_config, write_run, write_sweep
from test_tracking import data, loop, make


def tracker(**kw):
    x, y = data()
    return be.Tracker(probe=(x[:40], y[:40]), train_data=(x, y), batch_size=16, **kw)


# ---------------------------------------------------------------- the Tracker's own loop


def test_steps_that_do_not_increase_are_refused():
    """The README loop's ``enumerate(loader)`` nested in an epoch loop restarts at 0: the
    records would mix epochs silently."""
    tr = tracker(measures=["param_norm"], schedule=1, lr=0.05)
    loop(tr, steps=3)
    with pytest.raises(ValueError, match=r"step=0 after step=2: the steps must increase"):
        loop(tr, steps=3)


def test_a_closed_tracker_records_nothing_more(tmp_path):
    with tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=tmp_path / "r") as tr:
        loop(tr, steps=3)
    with pytest.raises(RuntimeError, match=r"has ended \(finished\)"):
        loop(tr, steps=3)
    assert len(tr.records_) == len(read_records(tmp_path / "r")) == 3


@pytest.mark.parametrize("where", ["sweep", "runs", "inside_run"])
def test_out_dir_in_a_sweep_or_inside_a_run_is_refused_before_any_file(tmp_path, where):
    sweep = tmp_path / "sweep"
    write_sweep(sweep, [0.1], [0], lambda p, lr, s: write_run(p, [], config={"lr": lr}))
    target = {
        "sweep": sweep,
        "runs": sweep / "runs",
        "inside_run": sweep / "runs" / "lr=0.1_seed=0" / "sub",
    }[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(be.OutputDirError, match=r"sweep directory|lies inside a"):
        tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=target)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_project_folder_with_its_own_config_json_is_not_a_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a user's project, not a run
    tr = tracker(measures=["param_norm"], schedule=1, lr=0.05, out_dir=tmp_path / "runs" / "a")
    loop(tr, steps=2)
    tr.close()
    assert len(read_records(tmp_path / "runs" / "a")) == 2


# ---------------------------------------------------------------- Adam


def test_the_adam_threshold_is_the_optimizer_s_learning_rate():
    """A Tracker ``lr`` that is not the optimizer's (or a scheduler's change of it) must not
    move 38/eta: the measure reads eta where it reads P, from the optimizer."""
    model, x, y = make()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tr = be.Tracker(
        ["preconditioned_sharpness"],
        1,
        optimizer=opt,
        probe=(x[:40], y[:40]),
        train_data=(x, y),
        lr=0.1,
        batch_size=16,
    )
    for step in range(3):
        xb, yb = x[16 * step : 16 * step + 16], y[16 * step : 16 * step + 16]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        tr.before_step(step, model, (xb, yb), loss)
        opt.step()
        tr.after_step(step, model)
    thresholds = [r["values"]["precond_eos_threshold"] for r in tr.records_]
    assert thresholds == pytest.approx([38 / 0.01] * 3)


def test_a_run_tracking_adam_measures_under_sgd_is_refused_before_any_file(tmp_path, tiny_npz):
    track = {"preconditioned_sharpness": {"every": 3}}
    config = run_config(tmp_path / "c.toml", tiny_npz, track=track)
    with pytest.raises(ConfigError, match=r"track.preconditioned_sharpness: .*optimizer"):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- live logging options


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"tensorboard": {"log_dir": 5}}, r"log.tensorboard.log_dir=5 is invalid"),
        ({"mlflow": {"experiment": 3}}, r"log.mlflow.experiment=3 is invalid"),
        ({"mlflow": {"tracking_uri": ""}}, r"log.mlflow.tracking_uri='' is invalid"),
        ({"wandb": {"mode": "bogus"}}, r"must be one of \['online', 'offline', 'disabled'\]"),
        ({"wandb": {"tags": "abc"}}, r"log.wandb.tags='abc' is invalid: must be a list"),
    ],
)
def test_sink_option_values_are_checked(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_log(table)


# ---------------------------------------------------------------- building blocks


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_covariance_from_gradients_refuses_a_bad_batch_size(batch_size):
    G = torch.randn(5, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        be.covariance_from_gradients(G, batch_size=batch_size)


@pytest.mark.parametrize("G", [torch.ones(4, 3, dtype=torch.long), torch.randn(4)])
def test_covariance_from_gradients_refuses_what_is_not_a_real_matrix(G):
    with pytest.raises(ValueError, match="real floating-point"):
        be.covariance_from_gradients(G)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan])
def test_a_density_width_must_be_finite_and_positive(sigma):
    res = be.slq(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)), num_probes=1)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        res.density(sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        res.grid(sigma=sigma)


def test_train_accuracy_indices():
    assert be.TrainAccuracy(indices=np.arange(3)).indices == (0, 1, 2)  # numpy integers
    with pytest.raises(ValueError, match="indices must be distinct"):
        be.TrainAccuracy(indices=[1, 1])
    tr = tracker(measures=[be.TrainAccuracy(indices=[0, 999])], schedule=1, lr=0.05)
    with pytest.raises(ValueError, match="indices name example 999; there are 256"):
        loop(tr, steps=1)


# ---------------------------------------------------------------- the command line


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    write_sweep(root, [0.1, 0.01], [0], lambda p, lr, s: write_run(p, [], config={"lr": lr}))
    return root


@pytest.mark.parametrize("bad", ["1.5", "-1", "nan", "0", ",", ""])
def test_accuracy_thresholds_must_lie_in_zero_one(sweep_dir, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(["verdict", str(sweep_dir), "--thresholds", bad])
    assert e.value.code == 2 and "is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value"), [("--support", "1.5"), ("--min-pairs", "0")])
def test_a_bad_verdict_rule_exits_2_before_printing(sweep_dir, capsys, option, value):
    assert main(["verdict", str(sweep_dir), option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ")


# ---------------------------------------------------------------- one helper per idea


def test_is_pair_tells_an_x_y_tuple_from_other_data():
    x, y = torch.zeros(3, 2), torch.zeros(3)
    assert is_pair((x, y))
    for other in ([x, y], (x, y, y), (x, [0, 1, 2]), (x,), x, None, [(x, y)]):
        assert not is_pair(other)


def test_the_version_falls_back_to_the_package_s_own(monkeypatch, capsys):
    """Run from a source tree that is not installed, the CLI and the report both give
    ``breakeven.__version__`` (the report used to say "unknown")."""
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    assert package_version() == importlib.metadata.version("breakeven")
    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert package_version() == be.__version__
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"breakeven {be.__version__}"


def _scaled(s):
    return 0.1 * s


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ({"a": (1, 2.5), "b": None}, {"a": [1, 2.5], "b": None}),
        (torch.tensor([1.0, 2.0]), [1.0, 2.0]),
        (np.float32(0.5), 0.5),
        (Path("x/y"), "x/y"),
        (_scaled, f"{__name__}._scaled"),
    ],
)
def test_a_run_store_writes_what_the_tracker_writes(tmp_path, value, written):
    """The run store and the Tracker make a config JSON by one function: a function in a
    store's config is named (the store used to fail in json.dumps)."""
    RunStore(tmp_path / "r").open({"x": value})
    assert read_config(tmp_path / "r")["x"] == written
    assert jsonable({"x": value}, "config") == {"x": written}


def test_what_is_not_json_is_refused_naming_where(tmp_path):
    with pytest.raises(TypeError, match=r"config: <object .*> cannot be written to config.json"):
        RunStore(tmp_path / "r").open({"x": object()})
    assert not (tmp_path / "r" / "config.json").exists()


# ---------------------------------------------------------------- Hessian measures


@pytest.mark.filterwarnings("ignore:Lanczos did not reach")
def test_both_hessian_measures_pass_the_same_lanczos_options(monkeypatch):
    """``hessian`` and ``preconditioned_sharpness`` run their Lanczos with exactly the
    keyword arguments of :meth:`HessianTop.lanczos_options` (one list of seven options)."""
    import breakeven.measures.preconditioned as pre
    import breakeven.measures.tracked as tracked

    given, received = [], []

    def spy(f):
        def wrapped(*args, **kw):
            received.append(kw)
            return f(*args, **kw)

        return wrapped

    options = tracked.HessianTop.lanczos_options

    def spy_options(self, ctx):
        given.append(options(self, ctx))
        return given[-1]

    monkeypatch.setattr(tracked.HessianTop, "lanczos_options", spy_options)
    monkeypatch.setattr(tracked, "hessian_eigenvalues", spy(tracked.hessian_eigenvalues))
    monkeypatch.setattr(pre, "preconditioned_sharpness", spy(pre.preconditioned_sharpness))
    opts = {"k": 2, "tol": 1e-2, "max_iter": 9, "chunk_size": 20, "bn_mode": "train"}
    measures = [be.HessianTop(**opts), pre.PreconditionedSharpness(**opts)]
    loop(tracker(measures=measures, schedule=1, lr=0.005), steps=3, adam=True)
    assert len(received) == 5  # Adam has no state at step 0: no preconditioned Lanczos
    assert received == given
    assert all(kw.keys() == given[0].keys() for kw in received)
    assert {k: given[-1][k] for k in opts} == opts and given[-1]["seed"] == 2
    assert given[-1]["v0"] is not None  # warm-started from step 1's eigenvectors


# ---------------------------------------------------------------- per-example gradients


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, "4", True, False, torch.tensor(4)])
@pytest.mark.parametrize(
    "f", [be.per_example_gradients, be.per_example_gradient_covariance], ids=["G", "K"]
)
def test_per_example_chunk_size_is_checked_before_any_work(f, chunk_size):
    model, x, y = make()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1 or None, got"):
        f(model.eval(), torch.nn.functional.cross_entropy, x[:8], y[:8], chunk_size=chunk_size)
    assert calls == []


# ---------------------------------------------------------------- the Tracker's arguments


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        *(
            ({"lr": v}, ValueError, r"lr=.* is invalid: must be a finite number > 0")
            for v in (-0.1, 0, math.nan, math.inf, -math.inf, "0.1", True)
        ),
        *(
            ({"momentum": v}, ValueError, r"momentum=.* is invalid: must be a number in \[0, 1\)")
            for v in (-0.1, 1, 1.5, math.nan, None, True)
        ),
        *(
            ({"seed": v}, ValueError, r"seed must be an integer in \[0, 9223372036854775807\], got")
            for v in (1.5, True, "0", -1, None)
        ),
        *(
            ({"sinks": v}, TypeError, r"sinks= takes sink objects, .* got '?tensorboard|object")
            for v in ("tensorboard", ["tensorboard"], ("wandb", "mlflow"), [object()])
        ),
    ],
)
def test_tracker_arguments_are_refused_before_any_file(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        tracker(measures=["param_norm"], schedule=1, **{"lr": 0.05, **kw}, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_tracker_arguments_that_are_fine():
    tr = tracker(measures=["param_norm"], lr=lambda s: 0.1, momentum=0.0, seed=np.int64(3))
    assert tr.seed == 3 and type(tr.seed) is int
    assert tracker(measures=["param_norm"], lr=None, momentum=0.9).momentum == 0.9


# ---------------------------------------------------------------- show of a sweep


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("records.jsonl", '{"step": 0, "measure"\n'),
        ("config.json", "{not json"),
        ("records.jsonl", b"\xff\xfe\n"),
    ],
)
def test_show_of_a_sweep_with_one_unreadable_run_shows_the_others(tmp_path, file, text):
    root = tmp_path / "sweep"
    write_sweep(root, [0.1, 0.05, 0.01], [0], lambda p, lr, s: write_run(p, [], config={"lr": lr}))
    bad = root / "runs" / "lr=0.05_seed=0" / file
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    cmd = [sys.executable, "-m", "breakeven.cli", "show", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"sweep {root}: 3 runs" and len(lines) == 5
    for line, name in zip(lines[2:], ["lr=0.1_seed=0", "lr=0.05_seed=0", "lr=0.01_seed=0"]):
        assert line.startswith(name)
        assert ("cannot be read" in line) == (name == "lr=0.05_seed=0")
    assert file in lines[3]
    assert "finished" in lines[2] and "finished" in lines[4]


# ---------------------------------------------------------------- learning-rate functions


def _schedule(base):
    return lambda s: base * 0.5 ** (s // 10)


def _lr_run(path, lr):
    """Run two steps of a Tracker in ``path`` with ``lr`` and leave it failed (resumable; a
    checkpoint holds its config)."""
    with pytest.raises(RuntimeError, match="stop"):
        with tracker(measures=["param_norm"], schedule=1, lr=lr, out_dir=path) as tr:
            loop(tr, steps=2)
            raise RuntimeError("stop")


@pytest.mark.parametrize(
    ("first", "other"),
    [
        (lambda s: 0.1, lambda s: 0.2),  # another constant
        (lambda s: 0.1, lambda s: 0.1 * s),  # another expression
        (lambda s: 0.1, lambda s, k=2: 0.1),  # another default
        (_schedule(0.1), _schedule(0.2)),  # a closure over another value
    ],
    ids=["constant", "expression", "default", "closure"],
)
def test_a_resume_with_another_lambda_is_refused(tmp_path, first, other):
    """Every lambda of a module used to be stored as ``module.<lambda>``: a resume with
    another one passed the config check silently."""
    _lr_run(tmp_path / "r", first)
    with pytest.raises(be.ConfigMismatchError, match=r"differing keys: train\.lr\)"):
        tracker(measures=["param_norm"], schedule=1, lr=other, out_dir=tmp_path / "r")


@pytest.mark.parametrize(
    ("first", "same"),
    [(lambda s: 0.1, lambda s: 0.1), (_schedule(0.1), _schedule(0.1))],
    ids=["lambda", "closure"],
)
def test_a_resume_with_the_same_lambda_resumes(tmp_path, first, same):
    """Another object of the same code and values (defined on another line) resumes."""
    _lr_run(tmp_path / "r", first)
    _lr_run(tmp_path / "r", same)
    assert [r["step"] for r in read_records(tmp_path / "r")] == [0, 1]


def test_closures_over_other_values_and_partials_are_told_apart():
    ids = {jsonable(f, "lr") for f in (_schedule(0.1), _schedule(0.2), _schedule(0.1))}
    assert len(ids) == 2
    a, b = functools.partial(_scaled, 1.0), functools.partial(_scaled, 2.0)
    assert jsonable(a, "lr") != jsonable(b, "lr")
    assert jsonable(_scaled, "lr") == f"{__name__}._scaled"  # named: by its name


def test_a_closure_over_what_is_not_json_is_refused_naming_it(tmp_path):
    holder = object()
    with pytest.raises(TypeError, match=r"lr \(what .*<lambda> closes over\): <object"):
        tracker(measures=["param_norm"], lr=lambda s: 0.1 if holder else 0.2, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_lambda_is_identified_alike_in_other_processes(tmp_path):
    """The identity holds across processes (hash seeds differ): a resume in a new process."""
    script = tmp_path / "lr.py"
    script.write_text(
        "from breakeven.tracking.store import jsonable\n"
        "print(jsonable(lambda s: 0.1 if s in {'a', 'b', 'c'} else 0.5 ** s, 'lr'))\n"
    )
    out = {
        subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(out) == 1 and out.pop().startswith("__main__.<lambda>#")
