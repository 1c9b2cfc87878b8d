"""Bad input gets one readable sentence, raised before any heavy work."""

import pytest
import torch
from torch import nn

import breakeven as be

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
LOSS = nn.CrossEntropyLoss()
X, Y = torch.randn(10, 4), torch.randint(0, 2, (10,))
D = sum(p.numel() for p in MODEL.parameters())


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X[:0], Y[:0])), ValueError, "empty"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, []), ValueError, "empty"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y[:5])), ValueError, "targets"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, X), TypeError, r"tuple \(x, y\)"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), k=D + 1), ValueError, "larger than"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), k=0), ValueError, "k must be"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), tol=0), ValueError, "tol"),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), chunk_size=0), ValueError, "chunk"),
        (
            lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), bn_mode="batch"),
            ValueError,
            "bn_mode",
        ),
        (lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), method="fd"), ValueError, "method"),
        (
            lambda: be.hessian_eigenvalues(MODEL, LOSS, (X, Y), v0=torch.ones(3)),
            ValueError,
            "v0 has shape",
        ),
        (
            lambda: be.hessian_eigenvalues(MODEL, nn.CrossEntropyLoss(reduction="none"), (X, Y)),
            ValueError,
            "scalar",
        ),
        (
            lambda: be.hessian_eigenvalues(MODEL, LOSS, (X * float("nan"), Y)),
            ValueError,
            "not finite",
        ),
        (lambda: be.hessian_trace(MODEL, LOSS, (X, Y), num_samples=0), ValueError, "num_samples"),
        (lambda: be.gradient_covariance(MODEL, LOSS, [(X, Y)]), ValueError, "at least 2 batches"),
        (
            lambda: be.gradient_covariance(MODEL, LOSS, [(X[:4], Y[:4]), (X[4:], Y[4:])]),
            ValueError,
            "same size",
        ),
        (
            lambda: be.gradient_covariance(
                MODEL, LOSS, [(X[:5], Y[:5]), (X[5:] * float("inf"), Y[5:])]
            ),
            ValueError,
            "not finite",
        ),
        (
            lambda: be.per_example_gradient_covariance(MODEL, LOSS, X[:1], Y[:1]),
            ValueError,
            "at least 2",
        ),
        (
            lambda: be.curvature_variance(MODEL, LOSS, (X, Y), torch.ones(D - 1)),
            ValueError,
            "entries",
        ),
        (
            lambda: be.curvature_variance(MODEL, LOSS, (X, Y), [torch.ones(2)]),
            ValueError,
            "tensors",
        ),
        (lambda: be.stability(0.1, 10, 1, 1.0, 1.0), ValueError, "n_train"),
        (lambda: be.stability(0.1, 10, 100, 1.0, -1.0), ValueError, "curvature_variance"),
        (lambda: be.lanczos(torch.ones(3, 4)), ValueError, "square"),
        (lambda: be.lanczos([[1.0]]), TypeError, "LinearOperator"),
    ],
)
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_alignment_k_beyond_the_rank():
    s = be.gradient_covariance(MODEL, LOSS, [(X[:5], Y[:5]), (X[5:], Y[5:])])  # L = 2
    with pytest.raises(ValueError, match="L - 1 = 1"):
        be.gradient_alignment(torch.ones(D), s, k=5)
    with pytest.raises(ValueError, match="zero vector"):
        be.gradient_alignment(torch.zeros(D), s, k=1)


def test_model_without_trainable_parameters():
    frozen = nn.Linear(4, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        be.hessian_eigenvalues(frozen, LOSS, (X, Y))
