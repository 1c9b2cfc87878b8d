"""Batched Hessian-vector products (issue 7): Hutchinson's Tr(H) with its probes applied one
at a time against ``block_size`` at a time (one vmapped backward, ``is_grads_batched``).

    .venv/bin/python benchmarks/bench_batched.py [--repeats 3]

Problems: the MLP on 2,560 real FashionMNIST images and SimpleCNN on 256 CIFAR-shaped
examples, each after 100 SGD steps (as in bench_core.py); 32 Rademacher probes. The
estimates are identical for every block size (same probes).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import breakeven as be
from bench_core import LOSS, trained
from breakeven.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "batched.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    fm = load_dataset("fashion_mnist")
    g = torch.Generator().manual_seed(0)
    cx = torch.randn(2560, 3, 32, 32, generator=g)
    cy = torch.randint(0, 10, (2560,), generator=g)
    problems = [
        (
            "mlp/2560",
            trained("mlp", fm.x_train[:20000].float(), fm.y_train[:20000]),
            (fm.x_train[:2560].float(), fm.y_train[:2560]),
        ),
        ("cnn/256", trained("simple_cnn", cx, cy), (cx[:256], cy[:256])),
    ]
    lines = [
        f"Machine: {platform.machine()}, 2 torch threads, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d')}",
        "",
        "| problem | Tr(H), 32 probes | block size | seconds, median [min, max] | speed-up "
        "| estimate |",
        "|---|---|---|---|---|---|",
    ]
    for name, model, data in problems:
        base = None
        for block in (1, 4, 8, 16):
            times, est = [], None
            for _ in range(args.repeats):
                op = be.HessianOperator(model, LOSS, data)
                t = time.perf_counter()
                est = be.hutchinson(op, 32, seed=0, block_size=block).estimate
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            base = base or med
            lines.append(
                f"| {name} | Hutchinson | {block} | {med:.2f} [{min(times):.2f}, {max(times):.2f}] "
                f"| {base / med:.2f}x | {est:.6g} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
