"""breakeven: the break-even point of neural-network training.

Spectra of the gradient covariance K and of the Hessian H along any training trajectory
(Jastrzebski et al., ICLR 2020). Every public name is imported from here (``import breakeven
as be``), once: ``breakeven.X`` is the object of the module defining it, and no other
package re-exports it. ``__all__`` is grouped by purpose:

- **Measure in your own loop**: the :class:`Tracker` (its ``out_dir`` writes a run
  directory), schedules (:func:`every`, :func:`at`, :func:`log_spaced`, :func:`per_epoch`),
  the measures (by name in :data:`MEASURES`, or as classes) and the contract of a new one
  (:class:`Measure`, :func:`register_measure`).
- **Quantities, one call each**: K (:func:`gradient_covariance`,
  :func:`per_example_gradient_covariance`, :func:`covariance_from_gradients`), per-example
  gradients, the Hessian's top eigenpairs, trace and density, Eq. 1, and their results.
- **Building blocks**: the linear operators and the spectral algorithms that take either
  an operator or a dense tensor.
- **Records and run directories**: read and export what a run wrote.
- **Reproduce the paper**: the training loop, configs, presets, sweeps, models, datasets.
- **Analysis**: break-even points and the conjecture verdicts, from records only.

The names are imported on first use (PEP 562): ``import breakeven`` imports neither torch nor
pandas, so code that only reads records (``breakeven.read_runs``, ``breakeven.verdicts``,
``breakeven show``) starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover  (for type checkers; _EXPORTS says the same at run time)
    from .analysis import Runs, break_even_points, maxima, read_runs, verdicts
    from .data import Dataset, augment_crop_flip, list_datasets, load_dataset
    from .errors import ConfigError, CorruptDatasetError, DatasetNotFoundError
    from .experiments import RunConfig, RunOutcome, SweepOutcome, plan_sweep, run, sweep
    from .experiments.configs import list_presets, load_config
    from .measures import (
        MEASURES,
        CovarianceSpectrum,
        EigenResult,
        covariance_from_gradients,
        curvature_variance,
        gradient_alignment,
        gradient_covariance,
        hessian_density,
        hessian_eigenvalues,
        hessian_trace,
        per_example_curvatures,
        per_example_gradient_covariance,
        stability,
    )
    from .measures.base import Context, Measure, Measurement, register_measure
    from .measures.sharpness import Sharpness
    from .measures.tracked import (
        BatchNormScale,
        EdgeOfStability,
        GradientAlignment,
        GradientCovariance,
        GradientNoiseScale,
        HessianDensity,
        HessianTop,
        HessianTrace,
        LearningRate,
        LossChange,
        ParameterNorm,
        Predictions,
        ProbeMetrics,
        Stability,
        TrainAccuracy,
        ValidationMetrics,
    )
    from .models import build_model, list_models, register_model
    from .operators import (
        GradientCovarianceOperator,
        HessianOperator,
        LinearOperator,
        per_example_gradients,
    )
    from .records import (
        RunFileError,
        RunStoreError,
        UnsafePathError,
        export_run,
        load_run,
        read_records,
        write_records,
    )
    from .spectra import LanczosResult, SpectralDensity, TraceResult, hutchinson, lanczos, slq
    from .tracking import (
        ConfigMismatchError,
        OutputDirError,
        RunStore,
        Schedule,
        Tracker,
        at,
        build_tracker,
        every,
        log_spaced,
        per_epoch,
    )
    from .tracking.hooks import TrainHooks
    from .train import TrainConfig, TrainResult, train

__version__ = "0.1.0"

#: Each public name and the module it comes from (``module:name`` when renamed here).
_EXPORTS = {
    **dict.fromkeys(["Runs", "break_even_points", "maxima", "read_runs", "verdicts"], ".analysis"),
    **dict.fromkeys(["Dataset", "augment_crop_flip", "list_datasets", "load_dataset"], ".data"),
    **dict.fromkeys(["ConfigError", "CorruptDatasetError", "DatasetNotFoundError"], ".errors"),
    **dict.fromkeys(
        ["RunConfig", "RunOutcome", "SweepOutcome", "plan_sweep", "run", "sweep"], ".experiments"
    ),
    **dict.fromkeys(["list_presets", "load_config"], ".experiments.configs"),
    **dict.fromkeys(
        [
            "MEASURES",
            "CovarianceSpectrum",
            "EigenResult",
            "covariance_from_gradients",
            "curvature_variance",
            "gradient_alignment",
            "gradient_covariance",
            "hessian_density",
            "hessian_eigenvalues",
            "hessian_trace",
            "per_example_curvatures",
            "per_example_gradient_covariance",
            "stability",
        ],
        ".measures",
    ),
    **dict.fromkeys(["Context", "Measure", "Measurement", "register_measure"], ".measures.base"),
    "Sharpness": ".measures.sharpness",
    **dict.fromkeys(
        [
            "BatchNormScale",
            "EdgeOfStability",
            "GradientAlignment",
            "GradientCovariance",
            "GradientNoiseScale",
            "HessianDensity",
            "HessianTop",
            "HessianTrace",
            "LearningRate",
            "LossChange",
            "ParameterNorm",
            "Predictions",
            "ProbeMetrics",
            "Stability",
            "TrainAccuracy",
            "ValidationMetrics",
        ],
        ".measures.tracked",
    ),
    **dict.fromkeys(["build_model", "list_models", "register_model"], ".models"),
    **dict.fromkeys(
        [
            "GradientCovarianceOperator",
            "HessianOperator",
            "LinearOperator",
            "per_example_gradients",
        ],
        ".operators",
    ),
    **dict.fromkeys(
        [
            "RunFileError",
            "RunStoreError",
            "UnsafePathError",
            "export_run",
            "load_run",
            "read_records",
            "write_records",
        ],
        ".records",
    ),
    **dict.fromkeys(
        ["LanczosResult", "SpectralDensity", "TraceResult", "hutchinson", "lanczos", "slq"],
        ".spectra",
    ),
    **dict.fromkeys(
        [
            "ConfigMismatchError",
            "OutputDirError",
            "RunStore",
            "Schedule",
            "Tracker",
            "at",
            "build_tracker",
            "every",
            "log_spaced",
            "per_epoch",
        ],
        ".tracking",
    ),
    **dict.fromkeys(["TrainConfig", "TrainResult", "train"], ".train"),
    "TrainHooks": ".tracking.hooks",
}
lazy_exports(__name__, _EXPORTS)

__all__ = [  # noqa: RUF022  (grouped by purpose, as the docstring)
    "__version__",
    # -- measure in your own loop: the Tracker, schedules, measures
    "Tracker",
    "build_tracker",
    "Schedule",
    "every",
    "at",
    "log_spaced",
    "per_epoch",
    "MEASURES",
    "GradientCovariance",
    "GradientAlignment",
    "GradientNoiseScale",
    "HessianTop",
    "HessianTrace",
    "HessianDensity",
    "Sharpness",
    "Stability",
    "EdgeOfStability",
    "LossChange",
    "ProbeMetrics",
    "ValidationMetrics",
    "TrainAccuracy",
    "BatchNormScale",
    "ParameterNorm",
    "LearningRate",
    "Predictions",
    # -- write your own measure
    "Measure",
    "Measurement",
    "Context",
    "register_measure",
    # -- quantities, one call each, and their results
    "gradient_covariance",
    "per_example_gradient_covariance",
    "covariance_from_gradients",
    "per_example_gradients",
    "gradient_alignment",
    "CovarianceSpectrum",
    "hessian_eigenvalues",
    "EigenResult",
    "hessian_trace",
    "hessian_density",
    "curvature_variance",
    "per_example_curvatures",
    "stability",
    # -- building blocks: linear operators and spectral algorithms
    "LinearOperator",
    "HessianOperator",
    "GradientCovarianceOperator",
    "lanczos",
    "LanczosResult",
    "slq",
    "SpectralDensity",
    "hutchinson",
    "TraceResult",
    # -- records and run directories
    "load_run",
    "read_records",
    "write_records",
    "export_run",
    "RunStore",
    "RunStoreError",
    "RunFileError",
    "UnsafePathError",
    "OutputDirError",
    "ConfigMismatchError",
    # -- reproduce the paper: training, configs, presets, sweeps, models, datasets
    "train",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "run",
    "RunConfig",
    "RunOutcome",
    "sweep",
    "plan_sweep",
    "SweepOutcome",
    "list_presets",
    "load_config",
    "ConfigError",
    "build_model",
    "list_models",
    "register_model",
    "Dataset",
    "load_dataset",
    "list_datasets",
    "augment_crop_flip",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    # -- analysis: break-even points and conjecture verdicts, from records only
    "read_runs",
    "Runs",
    "break_even_points",
    "maxima",
    "verdicts",
]
