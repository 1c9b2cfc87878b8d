"""The loss as a function of the parameters: checks of the loss function and of its value,
the functional loss on one chunk (``torch.func.functional_call``, the module's own tensors
untouched), and its gradient with respect to leaf copies of the parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]


def check_loss_fn(loss_fn: object) -> None:
    """Refuse a loss that is not callable, or a torch loss module whose ``reduction`` is not
    ``"mean"``: every measure is defined for the *mean* loss over the examples given, and a
    sum-reduced loss would make H N times and K M^2 times too large without any error.
    A plain callable must return the mean over the examples itself (not checked)."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    reduction = getattr(loss_fn, "reduction", "mean")
    if isinstance(loss_fn, nn.Module) and reduction != "mean":
        raise ValueError(
            f"{type(loss_fn).__name__}(reduction={reduction!r}) is refused: breakeven measures "
            "the mean loss over the examples, a scalar (H and K would be off by N and M^2); "
            "use reduction='mean'"
        )


def functional_loss(
    model: nn.Module, loss_fn: LossFn
) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """``f(params, x, y)``: the loss of the model at ``params`` on one chunk, checked scalar.
    Call it inside :func:`measuring`, which keeps every forward pass free of writes."""
    check_loss_fn(loss_fn)

    def f(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, params, (x,))
        loss = loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar (mean-reduced) loss, got {shape}; "
                "use reduction='mean'"
            )
        return loss

    return f


def check_finite(value: Tensor | float, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``value`` is inf or NaN."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is not finite ({v}): the model or the data produce inf/nan")


def loss_and_gradient(
    f: Callable[[dict[str, Tensor], Tensor, Tensor], Tensor],
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    scale: float | None = None,
    create_graph: bool = False,
) -> tuple[list[Tensor], Tensor, tuple[Tensor, ...]]:
    """The gradient of ``f(params, x, y)`` (times ``scale`` when given) with respect to the
    parameters, taken at fresh leaf copies of them (``params`` and the module are never
    written): returns ``(leaves, loss, grads)`` in the order of ``params``, the loss
    unscaled. A parameter the loss does not use gets a zero gradient (that does not require
    grad); ``create_graph=True`` keeps the graph of the gradient, for a second derivative
    through it."""
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    loss = f(dict(zip(params, leaves)), x, y)
    grads = torch.autograd.grad(
        loss if scale is None else loss * scale,
        leaves,
        create_graph=create_graph,
        allow_unused=True,
        materialize_grads=True,
    )
    return leaves, loss, grads
