"""Sweeps: one preset over a grid of values and seeds, run by a process pool or by Ray.

A preset's ``[sweep]`` table gives its default grid and seeds::

    [sweep]
    grid = { "train.lr" = [0.1, 0.03, 0.01] }   # keys written like --set keys
    seeds = 2                                   # seeds 0, 1 (or a list: [0, 3])

Seed ``s`` sets ``train.init_seed = train.data_seed = s``. The runs are the product of the
grid's values (in the grid's order) and the seeds; each writes its run directory under
``<out>/runs/<name>`` (``lr=0.1_seed=0``), and ``<out>/sweep.json`` records the plan (see
:mod:`breakeven.analysis.runs`).

Comparable runs: when the grid varies ``train.batch_size``, K is measured on mini-batches
of a fixed ``M = 128`` (paper Sec. 4) in every run whose ``covariance`` measures do not set
``batch_size`` themselves.

Resumable: running the same sweep into the same directory skips finished and diverged runs
and resumes interrupted ones from their last checkpoint. A diverged or failed run is
reported in the outcome, never fatal; a dataset that cannot be found stops the sweep before
any run starts (each distinct dataset is loaded once first; every run would fail the same
way), and is reported once.

Workers: the local backend runs the runs in worker processes, one run at a time each. A
worker that dies (killed, out of memory) fails only the run it was running, reported with
the signal or exit code, and is replaced. A worker ends with the sweep's process (on Linux
at once, by ``PR_SET_PDEATHSIG``; elsewhere it starts no run once the sweep's process is
gone), so a killed sweep leaves no worker behind holding a run's lock, and a rerun resumes
every run. One sweep at a time per directory: a sweep holds ``<out>/sweep.lock`` while it
runs, and a second one stops at once (:class:`SweepBusyError`).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import CorruptDatasetError, DatasetNotFoundError
from ..records import (
    SWEEP_FILE,
    RunStoreError,
    atomic_write,
    hold_lock,
    inside,
    name_problem,
    read_status,
    read_sweep_spec,
    short_key,
    to_json,
)
from ..tracking import build_tracker
from ..tracking.sinks import parse_log
from ..train import ConfigError, TrainConfig, prepare_dataset
from .runner import (
    FULL,
    LOG_TABLE,
    _parse_value,
    apply_overrides,
    apply_scale,
    load_config,
    log_table,
    resolve_config,
    run,
)

__all__ = [
    "BACKENDS",
    "SweepBusyError",
    "SweepOutcome",
    "SweepPlan",
    "SweepRun",
    "default_sweep_dir",
    "parse_grid",
    "plan_sweep",
    "sweep",
]

BACKENDS = ("local", "ray")
FIXED_M = 128  # K's mini-batch size when the batch size is swept (paper Sec. 4)
FAILED_DATASET = "dataset"
LOCK_FILE = "sweep.lock"  # held (flock) by the process running the sweep


class SweepBusyError(RunStoreError):
    """Another process runs a sweep in this directory (it holds ``sweep.lock``)."""


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its ``name``, swept ``params`` (dotted key: value), ``seed`` and
    the complete run config (a mapping :func:`~breakeven.experiments.run` accepts)."""

    name: str
    params: dict[str, Any]
    seed: int
    config: dict[str, Any]


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will run: the preset, scale, grid, seeds, overrides, notes on settings
    it fixed, and the runs."""

    preset: str
    scale: str
    grid: dict[str, list[Any]]
    seeds: list[int]
    overrides: list[str]
    notes: list[str]
    runs: list[SweepRun]
    threads: int | None = None  # torch threads set in each worker (None: left as they are)

    def spec(self) -> dict[str, Any]:
        """The content of ``sweep.json``."""
        return {
            "kind": "sweep",
            "preset": self.preset,
            "scale": self.scale,
            "grid": self.grid,
            "seeds": self.seeds,
            "overrides": self.overrides,
            "notes": self.notes,
            "runs": [{"name": r.name, "params": r.params, "seed": r.seed} for r in self.runs],
        }


GRID_TABLES = ("train", "track", "run")  # the tables a grid key may set


def _normalise_key(key: str) -> str:
    if "." not in key and key in TrainConfig.__dataclass_fields__:
        return f"train.{key}"
    if key.split(".")[0] not in GRID_TABLES or "." not in key:
        raise ConfigError(
            f"grid key {key!r} is unknown: use train.<key>, track.<measure>.<option> or "
            f"run.<key>, or a bare key of {sorted(TrainConfig.__dataclass_fields__)}"
        )
    return key


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "train.batch_size=32,128"]`` as ``{"train.lr": [0.1, 0.01], ...}``
    (values read as TOML, like ``--set`` values)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r} is invalid: must be key=v1,v2,...")
        grid[_normalise_key(key.strip())] = [_parse_value(v.strip()) for v in values.split(",")]
    return grid


def _value_name(v: Any) -> str:
    text = "-".join(map(str, v)) if isinstance(v, list) else str(v)
    return "".join(c if c.isalnum() or c in ".-+" else "-" for c in text)


def plan_sweep(
    preset: str | os.PathLike | Mapping[str, Any],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | Sequence[int] | None = None,
    scale: str | None = None,
    overrides: Sequence[str] = (),
    workers: int = 1,
) -> SweepPlan:
    """The runs of a sweep, every config validated (keys, values, tracker spec) before any
    training. ``grid``/``seeds`` default to the preset's ``[sweep]`` table (``grid`` given
    replaces the preset's whole grid); ``scale`` defaults to ``"full"``. With ``workers``
    > 1, runs whose config leaves ``train.num_threads`` unset start with ``cpus // workers``
    threads each: set in the worker before the run starts and never after, so a resumed run
    keeps the count it started with (:func:`~breakeven.experiments.run` saves it in its
    checkpoints) and a resume with other workers is the same run."""
    raw = load_config(preset)
    name = str(raw.get("name", "sweep"))
    table = raw.get("sweep", {})
    if not isinstance(table, Mapping) or set(table) - {"grid", "seeds"}:
        raise ConfigError("[sweep] is invalid: it may hold only grid = {...} and seeds")
    grid = _checked_grid(table.get("grid", {}) if grid is None else grid, given=grid is not None)
    seed_list = _seed_list(table.get("seeds", 1) if seeds is None else seeds)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} is invalid: must be an integer >= 1")
    base = apply_overrides(apply_scale(raw, scale), overrides)
    why = name_problem(f"{name}-{scale or FULL}")  # the default directory runs/sweeps/<this>
    if why is not None:
        raise ConfigError(f"name={name!r} with scale {scale or FULL!r} is invalid: {why}")
    shorts = [short_key(k) for k in grid]
    if len(set(shorts)) != len(shorts):
        raise ConfigError(
            f"grid keys {list(grid)} end in the same name; sweep one of them (run names and "
            "the analysis columns use the last part of each key)"
        )
    fixed, notes = _fixed_covariance_batch(grid, base)
    threads = None
    if workers > 1 and base.get("train", {}).get("num_threads") is None:
        # set in each worker, not in the run's config: a resume with other workers or on
        # another machine is the same run (and gets back its own count from its checkpoint)
        threads = max(1, (os.cpu_count() or 1) // workers)
        notes.append(f"{workers} workers: {threads} torch thread(s) per run")
    runs = _plan_runs(base, grid, seed_list, fixed)
    return SweepPlan(name, scale or FULL, grid, seed_list, list(overrides), notes, runs, threads)


def _checked_grid(grid: Any, given: bool) -> dict[str, list[Any]]:
    """The grid with its keys normalised (``lr`` as ``train.lr``) and each value a list of
    distinct values; ``given``: passed to :func:`plan_sweep` (else the preset's)."""
    if not given and not isinstance(grid, Mapping):
        raise ConfigError("[sweep] grid is invalid: must be a table {key = [values]}")
    out = {
        _normalise_key(k): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()
    }
    for key, values in out.items():
        if not values or len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"grid {key}={values!r} is invalid: must list distinct values")
    return out


