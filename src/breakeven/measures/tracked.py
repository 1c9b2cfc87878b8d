"""The paper's quantities as schedulable measures, for the :class:`~breakeven.Tracker`.

Each measure stores only its arguments and follows the contract of :mod:`.base`:
``measure(ctx)`` returns a :class:`Measurement` computed at the parameters *before* the
training step of ``ctx.step``; ``after(ctx, values)`` adds what needs the parameters after
it (the loss change). The K spectrum and the Hessian eigenpairs are shared with the measures
that require them (``alignment``, ``noise_scale``, ``stability``, ``edge_of_stability``);
state kept across steps (warm starts) is in ``ctx.state[self.name]``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import torch
from torch import Tensor, nn

from .._core.checks import check_int
from .._core.data import Batch
from .._core.distributed import all_reduce_sum
from .._core.functional import LossFn
from .._core.state import BATCHNORM_TYPES, BNMode, check_bn_mode, measuring
from ..operators.covariance import STORAGES
from ..spectra import LanczosResult
from .base import Context, Measure, Measurement, register_measure
from .covariance import (
    CovarianceSpectrum,
    gradient_alignment,
    gradient_covariance,
    per_example_gradient_covariance,
)
from .hessian import (
    EigenResult,
    curvature_variance,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    stability,
)


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")


# ----------------------------------------------------------------------------- K


@register_measure("covariance")
class GradientCovariance(Measure):
    """The spectrum of K from ``num_batches`` (L) training mini-batches of ``batch_size`` (M)
    examples (default: the training batch size S; the paper uses M = 128 when S is swept),
    drawn afresh at each measurement: disjoint when L * M fits in the training set, else
    each batch drawn on its own (batches may overlap).
    ``batch_size=1`` uses per-example gradients (``vmap``). Keys: ``lambda_K_1``,
    ``lambda_K_star`` ((L-1)-th), ``condition_K``, ``trace_K``, their per-example scale
    ``M * value`` (``per_example_lambda_K_1``, ``per_example_trace_K``), ``M``, ``L``,
    ``rank_K`` (numerical rank) and ``resolution_K`` (eps of the gradients x lambda_K^1:
    ``lambda_K_star`` and ``condition_K`` are NaN, unresolved, when rank_K < L - 1);
    with ``spectrum=True`` also every eigenvalue ``eig_K_i`` (i = 0 the largest).
    ``storage``: where the L gradients are kept (``"memory"``, ``"cpu"``, ``"disk"``; see
    :class:`~breakeven.GradientCovarianceOperator`). With M = 1 (per-example gradients) K is
    always built in memory with BatchNorm in eval mode (one example has no batch statistics),
    its linear layers as rank-one factors; ``storage`` and ``bn_mode`` apply to M > 1.
    Shares its :class:`~breakeven.CovarianceSpectrum`."""

    keys = (
        "lambda_K_1",
        "lambda_K_star",
        "condition_K",
        "rank_K",
        "resolution_K",
        "trace_K",
        "per_example_lambda_K_1",
        "per_example_trace_K",
        "M",
        "L",
    )

    def __init__(
        self,
        num_batches: int = 25,
        batch_size: int | None = None,
        bn_mode: BNMode = "train",
        spectrum: bool = False,
        storage: str = "memory",
    ) -> None:
        check_int(num_batches, "num_batches (L)", 2)
        check_int(batch_size, "batch_size (M)", 1, optional=True)
        check_bn_mode(bn_mode)
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.bn_mode = bn_mode
        self.spectrum = spectrum
        if storage not in STORAGES:
            raise ValueError(f"storage={storage!r} is invalid: choose from {list(STORAGES)}")
        self.storage = storage

    def emits(self) -> tuple[str, ...]:
        eig = tuple(f"eig_K_{i}" for i in range(self.num_batches)) if self.spectrum else ()
        return self.keys + eig

    def check(self, n_params: int, n_train: int, batch_size: int) -> None:
        M = self.batch_size or batch_size
        if M == 1 and self.num_batches > n_train:
            raise ValueError(
                f"num_batches={self.num_batches} per-example gradients (batch_size = 1) need "
                f"as many training examples; there are {n_train}"
            )
        if M > n_train:
            raise ValueError(f"batch_size (M) = {M} is larger than the {n_train} training examples")

    def compute(self, ctx: Context) -> CovarianceSpectrum:
        M = self.batch_size or ctx.batch_size
        if M == 1:
            if ctx.distributed:
                raise ValueError(
                    "per-example K (batch_size = 1) is not data-parallel: use M > 1 under torchrun"
                )
            ((x, y),) = ctx.sample_batches(1, self.num_batches)
            return per_example_gradient_covariance(ctx.model, ctx.loss_fn, x, y)
        batches = ctx.sample_batches(self.num_batches, M)
        return gradient_covariance(
            ctx.model,
            ctx.loss_fn,
            batches,
            bn_mode=self.bn_mode,
            storage=self.storage,
            distributed=ctx.distributed,
        )

    def measure(self, ctx: Context) -> Measurement:
        spec = self.compute(ctx)
        out = {
            "lambda_K_1": spec.top,
            "lambda_K_star": spec.smallest_nonzero if spec.resolved else math.nan,
            "condition_K": spec.condition if spec.resolved else math.nan,
            "rank_K": spec.numerical_rank,
            "resolution_K": spec.resolution,
            "trace_K": spec.trace,
            "per_example_lambda_K_1": spec.per_example_top,
            "per_example_trace_K": spec.per_example_trace,
            "M": spec.batch_size,
            "L": spec.num_batches,
        }
        if self.spectrum:
            out.update({f"eig_K_{i}": float(v) for i, v in enumerate(spec.eigenvalues)})
        return Measurement(out, matvecs=spec.num_batches, shared=spec)


def _covariance(ctx: Context) -> tuple[CovarianceSpectrum, int]:
    """The K spectrum of this step and the gradients this call computed for it: the one a
    ``covariance`` measure shared, else a default one (L = 25, M = S), shared in its place."""
    if "covariance" in ctx.cache:
        return ctx.cache["covariance"], 0
    spec = ctx.cache["covariance"] = GradientCovariance().compute(ctx)
    return spec, spec.num_batches


@register_measure("alignment")
class GradientAlignment(Measure):
    """``alignment``: ||g|| / ||g_k|| of the step's mini-batch gradient g on the top-k
    eigenvectors of K (the K measured at this step, or L = 25 batches of size S)."""

    requires = ("covariance",)
    keys = ("alignment", "k")

    def __init__(self, k: int = 5) -> None:
        check_int(k, "k", 1)
        self.k = k

    def measure(self, ctx: Context) -> Measurement:
        if ctx.gradient is None:
            raise ValueError("gradient alignment needs the step's gradient (before_step)")
        spec, matvecs = _covariance(ctx)
        value = gradient_alignment(ctx.gradient, spec, self.k)
        return Measurement({"alignment": value, "k": self.k}, matvecs=matvecs)


@register_measure("noise_scale")
class GradientNoiseScale(Measure):
    """``noise_scale``: B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), from the K
    measurement: tr(Sigma) ~ M Tr(K) and the unbiased |G|^2 ~ |g|^2 - Tr(K) / L, g the mean
    of the L batch gradients. ``nan`` when the estimate of |G|^2 is not positive."""

    requires = ("covariance",)
    keys = ("noise_scale", "trace_sigma", "grad_norm_sq")

    def measure(self, ctx: Context) -> Measurement:
        spec, matvecs = _covariance(ctx)
        g2 = spec.mean_gradient_norm_sq - spec.trace / spec.num_batches
        trace_sigma = spec.batch_size * spec.trace
        values = {
            "noise_scale": trace_sigma / g2 if g2 > 0 else math.nan,
            "trace_sigma": trace_sigma,
            "grad_norm_sq": g2,
        }
        return Measurement(values, matvecs=matvecs)


# ----------------------------------------------------------------------------- H


@register_measure("hessian")
class HessianTop(Measure):
    """The top-k Hessian eigenvalues on the probe (largest algebraic), warm-started from the
    previous measurement's eigenvectors. Keys ``lambda_H_1..k``, ``residual_H_1..k``,
    ``converged`` (1.0 or 0.0). Shares its :class:`~breakeven.EigenResult`."""

    def __init__(
        self,
        k: int = 1,
        tol: float = 1e-3,
        max_iter: int | None = None,
        chunk_size: int | None = None,
        bn_mode: BNMode = "eval",
        warm_start: bool = True,
    ) -> None:
        check_int(k, "k", 1)
        check_int(max_iter, "max_iter", 1, optional=True)
        check_int(chunk_size, "chunk_size", 1, optional=True)
        check_bn_mode(bn_mode)
        _positive(tol, "tol")
        if max_iter is not None and max_iter < k:
            raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
        self.k = k
        self.tol = tol
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.bn_mode = bn_mode
        self.warm_start = warm_start

    def emits(self) -> tuple[str, ...]:
        ks = range(1, self.k + 1)
        return (*(f"lambda_H_{i}" for i in ks), *(f"residual_H_{i}" for i in ks), "converged")

    def check(self, n_params: int, n_train: int, batch_size: int) -> None:
        if self.k > n_params:
            raise ValueError(f"k={self.k} is larger than the model's {n_params} parameters")

    def lanczos_options(self, ctx: Context) -> dict[str, Any]:
        """The keyword arguments of this measure's Lanczos at ``ctx`` (of
        :func:`~breakeven.hessian_eigenvalues` and, for the subclasses, its preconditioned
        twin): the options, the previous measurement's eigenvectors as the start vectors
        (``warm_start``; see :meth:`_keep_start`), the step as the seed, ``ctx.distributed``."""
        state = ctx.state.get(self.name, {})
        return dict(
            k=self.k,
            tol=self.tol,
            max_iter=self.max_iter,
            v0=state.get("v0") if self.warm_start else None,
            chunk_size=self.chunk_size,
            bn_mode=self.bn_mode,
            seed=ctx.step,
            distributed=ctx.distributed,
        )

    def _keep_start(self, ctx: Context, res: LanczosResult) -> None:
        """Keep ``res``'s eigenvectors as the next measurement's start (``warm_start``)."""
        ctx.state.setdefault(self.name, {})["v0"] = res.eigenvectors.detach().clone()

    def compute(self, ctx: Context) -> EigenResult:
        res = hessian_eigenvalues(ctx.model, ctx.loss_fn, ctx.probe, **self.lanczos_options(ctx))
        self._keep_start(ctx, res)
        return res

    def measure(self, ctx: Context) -> Measurement:
        res = self.compute(ctx)
        out = {f"lambda_H_{i + 1}": float(v) for i, v in enumerate(res.eigenvalues)}
        out.update({f"residual_H_{i + 1}": float(r) for i, r in enumerate(res.residuals)})
        out["converged"] = float(res.converged)
        return Measurement(out, matvecs=res.num_matvecs, shared=res)


def _hessian(ctx: Context) -> tuple[EigenResult, int]:
    """The top Hessian eigenpairs of this step and the products this call computed for
    them: the ones a ``hessian`` measure shared, else a default one's, shared in its place."""
    if "hessian" in ctx.cache:
        return ctx.cache["hessian"], 0
    res = ctx.cache["hessian"] = HessianTop().compute(ctx)
    return res, res.num_matvecs


