"""What a figure is doing now, for whoever draws it: a long step inside a figure (the
embedding's UMAP fit) calls :func:`status`, and :func:`breakeven.plotting.report` shows the
text beside its progress bar while it listens (:func:`listening`). Nobody listening: nothing
is shown. Scoped by a context variable, so that threads and nested calls do not mix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["listening", "status"]

_LISTENER: ContextVar[Callable[[str], Any] | None] = ContextVar("breakeven_status", default=None)


def status(text: str) -> None:
    """Tell the current listener (if any) what is being done now, e.g.
    ``"embedding: UMAP on 120 points"``."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(text)


@contextmanager
def listening(listener: Callable[[str], Any]) -> Iterator[None]:
    """Within the block, :func:`status` texts go to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
