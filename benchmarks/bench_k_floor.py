"""K against its floor: the cost of the gradient covariance as a multiple of the training
loop's own forward and backward passes over the same L x M examples.

    .venv/bin/python benchmarks/bench_k_floor.py [--threads 1] [--repeats 3] [--models ...]

The floor is L plain ``loss.backward()`` calls of the model on the L batches of M examples,
in this process, on this machine (what the training loop pays for those examples). K is
``breakeven.gradient_covariance`` with its defaults (the L gradients, then the float64 Gram
and its eigenvalues); "gradients" is the part before the Gram. Inputs are random tensors of
each model's input shape (timing does not depend on the values). Prints a markdown table of
the minimum over repeats after one warm-up (and [min, max]).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

import breakeven as be
from breakeven.models import build_model
from breakeven.operators.covariance import _batch_gradient_blocks

PROBLEMS = {  # model: (input shape or None for token ids, L, M)
    "mlp": ((1, 28, 28), 25, 128),
    "simple_cnn": ((1, 28, 28), 25, 128),
    "simple_cnn_bn": ((1, 28, 28), 25, 128),
    "resnet32": ((3, 32, 32), 5, 128),
    "lstm": (None, 25, 64),
}


def problem(name: str):
    shape, L, M = PROBLEMS[name]
    torch.manual_seed(0)
    if shape is None:
        model = build_model(name)
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loss_fn = nn.CrossEntropyLoss()
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s)")
    print("| model | L x M | floor s | gradients s | K s | K / floor |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, batches = problem(name)

        def floor(model=model, batches=batches):
            for xb, yb in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb).backward()

        def grads(model=model, batches=batches):
            _batch_gradient_blocks(model, loss_fn, batches, "train", 2048)

        def k(model=model, batches=batches):
            be.gradient_covariance(model, loss_fn, batches)

        t_floor, t_grads, t_k = (timed(f, args.repeats) for f in (floor, grads, k))
        _, L, M = PROBLEMS[name]
        spread = f"[{min(t_k):.3g}, {max(t_k):.3g}]"
        print(
            f"| {name} | {L} x {M} | {min(t_floor):.3g} | {min(t_grads):.3g} | "
            f"{min(t_k):.3g} {spread} | {min(t_k) / min(t_floor):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
