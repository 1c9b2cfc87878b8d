"""The Tracker: measures on schedules along any training loop, ours or a user's.

In a plain PyTorch loop::

    tracker = Tracker([GradientCovariance(), (HessianTop(), every(500))], every(50),
                      loss_fn=loss_fn, probe=(x_probe, y_probe), train_data=(x, y),
                      lr=0.1, batch_size=128)
    for step, (xb, yb) in enumerate(loader):
        opt.zero_grad(); loss = loss_fn(model(xb), yb); loss.backward()
        tracker.before_step(step, model, (xb, yb), loss)   # sees the mini-batch gradient
        opt.step()
        tracker.after_step(step, model)                    # loss change; emits the records
    tracker.records_, tracker.summary()

With ``out_dir=`` the records go to a run directory, the same store as ``breakeven run``
writes (``breakeven show``, ``plot``, ``report``, ``verdict``, ``export`` and
:func:`breakeven.load_run` read it)::

    with Tracker([...], every(50), ..., out_dir="runs/mine") as tracker:
        for step, ...:  # the same hooks
            ...
    # leaving the block writes summary.json, model.pt (the last model seen) and the status

``breakeven.train`` calls the same hooks (plus ``on_start``, which fills in the probe, the
data, the learning rate and the batch size from the run's config). Every measurement happens
at the parameters before the step and leaves training bitwise unchanged: the estimators
restore the model's state and the tracker draws its mini-batches from its own generator.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sized
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._core.checks import FRACTION, POSITIVE, SEED_MAX, check_int
from .._core.data import Batch, is_pair
from .._core.distributed import all_reduce_sum, check_distributed, world_and_rank
from .._core.functional import LossFn, check_loss_fn
from ..measures import MEASURES, Context, Measure, Measurement
from ..records import read_records
from .hooks import TrainHooks
from .schedules import Schedule, every, parse_schedule
from .store import ENDED, OutputDirError, RunStore, RunStoreError, jsonable

Record = dict[str, Any]
_SCHEDULE_KEYS = ("every", "at", "log_spaced", "schedule")


class Tracker(TrainHooks):
    """Run ``measures`` along a training trajectory (the :class:`TrainHooks` of
    :func:`breakeven.train`, or called from any loop).

    Args:
        measures: :class:`Measure` objects or registered measure names (``"covariance"``:
            the measure with its default options, as a config's ``[track]`` table), or
            ``(measure, schedule)`` pairs to give one its own schedule.
        schedule: the default schedule (``every(100)``).
        loss_fn: mean-reduced loss (default: cross-entropy, as ``breakeven.train``).
        probe: fixed ``(x, y)`` for Hessian quantities and the loss change.
        train_data: ``(x, y)`` training set, from which K's mini-batches are drawn.
        val_data: ``(x, y)`` validation set (validation metrics, predictions).
        lr: learning rate, a finite number > 0 or a function of the step.
        momentum: SGD momentum beta in [0, 1) (edge-of-stability threshold).
        optimizer: the training's ``torch.optim`` optimizer, for measures that read its
            state (the ``preconditioned_*`` measures read Adam's; never changed); also the
            learning rate when ``lr`` is not given. ``breakeven.train`` passes its own.
        batch_size: training batch size S (K's default M; Eq. 1), an integer >= 1.
        n_train: training-set size N, an integer >= 1 (default ``len(train_data)``).
        steps_per_epoch: for ``per_epoch`` schedules and the records' ``epoch``: an int, or
            the training ``DataLoader`` (its ``len``). Default: at the first step (after
            ``breakeven.train`` or a callback gave what they know), derived from
            ``n_train`` (or ``train_data``) and ``batch_size``: ``ceil(N / batch_size)``,
            or ``N // batch_size`` with ``drop_last=True``. When it cannot be derived the
            records' ``epoch`` is None and a warning says so once (a ``per_epoch``
            schedule raises ``ValueError``).
        drop_last: the loop drops each epoch's last, smaller batch (for ``steps_per_epoch``).
        seed: an integer in [0, 2**63 - 1] (not a bool), seeding the tracker's own generator (K's
            mini-batches).
        on_record: called with each record as soon as it is complete (e.g. a run store).
        out_dir: a run directory to write, the store of ``breakeven run`` (see
            :mod:`breakeven.tracking.store`): ``config.json`` (``config`` plus the tracker's
            settings and measures), ``records.jsonl`` (each record appended and fsynced as
            it is emitted), ``status``, ``checkpoint.pt`` (the tracker's state after each
            step that recorded) and, at :meth:`close`, ``summary.json`` and ``model.pt``.
            Nothing is written outside it. Checked before anything is written: a file, a
            directory of a different config (:class:`~breakeven.ConfigMismatchError`), one
            whose run has ended, or one another process is writing is refused. An existing
            directory of the same config is resumed: ``records_`` holds its records and the
            tracker its saved state, and at the first step the loop calls, the records of
            that step and later ones are dropped (the loop replays them), so the records
            are neither lost nor doubled. For records bitwise equal to an uninterrupted
            run's, save :meth:`state_dict` with the loop's own checkpoint and
            :meth:`load_state_dict` it on resume. Under ``distributed``, rank 0 writes it.
        config: what else defines the run (the loop's hyperparameters, e.g. ``{"model":
            "resnet32", "weight_decay": 5e-4}``; JSON-able), stored in ``config.json``
            under ``train`` beside ``lr``, ``momentum``, ``batch_size``, ``n_train``,
            ``steps_per_epoch`` and ``seed``; a resume must give the same.
        distributed: under torchrun (a process group initialised), each rank passes its own
            part of ``probe``, ``train_data`` and ``val_data``; every measure reduces over
            the ranks, so every rank computes the same values (K draws L / world size
            batches on each rank: L must be a multiple of the world size; ``n_train`` is
            the sum of the ranks' parts). Every rank must call the hooks at every step;
            ``on_record`` is called on rank 0 only.
        sinks: live logging (:mod:`breakeven.tracking.sinks`): each record is also written to
            each sink as it is emitted (rank 0 only), e.g.
            ``sinks=[TensorBoardSink("runs/x/tb")]``: objects with a ``write(record)``
            method (a sink's name is refused: open sinks by name with
            :func:`~breakeven.tracking.sinks.make_sinks`; None: none). Closing them is the
            caller's.

    The arguments are checked here, before anything is written to ``out_dir``: ``lr`` and
    ``momentum`` by the rules of :class:`~breakeven.TrainConfig` (``ValueError`` naming
    the argument), ``seed``, ``batch_size``, ``n_train`` and ``sinks`` as above.

    Records are dicts ``{"step", "epoch", "measure", "values": {key: float}, "seconds",
    "matvecs"}`` (plus ``"arrays"`` for predictions), in ``records_``; ``"measure"`` is the
    measure's ``name`` (a config table's name when ``build_tracker`` renamed it).

    The measures due at a step run in the order given, except that a measure runs after
    those it ``requires`` (by class-level name) that are due too; a cycle of requirements
    raises ``ValueError`` here. What a measure shares (:attr:`Measurement.shared`) is put in
    the step's ``ctx.cache`` under its class-level name, the first of the step when a
    measure is tracked twice. A value key that the measure does not declare
    (:meth:`Measure.emits`) raises ``ValueError``.

    With ``out_dir``, end the run with :meth:`close` (or use the tracker as a context
    manager: leaving the block closes it, and an exception marks the run ``failed: ...``,
    resumable, before it propagates). :func:`breakeven.load_run` of the tracker gives its
    records as the DataFrame that ``load_run(out_dir)`` reads back.
    """

    def __init__(
        self,
        measures: Iterable[Measure | tuple[Measure, Any]],
        schedule: Schedule | Any = None,
        *,
        loss_fn: LossFn | None = None,
        probe: Batch | None = None,
        train_data: Batch | None = None,
        val_data: Batch | None = None,
        lr: float | Callable[[int], float] | None = None,
        momentum: float = 0.0,
        optimizer: torch.optim.Optimizer | None = None,
        batch_size: int | None = None,
        n_train: int | None = None,
        steps_per_epoch: int | Sized | None = None,
        drop_last: bool = False,
        seed: int = 0,
        on_record: Callable[[Record], None] | None = None,
        distributed: bool = False,
        out_dir: str | os.PathLike | None = None,
        config: Mapping[str, Any] | None = None,
        sinks: Iterable[Any] | None = (),
    ) -> None:
        check_distributed(distributed)
        self.distributed = distributed
        default = every(100) if schedule is None else parse_schedule(schedule)
        self.measures: list[tuple[Measure, Schedule]] = []
        for item in measures:
            m, s = item if isinstance(item, tuple) else (item, default)
            m = _as_measure(m)
            if not isinstance(m.name, str) or not m.name:
                raise ValueError(
                    f"{type(m).__qualname__} has no name: register it with @register_measure"
                )
            self.measures.append((m, parse_schedule(s)))
        names = [m.name for m, _ in self.measures]
        if len(set(names)) != len(names):
            raise ValueError(f"each measure may appear once, got {names}")
        _run_order([m for m, _ in self.measures])  # refuses a cycle
        self._declared = {m.name: _declared(m) for m, _ in self.measures}
        if loss_fn is not None:
            check_loss_fn(loss_fn)
        self.loss_fn = loss_fn
        self.probe = probe
        self.train_data = train_data
        self.val_data = val_data
        self.lr = lr if lr is None or callable(lr) else POSITIVE.check(lr, "lr")
        self.momentum = FRACTION.check(momentum, "momentum")
        self.optimizer = optimizer
        self.batch_size = check_int(batch_size, "batch_size", 1, optional=True)
        self.n_train = check_int(n_train, "n_train", 1, optional=True)
        self.steps_per_epoch = _epoch_length(steps_per_epoch)
        self.drop_last = drop_last
        self.seed = check_int(seed, "seed", 0, SEED_MAX)
        self.on_record = on_record
        self.sinks = _sink_objects(sinks)
        self.records_: list[Record] = []
        self.seconds_: dict[str, float] = {n: 0.0 for n in names}
        self.matvecs_: dict[str, int] = {n: 0 for n in names}
        self.state_: dict[str, dict[str, Any]] = {}
        self._generator = torch.Generator().manual_seed(self.seed)
        self._pending: list[tuple[Measure, Measurement, float]] = []
        self._ctx: Context | None = None
        self._moved: dict[str, Any] = {}
        self._n_global: int | None = None  # probe / validation data moved to the model's device
        self._started: float | None = None
        self.total_seconds_: float | None = None
        self._epoch_warned = False
        self._epoch_from_data(collective=False)  # refuses an empty epoch now
        self.out_dir = None if out_dir is None else Path(out_dir)
        #: The run's name in tables (:func:`breakeven.load_run`): out_dir's name.
        self.name = self.out_dir.resolve().name if self.out_dir is not None else "tracker"
        self._store: RunStore | None = None
        self._replaying = False  # resumed: the first step drops the records it replays
        self._model: nn.Module | None = None  # the last model seen (what close() saves)
        self._loss: Tensor | None = None  # the last loss seen (summary.json's last_loss)
        self._steps = 0  # the last step seen + 1
        self._last_step: int | None = None  # the last step completed (steps must increase)
        self._closed: str | None = None  # the status close() or fail() ended out_dir's run with
        if self.out_dir is not None and (not distributed or world_and_rank()[1] == 0):
            self._open(self.out_dir, config)

    # ------------------------------------------------------------------ hooks of breakeven.train

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer of the training loop, unless one was given."""
        if self.optimizer is None:
            self.optimizer = optimizer

    def on_start(self, model: nn.Module, dataset: Any, config: Any) -> None:
        """Fill what was not given from a :class:`~breakeven.Dataset` and a TrainConfig."""
        part = self._part
        if self.probe is None:
            self.probe = part(dataset.probe())
        if self.train_data is None:
            self.train_data = part((dataset.x_train, dataset.y_train))
        if self.val_data is None and len(dataset.y_test):
            self.val_data = part((dataset.x_test, dataset.y_test))
        if self.batch_size is None:
            self.batch_size = config.batch_size
        if self.steps_per_epoch is None:
            self.steps_per_epoch = config.steps_per_epoch(len(dataset.y_train))
        if self.lr is None:
            per_epoch = self.steps_per_epoch
            self.lr = lambda step: config.lr_at(step // per_epoch)
        if not self.momentum:
            self.momentum = config.momentum
        self._started = time.perf_counter()

    def on_end(self, result: Any) -> None:
        self.total_seconds_ = result.seconds

    # ------------------------------------------------------------------ hooks of any loop

    def before_step(
        self, step: int, model: nn.Module, batch: Batch | None = None, loss: Tensor | None = None
    ) -> None:
        """Measure what is due at ``step``, at the parameters before the step (call it after
        ``loss.backward()`` and before ``optimizer.step()``)."""
        if self._closed is not None:
            raise RuntimeError(
                f"this Tracker's run in {self.out_dir} has ended ({self._closed}): it records "
                "nothing more; create a new Tracker (on the same out_dir to resume a failed run)"
            )
        if self._last_step is not None and step <= self._last_step and not self._replaying:
            raise ValueError(
                f"step={step} after step={self._last_step}: the steps must increase (pass a "
                "global step counter, not the index of the batch within an epoch)"
            )
        if self._started is None:
            self._started = time.perf_counter()
        self._model, self._steps = model, max(self._steps, step + 1)
        if loss is not None:
            self._loss = loss.detach()
        if self._replaying:
            self._drop_records_from(step)
        if self.steps_per_epoch is None:
            self._derive_steps_per_epoch()
        due = [m for m, s in self.measures if s(step, self.steps_per_epoch)]
        self._pending = []
        if not due:
            return
        ctx = self._context(step, model, batch)
        for m in _run_order(due):
            t0 = time.perf_counter()
            result = self._checked(m, m.measure(ctx), "measure")
            if result.shared is not None:
                ctx.cache.setdefault(type(m).name, result.shared)
            self._pending.append((m, result, time.perf_counter() - t0))
        self._ctx = ctx

    def after_step(self, step: int, model: nn.Module) -> None:
        """Finish the measures of ``step`` that need the parameters after it; emit records."""
        self._last_step = step  # a completed step: the next before_step must be later
        if not self._pending:
            return
        ctx = self._ctx
        ctx.model = model
        for m, result, seconds in self._pending:
            t0 = time.perf_counter()
            extra = m.after(ctx, dict(result.values))
            if extra is not None:
                extra = self._checked(m, extra, "after")
                result = dataclasses.replace(
                    result,
                    values={**result.values, **extra.values},
                    matvecs=result.matvecs + extra.matvecs,
                    arrays={**(result.arrays or {}), **(extra.arrays or {})} or None,
                )
            self._emit(step, m, result, seconds + time.perf_counter() - t0)
        self._pending, self._ctx = [], None
        if self._store is not None:
            self._checkpoint(step + 1)

    # ------------------------------------------------------------------ internals

    def _context(self, step: int, model: nn.Module, batch: Batch | None) -> Context:
        missing = [n for n in ("probe", "train_data") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"the tracker needs {' and '.join(missing)} (pass them to Tracker)")
        n_train = self.n_train or self._global_count(len(self.train_data[1]))
        batch_size = self.batch_size or (len(batch[1]) if batch is not None else None)
        lr = self.lr
        if lr is None and self.optimizer is not None:
            lr = float(self.optimizer.param_groups[0]["lr"])
        if batch_size is None or lr is None:
            raise ValueError("the tracker needs lr and batch_size (pass them to Tracker)")
        lr = lr(step) if callable(lr) else float(lr)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        grads = [
            p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            for p in model.parameters()
            if p.requires_grad
        ]
        return Context(
            step=step,
            epoch=step / self.steps_per_epoch if self.steps_per_epoch else math.nan,
            model=model,
            loss_fn=self.loss_fn or nn.CrossEntropyLoss(),
            probe=self._on(device, "probe"),
            sample_batches=lambda num, size: [
                tuple(t.to(device) for t in b) for b in self._sample_batches(num, size)
            ],
            lr=lr,
            momentum=self.momentum,
            optimizer=self.optimizer,
            batch_size=batch_size,
            n_train=n_train,
            batch=batch,
            gradient=grads,
            val_data=self._on(device, "val_data"),
            state=self.state_,
            distributed=self.distributed,
            train_data=self.train_data,
        )

    def _part(self, data: Batch) -> Batch:
        """This rank's share (every world-size-th example) when distributed, else all."""
        if not self.distributed:
            return data
        world, rank = world_and_rank()
        return tuple(t[rank::world] for t in data)

    def _global_count(self, n: int) -> int:
        """``n`` summed over the ranks when distributed (computed once)."""
        if not self.distributed:
            return n
        if self._n_global is None:
            t = torch.tensor([float(n)], dtype=torch.float64, device=self.train_data[1].device)
            self._n_global = int(all_reduce_sum(t).item())
        return self._n_global

    def _on(self, device: torch.device, name: str) -> Any:
        """``self.<name>`` (a pair of tensors, or None) on the model's device, moved once."""
        data = getattr(self, name)
        if not isinstance(data, tuple) or all(t.device == device for t in data):
            return data
        cached = self._moved.get(name)
        if cached is None or cached[0] is not data or cached[1] != device:
            cached = self._moved[name] = (data, device, tuple(t.to(device) for t in data))
        return cached[2]

    def _sample_batches(self, num: int, size: int) -> list[Batch]:
        """``num`` batches of ``size`` training examples drawn without replacement: disjoint
        when ``num * size`` fits in the training set, else each drawn independently (batches
        may then share examples; e.g. the paper's L = 200, M = 128 on IMDB's 25,000)."""
        x, y = self.train_data
        n = len(y)
        if self.distributed:
            world, _ = world_and_rank()
            if num % world:
                raise ValueError(
                    f"distributed K draws L / world size batches on each rank: L = {num} "
                    f"is not a multiple of the world size {world}"
                )
            num //= world
        if size > n:
            raise ValueError(f"cannot draw a batch of {size} from {n} training examples")
        if num * size <= n:
            idx = torch.randperm(n, generator=self._generator)[: num * size].to(y.device)
            return [(x[i], y[i]) for i in idx.split(size)]
        out = []
        for _ in range(num):
            i = torch.randperm(n, generator=self._generator)[:size].to(y.device)
            out.append((x[i], y[i]))
        return out

    def _checked(self, m: Measure, result: Any, hook: str) -> Measurement:
        """``result`` of ``m.<hook>()``, once checked to be a Measurement of declared keys."""
        if not isinstance(result, Measurement):
            raise TypeError(
                f"{type(m).__qualname__}.{hook}() returned {type(result).__name__}; a measure "
                "returns a breakeven.Measurement(values, matvecs=..., arrays=...)"
            )
        exact, patterns = self._declared[m.name]
        undeclared = [
            k
            for k in result.values
            if k not in exact and not any(fnmatchcase(k, p) for p in patterns)
        ]
        if undeclared:
            raise ValueError(
                f"measure {m.name!r} emitted undeclared key(s) {undeclared}; declare them in "
                f"{type(m).__qualname__}.keys (or emits()), which give {list(m.emits())}"
            )
        return result

    def _emit(self, step: int, m: Measure, result: Measurement, seconds: float) -> None:
        values, matvecs, arrays = result.values, int(result.matvecs), result.arrays
        record: Record = {
            "step": step,
            "epoch": step / self.steps_per_epoch if self.steps_per_epoch else None,
            "measure": m.name,
            "values": {k: float(v) for k, v in values.items()},
            "seconds": seconds,
            "matvecs": matvecs,
        }
        if arrays:
            record["arrays"] = arrays
        self.seconds_[m.name] += seconds
        self.matvecs_[m.name] += matvecs
        self.records_.append(record)
        if self._store is not None:
            self._store.append(record)
        if not self.distributed or world_and_rank()[1] == 0:
            if self.on_record is not None:
                self.on_record(record)
            for sink in self.sinks:
                sink.write(record)

    # ------------------------------------------------------------------ steps per epoch

    def _epoch_from_data(self, collective: bool) -> int | None:
        """The steps per epoch from N and ``batch_size`` when both are known (N summed over
        the ranks only when ``collective``: every rank is in the same hook), else None."""
        bs, n = self.batch_size, self.n_train
        if n is None and is_pair(self.train_data) and (collective or not self.distributed):
            n = self._global_count(len(self.train_data[1]))
        if n is None or not bs:
            return None
        per_epoch = n // bs if self.drop_last else math.ceil(n / bs)
        if per_epoch < 1:
            raise ValueError(
                f"batch_size={bs}{' with drop_last=True' if self.drop_last else ''} exceeds "
                f"the {n} training examples: no step per epoch"
            )
        return per_epoch

    def _derive_steps_per_epoch(self) -> None:
        """At the first step (after ``on_start`` or a callback filled in what they know):
        ``steps_per_epoch`` from the data, or a warning, once, that the epoch is None."""
        self.steps_per_epoch = self._epoch_from_data(collective=True)
        if self.steps_per_epoch is None and not self._epoch_warned:
            self._epoch_warned = True
            missing = " and ".join(
                w
                for w, v in (
                    ("train_data (or n_train)", self.n_train or is_pair(self.train_data)),
                    ("batch_size", self.batch_size),
                )
                if not v
            )
            warnings.warn(
                f"the records' epoch is None: the tracker cannot derive the steps per epoch "
                f"without {missing}; pass them, or steps_per_epoch= (an int or the DataLoader)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ the run directory

    def run_config(self, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What ``config.json`` of ``out_dir`` holds: ``name``, ``train`` (``config`` plus the
        tracker's ``lr``, ``momentum``, ``batch_size``, ``n_train``, ``steps_per_epoch``,
        ``seed``; a learning-rate function as :func:`~breakeven.tracking.store.callable_id`
        names it) and ``track`` (one table per measure, as in a TOML config: its options,
        ``schedule`` and, when renamed, ``measure``)."""
        n_train = self.n_train
        if n_train is None and is_pair(self.train_data) and not self.distributed:
            n_train = len(self.train_data[1])
        own = {
            "lr": jsonable(self.lr, "lr"),
            "momentum": self.momentum,
            "batch_size": self.batch_size,
            "n_train": n_train,
            "steps_per_epoch": self.steps_per_epoch or self._epoch_from_data(collective=False),
            "seed": self.seed,
        }
        given = jsonable(dict(config or {}), "config")
        clash = sorted(k for k in set(given) & set(own) if given[k] != own[k])
        if clash:
            raise ValueError(
                f"config gives {clash} = {[given[k] for k in clash]}, but the tracker has "
                f"{[own[k] for k in clash]}: pass them to the Tracker only"
            )
        track = {}
        for m, s in self.measures:
            options = {k: v for k, v in vars(m).items() if k != "name" and k[:1] != "_"}
            table = {**jsonable(options, f"the options of {m.name!r}"), "schedule": repr(s)}
            if m.name != type(m).name:
                table["measure"] = type(m).name
            track[m.name] = table
        return {"name": self.name, "train": {**given, **own}, "track": track}

    def _open(self, path: Path, config: Mapping[str, Any] | None) -> None:
        """Open (or resume) the run store in ``path``; see ``out_dir``."""
        if path.exists() and not path.is_dir():
            raise OutputDirError(
                f"out_dir={str(path)!r} is a file, not a directory: pass a directory (created "
                "if missing) for the run's files"
            )
        _check_not_in_a_run_or_sweep(path)
        spec = self.run_config(config)  # refuses what is not JSON-able before any file
        store = RunStore(path)
        checkpoint = store.open(spec)
        if store.ended_ is not None:
            raise RunStoreError(
                f"{path} holds a run that has ended ({store.ended_}): its records are complete "
                "(read them with breakeven.load_run); record a new run in another out_dir"
            )
        self._store = store
        self.records_ = read_records(path)  # cut back to the checkpoint by open()
        if checkpoint is not None:
            self.load_state_dict(checkpoint["tracker"])
            self._started = time.perf_counter() - float(checkpoint["seconds"])
            self._steps = int(checkpoint["steps"])
        self._recount()
        self._replaying = bool(self.records_)

    def _checkpoint(self, steps: int) -> None:
        """Save the tracker's state and the count of records written (after ``steps``)."""
        elapsed = time.perf_counter() - self._started if self._started is not None else 0.0
        self._store.save_checkpoint(
            {"tracker": self.state_dict(), "steps": steps, "seconds": elapsed}
        )

    def _drop_records_from(self, step: int) -> None:
        """A resumed loop's first step: drop the records from the first one at ``step`` or
        later (the loop replays those steps) in the file and in ``records_``."""
        self._replaying = False
        keep = next((i for i, r in enumerate(self.records_) if r["step"] >= step), None)
        if keep is None:
            return
        del self.records_[keep:]
        self._recount()
        self._store.truncate_records(keep)
        self._checkpoint(step)

    def _recount(self) -> None:
        """Costs from the records (a run directory's records are all of the run's)."""
        self.seconds_ = {n: 0.0 for n in self.seconds_}
        self.matvecs_ = {n: 0 for n in self.matvecs_}
        for r in self.records_:
            if r["measure"] in self.seconds_:
                self.seconds_[r["measure"]] += float(r.get("seconds") or 0.0)
                self.matvecs_[r["measure"]] += int(r.get("matvecs") or 0)

    def close(self, model: nn.Module | None = None, *, status: str = "finished") -> None:
        """End the run in ``out_dir``: ``model.pt`` (``model``'s state_dict, default the last
        model the hooks saw; empty when none), ``summary.json`` (``status``, ``steps`` = the
        last step seen + 1, ``seconds``, ``last_loss``, the tracker's :meth:`summary`), then
        the status ``status`` (``"finished"`` or ``"diverged"``); the directory's lock is
        released. Without ``out_dir`` (or once closed) it does nothing."""
        if status not in ENDED:
            raise ValueError(f"status={status!r} is invalid: must be one of {list(ENDED)}")
        store, self._store = self._store, None
        if store is None:
            return
        self._closed = status
        model = model if model is not None else self._model
        seconds = time.perf_counter() - self._started if self._started is not None else 0.0
        steps = max([self._steps, *(r["step"] + 1 for r in self.records_)])
        summary = {
            "steps": steps,
            "seconds": seconds,
            "last_loss": float(self._loss) if self._loss is not None else None,
            "final": None,
            "tracking": self.summary(seconds),
        }
        store.finish(status, summary, model.state_dict() if model is not None else {})

    def fail(self, message: str) -> None:
        """Mark the run in ``out_dir`` ``failed: <message>`` (resumable) and release it."""
        store, self._store = self._store, None
        if store is not None:
            self._closed = f"failed: {message}"
            store.fail(message)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt):
            self.fail("interrupted")
        else:
            self.fail(f"{kind.__name__}: {error}")

    # ------------------------------------------------------------------ reporting, resume

    def summary(self, total_seconds: float | None = None) -> dict[str, dict[str, float]]:
        """Per measure: records, seconds, matrix-vector products and the fraction of the
        run's wall time spent on it (``total_seconds``: default the run's, from ``on_end``,
        or the time since the first step)."""
        total = total_seconds or self.total_seconds_
        if total is None and self._started is not None:
            total = time.perf_counter() - self._started
        counts: dict[str, int] = {n: 0 for n in self.seconds_}
        for r in self.records_:
            counts[r["measure"]] += 1
        return {
            n: {
                "records": counts[n],
                "seconds": self.seconds_[n],
                "matvecs": self.matvecs_[n],
                "fraction": self.seconds_[n] / total if total else math.nan,
            }
            for n in self.seconds_
        }

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue identically: the generator, warm starts, costs."""
        return {
            "generator": self._generator.get_state(),
            "state": {k: dict(v) for k, v in self.state_.items()},
            "seconds": dict(self.seconds_),
            "matvecs": dict(self.matvecs_),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._generator.set_state(d["generator"])
        self.state_ = {k: dict(v) for k, v in d["state"].items()}
        self.seconds_.update(d["seconds"])
        self.matvecs_.update(d["matvecs"])


def _as_measure(m: Any) -> Measure:
    """``m``, or the registered measure named ``m`` with its default options."""
    if isinstance(m, str):
        if m not in MEASURES:
            raise ValueError(
                f"unknown measure {m!r}: pass a registered name, one of {sorted(MEASURES)}, "
                "or a Measure instance such as breakeven.GradientCovariance(num_batches=25)"
            )
        return MEASURES[m]()
    if isinstance(m, type) and issubclass(m, Measure):
        raise TypeError(
            f"{m.__qualname__} is a class: pass an instance, {m.__qualname__}(...), "
            f"or its name {m.name!r}"
        )
    if not isinstance(m, Measure):
        raise TypeError(
            f"not a measure: {m!r}; pass a Measure instance (e.g. "
            f"breakeven.GradientCovariance()) or a registered name, one of {sorted(MEASURES)}"
        )
    return m


def _epoch_length(steps_per_epoch: Any) -> int | None:
    """``steps_per_epoch`` as given to the Tracker: None, an int >= 1, or a sized loader."""
    if steps_per_epoch is None:
        return None
    if not isinstance(steps_per_epoch, int) and isinstance(steps_per_epoch, Sized):
        steps_per_epoch = len(steps_per_epoch)  # a DataLoader: its batches per epoch
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int):
        raise TypeError(f"steps_per_epoch must be an int or a DataLoader, got {steps_per_epoch!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return steps_per_epoch


def _sink_objects(sinks: Any) -> list[Any]:
    """``sinks`` as a list of objects with a ``write(record)`` method; ``TypeError`` for
    anything else (a sink's name among them); None is no sinks."""
    if sinks is None:
        return []
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
        sinks = [sinks]  # refused below unless it is a single sink object
    items = list(sinks)
    odd = [s for s in items if not callable(getattr(s, "write", None))]
    if odd:
        raise TypeError(
            f"sinks= takes sink objects, e.g. [TensorBoardSink(log_dir)], got {odd[0]!r}; "
            "to open sinks by name ('tensorboard', 'mlflow', 'wandb') use "
            "breakeven.tracking.sinks.make_sinks(parse_log([...]), out_dir)"
        )
    return items


def _run_order(measures: list[Measure]) -> list[Measure]:
    """``measures`` in a stable topological order: each after the ones among them it
    ``requires`` (matched by class-level name), otherwise in the given order. ``ValueError``
    naming the measures when their requirements form a cycle."""
    left, order = list(measures), []
    while left:
        ready = next(
            (m for m in left if not any(type(o).name in m.requires for o in left if o is not m)),
            None,
        )
        if ready is None:
            cycle = ", ".join(f"{m.name} requires {list(m.requires)}" for m in left)
            raise ValueError(
                f"the measures' requirements form a cycle ({cycle}): no order runs each after "
                "the ones it requires; remove one of these measures or requirements"
            )
        left.remove(ready)
        order.append(ready)
    return order


def _declared(m: Measure) -> tuple[frozenset[str], tuple[str, ...]]:
    """The exact keys and the ``fnmatch`` patterns of ``m.emits()``."""
    keys = m.emits()
    if not isinstance(keys, (tuple, list)) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"{type(m).__qualname__}.emits() must give a tuple of str, got {keys!r}")
    wild = tuple(k for k in keys if any(c in k for c in "*?["))
    return frozenset(keys) - set(wild), wild


def build_tracker(spec: dict[str, dict[str, Any]], **kwargs: Any) -> Tracker:
    """A :class:`Tracker` from a config table ``{measure name: {schedule and arguments}}``,
    e.g. ``{"covariance": {"every": 50, "num_batches": 25}, "hessian": {"every": "epoch"}}``.

    The schedule is ``every`` (an int or ``"epoch"``/``"N epochs"``), ``at`` or
    ``log_spaced`` (default every 100 steps); other keys go to the measure's constructor.
    A table may name its measure with ``measure = "..."`` to track one measure twice under
    two names, e.g. ``covariance_m1 = {measure = "covariance", batch_size = 1}`` beside
    ``covariance``: its records (and warm-start state) carry the table's name, while what it
    shares with the measures that require it keeps the measure's own name (``covariance``).
    Unknown measures or arguments are rejected naming what is allowed. ``kwargs`` go to
    :class:`Tracker`.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"the track table must map measure names to tables, got {spec!r}")
    measures = []
    for name, options in spec.items():
        options = dict(options or {})
        kind = options.pop("measure", name)
        if kind not in MEASURES:
            raise ValueError(
                f"track.{name}: unknown measure {kind!r}; choose from {sorted(MEASURES)}"
            )
        cls = MEASURES[kind]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        sched = [k for k in _SCHEDULE_KEYS if k in options]
        if len(sched) > 1:
            raise ValueError(f"track.{name}: give one schedule key of {list(_SCHEDULE_KEYS)}")
        try:
            schedule = parse_schedule({sched[0]: options.pop(sched[0])} if sched else 100)
        except (TypeError, ValueError) as err:
            raise ValueError(f"track.{name}: {err}") from err
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"track.{name}: unknown option(s) {unknown}; allowed: "
                f"{sorted([*allowed, *_SCHEDULE_KEYS])}"
            )
        try:
            measure = cls(**options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"track.{name}: {err}") from err
        if name != kind:
            measure.name = name
        measures.append((measure, schedule))
    return Tracker(measures, **kwargs)


def _check_not_in_a_run_or_sweep(path: Path) -> None:
    """Refuse an ``out_dir`` that is a sweep directory, or lies inside a run or a sweep
    directory (its ``runs/`` folder included): the run store would mix with theirs."""
    from ..records import CONFIG, STATUS, SWEEP_FILE

    if (path / SWEEP_FILE).exists():
        raise OutputDirError(
            f"out_dir={str(path)!r} is a sweep directory (it holds {SWEEP_FILE}): pass a "
            "directory of its own for this run"
        )
    for parent in path.absolute().parents:
        # a sweep holds its plan and runs/; a run its config and status (a project folder
        # with a config.json of its own is neither)
        sweep = (parent / SWEEP_FILE).is_file() and (parent / "runs").is_dir()
        run = (parent / CONFIG).is_file() and (parent / STATUS).is_file()
        what = "a sweep" if sweep else "a run" if run else None
        if what:
            raise OutputDirError(
                f"out_dir={str(path)!r} lies inside {what} directory ({parent}): pass a "
                "directory outside it"
            )
