"""A Hugging Face ``TrainerCallback`` that runs a :class:`~breakeven.Tracker` along
``Trainer.train``.

::

    from breakeven.integrations.huggingface import BreakevenTrainerCallback

    probe = tokenized_val.with_format("torch")[:256]     # a dict of tensors with "labels"
    train = tokenized_train.with_format("torch")[:]
    cb = BreakevenTrainerCallback({"covariance": {"every": 50}, "hessian": {"every": 500}},
                                  probe=probe, train_data=train, out_dir="runs/bert")
    Trainer(model, args, train_dataset=..., callbacks=[cb]).train()

Needs ``transformers`` (``pip install 'breakeven[huggingface]'``).

The measures evaluate ``loss_fn(model(x), y)`` on ``(x, y)`` tensors, example by example
where they need per-example losses (``torch.func.vmap``). A transformers model takes keyword
inputs and computes its loss inside ``forward``; :class:`HFModel` adapts it: ``x`` holds the
inputs stacked along dimension 1 (``input_ids``, ``attention_mask``, ... in a fixed order),
``model(x)`` returns the logits, and the loss is recomputed from the logits and ``y`` (the
``labels``) with the formula the model uses (:func:`model_loss`), checked against the model's
own ``loss`` on the probe when training starts.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.data import Batch
from .._core.functional import LossFn
from .._core.state import measuring
from ..tracking import Tracker
from ._common import TrackedTraining, failing, steps_per_epoch

try:
    import transformers
except ImportError as e:
    raise ImportError(
        "breakeven.integrations.huggingface needs transformers: "
        "pip install 'breakeven[huggingface]'"
    ) from e

if not hasattr(transformers.TrainerCallback, "on_pre_optimizer_step"):
    raise ImportError(
        f"breakeven.integrations.huggingface needs a transformers whose TrainerCallback has "
        f"on_pre_optimizer_step (transformers {transformers.__version__} has none): "
        "pip install -U 'breakeven[huggingface]'"
    )

__all__ = ["BreakevenTrainerCallback", "HFModel", "as_batch", "model_loss"]

LABELS = "labels"
_CLASSIFICATION = (
    "ForSequenceClassification",
    "ForImageClassification",
    "ForAudioClassification",
    "ForVideoClassification",
)
_TOKEN_LEVEL = ("ForTokenClassification", "ForMaskedLM")
_CAUSAL = ("ForCausalLM",)


def _math_attention() -> contextlib.AbstractContextManager[None]:
    """PyTorch's own ``scaled_dot_product_attention`` kernel: the fused kernels (flash,
    memory-efficient) have no second derivative, which Hessian-vector products need. The same
    function, computed in plain operations; training itself keeps its kernels."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class HFModel(nn.Module):
    """A transformers model as the plain ``model(x) -> logits`` the measures call.

    ``x`` holds the model's inputs ``input_names`` for a batch of examples: the one input
    itself when there is one (e.g. ``pixel_values``), else the inputs stacked along dimension
    1 (``x[:, i]`` is ``input_names[i]``; they must share shape and dtype, e.g.
    ``input_ids`` and ``attention_mask`` padded to one length). The wrapped model is the
    submodule ``model``: the parameters (and their ``.grad``) are the model's own, in the
    same order. The output must have ``logits`` (a tuple output: its first element).
    The forward pass runs PyTorch's math kernel of ``scaled_dot_product_attention`` (the
    fused kernels have no second derivative).
    """

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        if not input_names:
            raise ValueError("input_names must name at least one model input")
        self.model = model
        self.input_names = tuple(input_names)

    def inputs(self, x: Tensor) -> dict[str, Tensor]:
        """The keyword inputs of the wrapped model for the packed ``x``."""
        if len(self.input_names) == 1:
            return {self.input_names[0]: x}
        return {name: x[:, i] for i, name in enumerate(self.input_names)}

    def forward(self, x: Tensor) -> Tensor:
        with _math_attention():
            out = self.model(**self.inputs(x))
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out:
            logits = out[0]
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"{type(self.model).__name__} returns no logits ({type(out).__name__}): "
                "the measures need a model whose output has .logits"
            )
        return logits


