"""Named quantities of the paper, each a plain function returning a result with its cost."""

from .covariance import (
    CovarianceSpectrum,
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

# The registry of tracked measures by name. Imported here, before anything can import
# .sharpness, so that .tracked is complete when it registers the sharpness measure (which
# builds on it) at its end.
from .tracked import MEASURES

__all__ = [
    "MEASURES",
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
    "spectrum_of",
    "stability",
]
