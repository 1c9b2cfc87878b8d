"""The paper's IMDB LSTM (App. D): embedding, one LSTM layer of 100 units, a linear
classifier on the last hidden state.

Embedding width 128 (the Keras ``imdb_lstm`` example); vocabulary 20,000; sequences of
80 token ids, left-padded with 0 (Keras ``pad_sequences`` default), so the last time step
is the last real token. Two output logits (negative, positive) trained with cross-entropy.
Parameters: 20,000 x 128 embedding (2,560,000) + LSTM 4 x 100 x (128 + 100) weights and
PyTorch's two bias vectors 2 x 400 (92,000) + linear 100 x 2 + 2 (202) = 2,652,202.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import check_input, keras_init_


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> linear on the final hidden state. Input ``(N, seq_len)`` ids.

    ``init='keras'`` (default): Keras' defaults (see :func:`keras_init_`); ``'torch'``:
    PyTorch's.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (80,),
        num_classes: int = 2,
        vocab_size: int = 20_000,
        embedding_dim: int = 128,
        hidden_size: int = 100,
        init: str = "keras",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)
        if init == "keras":
            keras_init_(self)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        check_input("LSTMClassifier", x, self.input_shape, integer=True)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(
                f"LSTMClassifier expects token ids in [0, {self.vocab_size}), "
                f"got values in [{int(x.min())}, {int(x.max())}]"
            )
        _, (h, _) = self.lstm(self.embedding(x))
        return self.fc(h[-1])
