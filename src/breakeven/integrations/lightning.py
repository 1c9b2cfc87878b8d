"""A Lightning callback that runs a :class:`~breakeven.Tracker` along ``Trainer.fit``.

::

    from breakeven.integrations.lightning import BreakevenCallback

    cb = BreakevenCallback({"covariance": {"every": 50}, "hessian": {"every": 500}},
                           probe=(x_probe, y_probe), train_data=(x_train, y_train),
                           out_dir="runs/my-run")
    lightning.Trainer(max_epochs=3, callbacks=[cb]).fit(module, loader)
    cb.tracker.records_                          # or breakeven.load_run("runs/my-run")

Needs the ``lightning`` package (``pip install 'breakeven[lightning]'``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from .._core.data import Batch
from .._core.functional import LossFn
from ..tracking import Tracker
from ._common import TrackedTraining, failing, steps_per_epoch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the standalone package, if that is what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError(
            "breakeven.integrations.lightning needs Lightning: pip install 'breakeven[lightning]'"
        ) from e

__all__ = ["BreakevenCallback"]


def _xy(batch: Any) -> Batch | None:
    """The training batch when it is an ``(x, y)`` pair of tensors, else None."""
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, Tensor) for t in batch)
    ):
        return (batch[0], batch[1])
    return None


class BreakevenCallback(TrackedTraining, pl.Callback):
    """Measure along ``lightning.Trainer.fit``: the Tracker's hooks around each optimizer step.

    - ``on_train_start``: fills in what the tracker was not given (the batch size S = the
      first training batch's size x ``accumulate_grad_batches`` x world size, the optimizer
      steps per epoch), moves the probe and data to the module's device, opens the run store;
    - ``on_before_optimizer_step``: ``tracker.before_step(trainer.global_step, pl_module, ...)``
      after the backward pass (and any gradient accumulation), *before* Lightning's gradient
      clipping: the measured gradient is the unclipped one;
    - ``on_train_batch_end``: ``tracker.after_step`` once the optimizer step was taken;
    - ``on_validation_end``: the logged metrics (``trainer.callback_metrics``) as an
      ``evaluation`` record (sanity checks excepted);
    - ``on_train_end``: ends the run (``summary.json``, ``model.pt``, status ``finished``);
      ``on_exception`` marks it ``failed: <error>``.

    The learning rate and momentum of each step are read from the optimizer's first
    parameter group (momentum 0 for an optimizer without one, e.g. Adam; the quantities
    that assume SGD, ``stability`` and ``edge_of_stability``, then use that learning rate).
    The step index is the number of optimizer steps taken before it (0-based), as in
    ``breakeven.train``.

    The measures evaluate ``loss_fn(pl_module(x), y)``: the module's ``forward`` must map a
    tensor ``x`` to what ``loss_fn`` takes (default: logits for mean cross-entropy), and
    ``loss_fn`` should be the loss that ``training_step`` minimises. The module must have
    one optimizer. Measuring leaves training bitwise unchanged (parameters, ``.grad``,
    BatchNorm statistics, train/eval modes, global RNG restored).

    Args:
        tracker: a :class:`~breakeven.Tracker`; or a spec ``{measure name: {schedule and
            options}}`` as in a run config's ``[track]`` table (see
            :func:`~breakeven.build_tracker`); or a list of measures (scheduled by
            ``schedule``, default every 100 steps).
        probe, train_data, val_data, loss_fn, batch_size, n_train, steps_per_epoch, seed,
            schedule: passed to the :class:`~breakeven.Tracker` (give them to the Tracker
            itself when you pass one). ``probe`` and ``train_data`` are ``(x, y)`` tensors.
        out_dir: a new run directory to write (``config.json``, ``records.jsonl``,
            ``summary.json``, ``model.pt``, ``status``; see :mod:`breakeven.tracking.store`),
            readable by ``breakeven show``/``export`` and :func:`breakeven.load_run`. A
            directory that already holds a run is refused (a callback does not resume).
        name: the run's name in its config (default: the directory's name).
        log: live logging of every record: sink names (``"tensorboard"``, ``"mlflow"``,
            ``"wandb"``, opened under ``out_dir/logs/``) and/or sink objects (see
            :mod:`breakeven.tracking.sinks`). A W&B sink logs into the W&B run already
            active (e.g. a ``WandbLogger``'s or ``report_to="wandb"``'s) when there is one.

    Records: ``tracker.records_`` (measures) and ``evaluations_`` (evaluation metrics).
    """

    integration = "lightning"

    def __init__(
        self,
        tracker: Tracker | Mapping[str, Any] | Iterable[Any],
        *,
        probe: Batch | None = None,
        train_data: Batch | None = None,
        val_data: Batch | None = None,
        loss_fn: LossFn | None = None,
        batch_size: int | None = None,
        n_train: int | None = None,
        steps_per_epoch: int | None = None,
        seed: int | None = None,
        schedule: Any = None,
        out_dir: str | os.PathLike | None = None,
        name: str | None = None,
        log: Any = None,
    ) -> None:
        pl.Callback.__init__(self)
        kwargs = {
            "probe": probe,
            "train_data": train_data,
            "val_data": val_data,
            "loss_fn": loss_fn,
            "batch_size": batch_size,
            "n_train": n_train,
            "steps_per_epoch": steps_per_epoch,
            "seed": seed,
            "schedule": schedule,
        }
        TrackedTraining.__init__(self, tracker, kwargs, out_dir, name, log)
        self._batch: Batch | None = None
        self._first_batch_size: int | None = None
        self._scale = 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"BreakevenCallback needs exactly one optimizer, the module has "
                f"{len(trainer.optimizers)}"
            )
        self._batch, self._first_batch_size = None, None
        accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        self._scale = accumulate * int(getattr(trainer, "world_size", 1) or 1)
        self._start(
            pl_module,
            trainer.optimizers[0],
            batch_size=None,  # from the first batch (see on_train_batch_start)
            steps_per_epoch=steps_per_epoch(trainer.num_training_batches, accumulate),
            device=pl_module.device,
        )

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = _xy(batch)
        if self._first_batch_size is None and self._batch is not None:
            self._first_batch_size = len(self._batch[1])
            if self.tracker.batch_size is None:
                self.tracker.batch_size = self._first_batch_size * self._scale

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        with failing(self):
            self._before(int(trainer.global_step), pl_module, optimizer, self._batch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None and trainer.global_step > self._pending:
            with failing(self):
                self._after(pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if getattr(trainer, "sanity_checking", False):
            return
        with failing(self):
            self._evaluation(int(trainer.global_step), dict(trainer.callback_metrics))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        with failing(self):
            self._end(int(trainer.global_step), pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._fail(exception)
