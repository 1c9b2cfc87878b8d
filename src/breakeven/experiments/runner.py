"""Run configs (read by :mod:`.configs`): ``--set`` overrides, validation, and one tracked,
resumable run.

A run config (a TOML file, a preset name, or the same as a dict) has three tables::

    name = "mlp_fashion"          # optional: default output folder runs/<name>
    [run]
    checkpoint_every = 500        # steps between checkpoints (0: none; default 500)
    [train]                       # breakeven.TrainConfig fields
    lr = 0.1
    [track]                       # the tracker spec: {measure: {schedule, arguments}}
    covariance = { every = 50, num_batches = 25 }
    [log]                         # optional live logging (breakeven.tracking.sinks)
    tensorboard = true            # not part of the run's identity: add or drop it on resume

:func:`run` validates everything before training (unknown keys or bad values raise
:class:`~breakeven.ConfigError` naming the key and what is allowed), then trains with the
tracker, writing the run store (see :mod:`breakeven.tracking.store`). Running the same
config into the same folder again resumes from the last checkpoint, or does nothing if the
run has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._core.distributed import world_and_rank
from .._core.formatting import fmt
from ..data import Dataset
from ..measures import MEASURES
from ..records import EVAL_MEASURE, canonical_key, inside, name_problem, read_config, read_summary
from ..tracking import Tracker, build_tracker
from ..tracking.hooks import TrainHooks, as_hooks
from ..tracking.sinks import close_sinks, make_sinks, parse_log
from ..tracking.store import (
    DEFAULT_MIN_FREE_BYTES,
    ConfigMismatchError,
    RunStore,
    config_diff,
)
from ..train import (
    ConfigError,
    TrainConfig,
    TrainResult,
    prepare_dataset,
    prepare_model,
    train,
)
from .configs import FULL, _parse_value, list_scales, load_config

__all__ = [
    "RunConfig",
    "RunOutcome",
    "RunTerminated",
    "apply_overrides",
    "apply_scale",
    "default_out_dir",
    "list_scales",
    "log_table",
    "resolve_config",
    "run",
]

TABLES = ("train", "track", "run")
SWEEP_TABLES = ("sweep", "scale")  # read by sweeps and scales; not part of a run's config
LOG_TABLE = "log"  # live logging sinks: read by run(), not part of a run's config
TOP_KEYS = ("name", "description", *TABLES, *SWEEP_TABLES, LOG_TABLE)
RUN_KEYS = {"checkpoint_every": 500}  # key: default


def apply_overrides(
    config: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    """A copy of ``config`` with ``overrides`` applied: ``"train.lr=0.05"``,
    ``"track.covariance.every=100"``, ``"run.checkpoint_every=50"``, or a bare TrainConfig
    or ``[run]`` key (``"lr=0.05"``). Values are read as TOML, falling back to a string."""
    cfg = json.loads(json.dumps(config))
    items: list[tuple[str, Any]]
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r} is invalid: must be key=value")
            items.append((key.strip(), _parse_value(value.strip())))
    train_keys = TrainConfig.__dataclass_fields__
    for key, value in items:
        parts = key.split(".")
        if len(parts) == 1 and key in train_keys:
            parts = ["train", key]
        elif len(parts) == 1 and key in RUN_KEYS:
            parts = ["run", key]
        elif parts[0] not in TOP_KEYS:
            raise ConfigError(
                f"--set {key}: unknown key; use train.<key>, track.<measure>.<option>, "
                f"run.<key>, or a bare key of {sorted(train_keys)} or {sorted(RUN_KEYS)}"
            )
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a table")
        node[parts[-1]] = value
    return cfg


def _leaves(table: Mapping[str, Any], base: Any, prefix: str = "") -> dict[str, Any]:
    """``table``'s values as dotted keys, descending only where ``base`` (the config the
    values go into) also holds a table: a table given for a value that is not one (a
    schedule ``{ at = [...] }`` replacing ``[{ every = 60 }]``) replaces it whole."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        below = base.get(k) if isinstance(base, Mapping) else None
        if isinstance(v, Mapping) and v and isinstance(below, Mapping):
            out.update(_leaves(v, below, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_table(table: Any = None, flags: Sequence[str] | Mapping[str, Any] = ()) -> Any:
    """A config's ``[log]`` table with ``--log`` flags applied (checked later by
    :func:`~breakeven.tracking.sinks.parse_log`): a flag names a sink (``tensorboard``) or
    sets one of its options (``wandb.project=my-project``, the value read as TOML, else as a
    string). A mapping instead of flags is a ``[log]`` table whose sinks replace the
    config's."""
    if isinstance(flags, Mapping):
        return {**(table if isinstance(table, Mapping) else {}), **flags}
    if not flags:
        return table
    out = dict(table) if isinstance(table, Mapping) else {}
    for flag in flags:
        name, dot, rest = flag.partition(".")
        key, eq, value = rest.partition("=")
        if dot and (not eq or not key):
            raise ConfigError(f"--log {flag!r} is invalid: give NAME or NAME.OPTION=VALUE")
        options = out.get(name)
        options = dict(options) if isinstance(options, Mapping) else {}
        if dot:
            options[key] = _parse_value(value)
        out[name] = options
    return out


def apply_scale(config: Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """A copy of ``config`` at ``scale`` with its sweep-level tables (``[sweep]``,
    ``[scale.*]``) removed.

    ``None`` or ``"full"``: the config's own values (a preset's are the paper's). Another
    name applies the overrides of the table ``[scale.<name>]``, whose keys are written like
    ``--set`` keys (``train.epochs = 2``, ``track.covariance.every = 20``)."""
    allowed = list_scales(config)
    if scale is not None and scale not in allowed:
        raise ConfigError(f"scale={scale!r} is invalid: this config offers {allowed}")
    cfg = {k: v for k, v in config.items() if k not in SWEEP_TABLES}
    if scale is None or scale == FULL:
        return json.loads(json.dumps(cfg))
    return apply_overrides(cfg, _leaves(config["scale"][scale], cfg))


@dataclass(frozen=True)
class RunConfig:
    """A validated run config: the training config, the tracker spec and run options."""

    name: str
    train: TrainConfig
    track: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    checkpoint_every: int = RUN_KEYS["checkpoint_every"]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.json`` holds)."""
        return {
            "name": self.name,
            "train": self.train.to_dict(),
            "track": json.loads(json.dumps(self.track)),
            "run": {"checkpoint_every": self.checkpoint_every},
        }


def _check_track(track: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(track, Mapping):
        raise ConfigError(f"track={track!r} is invalid: must be a table of measure tables")
    for name, options in track.items():
        if name == EVAL_MEASURE:
            raise ConfigError(
                f"track.{name}: the name {EVAL_MEASURE!r} is reserved for the training loop's "
                'evaluation records; give the table another name (measure = "..." in it '
                "says what it measures)"
            )
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"track.{name}={options!r} is invalid: must be a table such as {{ every = 100 }}"
            )
        kind = options.get("measure", name)
        if kind not in MEASURES:
            raise ConfigError(
                f"track.{name}: unknown measure {kind!r}; allowed: {sorted(MEASURES)}"
            )
    return {k: dict(v) for k, v in track.items()}


def resolve_config(config: Mapping[str, Any]) -> RunConfig:
    """Validate a raw config (after overrides) into a :class:`RunConfig`.

    Raises :class:`~breakeven.ConfigError` naming any unknown key or invalid value. The
    tracker's measure options are checked by building it (see :func:`run`)."""
    unknown = sorted(set(config) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    for t in TABLES:
        if not isinstance(config.get(t, {}), Mapping):
            raise ConfigError(f"{t}={config[t]!r} is invalid: must be a table [{t}]")
    run_opts = {**RUN_KEYS, **config.get("run", {})}
    unknown = sorted(set(run_opts) - set(RUN_KEYS))
    if unknown:
        raise ConfigError(f"unknown run key(s) {unknown}; allowed: {sorted(RUN_KEYS)}")
    ce = run_opts["checkpoint_every"]
    if not isinstance(ce, int) or isinstance(ce, bool) or ce < 0:
        raise ConfigError(
            f"run.checkpoint_every={ce!r} is invalid: must be an integer >= 0 (steps; 0: none)"
        )
    name = config.get("name", "run")
    why = name_problem(name)  # it names the output folder runs/<name>
    if why is not None:
        raise ConfigError(f"name={name!r} is invalid: {why}")
    try:
        train_cfg = TrainConfig.from_dict(config.get("train", {}))
    except (ConfigError, TypeError) as e:  # TypeError: e.g. a table where a value was expected
        raise ConfigError(f"[train] {e}") from e
    return RunConfig(name, train_cfg, _check_track(config.get("track", {})), ce)


def default_out_dir(config: Mapping[str, Any], overrides: Sequence[str] = ()) -> Path:
    """``runs/<name>``, plus a short hash of the overrides when there are any (so that the
    same command always resumes the same run). Checked with :func:`breakeven.records.inside`:
    a name that is not one plain name, or a symbolic link there, raises
    :class:`~breakeven.records.UnsafePathError`."""
    name = config.get("name", "run")
    if not overrides:
        return inside("runs", name)
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return inside("runs", f"{name}-{digest}")


@dataclass
class RunOutcome:
    """How :func:`run` ended: ``status`` (``finished``, ``diverged`` or ``failed: <error>``),
    the run directory, the steps trained, the :class:`TrainResult` (None when the run had
    already ended or failed) and whether it resumed from a checkpoint."""

    status: str
    path: Path
    steps: int
    result: TrainResult | None = None
    resumed_from: int | None = None
    error: BaseException | None = None


class _Hooks(TrainHooks):
    """The training hooks of a run: the tracker's, plus the records (the tracker's and the
    evaluations') into the store, the progress bar and the live-logging sinks."""

    def __init__(
        self,
        tracker: TrainHooks | None,
        store: Any,
        progress: Any,
        first_step: int = 0,
        sinks: Any = (),
    ) -> None:
        self.tracker, self.store, self.progress = as_hooks(tracker), store, progress
        self.first_step, self.sinks = first_step, sinks

    def record(self, record: dict[str, Any]) -> None:
        """Write ``record`` to the store (None on ranks other than 0), show it and log it."""
        if self.store is not None:
            self.store.append(record)
        if self.progress is not None:
            self.progress.record(record)
        for s in self.sinks:
            s.write(record)

    def on_optimizer(self, optimizer: Any) -> None:
        self.tracker.on_optimizer(optimizer)

    def on_start(self, model: Any, dataset: Dataset, config: TrainConfig) -> None:
        self.tracker.on_start(model, dataset, config)
        if self.progress is not None:
            self.progress.start(config.total_steps(dataset.n_train), self.first_step)

    def before_step(self, step: int, model: Any, batch: Any, loss: Any) -> None:
        self.tracker.before_step(step, model, batch, loss)
        if self.progress is not None:
            self.progress.loss = loss.item()

    def after_step(self, step: int, model: Any) -> None:
        self.tracker.after_step(step, model)
        if self.progress is not None:
            self.progress.update(step + 1)

    def on_evaluate(self, entry: dict[str, float], seconds: float) -> None:
        self.tracker.on_evaluate(entry, seconds)
        values = {k: v for k, v in entry.items() if k not in ("step", "epoch", "seconds")}
        self.record(
            {
                "step": int(entry["step"]),
                "epoch": entry["epoch"],
                "measure": EVAL_MEASURE,
                "values": values,
                "seconds": seconds,
                "matvecs": 0,
            }
        )

    def on_end(self, result: TrainResult) -> None:
        self.tracker.on_end(result)

    def state_dict(self) -> dict[str, Any] | None:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.tracker.load_state_dict(state)


class RunTerminated(KeyboardInterrupt):
    """SIGTERM (what batch schedulers send) arrived while :func:`run` was running; like
    Ctrl-C (SIGINT), the run is marked ``failed: terminated`` and resumes when run again."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the body runs, the first SIGTERM raises :class:`RunTerminated` in the main
    thread (a second one kills the process, as by default), when SIGTERM still has its
    default action (which would kill the process with its status ``running``); a handler
    the caller installed is left alone. The previous handler is restored afterwards."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise RunTerminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    config: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    scale: str | None = None,
    dataset: Dataset | None = None,
    progress: bool | Callable[[], Any] = False,
    min_free_bytes: int | None = None,
    log: Sequence[str] | Mapping[str, Any] = (),
) -> RunOutcome:
    """Train and track one run of ``config`` (a TOML path, a preset name or a mapping) at
    ``scale`` (see :func:`apply_scale`), writing its store to ``out_dir`` (default
    :func:`default_out_dir`).

    Everything is checked before the run directory is created: config keys and values,
    reserved names, the tracker spec (by building the tracker), the dataset (finite inputs),
    the model (built, and run forward on two training examples; see
    :func:`~breakeven.train.prepare_model`), the measures' options against the model and
    the data (e.g. the Hessian's ``k`` against its parameter count), and that ``out_dir``
    is writable with enough free disk. Then, holding the directory's lock (see
    :meth:`~breakeven.tracking.store.RunStore.open`): an existing ``out_dir`` of the same
    config is resumed from its last checkpoint (a different config is refused, naming the
    differing keys, unless the run failed before its first checkpoint: then the new config
    replaces it); one whose run ended is left as it is. An ``OSError`` during training
    (e.g. a full disk) ends the run with status ``failed: <error>`` and is returned in the
    outcome, not raised; any other exception also marks the run failed and is raised: Ctrl-C
    as ``failed: interrupted``, and SIGTERM (raised as :class:`RunTerminated` when SIGTERM
    has its default action, in the main thread) as ``failed: terminated``.

    Threads: the run uses ``train.num_threads``, else the thread count torch has when it
    starts; the count is saved in each checkpoint and a resume sets it again for its
    duration (restoring the caller's afterwards), since a resume is bitwise equal to the
    uninterrupted run only with the same thread count.

    ``dataset`` replaces loading ``train.dataset`` by name. ``progress=True`` shows a
    progress bar on stderr (tqdm if installed).

    Live logging: the config's ``[log]`` table with ``log`` applied (``--log`` flags such as
    ``["tensorboard", "wandb.project=x"]``, see :func:`log_table`) names the sinks that show
    every record as it is written (:mod:`breakeven.tracking.sinks`; by default under
    ``<out_dir>/logs/``). They are checked with the config (an unknown sink or option, or a
    missing package, is refused before anything is written), opened on rank 0 once the run
    directory is, and closed with the run's status. They are not part of the run's identity:
    a resume may add or drop them, and they never change training.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is data-parallel (see
    :func:`breakeven.train`) and measured with a distributed Tracker: rank 0 alone writes the
    run directory and shows progress; a resume loads rank 0's checkpoint on every rank.
    """
    raw = apply_overrides(apply_scale(load_config(config), scale), overrides)
    rc = resolve_config(raw)
    log_spec = parse_log(log_table(raw.get(LOG_TABLE), log))
    if out_dir is None:
        ov = (
            list(overrides)
            if not isinstance(overrides, Mapping)
            else [f"{k}={v!r}" for k, v in overrides.items()]
        )
        if scale not in (None, FULL):
            ov.insert(0, f"scale={scale}")
        out_dir = default_out_dir(raw, ov)
    path = Path(out_dir)
    with _sigterm_raises():
        world, rank, started = _start_distributed(rc.train.device)
        try:
            return _run(rc, path, dataset, progress, min_free_bytes, world, rank, log_spec)
        finally:
            if started:
                torch.distributed.destroy_process_group()


def _start_distributed(device: str) -> tuple[int, int, bool]:
    """(world size, rank, whether this call started the process group): under ``torchrun``
    (``WORLD_SIZE`` > 1) the default group is initialised here (gloo on CPU, nccl on CUDA)."""
    if not torch.distributed.is_available():
        return 1, 0, False
    started = False
    if not torch.distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        started = True
    world, rank = world_and_rank()
    return world, rank, started


def _from_rank0(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _ended(rc: RunConfig, path: Path, status: str) -> RunOutcome:
    """The outcome of a run that had already ended (its config must be ``rc``'s)."""
    keys = config_diff(read_config(path), rc.to_dict())
    if keys:
        raise ConfigMismatchError(path, keys)
    return RunOutcome(status, path, int((read_summary(path) or {}).get("steps", 0)))


def _run(rc, path, dataset, progress, min_free_bytes, world, rank, log_spec) -> RunOutcome:
    """The body of :func:`run`; under torchrun rank 0 alone writes the run directory."""
    lead = rank == 0
    store = RunStore(path, min_free_bytes=min_free_bytes or DEFAULT_MIN_FREE_BYTES)
    # a final status never changes, so it needs no lock; every other is decided under it
    ended = _from_rank0(store.final_status() if lead else None, world)
    if ended is not None:
        return _ended(rc, path, ended)
    ds = prepare_dataset(rc.train, dataset)
    tracker = _checked_tracker(rc, ds, distributed=world > 1)
    checkpoint, ended = _from_rank0(
        (store.open(rc.to_dict()), store.ended_) if lead else None, world
    )
    if ended is not None:  # it ended while this process was loading its data
        return _ended(rc, path, ended)
    threads = int(
        rc.train.num_threads or (checkpoint or {}).get("num_threads") or torch.get_num_threads()
    )
    if not lead:  # every rank trains; rank 0 alone writes and shows progress
        store, progress = None, False
    return _train_run(rc, path, store, ds, tracker, checkpoint, threads, progress, log_spec)


def _checked_tracker(rc: RunConfig, ds: Dataset, distributed: bool) -> Tracker | None:
    """The tracker of ``rc.track`` (None when it is empty), after the checks that need the
    model and the data (before any file is written): the model builds and runs (see
    :func:`~breakeven.train.prepare_model`), and each measure's options suit its parameter
    count, the training set and the batch size. Its records go nowhere until its
    ``on_record`` is set."""
    model = prepare_model(rc.train, ds)  # the checks that need the data, before any file
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model  # train() builds its own
    if not rc.track:
        return None
    try:
        tracker = build_tracker(rc.track, seed=rc.train.data_seed, distributed=distributed)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    for m, _ in tracker.measures:
        if m.optimizers is not None and rc.train.optimizer not in m.optimizers:
            raise ConfigError(
                f"track.{m.name}: measures under optimizer={list(m.optimizers)} only, but "
                f"train.optimizer={rc.train.optimizer!r}: set train.optimizer or drop it"
            )
        try:
            m.check(n_params, ds.n_train, rc.train.batch_size)
        except ValueError as e:
            raise ConfigError(f"track.{m.name}: {e}") from e
    return tracker


def _train_run(
    rc: RunConfig,
    path: Path,
    store: RunStore | None,
    ds: Dataset,
    tracker: Tracker | None,
    checkpoint: dict[str, Any] | None,
    threads: int,
    progress: bool | Callable[[], Any],
    log_spec: dict[str, dict[str, Any]],
) -> RunOutcome:
    """Train from ``checkpoint`` (None: from the start) with ``threads`` torch threads,
    writing records, checkpoints and the end status into ``store`` (None: write nothing,
    on ranks other than 0) and the sinks of ``log_spec`` (opened here, closed with the run's
    status); the caller's thread count is restored afterwards."""
    resumed_from = None if checkpoint is None else int(checkpoint["step"])
    callers_threads, bar, sinks, status = torch.get_num_threads(), None, [], "failed"

    def save(state: dict[str, Any]) -> None:
        if store is not None:  # every rank builds the state
            store.save_checkpoint({**state, "num_threads": threads})

    try:
        torch.set_num_threads(threads)
        if store is not None and log_spec:
            sinks = make_sinks(log_spec, path, config=rc.to_dict(), first_step=resumed_from or 0)
        bar = _make_progress(progress)
        hooks = _Hooks(tracker, store, bar, resumed_from or 0, sinks)
        if tracker is not None:
            tracker.on_record = hooks.record  # the tracker's records: store, bar and sinks
        result = train(
            rc.train,
            hooks,
            dataset=ds,
            checkpoint_every=rc.checkpoint_every,
            on_checkpoint=save if rc.checkpoint_every else None,
            resume=checkpoint,
        )
        if store is not None:
            summary = _summary(result, resumed_from, threads)
            store.finish(result.status, summary, result.model.state_dict())
        status = result.status
    except OSError as e:  # e.g. a full disk: a clean failed status
        message = f"{type(e).__name__}: {e}"
        if store is not None:
            store.fail(message)
        return RunOutcome(f"failed: {message}", path, 0, None, resumed_from, error=e)
    except BaseException as e:
        if store is not None:
            store.fail(_failure_reason(e))
        raise
    finally:
        torch.set_num_threads(callers_threads)
        if store is not None:
            store.close()
        if bar is not None:
            bar.close()
        close_sinks(sinks, status)
    return RunOutcome(result.status, path, result.steps, result, resumed_from)


def _summary(result: TrainResult, resumed_from: int | None, threads: int) -> dict[str, Any]:
    """What ``summary.json`` holds of a run that ended."""
    return {
        "status": result.status,
        "steps": result.steps,
        "seconds": result.seconds,
        "diverged_at": result.diverged_at,
        "last_loss": result.losses[-1] if result.losses else None,
        "final": result.final,
        "resumed_from": resumed_from,
        "num_threads": threads,
    }


def _failure_reason(e: BaseException) -> str:
    """The failed status of a run that ``e`` stopped."""
    if isinstance(e, RunTerminated):
        return "terminated"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------ progress


class _Progress:
    """Step, loss, accuracy, latest lambda_K^1 and lambda_H^1 and time left, on stderr: a
    tqdm bar when tqdm is installed, else a line every ~5% of the run or 10 seconds."""

    def __init__(self, use_tqdm: bool = True, stream: Any = None) -> None:
        self.use_tqdm, self.stream = use_tqdm, stream or sys.stderr
        self.loss: float | None = None
        self.acc: float | None = None
        self.lam_k: float | None = None
        self.lam_h: float | None = None
        self.bar: Any = None
        self.total = 0
        self.first = 0  # the step this process started from (> 0 when resumed)
        self.t0 = self.last_print = 0.0
        self.step = 0  # steps done
        self.printed: str | None = None  # the fields of the last line printed (no tqdm)

    def start(self, total: int, first: int = 0) -> None:
        self.total, self.first = total, first
        self.t0 = self.last_print = time.perf_counter()
        if self.use_tqdm:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                total=total,
                initial=first,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
                file=self.stream,
            )

    def fields(self) -> dict[str, str]:
        return {
            "loss": fmt(self.loss, ".3g"),
            "acc": fmt(self.acc, ".3f"),
            "λK1": fmt(self.lam_k, ".3g"),
            "λH1": fmt(self.lam_h, ".3g"),
        }

    def update(self, step: int) -> None:
        """``step`` steps are done."""
        self.step = step
        if self.bar is not None:
            self.bar.set_postfix(self.fields(), refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last_print < 10 and step % max(1, self.total // 20) and step != self.total:
            return
        self._print(now)

    def _print(self, now: float) -> None:
        self.last_print = now
        done = self.step - self.first
        left = (self.total - self.step) * (now - self.t0) / done if done > 0 else math.nan
        text = " ".join(f"{k} {v}" for k, v in self.fields().items())
        line = f"step {self.step}/{self.total} {text} left {left:.0f}s"
        print(line, file=self.stream, flush=True)
        self.printed = text

    def record(self, record: dict[str, Any]) -> None:
        """Take the latest lambdas and validation accuracy of ``record``; after the last
        step (the final evaluation and measurements) they are shown at once, so that the
        bar ends with the numbers of the run's summary."""
        values = {canonical_key(k): v for k, v in record.get("values", {}).items()}
        self.lam_k = values.get("lambda_K_1", self.lam_k)
        self.lam_h = values.get("lambda_H_1", self.lam_h)
        self.acc = values.get("val_acc", self.acc)
        if self.bar is not None:
            self.bar.set_postfix(self.fields(), refresh=self.step >= self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total and self.printed is not None:  # what changed since the last line
            if " ".join(f"{k} {v}" for k, v in self.fields().items()) != self.printed:
                self._print(time.perf_counter())


def _make_progress(progress: bool | Callable[[], Any]) -> Any:
    if progress is True:
        return _Progress()
    if callable(progress):
        return progress()
    return None
