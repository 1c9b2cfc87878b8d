"""Callbacks that run a :class:`~breakeven.Tracker` inside other libraries' training loops.

- :class:`BreakevenCallback` (``breakeven.integrations.lightning``): a Lightning callback;
  needs ``pip install 'breakeven[lightning]'``.
- :class:`BreakevenTrainerCallback` (``breakeven.integrations.huggingface``): a Hugging Face
  ``TrainerCallback``; needs ``pip install 'breakeven[huggingface]'``.

Importing ``breakeven`` or this package imports neither library: each callback's module is
imported when the callback is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .huggingface import BreakevenTrainerCallback, HFModel
    from .lightning import BreakevenCallback

__all__ = ["BreakevenCallback", "BreakevenTrainerCallback", "HFModel"]

_LAZY = {
    "BreakevenCallback": "lightning",
    "BreakevenTrainerCallback": "huggingface",
    "HFModel": "huggingface",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