def as_batch(
    data: Mapping[str, Any] | Batch,
    input_names: Sequence[str] | None = None,
    label_name: str = LABELS,
) -> tuple[Batch, tuple[str, ...]]:
    """``(x, y)`` for :class:`HFModel` from a dict of tensors (e.g. a tokenized
    ``datasets.Dataset`` in torch format, sliced: ``ds.with_format("torch")[:n]``) with
    ``label_name`` and the model inputs (default: every other key, in order), and the input
    names used. An ``(x, y)`` pair is returned as it is (then ``input_names`` is required)."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        if input_names is None:
            raise ValueError("an (x, y) pair needs input_names= (the inputs stacked in x)")
        return (data[0], data[1]), tuple(input_names)
    if not isinstance(data, Mapping):
        raise TypeError(
            f"expected a dict of tensors with {label_name!r} (or an (x, y) pair), got "
            f"{type(data).__name__}"
        )
    if label_name not in data:
        raise ValueError(f"the data have no {label_name!r} (keys: {sorted(data)})")
    names = (
        tuple(input_names) if input_names is not None else tuple(k for k in data if k != label_name)
    )
    missing = [n for n in names if n not in data]
    if missing or not names:
        raise ValueError(f"the data lack the inputs {missing or names} (keys: {sorted(data)})")
    tensors = [torch.as_tensor(data[n]) for n in names]
    y = torch.as_tensor(data[label_name])
    for n, t in zip(names, tensors):
        if t.shape[0] != y.shape[0]:
            raise ValueError(f"{n} has {t.shape[0]} examples but {label_name} has {y.shape[0]}")
    if len(tensors) == 1:
        return (tensors[0], y), names
    first = tensors[0]
    odd = [n for n, t in zip(names, tensors) if t.shape != first.shape or t.dtype != first.dtype]
    if odd:
        shapes = {n: (tuple(t.shape), str(t.dtype)) for n, t in zip(names, tensors)}
        raise ValueError(
            f"the inputs {list(names)} must share shape and dtype to be stacked (got {shapes}); "
            "pad them to one length, or pass input_names= with the ones the model needs"
        )
    return (torch.stack(tensors, dim=1), y), names


def _classification_loss(config: Any) -> LossFn:
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    problem = getattr(config, "problem_type", None)

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        kind = problem
        if kind is None:
            if num_labels == 1:
                kind = "regression"
            elif labels.dtype in (torch.long, torch.int):
                kind = "single_label_classification"
            else:
                kind = "multi_label_classification"
        if kind == "regression":
            if num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if kind == "single_label_classification":
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    return loss


def _token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled tokens (label -100 ignored)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _causal_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: token t predicts label t + 1 (label -100 ignored)."""
    return _token_loss(logits[:, :-1], labels[:, 1:])


def model_loss(model: nn.Module) -> LossFn:
    """``loss_fn(logits, labels)``: the loss a transformers model computes from ``labels``.

    - ``*ForSequenceClassification`` (and image, audio, video classification): as the model,
      by ``config.problem_type`` (unset: MSE when ``num_labels == 1``, cross-entropy for
      integer labels, binary cross-entropy with logits otherwise), mean over the examples;
    - ``*ForTokenClassification``, ``*ForMaskedLM``: cross-entropy, mean over the labelled
      tokens (label -100 ignored);
    - ``*ForCausalLM``: next-token cross-entropy, mean over the labelled tokens.

    Other models raise TypeError: pass your own ``loss_fn``. For the token-level losses, a
    chunk's loss is the mean over its labelled tokens, and the per-example losses (M = 1 K,
    the stability measure) are each example's own token mean: they average to the model's
    loss when every example has the same number of labelled tokens.
    """
    name = type(model).__name__
    config = getattr(model, "config", None)
    if name.endswith(_CLASSIFICATION):
        return _classification_loss(config)
    if name.endswith(_TOKEN_LEVEL):
        return _token_loss
    if name.endswith(_CAUSAL):
        return _causal_loss
    raise TypeError(
        f"cannot tell the loss of {name}: supported are models named *"
        f"{', *'.join(_CLASSIFICATION + _TOKEN_LEVEL + _CAUSAL)}; pass "
        "loss_fn=(logits, labels) -> mean loss"
    )


