"""What the Lightning and Hugging Face callbacks share: a :class:`~breakeven.Tracker` driven
by another library's training loop, its records optionally written to a run store.

No import of lightning or transformers here; torch and the tracking room only.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from .._core.data import is_pair
from ..records import EVAL_MEASURE, RunStoreError
from ..tracking import RunStore, Tracker, build_tracker
from ..tracking.sinks import Sink, close_sinks, make_sinks, parse_log

Record = dict[str, Any]

__all__ = ["EVAL_MEASURE", "TrackedTraining", "failing", "make_tracker", "steps_per_epoch"]


def make_tracker(
    tracker: Tracker | Mapping[str, Any] | Iterable[Any], tracker_kwargs: dict[str, Any]
) -> Tracker:
    """A :class:`Tracker` from a tracker, a ``build_tracker`` spec (``{measure name: {schedule
    and options}}``) or a list of measures (``Tracker(measures, **tracker_kwargs)``)."""
    kwargs = {k: v for k, v in tracker_kwargs.items() if v is not None}
    if isinstance(tracker, Tracker):
        if kwargs:
            raise ValueError(
                f"got a Tracker and tracker arguments {sorted(kwargs)}: pass them to the "
                "Tracker, or pass a spec (a dict of measure tables) instead of the Tracker"
            )
        return tracker
    if isinstance(tracker, Mapping):
        if "schedule" in kwargs:
            raise ValueError(
                "schedule= applies to a list of measures; in a spec each measure table has its "
                "own schedule key (every, at, log_spaced)"
            )
        return build_tracker(dict(tracker), **kwargs)
    if isinstance(tracker, (str, bytes)) or not isinstance(tracker, Iterable):
        raise TypeError(
            "tracker must be a breakeven.Tracker, a spec such as {'hessian': {'every': 100}}, "
            f"or a list of measures; got {type(tracker).__name__}"
        )
    schedule = kwargs.pop("schedule", None)
    return Tracker(list(tracker), schedule, **kwargs)


def _to_device(data: Any, device: torch.device) -> Any:
    """An ``(x, y)`` pair of tensors moved to ``device`` (anything else unchanged)."""
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
        and any(t.device != device for t in data)
    ):
        return (data[0].to(device), data[1].to(device))
    return data


def _scalar(v: Any) -> float | None:
    """``v`` as a float when it is a real scalar (a number or a one-element tensor)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Tensor) and v.numel() == 1:
        return float(v.detach().cpu())
    return None


