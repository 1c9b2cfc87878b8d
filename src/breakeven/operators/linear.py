"""The linear operator: a symmetric D x D matrix known through its products with vectors."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
