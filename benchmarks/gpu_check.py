"""The CUDA path of the core estimators: correctness against CPU float64 references, then
timings. Run on a machine with a GPU (no peers needed):

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out FILE]

1. Correctness: on tiny float64 cases moved to CUDA, the Hessian operator, Lanczos, the
   gradient covariance, per-example K and the curvature variance equal the CPU dense
   references (max relative error printed; it must be ~1e-12).
2. Timings (float32, CUDA synchronised; median of 5 after a warm-up): SimpleCNN and
   ResNet-32 on CIFAR-shaped random data: one HVP, lambda_H^1 (tol 1e-3), the top 10, Tr(H)
   by 50 Hutchinson probes, K from L = 25 batches of 128, per-example K of 256 examples.
Prints markdown tables (also written to --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import breakeven as be
from breakeven.models import build_model
from breakeven.operators.dense import dense_hessian, per_example_hessians
from cases import CASES, make_case

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def correctness() -> list[str]:
    rows = [
        "| case | H @ v | top-3 | K eigenvalues | per-example K | s^2 |",
        "|---|---|---|---|---|---|",
    ]
    for name in CASES:
        c = make_case(name, n=24)
        H = dense_hessian(c.model, c.loss_fn, c.data)
        v = torch.randn(H.shape[0], dtype=torch.float64)
        batches = [(c.x[i : i + 4], c.y[i : i + 4]) for i in range(0, 24, 4)]
        k_cpu = be.gradient_covariance(c.model, c.loss_fn, batches).eigenvalues
        p_cpu = be.per_example_gradient_covariance(c.model, c.loss_fn, c.x[:8], c.y[:8]).eigenvalues
        e = torch.linalg.eigh(H)[1][:, -1]
        Hi = per_example_hessians(c.model, c.loss_fn, c.x, c.y)
        s2 = float(torch.einsum("d,nde,e->n", e, Hi, e).var(unbiased=False))
        model = c.model.to(DEV)
        x, y = c.x.to(DEV), c.y.to(DEV)
        op = be.HessianOperator(model, c.loss_fn, (x, y), chunk_size=7)
        top = be.hessian_eigenvalues(model, c.loss_fn, (x, y), k=3, tol=1e-10)
        kb = [(a.to(DEV), b.to(DEV)) for a, b in batches]
        k_gpu = be.gradient_covariance(model, c.loss_fn, kb).eigenvalues
        p_gpu = be.per_example_gradient_covariance(model, c.loss_fn, x[:8], y[:8]).eigenvalues
        s2_gpu = be.curvature_variance(model, c.loss_fn, (x, y), e.to(DEV))
        r = min(5, H.shape[0])
        rows.append(
            f"| {name} | {rel(op @ v.to(DEV), H @ v):.1e} "
            f"| {rel(top.eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:3]):.1e} "
            f"| {rel(k_gpu[:r], k_cpu[:r]):.1e} | {rel(p_gpu[:r], p_cpu[:r]):.1e} "
            f"| {rel(s2_gpu, s2):.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def timed(fn, repeats=5):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, times


def fmt(times):
    return f"{statistics.median(times):.3f} [{min(times):.3f}, {max(times):.3f}]"


def timings() -> list[str]:
    rows = [
        "| model | parameters | measurement | seconds, median [min, max] | products | value |",
        "|---|---|---|---|---|---|",
    ]
    loss = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2560, 3, 32, 32, generator=g).to(DEV)
    y = torch.randint(0, 10, (2560,), generator=g).to(DEV)
    for name in ("simple_cnn", "resnet32"):
        torch.manual_seed(0)
        model = build_model(name).to(DEV)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for i in range(50):  # leave the initialisation
            opt.zero_grad()
            loss(
                model(x[i % 20 * 128 : (i % 20 + 1) * 128]), y[i % 20 * 128 : (i % 20 + 1) * 128]
            ).backward()
            opt.step()
        for p in model.parameters():
            p.grad = None
        D = sum(p.numel() for p in model.parameters())
        op = be.HessianOperator(model, loss, (x, y), chunk_size=640)
        v = torch.randn(D, device=DEV)
        _, t = timed(lambda: op @ v)
        rows.append(f"| {name} | {D:,} | one HVP, 2,560 examples (4 chunks) | {fmt(t)} | 1 | |")
        for k in (1, 10):
            res, t = timed(
                lambda k=k: be.hessian_eigenvalues(model, loss, (x, y), k=k, chunk_size=640)
            )
            rows.append(
                f"| {name} | {D:,} | top-{k} Hessian, tol 1e-3 | {fmt(t)} | {res.num_matvecs} "
                f"| {float(res.eigenvalues[0]):.4g} |"
            )
        res, t = timed(
            lambda: be.hessian_trace(model, loss, (x, y), num_samples=50, chunk_size=640), 3
        )
        rows.append(
            f"| {name} | {D:,} | Tr(H), 50 Hutchinson probes | {fmt(t)} | 50 | {res.estimate:.4g} |"
        )
        kb = [(x[j : j + 128], y[j : j + 128]) for j in range(0, 25 * 100, 100)]
        res, t = timed(lambda: be.gradient_covariance(model, loss, kb))
        rows.append(
            f"| {name} | {D:,} | K, L = 25 batches of 128 | {fmt(t)} | 25 | {res.top:.4g} |"
        )
        res, t = timed(lambda: be.per_example_gradient_covariance(model, loss, x[:256], y[:256]))
        rows.append(
            f"| {name} | {D:,} | per-example K, 256 examples | {fmt(t)} | 256 | {res.top:.4g} |"
        )
        for r in rows[-6:]:
            print(r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--correctness-only", action="store_true")
    args = ap.parse_args()
    device = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    head = (
        f"device: {device}, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}, date {time.strftime('%Y-%m-%d')}\n"
    )
    print(head, flush=True)
    text = head + "\n" + "\n".join(correctness()) + "\n"
    if not args.correctness_only:
        text += "\n" + "\n".join(timings()) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
