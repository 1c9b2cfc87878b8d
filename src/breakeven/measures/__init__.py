"""Named quantities of the paper, each a plain function returning a result with its cost,
and a schedulable :class:`Measure` (the contract in :mod:`.base`; the built-in ones, in
:mod:`.tracked`, are registered when this package is imported)."""

from . import preconditioned as _preconditioned  # noqa: F401  (registers Adam's measures)
from . import sharpness as _sharpness  # noqa: F401  (registers the sharpness measure)
from . import tracked as _tracked  # noqa: F401  (registers the built-in measures)
from .base import MEASURES, Context, Measure, Measurement, register_measure
from .covariance import (
    CovarianceSpectrum,
    covariance_from_gradients,
    gradient_alignment,
    gradient_covariance,
    per_example_gradient_covariance,
    spectrum_of,
)
from .hessian import (
    EigenResult,
    curvature_variance,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    per_example_curvatures,
    stability,
)
from .preconditioned import preconditioned_covariance, preconditioned_sharpness

__all__ = [
    "MEASURES",
    "Context",
    "CovarianceSpectrum",
    "EigenResult",
    "Measure",
    "Measurement",
    "covariance_from_gradients",
    "curvature_variance",
    "gradient_alignment",
    "gradient_covariance",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "per_example_curvatures",
    "per_example_gradient_covariance",
    "preconditioned_covariance",
    "preconditioned_sharpness",
    "register_measure",
    "spectrum_of",
    "stability",
]
