"""Measuring never changes the model or training: bitwise, with BatchNorm and dropout."""

import pytest
import torch
from torch import nn

import breakeven as be
from helpers import assert_same_state


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(3 * 4 * 4, 4),
    )


def snapshot(model):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "modes": [m.training for m in model.modules()],
        "tracking": [
            m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d)
        ],
        "rng": torch.get_rng_state(),
    }


def assert_same(a, b):
    for key in ("params", "buffers"):
        assert_same_state(a[key], b[key], key)
    for x, y in zip(a["grads"], b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert a["modes"] == b["modes"] and a["tracking"] == b["tracking"]
    assert torch.equal(a["rng"], b["rng"])


g = torch.Generator().manual_seed(1)
X, Y = torch.randn(24, 1, 6, 6, generator=g), torch.randint(0, 4, (24,), generator=g)
LOSS = nn.CrossEntropyLoss()
BATCHES = [(X[i : i + 6], Y[i : i + 6]) for i in range(0, 24, 6)]

CALLS = {
    "eigen_eval": lambda m: be.hessian_eigenvalues(m, LOSS, (X, Y), k=2),
    "eigen_train": lambda m: be.hessian_eigenvalues(
        m, LOSS, (X, Y), k=2, bn_mode="train", chunk_size=8
    ),
    "eigen_forward": lambda m: be.hessian_eigenvalues(m, LOSS, (X, Y), method="forward"),
    "trace": lambda m: be.hessian_trace(m, LOSS, (X, Y), num_samples=3),
    "density": lambda m: be.hessian_density(m, LOSS, (X, Y), num_probes=1, num_steps=5),
    "covariance": lambda m: be.gradient_covariance(m, LOSS, BATCHES),
    "per_example": lambda m: be.per_example_gradient_covariance(m, LOSS, X, Y),
    "curvature": lambda m: be.curvature_variance(
        m, LOSS, (X, Y), torch.ones(sum(p.numel() for p in m.parameters()))
    ),
    "curvature_reverse": lambda m: be.curvature_variance(
        m, LOSS, (X, Y), torch.ones(sum(p.numel() for p in m.parameters())), method="reverse"
    ),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("train_mode", [True, False])
def test_estimators_leave_the_model_bitwise_unchanged(call, train_mode):
    model = net().train(train_mode)
    LOSS(model(X), Y).backward()  # a populated .grad, and BN running statistics moved
    before = snapshot(model)
    CALLS[call](model)
    assert_same(before, snapshot(model))


def train(measure: bool, steps: int = 6):
    model = net().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(123)  # dropout masks come from the global RNG
    for step in range(steps):
        x, y = BATCHES[step % len(BATCHES)]
        opt.zero_grad()
        LOSS(model(x), y).backward()
        if measure:  # between backward and step, where a tracker sees the gradient
            for call in CALLS.values():
                call(model)
        opt.step()
    return [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]


def test_measuring_never_changes_training():
    for a, b in zip(train(False), train(True), strict=True):
        assert torch.equal(a, b)
