"""Live logging: every record of a run, read back from the real files of TensorBoard (its
EventAccumulator), MLflow (an ``MlflowClient`` on the file store) and W&B (the offline run's
``.wandb`` log, parsed record by record); training bitwise unchanged by logging; nothing
written outside the run directory (nor into ``~`` or the working directory); the ``[log]``
table, ``--log`` flags, the Tracker's ``sinks=`` and the Lightning callback's ``log=``."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from breakeven.data import Dataset
from breakeven.errors import ConfigError
from breakeven.experiments import run
from breakeven.experiments.runner import log_table
from breakeven.records import read_records
from breakeven.tracking import Tracker, build_tracker
from breakeven.tracking.sinks import (
    MLflowSink,
    TensorBoardSink,
    WandbSink,
    _require,
    _wandb_logged_in,
    parse_log,
    scalars,
)

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

SINK_NAMES = ("tensorboard", "mlflow", "wandb")
WANDB_VARS = ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR")


def toy(n: int = 60, d: int = 8, classes: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 20, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], classes)


CONFIG = {
    "name": "logged",
    "run": {"checkpoint_every": 0},
    "train": {
        "model": "mlp",
        "model_kwargs": {"hidden": [8]},
        "batch_size": 10,
        "lr": 0.1,
        "momentum": 0.9,
        "steps": 12,
        "eval_every": 4,
        "num_threads": 1,
    },
    "track": {
        "covariance": {"every": 3, "num_batches": 3},
        "hessian": {"every": 5, "k": 2},
        "edge_of_stability": {"every": 5},
        "loss_change": {"every": 4},
    },
}


def expected(path: Path) -> dict[str, list[tuple[int, float]]]:
    """What the run store holds, as the sinks name it: {tag: [(step, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in read_records(path):
        for tag, v in scalars(r).items():
            out.setdefault(tag, []).append((r["step"], v))
    return out


def same(a: dict, b: dict, rel: float = 0.0) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if len(a[k]) != len(b[k]):
            return False
        for (s1, v1), (s2, v2) in zip(a[k], b[k]):
            if s1 != s2 or not (v1 == pytest.approx(v2, rel=rel, nan_ok=True)):
                return False
    return True


# ---------------------------------------------------------------- readers of the real files


def read_tensorboard(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def read_mlflow(uri: str, experiment: str = "breakeven") -> tuple[object, dict]:
    """The one run of ``experiment`` and its metrics {key: [(step, value)]}. Reading a file
    store needs ``MLFLOW_ALLOW_FILE_STORE=true`` (MLflow 3), as a user's ``mlflow ui`` does:
    in a test that only ran the command line, no sink in this process has set it."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (found,) = client.search_runs([exp.experiment_id])
    metrics = {
        k: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, k)]
        for k in found.data.metrics
    }
    return found, metrics


def read_wandb(wandb_dir: Path) -> list[tuple[str, object]]:
    """The records of the one offline run in ``wandb_dir``: W&B's log format (a LevelDB log:
    a 7-byte header, then 32 KiB blocks of chunks ``crc32 | length | type | data``, types
    full 1, first 2, middle 3, last 4) holding ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the padding at a block's end
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append((record.WhichOneof("record_type"), record))
            chunks = b""
    return out


def wandb_history(records: list) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for kind, r in records:
        if kind != "history":
            continue
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for k, v in row.items():
            if k.startswith("breakeven/") and k != "breakeven/step":
                out.setdefault(k, []).append((row["breakeven/step"], float(v)))
    return out


# ---------------------------------------------------------------- one run, all three sinks


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    """A run without sinks and the same run with all three, with ``HOME`` and the working
    directory moved to empty folders (to see that nothing is written there)."""
    root = tmp_path_factory.mktemp("sinks")
    home, cwd = root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    env_before = {v: os.environ.get(v) for v in WANDB_VARS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.delenv("NETRC", raising=False)
        mp.delenv("XDG_CONFIG_HOME", raising=False)
        mp.delenv("XDG_CACHE_HOME", raising=False)
        mp.chdir(cwd)
        plain = run(CONFIG, root / "plain", dataset=toy())
        with_sinks = run(CONFIG, root / "logged", dataset=toy(), log=list(SINK_NAMES))
        env_after = {v: os.environ.get(v) for v in WANDB_VARS}
    return {
        "root": root,
        "home": home,
        "cwd": cwd,
        "plain": plain,
        "logged": with_sinks,
        "env": (env_before, env_after),
    }


def test_logging_leaves_training_bitwise_unchanged(logged) -> None:
    a, b = logged["plain"], logged["logged"]
    assert a.status == b.status == "finished"
    sa, sb = a.result.model.state_dict(), b.result.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.result.losses == b.result.losses
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(a.path)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(b.path)]
    # the sinks are not part of the run's identity
    assert (a.path / "config.json").read_text() == (b.path / "config.json").read_text()


def test_sinks_write_only_under_the_run_directory(logged) -> None:
    assert all_files(logged["home"]) == [] and all_files(logged["cwd"]) == []
    logs = logged["logged"].path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == sorted(SINK_NAMES)
    assert not (logged["plain"].path / "logs").exists()
    before, after = logged["env"]
    assert before == after  # the W&B directories set for the run are put back


def test_tensorboard_holds_every_scalar_at_its_step(logged) -> None:
    path = logged["logged"].path
    want = expected(path)
    tags = {
        "covariance/lambda_K_1",
        "hessian/lambda_H_1",
        "edge_of_stability/lambda_H_1",
        "evaluation/val_loss",
    }
    assert {f"breakeven/{t}" for t in tags} <= set(want)
    got = read_tensorboard(path / "logs" / "tensorboard")
    assert same(got, want, rel=1e-6)  # TensorBoard keeps float32


def test_mlflow_holds_every_scalar_params_and_status(logged) -> None:
    path = logged["logged"].path
    found, metrics = read_mlflow((path / "logs" / "mlflow").resolve().as_uri())
    assert same(metrics, expected(path))
    assert found.info.status == "FINISHED" and found.info.run_name == "logged"
    assert found.data.params["train.lr"] == "0.1"
    assert found.data.params["track.hessian.k"] == "2"


def test_wandb_offline_holds_every_scalar_and_ends(logged) -> None:
    path = logged["logged"].path
    records = read_wandb(path / "logs" / "wandb")
    assert same(wandb_history(records), expected(path))
    (start,) = [r for kind, r in records if kind == "run"]
    assert start.run.display_name == "logged" and start.run.project == "breakeven"
    assert json.loads(start.run.config.update[0].value_json) is not None
    assert "train" in [u.key for u in start.run.config.update]
    metrics = [r.metric for kind, r in records if kind == "metric"]
    assert any(m.glob_name == "breakeven/*" and m.step_metric == "breakeven/step" for m in metrics)
    (end,) = [r for kind, r in records if kind == "exit"]
    assert end.exit.exit_code == 0


# ---------------------------------------------------------------- the Tracker in a plain loop


def test_tracker_sinks_in_a_plain_loop_and_mlflow_at_a_given_uri(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g)
    y = (x @ torch.randn(5, 2, generator=g)).argmax(1)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))
    uri = (tmp_path / "store").as_uri()
    with TensorBoardSink(tmp_path / "tb") as tb, MLflowSink(uri, experiment="loop") as ml:
        tracker = build_tracker(
            {"covariance": {"every": 2, "num_batches": 2}, "lr": {"every": 1}},
            probe=(x[:10], y[:10]),
            train_data=(x, y),
            lr=0.1,
            batch_size=8,
            sinks=[tb, ml],
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for step in range(5):
            xb, yb = x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8]
            opt.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            tracker.before_step(step, net, (xb, yb), loss)
            opt.step()
            tracker.after_step(step, net)
    want: dict[str, list] = {}
    for r in tracker.records_:
        for tag, v in scalars(r).items():
            want.setdefault(tag, []).append((r["step"], v))
    assert [s for s, _ in want["breakeven/lr/lr"]] == [0, 1, 2, 3, 4]
    assert same(read_tensorboard(tmp_path / "tb"), want, rel=1e-6)
    found, metrics = read_mlflow(uri, "loop")
    assert same(metrics, want) and found.info.status == "FINISHED"
    with pytest.raises(ValueError, match="tracking_uri= or dir="):
        MLflowSink()


def test_a_failed_run_ends_its_mlflow_and_wandb_runs_failed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ml = MLflowSink(dir=tmp_path / "ml", run_name="r")
    wb = WandbSink(tmp_path / "wb", mode="offline", name="r")
    for sink in (ml, wb):
        sink.write({"step": 3, "measure": "m", "values": {"x": math.nan, "y": 2.0}})
        sink.close("failed: boom")
    found, metrics = read_mlflow(ml.tracking_uri)
    assert found.info.status == "FAILED"
    assert math.isnan(metrics["breakeven/m/x"][0][1]) and metrics["breakeven/m/y"] == [(3, 2.0)]
    records = read_wandb(tmp_path / "wb")
    assert wandb_history(records)["breakeven/m/y"] == [(3, 2.0)]
    (end,) = [r for kind, r in records if kind == "exit"]
    assert end.exit.exit_code == 1


# ---------------------------------------------------------------- the [log] table and --log


@pytest.mark.parametrize(
    ("table", "flags", "spec"),
    [
        (None, [], {}),
        ({"tensorboard": True, "wandb": False}, [], {"tensorboard": {}}),
        (["mlflow", "tensorboard"], [], {"mlflow": {}, "tensorboard": {}}),
        (
            {"wandb": {"project": "p"}},
            ["wandb.mode=offline", "tensorboard"],
            {"wandb": {"project": "p", "mode": "offline"}, "tensorboard": {}},
        ),
        (
            {},
            ["mlflow.tracking_uri=sqlite:///x.db"],
            {"mlflow": {"tracking_uri": "sqlite:///x.db"}},
        ),
        (
            {"tensorboard": True},
            {"mlflow": {"experiment": "e"}},
            {"tensorboard": {}, "mlflow": {"experiment": "e"}},
        ),
    ],
)
def test_log_table_and_flags(table, flags, spec) -> None:
    assert parse_log(log_table(table, flags)) == spec


@pytest.mark.parametrize(
    ("table", "flags", "message"),
    [
        ({"neptune": True}, [], "log.neptune: unknown sink 'neptune'; choose from"),
        ({}, ["comet"], "log.comet: unknown sink"),
        ({"wandb": {"projekt": "x"}}, [], r"log.wandb: unknown option\(s\) \['projekt'\]"),
        ({}, ["tensorboard.dir=x"], r"unknown option\(s\) \['dir'\]; allowed: \['log_dir'\]"),
        ({}, ["wandb.project"], "--log 'wandb.project' is invalid"),
        ({"mlflow": "yes"}, [], "log.mlflow='yes' is invalid: true, false or a table"),
        ("tensorboard", [], "must be a table"),
    ],
)
def test_log_errors_name_the_key(table, flags, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_log(log_table(table, flags))


def test_a_missing_package_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'breakeven\[wandb\]'"):
        parse_log(["tensorboard", "wandb"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(ImportError, match=r"the mlflow sink needs .* 'breakeven\[mlflow\]'"):
        _require("mlflow", "mlflow", "mlflow")


def test_importing_breakeven_imports_no_sink_package() -> None:
    code = (
        "import sys, breakeven, breakeven.cli, breakeven.tracking.sinks; "
        "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow  # two fresh interpreters importing the sinks (make test-slow; CI runs it)
def test_cli_log_flags_and_table(tmp_path: Path) -> None:
    """``breakeven run`` with a ``[log]`` table and ``--log`` flags: both sinks write;
    unknown sinks are refused before a run directory exists (exit 2)."""
    import numpy as np

    g = np.random.default_rng(0)
    x = g.standard_normal((80, 6)).astype(np.float32)
    y = (x @ g.standard_normal((6, 3))).argmax(1)
    np.savez(tmp_path / "d.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    config = tmp_path / "c.toml"
    config.write_text(
        f'[train]\nmodel = "mlp"\nmodel_kwargs = {{ hidden = [4] }}\ndataset = "npz"\n'
        f'dataset_kwargs = {{ root = "{tmp_path / "d.npz"}" }}\nbatch_size = 10\nsteps = 6\n'
        f"num_threads = 1\n[track]\nlr = {{ every = 2 }}\n"
        f'[log]\nmlflow = {{ experiment = "cli" }}\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "breakeven.cli", "run", str(config), "--no-progress"]
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "bad"), "--log", "neptune"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown sink 'neptune'" in bad.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    ok = subprocess.run(
        [*base, "--out", str(out), "--log", "tensorboard", "--log", "mlflow.run_name=cli-run"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    want = expected(out)
    assert [s for s, _ in want["breakeven/lr/lr"]] == [0, 2, 4]
    assert same(read_tensorboard(out / "logs" / "tensorboard"), want, rel=1e-6)
    found, metrics = read_mlflow((out / "logs" / "mlflow").as_uri(), "cli")
    assert same(metrics, want) and found.info.run_name == "cli-run"
    assert not (tmp_path / "home").exists()


class _Interrupt:
    """A progress display that presses Ctrl-C once ``at`` steps are done."""

    def __init__(self, at: int) -> None:
        self.at, self.loss = at, None

    def start(self, total: int, first: int = 0) -> None:
        pass

    def update(self, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt

    def record(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def test_resumed_run_purges_tensorboard_steps_past_the_checkpoint(tmp_path: Path) -> None:
    """A run interrupted after step 10 and resumed from its checkpoint at step 6: TensorBoard
    shows each step once, as the store does."""
    cfg = {**CONFIG, "run": {"checkpoint_every": 6}}
    with pytest.raises(KeyboardInterrupt):
        run(
            cfg, tmp_path / "r", dataset=toy(), log=["tensorboard"], progress=lambda: _Interrupt(11)
        )
    tb = tmp_path / "r" / "logs" / "tensorboard"
    assert max(s for s, _ in read_tensorboard(tb)["breakeven/covariance/lambda_K_1"]) == 9
    again = run(cfg, tmp_path / "r", dataset=toy(), log=["tensorboard"])
    assert again.resumed_from == 6 and again.status == "finished"
    assert same(read_tensorboard(tb), expected(again.path), rel=1e-6)


@pytest.mark.parametrize("counter", [0, 9, 99])
def test_a_resumed_tensorboard_file_sorts_after_the_earlier_ones(tmp_path, counter) -> None:
    """TensorBoard hides purged steps only from files read before the resumed one, in name
    order; the names end in a process-wide counter compared as text, so a resumed file
    opened in the same second as the earlier one, its counter 10 against 9, was read first
    and every step past the checkpoint showed twice (seen in the full test suite)."""
    from tensorboard.summary.writer import event_file_writer

    event_file_writer._global_uid._value = counter  # the next two files: counter, counter + 1
    first = TensorBoardSink(tmp_path)
    for step in range(10):
        first.write({"step": step, "measure": "m", "values": {"x": float(step)}})
    first.close()
    resumed = TensorBoardSink(tmp_path, purge_step=6)  # at once: in the same second, mostly
    for step in range(6, 12):
        resumed.write({"step": step, "measure": "m", "values": {"x": 100.0 + step}})
    resumed.close()
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[-1].endswith(f".{counter + 1}")
    expected = [(s, float(s)) for s in range(6)] + [(s, 100.0 + s) for s in range(6, 12)]
    assert read_tensorboard(tmp_path)["breakeven/m/x"] == expected


def test_wandb_sink_joins_the_active_run_and_leaves_it_open(tmp_path: Path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mine = wandb.init(mode="offline", dir=str(tmp_path / "user"), project="mine")
    try:
        sink = WandbSink(tmp_path / "ours")
        mine.log({"train/loss": 1.0})
        sink.write({"step": 7, "measure": "hessian", "values": {"lambda_H_1": 3.5}})
        sink.close()
        assert wandb.run is mine
    finally:
        mine.finish()
        wandb.teardown()  # W&B's service writes the run's last records to disk by then
    assert wandb_history(read_wandb(tmp_path / "user")) == {
        "breakeven/hessian/lambda_H_1": [(7, 3.5)]
    }
    assert not (tmp_path / "ours").exists()


def test_lightning_callback_logs_measures_and_evaluations(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning.pytorch")
    from breakeven.integrations.lightning import BreakevenCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = toy(32)
    data = torch.utils.data.TensorDataset(ds.x_train, ds.y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    spec = {"covariance": {"every": 1, "num_batches": 2}, "lr": {"every": 1}}
    given = TensorBoardSink(tmp_path / "mine")
    xy = (ds.x_train, ds.y_train)
    cb = BreakevenCallback(
        spec, probe=xy, train_data=xy, out_dir=tmp_path / "run", log=["mlflow", given]
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
    )
    trainer.fit(Module(), loader, torch.utils.data.DataLoader(data, batch_size=16))
    given.close()
    want = expected(tmp_path / "run")
    assert [s for s, _ in want["breakeven/lr/lr"]] == [0, 1, 2, 3]
    assert [s for s, _ in want["breakeven/evaluation/val_loss"]] == [4]
    found, metrics = read_mlflow((tmp_path / "run" / "logs" / "mlflow").as_uri())
    assert same(metrics, want) and found.info.status == "FINISHED"
    assert same(read_tensorboard(tmp_path / "mine"), want, rel=1e-6)
    with pytest.raises(ValueError, match="give out_dir="):
        BreakevenCallback(spec, log="tensorboard")


def test_sweep_logs_each_run_under_its_directory(tmp_path: Path) -> None:
    from breakeven.experiments import sweep

    np = pytest.importorskip("numpy")
    g = np.random.default_rng(0)
    x = g.standard_normal((70, 6)).astype(np.float32)
    y = (x @ g.standard_normal((6, 3))).argmax(1)
    np.savez(tmp_path / "d.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    cfg = {
        "name": "sw",
        "train": {
            "model": "mlp",
            "model_kwargs": {"hidden": [4]},
            "dataset": "npz",
            "dataset_kwargs": {"root": str(tmp_path / "d.npz")},
            "batch_size": 10,
            "steps": 4,
            "num_threads": 1,
        },
        "track": {"lr": {"every": 1}},
        "log": {"mlflow": False},
    }
    with pytest.raises(ConfigError, match="unknown sink 'neptune'"):
        sweep(cfg, grid={"train.lr": [0.1]}, out=tmp_path / "bad", log=["neptune"])
    assert not (tmp_path / "bad").exists()
    out = sweep(cfg, grid={"train.lr": [0.1, 0.05]}, out=tmp_path / "sw", log=["tensorboard"])
    assert [s for _, s, _ in out.runs] == ["finished", "finished"]
    for name in ("lr=0.1_seed=0", "lr=0.05_seed=0"):
        path = tmp_path / "sw" / "runs" / name
        assert sorted(p.name for p in (path / "logs").iterdir()) == ["tensorboard"]
        assert same(read_tensorboard(path / "logs" / "tensorboard"), expected(path), rel=1e-6)


def test_wandb_goes_online_only_when_logged_in(tmp_path: Path, monkeypatch) -> None:
    """The default mode's rule: an API key in the environment or in the netrc file that
    ``wandb login`` writes, for the W&B host (``WANDB_BASE_URL``)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not _wandb_logged_in()  # no file
    netrc.write_text("machine example.org login user password secret\n")
    netrc.chmod(0o600)
    assert not _wandb_logged_in()  # another host
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert _wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not _wandb_logged_in()  # a private server the key is not for
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert _wandb_logged_in()


def test_plain_tracker_without_sinks_is_unchanged() -> None:
    assert Tracker([], sinks=()).sinks == []
