"""Shared helpers for the model zoo: input-shape validation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._core.state import BATCHNORM_TYPES


def check_input(
    model_name: str,
    x: Tensor,
    trailing: Sequence[int | None],
    *,
    integer: bool | None = None,
) -> None:
    """Raise ``ValueError`` unless ``x`` has shape ``(N, *trailing)``.

    ``None`` in ``trailing`` matches any size. ``integer=True`` requires an integer dtype
    (token ids), ``integer=False`` a floating dtype.
    """
    expected = "(N, " + ", ".join("*" if t is None else str(t) for t in trailing) + ")"
    ok = x.dim() == len(trailing) + 1 and all(
        t is None or s == t for s, t in zip(x.shape[1:], trailing, strict=True)
    )
    if not ok:
        raise ValueError(f"{model_name} expects input of shape {expected}, got {tuple(x.shape)}")
    if integer is True and (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{model_name} expects integer token ids, got dtype {x.dtype}")
    if integer is False and not x.is_floating_point():
        raise ValueError(f"{model_name} expects a floating-point input, got dtype {x.dtype}")


def keras_init_(module: nn.Module) -> nn.Module:
    """Re-initialise ``module`` in place with Keras' defaults, as the paper's Keras models
    were: Glorot-uniform dense/conv kernels and LSTM input kernels, orthogonal LSTM
    recurrent kernels, zero biases except the LSTM forget gate's (1, ``unit_forget_bias``),
    embeddings uniform in [-0.05, 0.05]; BatchNorm scale 1, shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, -0.05, 0.05)
        elif isinstance(m, nn.LSTM):
            h = m.hidden_size
            for name, p in m.named_parameters():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(p)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(p)
                else:
                    nn.init.zeros_(p)
                    if name.startswith("bias_ih"):  # gates i, f, g, o: forget bias 1
                        nn.init.ones_(p[h : 2 * h])
        elif isinstance(m, BATCHNORM_TYPES):
            m.reset_parameters()
    return module
