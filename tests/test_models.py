"""The model zoo: published parameter counts, forward/backward, input validation, BERT
checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from breakeven.models import BertConfig, build_model, list_models, load_bert
from helpers import assert_same_state

# Published or derived figures (see each model's docstring).
COUNTS = {
    "mlp": 266_610,  # 784*300+300 + 300*100+100 + 100*10+10
    "simple_cnn": 361_898,  # Keras cifar10_cnn with a 128-unit dense layer
    "simple_cnn_bn": 362_538,  # + 2 * (32 + 32 + 64 + 64 + 128) BatchNorm scales/shifts
    "resnet32": 464_154,  # He et al. 2015, "0.46M"
    "lstm": 2_652_202,  # embedding 20000x128, LSTM(128->100), linear 100->2
    "densenet121": 7_978_856,  # Huang et al. 2016 / torchvision
    "bert_base": 177_853_440 + 768 * 3 + 3,  # multilingual cased BERT-base + MNLI head
}


TINY_BERT = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model() -> None:
    assert list_models() == sorted(COUNTS)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_matches_published_figure(name: str) -> None:
    with torch.device("meta"):  # no memory, no init cost: shapes only
        model = build_model(name)
    assert n_params(model) == COUNTS[name]


def test_bert_base_uncased_count() -> None:
    with torch.device("meta"):
        model = build_model("bert_base", config={"vocab_size": 30_522}, num_classes=2)
    assert n_params(model) == 109_482_240 + 768 * 2 + 2  # the "110M" BERT-base


def _tiny_input(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "lstm":
        return build_model(name), torch.randint(0, 20_000, (3, 80), generator=g)
    if name == "bert_base":
        ids = torch.randint(1, 50, (3, 12), generator=g)
        x = torch.stack([ids, torch.zeros_like(ids), torch.ones_like(ids)], 1)
        x[0, 2, 8:] = 0  # padded tail
        return build_model(name, config=TINY_BERT), x
    if name == "mlp":
        return build_model(name), torch.rand(3, 1, 28, 28, generator=g)
    if name == "densenet121":  # the smallest image it accepts keeps this fast
        return build_model(name, num_classes=7), torch.randn(3, 3, 32, 32, generator=g)
    return build_model(name), torch.randn(3, 3, 32, 32, generator=g)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_forward_and_backward_on_a_tiny_batch(name: str) -> None:
    torch.manual_seed(0)
    model, x = _tiny_input(name)
    model.train()
    out = model(x)
    assert out.shape[0] == 3 and out.dim() == 2 and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(
    ("name", "x", "message"),
    [
        (
            "simple_cnn",
            torch.zeros(2, 1, 28, 28),
            r"SimpleCNN expects input of shape \(N, 3, 32, 32\)",
        ),
        ("simple_cnn_bn", torch.zeros(2, 3, 28, 28), r"\(N, 3, 32, 32\), got \(2, 3, 28, 28\)"),
        ("mlp", torch.zeros(2, 3, 32, 32), r"MLP expects input of shape \(N, 1, 28, 28\)"),
        ("resnet32", torch.zeros(2, 32, 32), r"ResNet expects input of shape \(N, 3, \*, \*\)"),
        ("lstm", torch.zeros(2, 80), "integer token ids"),
        ("lstm", torch.zeros(2, 81, dtype=torch.long), r"\(N, 80\), got \(2, 81\)"),
        ("lstm", torch.full((2, 80), 20_000), r"token ids in \[0, 20000\)"),
        ("densenet121", torch.zeros(2, 3, 16, 16), "at least 32x32"),
    ],
)
def test_wrong_input_shape_names_the_expected_one(name: str, x: torch.Tensor, message: str) -> None:
    model = build_model(name)
    with pytest.raises(ValueError, match=message):
        model(x)


def test_bert_rejects_bad_input() -> None:
    model = build_model("bert_base", config=TINY_BERT)
    with pytest.raises(ValueError, match=r"\(N, L\), \(N, 2, L\) or \(N, 3, L\)"):
        model(torch.zeros(2, 5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 32 tokens"):
        model(torch.ones(2, 33, dtype=torch.long))


def test_mlp_accepts_flat_input_and_other_shapes() -> None:
    mlp = build_model("mlp", input_shape=(1, 8, 8), hidden=(5,))
    assert mlp(torch.zeros(4, 64)).shape == (4, 10)
    assert mlp(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    cnn = build_model("simple_cnn", input_shape=(1, 28, 28))  # FashionMNIST-shaped
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*'mlp'"):
        build_model("vgg")


def test_same_seed_same_initialisation() -> None:
    torch.manual_seed(3)
    a = build_model("resnet32").state_dict()
    torch.manual_seed(3)
    b = build_model("resnet32").state_dict()
    assert_same_state(a, b)


def test_bert_loads_a_local_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    src = build_model("bert_base", config=TINY_BERT).eval()
    state = {}
    for k, v in src.state_dict().items():  # the old TF-converted naming, plus a head to skip
        state[
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
        ] = v
    state["cls.predictions.bias"] = torch.zeros(50)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**TINY_BERT, "model_type": "bert"}))

    loaded = build_model("bert_base", checkpoint=str(tmp_path)).eval()
    assert loaded.config == BertConfig.from_mapping(TINY_BERT)
    x = torch.randint(1, 50, (2, 10))
    torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)

    del state["bert.encoder.layer.1.output.dense.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lacks 1 encoder weights"):
        load_bert(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_bert(tmp_path / "absent")


def test_keras_initialisation() -> None:
    torch.manual_seed(0)
    lstm = build_model("lstm")
    h = 100
    assert torch.equal(lstm.lstm.bias_ih_l0[h : 2 * h], torch.ones(h))  # unit forget bias
    assert lstm.lstm.bias_hh_l0.eq(0).all() and lstm.embedding.weight.abs().max() <= 0.05
    w = lstm.lstm.weight_hh_l0
    torch.testing.assert_close(w.T @ w, torch.eye(h), atol=1e-5, rtol=0)  # orthogonal
    cnn = build_model("simple_cnn")
    conv = cnn.features[0]
    assert conv.bias.eq(0).all()
    limit = (6 / (3 * 9 + 32 * 9)) ** 0.5  # Glorot uniform: fan_in + fan_out
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.9 * limit
    torch_init = build_model("mlp", init="torch")
    assert not torch_init.net[0].bias.eq(0).all()
    with pytest.raises(ValueError, match="init must be 'keras' or 'torch'"):
        build_model("mlp", init="glorot")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_double_backward_for_hessian_vector_products(name: str) -> None:
    """The Hessian operators differentiate twice (reverse over reverse): every model
    must support it, LSTM and train-mode BatchNorm included."""
    torch.manual_seed(0)
    model, x = _tiny_input(name)
    model.train()
    y = torch.zeros(x.shape[0], dtype=torch.long)
    ps = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, ps, create_graph=True)
    v = [torch.randn_like(p) for p in ps]
    hv = torch.autograd.grad(grads, ps, grad_outputs=v, allow_unused=True)
    assert any(h is not None and h.abs().sum() > 0 for h in hv)
