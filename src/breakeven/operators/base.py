"""Shared plumbing of the curvature operators: data chunks, parameter vectors, model state.

Everything here is private to the package. The operators in this room need three things:

- the data as a fixed list of ``(x, y)`` chunks, materialised once, so that every matrix
  product of one estimate sees exactly the same examples (no reshuffle, no augmentation);
- a way to evaluate the model functionally at given parameters without touching the module's
  own tensors (``torch.func.functional_call`` on detached copies, with train-mode BatchNorm
  kept from updating its running statistics);
- a guard that restores train/eval modes and the global RNG state after a measurement.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Data = Batch | Iterable[Batch]
LossFn = Callable[[Tensor, Tensor], Tensor]
BNMode = Literal["eval", "train"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class LinearOperator:
    """A symmetric D x D matrix known through its product with vectors.

    Subclasses implement :meth:`matvec` on flat vectors of length ``D`` (and may override
    :meth:`matmat`). ``A @ v`` works for a vector ``(D,)`` or a matrix ``(D, n)``.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        """Columns of ``V`` (D, n) multiplied one by one."""
        return torch.stack([self.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.ndim == 1:
            if v.shape[0] != self.shape[1]:
                raise ValueError(f"vector has length {v.shape[0]}, operator is {self.shape}")
            return self.matvec(v)
        if v.ndim == 2:
            if v.shape[0] != self.shape[1]:
                raise ValueError(f"matrix has {v.shape[0]} rows, operator is {self.shape}")
            return self.matmat(v)
        raise ValueError(f"expected a vector or a matrix, got a tensor of shape {tuple(v.shape)}")

    def to_dense(self) -> Tensor:
        """The dense D x D matrix, by multiplying the identity: for tiny cases and tests only."""
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        dense = self.matmat(eye)
        return (dense + dense.T) / 2


def as_matvec(A: Tensor | LinearOperator) -> tuple[Callable[[Tensor], Tensor], int, torch.dtype]:
    """A matrix-vector product, the dimension and the dtype, for a dense tensor or an operator."""
    if isinstance(A, Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
        return (lambda v: A @ v), A.shape[0], A.dtype
    if isinstance(A, LinearOperator):
        return A.matvec, A.shape[0], A.dtype
    raise TypeError(f"expected a torch.Tensor or a LinearOperator, got {type(A).__name__}")


# ----------------------------------------------------------------------------- data


def as_chunks(data: Data, chunk_size: int | None = None) -> list[Batch]:
    """Materialise ``data`` once as a list of ``(x, y)`` chunks.

    ``data`` is a tuple ``(x, y)`` of tensors (split into chunks of ``chunk_size`` examples,
    one chunk when ``None``) or an iterable of ``(x, y)`` batches such as a DataLoader (its
    batches are read once and kept; a batch larger than ``chunk_size`` is split).
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        batches: Iterable = [data]
    elif isinstance(data, Tensor):
        raise TypeError("data must be a tuple (x, y) of tensors or an iterable of (x, y) batches")
    else:
        try:
            batches = list(data)
        except TypeError:
            raise TypeError(
                "data must be a tuple (x, y) of tensors or an iterable of (x, y) batches, "
                f"got {type(data).__name__}"
            ) from None
    chunks: list[Batch] = []
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"batch {i} is not an (x, y) pair")
        x, y = batch
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"batch {i}: x and y must be tensors")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"batch {i}: x has {x.shape[0]} examples but y has {y.shape[0]} targets"
            )
        if x.shape[0] == 0:
            continue
        step = chunk_size or x.shape[0]
        chunks.extend(zip(x.split(step), y.split(step)))
    if not chunks:
        raise ValueError("data is empty: no examples to measure on")
    return chunks


def num_examples(chunks: Sequence[Batch]) -> int:
    return sum(x.shape[0] for x, _ in chunks)


# ----------------------------------------------------------------------------- data parallel


def check_distributed(distributed: bool) -> None:
    """``distributed=True`` needs an initialised default process group (e.g. under torchrun)."""
    if not isinstance(distributed, bool):
        raise ValueError(f"distributed must be True or False, got {distributed!r}")
    if distributed and not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        raise ValueError(
            "distributed=True needs torch.distributed initialised (torchrun and "
            "torch.distributed.init_process_group); each rank passes its own part of the data"
        )


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over the ranks of the default process group (every rank gets it).

    ``torch.autograd.grad`` bypasses DDP's gradient hooks, so every product that sums over
    the data is reduced explicitly here."""
    t = t.contiguous()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def all_gather_rows(t: Tensor) -> Tensor:
    """The rows of ``t`` of every rank, concatenated in rank order (the same number of rows
    on every rank)."""
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# ----------------------------------------------------------------------------- parameters


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that require gradients, by name, detached (the space of theta)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameters that require gradients")
    return params


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = vec[offset : offset + n].view_as(t)
        offset += n
    return out


def as_flat(direction: Tensor | Sequence[Tensor], params: dict[str, Tensor]) -> Tensor:
    """A direction given flat (length D) or per parameter, as one flat tensor."""
    dim = sum(p.numel() for p in params.values())
    if isinstance(direction, Tensor):
        flat = direction.reshape(-1)
    else:
        parts = list(direction)
        if len(parts) != len(params):
            raise ValueError(
                f"direction has {len(parts)} tensors but the model has {len(params)} "
                "trainable parameter tensors"
            )
        for part, (name, p) in zip(parts, params.items()):
            if part.shape != p.shape:
                raise ValueError(
                    f"direction for {name} has shape {tuple(part.shape)}, expected {tuple(p.shape)}"
                )
        flat = flatten(parts)
    if flat.numel() != dim:
        raise ValueError(f"direction has {flat.numel()} entries, the model has {dim} parameters")
    ref = next(iter(params.values()))
    return flat.to(dtype=ref.dtype, device=ref.device)


# ----------------------------------------------------------------------------- model state


def check_bn_mode(bn_mode: object) -> None:
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")


def check_forward_mode(model: nn.Module, bn_mode: BNMode) -> None:
    """Refuse forward-mode AD through train-mode BatchNorm: in torch 2.13 it silently returns
    wrong second derivatives there (an asymmetric Hessian), so it is never used."""
    if bn_mode == "train" and any(isinstance(m, _BN_TYPES) for m in model.modules()):
        raise ValueError(
            "forward-mode derivatives through train-mode BatchNorm are wrong in torch.func; "
            "use method='reverse' (or bn_mode='eval')"
        )


@contextlib.contextmanager
def measuring(model: nn.Module, bn_mode: BNMode = "eval") -> Iterator[None]:
    """Put the model in the mode that defines "the" measured loss, and restore everything.

    Every module is put in eval mode (dropout off: each product of one estimate must see the
    same function); with ``bn_mode="train"`` the BatchNorm layers alone are put back in train
    mode, so that they normalise with the statistics of each chunk, and their
    ``track_running_stats`` is switched off meanwhile, so that no forward pass writes the
    running statistics (which also keeps the forward pure for ``torch.func``). On exit the
    train/eval flags, ``track_running_stats`` and the global CPU (and CUDA) RNG state are
    restored. Parameters and ``.grad`` are never written (the operators differentiate
    detached copies).
    """
    check_bn_mode(bn_mode)
    modes = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BN_TYPES)]
    # cuDNN's RNN kernels run backward only in train mode and are not twice differentiable:
    # measure recurrent models with PyTorch's own kernels (same function, CPU unaffected).
    rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = torch.backends.cudnn.flags(enabled=False) if rnn else contextlib.nullcontext()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        model.eval()
        if bn_mode == "train":
            for m, _ in tracking:
                m.train()
                m.track_running_stats = False
        with cudnn:
            yield
    finally:
        for m, flag in modes:
            m.training = flag
        for m, flag in tracking:
            m.track_running_stats = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


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
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is not finite ({v}): the model or the data produce inf/nan")
