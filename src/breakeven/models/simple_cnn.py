"""SimpleCNN (paper App. D), after the Keras ``cifar10_cnn`` example.

conv3x3(32, 'same') - conv3x3(32, 'valid') - maxpool 2 - conv3x3(64, 'same') -
conv3x3(64, 'valid') - maxpool 2 - dense 128 - dense ``num_classes``, ReLU after each
hidden layer. On 32x32x3 input with 10 classes it has exactly 361,898 parameters.
The BN variant (``simple_cnn_bn``, paper Sec. 4.4) puts BatchNorm after each
hidden layer, before its ReLU, and keeps the conv/dense biases (362,538 parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import check_input, keras_init_


def _block(c_in: int, c_out: int, padding: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=padding)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, nn.ReLU()]


class SimpleCNN(nn.Module):
    """Four 3x3 convolutions, two max-pools and a 128-unit dense layer.

    ``input_shape`` is ``(C, H, W)``; input must be ``(N, C, H, W)``. ``init='keras'``
    (default): Glorot-uniform kernels, zero biases, as in the paper's Keras code; with
    PyTorch's smaller default init (``init='torch'``) training starts much slower.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        batch_norm: bool = False,
        init: str = "keras",
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        self.input_shape = (c, h, w)
        self.features = nn.Sequential(
            *_block(c, 32, 1, batch_norm),
            *_block(32, 32, 0, batch_norm),
            nn.MaxPool2d(2),
            *_block(32, 64, 1, batch_norm),
            *_block(64, 64, 0, batch_norm),
            nn.MaxPool2d(2),
        )
        side_h, side_w = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
        if side_h < 1 or side_w < 1:
            raise ValueError(f"SimpleCNN needs images of at least 10x10, got {h}x{w}")
        dense: list[nn.Module] = [nn.Flatten(), nn.Linear(64 * side_h * side_w, 128)]
        if batch_norm:
            dense.append(nn.BatchNorm1d(128))
        self.classifier = nn.Sequential(*dense, nn.ReLU(), nn.Linear(128, num_classes))
        if init == "keras":
            keras_init_(self)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        check_input(type(self).__name__, x, self.input_shape, integer=False)
        return self.classifier(self.features(x))
