"""What the matrices are: the Hessian and the gradient covariance as linear operators."""

from .base import LinearOperator
from .covariance import GradientCovarianceOperator, batch_gradients, per_example_gradients
from .hessian import HessianOperator

__all__ = [
    "GradientCovarianceOperator",
    "HessianOperator",
    "LinearOperator",
    "batch_gradients",
    "per_example_gradients",
]
