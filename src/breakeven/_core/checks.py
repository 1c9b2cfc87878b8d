"""Argument checks shared by every room; free of torch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple


def check_int(
    value: Any,
    what: str,
    minimum: int = 1,
    maximum: int | None = None,
    *,
    maximum_name: str = "",
    optional: bool = False,
) -> Any:
    """``value`` as an ``int`` if it is an integer (``int`` or a numpy integer, never a
    ``bool``) in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None), or
    ``None`` when ``optional``.

    Otherwise raises ``ValueError("<what> must be an integer >= <minimum>, got <value>")``,
    or ``"... an integer in [<minimum>, <maximum_name>=<maximum>]"`` with an upper bound
    (``" or None"`` after it when ``optional``); a check for ``>= 1`` alone adds
    ``(not a positive integer)`` at the end.
    """
    if optional and value is None:
        return value
    ok = is_int(value) and value >= minimum
    if ok and (maximum is None or value <= maximum):
        return int(value)
    if maximum is None:
        wanted = f"an integer >= {minimum}"
    else:
        bound = f"{maximum_name}={maximum}" if maximum_name else str(maximum)
        wanted = f"an integer in [{minimum}, {bound}]"
    if optional:
        wanted += " or None"
    positive = " (not a positive integer)" if minimum == 1 and maximum is None else ""
    raise ValueError(f"{what} must be {wanted}, got {value!r}{positive}")


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer: a Python ``int`` or a numpy integer, never a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number: a Python ``int`` or ``float`` or a numpy
    integer or float of any width (``numbers.Real``), never a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


#: Seeds are integers in [0, SEED_MAX]: what every generator they reach takes (int64).
SEED_MAX = 2**63 - 1


class Rule(NamedTuple):
    """A check of one number shared by :class:`~breakeven.TrainConfig`'s table and the
    Tracker: whether a value is valid (``ok``) and what it must be (``wanted``)."""

    ok: Callable[[Any], bool]
    wanted: str

    def check(self, value: Any, what: str) -> Any:
        """``value`` as a Python number (:func:`plain_number`) if valid, else
        ``ValueError("<what>=<value> is invalid: must be <wanted>")``, the message of a
        TrainConfig's check."""
        if not self.ok(value):
            raise ValueError(f"{what}={value!r} is invalid: must be {self.wanted}")
        return plain_number(value)


def plain_number(value: Any) -> Any:
    """A checked number as Python holds it: an integer (numpy's too) as ``int``, any other
    real number (numpy floats, ``Fraction``) as ``float``, what JSON, torch's optimizers and
    the records take; anything else (a bool, a string) as it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


POSITIVE = Rule(lambda v: is_real(v) and v > 0, "a finite number > 0")
FRACTION = Rule(lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)")
