"""Hutchinson's stochastic trace estimator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._core.checks import check_int
from ..operators.linear import LinearOperator, as_matvec
from ._progress import product_bar


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of Tr(A) with Rademacher probes z: mean of z^T A z.

    Attributes:
        estimate: the sample mean of z^T A z over the probes.
        stderr: its standard error, sample standard deviation (1/(n-1)) over sqrt(n); ``nan``
            for a single probe.
        num_matvecs: products used (one per probe).
        samples: (n,) float64, the individual z^T A z.
        seconds: wall time (set by the measures; ``nan`` from the bare estimator).
    """

    estimate: float
    stderr: float
    num_matvecs: int
    samples: Tensor
    seconds: float = math.nan


def hutchinson(
    A: Tensor | LinearOperator,
    num_samples: int = 100,
    *,
    seed: int = 0,
    block_size: int = 1,
    progress: bool = False,
) -> TraceResult:
    """Tr(A) ~ (1/n) sum_s z_s^T A z_s with independent Rademacher z_s (entries +-1).

    ``seed`` seeds a private generator: the global RNG is untouched. The probes are applied
    ``block_size`` at a time (``A @ Z`` with Z of shape (D, block_size): one vmapped backward
    for a :class:`~breakeven.HessianOperator`); the probes and the estimate do not depend on
    it. Default 1: on CPU one vmapped backward for several probes was slower than one
    backward each (measured: 0.9x with 4 probes on the MLP and on SimpleCNN).

    Cost: ``num_samples`` products with A (100 by default). ``progress=True`` shows a bar
    over them on stderr.
    """
    matvec, dim, dtype = as_matvec(A)
    check_int(num_samples, "num_samples")
    check_int(block_size, "block_size")
    generator = torch.Generator().manual_seed(seed)
    samples = torch.empty(num_samples, dtype=torch.float64)
    bar = product_bar(progress, num_samples, "trace")
    try:
        for start in range(0, num_samples, block_size):
            n = min(block_size, num_samples - start)
            Z = torch.stack(
                [
                    torch.randint(0, 2, (dim,), generator=generator, dtype=torch.float64)
                    for _ in range(n)
                ],
                dim=1,
            )
            Z = (Z * 2 - 1).to(dtype=dtype, device=A.device)
            AZ = A @ Z if n > 1 else matvec(Z[:, 0])[:, None]
            samples[start : start + n] = (Z * AZ).sum(dim=0).to(device="cpu", dtype=torch.float64)
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    stderr = float(samples.std() / math.sqrt(num_samples)) if num_samples > 1 else math.nan
    return TraceResult(float(samples.mean()), stderr, num_samples, samples)