@register_measure("hessian_trace")
class HessianTrace(Measure):
    """``trace_H`` (Hutchinson, Rademacher) and its standard error ``trace_H_stderr``."""

    keys = ("trace_H", "trace_H_stderr")

    def __init__(self, num_samples: int = 50, bn_mode: BNMode = "eval") -> None:
        check_int(num_samples, "num_samples", 1)
        check_bn_mode(bn_mode)
        self.num_samples = num_samples
        self.bn_mode = bn_mode

    def measure(self, ctx: Context) -> Measurement:
        res = hessian_trace(
            ctx.model,
            ctx.loss_fn,
            ctx.probe,
            num_samples=self.num_samples,
            bn_mode=self.bn_mode,
            seed=ctx.step,
            distributed=ctx.distributed,
        )
        values = {"trace_H": res.estimate, "trace_H_stderr": res.stderr}
        return Measurement(values, matvecs=res.num_matvecs)


@register_measure("hessian_density")
class HessianDensity(Measure):
    """The SLQ quadrature of H's spectrum (paper Fig. 3): ``node_i`` and ``weight_i`` of each
    probe vector concatenated (num_probes * num_steps of each, fewer when num_steps exceeds
    the parameter count)."""

    keys = ("node_*", "weight_*")

    def __init__(self, num_probes: int = 1, num_steps: int = 40, bn_mode: BNMode = "eval") -> None:
        check_int(num_probes, "num_probes", 1)
        check_int(num_steps, "num_steps", 1)
        check_bn_mode(bn_mode)
        self.num_probes = num_probes
        self.num_steps = num_steps
        self.bn_mode = bn_mode

    def measure(self, ctx: Context) -> Measurement:
        res = hessian_density(
            ctx.model,
            ctx.loss_fn,
            ctx.probe,
            num_probes=self.num_probes,
            num_steps=self.num_steps,
            bn_mode=self.bn_mode,
            seed=ctx.step,
            distributed=ctx.distributed,
        )
        out = {f"node_{i}": float(v) for i, v in enumerate(res.nodes.reshape(-1))}
        out.update({f"weight_{i}": float(w) for i, w in enumerate(res.weights.reshape(-1))})
        return Measurement(out, matvecs=res.num_matvecs)


