"""Packages whose public names are imported from their modules on first use (PEP 562).

``breakeven`` and ``breakeven.experiments`` re-export a flat API whose modules need torch;
importing the package itself stays cheap, so that code reading records only (the analysis,
``breakeven show``) never pays for torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_exports"]


class _LazyPackage(types.ModuleType):
    """A package module whose names in ``_lazy_exports`` resolve on first access.

    A submodule named like an exported name (``breakeven.train`` holds the function
    ``train``) does not replace the name when the submodule is imported: the package
    attribute stays the exported object, as with an eager ``from .train import train``."""

    def __getattr__(self, name: str) -> Any:  # only called when the attribute is missing
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        value = getattr(importlib.import_module(module, self.__name__), attr or name)
        super().__setattr__(name, value)  # cached: the next access is a plain lookup
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        submodule = (
            isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
        )
        if submodule and name in self.__dict__.get("_lazy_exports", {}):
            return  # the import system binding breakeven.<name>; the exported name wins
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__.get("_lazy_exports", {})})


def lazy_exports(package: str, exports: Mapping[str, str]) -> None:
    """Make the package ``package`` (being imported; in ``sys.modules``) resolve each name of
    ``exports`` on first access and list it in ``dir()``.

    ``exports`` maps a public name to the module that defines it, relative to the package
    (``".train"``), optionally with the attribute's name there (``".records:export"``).
    The object returned is the module's own (``package.X is module.X``); an unknown name
    raises :class:`AttributeError` as for any module."""
    module = sys.modules[package]
    module._lazy_exports = dict(exports)
    module.__class__ = _LazyPackage