def _seed_list(seeds: Any) -> list[int]:
    """``seeds`` (a count, or a list of seeds) as the list of seeds."""
    seed_list = (
        list(range(seeds))
        if isinstance(seeds, int) and not isinstance(seeds, bool)
        else list(seeds)
    )
    if not seed_list or not all(isinstance(s, int) and s >= 0 for s in seed_list):
        raise ConfigError(f"seeds={seeds!r} is invalid: a count >= 1 or a list of integers >= 0")
    return seed_list


def _fixed_covariance_batch(
    grid: Mapping[str, list[Any]], base: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """When the grid sweeps ``train.batch_size``: the overrides that measure K on
    mini-batches of :data:`FIXED_M` in every covariance measure that does not set its own
    ``batch_size`` (in its table or in the grid), and a note for each."""
    fixed: dict[str, Any] = {}
    notes = []
    if "train.batch_size" in grid:
        for mname, opts in base.get("track", {}).items():
            key = f"track.{mname}.batch_size"
            own = "batch_size" in opts or key in grid
            if opts.get("measure", mname) == "covariance" and not own:
                fixed[key] = FIXED_M
                notes.append(
                    f"the batch size is swept: {mname} measures K on mini-batches of M = {FIXED_M}"
                )
    return fixed, notes


def _plan_runs(
    base: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
    seed_list: list[int],
    fixed: Mapping[str, Any],
) -> list[SweepRun]:
    """One validated run per combination of the grid's values (in its order) and seed,
    named ``<last part of each key>=<value>_seed=<seed>`` (see :func:`_check_run_names`)."""
    runs = []
    for combo in itertools.product(*grid.values()):
        params = dict(zip(grid, combo, strict=True))
        for seed in seed_list:
            ov = {**fixed, **params, "train.init_seed": seed, "train.data_seed": seed}
            cfg = apply_overrides(base, ov)
            rc = resolve_config(cfg)
            if rc.track:
                try:
                    build_tracker(rc.track)
                except (TypeError, ValueError) as e:
                    raise ConfigError(str(e)) from e
            label = "_".join(f"{short_key(k)}={_value_name(v)}" for k, v in params.items())
            run_name = f"{label}_seed={seed}" if label else f"seed={seed}"
            runs.append(SweepRun(run_name, params, seed, cfg))
    _check_run_names([r.name for r in runs])
    return runs


def _check_run_names(names: list[str]) -> None:
    """Each name must name a directory ``<out>/runs/<name>``, and no two runs share one."""
    for run_name in names:  # each names a directory <out>/runs/<name>
        why = name_problem(run_name)
        if why is not None:
            raise ConfigError(
                f"the grid makes the run name {run_name!r}, which is invalid: {why}; the run "
                "names are <last part of each grid key>=<value>_seed=<seed>"
            )
    if len(set(names)) != len(names):
        raise ConfigError("two runs of this grid get the same name; use distinct grid values")


@dataclass
class SweepOutcome:
    """How a sweep ended: its directory and, per run, ``(name, status, seconds)``; status
    is ``finished``, ``diverged``, ``failed: <error>``, or ``skipped`` when the sweep
    stopped before it (``dataset_error`` says why when a dataset could not be read)."""

    path: Path
    runs: list[tuple[str, str, float]] = field(default_factory=list)
    dataset_error: str | None = None  # the loader's message when a missing dataset stopped it

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, status, _ in self.runs:
            key = status.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out


def run_one(
    config: dict[str, Any], out_dir: str, threads: int | None = None
) -> tuple[str, float, str | None]:
    """Run one sweep member (in a worker): ``(status, seconds, error kind)``, never raising.
    ``threads``: torch threads of this run (the caller's count is given back after it)."""
    import torch

    t0 = time.perf_counter()
    callers_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        outcome = run(config, out_dir)
        status = outcome.status
        kind = None
    except (DatasetNotFoundError, CorruptDatasetError) as e:
        status, kind = f"failed: {e}", FAILED_DATASET
    except Exception as e:  # reported, never fatal to the sweep
        status, kind = f"failed: {type(e).__name__}: {e}", "error"
    finally:
        torch.set_num_threads(callers_threads)
    return status, time.perf_counter() - t0, kind


def _write_spec(path: Path, spec: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    target = inside(path, SWEEP_FILE)
    if target.exists():
        old = read_sweep_spec(path)
        written = json.loads(to_json(spec))  # compared as it reads back
        keys = ("preset", "scale", "grid", "seeds", "overrides")
        diff = [k for k in keys if old.get(k) != written[k]]
        if diff:
            raise ConfigError(
                f"{path} holds another sweep (differing: {', '.join(diff)}); use another --out"
            )
    atomic_write(target, lambda f: f.write((to_json(spec, indent=1) + "\n").encode()))


def default_sweep_dir(plan: SweepPlan) -> Path:
    """``runs/sweeps/<preset>-<scale>`` (checked with :func:`breakeven.records.inside`)."""
    return inside("runs", "sweeps", f"{plan.preset}-{plan.scale}")


def sweep(
    preset: str | os.PathLike | Mapping[str, Any] | SweepPlan,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | Sequence[int] | None = None,
    scale: str | None = None,
    overrides: Sequence[str] = (),
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    out: str | os.PathLike | None = None,
    on_done: Callable[[str, str, float], None] | None = None,
    log: Sequence[str] | Mapping[str, Any] = (),
) -> SweepOutcome:
    """Run a sweep (see the module docstring and :func:`plan_sweep`) and return its outcome.
    ``preset`` may be a :class:`SweepPlan` made by :func:`plan_sweep` (its grid, seeds, scale
    and overrides are then used, and those arguments must be left out).

    ``backend="local"`` runs ``workers`` runs at a time in worker processes (in this
    process when ``workers == 1``; see the module docstring); ``"ray"`` submits each
    run as a Ray task of one CPU to the cluster at ``address`` (None: a local Ray instance
    with ``workers`` CPUs); the output directory must then be on a filesystem that every
    node sees. ``on_done(name, status, seconds)`` is called as each run ends.

    ``log``: live logging of every run (``--log`` flags or a ``[log]`` table, applied over
    the config's ``[log]`` table; see :func:`~breakeven.experiments.run`), checked here
    before any run starts; each run logs under its own directory by default.

    Raises :class:`SweepBusyError`, before writing anything or starting any run, when
    another sweep runs in the output directory. With the local backend each dataset is
    loaded once before anything is written: if one cannot be read, no run starts, every run
    is ``skipped`` and ``dataset_error`` holds the loader's message.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is invalid: must be one of {list(BACKENDS)}")
    if address is not None and backend != "ray":
        raise ConfigError("--address is for --backend ray")
    if isinstance(preset, SweepPlan):
        if grid is not None or seeds is not None or scale is not None or overrides:
            raise ConfigError("give grid, seeds, scale and overrides to plan_sweep, not sweep")
        plan = preset
    else:
        plan = plan_sweep(
            preset, grid=grid, seeds=seeds, scale=scale, overrides=overrides, workers=workers
        )
    path = Path(out) if out is not None else default_sweep_dir(plan)
    configs = {r.name: r.config for r in plan.runs}
    if log:
        for r in plan.runs:
            configs[r.name] = {**r.config, LOG_TABLE: log_table(r.config.get(LOG_TABLE), log)}
    for cfg in configs.values():
        parse_log(cfg.get(LOG_TABLE))
    if backend == "local":  # a Ray worker may see other files than this process
        error = _dataset_error(plan, path)
        if error is not None:
            runs = [(r.name, "skipped", 0.0) for r in plan.runs]
            return SweepOutcome(path, runs, dataset_error=error)
    # absolute (workers may start elsewhere) without resolving links: inside() refuses them
    jobs = [
        (r.name, configs[r.name], os.path.abspath(inside(path, "runs", r.name)), plan.threads)
        for r in plan.runs
    ]
    lock = _lock_sweep(path)
    try:
        return _sweep(plan, path, jobs, workers, backend, address, on_done)
    finally:
        if lock is not None:
            lock.close()


def _dataset_error(plan: SweepPlan, path: Path) -> str | None:
    """The loader's message when a dataset of a run still to do cannot be read, else None.

    Each distinct dataset (name and loader options) is loaded once, here, before any run
    starts or any file of the sweep is written, so that a missing dataset is reported once
    instead of by every run (and worker) that would load it."""
    seen: set[str] = set()
    for r in plan.runs:
        if read_status(inside(path, "runs", r.name)) in ("finished", "diverged"):
            continue
        c = resolve_config(r.config).train
        key = to_json([c.dataset, dict(c.dataset_kwargs)])
        if key in seen:
            continue
        seen.add(key)
        try:
            prepare_dataset(c)
        except (DatasetNotFoundError, CorruptDatasetError) as e:
            return str(e)
    return None


def _sweep(plan, path, jobs, workers, backend, address, on_done) -> SweepOutcome:
    """The body of :func:`sweep`, run while this process holds the sweep's lock."""
    _write_spec(path, plan.spec())
    results: dict[str, tuple[str, float]] = {}
    outcome = SweepOutcome(path)

    def done(name: str, status: str, seconds: float, kind: str | None) -> bool:
        """Record a finished run; True when the sweep must stop (a dataset is missing)."""
        results[name] = (status, seconds)
        if on_done is not None:
            on_done(name, status, seconds)
        if kind == FAILED_DATASET and outcome.dataset_error is None:
            outcome.dataset_error = status.removeprefix("failed: ")
        return kind == FAILED_DATASET

    if backend == "ray":
        _run_ray(jobs, workers, address, done)
    elif workers == 1:
        for name, cfg, run_dir, _ in jobs:
            if done(name, *run_one(cfg, run_dir)):
                break
    else:
        _run_processes(jobs, workers, done)
    for name, *_ in jobs:
        status, seconds = results.get(name, ("skipped", 0.0))
        outcome.runs.append((name, status, seconds))
    return outcome


Done = Callable[[str, str, float, "str | None"], bool]


def _lock_sweep(path: Path) -> Any:
    """Hold ``<path>/sweep.lock`` for this process (released when the returned file is
    closed or the process dies; not held where ``flock`` does not exist); raise
    :class:`SweepBusyError` if another process holds it."""
    path.mkdir(parents=True, exist_ok=True)
    where = inside(path, LOCK_FILE)
    try:
        return hold_lock(where)
    except BlockingIOError as e:
        raise SweepBusyError(
            f"another sweep is running in {path} (it holds {where}): wait for it to end, or "
            "use another output directory"
        ) from e


def _end_with_parent() -> None:
    """In a worker: have the OS kill this process when its parent dies (Linux:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere nothing, and :func:`_work`'s check of
    the parent before each run remains)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass


def _work(conn: Any, parent: int) -> None:
    """A worker process's body: receive jobs ``(config, out_dir, threads)`` on ``conn`` and
    send back :func:`run_one`'s result of each, one at a time, until the end of ``conn``.
    A job received after the parent (pid ``parent``) died is not started."""
    _end_with_parent()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if os.getppid() != parent:  # checked after _end_with_parent(): no gap between them
            return
        conn.send(run_one(*job))


def _how_it_died(exitcode: int | None) -> str:
    """``killed by signal 9 (SIGKILL)`` or ``exit code 3`` from a process's exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"killed by signal {-exitcode}"
        return f"killed by signal {-exitcode} ({name})"
    return f"exit code {exitcode}"


def _run_processes(jobs: list, workers: int, done: Done) -> None:
    """Run the jobs in at most ``workers`` spawned worker processes, one run at a time each.
    A worker that dies fails only the run it was running (``failed: the worker process died:
    <how>``) and is replaced while runs remain; a stop asked by ``done`` starts no further
    run. The workers end with this function: when the runs are done, or killed at once if
    it is left early (an exception, Ctrl-C)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
    queue = list(jobs)
    idle: list[tuple[Any, Any]] = []  # (connection, process) of the workers waiting
    busy: dict[Any, tuple[Any, str, float]] = {}  # connection -> (process, run, start)
    stop = False
    try:
        while busy or (queue and not stop):
            while queue and not stop and len(busy) < workers:
                if idle:
                    conn, proc = idle.pop()
                    if not proc.is_alive():  # it died while it waited: start another
                        conn.close()
                        proc.join()
                        continue
                else:
                    conn, child = ctx.Pipe()
                    proc = ctx.Process(target=_work, args=(child, os.getpid()))
                    proc.start()
                    child.close()  # the worker's end: EOF here when the worker dies
                name, *job = queue.pop(0)
                busy[conn] = (proc, name, time.perf_counter())
                try:
                    conn.send(job)
                except OSError:  # it died just now: seen below as the end of conn
                    pass
            for conn in wait(list(busy)):
                proc, name, t0 = busy.pop(conn)
                try:
                    result = conn.recv()
                    idle.append((conn, proc))
                except (EOFError, OSError):  # the worker died during the run
                    conn.close()
                    proc.join()
                    how = _how_it_died(proc.exitcode)
                    result = (
                        f"failed: the worker process died: {how}",
                        time.perf_counter() - t0,
                        "error",
                    )
                stop = done(name, *result) or stop
    finally:
        for proc, _, _ in busy.values():
            proc.kill()
        for conn, proc in [*idle, *((c, p) for c, (p, _, _) in busy.items())]:
            conn.close()  # an idle worker sees the end of its connection and returns
            proc.join()


def _run_ray(jobs: list, workers: int, address: str | None, done: Done) -> None:
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the ray backend needs Ray: pip install 'breakeven[ray]' (or use --backend local)"
        ) from e
    started = not ray.is_initialized()
    # ray.init installs its own SIGTERM handler; a sweep that started Ray gives it back
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = workers
        ray.init(address=address, **kwargs)
    try:
        task = ray.remote(num_cpus=1)(run_one)
        refs = {task.remote(*job[1:]): job[0] for job in jobs}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task's worker died
                    result = (f"failed: the worker died ({type(e).__name__}: {e})", 0.0, "error")
                if done(refs[ref], *result):
                    for p in pending:
                        ray.cancel(p)
                    pending = []
    finally:
        if started:
            ray.shutdown()
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    if handler is not None:
                        signal.signal(sig, handler)