@register_measure("stability")
class Stability(Measure):
    """The left side of Eq. 1 along e_H^1 and the flag ``break_even`` (1.0 when it is >= 1
    at this step; the break-even *point*, the first crossing of 1 from below, is found from
    the records by :mod:`breakeven.analysis`): ``stability``, ``lambda_H_1``, ``s2``
    (per-example curvature variance on the probe), ``residual_H_1``, using this step's
    learning rate and batch size.

    lambda_H^1, e_H^1 and s^2 always come from one operator: the same probe, BatchNorm mode
    and chunking. ``bn_mode`` and ``chunk_size`` default to those of the ``hessian`` measure
    of the same step (eval mode and the whole probe when it did not run). For a network with
    BatchNorm, the stability *of the SGD step* is the one of the train-mode operator whose
    chunks are training batches: ``bn_mode="train"`` given here without a ``chunk_size``
    takes chunks of the training batch size (what the BatchNorm presets track); eval mode
    measures another matrix (the one of the running statistics), and the two can differ by
    orders of magnitude.

    s^2 depends on the eigenvector, which an eigenvalue tolerance does not control: the
    eigenpair is taken from the ``hessian`` measure only when its residual is at most
    ``tol`` |lambda| (default 1e-4: the eigenvector's angle to e_H^1 is at most the residual
    over the gap to the next eigenvalue), else computed again to that residual, warm-started
    from it. s^2 is then within 1e-3 (relative) of its value at the exact eigenvector on the
    test catalogue.
    """

    requires = ("hessian",)
    keys = ("stability", "break_even", "lambda_H_1", "s2", "residual_H_1")

    def __init__(
        self,
        chunk_size: int | None = None,
        bn_mode: BNMode | None = None,
        tol: float = 1e-4,
    ) -> None:
        check_int(chunk_size, "chunk_size", 1, optional=True)
        if bn_mode is not None:
            check_bn_mode(bn_mode)
        _positive(tol, "tol")
        self.chunk_size = chunk_size
        self.bn_mode = bn_mode
        self.tol = tol

    def _eigenpair(self, ctx: Context) -> EigenResult:
        """The top eigenpair of the operator this measure is defined on, to ``tol``."""
        cached = ctx.cache.get("hessian")
        bn_mode = self.bn_mode or (cached.bn_mode if cached is not None else "eval")
        chunk = (
            self.chunk_size
            if self.chunk_size is not None
            else (cached.chunk_size if cached is not None else None)
        )
        if self.bn_mode == "train" and chunk is None:  # the SGD step's: training batches
            chunk = ctx.batch_size
        same = cached is not None and (cached.bn_mode, cached.chunk_size) == (bn_mode, chunk)
        if same and self._accurate(cached):
            return cached
        state = ctx.state.setdefault(self.name, {})
        v0 = cached.eigenvectors[:, :1] if same else state.get("v0")
        res = hessian_eigenvalues(
            ctx.model,
            ctx.loss_fn,
            ctx.probe,
            k=1,
            tol=self.tol,
            v0=v0,
            chunk_size=chunk,
            bn_mode=bn_mode,
            seed=ctx.step,
            distributed=ctx.distributed,
        )
        state["v0"] = res.eigenvectors.detach().clone()
        return res

    def _accurate(self, res: EigenResult) -> bool:
        return float(res.residuals[0]) <= self.tol * abs(float(res.eigenvalues[0]))

    def measure(self, ctx: Context) -> Measurement:
        top = self._eigenpair(ctx)
        lam = float(top.eigenvalues[0])
        s2 = curvature_variance(
            ctx.model,
            ctx.loss_fn,
            ctx.probe,
            top.eigenvectors[:, 0],
            chunk_size=top.chunk_size,
            bn_mode=top.bn_mode,
            distributed=ctx.distributed,
        )
        value = stability(ctx.lr, ctx.batch_size, ctx.n_train, lam, s2)
        values = {
            "stability": value,
            "break_even": float(value >= 1.0),
            "lambda_H_1": lam,
            "s2": s2,
            "residual_H_1": float(top.residuals[0]),
        }
        reused = top is ctx.cache.get("hessian")
        return Measurement(values, matvecs=0 if reused else top.num_matvecs)


