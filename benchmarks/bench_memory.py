"""Memory-bounded K: lambda_K^1 of a 25M-parameter model with L = 25, by where the L gradients
are kept (issue 7).

    .venv/bin/python benchmarks/bench_memory.py [--out benchmarks/out/memory.md]

Each mode runs in a fresh subprocess, which reports its peak resident memory above the
model itself (RSS after building the model and the data, before measuring; the peak is
``ru_maxrss``), the seconds, and lambda_K^1. The reference is the exact Gram: the same
model in float64, its gradients kept on disk. Model: an MLP 784-5000-4300-10 (25,468,310
parameters) on random FashionMNIST-shaped inputs, L = 25 batches of M = 32.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ["memory", "cpu", "disk"]


def child(mode: str, dtype: str) -> None:
    import torch

    import breakeven as be

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, 5000),
        torch.nn.ReLU(),
        torch.nn.Linear(5000, 4300),
        torch.nn.ReLU(),
        torch.nn.Linear(4300, 10),
    ).to(getattr(torch, dtype))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(25 * 32, 1, 28, 28, generator=g).to(getattr(torch, dtype))  # same data
    y = torch.randint(0, 10, (25 * 32,), generator=g)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    params = sum(p.numel() for p in model.parameters())
    base = _rss_mib()
    t = time.perf_counter()
    spec = be.gradient_covariance(model, torch.nn.CrossEntropyLoss(), batches, storage=mode)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "params": params,
                "seconds": seconds,
                "peak_above_mib": peak - base,
                "model_mib": params * (8 if dtype == "float64" else 4) / 2**20,
                "top": spec.top,
                "star": spec.smallest_nonzero,
                "trace": spec.trace,
            }
        )
    )


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(mode: str, dtype: str = "float32") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "memory.md")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.dtype)
    import torch

    exact = run("disk", "float64")
    lines = [
        f"Machine: {platform.machine()}, 2 torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}; date {time.strftime('%Y-%m-%d')}",
        "",
        f"MLP 784-5000-4300-10, {exact['params']:,} parameters, L = 25, M = 32. Exact: the "
        f"float64 model's Gram (lambda_K^1 = {exact['top']:.6g}, lambda_K^* = "
        f"{exact['star']:.6g}).",
        "",
        "| storage | seconds | peak memory above the model, MiB | lambda_K^1 | rel. error "
        "lambda_K^1 | rel. error lambda_K^* | rel. error Tr(K) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        r = run(mode)
        err = [abs(r[k] - exact[k]) / abs(exact[k]) for k in ("top", "star", "trace")]
        lines.append(
            f"| {mode} | {r['seconds']:.1f} | {r['peak_above_mib']:.0f} | {r['top']:.6g} | "
            + " | ".join(f"{e:.1e}" for e in err)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
