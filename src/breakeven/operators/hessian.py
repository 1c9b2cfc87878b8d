"""The Hessian of the mean loss over a fixed data set, as a linear operator."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from .._core.data import Data, as_chunks, num_examples
from .._core.distributed import all_reduce_sum, check_distributed
from .._core.functional import (
    LossFn,
    check_finite,
    check_loss_fn,
    functional_loss,
    loss_and_gradient,
)
from .._core.params import flatten, trainable, unflatten
from .._core.state import BNMode, check_bn_mode, check_forward_mode, measuring
from .linear import LinearOperator

HVPMethod = Literal["reverse", "forward"]


class HessianOperator(LinearOperator):
    """H = the Hessian of L(theta) = (1/N) sum_i l_i(theta) over the N examples of ``data``.

    ``loss_fn(output, target)`` is mean-reduced; the data are split into chunks and the loss
    is assembled as ``sum_c (n_c / N) * loss_fn(model(x_c), y_c)``, so for a model whose
    examples do not interact (no train-mode BatchNorm) the operator does not depend on the
    chunk size. ``theta`` is the model's trainable parameters *at construction* (copied), in
    the order of ``model.named_parameters()``; D = their total number of entries.

    Args:
        model: any ``nn.Module``; it is never modified (parameters, ``.grad``, buffers,
            train/eval flags, global RNG all restored or untouched).
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the examples given.
        data: ``(x, y)`` tensors, or an iterable of ``(x, y)`` batches (read once and kept).
        chunk_size: examples per forward pass (bounds memory); ``None`` keeps ``data`` whole
            (or as the given batches).
        bn_mode: ``"eval"`` (default): BatchNorm uses its running statistics, every example is
            independent. ``"train"``: BatchNorm normalises with the statistics of each chunk,
            so the operator is defined by the chunking (record ``chunk_size`` with it).
            Dropout is always off.
        method: ``"reverse"`` (default): double backward; when the data form a single chunk
            the first-order graph is built once and reused by every product (as PyHessian
            does), otherwise it is rebuilt chunk by chunk to bound memory. ``"forward"``:
            the gradient of the forward-mode directional derivative (``torch.func.grad`` of
            ``torch.func.jvp``); not available with train-mode BatchNorm.
        distributed: each rank of the default process group (e.g. under ``torchrun``) passes
            its own part of the data; N counts the examples of every rank, and every product
            and the gradient are summed over the ranks with an explicit all-reduce (autograd
            bypasses DDP's hooks), so every rank gets the Hessian of all the data. Every rank
            must call every product.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        *,
        chunk_size: int | None = None,
        bn_mode: BNMode = "eval",
        method: HVPMethod = "reverse",
        distributed: bool = False,
    ) -> None:
        check_distributed(distributed)
        if method not in ("reverse", "forward"):
            raise ValueError(f"method must be 'reverse' or 'forward', got {method!r}")
        check_bn_mode(bn_mode)
        check_loss_fn(loss_fn)
        if method == "forward":
            check_forward_mode(model, bn_mode)
        self.model = model
        self.loss_fn = loss_fn
        self.chunks = as_chunks(data, chunk_size)
        self.chunk_size = chunk_size
        self.bn_mode: BNMode = bn_mode
        self.method: HVPMethod = method
        self.distributed = distributed
        self.num_examples = num_examples(self.chunks)
        self.params = {n: p.clone() for n, p in trainable(model).items()}
        dim = sum(p.numel() for p in self.params.values())
        ref = next(iter(self.params.values()))
        if distributed:  # N: the examples of every rank
            count = torch.tensor([float(self.num_examples)], dtype=torch.float64, device=ref.device)
            self.num_examples = int(all_reduce_sum(count).item())
        self.shape = (dim, dim)
        self.dtype = ref.dtype
        self.device = ref.device
        self.num_matvecs = 0
        self._checked = False
        self._cached: tuple[list[Tensor], tuple[Tensor, ...]] | None = None

    # -- helpers ---------------------------------------------------------------------------

    def _weight(self, x: Tensor) -> float:
        return x.shape[0] / self.num_examples

    def _first_order(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], tuple]:
        """Leaf parameters and the gradient of the weighted chunk loss, with its graph."""
        f = functional_loss(self.model, self.loss_fn)
        leaves, loss, grads = loss_and_gradient(
            f, self.params, x, y, scale=self._weight(x), create_graph=True
        )
        if not self._checked:
            check_finite(loss.detach(), "the loss")
        return leaves, grads

    @staticmethod
    def _hvp_from_graph(
        leaves, grads, v_parts: list[Tensor], retain: bool, batched: bool = False
    ) -> list[Tensor]:
        """H v through the first-order graph; ``batched``: each ``v_parts[i]`` has a leading
        dimension of n vectors, and so has each result (one vmapped backward)."""
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        lead = v_parts[0].shape[:1] if batched else ()
        out = [p.new_zeros(lead + p.shape) for p in leaves]
        if used:
            hv = torch.autograd.grad(
                [grads[i] for i in used],
                leaves,
                grad_outputs=[v_parts[i] for i in used],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=batched,
            )
            out = [o if h is None else h for o, h in zip(out, hv)]
        return out

    # -- the product -----------------------------------------------------------------------

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector ``v`` of length D (returned in the operator's dtype)."""
        v = v.to(dtype=self.dtype, device=self.device)
        v_parts = list(unflatten(v, self.params).values())
        with measuring(self.model, self.bn_mode):
            if self.method == "forward":
                total = self._forward_hvp(v_parts)
            elif len(self.chunks) == 1:
                if self._cached is None:
                    x, y = self.chunks[0]
                    self._cached = self._first_order(x, y)
                total = self._hvp_from_graph(*self._cached, v_parts, retain=True)
            else:
                total = None
                for x, y in self.chunks:
                    leaves, grads = self._first_order(x, y)
                    hv = self._hvp_from_graph(leaves, grads, v_parts, retain=False)
                    total = hv if total is None else [a + b for a, b in zip(total, hv)]
        self._checked = True
        self.num_matvecs += 1
        return self._reduce(flatten(total).detach())

    def _reduce(self, t: Tensor) -> Tensor:
        """The sum over the ranks' data when ``distributed`` (each rank holds its part)."""
        return all_reduce_sum(t) if self.distributed else t

    def matmat(self, V: Tensor) -> Tensor:
        """H V for the n columns of a (D, n) matrix. In reverse mode one vmapped backward per
        chunk applies H to all columns at once (``is_grads_batched``), falling back to one
        product per column where a layer has no batching rule; ``num_matvecs`` counts n."""
        if self.method == "forward" or V.shape[1] == 1:
            return super().matmat(V)
        V = V.to(dtype=self.dtype, device=self.device)
        n = V.shape[1]
        parts, start = [], 0
        for p in self.params.values():
            parts.append(V[start : start + p.numel()].T.reshape(n, *p.shape))
            start += p.numel()
        try:
            with measuring(self.model, self.bn_mode), warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # no per-column fallback inside
                total = None
                for x, y in self.chunks:
                    if len(self.chunks) == 1:
                        if self._cached is None:
                            self._cached = self._first_order(x, y)
                        leaves, grads = self._cached
                    else:
                        leaves, grads = self._first_order(x, y)
                    hv = self._hvp_from_graph(
                        leaves, grads, parts, retain=len(self.chunks) == 1, batched=True
                    )
                    total = hv if total is None else [a + b for a, b in zip(total, hv)]
        except (RuntimeError, UserWarning):
            return super().matmat(V)
        self._checked = True
        self.num_matvecs += n
        return self._reduce(torch.cat([t.reshape(n, -1) for t in total], dim=1).T.detach())

    def _forward_hvp(self, v_parts: list[Tensor]) -> list[Tensor]:
        tangents = dict(zip(self.params, v_parts))
        total = None
        for x, y in self.chunks:
            f = functional_loss(self.model, self.loss_fn)
            if not self._checked:
                with torch.no_grad():
                    check_finite(f(self.params, x, y), "the loss")

            def slope(p, x=x, y=y, f=f):  # directional derivative of the chunk loss along v
                return torch.func.jvp(lambda q: f(q, x, y), (p,), (tangents,))[1] * self._weight(x)

            try:  # reverse over forward: forward over reverse hits ZeroTensor bugs (linear+MSE)
                hv = torch.func.grad(slope)(self.params)
            except (RuntimeError, NotImplementedError) as err:
                raise RuntimeError(
                    f"forward-mode HVP failed for this model ({err}); use method='reverse'"
                ) from err
            parts = list(hv.values())
            total = parts if total is None else [a + b for a, b in zip(total, parts)]
        return total

    def gradient(self) -> Tensor:
        """The flat gradient of the loss at theta (free when the first-order graph is cached)."""
        with measuring(self.model, self.bn_mode):
            if self.method == "reverse" and len(self.chunks) == 1:
                if self._cached is None:
                    self._cached = self._first_order(*self.chunks[0])
                parts = [
                    torch.zeros_like(p) if g is None else g.detach()
                    for p, g in zip(self.params.values(), self._cached[1])
                ]
            else:
                f = functional_loss(self.model, self.loss_fn)
                parts = None
                for x, y in self.chunks:
                    g = loss_and_gradient(f, self.params, x, y, scale=self._weight(x))[2]
                    parts = list(g) if parts is None else [a + b for a, b in zip(parts, g)]
        return self._reduce(flatten(parts))

    def release(self) -> None:
        """Drop the cached first-order graph (it is rebuilt on the next product)."""
        self._cached = None
