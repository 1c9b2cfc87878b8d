"""The gradient covariance K, known through L gradients and their L x L Gram matrix."""

from __future__ import annotations

import tempfile
import warnings
import weakref
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .._core.data import Batch, as_chunks
from .._core.distributed import all_gather_rows, check_distributed
from .._core.functional import (
    LossFn,
    check_finite,
    check_loss_fn,
    functional_loss,
    loss_and_gradient,
)
from .._core.params import trainable
from .._core.state import BNMode, measuring
from .linear import LinearOperator

#: Columns (parameters) processed at once when the Gram is accumulated in float64.
_GRAM_COLUMNS = 1 << 15  # 25 x 32768 float64 = 6.6 MB: cache-sized (3x faster than 1 << 20)


class RankOneRows:
    """The per-example gradients of a linear layer's weight, kept as factors: row i is
    vec(delta_i a_i^T) (row-major, the layout of ``weight``), a_i the layer's input and
    delta_i the gradient of example i's loss with respect to the layer's output.

    Never materialised for K: the Gram of the rows is (A A^T) * (Delta Delta^T) (elementwise),
    N^2 (d_in + d_out) products instead of N^2 d_in d_out, and products with a weight-shaped
    V are row sums of (Delta V) * A. All in float64 (the factors are float32, so each product
    of two of them is exact in float64).
    """

    def __init__(self, a: Tensor, delta: Tensor) -> None:
        self.a, self.delta = a, delta
        self.shape = (a.shape[0], delta.shape[1] * a.shape[1])
        self.ndim = 2

    def _f64(self) -> tuple[Tensor, Tensor]:
        return self.a.to(torch.float64), self.delta.to(torch.float64)

    def dense(self) -> Tensor:
        """The (N, d_out * d_in) rows (float32)."""
        return (self.delta[:, :, None] * self.a[:, None, :]).reshape(self.shape)

    def centred_gram(self) -> Tensor:
        """C C^T (not divided by N) of the centred rows, in float64."""
        a, d = self._f64()
        g = (a @ a.T) * (d @ d.T)
        r = g.mean(dim=1)
        return g - r[:, None] - r[None, :] + g.mean()

    def centred_products(self, v: Tensor) -> Tensor:
        """C v, ``v`` a float64 vector over this weight's entries."""
        a, d = self._f64()
        x = ((d @ v.view(d.shape[1], a.shape[1])) * a).sum(dim=1)
        return x - x.mean()

    def transpose_products(self, w: Tensor) -> Tensor:
        """C^T w (flat, float64) for N weights ``w``."""
        a, d = self._f64()
        return ((d * (w - w.mean())[:, None]).T @ a).reshape(-1)

    def mean_norm_sq(self) -> float:
        a, d = self._f64()
        return float((d.T @ a).div(a.shape[0]).pow(2).sum())


#: Where the L gradients of K are kept: on the model's device ("memory"), in host memory
#: ("cpu"), or in a temporary file ("disk"); see :class:`GradientCovarianceOperator`.
STORAGES = ("memory", "cpu", "disk")