class BreakevenTrainerCallback(TrackedTraining, transformers.TrainerCallback):
    """Measure along ``transformers.Trainer.train``: the Tracker's hooks around each
    optimizer step.

    - ``on_train_begin``: converts the probe and data (dicts of tensors, see
      :func:`as_batch`) for :class:`HFModel`, infers the loss (:func:`model_loss`) and checks
      it against the model's own ``loss`` on the probe (ValueError when they differ), fills
      in the batch size S (``per_device_train_batch_size`` x ``gradient_accumulation_steps``
      x world size) and the steps per epoch, opens the run store;
    - ``on_pre_optimizer_step``: ``tracker.before_step(state.global_step, HFModel(model))``
      after the backward passes of all accumulated micro-batches *and after the Trainer's
      gradient clipping* (``max_grad_norm``, 1.0 by default): the measured gradient (for
      ``alignment``) is the clipped one the optimizer uses;
    - ``on_optimizer_step``: ``tracker.after_step`` (after the update, before the learning
      rate scheduler's step);
    - ``on_evaluate``: the evaluation metrics as an ``evaluation`` record;
    - ``on_train_end``: ends the run (``summary.json``, ``model.pt``, status ``finished``).
      A Trainer has no hook for errors: a crashed run keeps the status ``running``.

    The learning rate and momentum of each step are read from the optimizer's first
    parameter group (momentum 0 for Adam and other optimizers without one; ``stability``
    and ``edge_of_stability`` assume SGD with that learning rate).

    Requirements on the model and data: the model is a transformers model whose output has
    ``logits`` (batch first) and whose loss :func:`model_loss` knows, or any model with
    ``loss_fn=(logits, labels) -> mean loss`` given. ``probe``, ``train_data`` and
    ``val_data`` are dicts of tensors holding the model inputs and ``labels`` for every
    example (the inputs padded to one length, sharing shape and dtype), or ``(x, y)`` pairs
    already packed for :class:`HFModel` with ``input_names`` given. The measures run the
    model in eval mode (dropout off) and leave training bitwise unchanged.

    Args:
        tracker: a :class:`~breakeven.Tracker`, a spec ``{measure name: {schedule and
            options}}`` (see :func:`~breakeven.build_tracker`) or a list of measures.
        probe, train_data, val_data, loss_fn, batch_size, n_train, steps_per_epoch, seed,
            schedule: passed to the :class:`~breakeven.Tracker`.
        input_names: the model inputs, in the order stacked in ``x`` (default: the keys of
            the probe other than ``labels``).
        check_loss: compare the inferred loss with the model's own on the probe (default
            True; skipped when ``loss_fn`` is given).
        out_dir, name: a new run directory to write, as for the Lightning callback.
        log: live logging of every record: sink names (``"tensorboard"``, ``"mlflow"``,
            ``"wandb"``, opened under ``out_dir/logs/``) and/or sink objects (see
            :mod:`breakeven.tracking.sinks`). A W&B sink logs into the W&B run already
            active (e.g. a ``WandbLogger``'s or ``report_to="wandb"``'s) when there is one.

    Records: ``tracker.records_`` (measures) and ``evaluations_`` (evaluation metrics).
    """

    integration = "huggingface"

    def __init__(
        self,
        tracker: Tracker | Mapping[str, Any] | Iterable[Any],
        *,
        probe: Mapping[str, Any] | Batch | None = None,
        train_data: Mapping[str, Any] | Batch | None = None,
        val_data: Mapping[str, Any] | Batch | None = None,
        loss_fn: LossFn | None = None,
        batch_size: int | None = None,
        n_train: int | None = None,
        steps_per_epoch: int | None = None,
        seed: int | None = None,
        schedule: Any = None,
        input_names: Sequence[str] | None = None,
        check_loss: bool = True,
        out_dir: str | os.PathLike | None = None,
        name: str | None = None,
        log: Any = None,
    ) -> None:
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
        self.input_names = tuple(input_names) if input_names is not None else None
        self.check_loss = check_loss
        self.model_: HFModel | None = None

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ValueError("the Trainer passed no model to the callback")
        t = self.tracker
        names = self.input_names
        for attr in ("probe", "train_data", "val_data"):
            data = getattr(t, attr)
            if data is not None:
                batch, names = as_batch(data, names)
                setattr(t, attr, batch)
        if names is None:
            raise ValueError("BreakevenTrainerCallback needs probe= and train_data=")
        self.input_names = names
        self.model_ = HFModel(model, names)
        inferred = t.loss_fn is None
        if inferred:
            t.loss_fn = model_loss(model)
        device = next(model.parameters()).device
        world = int(getattr(args, "world_size", 1) or 1)
        accumulate = int(args.gradient_accumulation_steps)
        loader = kwargs.get("train_dataloader")
        try:
            batches = len(loader) if loader is not None else None
        except TypeError:  # an iterable dataset
            batches = None
        self._start(
            self.model_,
            kwargs.get("optimizer"),
            batch_size=int(args.per_device_train_batch_size) * accumulate * world,
            steps_per_epoch=steps_per_epoch(batches, accumulate),
            device=device,
            model_name=type(model).__name__,
        )
        if inferred and self.check_loss and t.probe is not None:
            with failing(self):
                self._check_loss(model)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        with failing(self):
            self._before(int(state.global_step), self._model(kwargs), kwargs.get("optimizer"))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        with failing(self):
            self._after(self._model(kwargs))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        metrics = {k: v for k, v in (kwargs.get("metrics") or {}).items() if k != "epoch"}
        with failing(self):
            self._evaluation(int(state.global_step), metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        with failing(self):
            self._end(int(state.global_step), self._model(kwargs).model)

    # ------------------------------------------------------------------ internals

    def _model(self, kwargs: Mapping[str, Any]) -> HFModel:
        model = kwargs.get("model")
        if self.model_ is None or (model is not None and self.model_.model is not model):
            if model is None or self.input_names is None:
                raise RuntimeError("on_train_begin was not called")
            self.model_ = HFModel(model, self.input_names)
        return self.model_

    def _check_loss(self, model: nn.Module) -> None:
        """Raise ValueError when the inferred loss differs from the model's own ``loss``."""
        adapter, (x, y) = self._model({"model": model}), self.tracker.probe
        with measuring(adapter, "eval"), torch.no_grad():
            try:
                out = model(**adapter.inputs(x), labels=y)
            except TypeError as e:
                raise TypeError(
                    f"{type(model).__name__} takes no labels= ({e}): pass loss_fn="
                ) from e
            own = getattr(out, "loss", None)
            if own is None and isinstance(out, (tuple, list)) and out and out[0].ndim == 0:
                own = out[0]
            if own is None:
                raise ValueError(
                    f"{type(model).__name__} computes no loss from labels=: pass loss_fn="
                )
            ours = self.tracker.loss_fn(adapter(x), y)
        a, b = float(own), float(ours)
        if not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6):
            raise ValueError(
                f"the loss breakeven inferred for {type(model).__name__} gives {b:.6g} on the "
                f"probe but the model's own loss is {a:.6g}: pass loss_fn=(logits, labels) -> "
                "the mean loss the model minimises"
            )
