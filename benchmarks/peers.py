"""Adapters that run each peer tool the way its documentation says, for the speed benchmark.

Runs in the peers venv (``bash benchmarks/setup_peers.sh``), never in the project's venv.

Every adapter takes ``(model, loss_fn, x, y)`` plus options and returns a
:class:`PeerResult` ``(values, seconds, hvps)``, which unpacks as a 3-tuple:

- ``values``: numpy array, in the order the peer returns them (see each adapter);
- ``seconds``: wall time of the peer's own work (operator set-up included, the deep copy
  of the model excluded), from ``time.perf_counter``;
- ``hvps``: Hessian-vector products the peer performed, counted by wrapping its product
  function, or ``None`` where it cannot be counted.

Each adapter deep-copies the model (and a module loss) first: PyHessian puts the model in
eval mode and leaves ``.grad`` holding a graph, BackPACK's ``extend`` adds hooks in place.
Each also runs under ``torch.random.fork_rng`` with ``torch.manual_seed(seed)`` so that the
caller's global RNG stream is untouched and the peer's random start vector is reproducible.

Peers pinned by ``setup_peers.sh``: PyHessian 0.1, hessian-eigenthings 1.0.0a5,
curvlinops-for-pytorch 3.0.1, backpack-for-pytorch 1.7.1 (torch 2.13.0 CPU).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "PeerResult",
    "backpack_per_example_grads",
    "curvlinops_eigsh_top",
    "eigenthings_top",
    "eigsh_reference",
    "pyhessian_top",
]


class PeerResult(NamedTuple):
    """What one peer run gave: values, wall seconds, HVP count (None if unknown)."""

    values: np.ndarray
    seconds: float
    hvps: int | None


def _copies(model: nn.Module, loss_fn: Callable) -> tuple[nn.Module, Callable]:
    """Deep copies of the model and (if it is a module) of the loss, grads cleared."""
    model_c = copy.deepcopy(model)
    for p in model_c.parameters():
        p.grad = None
    loss_c = copy.deepcopy(loss_fn) if isinstance(loss_fn, nn.Module) else loss_fn
    return model_c, loss_c


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fork the CPU RNG, seed it, restore the caller's stream afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------
# PyHessian 0.1
# --------------------------------------------------------------------------------------


def pyhessian_top(
    model: nn.Module,
    loss_fn: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    top_n: int,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
) -> PeerResult:
    """Top ``top_n`` Hessian eigenvalues by PyHessian's deflated power iteration.

    Runs ``pyhessian.hessian(model, criterion, data=(x, y), cuda=False)
    .eigenvalues(top_n=top_n, tol=tol, maxIter=max_iter)``, the README's single-batch use.

    Quirks (PyHessian 0.1):

    - power iteration, so each value is the largest *magnitude* eigenvalue left after
      deflating the previous ones, not the largest algebraic: a negative eigenvalue can
      come out. Values are in the order found (roughly decreasing |lambda|, not sorted).
    - ``tol`` is the relative change of the Rayleigh quotient between two consecutive
      iterations (not a residual); ``max_iter`` is per eigenvalue.
    - the constructor calls ``model.eval()`` and runs ``loss.backward(create_graph=True)``
      once: the Hessian is of the eval-mode model, the graph of that backward is kept in
      ``.grad`` and reused by every HVP (``retain_graph=True``), so an HVP costs one
      double-backward and no forward. The model copy is left with graph-holding grads.
    - start vectors are ``torch.randn(p.size())`` in the default dtype: the model must be
      float32 (a float64 model fails on a dtype mismatch in ``autograd.grad``).

    ``hvps`` counts calls of ``pyhessian.utils.hessian_vector_product`` (patched where
    ``pyhessian.hessian`` imported it); the initial gradient is not counted.
    """
    import pyhessian  # noqa: F401  (loads the submodule)

    # ``pyhessian/__init__.py`` rebinds ``pyhessian.hessian`` to the class, so fetch the
    # module itself to patch the name its ``eigenvalues`` method looks up.
    ph_module = sys.modules["pyhessian.hessian"]
    model_c, loss_c = _copies(model, loss_fn)
    original = ph_module.hessian_vector_product
    count = 0

    def counting(gradsH, params, v):
        nonlocal count
        count += 1
        return original(gradsH, params, v)

    ph_module.hessian_vector_product = counting
    try:
        with _seeded(seed):
            t0 = time.perf_counter()
            comp = ph_module.hessian(model_c, loss_c, data=(x, y), cuda=False)
            values, _ = comp.eigenvalues(top_n=top_n, tol=tol, maxIter=max_iter)
            seconds = time.perf_counter() - t0
    finally:
        ph_module.hessian_vector_product = original
        # Break the param <-> grad-graph reference cycle its backward(create_graph=True)
        # left (torch warns about the leak), so the copy is freed without a gc pass.
        for p in model_c.parameters():
            p.grad = None
    return PeerResult(np.asarray(values, dtype=np.float64), seconds, count)


# --------------------------------------------------------------------------------------
# hessian-eigenthings 1.0.0a5
# --------------------------------------------------------------------------------------


def eigenthings_top(
    model: nn.Module,
    loss_fn: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    *,
    batch_size: int | None = None,
    max_iter: int | None = None,
    tol: float = 1e-4,
    which: str = "LM",
    seed: int = 0,
) -> PeerResult:
    """Top ``k`` Hessian eigenvalues by hessian-eigenthings' Lanczos.

    hessian-eigenthings 1.0 removed the 0.x ``compute_hessian_eigenthings(model,
    dataloader, loss, num_eigenthings, mode='lanczos', use_gpu=..., full_dataset=...)``;
    1.0.0a5 (the version pinned) has the README's operator API instead, used here:
    ``H = HessianOperator(model, dataloader, supervised_loss(loss_fn), full_dataset=True)``
    and ``lanczos(H, k=k, max_iter=..., tol=..., which=..., seed=...)``. There is no
    ``use_gpu``: the operator runs on the parameters' device (CPU here).

    Quirks (1.0.0a5):

    - ``which`` defaults to ``'LM'`` (largest *magnitude*), kept here as the documented
      default; pass ``which='LA'`` for the largest algebraic eigenvalues. Values come
      sorted by the ``which`` key (``'LM'``: decreasing |lambda|).
    - Lanczos runs a fixed ``max_iter`` steps (default ``min(2k, D-1)``) with no restart
      and no early stop except breakdown; ``tol`` only sets the ``converged`` flags from
      the Ritz residuals, it does not make it iterate longer. With the default
      ``max_iter`` the top values are approximate; full re-orthogonalisation is on when
      ``max_iter <= 50``.
    - ``full_dataset=True`` averages the *batch means*: the mean loss over all examples
      only when every batch has the same size. Default ``batch_size=None``: one batch.
    - the model's train/eval mode is left as given (train-mode dropout makes HVPs random);
      each HVP is a fresh forward plus a double backward (no graph reuse).

    ``hvps`` counts ``HessianOperator.matvec`` calls.
    """
    from hessian_eigenthings import HessianOperator, lanczos, supervised_loss
    from torch.utils.data import DataLoader, TensorDataset

    model_c, loss_c = _copies(model, loss_fn)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=len(x) if batch_size is None else batch_size
    )
    with _seeded(seed):
        t0 = time.perf_counter()
        op = HessianOperator(model_c, loader, supervised_loss(loss_c), full_dataset=True)
        original = op.matvec
        count = 0

        def counting(v: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += 1
            return original(v)

        op.matvec = counting  # instance attribute shadows the method; lanczos calls it
        res = lanczos(op, k=k, max_iter=max_iter, tol=tol, which=which, seed=seed)
        seconds = time.perf_counter() - t0
    values = res.eigenvalues.detach().double().cpu().numpy()
    return PeerResult(values, seconds, count)


# --------------------------------------------------------------------------------------
# curvlinops 3.0.1 + scipy eigsh
# --------------------------------------------------------------------------------------


def curvlinops_eigsh_top(
    model: nn.Module,
    loss_fn: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    tol: float = 1e-3,
    *,
    batch_size: int | None = None,
    check_deterministic: bool = True,
    seed: int = 0,
) -> PeerResult:
    """Top ``k`` (largest algebraic) Hessian eigenvalues: curvlinops operator + ``eigsh``.

    ``op = HessianLinearOperator(model, loss_fn, params, data)`` with ``data`` a list of
    ``(x, y)`` batches (one batch by default), then
    ``scipy.sparse.linalg.eigsh(op.to_scipy(), k=k, which='LA', tol=tol, v0=...)``.
    In curvlinops 3.x the operator is a PyTorch linear operator: ``to_scipy()`` wraps it
    for scipy (2.x operators were scipy ``LinearOperator`` themselves).

    Quirks (3.0.1):

    - the Hessian is of ``loss_fn`` as reduced by the loss (mean: each batch is weighted
      by its size over N, so batches of unequal size still give the exact mean).
    - ``check_deterministic=True`` (its default, kept) runs at construction two passes of
      loss and gradient over the data and two matvecs; they are in ``seconds`` and in
      ``hvps``. ``num_data`` is inferred by one more pass over the data (cheap here).
    - the HVP is forward-over-reverse (``torch.func.jvp`` of ``jacrev``, vmapped over the
      columns): no graph kept between products, and it fails where forward-mode AD is not
      implemented (LSTM; train-mode BatchNorm). The model's mode is left as given.
    - ``eigsh`` returns eigenvalues in *ascending* order; returned here as given.
    - products run in the model's dtype; scipy's vectors are float64 and cast.

    ``hvps`` counts columns multiplied by ``HessianLinearOperator._matmat`` (patched on the
    class for the duration of the call). ``v0`` comes from ``np.random.default_rng(seed)``.
    """
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import eigsh

    model_c, loss_c = _copies(model, loss_fn)
    params = [p for p in model_c.parameters() if p.requires_grad]
    bs = len(x) if batch_size is None else batch_size
    data = list(zip(x.split(bs), y.split(bs), strict=True))
    dim = sum(p.numel() for p in params)
    v0 = np.random.default_rng(seed).standard_normal(dim)

    original = HessianLinearOperator._matmat
    count = 0

    def counting(self, M):
        nonlocal count
        count += int(M[0].shape[-1])
        return original(self, M)

    HessianLinearOperator._matmat = counting
    try:
        with _seeded(seed):
            t0 = time.perf_counter()
            op = HessianLinearOperator(
                model_c, loss_c, params, data, check_deterministic=check_deterministic
            )
            values = eigsh(
                op.to_scipy(), k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False
            )
            seconds = time.perf_counter() - t0
    finally:
        HessianLinearOperator._matmat = original
    return PeerResult(np.asarray(values, dtype=np.float64), seconds, count)


# --------------------------------------------------------------------------------------
# BackPACK 1.7.1
# --------------------------------------------------------------------------------------


def backpack_per_example_grads(
    model: nn.Module,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> PeerResult:
    """Per-example gradients with BackPACK's ``extend`` + ``BatchGrad``.

    ``values`` is an (N, D) float32 numpy array whose row i is the gradient of the
    per-example loss l_i = loss(f(x_i), y_i), parameters flattened in
    ``model.parameters()`` order. BackPACK's ``grad_batch`` for a mean-reduced loss is
    (1/N) grad l_i; it is multiplied back by N here (by 1 for ``reduction='sum'``).
    ``hvps`` is None (no HVP involved).

    Limits (BackPACK 1.7.1): ``loss_fn`` must be a module BackPACK extends
    (``CrossEntropyLoss``, ``MSELoss``, ``BCEWithLogitsLoss``) with mean or sum
    reduction; the model must be built from supported modules (``nn.Sequential`` of
    Linear, Conv1/2/3d, ConvTranspose1/2/3d, activations, pooling, Flatten, Dropout,
    eval-mode BatchNorm, Embedding, RNN/LSTM with ``batch_first`` handling as documented).
    Arbitrary ``forward`` code (functional ops between modules, residual additions
    outside ``backpack.custom_module``) is not traced. Train-mode BatchNorm couples the
    examples, so its per-example gradients are not defined (BackPACK only warns).
    """
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    reduction = getattr(loss_fn, "reduction", None)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"loss_fn must be a module with mean/sum reduction, got {loss_fn!r}")
    model_c, loss_c = _copies(model, loss_fn)
    n = x.shape[0]
    t0 = time.perf_counter()
    model_c = extend(model_c)
    loss_c = extend(loss_c)
    loss = loss_c(model_c(x), y)
    with backpack(BatchGrad()):
        loss.backward()
    scale = float(n) if reduction == "mean" else 1.0
    rows = [p.grad_batch.reshape(n, -1) for p in model_c.parameters() if p.requires_grad]
    grads = torch.cat(rows, dim=1).mul_(scale)
    seconds = time.perf_counter() - t0
    return PeerResult(grads.detach().to(torch.float32).cpu().numpy(), seconds, None)


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def eigsh_reference(
    matvec: Callable[[np.ndarray], np.ndarray],
    D: int,  # the parameter count, as in the design notes
    k: int,
    tol: float = 1e-8,
    seed: int = 0,
) -> PeerResult:
    """Top ``k`` largest algebraic eigenvalues of a symmetric operator given by ``matvec``.

    ``scipy.sparse.linalg.eigsh(LinearOperator((D, D), matvec, dtype=float64), k=k,
    which='LA', tol=tol, v0=...)`` (implicitly restarted Lanczos, ARPACK). ``matvec``
    takes and returns float64 numpy vectors of length D. Values are returned in
    *decreasing* order (eigsh gives ascending; reversed here). ``hvps`` counts ``matvec``
    calls.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    count = 0

    def counting(v: np.ndarray) -> np.ndarray:
        nonlocal count
        count += 1
        return np.asarray(matvec(np.asarray(v, dtype=np.float64).ravel()), dtype=np.float64)

    op = LinearOperator((D, D), matvec=counting, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(D)
    t0 = time.perf_counter()
    values = eigsh(op, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    seconds = time.perf_counter() - t0
    return PeerResult(np.sort(np.asarray(values, dtype=np.float64))[::-1], seconds, count)
