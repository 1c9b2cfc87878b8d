"""The paper's multi-layer perceptron (App. E): 784-300-100-10 with ReLU."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ._common import check_input, keras_init_


class MLP(nn.Module):
    """Fully connected ReLU network.

    Accepts ``(N, in_features)`` or any ``(N, *input_shape)`` whose product is
    ``in_features`` (e.g. FashionMNIST's ``(N, 1, 28, 28)``), flattened row-major.
    The default 784-300-100-10 network has 266,610 parameters. ``init='keras'`` (default)
    draws Glorot-uniform weights and zero biases as the paper's Keras model did;
    ``init='torch'`` keeps PyTorch's defaults.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (300, 100),
        init: str = "keras",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        in_features = math.prod(self.input_shape)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        if init == "keras":
            keras_init_(self)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.in_features:
            return self.net(x)
        check_input("MLP", x, self.input_shape, integer=False)
        return self.net(x.flatten(1))
