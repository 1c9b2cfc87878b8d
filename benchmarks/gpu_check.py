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


def _peak_mib(fn):
    """(result, seconds, peak CUDA memory above what was allocated before, MiB)."""
    sync()
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    out = fn()
    sync()
    seconds = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if DEV.type == "cuda" else 0.0
    return out, seconds, peak


def scale() -> list[str]:
    """Issue 7 on the GPU: where K's gradients are kept, batched HVPs, tracking overhead."""
    from breakeven.data import Dataset

    rows = [
        "| model | parameters | measurement | seconds | peak GPU memory above, MiB | value |",
        "|---|---|---|---|---|---|",
    ]
    loss = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3200, 3, 32, 32, generator=g).to(DEV)
    y = torch.randint(0, 10, (3200,), generator=g).to(DEV)
    for name in ("simple_cnn", "resnet32"):
        torch.manual_seed(0)
        model = build_model(name).to(DEV)
        D = sum(p.numel() for p in model.parameters())
        kb = [(x[j : j + 128], y[j : j + 128]) for j in range(0, 3200, 128)]
        be.gradient_covariance(model, loss, kb)  # warm-up
        for storage in ("memory", "cpu"):
            res, t, peak = _peak_mib(
                lambda s=storage: be.gradient_covariance(model, loss, kb, storage=s)
            )
            rows.append(
                f"| {name} | {D:,} | K, L = 25 x 128, storage={storage} | {t:.3f} | {peak:.0f} "
                f"| {res.top:.6g} |"
            )
        op = be.HessianOperator(model, loss, (x[:1024], y[:1024]))
        for block in (1, 8):
            be.hutchinson(op, 8, seed=0, block_size=block)  # warm-up
            res, t, peak = _peak_mib(lambda b=block: be.hutchinson(op, 32, seed=0, block_size=b))
            rows.append(
                f"| {name} | {D:,} | Tr(H), 32 probes, 1,024 examples, block {block} | {t:.3f} "
                f"| {peak:.0f} | {res.estimate:.6g} |"
            )
        for r in rows[-4:]:
            print(r, flush=True)
    ds = Dataset("random", x[:2560].cpu(), y[:2560].cpu(), x[2560:].cpu(), y[2560:].cpu(), 10)
    cfg = be.TrainConfig(
        model="simple_cnn", lr=0.05, batch_size=128, steps=400, eval_every=0, device=str(DEV)
    )
    be.train(cfg, dataset=ds)  # warm-up
    sync()
    t = time.perf_counter()
    be.train(cfg, dataset=ds)
    sync()
    plain = time.perf_counter() - t
    tracker = be.build_tracker(
        {"covariance": {"every": 50, "num_batches": 25}, "hessian": {"every": 200}}, seed=0
    )
    t = time.perf_counter()
    be.train(cfg, tracker, dataset=ds)
    sync()
    tracked = time.perf_counter() - t
    share = {k: v["seconds"] / tracked for k, v in tracker.summary().items() if "seconds" in v}
    rows.append(
        f"| simple_cnn | - | 400 SGD steps at 128, untracked / tracked (K every 50, "
        f"lambda_H^1 every 200 on the 5% probe) | {plain:.2f} / {tracked:.2f} | | measuring "
        f"{100 * (tracked - plain) / tracked:.1f}% of wall time; "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items())
        + " |"
    )
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--correctness-only", action="store_true")
    ap.add_argument("--scale-only", action="store_true", help="only the issue 7 table")
    args = ap.parse_args()
    device = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    head = (
        f"device: {device}, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}, date {time.strftime('%Y-%m-%d')}\n"
    )
    print(head, flush=True)
    if args.scale_only:
        text = head + "\n" + "\n".join(scale()) + "\n"
    else:
        text = head + "\n" + "\n".join(correctness()) + "\n"
        if not args.correctness_only:
            text += "\n" + "\n".join(timings()) + "\n\n" + "\n".join(scale()) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
