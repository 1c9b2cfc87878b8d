"""Speed of ``breakeven.train`` against a minimal hand-written PyTorch loop.

Same model, same data (tensors in memory), same seeds, evaluation off; each repeat times a
whole call (model build, optimiser, one pass over the data). Runs alternate (ours, minimal,
ours, ...) so that load from other processes hits both alike; a first, untimed run of each
warms up. Prints a markdown table: medians, spread (min-max) and the ratios ours / minimal
of the medians and of the minima (the minimum is the least disturbed by other load),
then one full epoch of the paper's MLP on all 60,000 FashionMNIST images at batch 64.

    .venv/bin/python benchmarks/bench_train.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from breakeven.data import Dataset, load_dataset
from breakeven.models import build_model
from breakeven.train import TrainConfig, train


def minimal_loop(ds: Dataset, model: str, lr: float, batch_size: int) -> None:
    """One epoch of plain SGD, written the way anyone would."""
    torch.manual_seed(0)
    net = build_model(model, ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    perm = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(0))
    for i in range(0, ds.n_train, batch_size):
        idx = perm[i : i + batch_size]
        loss = F.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def ours(ds: Dataset, model: str, lr: float, batch_size: int) -> None:
    cfg = TrainConfig(model=model, lr=lr, batch_size=batch_size, epochs=1, eval_every=0)
    result = train(cfg, dataset=ds)
    assert result.status == "finished"


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(ds: Dataset, model: str, lr: float, batch_size: int, repeats: int) -> dict:
    runs: dict[str, list[float]] = {"ours": [], "minimal": []}
    fns = {
        "ours": lambda: ours(ds, model, lr, batch_size),
        "minimal": lambda: minimal_loop(ds, model, lr, batch_size),
    }
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(timed(fn))
    return runs


def fmt(ts: list[float], steps: int) -> str:
    med = statistics.median(ts)
    return f"{med:.2f} s ({1e3 * med / steps:.1f} ms/step; {min(ts):.2f}-{max(ts):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--mlp-n", type=int, default=12_800, help="FashionMNIST images, loop test")
    p.add_argument("--cnn-n", type=int, default=1_024, help="CIFAR-shaped images, loop test")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    fashion = load_dataset("fashion_mnist")
    g = torch.Generator().manual_seed(0)
    cifar_like = Dataset(
        "cifar-shaped random",
        torch.randn(args.cnn_n, 3, 32, 32, generator=g),
        torch.randint(0, 10, (args.cnn_n,), generator=g),
        torch.randn(10, 3, 32, 32, generator=g),
        torch.randint(0, 10, (10,), generator=g),
        10,
    )
    cases = [
        ("MLP, FashionMNIST", fashion.subset(args.mlp_n, 0), "mlp", 0.01, 64),
        ("SimpleCNN, CIFAR-shaped", cifar_like, "simple_cnn", 0.01, 128),
    ]
    print(f"# bench_train: {platform.node() or 'this machine'}")
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} "
        f"at start, {args.repeats} repeats, median (min-max)\n"
    )
    print(
        "| case | examples, batch | steps | breakeven.train | minimal loop "
        "| ratio of medians | ratio of minima |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, ds, model, lr, bs in cases:
        runs = compare(ds, model, lr, bs, args.repeats)
        steps = -(-ds.n_train // bs)
        ratio = statistics.median(runs["ours"]) / statistics.median(runs["minimal"])
        ratio_min = min(runs["ours"]) / min(runs["minimal"])
        print(
            f"| {label} | {ds.n_train}, {bs} | {steps} | {fmt(runs['ours'], steps)} | "
            f"{fmt(runs['minimal'], steps)} | {ratio:.3f} | {ratio_min:.3f} |",
            flush=True,
        )
    epoch = [
        timed(lambda: ours(fashion, "mlp", 0.01, 64)) for _ in range(max(1, args.repeats // 2))
    ]
    steps = -(-fashion.n_train // 64)
    print(
        f"| MLP, one full epoch of FashionMNIST | {fashion.n_train}, 64 | {steps} | "
        f"{fmt(epoch, steps)} | | | |"
    )
    print(f"\nload average at end {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
