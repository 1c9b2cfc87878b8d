"""breakeven: the break-even point of neural-network training.

Spectra of the gradient covariance K and of the Hessian H along any training trajectory
(Jastrzebski et al., ICLR 2020). The public API is flat: everything is imported from here.
"""

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
from .operators import GradientCovarianceOperator, HessianOperator, LinearOperator
from .spectra import LanczosResult, SpectralDensity, TraceResult, hutchinson, lanczos, slq

__version__ = "0.1.0"

__all__ = [
    "CovarianceSpectrum",
    "EigenResult",
    "GradientCovarianceOperator",
    "HessianOperator",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "TraceResult",
    "__version__",
    "curvature_variance",
    "gradient_alignment",
    "gradient_covariance",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "hutchinson",
    "lanczos",
    "per_example_curvatures",
    "per_example_gradient_covariance",
    "slq",
    "stability",
]
