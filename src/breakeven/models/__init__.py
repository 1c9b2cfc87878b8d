"""The paper's networks, built by name.

``build_model(name, input_shape=..., num_classes=..., **kwargs)``; ``list_models()``.

| name | network | parameters (default shape, classes) |
|---|---|---|
| ``mlp`` | 784-300-100-10, ReLU | 266,610 (1x28x28, 10) |
| ``simple_cnn`` | Keras CIFAR CNN, dense 128 | 361,898 (3x32x32, 10) |
| ``simple_cnn_bn`` | the same with BatchNorm after each hidden layer | 362,538 (3x32x32, 10) |
| ``resnet32`` | He et al.'s CIFAR ResNet-32, option-A shortcuts | 464,154 (3x32x32, 10) |
| ``lstm`` | embedding 128, LSTM 100, vocabulary 20,000, length 80 | 2,652,202 (80, 2) |
| ``densenet121`` | DenseNet-121 | 7,978,856 (3x224x224, 1000) |
| ``bert_base`` | BERT-base multilingual cased + 3-way head | 177,855,747 (40, 3) |

``mlp``, ``simple_cnn[_bn]`` and ``lstm`` start from Keras' default initialisation (the
paper's code was Keras; ``init='torch'`` for PyTorch's); ``resnet32`` and ``densenet121``
from Kaiming-normal convolutions; ``bert_base`` from N(0, 0.02) or a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .bert import BertClassifier, BertConfig, load_bert
from .densenet import DenseNet
from .lstm import LSTMClassifier
from .mlp import MLP
from .resnet import CifarResNet
from .simple_cnn import SimpleCNN

__all__ = [
    "MLP",
    "BertClassifier",
    "BertConfig",
    "CifarResNet",
    "DenseNet",
    "LSTMClassifier",
    "SimpleCNN",
    "build_model",
    "list_models",
    "load_bert",
    "register_model",
]

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, tuple[int, ...], int]] = {}


def register_model(
    name: str, default_input_shape: Sequence[int], default_num_classes: int
) -> Callable[[Builder], Builder]:
    """Register ``builder(input_shape, num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = (builder, tuple(default_input_shape), default_num_classes)
        return builder

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def default_input_shape(name: str) -> tuple[int, ...]:
    """Per-example input shape the model ``name`` is built for by default."""
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Builder, tuple[int, ...], int]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return _REGISTRY[name]


def build_model(
    name: str,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model ``name`` with freshly initialised parameters (from torch's global
    RNG: seed it, or use ``torch.random.fork_rng``, for reproducible weights).

    ``input_shape`` is the shape of one example (no batch dimension): ``(C, H, W)`` for
    images, ``(L,)`` for token sequences. ``kwargs`` go to the model's constructor.
    """
    builder, shape, classes = _lookup(name)
    shape = tuple(input_shape) if input_shape is not None else shape
    return builder(shape, num_classes if num_classes is not None else classes, **kwargs)


@register_model("mlp", (1, 28, 28), 10)
def _mlp(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return MLP(input_shape, num_classes, **kw)


@register_model("simple_cnn", (3, 32, 32), 10)
def _simple_cnn(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return SimpleCNN(input_shape, num_classes, batch_norm=False, **kw)


@register_model("simple_cnn_bn", (3, 32, 32), 10)
def _simple_cnn_bn(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return SimpleCNN(input_shape, num_classes, batch_norm=True, **kw)


@register_model("resnet32", (3, 32, 32), 10)
def _resnet32(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return CifarResNet(input_shape, num_classes, n=5, **kw)


@register_model("lstm", (80,), 2)
def _lstm(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return LSTMClassifier(input_shape, num_classes, **kw)


@register_model("densenet121", (3, 224, 224), 1000)
def _densenet121(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return DenseNet(input_shape, num_classes, **kw)


@register_model("bert_base", (40,), 3)
def _bert_base(
    input_shape: tuple[int, ...],
    num_classes: int,
    checkpoint: str | None = None,
    config: Any = None,
    **kw: Any,
) -> nn.Module:
    if kw:
        config = {**(config or {}), **kw}
    return load_bert(checkpoint, num_classes, config)
