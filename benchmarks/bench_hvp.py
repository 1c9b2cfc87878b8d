"""The cost of one Hessian-vector product as a multiple of one gradient on the same data.

    .venv/bin/python benchmarks/bench_hvp.py [--threads 1] [--repeats 3] [--models ...]

For each model of the paper, on a probe of N examples of its input shape (random tensors:
timing does not depend on the values), one gradient is the training loop's own
``loss.backward()`` over the N examples. The exact forms of H v are timed as
``HessianOperator.matvec``:

- ``rebuilt``: double backward, the first-order graph built again for every product (what
  the operator does when the data come in several chunks);
- ``cached``: double backward through a first-order graph built once and kept (the
  operator's default when the data are one chunk; the first product pays the build);
- ``forward``: forward over reverse (``torch.func.jvp`` of the gradient), where it is exact
  for the model (not for ``nn.LSTM`` nor train-mode BatchNorm).

``default / best`` is the form the operator uses by default on a single chunk (cached)
against the fastest exact form. Prints a markdown table of the minimum over repeats after
one warm-up.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from breakeven.models import build_model
from breakeven.operators.hessian import HessianOperator

PROBLEMS = {  # label: (model, input shape or None for token ids, N, BatchNorm mode)
    "mlp": ("mlp", (1, 28, 28), 2560, "eval"),
    "simple_cnn": ("simple_cnn", (1, 28, 28), 256, "eval"),
    "simple_cnn_bn (eval)": ("simple_cnn_bn", (1, 28, 28), 128, "eval"),
    "simple_cnn_bn (train)": ("simple_cnn_bn", (1, 28, 28), 128, "train"),
    "resnet32 (eval)": ("resnet32", (3, 32, 32), 128, "eval"),
    "lstm": ("lstm", None, 64, "eval"),
}


def problem(label: str):
    name, shape, n, bn_mode = PROBLEMS[label]
    torch.manual_seed(0)
    if shape is None:
        model = build_model(name)
        x = torch.randint(0, 1000, (n, 80))
        y = torch.randint(0, 2, (n,))
    else:
        model = build_model(name, input_shape=shape)
        x = torch.randn(n, *shape)
        y = torch.randint(0, 10, (n,))
    return model, x, y, bn_mode


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=list(PROBLEMS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loss_fn = nn.CrossEntropyLoss()
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s)")
    forms = " | ".join(f"{k} / grad" for k in ("rebuilt", "cached", "forward"))
    print(f"| model | N | gradient s | {forms} | default / best |")
    print("|---|---|---|---|---|---|---|")
    for label in args.models:
        model, x, y, bn_mode = problem(label)
        model.train(bn_mode == "train")

        def gradient():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()

        t_grad = timed(gradient, args.repeats)
        op = HessianOperator(model, loss_fn, (x, y), bn_mode=bn_mode)
        v = torch.randn(op.shape[0])

        def rebuilt():
            op._cached = None
            op.matvec(v)

        times = {
            "rebuilt": timed(rebuilt, args.repeats),
            "cached": timed(lambda: op.matvec(v), args.repeats),
        }
        try:
            fwd = HessianOperator(model, loss_fn, (x, y), bn_mode=bn_mode, method="forward")
            times["forward"] = timed(lambda: fwd.matvec(v), args.repeats)
        except (ValueError, RuntimeError, NotImplementedError):
            pass
        cells = [
            f"{times[k] / t_grad:.2f}" if k in times else "n/a"
            for k in ("rebuilt", "cached", "forward")
        ]
        print(
            f"| {label} | {len(x)} | {t_grad:.3g} | {' | '.join(cells)} | "
            f"{times['cached'] / min(times.values()):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
