"""What tracking costs: a tracked run of the paper's MLP on real FashionMNIST against the same
run untracked.

Settings (issue 4): batch 64, lr 0.1, 2 epochs (1,876 steps) on all 60,000 training images,
evaluation off; K from L = 25 mini-batches of M = 64 every 50 steps, lambda_H^1 every epoch
on the fixed 5% probe (3,000 images), warm-started. A second setting measures K every 100
steps. Runs alternate (untracked, tracked, ...) after an untimed warm-up; the table gives
medians with [min, max] of the wall seconds, the measuring overhead
(tracked - untracked) / tracked, and each measure's share of the tracked wall time (from the
Tracker's own clock).

    .venv/bin/python benchmarks/bench_tracking.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from breakeven.data import load_dataset
from breakeven.tracking import build_tracker
from breakeven.train import TrainConfig, train

SETTINGS = {
    "K every 50 (L=25), lambda_H^1 every epoch": {
        "covariance": {"every": 50, "num_batches": 25},
        "hessian": {"every": "epoch"},
    },
    "K every 100 (L=25), lambda_H^1 every epoch": {
        "covariance": {"every": 100, "num_batches": 25},
        "hessian": {"every": "epoch"},
    },
}


def med(xs: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}, {max(xs):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    ds = load_dataset("fashion_mnist")
    config = TrainConfig(
        model="mlp",
        dataset="fashion_mnist",
        lr=0.1,
        batch_size=64,
        epochs=args.epochs,
        eval_every=0,
        num_threads=args.threads,
    )
    train(config.replace(epochs=None, steps=50), dataset=ds)  # warm-up: imports, allocator
    rows = []
    for name, spec in SETTINGS.items():
        plain, tracked, shares = [], [], {m: [] for m in spec}
        for _ in range(args.repeats):
            plain.append(train(config, dataset=ds).seconds)
            tracker = build_tracker(spec)
            result = train(config, tracker=tracker, dataset=ds)
            tracked.append(result.seconds)
            for m, s in tracker.summary().items():
                shares[m].append(100 * s["fraction"])
        overhead = [100 * (t - p) / t for t, p in zip(tracked, plain)]
        row = (
            f"| {name} | {med(plain)} | {med(tracked)} | {med(overhead, '.1f')} | "
            + "; ".join(f"{m}: {med(v, '.1f')}" for m, v in shares.items())
            + " |"
        )
        rows.append(row)
        print(row, flush=True)
    print(
        f"\nMachine: {platform.machine()}, {args.threads} torch threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d')}; "
        f"{args.repeats} repeats, {args.epochs} epochs each\n\n"
        "| setting | untracked s | tracked s | measuring overhead % | share of wall time per "
        "measure % |\n|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
