"""breakeven: the break-even point of neural-network training.

Spectra of the gradient covariance K and of the Hessian H along any training trajectory
(Jastrzebski et al., ICLR 2020). The public API is flat: everything is imported from here.
"""

from .data import (
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    augment_crop_flip,
    list_datasets,
    load_dataset,
)
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
from .models import build_model, list_models, register_model
from .operators import GradientCovarianceOperator, HessianOperator, LinearOperator
from .spectra import LanczosResult, SpectralDensity, TraceResult, hutchinson, lanczos, slq
from .train import ConfigError, TrainConfig, TrainHooks, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptDatasetError",
    "CovarianceSpectrum",
    "Dataset",
    "DatasetNotFoundError",
    "EigenResult",
    "GradientCovarianceOperator",
    "HessianOperator",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "TraceResult",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "__version__",
    "augment_crop_flip",
    "build_model",
    "curvature_variance",
    "gradient_alignment",
    "gradient_covariance",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "hutchinson",
    "lanczos",
    "list_datasets",
    "list_models",
    "load_dataset",
    "per_example_curvatures",
    "per_example_gradient_covariance",
    "register_model",
    "slq",
    "stability",
    "train",
]