def eos_threshold(lr: float, momentum: float) -> float:
    """The edge-of-stability threshold (2 + 2 beta) / eta of SGD with learning rate eta and
    heavy-ball momentum beta (2/eta without momentum); inf at eta = 0 (no step is unstable)."""
    return (2 + 2 * momentum) / lr if lr else math.inf


@register_measure("edge_of_stability")
class EdgeOfStability(Measure):
    """``eos_ratio`` = lambda_H^1 / threshold, threshold = (2 + 2 beta) / eta (2/eta without
    momentum beta): gradient descent is unstable along e_H^1 when the ratio exceeds 1
    (lambda_H^1 of the ``hessian`` measure of the step, else computed with its defaults)."""

    requires = ("hessian",)
    keys = ("eos_ratio", "eos_threshold", "lambda_H_1")

    def measure(self, ctx: Context) -> Measurement:
        res, matvecs = _hessian(ctx)
        lam = float(res.eigenvalues[0])
        threshold = eos_threshold(ctx.lr, ctx.momentum)
        values = {"eos_ratio": lam / threshold, "eos_threshold": threshold, "lambda_H_1": lam}
        return Measurement(values, matvecs=matvecs)


# ----------------------------------------------------------------------------- loss, weights


def _loss_and_accuracy(
    model: nn.Module, loss_fn: LossFn, data: Batch, distributed: bool = False, chunk: int = 1000
) -> tuple[float, float]:
    """Mean loss and accuracy over ``data`` (over every rank's part when ``distributed``)."""
    x, y = data
    with measuring(model, "eval"), torch.no_grad():
        total, correct = 0.0, 0
        for i in range(0, len(y), chunk):
            out = model(x[i : i + chunk])
            total += float(loss_fn(out, y[i : i + chunk])) * len(y[i : i + chunk])
            if out.ndim == 2 and y.ndim == 1:
                correct += int((out.argmax(1) == y[i : i + chunk]).sum())
    n = len(y)
    if distributed:
        sums = torch.tensor([total, float(correct), float(n)], dtype=torch.float64, device=y.device)
        total, correct, n = all_reduce_sum(sums).tolist()
    return total / n, correct / n


