"""Live logging: each record, as it is emitted, in TensorBoard, MLflow or Weights & Biases.

A sink receives the records of a run one by one (:meth:`Sink.write`) and shows their scalar
values live in a tool people already look at:

- :class:`TensorBoardSink`: event files (``torch.utils.tensorboard.SummaryWriter``),
  needs ``pip install 'breakeven[tensorboard]'``;
- :class:`MLflowSink`: an MLflow run, by default in a file store under the run directory,
  any tracking URI when given; needs ``pip install 'breakeven[mlflow]'``;
- :class:`WandbSink`: a Weights & Biases run, offline unless you are logged in or
  ``WANDB_MODE`` says otherwise; needs ``pip install 'breakeven[wandb]'``.

Each value of a record is one scalar named ``breakeven/<measure>/<key>`` (e.g.
``breakeven/covariance/lambda_K_1``, ``breakeven/hessian/lambda_H_1``,
``breakeven/evaluation/val_acc``) at the record's training step (TensorBoard's and
MLflow's step; in W&B the x axis ``breakeven/step``). The measure's name is part of the name
because two measures may emit the same key (``hessian`` and ``edge_of_stability`` both give
``lambda_H_1``; a measure tracked twice gives its keys twice). Arrays (``predictions``) are
not logged. A sink only writes what the tracker already computed: logging never changes
training.

The packages are imported when a sink is made, never by ``import breakeven``. Nothing is
written outside the locations given (see each sink for the environment variables it sets
when they are unset, so that MLflow and W&B keep their own files there too).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..records import inside

__all__ = [
    "SINKS",
    "MLflowSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "close_sinks",
    "make_sinks",
    "parse_log",
    "scalars",
]

Record = dict[str, Any]
PREFIX = "breakeven"
STEP_METRIC = f"{PREFIX}/step"  # W&B: the x axis of every breakeven/* series


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's values as ``{"breakeven/<measure>/<key>": float}`` (non-numbers left out;
    NaN and infinities kept)."""
    measure = record["measure"]
    out = {}
    for key, v in (record.get("values") or {}).items():
        if isinstance(v, (int, float)):
            out[f"{PREFIX}/{measure}/{key}"] = float(v)
    return out


