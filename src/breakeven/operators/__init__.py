"""What the matrices are: the Hessian and the gradient covariance as linear operators."""

from .covariance import GradientCovarianceOperator, batch_gradients, per_example_gradients
from .hessian import HessianOperator
from .linear import LinearOperator
from .preconditioned import PreconditionedOperator, adam_preconditioner

__all__ = [
    "GradientCovarianceOperator",
    "HessianOperator",
    "LinearOperator",
    "PreconditionedOperator",
    "adam_preconditioner",
    "batch_gradients",
    "per_example_gradients",
]
