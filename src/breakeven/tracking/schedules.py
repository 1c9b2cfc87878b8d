"""When to measure: schedules are predicates of the training step, composed with ``|``.

>>> s = every(100) | log_spaced(1, 1000, 20) | at([5, 7])
>>> s(300), s(301)
(True, False)

``per_epoch(k)`` needs the number of steps per epoch, which the :class:`~breakeven.Tracker`
passes (``s(step, steps_per_epoch)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from .._core.checks import check_int


class Schedule:
    """A set of steps, given as a predicate ``(step, steps_per_epoch) -> bool``."""

    def __init__(self, predicate: Callable[[int, int | None], bool], description: str) -> None:
        self._predicate = predicate
        self.description = description

    def __call__(self, step: int, steps_per_epoch: int | None = None) -> bool:
        return bool(self._predicate(step, steps_per_epoch))

    def __or__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Schedule(
            lambda s, e: self(s, e) or other(s, e), f"{self.description} | {other.description}"
        )

    def __repr__(self) -> str:
        return self.description


def every(n: int, start: int = 0) -> Schedule:
    """Steps ``start, start + n, start + 2n, ...``."""
    check_int(n, "every(n): n")
    return Schedule(lambda s, _: s >= start and (s - start) % n == 0, f"every({n})")


def at(steps: Iterable[int]) -> Schedule:
    """Exactly the given steps."""
    chosen = frozenset(int(s) for s in steps)
    if any(s < 0 for s in chosen):
        raise ValueError("at(steps): steps must be >= 0")
    return Schedule(lambda s, _: s in chosen, f"at({sorted(chosen)})")


def log_spaced(first: int, last: int, count: int) -> Schedule:
    """``count`` steps spaced evenly in log(step) from ``first`` to ``last`` (rounded, unique;
    dense early, where the break-even point lives). ``first`` >= 1."""
    check_int(first, "log_spaced: first")
    check_int(count, "log_spaced: count")
    if last < first:
        raise ValueError(f"log_spaced: last={last} is before first={first}")
    if count == 1:
        steps = [first]
    else:
        ratio = math.log(last / first) / (count - 1)
        steps = [round(first * math.exp(i * ratio)) for i in range(count)]
    chosen = frozenset(steps)
    return Schedule(lambda s, _: s in chosen, f"log_spaced({first}, {last}, {count})")


def per_epoch(k: int = 1) -> Schedule:
    """The first step of every k-th epoch (0, k epochs, 2k epochs, ...)."""
    check_int(k, "per_epoch(k): k")

    def due(step: int, steps_per_epoch: int | None) -> bool:
        if steps_per_epoch is None:
            raise ValueError(
                "per_epoch needs the number of steps per epoch (Tracker(steps_per_epoch=...))"
            )
        return step % (k * steps_per_epoch) == 0

    return Schedule(due, f"per_epoch({k})")


def parse_schedule(spec: Any) -> Schedule:
    """A schedule from a config value: an int n (every n steps), ``"epoch"`` or ``"N epochs"``,
    ``{"at": [...]}``, ``{"log_spaced": [first, last, count]}``, or a list of these (union)."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"not a schedule: {spec!r}")
    if isinstance(spec, int):
        return every(spec)
    if isinstance(spec, str):
        words = spec.split()
        if words in (["epoch"], ["epochs"]):
            return per_epoch(1)
        if len(words) == 2 and words[0].isdigit() and words[1] in ("epoch", "epochs"):
            return per_epoch(int(words[0]))
        raise ValueError(f"schedule {spec!r}: use an int (steps), 'epoch' or 'N epochs'")
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, arg),) = spec.items()
        if kind == "at":
            return at(arg)
        if kind == "log_spaced":
            return log_spaced(*arg)
        if kind in ("every", "schedule"):
            return parse_schedule(arg)
    if isinstance(spec, list) and spec:
        out = parse_schedule(spec[0])
        for part in spec[1:]:
            out = out | parse_schedule(part)
        return out
    raise ValueError(
        f"not a schedule: {spec!r}; use an int, 'epoch', 'N epochs', {{at = [...]}}, "
        "{log_spaced = [first, last, count]} or a list of these"
    )
