"""The contract of a schedulable measure: what the :class:`~breakeven.Tracker` calls.

A measure is a :class:`Measure` subclass registered by name with :func:`register_measure`.
At each step where it is due, the Tracker calls ``measure(ctx)`` at the parameters *before*
the training step (the step's mini-batch gradient is in ``ctx.gradient``), then
``after(ctx, values)`` at the parameters after it, and writes one record of the
:class:`Measurement` they returned. Measures of a step run in the order of the config,
except that a measure runs after the ones it ``requires`` (by name) when both are due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from .._core.data import Batch
from .._core.functional import LossFn


@dataclass
class Context:
    """What a measure may look at, at one training step.

    ``sample_batches(L, M)`` draws L disjoint training mini-batches of M examples with the
    tracker's own generator (the global RNG is untouched). ``lr`` is the learning rate of
    this step, ``batch_size`` the training batch size S, ``n_train`` the training-set size N.
    ``cache`` holds the results shared at this step (:attr:`Measurement.shared`) under the
    class-level name of the measure that shared them; ``state[<the measure's name>]`` what
    a measure keeps across steps (warm starts; saved in checkpoints).
    ``optimizer``: the training's ``torch.optim`` optimizer when the loop gave it (read its
    state, never write it), else None.
    ``distributed``: under torchrun each rank holds its part of the probe and of the
    training data, and every measure reduces over the ranks (every rank gets the same
    values; ``sample_batches`` then draws this rank's L / world size batches).
    ``train_data``: the tracker's training set (this rank's part), on the device the tracker
    holds it (not moved to the model's: a measure moves what it uses); read it, never draw
    from it at random (``sample_batches`` does that with the tracker's generator).
    """

    step: int
    epoch: float
    model: nn.Module
    loss_fn: LossFn
    probe: Batch
    sample_batches: Callable[[int, int], list[Batch]]
    lr: float
    momentum: float
    batch_size: int
    n_train: int
    batch: Batch | None = None
    gradient: list[Tensor] | None = None
    val_data: Batch | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    distributed: bool = False
    train_data: Batch | None = None


@dataclass(frozen=True)
class Measurement:
    """What one call of a measure returns.

    Args:
        values: the record's values, ``{key: number}``; every key must be one the measure
            declares (:meth:`Measure.emits`).
        matvecs: the cost of this call in matrix-vector products (Hessian-vector products
            or gradients), summed in the record's ``matvecs`` and the tracker's summary.
        arrays: JSON-safe arrays stored beside the values, under the record's ``arrays``
            (e.g. :func:`~breakeven.measures.tracked.encode_array` of the predictions).
        shared: a result the measures that ``require`` this one reuse at the same step (the
            K spectrum, the Hessian eigenpairs): the Tracker puts it in ``ctx.cache`` under
            the measure's class-level ``name`` (the first one of a step when a measure is
            tracked twice). Never written to the records.
    """

    values: dict[str, float]
    matvecs: int = 0
    arrays: dict[str, Any] | None = None
    shared: Any = field(default=None, repr=False, compare=False)


class Measure:
    """Base class of the measures the :class:`~breakeven.Tracker` runs.

    A subclass declares, at class level:

    - ``name``: set by :func:`register_measure`; the name configs use, the record's
      ``measure`` (unless a config table renames it) and the key of what it shares in
      ``ctx.cache``.
    - ``requires``: names of measures whose result of the same step it reuses from
      ``ctx.cache`` when they run at that step (it must still work alone): the Tracker then
      runs it after them.
    - ``keys``: the keys of its records' values, each an exact key or an ``fnmatch``
      pattern (``"gamma_norm/*"``); a measure whose keys depend on its options overrides
      :meth:`emits` instead. Emitting an undeclared key is an error.
    - ``optimizers``: the ``TrainConfig.optimizer`` values it can measure under (None: any);
      ``breakeven run`` refuses a config that tracks it under another, before any file.

    and implements ``measure(ctx) -> Measurement``; ``after(ctx, values)`` optionally adds
    what needs the parameters after the step. Constructors only store and check their
    arguments, so a bad config fails before training starts.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    keys: ClassVar[tuple[str, ...]] = ()
    optimizers: ClassVar[tuple[str, ...] | None] = None

    def measure(self, ctx: Context) -> Measurement:  # pragma: no cover - abstract
        raise NotImplementedError

    def after(self, ctx: Context, values: dict[str, float]) -> Measurement | None:
        """What this measure adds at the parameters after the step (``ctx.model`` is then
        the updated model), given the ``values`` measured before it; merged into the same
        record. The base class adds nothing."""
        return None

    def emits(self) -> tuple[str, ...]:
        """The keys (or ``fnmatch`` patterns) of this instance's values: ``keys`` by
        default."""
        return self.keys

    def check(self, n_params: int, n_train: int, batch_size: int) -> None:
        """Raise ``ValueError`` naming the option when this measure cannot work for a model
        of ``n_params`` trainable parameters trained on ``n_train`` examples at batch size
        ``batch_size`` (called before training; the base class accepts anything)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


MEASURES: dict[str, type[Measure]] = {}
"""The registered measures by name (filled by :func:`register_measure`; read it, never
write it)."""

M = TypeVar("M", bound=type[Measure])


def _names(value: Any, what: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{what} must be a tuple of non-empty strings, got {value!r}")


def register_measure(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Measure` subclass under ``name``, which becomes
    its class-level ``name``; configs' ``[track]`` tables and ``build_tracker`` then find
    it by that name.

    Raises ``ValueError`` when ``name`` is taken (or empty, or not the ``name`` the class
    already sets) or when the class requires a measure not registered before it (or
    itself), and ``TypeError`` when it is not a ``Measure`` subclass or ``requires`` and
    ``keys`` are not tuples of strings.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"a measure's name must be a non-empty string, got {name!r}")

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Measure)):
            raise TypeError(f"register_measure({name!r}) decorates a Measure subclass, not {cls!r}")
        if name in MEASURES:
            raise ValueError(
                f"measure {name!r} is already registered ({MEASURES[name].__qualname__}); "
                "choose another name"
            )
        if "name" in vars(cls) and cls.name != name:
            raise ValueError(f"{cls.__qualname__} sets name={cls.name!r}, registered as {name!r}")
        _names(cls.requires, f"{cls.__qualname__}.requires")
        _names(cls.keys, f"{cls.__qualname__}.keys")
        unknown = [r for r in cls.requires if r not in MEASURES or r == name]
        if unknown:
            raise ValueError(
                f"{cls.__qualname__} requires {unknown}: a measure may require only measures "
                f"registered before it, other than itself; registered: {sorted(MEASURES)}"
            )
        cls.name = name
        MEASURES[name] = cls
        return cls

    return deco
