"""K against its floor: the cost of the gradient covariance as a multiple of the training
loop's own forward and backward passes over the same L x M examples.

    .venv/bin/python benchmarks/bench_k_floor.py [--threads 1] [--repeats 3] [--models ...]
        [--lstm-tokens zipf|uniform1000]

The floor is L plain ``loss.backward()`` calls of the model on the L batches of M examples,
in this process, on this machine (what the training loop pays for those examples). K is
``breakeven.gradient_covariance`` with its defaults (the L gradients, then the float64 Gram
and its eigenvalues); "gradients" is the part before the Gram. Per-example K
(``breakeven.per_example_gradient_covariance``, M = 1, L = the M examples of the first batch)
is set against the M-floor, one ``loss.backward()`` on that batch. Inputs are random tensors of
each model's input shape (timing does not depend on the values, except through which of the
LSTM's 20,000 embedding rows a batch uses: K drops the columns that are zero in every gradient).
The LSTM's token ids follow Zipf's law over its vocabulary (``zipf``, the default: word ranks
of English text, as IMDB's; 73% of the rows appear in the 25 x 64 x 80 tokens) or are uniform
over the first 1,000 ids (``uniform1000``, the inputs of earlier tables: 5% of the rows). The
column "kept" is the share of K's columns left after the zero ones are dropped. Prints a
markdown table of the minimum over repeats after one warm-up (and [min, max]).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

import breakeven as be
from breakeven.models import build_model
from breakeven.operators.covariance import _batch_gradient_blocks, _centred_blocks

PROBLEMS = {  # model: (input shape or None for token ids, L, M)
    "mlp": ((1, 28, 28), 25, 128),
    "simple_cnn": ((1, 28, 28), 25, 128),
    "simple_cnn_bn": ((1, 28, 28), 25, 128),
    "resnet32": ((3, 32, 32), 5, 128),
    "lstm": (None, 25, 64),
}


def problem(name: str, tokens: str = "zipf"):
    shape, L, M = PROBLEMS[name]
    torch.manual_seed(0)
    if shape is None:
        model = build_model(name)
        if tokens == "zipf":
            ranks = torch.arange(1, model.vocab_size + 1, dtype=torch.float64)
            x = torch.multinomial(1 / ranks, L * M * 80, replacement=True).view(L * M, 80)
        else:
            x = torch.randint(0, 1000, (L * M, 80))
        y = torch.randint(0, 2, (L * M,))
    else:
        model = build_model(name, input_shape=shape)
        x = torch.randn(L * M, *shape)
        y = torch.randint(0, 10, (L * M,))
    return model, [(x[i * M : (i + 1) * M], y[i * M : (i + 1) * M]) for i in range(L)]


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=list(PROBLEMS))
    ap.add_argument("--lstm-tokens", choices=["zipf", "uniform1000"], default="zipf")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loss_fn = nn.CrossEntropyLoss()
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s)")
    print(f"LSTM tokens: {args.lstm_tokens}")
    print(
        "| model | L x M | kept | floor s | gradients s | K s | K / floor "
        "| M-floor s | per-example K s | per-example / M-floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, batches = problem(name, args.lstm_tokens)

        def floor(model=model, batches=batches):
            for xb, yb in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb).backward()

        def grads(model=model, batches=batches):
            _batch_gradient_blocks(model, loss_fn, batches, "train", 2048)

        def k(model=model, batches=batches):
            be.gradient_covariance(model, loss_fn, batches)

        def floor_one(model=model, batch=batches[0]):
            model.zero_grad(set_to_none=True)
            loss_fn(model(batch[0]), batch[1]).backward()

        def per_example(model=model, batch=batches[0]):
            be.per_example_gradient_covariance(model, loss_fn, *batch)

        t_floor, t_grads, t_k, t_one, t_pe = (
            timed(f, args.repeats) for f in (floor, grads, k, floor_one, per_example)
        )
        _, L, M = PROBLEMS[name]
        blocks, _ = _batch_gradient_blocks(model, loss_fn, batches, "train", 2048)
        kept = sum(b.shape[1] for _, b in _centred_blocks(blocks)) / sum(b.shape[1] for b in blocks)
        spread = f"[{min(t_k):.3g}, {max(t_k):.3g}]"
        print(
            f"| {name} | {L} x {M} | {kept:.0%} | {min(t_floor):.3g} | {min(t_grads):.3g} | "
            f"{min(t_k):.3g} {spread} | {min(t_k) / min(t_floor):.2f} | {min(t_one):.3g} | "
            f"{min(t_pe):.3g} | {min(t_pe) / min(t_one):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
