"""A catalogue of tiny float64 cases with exact dense answers (after curvlinops' test/cases.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn


class LastStep(nn.Module):
    """Embedding -> LSTM -> linear read-out of the last hidden state."""

    def __init__(self, vocab: int = 7, emb: int = 3, hidden: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.out(h[:, -1])


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    has_bn: bool = False
    forward_mode: bool = True  # torch.func.jvp works on this model

    @property
    def data(self):
        return self.x, self.y


def make_case(name: str, n: int = 12, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ce = nn.CrossEntropyLoss()
    if name == "linear_mse":
        model = nn.Linear(4, 1)
        x = torch.randn(n, 4, generator=g)
        return Case(
            name, model.double(), nn.MSELoss(), x.double(), torch.randn(n, 1, generator=g).double()
        )
    if name == "mlp_ce":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(n, 5, generator=g)
        return Case(name, model.double(), ce, x.double(), torch.randint(0, 3, (n,), generator=g))
    if name in ("cnn", "cnn_bn"):
        bn = name == "cnn_bn"
        layers = [nn.Conv2d(1, 2, 3)]
        if bn:
            layers.append(nn.BatchNorm2d(2))
        layers += [nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)]
        model = nn.Sequential(*layers).double()
        if bn:  # non-trivial running statistics and affine parameters
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
            model[1].weight.data.uniform_(0.5, 1.5)
            model[1].bias.data.uniform_(-0.5, 0.5)
        x = torch.randn(n, 1, 6, 6, generator=g).double()
        return Case(name, model, ce, x, torch.randint(0, 3, (n,), generator=g), has_bn=bn)
    if name == "lstm":
        model = LastStep().double()
        x = torch.randint(0, 7, (n, 4), generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        return Case(name, model, ce, x, y, forward_mode=False)
    raise KeyError(name)


CASES = ["linear_mse", "mlp_ce", "cnn", "cnn_bn", "lstm"]


@functools.cache
def exact_hessian(name: str) -> torch.Tensor:
    """The dense float64 Hessian of the case ``name`` (12 examples, eval mode), computed once
    per session: do not modify it."""
    from breakeven.operators.dense import dense_hessian

    c = make_case(name)
    return dense_hessian(c.model, c.loss_fn, c.data)
