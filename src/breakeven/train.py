"""The plain SGD loop any user could write, with a tracker plugged in.

``train(TrainConfig(...), tracker=None) -> TrainResult``. Mean cross-entropy loss; SGD with
momentum (PyTorch's form: ``v <- beta v + g``, ``theta <- theta - eta v``; Nesterov
optional); the learning rate divided by 10 at given epochs (paper App. G); L2 weight decay
on convolution kernels only (paper App. D: ``g <- g + wd * w`` for conv weights, nothing on
biases, BatchNorm, dense or embedding parameters). ``optimizer="adam"`` or ``"adamw"``
trains with ``torch.optim.Adam`` / ``AdamW`` instead (see :func:`build_optimizer`). Two
seeds: ``init_seed`` draws the initial parameters, ``data_seed`` the ``n_train`` subset, the
shuffling, the augmentation and any dropout noise. On CPU the same config gives bitwise the
same parameters.

A non-finite training loss stops the run before the update with ``status='diverged'``;
nothing is raised, so a sweep survives it (the paper's eta = 1.0 on SimpleCNN diverges).

The tracker's hooks (:class:`TrainHooks`, whose methods do nothing until overridden; an
object with only some of these methods is called for those)::

    on_optimizer(optimizer)                # once, the optimizer the loop built (before
                                           # on_start): measures that read its state
    on_start(model, dataset, config)       # once, before the first step
    before_step(step, model, batch, loss)  # after backward, before optimizer.step():
                                           # .grad holds the mini-batch gradient
    after_step(step, model)                # after the update of step `step`
    on_evaluate(entry, seconds)            # after each evaluation: the new history entry
                                           # and the seconds the evaluation took
    on_end(result)                         # once, with the TrainResult

``step`` is the 0-based index of the SGD step; before it ``step`` updates have been applied.
Hooks must leave the model, its ``.grad`` and the global RNG as they found them if
measuring is not to change training.

Data-parallel: when a ``torch.distributed`` process group is initialised (under
``torchrun``), each rank computes the loss of its share of every mini-batch (every
world-size-th example), the gradients are all-reduced into the gradient of the whole batch,
and BatchNorm statistics are averaged over the ranks after each step, so every rank holds the
same parameters; evaluation runs on every rank. Checkpoints then hold every rank's RNG.

Checkpoints and resume: ``train(..., checkpoint_every=k, on_checkpoint=save)`` hands
``save`` the complete state every ``k`` steps; ``train(..., resume=state)`` continues from it
and ends bitwise where the uninterrupted run ends (CPU). A tracker with ``state_dict()`` and
``load_state_dict(d)`` has its state saved and restored with it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._core.checks import FRACTION, POSITIVE, SEED_MAX, plain_number
from ._core.checks import is_int as _is_int
from ._core.checks import is_real as _is_real
from ._core.distributed import world_and_rank
from .data import _LOADERS as _DATASET_LOADERS
from .data import CorruptDatasetError, Dataset, augment_crop_flip, list_datasets, load_dataset
from .errors import ConfigError
from .models import build_model, list_models
from .tracking.hooks import TrainHooks, as_hooks

__all__ = [
    "CHECKPOINT_KEYS",
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "conv_weight_decay_groups",
    "evaluate",
    "prepare_dataset",
    "prepare_model",
    "train",
]


def _loader_options(dataset: str) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(_DATASET_LOADERS[dataset]).parameters


def _loader_accepts(kwargs: Mapping[str, Any], c: TrainConfig) -> bool:
    """Whether the loader of ``c.dataset`` takes every key of ``kwargs`` (any, if it takes
    ``**kwargs``)."""
    params = _loader_options(c.dataset)
    return any(p.kind is p.VAR_KEYWORD for p in params.values()) or set(kwargs) <= set(params)


def _is_device(v: Any) -> bool:
    try:
        torch.device(v)
    except (RuntimeError, TypeError):
        return False
    return True


OPTIMIZERS = ("sgd", "adam", "adamw")
"""The values of :attr:`TrainConfig.optimizer`."""

_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}


def _int_at_least(low: int) -> Callable[[Any, TrainConfig], bool]:
    return lambda v, c: _is_int(v) and v >= low


_Check = tuple[str, Callable[[Any, "TrainConfig"], bool], "str | Callable[[TrainConfig], str]"]

#: The checks of a TrainConfig, in order, one row per field: the field, whether its value
#: (given the whole config) is valid, and what it must be (a string, or a function of the
#: config for messages that name other values). The first failing row raises
#: ``ConfigError("<field>=<value> is invalid: must be <what>")``; a row may rely on the
#: rows above it having passed (``dataset_kwargs`` on ``dataset``, CUDA on ``device``).
_FIELD_CHECKS: tuple[_Check, ...] = (
    ("model", lambda v, c: v in list_models(), lambda c: f"one of {list_models()}"),
    ("dataset", lambda v, c: v in list_datasets(), lambda c: f"one of {list_datasets()}"),
    (
        "dataset_kwargs",
        _loader_accepts,
        lambda c: f"options of the {c.dataset!r} loader: {sorted(_loader_options(c.dataset))}",
    ),
    *((k, lambda v, c: POSITIVE.ok(v), POSITIVE.wanted) for k in ("lr", "lr_decay_factor")),
    ("momentum", lambda v, c: FRACTION.ok(v), FRACTION.wanted),
    (
        "nesterov",
        lambda v, c: isinstance(v, bool) and not (v and c.momentum == 0),
        "a bool, and True only with momentum > 0",
    ),
    ("weight_decay", lambda v, c: _is_real(v) and v >= 0, "a finite number >= 0"),
    ("optimizer", lambda v, c: v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
    (
        "betas",
        lambda v, c: isinstance(v, tuple) and len(v) == 2 and all(FRACTION.ok(b) for b in v),
        "a pair [beta_1, beta_2] of numbers in [0, 1)",
    ),
    ("eps", lambda v, c: POSITIVE.ok(v), POSITIVE.wanted),
    *(
        (
            k,
            lambda v, c, k=k: c.optimizer != "sgd" or v == _ADAM_DEFAULTS[k],
            f"{default!r} (the default) with optimizer='sgd': it is Adam's",
        )
        for k, default in _ADAM_DEFAULTS.items()
    ),
    (
        "momentum",
        lambda v, c: c.optimizer == "sgd" or v == 0,
        lambda c: f"0 with optimizer={c.optimizer!r}: Adam's momentum is betas[0]",
    ),
    ("probe_fraction", lambda v, c: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    *((k, _int_at_least(1), "an integer >= 1") for k in ("batch_size", "eval_batch_size")),
    *(
        (k, lambda v, c: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1")
        for k in ("epochs", "steps", "n_train", "eval_train_size", "eval_val_size", "num_threads")
    ),
    (
        "steps",
        lambda v, c: v is None or c.epochs is None,
        lambda c: f"None when epochs is given (epochs={c.epochs}): set only one",
    ),
    (
        "eval_every",
        lambda v, c: v is None or (_is_int(v) and v >= 0),
        "None (each epoch), 0 (never) or an integer >= 1 (steps)",
    ),
    *(
        (k, lambda v, c: _is_int(v) and 0 <= v <= SEED_MAX, "an integer in [0, 2**63 - 1]")
        for k in ("init_seed", "data_seed")
    ),
    (
        "lr_decay_epochs",
        lambda v, c: isinstance(v, tuple) and all(_is_int(e) and e >= 1 for e in v),
        "a sequence of epoch numbers >= 1",
    ),
    ("lr_decay_epochs", lambda v, c: list(v) == sorted(set(v)), "strictly increasing"),
    *(
        (k, lambda v, c: isinstance(v, bool), "True or False")
        for k in ("drop_last", "augment", "channels_last")
    ),
    ("device", lambda v, c: _is_device(v), "a torch device string such as 'cpu' or 'cuda:0'"),
    (
        "device",
        lambda v, c: torch.device(v).type != "cuda" or torch.cuda.is_available(),
        "'cpu' on this machine (CUDA is not available)",
    ),
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Frozen; every value is checked on construction.

    Length: ``steps`` SGD steps, or ``epochs`` passes over the training set; give at most
    one (neither: 1 epoch). ``eval_every``: steps between evaluations of training and
    validation loss/accuracy (None: at the end of each epoch; 0: never); with evaluation on,
    step 0 and the last step are always evaluated.
    """

    model: str = "mlp"  # a name in breakeven.list_models()
    dataset: str = "fashion_mnist"  # a name in breakeven.list_datasets()
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)  # root=, ...
    n_train: int | None = None  # seeded subset of the training set (None: all of it)
    probe_fraction: float = 0.05  # fixed probe subset for Hessian quantities
    lr: float = 0.01  # eta, the learning rate
    momentum: float = 0.0  # beta in [0, 1) (SGD only)
    nesterov: bool = False
    weight_decay: float = 0.0  # sgd/adam: L2 on conv kernels only; adamw: decoupled, all
    optimizer: str = "sgd"  # "sgd", "adam" or "adamw" (torch.optim's)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (beta_1, beta_2), each in [0, 1)
    eps: float = 1e-8  # Adam's epsilon, > 0
    lr_decay_epochs: tuple[int, ...] = ()  # lr *= lr_decay_factor at the start of these
    lr_decay_factor: float = 0.1
    batch_size: int = 64  # S
    epochs: int | None = None
    steps: int | None = None
    drop_last: bool = False  # drop each epoch's last, smaller batch
    augment: bool = False  # random crop (padding 4) + horizontal flip, images only
    init_seed: int = 0
    data_seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int = 1000
    eval_train_size: int | None = None  # evaluate the training loss on a fixed subset
    eval_val_size: int | None = None  # evaluate the validation loss on a fixed subset
    device: str = "cpu"
    channels_last: bool = False  # NHWC memory format for image models (faster on CPU)
    num_threads: int | None = None  # torch CPU threads during the run (None: leave as is)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("lr_decay_epochs", "betas"):
            if isinstance(getattr(self, name), (list, tuple)):
                set_(self, name, tuple(getattr(self, name)))
        for name in ("model_kwargs", "dataset_kwargs"):
            v = getattr(self, name)
            if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
                self._fail(name, "a mapping with string keys")
            set_(self, name, dict(v))
        self._validate()
        for f in fields(self):  # numpy numbers, Fractions: as Python numbers (checked above)
            v = getattr(self, f.name)
            set_(
                self,
                f.name,
                tuple(map(plain_number, v)) if isinstance(v, tuple) else plain_number(v),
            )

    def _fail(self, key: str, allowed: str) -> None:
        raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: must be {allowed}")

    def _validate(self) -> None:
        for key, ok, allowed in _FIELD_CHECKS:
            if not ok(getattr(self, key), self):
                self._fail(key, allowed if isinstance(allowed, str) else allowed(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. a TOML table); unknown keys raise :class:`ConfigError`
        naming them and the allowed keys."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; allowed keys: {allowed}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (tuples as lists), the inverse of :meth:`from_dict`. With
        ``optimizer="sgd"`` the Adam keys (``optimizer``, ``betas``, ``eps``, then at their
        defaults) are left out, so an SGD config reads as it did before they existed (the
        run directories of earlier versions keep matching their configs)."""
        out = dataclasses.asdict(self)
        out["lr_decay_epochs"] = list(self.lr_decay_epochs)
        out["betas"] = list(self.betas)
        if self.optimizer == "sgd":
            for key in ("optimizer", *_ADAM_DEFAULTS):
                del out[key]
        return out

    def steps_per_epoch(self, n_train: int) -> int:
        """SGD steps in one pass over ``n_train`` examples (the last, smaller batch counts
        unless ``drop_last``)."""
        bs = self.batch_size
        per_epoch = n_train // bs if self.drop_last else math.ceil(n_train / bs)
        if per_epoch == 0:
            raise ConfigError(f"batch_size={bs} with drop_last=True exceeds the {n_train} examples")
        return per_epoch

    def total_steps(self, n_train: int) -> int:
        """SGD steps of the whole run on ``n_train`` examples."""
        if self.steps is not None:
            return self.steps
        return (self.epochs or 1) * self.steps_per_epoch(n_train)

    def lr_at(self, epoch: int) -> float:
        """The learning rate during (0-based) ``epoch``: ``lr`` times ``lr_decay_factor`` for
        each decay epoch reached."""
        return self.lr * self.lr_decay_factor ** sum(e <= epoch for e in self.lr_decay_epochs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and validated."""
        return TrainConfig.from_dict({**dataclasses.asdict(self), **changes})


@dataclass
class TrainResult:
    """What a run produced.

    ``history``: one dict per evaluation (``step``, ``epoch`` = step / steps-per-epoch,
    ``lr``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``seconds`` since the
    start; loss is the mean cross-entropy in nats, accuracy a fraction). ``losses``: the
    mini-batch training loss of every step taken, before its update. ``diverged_at``: the
    step whose loss was not finite (None when finished).
    """

    status: Literal["finished", "diverged"]
    config: TrainConfig
    model: nn.Module
    history: list[dict[str, float]]
    losses: list[float]
    steps: int
    seconds: float
    diverged_at: int | None = None

    @property
    def final(self) -> dict[str, float] | None:
        """The last evaluation, or None when evaluation was off."""
        return self.history[-1] if self.history else None


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` for ``model``:

    - ``"sgd"``: ``torch.optim.SGD`` with ``momentum`` and ``nesterov``; ``weight_decay`` is L2
      on convolution kernels only (:func:`conv_weight_decay_groups`, paper App. D);
    - ``"adam"``: ``torch.optim.Adam`` with ``betas`` and ``eps``; ``weight_decay`` as for SGD
      (L2 added to the gradient of convolution kernels, before the moment estimates);
    - ``"adamw"``: ``torch.optim.AdamW`` with ``betas`` and ``eps``; ``weight_decay`` is
      decoupled (``theta <- theta - eta wd theta`` at each step) and applies to every
      parameter, as ``AdamW(model.parameters(), weight_decay=wd)`` does.
    """
    c = config
    if c.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay
        )
    groups = conv_weight_decay_groups(model, c.weight_decay)
    if c.optimizer == "adam":
        return torch.optim.Adam(groups, lr=c.lr, betas=c.betas, eps=c.eps)
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)


def conv_weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: convolution kernels (``nn.Conv1d/2d/3d`` and transposed
    ``.weight``) with ``weight_decay``; every other parameter with 0."""
    conv = [m.weight for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    ids = {id(p) for p in conv}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": conv, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` on ``(x, y)`` in eval mode
    (BatchNorm uses running statistics, dropout off); the previous mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for i in range(0, len(y), batch_size):
            out = model(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    n = max(len(y), 1)
    return loss_sum / n, correct / n


def prepare_dataset(config: TrainConfig, dataset: Dataset | None = None) -> Dataset:
    """The dataset :func:`train` uses for ``config``: ``dataset`` (or ``config.dataset``
    loaded by name) reduced to the seeded ``n_train`` subset, with ``probe_fraction`` set.
    Idempotent: passing its result to :func:`train` again selects the same data."""
    if dataset is None:
        return load_dataset(
            config.dataset,
            n_train=config.n_train,
            seed=config.data_seed,
            probe_fraction=config.probe_fraction,
            **config.dataset_kwargs,
        )
    if config.n_train is not None:
        dataset = dataset.subset(config.n_train, config.data_seed)
    return dataclasses.replace(dataset, probe_fraction=config.probe_fraction)


_load = prepare_dataset


def _check_finite(ds: Dataset) -> None:
    for split in ("train", "test"):
        x = getattr(ds, f"x_{split}")
        if x.is_floating_point():
            bad = int(x.numel() - torch.isfinite(x).sum())
            if bad:
                raise CorruptDatasetError(
                    ds.source or ds.name,
                    f"the data are not finite: x_{split} holds {bad} NaN or infinite value(s) "
                    f"of {x.numel()}; clean the data (training on them would only 'diverge')",
                )


def prepare_model(config: TrainConfig, dataset: Dataset) -> nn.Module:
    """The model :func:`train` trains on ``dataset`` (the result of :func:`prepare_dataset`),
    at its initial parameters, after checking what only the data can tell, so that a bad
    config fails before anything is trained or written:

    - the inputs of both splits are finite (else :class:`~breakeven.data.CorruptDatasetError`
      naming the split and the count);
    - ``batch_size`` is at most the number of training examples; ``augment`` has images;
      ``weight_decay`` has convolution kernels to act on;
    - ``model`` builds from ``model_kwargs`` for these inputs and classes, with no layer of
      width 0, and its forward pass and loss run on two training examples (eval mode, no
      gradient: no parameter, buffer or RNG changes).

    Anything else raises :class:`ConfigError` naming the key. The parameters are drawn from
    ``init_seed``; the caller's global RNG state is left as it was.
    """
    c, ds = config, dataset
    _check_finite(ds)
    if c.batch_size > ds.n_train:
        of = f"n_train={c.n_train}" if c.n_train is not None else f"all of {ds.name}"
        raise ConfigError(
            f"batch_size={c.batch_size} is invalid: larger than the {ds.n_train} training "
            f"examples ({of}); must be at most {ds.n_train}"
        )
    what = f"model={c.model!r} with model_kwargs={dict(c.model_kwargs)!r}"
    with torch.random.fork_rng(devices=[]):  # built on the CPU: its generator alone
        torch.random.default_generator.manual_seed(c.init_seed)
        try:
            model = build_model(c.model, ds.input_shape, ds.num_classes, **c.model_kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{what} cannot be built: {e}") from e
    empty = [name for name, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise ConfigError(f"{what} is invalid: it gives layers of width 0 ({', '.join(empty)})")
    if c.augment and len(ds.input_shape) != 3:
        raise ConfigError(f"augment=True needs images (N, C, H, W); {ds.name} has {ds.input_shape}")
    groups = conv_weight_decay_groups(model, c.weight_decay)
    if c.weight_decay > 0 and c.optimizer != "adamw" and not any(g["weight_decay"] for g in groups):
        raise ConfigError(
            f"weight_decay={c.weight_decay} has no effect: {c.model!r} has no convolution "
            f"kernels (with optimizer={c.optimizer!r} weight decay applies to them only, paper "
            "App. D); set it to 0, or use optimizer='adamw' (decoupled, on every parameter)"
        )
    x, y = ds.x_train[:2], ds.y_train[:2]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            F.cross_entropy(model(x), y)
    except Exception as e:
        raise ConfigError(
            f"{what} cannot run on the {ds.name} data (inputs {x.dtype} of shape "
            f"{tuple(ds.input_shape)}, {ds.num_classes} classes): {type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(was_training)
    return model


def train(
    config: TrainConfig,
    tracker: TrainHooks | None = None,
    *,
    dataset: Dataset | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` with SGD; see the module docstring.

    ``tracker``: a :class:`TrainHooks` (or an object with only some of its methods, which
    are called; the others do nothing). ``dataset`` overrides loading ``config.dataset`` by
    name (``n_train`` still applies).
    The caller's global RNG state and torch's thread count are left as they were. The
    checks of :func:`prepare_model` run before the first step.

    Checkpoints: every ``checkpoint_every`` steps (0: never; not after the last step),
    ``on_checkpoint(state)`` receives the complete training state after that step's update,
    evaluation and tracker hooks (see :func:`checkpoint_state`). ``resume=state`` continues
    from such a state: on CPU the parameters, losses, history and tracker records are
    bitwise those of the uninterrupted run (same data order mid-epoch, augmentation and
    dropout noise, learning-rate schedule, momentum buffers, tracker state via its
    ``state_dict``/``load_state_dict``). ``on_start`` is called again on resume, before the
    tracker's state is loaded.

    ``num_threads``: on a machine shared with other busy processes, one thread per run
    is much faster than torch's default (measured on a 2-core machine with the other core
    busy: an MLP epoch took 1.8 s with one thread and did not finish in 115 s with two).
    """
    t0 = time.perf_counter()
    c = config
    if not _is_int(checkpoint_every) or checkpoint_every < 0:
        raise ConfigError(
            f"checkpoint_every={checkpoint_every!r} is invalid: must be an integer >= 0"
        )
    if checkpoint_every and on_checkpoint is None:
        raise ValueError("checkpoint_every > 0 needs on_checkpoint= a function of the state")
    if resume is not None and dict(resume.get("config", {})) != c.to_dict():
        raise ConfigError("resume= holds the state of a run with a different config")
    device = torch.device(c.device)
    ds = prepare_dataset(c, dataset)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    threads = torch.get_num_threads()
    try:
        if c.num_threads is not None:
            torch.set_num_threads(c.num_threads)
        model = prepare_model(c, ds)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(c.data_seed)  # dropout noise
            loop = _Loop(c, model, ds, device, tracker, t0)
            return loop.run(checkpoint_every, on_checkpoint, resume)
    finally:
        torch.set_num_threads(threads)


def _all_reduce(t: Tensor) -> Tensor:
    torch.distributed.all_reduce(t)
    return t


def _gather_objects(obj: Any) -> list[Any]:
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


#: Keys of a checkpoint state (see :meth:`_Loop.state`).
CHECKPOINT_KEYS = (
    "config",
    "step",
    "model",
    "optimizer",
    "shuffle_rng",
    "augment_rng",
    "torch_rng",
    "cuda_rng",
    "history",
    "losses",
    "seconds",
    "tracker",
)


class _Loop:
    """One run's SGD loop, its state in attributes so that it can be checkpointed."""

    def __init__(
        self,
        c: TrainConfig,
        model: nn.Module,
        ds: Dataset,
        device: torch.device,
        tracker: TrainHooks | None,
        t0: float,
    ) -> None:
        self.c, self.model, self.ds, self.device, self.t0 = c, model, ds, device, t0
        self.hooks = as_hooks(tracker)
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        model.train()
        self.x_train, self.y_train = ds.x_train.to(device), ds.y_train.to(device)
        self.x_test, self.y_test = ds.x_test.to(device), ds.y_test.to(device)
        if c.channels_last and self.x_train.dim() == 4:
            self.x_train = self.x_train.contiguous(memory_format=torch.channels_last)
            self.x_test = self.x_test.contiguous(memory_format=torch.channels_last)
        self.fill = None
        if c.augment and "mean" in ds.meta:  # pad with black pixels of the normalised data
            mean, std = torch.tensor(ds.meta["mean"]), torch.tensor(ds.meta["std"])
            self.fill = (-mean / std).to(device)

        self.opt = build_optimizer(model, c)
        self.n = len(self.y_train)
        self.per_epoch, self.total = c.steps_per_epoch(self.n), c.total_steps(self.n)
        self.shuffle = torch.Generator().manual_seed(c.data_seed)
        self.shuffle_at_epoch_start = self.shuffle.get_state()
        self.aug_gen = torch.Generator().manual_seed((c.data_seed + 1_000_003) % (SEED_MAX + 1))
        self.x_eval, self.y_eval = _fixed_subset(self.x_train, self.y_train, c.eval_train_size, 0)
        self.x_val, self.y_val = _fixed_subset(self.x_test, self.y_test, c.eval_val_size, 1)
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.step = 0
        self.perm: Tensor | None = None
        self.evaluating = c.eval_every != 0
        self.hooks.on_optimizer(self.opt)  # for measures that read its state (Adam's)
        self.world, self.rank = world_and_rank()

    def evaluate(self) -> None:
        c, t = self.c, time.perf_counter()
        tr_loss, tr_acc = evaluate(self.model, self.x_eval, self.y_eval, c.eval_batch_size)
        va_loss, va_acc = evaluate(self.model, self.x_val, self.y_val, c.eval_batch_size)
        entry = {
            "step": self.step,
            "epoch": self.step / self.per_epoch,
            "lr": self.opt.param_groups[0]["lr"],
            "train_loss": tr_loss,
            "train_acc": tr_acc,
            "val_loss": va_loss,
            "val_acc": va_acc,
            "seconds": time.perf_counter() - self.t0,
        }
        self.history.append(entry)
        self.hooks.on_evaluate(dict(entry), time.perf_counter() - t)

    def state(self) -> dict[str, Any]:
        """The complete state after ``self.step`` updates (everything needed to continue
        bitwise): copies, safe to keep while training goes on."""
        c, step = self.c, self.step
        mid_epoch = step % self.per_epoch != 0
        return {
            "config": c.to_dict(),
            "step": step,
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            # mid-epoch: the generator as it was before this epoch's permutation was drawn
            "shuffle_rng": self.shuffle_at_epoch_start if mid_epoch else self.shuffle.get_state(),
            "augment_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
            "history": copy.deepcopy(self.history),
            "losses": list(self.losses),
            "seconds": time.perf_counter() - self.t0,
            "tracker": copy.deepcopy(self.hooks.state_dict()),
            # data-parallel: every rank's own RNG (its dropout noise differs)
            "rank_rngs": _gather_objects(torch.get_rng_state()) if self.world > 1 else None,
        }

    def restore(self, s: Mapping[str, Any]) -> None:
        missing = [k for k in CHECKPOINT_KEYS if k not in s]
        if missing:
            raise ValueError(f"resume= is not a checkpoint state: missing {missing}")
        if not 0 <= s["step"] <= self.total:
            raise ValueError(f"resume= is at step {s['step']}, beyond this run's {self.total}")
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.step = int(s["step"])
        self.shuffle.set_state(s["shuffle_rng"])
        if self.step % self.per_epoch != 0:
            self.shuffle_at_epoch_start = self.shuffle.get_state()
            self.perm = torch.randperm(self.n, generator=self.shuffle).to(self.device)
        self.aug_gen.set_state(s["augment_rng"])
        torch.set_rng_state(s["torch_rng"])
        rank_rngs = s.get("rank_rngs")
        if self.world > 1 or rank_rngs is not None:
            if rank_rngs is None or len(rank_rngs) != self.world:
                raise ValueError(
                    f"resume= comes from a run on {len(rank_rngs or [0])} process(es); "
                    f"this one has {self.world}: resume with as many"
                )
            torch.set_rng_state(rank_rngs[self.rank])
        if s["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["cuda_rng"], self.device)
        self.history = copy.deepcopy(list(s["history"]))
        self.losses = list(s["losses"])
        self.t0 = time.perf_counter() - float(s["seconds"])

    def run(
        self,
        checkpoint_every: int,
        on_checkpoint: Callable[[dict[str, Any]], None] | None,
        resume: Mapping[str, Any] | None,
    ) -> TrainResult:
        """Train from step 0 (or from ``resume``) to the end, or to the first step whose
        loss is not finite (no update is made with it)."""
        self._start(resume)
        diverged_at = None
        while self.step < self.total:
            batch = self._next_batch()
            loss, value = self._loss(*batch)
            if not math.isfinite(value):
                diverged_at = self.step
                break
            self._update(batch, loss)
            self.losses.append(value)
            self.step += 1
            if self._evaluation_due():
                self.evaluate()
            if checkpoint_every and self.step % checkpoint_every == 0 and self.step < self.total:
                assert on_checkpoint is not None
                on_checkpoint(self.state())
        return self._finish(diverged_at)

    def _start(self, resume: Mapping[str, Any] | None) -> None:
        """Restore ``resume``, start the hooks (then load their state), and evaluate step 0
        of a fresh run."""
        if resume is not None:
            self.restore(resume)
        self.hooks.on_start(self.model, self.ds, self.c)
        if resume is not None and resume["tracker"] is not None:
            self.hooks.load_state_dict(resume["tracker"])
        if self.evaluating and resume is None:
            self.evaluate()

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """The mini-batch of ``self.step``, with the learning rate of its epoch set; a new
        permutation of the training set at the start of an epoch; augmented if asked."""
        epoch, i = divmod(self.step, self.per_epoch)
        lr = self.c.lr_at(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if i == 0:
            self.shuffle_at_epoch_start = self.shuffle.get_state()
            self.perm = torch.randperm(self.n, generator=self.shuffle).to(self.device)
        assert self.perm is not None
        bs = self.c.batch_size
        idx = self.perm[i * bs : (i + 1) * bs]
        xb, yb = self.x_train[idx], self.y_train[idx]
        if self.c.augment:
            xb = augment_crop_flip(xb, self.aug_gen, fill=self.fill)
        return xb, yb

    def _loss(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, float]:
        """The mean loss of the batch to differentiate, and its value (the whole batch's,
        the same on every rank). Data-parallel: this rank's share of the batch, weighted so
        that the all-reduced gradient is the whole batch's."""
        if self.world == 1:
            loss = F.cross_entropy(self.model(xb), yb)
            return loss, loss.item()
        xl, yl = xb[self.rank :: self.world], yb[self.rank :: self.world]
        out = self.model(xl if len(yl) else xb[:1])
        loss = F.cross_entropy(out, yl) * (len(yl) / len(yb)) if len(yl) else out.sum() * 0
        return loss, float(_all_reduce(loss.detach().reshape(1).clone()))

    def _update(self, batch: tuple[Tensor, Tensor], loss: Tensor) -> None:
        """One SGD step from ``loss``, with the hooks before and after it. Data-parallel:
        the gradients are summed over the ranks before the step, the BatchNorm statistics
        averaged after it."""
        model = self.model
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:  # the gradient of the whole batch on every rank
            for p in model.parameters():
                if p.grad is not None:
                    _all_reduce(p.grad)
        self.hooks.before_step(self.step, model, batch, loss)
        self.opt.step()
        if self.world > 1:  # BatchNorm statistics: the mean over the ranks
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    _all_reduce(buffer).div_(self.world)
        self.hooks.after_step(self.step, model)

    def _evaluation_due(self) -> bool:
        """Whether to evaluate after ``self.step`` updates: every ``eval_every`` steps, or
        (None) at each epoch's end and at the last step."""
        if not self.evaluating:
            return False
        if self.c.eval_every is not None:
            return self.step % self.c.eval_every == 0
        return self.step % self.per_epoch == 0 or self.step == self.total

    def _finish(self, diverged_at: int | None) -> TrainResult:
        """The result (diverged when a loss or a parameter is not finite), after a last
        evaluation of a finished run if its last step was not evaluated; ``on_end``."""
        step = self.step
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if diverged_at is None and not finite:
            diverged_at = step
        if self.evaluating and diverged_at is None and self.history[-1]["step"] != step:
            self.evaluate()
        result = TrainResult(
            status="finished" if diverged_at is None else "diverged",
            config=self.c,
            model=self.model,
            history=self.history,
            losses=self.losses,
            steps=step,
            seconds=time.perf_counter() - self.t0,
            diverged_at=diverged_at,
        )
        self.hooks.on_end(result)
        return result


def _fixed_subset(x: Tensor, y: Tensor, size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """``size`` examples of ``(x, y)`` drawn with ``seed``, in their order (all of them when
    ``size`` is None or not smaller)."""
    if size is None or size >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:size].sort().values
    return x[idx], y[idx]