@register_measure("loss_change")
class LossChange(Measure):
    """Delta L = loss before the step - loss after it, on the same fixed probe data (eval
    mode): positive when the step reduced the loss. Keys ``delta_loss``, ``loss_before``,
    ``loss_after``."""

    keys = ("loss_before", "loss_after", "delta_loss")

    def measure(self, ctx: Context) -> Measurement:
        before, _ = _loss_and_accuracy(ctx.model, ctx.loss_fn, ctx.probe, ctx.distributed)
        return Measurement({"loss_before": before})

    def after(self, ctx: Context, values: dict[str, float]) -> Measurement:
        after, _ = _loss_and_accuracy(ctx.model, ctx.loss_fn, ctx.probe, ctx.distributed)
        return Measurement({"loss_after": after, "delta_loss": values["loss_before"] - after})


@register_measure("probe")
class ProbeMetrics(Measure):
    """``probe_loss`` and ``probe_acc`` on the probe subset (eval mode; older runs recorded
    ``probe_accuracy``, read as ``probe_acc``)."""

    keys = ("probe_loss", "probe_acc")

    def measure(self, ctx: Context) -> Measurement:
        loss, acc = _loss_and_accuracy(ctx.model, ctx.loss_fn, ctx.probe, ctx.distributed)
        return Measurement({"probe_loss": loss, "probe_acc": acc})


@register_measure("validation")
class ValidationMetrics(Measure):
    """``val_loss`` and ``val_acc`` on the validation (test) set (eval mode; older runs
    recorded ``val_accuracy``, read as ``val_acc``)."""

    keys = ("val_loss", "val_acc")

    def measure(self, ctx: Context) -> Measurement:
        if ctx.val_data is None:
            raise ValueError("the validation measure needs validation data (Tracker(val_data=...))")
        loss, acc = _loss_and_accuracy(ctx.model, ctx.loss_fn, ctx.val_data, ctx.distributed)
        return Measurement({"val_loss": loss, "val_acc": acc})


