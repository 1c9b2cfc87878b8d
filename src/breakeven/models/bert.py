"""BERT-base for sequence classification (Devlin et al., 2018), written in plain PyTorch.

Module and parameter names match Hugging Face's ``BertForSequenceClassification``, so a
local checkpoint saved by ``transformers`` (``pytorch_model.bin`` / ``model.safetensors``
with ``config.json``, or a bare state-dict file) loads without ``transformers``.
The default configuration is the paper's multilingual cased BERT-base (vocabulary 119,547,
12 layers, hidden 768, 12 heads, feed-forward 3,072, 512 positions): 177,853,440
parameters in the encoder and pooler, plus 768 x 3 + 3 for the 3-class MNLI head
(177,855,747 in all). Attention is written out (no fused kernel) so that double backward
(Hessian-vector products) works.

Input: ``(N, L)`` token ids, or ``(N, 2, L)`` ids and token-type ids, or ``(N, 3, L)``
ids, token types and attention mask (1 = attend). Without a mask, id 0 ([PAD]) is masked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BertConfig:
    """The subset of Hugging Face's ``BertConfig`` that defines the network."""

    vocab_size: int = 119_547
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> BertConfig:
        """Keep the known keys of a ``config.json`` mapping, ignore the others."""
        names = {f.name for f in fields(cls)}
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act='gelu' is supported, got {d['hidden_act']!r}")
        return cls(**{k: v for k, v in d.items() if k in names})


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, ids: Tensor, token_types: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.word_embeddings(ids) + self.position_embeddings(pos)
        h = h + self.token_type_embeddings(token_types)
        return self.dropout(self.LayerNorm(h))


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout = nn.Dropout(c.attention_probs_dropout_prob)

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        n, length, width = h.shape

        def split(t: Tensor) -> Tensor:
            return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        ctx = self.dropout(scores.softmax(-1)) @ v
        return ctx.transpose(1, 2).reshape(n, length, width)


class _DenseResidual(nn.Module):
    def __init__(self, d_in: int, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseResidual(c.hidden_size, c)

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        return self.output(self.self(h, bias), h)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, h: Tensor) -> Tensor:
        return F.gelu(self.dense(h))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseResidual(c.intermediate_size, c)

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        h = self.attention(h, bias)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class _Bert(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)


class BertClassifier(nn.Module):
    """BERT encoder, pooler ([CLS] -> dense -> tanh), dropout and a linear head."""

    def __init__(self, config: BertConfig | None = None, num_classes: int = 3) -> None:
        super().__init__()
        self.config = config or BertConfig()
        self.bert = _Bert(self.config)
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, num_classes)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            ids, types, mask = x, torch.zeros_like(x), x != 0
        elif x.dim() == 3 and x.shape[1] in (2, 3):
            ids, types = x[:, 0], x[:, 1]
            mask = x[:, 2] != 0 if x.shape[1] == 3 else ids != 0
        else:
            raise ValueError(
                "BertClassifier expects input of shape (N, L), (N, 2, L) or (N, 3, L), "
                f"got {tuple(x.shape)}"
            )
        if x.is_floating_point():
            raise ValueError(f"BertClassifier expects integer token ids, got dtype {x.dtype}")
        c = self.config
        if ids.shape[1] > c.max_position_embeddings:
            raise ValueError(
                f"BertClassifier accepts at most {c.max_position_embeddings} tokens, "
                f"got {ids.shape[1]}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"BertClassifier expects token ids in [0, {c.vocab_size})")
        dtype = self.classifier.weight.dtype
        bias = (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min
        h = self.bert.embeddings(ids, types)
        for layer in self.bert.encoder.layer:
            h = layer(h, bias)
        return self.classifier(self.dropout(self.bert.pooler(h)))


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs the 'safetensors' package: pip install safetensors"
            ) from e
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def _rename(key: str) -> str:
    key = key.removeprefix("module.")
    if not key.startswith(("bert.", "classifier.")):
        key = "bert." + key  # a bare BertModel checkpoint
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def load_bert(
    checkpoint: str | Path | None = None,
    num_classes: int = 3,
    config: BertConfig | Mapping[str, Any] | None = None,
) -> BertClassifier:
    """Build BERT from ``config`` (default: BERT-base multilingual cased) and, when
    ``checkpoint`` is given, load its encoder weights.

    ``checkpoint`` is a directory with ``config.json`` and ``model.safetensors`` or
    ``pytorch_model.bin``, or a state-dict file. Pre-training heads (``cls.*``) are ignored;
    the classifier head is loaded only if its shape matches, else freshly initialised.
    A missing encoder weight raises ``ValueError``.
    """
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"BERT checkpoint {path} does not exist")
    if config is None and path is not None and path.is_dir() and (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
    if isinstance(config, Mapping):
        config = BertConfig.from_mapping(config)
    model = BertClassifier(config, num_classes)
    if path is None:
        return model
    if path.is_dir():
        found = [path / f for f in _WEIGHT_FILES if (path / f).exists()]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(_WEIGHT_FILES)} in {path}")
        path = found[0]
    raw = _read_state_dict(path)
    own = model.state_dict()
    state = {}
    for k, v in raw.items():
        k = _rename(k)
        if k in own and own[k].shape == v.shape:
            state[k] = v
        elif k in own and not k.startswith("classifier."):
            raise ValueError(
                f"{path}: {k} has shape {tuple(v.shape)}, the model expects "
                f"{tuple(own[k].shape)} (config: {asdict(model.config)})"
            )
    missing = [k for k in own if k not in state and not k.startswith("classifier.")]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model
