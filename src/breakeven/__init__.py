"""breakeven: the break-even point of neural-network training.

Spectra of the gradient covariance K and of the Hessian H along any training trajectory
(Jastrzebski et al., ICLR 2020). The public API is flat: everything is imported from here.

The names are imported on first use (PEP 562): ``import breakeven`` imports neither torch nor
pandas, so code that only reads records (``breakeven.read_runs``, ``breakeven.verdicts``,
``breakeven show``) starts fast. ``breakeven.X`` is the object of the module defining it.
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
        CovarianceSpectrum,
        EigenResult,
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
    from .operators import GradientCovarianceOperator, HessianOperator, LinearOperator
    from .records import (
        RunFileError,
        RunStoreError,
        UnsafePathError,
        load_run,
        read_records,
        write_records,
    )
    from .records import export as export_run
    from .spectra import LanczosResult, SpectralDensity, TraceResult, hutchinson, lanczos, slq
    from .tracking import (
        MEASURES,
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
    from .train import TrainConfig, TrainHooks, TrainResult, train

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
            "CovarianceSpectrum",
            "EigenResult",
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
        ["GradientCovarianceOperator", "HessianOperator", "LinearOperator"], ".operators"
    ),
    **dict.fromkeys(
        [
            "RunFileError",
            "RunStoreError",
            "UnsafePathError",
            "load_run",
            "read_records",
            "write_records",
        ],
        ".records",
    ),
    "export_run": ".records:export",
    **dict.fromkeys(
        ["LanczosResult", "SpectralDensity", "TraceResult", "hutchinson", "lanczos", "slq"],
        ".spectra",
    ),
    **dict.fromkeys(
        [
            "MEASURES",
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
    **dict.fromkeys(["TrainConfig", "TrainHooks", "TrainResult", "train"], ".train"),
}
lazy_exports(__name__, _EXPORTS)

__all__ = [
    "MEASURES",
    "BatchNormScale",
    "ConfigError",
    "ConfigMismatchError",
    "Context",
    "CorruptDatasetError",
    "CovarianceSpectrum",
    "Dataset",
    "DatasetNotFoundError",
    "EdgeOfStability",
    "EigenResult",
    "GradientAlignment",
    "GradientCovariance",
    "GradientCovarianceOperator",
    "GradientNoiseScale",
    "HessianDensity",
    "HessianOperator",
    "HessianTop",
    "HessianTrace",
    "LanczosResult",
    "LearningRate",
    "LinearOperator",
    "LossChange",
    "Measure",
    "Measurement",
    "OutputDirError",
    "ParameterNorm",
    "Predictions",
    "ProbeMetrics",
    "RunConfig",
    "RunFileError",
    "RunOutcome",
    "RunStore",
    "RunStoreError",
    "Runs",
    "Schedule",
    "Sharpness",
    "SpectralDensity",
    "Stability",
    "SweepOutcome",
    "TraceResult",
    "Tracker",
    "TrainAccuracy",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "UnsafePathError",
    "ValidationMetrics",
    "__version__",
    "at",
    "augment_crop_flip",
    "break_even_points",
    "build_model",
    "build_tracker",
    "curvature_variance",
    "every",
    "export_run",
    "gradient_alignment",
    "gradient_covariance",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "hutchinson",
    "lanczos",
    "list_datasets",
    "list_models",
    "list_presets",
    "load_config",
    "load_dataset",
    "load_run",
    "log_spaced",
    "maxima",
    "per_epoch",
    "per_example_curvatures",
    "per_example_gradient_covariance",
    "plan_sweep",
    "read_records",
    "read_runs",
    "register_measure",
    "register_model",
    "run",
    "slq",
    "stability",
    "sweep",
    "train",
    "verdicts",
    "write_records",
]
