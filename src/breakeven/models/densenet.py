"""DenseNet-121 (Huang et al., 2016) for ImageNet, written here so the project does not
depend on torchvision. Growth rate 32, blocks (6, 12, 24, 16), bottleneck width 4k,
compression 0.5, 64 initial features: 7,978,856 parameters with 1,000 classes (the same
count and layer layout as ``torchvision.models.densenet121``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_input


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        out = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(F.relu(self.norm2(out)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n_layers: int, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n_layers):
            self[f"denselayer{i + 1}"] = _DenseLayer(c_in + i * growth, growth, bn_size)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """DenseNet-BC; the defaults give DenseNet-121. Input ``(N, 3, H, W)``, H, W >= 32."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 224, 224),
        num_classes: int = 1000,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        c = self.input_shape[0]
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(c, num_init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        width = num_init_features
        for i, n_layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}", _DenseBlock(n_layers, width, growth_rate, bn_size)
            )
            width += n_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(width, width // 2))
                width //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(width))
        self.classifier = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_input("DenseNet", x, (self.input_shape[0], None, None), integer=False)
        if x.shape[2] < 32 or x.shape[3] < 32:
            raise ValueError(f"DenseNet expects images of at least 32x32, got {tuple(x.shape[2:])}")
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)
