"""The private core (breakeven._core): the shared helpers that replaced the twins."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from breakeven._core.checks import check_int
from breakeven._core.formatting import fmt
from breakeven._core.functional import functional_loss, loss_and_gradient
from breakeven._core.params import trainable
from breakeven._core.state import BATCHNORM_TYPES, measuring
from cases import CASES, make_case


def test_torch_free_core_modules_import_no_torch():
    code = (
        "import sys, breakeven._core.checks, breakeven._core.formatting, breakeven.records; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("value", [1, 2, 7, 10**12])
def test_check_int_returns_integers_in_range(value):
    assert check_int(value, "n") == value
    assert check_int(value, "n", 1, 10**12) == value


@pytest.mark.parametrize("value", [0, -3, 2.0, 2.5, "2", True, False, None, float("nan")])
def test_check_int_refuses_non_positive_and_non_integers(value):
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got .* \(not a positive"):
        check_int(value, "n")


@pytest.mark.parametrize(
    ("value", "minimum", "maximum", "name", "message"),
    [
        (1, 2, None, "", r"^n must be an integer >= 2, got 1$"),
        (0, 1, 5, "", r"^n must be an integer in \[1, 5\], got 0$"),
        (6, 1, 5, "", r"^n must be an integer in \[1, 5\], got 6$"),
        (6, 1, 5, "n_train", r"^n must be an integer in \[1, n_train=5\], got 6$"),
        (True, 0, 5, "", r"^n must be an integer in \[0, 5\], got True$"),
    ],
)
def test_check_int_names_the_bounds(value, minimum, maximum, name, message):
    with pytest.raises(ValueError, match=message):
        check_int(value, "n", minimum, maximum, maximum_name=name)


def test_check_int_optional_accepts_none_and_says_so():
    assert check_int(None, "chunk_size", optional=True) is None
    with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1 or None, got 0"):
        check_int(0, "chunk_size", optional=True)
    with pytest.raises(ValueError, match="got None"):
        check_int(None, "chunk_size")


@pytest.mark.parametrize(
    ("value", "kwargs", "text"),
    [
        (0.123456, {}, "0.1235"),
        (np.float32(0.5), {}, "0.5"),
        (np.float64(1e-9), {"spec": ".3g"}, "1e-09"),
        (float("nan"), {}, "nan"),
        (np.float64("nan"), {"nan": "-"}, "-"),
        (float("inf"), {}, "inf"),
        (None, {}, "-"),
        (None, {"missing": "None"}, "None"),
        (12345678, {"spec": "g"}, "12345678"),  # an integer is never rounded
        (np.int64(3), {}, "3"),
        (True, {}, "True"),
        ("adam", {}, "adam"),
        (0.25, {"spec": ".4f"}, "0.2500"),
    ],
)
def test_fmt_formats_floats_only(value, kwargs, text):
    assert fmt(value, **kwargs) == text


def test_every_caller_of_fmt_keeps_its_format():
    from breakeven.cli import _fmt as cli_fmt

    assert [cli_fmt(v) for v in (None, math.nan, 0.123456)] == ["-", "-", "0.1235"]
    assert cli_fmt(40, "d") == "40"
    # the progress line (experiments.runner), the legends (plotting), the verdicts
    assert fmt(math.nan, ".3g") == "nan" and fmt(None, ".3g") == "-"
    assert fmt(1e-4, "g", missing="None") == "0.0001" and fmt(None, "g", missing="None") == "None"
    assert fmt(np.float64(2.0) / 3) == "0.6667"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scale", [None, 0.25])
def test_loss_and_gradient_equals_backward(name, scale):
    c = make_case(name)
    params = trainable(c.model)
    before = {n: p.clone() for n, p in params.items()}
    with measuring(c.model):
        f = functional_loss(c.model, c.loss_fn)
        leaves, loss, grads = loss_and_gradient(f, params, c.x, c.y, scale=scale)
        c.model.zero_grad()
        ref = c.loss_fn(c.model(c.x), c.y)
        ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    for (n, p), g, leaf in zip(c.model.named_parameters(), grads, leaves, strict=True):
        torch.testing.assert_close(g, p.grad * (1 if scale is None else scale))
        assert leaf is not params[n] and not g.requires_grad
        torch.testing.assert_close(params[n], before[n], rtol=0, atol=0)


@pytest.mark.parametrize("create_graph", [False, True])
def test_loss_and_gradient_gives_zero_for_an_unused_parameter(create_graph):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(3, 1)).double()  # the second is unused

    def first_only(params, x, y):
        first = {k[2:]: v for k, v in params.items() if k.startswith("0.")}
        out = torch.func.functional_call(model[0], first, (x,))
        return ((out.sum(1) - y) ** 2).mean()

    params = trainable(model)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    _, _, grads = loss_and_gradient(first_only, params, x, y, create_graph=create_graph)
    assert [float(g.detach().abs().sum()) for g in grads[2:]] == [0.0, 0.0]
    assert all(g.shape == p.shape for g, p in zip(grads, params.values()))
    assert grads[0].requires_grad == create_graph


def test_batchnorm_types_cover_every_batchnorm():
    layers = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2)]
    assert all(isinstance(m, BATCHNORM_TYPES) for m in layers)
    assert not isinstance(nn.LayerNorm(2), BATCHNORM_TYPES)