class _RowStore:
    """An (L, D) matrix (of the gradients' dtype) written row by row and read a block of
    columns at a time, in host memory (``"cpu"``) or in an unlinked temporary file
    (``"disk"``: what is read is never all resident at once)."""

    def __init__(
        self, rows: int, cols: int, storage: str, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.shape = (rows, cols)
        self.storage, self.dtype = storage, dtype
        self.itemsize = torch.empty(0, dtype=dtype).element_size()
        if storage != "disk":  # "memory": on the model's device; "cpu": in host memory
            where = device if storage == "memory" else "cpu"
            self.data = torch.empty(rows, cols, dtype=dtype, device=where)
        else:
            self.file = tempfile.TemporaryFile(prefix="breakeven-K-")
            self.file.truncate(rows * cols * self.itemsize)

    def write(self, row: int, start: int, values: Tensor) -> None:
        flat = values.detach().reshape(-1)
        if self.storage != "disk":
            self.data[row, start : start + flat.numel()].copy_(flat)
            return
        flat = flat.to(device="cpu", dtype=self.dtype)
        self.file.seek((row * self.shape[1] + start) * self.itemsize)
        self.file.write(_bits(flat).numpy().tobytes())

    def read(self, start: int, stop: int) -> Tensor:
        if self.storage != "disk":
            return self.data[:, start:stop]
        out = torch.empty(self.shape[0], stop - start, dtype=self.dtype)
        view = _bits(out).numpy()
        for row in range(self.shape[0]):
            self.file.seek((row * self.shape[1] + start) * self.itemsize)
            self.file.readinto(memoryview(view[row]).cast("B"))
        return out


def _bits(t: Tensor) -> Tensor:
    """``t`` viewed as an integer tensor of the same width when numpy has no such float type
    (bfloat16): the file holds the bits."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


class StoredColumns:
    """Columns ``start:stop`` of the gradients in a :class:`_RowStore`, loaded on use."""

    def __init__(self, store: _RowStore, start: int, stop: int) -> None:
        self.store, self.start, self.stop = store, start, stop
        self.shape = (store.shape[0], stop - start)
        self.ndim = 2
        self.dtype = store.dtype

    def load(self) -> Tensor:
        return self.store.read(self.start, self.stop)


def stored_gradient_blocks(
    model: nn.Module, loss_fn: LossFn, xs: Tensor, ys: Tensor, *, bn_mode: BNMode, storage: str
) -> list[Tensor] | list[StoredColumns]:
    """The gradients of :func:`gradient_blocks`, one batch at a time (plain backward, no
    ``vmap``), each written to ``storage`` as soon as it is computed: besides the store,
    memory holds one batch's graph and one gradient. ``"memory"``: column blocks (tensors)
    of one (L, D) matrix on the model's device; ``"cpu"``, ``"disk"``: :class:`StoredColumns`
    of host memory or of a temporary file."""
    params = trainable(model)
    sizes = [p.numel() for p in params.values()]
    first = next(iter(params.values()))
    store = _RowStore(len(xs), sum(sizes), storage, first.dtype, first.device)
    with measuring(model, bn_mode):
        f = functional_loss(model, loss_fn)
        for row, (xb, yb) in enumerate(zip(xs, ys)):
            _, loss, grads = loss_and_gradient(f, params, xb, yb)
            if row == 0:
                check_finite(loss.detach(), "the loss")
            start = 0
            for g, n in zip(grads, sizes):
                store.write(row, start, g)
                start += n
            del grads, loss
    D = store.shape[1]
    if storage == "memory":
        return [store.data[:, a : a + _GRAM_COLUMNS] for a in range(0, D, _GRAM_COLUMNS)]
    return [StoredColumns(store, a, min(a + _GRAM_COLUMNS, D)) for a in range(0, D, _GRAM_COLUMNS)]


def _vmap_pays(model: nn.Module) -> bool:
    """Whether ``vmap`` over the L batches computes their gradients faster than a loop of
    plain backward passes (which costs what the training loop's own passes cost). It does
    when the model is matrix products only (the MLP, L = 25, M = 128: 0.13 s vmapped, 0.17 s
    looped, 0.15 s the training loop). It does not with convolutions, whose vmapped weight
    gradients become grouped convolutions (SimpleCNN: 1.3x the loop), nor with recurrent
    modules (which vmap cannot batch). Decided from the module types, so the same model
    always takes the same path (records stay bitwise reproducible across processes)."""
    slow = (nn.modules.conv._ConvNd, nn.RNNBase)
    return not any(isinstance(m, slow) for m in model.modules())


def batch_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    bn_mode: BNMode = "train",
    chunk_size: int | None = 2048,
) -> tuple[Tensor, int]:
    """The gradients g_l of the mean loss on each batch, as rows of an (L, D) matrix.

    Returns the matrix (in the parameters' dtype) and the batch size M (all batches must have
    the same size). The batches are stacked and differentiated together by
    ``vmap(grad(...))``, about ``chunk_size`` examples per pass (at least one batch).
    ``bn_mode="train"`` (default) normalises each batch with its own statistics, as in the
    SGD step; the model's running statistics are not updated.
    """
    blocks, M = _batch_gradient_blocks(model, loss_fn, batches, bn_mode, chunk_size)
    return torch.cat(blocks, dim=1), M


def _batch_gradient_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    bn_mode: BNMode,
    chunk_size,
    storage: str = "memory",
) -> tuple[list, int]:
    batches = list(batches)
    if len(batches) < 2:
        raise ValueError(
            f"the gradient covariance needs at least 2 batches, got {len(batches)}: "
            "pass L >= 2 mini-batches (the paper uses L = 25)"
        )
    chunks = as_chunks(batches)
    if len(chunks) != len(batches):
        raise ValueError("a batch is empty: every mini-batch needs at least one example")
    sizes = {x.shape[0] for x, _ in chunks}
    if len(sizes) != 1:
        raise ValueError(
            f"all batches must have the same size M, got sizes {sorted(sizes)}; "
            "drop the last incomplete batch (DataLoader(drop_last=True))"
        )
    M = sizes.pop()
    xs = torch.stack([x for x, _ in chunks])
    ys = torch.stack([y for _, y in chunks])
    if storage != "memory" or not _vmap_pays(model):
        return stored_gradient_blocks(model, loss_fn, xs, ys, bn_mode=bn_mode, storage=storage), M
    per_pass = max(1, (chunk_size or len(chunks) * M) // M)
    return gradient_blocks(model, loss_fn, xs, ys, bn_mode=bn_mode, per_pass=per_pass), M


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = 256,
    bn_mode: BNMode = "eval",
) -> Tensor:
    """The gradient of each example's loss, as the rows of an (N, D) matrix.

    Row i is the gradient of ``loss_fn(model(x[i:i+1]), y[i:i+1])`` (a batch of one: with a
    mean-reduced loss, example i's own loss; no 1/N factor) with respect to the trainable
    parameters, flattened in the order of ``model.parameters()`` (each row-major), in the
    parameters' dtype. ``vmap(grad)`` over ``chunk_size`` examples at a time (a loop, with
    a warning, for modules ``vmap`` cannot batch); dropout is off and BatchNorm uses its
    running statistics (``bn_mode="eval"``; one example has no batch statistics); the model
    is left unchanged. N x D numbers: for K of a large model prefer
    :func:`~breakeven.per_example_gradient_covariance`, which never forms this matrix.
    ``chunk_size`` is an integer >= 1 or None (all examples in one pass); anything else
    raises ``ValueError`` naming it, before any work.
    """
    return torch.cat(
        _per_example_blocks(
            model, loss_fn, x, y, chunk_size=chunk_size, bn_mode=bn_mode, factor_linear=False
        ),
        dim=1,
    )


def _per_example_blocks(
    model, loss_fn, x, y, *, chunk_size, bn_mode, factor_linear=True
) -> list[Tensor | RankOneRows]:
    """Each example is a batch of one (``vmap(grad(...))`` over ``chunk_size`` examples at a
    time), linear layers' weights as :class:`RankOneRows` factors (``factor_linear``). With
    ``bn_mode="eval"`` BatchNorm uses its running statistics."""
    as_chunks((x, y), chunk_size)  # validates the pair and chunk_size, before any work
    return gradient_blocks(
        model,
        loss_fn,
        x.unsqueeze(1),
        y.unsqueeze(1),
        bn_mode=bn_mode,
        per_pass=chunk_size,
        factor_linear=factor_linear,
    )


def gradient_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    xs: Tensor,
    ys: Tensor,
    *,
    bn_mode: BNMode,
    per_pass: int | None,
    factor_linear: bool = False,
) -> list[Tensor | RankOneRows]:
    """The (L, D) matrix whose row l is the gradient of ``loss_fn(model(xs[l]), ys[l])`` (the
    batches stacked along the first dimension), as a list of (L, d_i) column blocks: one per
    parameter, split to at most ``_GRAM_COLUMNS`` columns (never concatenated: the copy cost
    more than the gradients on the MLP). ``torch.func.vmap(torch.func.grad(...))`` over
    ``per_pass`` batches at a time; for modules vmap cannot handle, a loop, with a warning
    saying why.

    ``factor_linear`` (batches of one example): the weight of each ``nn.Linear`` called once
    on a 2-D input gets a :class:`RankOneRows` block, from the layer's inputs and output
    gradients, instead of its materialised gradients."""
    params = trainable(model)
    step = per_pass or len(xs)
    with measuring(model, bn_mode):
        f = functional_loss(model, loss_fn)
        with torch.no_grad():
            check_finite(f(params, xs[0], ys[0]), "the loss")
        factored = _rank_one_linears(model, loss_fn, params, xs[0], ys[0]) if factor_linear else {}
        columns = (
            None if model in _LOOPED else _vmapped(model, loss_fn, params, factored, xs, ys, step)
        )
        if columns is None:
            rows = [loss_and_gradient(f, params, xb, yb)[2] for xb, yb in zip(xs, ys)]
            columns = [torch.stack(p) for p in zip(*rows)]
    return [
        block
        for g in columns
        for block in (
            [g] if isinstance(g, RankOneRows) else g.reshape(g.shape[0], -1).split(_GRAM_COLUMNS, 1)
        )
    ]


#: Models whose gradients vmap could not batch: warned about once, then looped at once.
_LOOPED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _vmapped(model, loss_fn, params, factored, xs, ys, step) -> list | None:
    """The column blocks of :func:`gradient_blocks` by ``vmap(grad)``, ``step`` batches per
    pass; None when vmap cannot batch ``model``. Then one short warning (a single line,
    once per model; PyTorch's own warnings from the failed attempt are dropped) and the
    model is remembered in :data:`_LOOPED`, so that later measurements loop at once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            per = _per_row_gradients(model, loss_fn, params, factored)
            passes = [
                per(xs[start : start + step], ys[start : start + step])
                for start in range(0, len(xs), step)
            ]
        except (RuntimeError, NotImplementedError) as err:
            failed: BaseException | None = err
        else:
            failed = None
    if failed is None:
        for w in caught:  # the successful pass's warnings, as they were
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return [p[0] if len(passes) == 1 else _cat(p) for p in zip(*passes, strict=True)]
    _LOOPED.add(model)
    reason = str(failed).strip().splitlines()[0] if str(failed).strip() else ""
    if len(reason) > 80:
        reason = reason[:77] + "..."
    warnings.warn(
        f"torch.func.vmap cannot batch this model ({type(model).__name__}; "
        f"{type(failed).__name__}: {reason}): its per-example gradients are computed in a "
        "loop (slower, same values); warned once per model",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _cat(parts: tuple) -> Tensor | RankOneRows:
    if isinstance(parts[0], RankOneRows):
        return RankOneRows(torch.cat([p.a for p in parts]), torch.cat([p.delta for p in parts]))
    return torch.cat(parts)


def _rank_one_linears(
    model: nn.Module, loss_fn: LossFn, params: dict[str, Tensor], x: Tensor, y: Tensor
) -> dict[str, str]:
    """{module name: weight name} of the ``nn.Linear`` layers (exactly that class) whose
    per-example weight gradient is the rank-one delta^T a: trainable weight, not shared,
    called once, on one row per example; then checked on the example ``(x, y)``: the
    factored gradient must equal the plain one (this also catches a weight used outside its
    layer). Call it inside :func:`measuring`."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    modules = dict(model.named_modules())
    weight = {n: f"{n}.weight" if n else "weight" for n in modules}
    candidates = [
        n
        for n, m in modules.items()
        if type(m) is nn.Linear and weight[n] in params and uses[id(m.weight)] == 1
    ]
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def record(n):
        def hook(m, args, out):
            seen.setdefault(n, []).append((args[0], out))

        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in candidates]
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    try:
        loss = functional_loss(model, loss_fn)(leaves, x, y)
    finally:
        for h in handles:
            h.remove()
    found = [
        n
        for n, calls in seen.items()
        if len(calls) == 1 and calls[0][0].ndim == 2 and calls[0][0].shape[0] == x.shape[0]
    ]
    if not found:
        return {}
    targets = [leaves[weight[n]] for n in found] + [seen[n][0][1] for n in found]
    grads = torch.autograd.grad(loss, targets, allow_unused=True, materialize_grads=True)
    out = {}
    for i, n in enumerate(found):
        plain, delta, a = grads[i], grads[len(found) + i], seen[n][0][0].detach()
        scale = float(plain.abs().max())
        if torch.allclose(delta.T @ a, plain, rtol=1e-4, atol=1e-5 * scale + 1e-30):
            out[n] = weight[n]
    return out


def _per_row_gradients(model, loss_fn, params, factored):
    """``g(xs, ys)``: the gradients of each row's loss, as a list in ``params`` order (a
    :class:`RankOneRows` for each weight of ``factored``), by ``vmap(grad)``."""
    check_loss_fn(loss_fn)
    if not factored:
        per = torch.func.vmap(
            torch.func.grad(functional_loss(model, loss_fn)), in_dims=(None, 0, 0)
        )
        return lambda xs, ys: list(per(params, xs, ys).values())
    modules = dict(model.named_modules())
    weights = set(factored.values())
    diff = {n: p for n, p in params.items() if n not in weights}
    const = {n: p for n, p in params.items() if n in weights}

    def f(diff, eps, x, y):
        inputs: dict[str, Tensor] = {}

        def hook(name):
            def add(m, args, out):
                inputs[name] = args[0]
                return out + eps[name]

            return add

        handles = [modules[n].register_forward_hook(hook(n)) for n in factored]
        try:
            out = torch.func.functional_call(model, {**diff, **const}, (x,))
        finally:
            for h in handles:
                h.remove()
        return loss_fn(out, y), inputs

    eps = {
        n: torch.zeros(1, modules[n].out_features, dtype=const[w].dtype, device=const[w].device)
        for n, w in factored.items()
    }
    per = torch.func.vmap(
        torch.func.grad(f, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0, 0)
    )
    by_weight = {w: n for n, w in factored.items()}

    def g(xs, ys):
        (g_diff, g_eps), inputs = per(diff, eps, xs, ys)
        out = []
        for name in params:
            if name in by_weight:
                n = by_weight[name]
                out.append(RankOneRows(inputs[n][:, 0], g_eps[n][:, 0]))
            else:
                out.append(g_diff[name])
        return out

    return g


def centred_gram(gradients: Tensor | list[Tensor]) -> Tensor:
    """G = C C^T / L in float64, C the rows of ``gradients`` minus their mean (an L x L matrix);
    ``gradients`` is an (L, D) matrix or a list of its (L, d_i) column blocks.

    The centring and the products are done in float64, a block of columns at a time (so the
    memory above the gradients is one block): in float32 the smallest non-zero eigenvalue is
    lost. Raises ValueError when a gradient is not finite.
    """
    blocks = _as_blocks(gradients)
    L = blocks[0].shape[0]
    gram = torch.zeros(L, L, dtype=torch.float64, device=_device(blocks))
    for _, block in _centred_blocks(blocks):
        gram += block.centred_gram() if isinstance(block, RankOneRows) else _gram_of(block)
    if not torch.isfinite(gram).all():
        raise ValueError("the loss or its gradient is not finite on some batch (inf/nan)")
    return gram / L


def _gather_batches(blocks: list[Tensor], batch_size: int) -> list[Tensor]:
    """Every rank's gradient blocks, rows in rank order (each rank must pass as many batches
    of the same size M)."""
    shape = torch.tensor([[blocks[0].shape[0], batch_size]], device=blocks[0].device)
    counts = all_gather_rows(shape)
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            "distributed K needs the same number of batches of the same size M on every rank, "
            f"got (L, M) = {[tuple(r) for r in counts.tolist()]}"
        )
    return [all_gather_rows(b) for b in blocks]


def _dense(block: Tensor | RankOneRows | StoredColumns) -> Tensor:
    if isinstance(block, RankOneRows):
        return block.dense()
    if isinstance(block, StoredColumns):
        return block.load()
    return block


def _as_blocks(gradients: Tensor | list[Tensor]) -> list[Tensor]:
    if isinstance(gradients, Tensor):
        return list(gradients.split(_GRAM_COLUMNS, dim=1))
    return list(gradients)


def _block_dtype(block: Tensor | RankOneRows | StoredColumns) -> torch.dtype:
    return block.a.dtype if isinstance(block, RankOneRows) else block.dtype


def _device(blocks: list) -> torch.device:
    b = blocks[0]
    if isinstance(b, StoredColumns):
        return torch.device("cpu")
    return b.a.device if isinstance(b, RankOneRows) else b.device


def _centred_blocks(blocks: list):
    """(columns, block) pairs: the float64 row-centred column blocks and their columns, a
    slice or, where a block's first gradient is mostly zero, the indices of the columns kept:
    columns that are zero in every gradient add nothing to K and are dropped (an embedding's
    rows of unseen tokens; exact). :class:`RankOneRows` blocks are passed on as they are:
    they centre themselves."""
    L = blocks[0].shape[0]
    weights = torch.full((L,), 1 / L, dtype=torch.float64, device=_device(blocks))
    start = 0
    for b in blocks:
        cols = slice(start, start + b.shape[1])
        start += b.shape[1]
        if isinstance(b, RankOneRows):
            yield cols, b
            continue
        block = _dense(b)
        if 2 * int(torch.count_nonzero(block[0])) < block.shape[1]:
            kept = block.abs().amax(dim=0).ne(0).nonzero().squeeze(1)  # nan != 0: kept
            if 10 * kept.numel() < 9 * block.shape[1]:  # else the copy costs what it saves
                block, cols = block.index_select(1, kept), kept + cols.start
        block = block.to(torch.float64, copy=True)
        block -= weights @ block  # in place, the mean as a GEMV: 2x faster than mean(dim=0)
        yield cols, block


def _gram_of(block: Tensor) -> Tensor:
    """block @ block.T; on a CPU with several threads as a batched product of column chunks,
    one per thread (a single product of a wide L x c block runs on one thread)."""
    threads = torch.get_num_threads()
    chunk = block.shape[1] // threads
    if threads < 2 or chunk < 1024 or block.device.type != "cpu":
        return block @ block.T
    head = block[:, : threads * chunk].unflatten(1, (threads, chunk)).transpose(0, 1)
    tail = block[:, threads * chunk :]
    return torch.bmm(head, head.transpose(1, 2)).sum(dim=0) + tail @ tail.T


class GradientCovarianceOperator(LinearOperator):
    """K = (1/L) sum_l (g_l - g)(g_l - g)^T, g the mean of the L gradients g_l (a D x D matrix).

    Never formed: ``K @ v = C^T (C v) / L`` with C the (L, D) matrix of centred gradients, and
    its non-zero eigenvalues are those of the L x L Gram ``C C^T / L`` (:meth:`gram`). Build
    it from a model and L mini-batches (``g_l`` = gradient of the mean loss on batch l), or
    from any gradient matrix with :meth:`from_gradients` (rows = gradients, e.g. per-example).

    Memory (``storage``), for D parameters and L batches of M examples:

    - ``"memory"`` (default): the L gradients on the model's device, computed in one
      ``vmap`` pass over the batches (about 2048 examples at a time): L x D x 4 bytes plus
      the activations of a pass. Fastest.
    - ``"cpu"``: computed one batch at a time and moved to host memory as they come: the
      device holds one batch's graph and one gradient (D x 4 bytes); the host L x D x 4.
    - ``"disk"``: as ``"cpu"``, into an unlinked temporary file (in ``$TMPDIR``: make sure it
      is a disk, not a RAM-backed tmpfs): memory holds one batch's
      graph, one gradient and one block of 32,768 columns (L x 32,768 x 8 bytes) while the
      Gram is accumulated. The same float32 gradients and float64 Gram as ``"memory"``
      (exact up to the order of summation); slower by the file reads.

    ``distributed``: each rank of the default process group passes its own L_r batches (the
    same number and size on every rank); their gradients are gathered, so every rank holds
    the operator of all L = world size x L_r batches.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[Batch],
        *,
        bn_mode: BNMode = "train",
        storage: str = "memory",
        distributed: bool = False,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage={storage!r} is invalid: choose from {list(STORAGES)}")
        check_distributed(distributed)
        if distributed and storage != "memory":
            raise ValueError("distributed=True keeps the gradients in memory (storage='memory')")
        blocks, batch_size = _batch_gradient_blocks(model, loss_fn, batches, bn_mode, 2048, storage)
        if distributed:
            blocks = _gather_batches(blocks, batch_size)
        self._init(blocks, batch_size)
        self.bn_mode = bn_mode
        self.storage = storage

    @classmethod
    def from_gradients(
        cls, gradients: Tensor | list[Tensor], batch_size: int
    ) -> GradientCovarianceOperator:
        """K from an (L, D) matrix whose rows are gradients of mean losses over ``batch_size``
        (or a list of its (L, d_i) column blocks)."""
        blocks = (
            _as_blocks(gradients)
            if not isinstance(gradients, Tensor) or gradients.ndim == 2
            else []
        )
        if not blocks or any(b.ndim != 2 or b.shape[0] != blocks[0].shape[0] for b in blocks):
            raise ValueError("expected an (L, D) gradient matrix (or its (L, d_i) column blocks)")
        if blocks[0].shape[0] < 2:
            raise ValueError(f"K needs at least 2 gradients, got {blocks[0].shape[0]}")
        op = cls.__new__(cls)
        op._init(blocks, batch_size)
        op.bn_mode = None
        return op

    def _init(self, blocks: list[Tensor], batch_size: int) -> None:
        self.blocks = blocks
        self.batch_size = int(batch_size)
        self.num_batches = blocks[0].shape[0]
        dim = sum(b.shape[1] for b in blocks)
        self.shape = (dim, dim)
        self.dtype = torch.float64
        self.device = _device(blocks)
        self._gram: Tensor | None = None

    @property
    def gradient_eps(self) -> float:
        """Machine epsilon of the least precise stored gradients (float32: 1.2e-7): K's
        eigenvalues below ``gradient_eps * lambda_K^1`` are not resolved by them."""
        return max(torch.finfo(_block_dtype(b)).eps for b in self.blocks)

    @property
    def gradients(self) -> Tensor:
        """The (L, D) gradient matrix (a concatenated copy of the blocks)."""
        return torch.cat([_dense(b) for b in self.blocks], dim=1)

    def gram(self) -> Tensor:
        """The L x L centred Gram matrix divided by L, in float64 (computed once)."""
        if self._gram is None:
            self._gram = centred_gram(self.blocks)
        return self._gram

    def mean_norm_sq(self) -> float:
        """|g|^2 of the mean g of the L gradients, in float64."""
        return sum(
            b.mean_norm_sq()
            if isinstance(b, RankOneRows)
            else float(_dense(b).to(torch.float64).mean(dim=0).pow(2).sum())
            for b in self.blocks
        )

    def centred_products(self, v: Tensor) -> Tensor:
        """C v in float64: the L dot products of the centred gradients with a flat vector."""
        v = v.to(dtype=torch.float64, device=self.device)
        # 0 * max|v|: a nan or inf of v at a dropped (all-zero) column still makes C v nan
        out = torch.zeros(self.num_batches, dtype=torch.float64, device=self.device)
        out += v.abs().amax() * 0
        for cols, block in _centred_blocks(self.blocks):
            out += (
                block.centred_products(v[cols])
                if isinstance(block, RankOneRows)
                else block @ v[cols]
            )
        return out

    def transpose_products(self, a: Tensor) -> Tensor:
        """C^T a in float64: the combination sum_l a_l (g_l - g), a flat vector of length D."""
        a = a.to(dtype=torch.float64, device=self.device)
        out = torch.zeros(self.shape[0], dtype=torch.float64, device=self.device)
        out += a.abs().amax() * 0  # the dropped columns: sum_l 0 * a_l, nan if a is not finite
        for cols, block in _centred_blocks(self.blocks):
            out[cols] = (
                block.transpose_products(a) if isinstance(block, RankOneRows) else block.T @ a
            )
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """K v = C^T (C v) / L in float64."""
        return self.transpose_products(self.centred_products(v) / self.num_batches)