@register_measure("train_accuracy")
class TrainAccuracy(Measure):
    """``train_loss`` and ``train_acc`` on a fixed subset of the training data, in eval mode
    (as the training loop's evaluation; the keys it records, so that the figures'
    accuracy-threshold lines and the break-even table read an own loop's training accuracy
    from here).

    The subset: the training examples at ``indices`` (positions in the tracker's
    ``train_data``) when given, else the first ``num_examples`` of them (default 1000; all of
    them when there are fewer). The same examples at every measurement; nothing is drawn at
    random, so training, the global RNG and the tracker's generator are untouched, as are the
    parameters, buffers (BatchNorm statistics), ``.grad`` and train/eval modes. Under
    torchrun: of each rank's part of the training data, reduced over the ranks."""

    keys = ("train_loss", "train_acc")

    def __init__(self, num_examples: int = 1000, indices: Any = None) -> None:
        check_int(num_examples, "num_examples", 1)
        if indices is not None:
            indices = tuple(check_int(i, "each of indices", 0) for i in indices)
            if not indices:
                raise ValueError("indices must name at least one training example, got none")
            if len(set(indices)) < len(indices):
                raise ValueError("indices must be distinct: a repeated example would count twice")
        self.num_examples = num_examples
        self.indices = indices

    def check(self, n_params: int, n_train: int, batch_size: int) -> None:
        if self.indices is not None and max(self.indices) >= n_train:
            raise ValueError(
                f"indices name example {max(self.indices)}; there are {n_train} training examples"
            )

    def measure(self, ctx: Context) -> Measurement:
        if ctx.train_data is None:
            raise ValueError(
                "the train_accuracy measure needs training data (Tracker(train_data=...))"
            )
        x, y = ctx.train_data
        self.check(0, len(y), 0)  # indices within this loop's training data
        if self.indices is None:
            x, y = x[: self.num_examples], y[: self.num_examples]
        else:
            i = torch.tensor(self.indices, dtype=torch.long, device=y.device)
            x, y = x[i], y[i]
        device = next((p.device for p in ctx.model.parameters()), y.device)
        data = (x.to(device), y.to(device))
        loss, acc = _loss_and_accuracy(ctx.model, ctx.loss_fn, data, ctx.distributed)
        return Measurement({"train_loss": loss, "train_acc": acc})


@register_measure("batchnorm")
class BatchNormScale(Measure):
    """||gamma|| of each BatchNorm layer (``gamma_norm/<module name>``) and of the last one
    (``gamma_norm_last``), found by module type; nothing when the model has no BatchNorm."""

    keys = ("gamma_norm/*", "gamma_norm_last")

    def measure(self, ctx: Context) -> Measurement:
        norms = {
            f"gamma_norm/{name}": float(m.weight.detach().norm())
            for name, m in ctx.model.named_modules()
            if isinstance(m, BATCHNORM_TYPES) and m.weight is not None
        }
        if norms:
            norms["gamma_norm_last"] = list(norms.values())[-1]
        return Measurement(norms)


@register_measure("param_norm")
class ParameterNorm(Measure):
    """``param_norm``: ||theta|| over the trainable parameters."""

    keys = ("param_norm",)

    def measure(self, ctx: Context) -> Measurement:
        sq = sum(
            float(p.detach().double().pow(2).sum())
            for p in ctx.model.parameters()
            if p.requires_grad
        )
        return Measurement({"param_norm": math.sqrt(sq)})


@register_measure("lr")
class LearningRate(Measure):
    """``lr``: the learning rate of this step (after any decay)."""

    keys = ("lr",)

    def measure(self, ctx: Context) -> Measurement:
        return Measurement({"lr": ctx.lr})


@register_measure("predictions")
class Predictions(Measure):
    """Softmax predictions on the first ``num_examples`` validation examples, stored compactly
    (float16, base64) under the record's ``arrays`` for the trajectory embedding (Fig. 1);
    no values."""

    def __init__(self, num_examples: int = 1000) -> None:
        check_int(num_examples, "num_examples", 1)
        self.num_examples = num_examples

    def measure(self, ctx: Context) -> Measurement:
        if ctx.val_data is None:
            raise ValueError("predictions need validation data (Tracker(val_data=...))")
        x = ctx.val_data[0][: self.num_examples]
        with measuring(ctx.model, "eval"), torch.no_grad():
            probs = torch.softmax(ctx.model(x).float(), dim=1).to(torch.float16).cpu()
        return Measurement({}, arrays={"predictions": encode_array(probs)})


def encode_array(t: Tensor) -> dict[str, Any]:
    """A tensor as ``{"dtype", "shape", "data"}`` with base64 bytes (JSON-safe)."""
    arr = t.detach().cpu().contiguous().numpy()
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.tobytes()).decode(),
    }
