"""What :func:`breakeven.train` calls on its tracker: :class:`TrainHooks`, a base class whose
methods all do nothing, so that a tracker overrides only the hooks it needs.

It lives here, below ``train.py``, so that the :class:`~breakeven.tracking.Tracker` can
subclass it; ``breakeven.TrainHooks`` is this class. The types of the training loop
(``Dataset``, ``TrainConfig``, ``TrainResult``) sit above this layer and are named in the
docstrings only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

__all__ = ["TrainHooks", "as_hooks"]

_HOOKS = ("on_optimizer", "on_start", "before_step", "after_step", "on_evaluate", "on_end")


class TrainHooks:
    """The hooks of :func:`breakeven.train`; every method does nothing until overridden.

    ``step`` is the 0-based index of the SGD step; before it ``step`` updates have been
    applied. Hooks must leave the model, its ``.grad`` and the global RNG as they found
    them if measuring is not to change training.

    ``state_dict``/``load_state_dict``: what a checkpoint keeps of the hooks, so that a
    resumed run continues them bitwise. The default keeps nothing (``state_dict()`` is
    None), and ``load_state_dict`` accepts only None.
    """

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Once, before :meth:`on_start`, with the optimizer the loop built (measures such as
        ``preconditioned_sharpness`` read its state; they must never change it)."""

    def on_start(self, model: nn.Module, dataset: Any, config: Any) -> None:
        """Once, before the first step (again on resume, before ``load_state_dict``), with
        the model, the :class:`~breakeven.Dataset` and the ``TrainConfig``."""

    def before_step(
        self, step: int, model: nn.Module, batch: tuple[Tensor, Tensor], loss: Tensor
    ) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: ``.grad`` holds the
        mini-batch gradient of ``batch``."""

    def after_step(self, step: int, model: nn.Module) -> None:
        """After the update of step ``step``."""

    def on_evaluate(self, entry: dict[str, float], seconds: float) -> None:
        """After each evaluation: the new history entry and the seconds it took."""

    def on_end(self, result: Any) -> None:
        """Once, with the ``TrainResult``."""

    def state_dict(self) -> dict[str, Any] | None:
        """The hooks' state for a checkpoint (None: nothing to keep)."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state is not None:
            raise ValueError(
                f"{type(self).__qualname__} keeps no state, but the checkpoint holds a tracker "
                "state: resume with the tracker that saved it"
            )


class _Adapted(TrainHooks):
    """A :class:`TrainHooks` that forwards each hook to the methods ``obj`` has."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        for name in (*_HOOKS, "state_dict", "load_state_dict"):
            f = getattr(obj, name, None)
            if f is not None:
                setattr(self, name, f)


def as_hooks(obj: Any) -> TrainHooks:
    """``obj`` as :class:`TrainHooks`: itself when it is one, no-op hooks for None, else an
    adapter that calls the hooks ``obj`` defines (an object that only has some of them, as
    before :class:`TrainHooks` was a base class) and does nothing for the others."""
    if isinstance(obj, TrainHooks):
        return obj
    if obj is None:
        return TrainHooks()
    return _Adapted(obj)