def _require(module: str, extra: str, sink: str) -> Any:
    """Import ``module``; ImportError naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"the {sink} sink needs the {extra} package: pip install 'breakeven[{extra}]'"
        ) from e


class Sink:
    """Where records go as they are emitted. ``write(record)`` for each record;
    ``close(status)`` once at the end (``"finished"``, ``"diverged"`` or ``"failed: ..."``).
    A context manager: leaving the ``with`` block closes it (``failed`` on an exception)."""

    name = ""

    def write(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self, status: str = "finished") -> None:
        pass

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        self.close("finished" if error is None else f"failed: {error!r}")


class TensorBoardSink(Sink):
    """Scalars in TensorBoard event files in ``log_dir`` (``tensorboard --logdir DIR``),
    flushed after each record so that TensorBoard shows them at once.

    ``purge_step``: a resumed run passes its first step; TensorBoard then hides what an
    earlier attempt wrote at that step or later (:class:`SummaryWriter`'s ``purge_step``)."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike, *, purge_step: int | None = None) -> None:
        _require("tensorboard", "tensorboard", self.name)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        if purge_step is not None:
            _after_existing_event_files(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self, status: str = "finished") -> None:
        self.writer.close()


def _after_existing_event_files(log_dir: Path) -> None:
    """Wait (at most about a second) until a new event file's name sorts after every file in
    ``log_dir``. TensorBoard reads a folder's files in name order and hides the purged steps
    only from files read *before* the resumed one; the names are
    ``events.out.tfevents.<seconds>.<host>.<pid>.<counter>``, so two files of one process in
    the same second sort by the counter as text (``10`` before ``9``)."""
    seconds = []
    for f in log_dir.glob("events.out.tfevents.*"):
        field = f.name.split(".")[3]
        if field.isdigit():
            seconds.append(int(field))
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")  # MLflow's allowed name characters


class MLflowSink(Sink):
    """One MLflow run whose metrics are the scalars, at ``step`` = the training step.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///mlflow.db``, ``http://...``, a
            directory). Default: a file store in ``dir`` (``mlflow ui --backend-store-uri
            DIR`` shows it).
        dir: the file store's directory when ``tracking_uri`` is not given.
        experiment: the experiment's name (created when missing).
        run_name: the run's name; ``config``: logged as the run's parameters (flattened,
            ``train.lr``); ``run_id``: log into this existing run instead of a new one
            (then it is not ended by :meth:`close`).

    For a file store, ``MLFLOW_ALLOW_FILE_STORE=true`` is set when unset (MLflow 3 otherwise
    refuses file stores); ``MLFLOW_DISABLE_TELEMETRY=true`` is set when neither it nor
    ``DO_NOT_TRACK`` is set (MLflow's telemetry writes to ``~/.config/mlflow``).
    :meth:`close` ends the run ``FINISHED``, or ``FAILED`` for a failed or diverged run.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        dir: str | os.PathLike | None = None,
        experiment: str = PREFIX,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        if tracking_uri is None:
            if dir is None:
                raise ValueError("MLflowSink needs tracking_uri= or dir= (a file store)")
            Path(dir).mkdir(parents=True, exist_ok=True)
            tracking_uri = Path(dir).resolve().as_uri()
        if "://" not in tracking_uri or tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if "DO_NOT_TRACK" not in os.environ:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        _require("mlflow", "mlflow", self.name)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._own = run_id is None
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id
        params = [Param(_mlflow_name(k), str(v)[:6000]) for k, v in _flat(config or {}).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run_id, params=params[i : i + 100])

    def write(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["step"])
        metrics = [Metric(_mlflow_name(k), v, now, step) for k, v in scalars(record).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self, status: str = "finished") -> None:
        if self._own:
            end = "FINISHED" if status == "finished" else "FAILED"
            self.client.set_terminated(self.run_id, end)


def _mlflow_name(key: str) -> str:
    return _MLFLOW_BAD.sub("_", key)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: W&B's own files go under the sink's directory unless these are set (see WandbSink).
WANDB_DIRS = {
    "WANDB_CACHE_DIR": "cache",
    "WANDB_DATA_DIR": "data",
    "WANDB_ARTIFACT_DIR": "artifacts",
}


def _wandb_logged_in() -> bool:
    """``WANDB_API_KEY`` set, or ``wandb login`` wrote a key for the W&B host to ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink(Sink):
    """A Weights & Biases run whose history holds the scalars, over the x axis
    ``breakeven/step`` (the training step; ``define_metric``), so that they also sit well in a
    run that logs other things on its own step.

    Args:
        dir: W&B's directory (``dir/wandb/offline-run-*`` or ``run-*``).
        project, entity, name, group, tags: as ``wandb.init``.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``. Default: ``WANDB_MODE`` when set,
            else online when you are logged in (``WANDB_API_KEY`` or ``wandb login``), else
            offline (upload later with ``wandb sync DIR/wandb/offline-run-*``).
        config: the run's config (``wandb.config``).

    When a W&B run is already active in this process (``wandb.run``, e.g. Lightning's
    ``WandbLogger`` or the Hugging Face Trainer's ``report_to="wandb"``), the scalars go
    into that run, and :meth:`close` leaves it open. Otherwise the sink starts its own run and
    :meth:`close` finishes it (exit code 1 for a failed or diverged run). While its run is
    open, the sink sets ``WANDB_CACHE_DIR``, ``WANDB_DATA_DIR`` and ``WANDB_ARTIFACT_DIR`` to
    ``dir/cache``, ``dir/data`` and ``dir/artifacts``, and offline also ``WANDB_CONFIG_DIR``
    to ``dir/config``, each only when unset (put back at :meth:`close`).
    """

    name = "wandb"

    def __init__(
        self,
        dir: str | os.PathLike,
        *,
        project: str = PREFIX,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
        mode: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        wandb = _require("wandb", "wandb", self.name)
        self.dir = Path(dir)
        self._set_env: list[str] = []
        self._own = wandb.run is None
        if self._own:
            if mode is None and "WANDB_MODE" not in os.environ:
                mode = "online" if _wandb_logged_in() else "offline"
            offline = (mode or os.environ.get("WANDB_MODE")) in ("offline", "dryrun")
            dirs = {**WANDB_DIRS, **({"WANDB_CONFIG_DIR": "config"} if offline else {})}
            for var, sub in dirs.items():
                if var not in os.environ:
                    os.environ[var] = str(self.dir.resolve() / sub)
                    self._set_env.append(var)
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                self.run = wandb.init(
                    dir=str(self.dir),
                    project=project,
                    entity=entity,
                    name=name,
                    group=group,
                    tags=list(tags) if tags else None,
                    mode=mode,
                    config=dict(config) if config else None,
                )
            except BaseException:
                self._restore_env()
                raise
        else:
            self.run = wandb.run
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric(f"{PREFIX}/*", step_metric=STEP_METRIC)

    def write(self, record: Mapping[str, Any]) -> None:
        self.run.log({STEP_METRIC: int(record["step"]), **scalars(record)})

    def close(self, status: str = "finished") -> None:
        if not self._own or self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish(exit_code=0 if status == "finished" else 1)
            if self._set_env:  # the next run's W&B service starts with its own directories
                import wandb

                if wandb.run is None:
                    wandb.teardown()
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        for var in self._set_env:
            os.environ.pop(var, None)
        self._set_env = []


#: The sinks by name: (class, the extra that installs its package, named as its module).
SINKS: dict[str, tuple[type[Sink], str]] = {
    "tensorboard": (TensorBoardSink, "tensorboard"),
    "mlflow": (MLflowSink, "mlflow"),
    "wandb": (WandbSink, "wandb"),
}
#: Options of each sink in a ``[log.<sink>]`` table (or ``--log <sink>.<option>=<value>``).
OPTIONS = {
    "tensorboard": ("log_dir",),
    "mlflow": ("tracking_uri", "experiment", "run_name"),
    "wandb": ("dir", "project", "entity", "name", "group", "tags", "mode"),
}


#: Values the wandb sink's ``mode`` takes (``wandb.init``'s).
WANDB_MODES = ("online", "offline", "disabled")


def _check_option(sink: str, key: str, value: Any) -> None:
    """Refuse an option value of the wrong kind before any file is written: every option is
    a non-empty string, but wandb's ``tags`` (a list of strings) and ``mode`` (one of
    :data:`WANDB_MODES`)."""
    where = f"log.{sink}.{key}={value!r} is invalid"
    if (sink, key) == ("wandb", "tags"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and t for t in value):
            raise ConfigError(f'{where}: must be a list of strings, e.g. ["lr-sweep"]')
    elif not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string")
    elif (sink, key) == ("wandb", "mode") and value not in WANDB_MODES:
        raise ConfigError(f"{where}: must be one of {list(WANDB_MODES)}")


def parse_log(table: Any = None) -> dict[str, dict[str, Any]]:
    """The sinks to open, ``{sink name: options}``, from a config's ``[log]`` table, checked.

    The table maps a sink name to ``true`` / ``false`` or to a table of options::

        [log]
        tensorboard = true
        mlflow = { tracking_uri = "sqlite:///runs/mlflow.db", experiment = "lr-sweep" }
        wandb = { project = "breakeven", mode = "offline" }

    A list of names (``["tensorboard", "wandb"]``) enables each with its defaults. An
    unknown sink or option raises :class:`~breakeven.ConfigError` naming it and what is
    allowed; a sink whose package is not installed raises ImportError naming the extra to
    install (nothing is imported here)."""
    if table is None:
        table = {}
    elif isinstance(table, (list, tuple)):
        table = dict.fromkeys(table, True)
    if not isinstance(table, Mapping):
        raise ConfigError(f"log={table!r} is invalid: must be a table [log] of sinks")
    spec: dict[str, dict[str, Any]] = {}
    for name, options in table.items():
        if name not in SINKS:
            raise ConfigError(f"log.{name}: unknown sink {name!r}; choose from {sorted(SINKS)}")
        if options is True:
            spec[name] = {}
        elif isinstance(options, Mapping):
            spec[name] = dict(options)
        elif options is not False:
            raise ConfigError(f"log.{name}={options!r} is invalid: true, false or a table")
    for name, options in spec.items():
        unknown = sorted(set(options) - set(OPTIONS[name]))
        if unknown:
            raise ConfigError(
                f"log.{name}: unknown option(s) {unknown}; allowed: {list(OPTIONS[name])}"
            )
        for key, value in options.items():
            _check_option(name, key, value)
        module = SINKS[name][1]
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"log.{name}: the {name} sink needs the {module} package: "
                f"pip install 'breakeven[{module}]'"
            )
    return spec


def make_sinks(
    spec: Mapping[str, Mapping[str, Any]],
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any] | None = None,
    first_step: int = 0,
) -> list[Sink]:
    """Open the sinks of a checked ``spec`` (:func:`parse_log`) for the run in ``run_dir``.

    Defaults: TensorBoard writes ``<run_dir>/logs/tensorboard``, MLflow a file store
    ``<run_dir>/logs/mlflow`` (experiment ``breakeven``), W&B ``<run_dir>/logs/wandb``
    (project ``breakeven``); MLflow's and W&B's run is named after ``run_dir``, with
    ``config`` as its parameters. A run resumed at ``first_step`` > 0 purges TensorBoard's
    later steps and opens a new MLflow or W&B run. When one sink fails to open, those
    opened are closed and the error raised."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    sinks: list[Sink] = []
    try:
        for kind, options in spec.items():
            o = dict(options)
            if kind == "tensorboard":
                log_dir = o.get("log_dir") or inside(run_dir, "logs", "tensorboard")
                sinks.append(TensorBoardSink(log_dir, purge_step=first_step or None))
            elif kind == "mlflow":
                o.setdefault("run_name", name)
                if o.get("tracking_uri") is None:
                    o["dir"] = inside(run_dir, "logs", "mlflow")
                sinks.append(MLflowSink(config=config, **o))
            else:
                o.setdefault("name", name)
                o.setdefault("dir", inside(run_dir, "logs", "wandb"))
                sinks.append(WandbSink(config=config, **o))
    except BaseException:
        close_sinks(sinks, "failed: a sink could not be opened")
        raise
    return sinks


def close_sinks(sinks: Iterable[Sink], status: str = "finished") -> None:
    """Close every sink (each once, all of them even when one raises; the first error is
    raised after)."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close(status)
        except Exception as e:  # the others still close
            error = error or e
    if error is not None:
        raise error