class TrackedTraining:
    """A tracker plugged into a foreign training loop (the base of the callbacks).

    The subclasses call :meth:`_start` once before the first step, :meth:`_before` after the
    backward pass and before the optimizer step (the ``.grad`` of the model hold the step's
    gradient), :meth:`_after` after the update, :meth:`_evaluation` with evaluation metrics,
    and :meth:`_end` or :meth:`_fail` at the end.

    Attributes: ``tracker`` (its ``records_`` hold the measure records), ``evaluations_``
    (the evaluation records), ``store_`` (the :class:`~breakeven.RunStore` while one is
    open), ``path`` (the run directory, or None) and ``sinks_`` (the live-logging sinks).

    ``log``: sinks that get every record (measures and evaluations) as it is made: sink
    objects (:mod:`breakeven.tracking.sinks`; yours to close), and/or sink names
    (``"tensorboard"``, ``"mlflow"``, ``"wandb"``) or a ``[log]``-style table
    (``{"wandb": {"project": "x"}}``), opened under ``out_dir/logs/`` when training starts
    and closed at its end (these need ``out_dir``).
    """

    integration = ""

    def __init__(
        self,
        tracker: Tracker | Mapping[str, Any] | Iterable[Any],
        tracker_kwargs: dict[str, Any],
        out_dir: str | os.PathLike | None,
        name: str | None,
        log: Any = None,
    ) -> None:
        self.spec = dict(tracker) if isinstance(tracker, Mapping) else None
        self.tracker = make_tracker(tracker, tracker_kwargs)
        self.path = Path(out_dir) if out_dir is not None else None
        self.name = name or (self.path.name if self.path is not None else self.integration)
        self.evaluations_: list[Record] = []
        self.store_: RunStore | None = None
        self._log, self._given_sinks = _split_log(log)
        if self._log and self.path is None:
            raise ValueError(
                f"log={sorted(self._log)} opens sinks in the run directory: give out_dir=, or "
                "pass sink objects (breakeven.tracking.sinks.TensorBoardSink(...), ...)"
            )
        self.sinks_: list[Sink] = list(self._given_sinks)
        self._started_at: float | None = None
        self._pending: int | None = None
        self._model_name: str | None = None
        previous = self.tracker.on_record

        def on_record(record: Record) -> None:
            if previous is not None:
                previous(record)
            if self.store_ is not None:
                self.store_.append(record)
            for sink in self.sinks_:
                sink.write(record)

        self.tracker.on_record = on_record

    # ------------------------------------------------------------------ the hooks

    def _start(
        self,
        model: nn.Module,
        optimizer: Any,
        *,
        batch_size: int | None,
        steps_per_epoch: int | None,
        device: torch.device | None,
        model_name: str | None = None,
    ) -> None:
        """Fill in what the tracker was not given, move its data to the model's device, open
        the run store (``model_name``: the model's name in its config, default its class)."""
        t = self.tracker
        self._model_name = model_name or type(model).__name__
        if device is not None:
            t.probe = _to_device(t.probe, device)
            t.train_data = _to_device(t.train_data, device)
            t.val_data = _to_device(t.val_data, device)
        if t.batch_size is None and batch_size is not None:
            t.batch_size = int(batch_size)
        if t.steps_per_epoch is None and steps_per_epoch:
            t.steps_per_epoch = int(steps_per_epoch)
        self._read_optimizer(optimizer)
        self._started_at = time.perf_counter()
        self._pending = None
        if self.path is not None:
            self._open_store(model)
        if self._log:
            self._close_opened("failed: restarted")  # a second fit() opens new ones
            opened = make_sinks(self._log, self.path, config=self._config(model))
            self.sinks_ = [*self._given_sinks, *opened]

    def _before(self, step: int, model: nn.Module, optimizer: Any, batch: Any = None) -> None:
        """Measure what is due at ``step`` (0-based index of the optimizer step)."""
        self._read_optimizer(optimizer)
        with torch.enable_grad():
            self.tracker.before_step(step, model, batch, None)
        self._pending = step

    def _after(self, model: nn.Module) -> None:
        """Finish the measures of the pending step (after its update)."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        with torch.enable_grad():
            self.tracker.after_step(step, model)

    def _evaluation(self, step: int, metrics: Mapping[str, Any], seconds: float = 0.0) -> None:
        """Record scalar evaluation metrics (measure ``evaluation``) at ``step``."""
        values = {str(k): v for k, v in ((k, _scalar(v)) for k, v in metrics.items())}
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return
        spe = self.tracker.steps_per_epoch
        record: Record = {
            "step": int(step),
            "epoch": step / spe if spe else None,
            "measure": EVAL_MEASURE,
            "values": values,
            "seconds": float(seconds),
            "matvecs": 0,
        }
        self.evaluations_.append(record)
        if self.store_ is not None:
            self.store_.append(record)
        for sink in self.sinks_:
            sink.write(record)

    def _end(self, steps: int, model: nn.Module) -> None:
        """Close the tracker's run; write ``summary.json``, ``model.pt`` and the status."""
        seconds = time.perf_counter() - self._started_at if self._started_at is not None else None
        self.tracker.on_end(SimpleNamespace(seconds=seconds))
        store, self.store_ = self.store_, None
        if store is not None:
            summary = {
                "status": "finished",
                "steps": int(steps),
                "seconds": seconds,
                "last_loss": None,
                "integration": self.integration,
                "tracking": self.tracker.summary(),
            }
            store.finish("finished", summary, model.state_dict())
        self._close_opened("finished")

    def _fail(self, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        store, self.store_ = self.store_, None
        if store is not None:
            store.fail(message)
        self._close_opened(f"failed: {message}")

    def _close_opened(self, status: str) -> None:
        """Close the sinks this callback opened (not the sink objects it was given)."""
        opened = [s for s in self.sinks_ if not any(s is g for g in self._given_sinks)]
        self.sinks_ = list(self._given_sinks)
        close_sinks(opened, status)

    # ------------------------------------------------------------------ internals

    def _read_optimizer(self, optimizer: Any) -> None:
        """This step's learning rate and momentum, from the optimizer's first parameter group
        (momentum 0 for an optimizer without one, e.g. Adam)."""
        if optimizer is None:
            return
        group = optimizer.param_groups[0]
        self.tracker.lr = float(group["lr"])
        momentum = group.get("momentum")
        self.tracker.momentum = float(momentum) if momentum is not None else 0.0

    def _config(self, model: nn.Module) -> dict[str, Any]:
        t = self.tracker
        if self.spec is not None:
            track: Any = self.spec
        else:
            track = {
                m.name: {"measure": type(m).__name__, "options": dict(vars(m)), "schedule": repr(s)}
                for m, s in t.measures
            }
        n_train = t.n_train or (len(t.train_data[1]) if is_pair(t.train_data) else None)
        return {
            "name": self.name,
            "integration": self.integration,
            "train": {
                "model": self._model_name,
                "lr": t.lr if not callable(t.lr) else None,
                "momentum": t.momentum,
                "batch_size": t.batch_size,
                "n_train": n_train,
            },
            "track": track,
        }

    def _open_store(self, model: nn.Module) -> None:
        assert self.path is not None
        store = RunStore(self.path)
        if store.status is not None or (self.path / "config.json").exists():
            raise RunStoreError(
                f"{self.path} already holds a run (status: {store.status}); a callback starts a "
                "new run only: choose another out_dir"
            )
        store.open(self._config(model))
        self.store_ = store


def _split_log(log: Any) -> tuple[dict[str, dict[str, Any]], list[Sink]]:
    """``log=`` of a callback as (the checked spec of the sinks to open, the sink objects)."""
    if log is None:
        return {}, []
    if isinstance(log, Mapping):
        return parse_log(log), []
    items = [log] if isinstance(log, (str, Sink)) else list(log)
    odd = [x for x in items if not isinstance(x, (str, Sink))]
    if odd:
        raise TypeError(
            f"log= takes sink names ('tensorboard', 'mlflow', 'wandb'), sink objects or a "
            f"table; got {odd!r}"
        )
    names = [x for x in items if isinstance(x, str)]
    return parse_log(names), [x for x in items if isinstance(x, Sink)]


def steps_per_epoch(batches: float | int | None, accumulate: int) -> int | None:
    """Optimizer steps per epoch from the batches per epoch (None when unknown or infinite)."""
    if batches is None or not math.isfinite(batches) or batches <= 0:
        return None
    return math.ceil(int(batches) / max(int(accumulate), 1))


@contextlib.contextmanager
def failing(callback: TrackedTraining) -> Iterator[None]:
    """Mark the run store failed when the body raises."""
    try:
        yield
    except BaseException as e:
        callback._fail(e)
        raise
