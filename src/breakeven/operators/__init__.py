"""What the matrices are: the Hessian and the gradient covariance as linear operators."""

from .covariance import GradientCovarianceOperator, batch_gradients, per_example_gradients
from .hessian import HessianOperator
from .linear import LinearOperator

__all__ = [
    "GradientCovarianceOperator",
    "HessianOperator",
    "LinearOperator",
    "batch_gradients",
    "per_example_gradients",
]
