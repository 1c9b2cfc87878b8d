"""Callbacks that run a :class:`~breakeven.Tracker` inside other libraries' training loops.

- :class:`BreakevenCallback` (``breakeven.integrations.lightning``): a Lightning callback;
  needs ``pip install 'breakeven[lightning]'``.
- :class:`BreakevenTrainerCallback` (``breakeven.integrations.huggingface``): a Hugging Face
  ``TrainerCallback``; needs ``pip install 'breakeven[huggingface]'``.

Importing ``breakeven`` or this package imports neither library: each callback's module is
imported when the callback is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from .huggingface import BreakevenTrainerCallback, HFModel
    from .lightning import BreakevenCallback

__all__ = ["BreakevenCallback", "BreakevenTrainerCallback", "HFModel"]

lazy_exports(
    __name__,
    {
        "BreakevenCallback": ".lightning",
        "BreakevenTrainerCallback": ".huggingface",
        "HFModel": ".huggingface",
    },
)
