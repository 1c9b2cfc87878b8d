"""Numbers as text, for tables, progress lines and legends, and the package's version;
free of torch."""

from __future__ import annotations

import math
import sys
from numbers import Integral, Real
from typing import Any


def fmt(v: Any, spec: str = ".4g", *, missing: str = "-", nan: str = "nan") -> str:
    """``v`` as text: ``None`` as ``missing``; a real number that is not an integer (a
    Python float, a numpy float) as ``nan`` when it is NaN, else ``format(v, spec)``;
    anything else (an int, a bool, a string) as ``str(v)``."""
    if v is None:
        return missing
    if isinstance(v, Real) and not isinstance(v, Integral):
        v = float(v)
        return nan if math.isnan(v) else format(v, spec)
    return str(v)


def package_version() -> str:
    """breakeven's version: the installed distribution's (package metadata, what ``pip``
    shows), else, run from a source tree that is not installed, ``breakeven.__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("breakeven")
    except PackageNotFoundError:
        # the package is loaded before any of its modules: read it, importing nothing
        return sys.modules[__name__.split(".")[0]].__version__
