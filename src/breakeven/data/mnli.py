"""MultiNLI (Williams et al., 2018) from its jsonl files, encoded for BERT.

Reads ``multinli_1.0/multinli_1.0_train.jsonl`` and ``..._dev_matched.jsonl`` (or
``_dev_mismatched``) and tokenises each pair with BERT's WordPiece, given the checkpoint's
``vocab.txt``: ``[CLS] premise [SEP] hypothesis [SEP]``, the longer sentence cut first to
fit ``maxlen`` (40 in the paper), padded with 0. Inputs are int64 ``(N, 3, maxlen)``: token
ids, token-type ids (0 premise, 1 hypothesis) and attention mask. Labels: entailment 0,
neutral 1, contradiction 2; pairs without a gold label ("-") are dropped.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import torch

from ._base import CorruptDatasetError, Dataset, DatasetNotFoundError, find

FOLDER = "multinli_1.0"
LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
HOW_TO_GET = (
    "Download https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip and extract it "
    "(multinli_1.0/multinli_1.0_train.jsonl, ...)."
)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK)


class WordPieceTokenizer:
    """BERT's tokeniser: basic splitting (whitespace, punctuation, CJK characters; lower
    case and accent stripping when ``lowercase``) then greedy longest-match WordPiece over
    the vocabulary file (one token per line, id = line number)."""

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = False) -> None:
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {tok: i for i, tok in enumerate(lines)}
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.vocab:
                raise CorruptDatasetError(vocab_file, f"vocabulary lacks {special}")
        self.lowercase = lowercase

    def _basic(self, text: str) -> list[str]:
        out: list[str] = []
        text = "".join(
            " " if ch.isspace() else ch
            for ch in text
            if ch in "\t\n\r"
            or (ord(ch) not in (0, 0xFFFD) and not unicodedata.category(ch).startswith("C"))
        )
        text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        for word in text.split():
            if self.lowercase:
                word = unicodedata.normalize("NFD", word.lower())
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            piece = ""
            for ch in word:
                if _is_punct(ch):
                    out += [piece, ch] if piece else [ch]
                    piece = ""
                else:
                    piece += ch
            if piece:
                out.append(piece)
        return out

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (continuations prefixed with ``##``)."""
        tokens = []
        for word in self._basic(text):
            if len(word) > 100:
                tokens.append("[UNK]")
                continue
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    sub = word[start:end] if start == 0 else "##" + word[start:end]
                    if sub in self.vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = ["[UNK]"]
                    break
                pieces.append(sub)
                start = end
            tokens += pieces
        return tokens

    def encode_pair(self, a: str, b: str, maxlen: int) -> tuple[list[int], list[int]]:
        """Ids and token types of ``[CLS] a [SEP] b [SEP]``, longest-first truncation."""
        ta, tb = self.tokenize(a), self.tokenize(b)
        while len(ta) + len(tb) > maxlen - 3 and (ta or tb):
            (ta if len(ta) > len(tb) else tb).pop()
        toks = ["[CLS]", *ta, "[SEP]", *tb, "[SEP]"]
        ids = [self.vocab.get(t, self.vocab["[UNK]"]) for t in toks]
        return ids, [0] * (len(ta) + 2) + [1] * (len(tb) + 1)


def _read_jsonl(path: Path, tok: WordPieceTokenizer, maxlen: int) -> tuple[torch.Tensor, ...]:
    if not path.exists():
        raise CorruptDatasetError(path.parent, f"missing {path.name}")
    rows, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                label, a, b = r["gold_label"], r["sentence1"], r["sentence2"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CorruptDatasetError(
                    path, f"line {n}: not a JSON object with gold_label, sentence1, sentence2"
                ) from e
            if label == "-":
                continue
            if label not in LABELS:
                raise CorruptDatasetError(path, f"line {n}: unknown gold_label {label!r}")
            rows.append(tok.encode_pair(a, b, maxlen))
            labels.append(LABELS[label])
    if not rows:
        raise CorruptDatasetError(path, "no labelled sentence pairs")
    x = torch.zeros(len(rows), 3, maxlen, dtype=torch.int64)
    for i, (ids, types) in enumerate(rows):
        x[i, 0, : len(ids)] = torch.tensor(ids)
        x[i, 1, : len(types)] = torch.tensor(types)
        x[i, 2, : len(ids)] = 1
    return x, torch.tensor(labels)


def load_mnli(
    root: str | os.PathLike | None = None,
    vocab: str | os.PathLike | None = None,
    maxlen: int = 40,
    lowercase: bool = False,
    validation: str = "matched",
) -> Dataset:
    """MNLI train set and the ``validation`` ('matched' or 'mismatched') dev set as test.

    ``vocab`` is the BERT checkpoint's ``vocab.txt`` (default: ``vocab.txt`` beside the
    jsonl files); ``lowercase`` must match the checkpoint (False for multilingual cased).
    """
    if validation not in ("matched", "mismatched"):
        raise ValueError(f"validation must be 'matched' or 'mismatched', got {validation!r}")
    if maxlen < 3:
        raise ValueError(f"maxlen must be >= 3, got {maxlen}")
    folder = find("MNLI", [FOLDER], root, HOW_TO_GET)
    vocab_path = Path(vocab) if vocab is not None else folder / "vocab.txt"
    if not vocab_path.exists():
        raise DatasetNotFoundError(
            f"BERT vocabulary {vocab_path} not found: pass vocab= the checkpoint's vocab.txt"
        )
    tok = WordPieceTokenizer(vocab_path, lowercase)
    x_tr, y_tr = _read_jsonl(folder / f"{FOLDER}_train.jsonl", tok, maxlen)
    x_te, y_te = _read_jsonl(folder / f"{FOLDER}_dev_{validation}.jsonl", tok, maxlen)
    return Dataset(
        "mnli",
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_classes=3,
        source=str(folder),
        meta={"vocab_size": len(tok.vocab), "maxlen": maxlen, "classes": tuple(LABELS)},
    )
