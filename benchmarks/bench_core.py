"""Core speed benchmark: breakeven's estimators against the peer tools, side by side.

Run in the peers venv, which has breakeven (editable) and the peers installed:

    bash benchmarks/setup_peers.sh
    benchmarks/.peers/bin/python benchmarks/bench_core.py [--quick] [--repeats 3]

Problems (each model after 100 SGD steps from seed 0, lr 0.05, batch 128, on its data):
  mlp/2560      MLP 784-300-100-10 on 2,560 real FashionMNIST training images
  cnn/256       SimpleCNN (361,898 parameters) on 256 CIFAR-shaped examples
  cnn/2560      SimpleCNN on 2,560 CIFAR-shaped examples (top-1 only: HVPs cost seconds)
CIFAR-10 cannot be had on this machine: the CIFAR-shaped data are Gaussian images
(3x32x32) with uniform random labels, the same for every tool.

Every value's relative error is against a tight reference: scipy ``eigsh(which='LA',
tol=1e-8)`` on breakeven's Hessian-vector product (itself tested against dense Hessians).
Times are wall seconds: median over repeats, with [min, max]; the machine is shared, so
spreads can be wide. Prints a markdown table (also written to --out).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import breakeven as be
import peers
from breakeven.data import load_dataset
from breakeven.models import build_model
from breakeven.operators.covariance import centred_gram, per_example_gradients

LOSS = nn.CrossEntropyLoss()


def trained(name: str, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    """The model after ``steps`` SGD steps (lr 0.05, batch 128) from seed 0 on (x, y)."""
    torch.manual_seed(0)
    model = build_model(name, input_shape=tuple(x.shape[1:]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        opt.zero_grad()
        LOSS(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad()
    LOSS(model(x[:128]), y[:128]).backward()
    opt.step()
    for p in model.parameters():
        p.grad = None


def reference(model, x, y, k):
    op = be.HessianOperator(model, LOSS, (x, y))

    def matvec(v):
        return (op @ torch.from_numpy(v).float()).double().numpy()

    return peers.eigsh_reference(matvec, op.shape[0], k, tol=1e-8)


def timed(fn, repeats):
    """Run fn repeats times; return the last result and the list of wall seconds."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def fmt_time(times):
    med = statistics.median(times)
    if len(times) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} [{min(times):.2f}, {max(times):.2f}]"


def rel_err(values, ref):
    values = np.asarray(values, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)[: len(values)]
    return float(np.max(np.abs(values - ref) / np.abs(ref)))


ROWS: list[tuple] = []


def row(problem, task, tool, times, hvps, values, ref, note=""):
    vals = np.asarray(values, dtype=np.float64)
    shown = ", ".join(f"{v:.4g}" for v in vals[:3]) + (" ..." if len(vals) > 3 else "")
    err = rel_err(np.sort(vals)[::-1], ref) if ref is not None else float("nan")
    ROWS.append(
        (
            problem,
            task,
            tool,
            fmt_time(times),
            hvps if hvps is not None else "-",
            shown,
            f"{err:.1e}",
            note,
        )
    )
    print(ROWS[-1], flush=True)


def top1(problem, model, x, y, repeats, eigenthings_iter):
    ref = reference(model, x, y, 1)
    row(
        problem,
        "lambda_1 reference",
        "eigsh tol 1e-8",
        [ref.seconds],
        ref.hvps,
        ref.values,
        ref.values,
    )
    ours, t = timed(lambda: be.hessian_eigenvalues(model, LOSS, (x, y), k=1, tol=1e-3), repeats)
    row(
        problem,
        "lambda_1",
        "breakeven Lanczos tol 1e-3",
        t,
        ours.num_matvecs,
        ours.eigenvalues.numpy(),
        ref.values,
    )
    res, t = timed(lambda: peers.pyhessian_top(model, LOSS, x, y, 1, tol=1e-3), repeats)
    row(
        problem,
        "lambda_1",
        "PyHessian power tol 1e-3",
        [r for r in t],
        res.hvps,
        res.values,
        ref.values,
        "largest magnitude",
    )
    res, t = timed(
        lambda: peers.eigenthings_top(model, LOSS, x, y, 1, max_iter=eigenthings_iter, which="LA"),
        repeats,
    )
    row(
        problem,
        "lambda_1",
        f"hessian-eigenthings LA, {eigenthings_iter} steps",
        t,
        res.hvps,
        res.values,
        ref.values,
        "fixed step count",
    )
    res, t = timed(lambda: peers.curvlinops_eigsh_top(model, LOSS, x, y, 1, tol=1e-3), repeats)
    row(problem, "lambda_1", "curvlinops + eigsh tol 1e-3", t, res.hvps, res.values, ref.values)
    return ours


def warm(problem, model, x, y, previous, repeats):
    sgd_step(model, x, y)
    ref = reference(model, x, y, 1)
    cold, t = timed(lambda: be.hessian_eigenvalues(model, LOSS, (x, y), k=1, tol=1e-3), repeats)
    row(
        problem,
        "lambda_1 after 1 step",
        "breakeven, cold start",
        t,
        cold.num_matvecs,
        cold.eigenvalues.numpy(),
        ref.values,
    )
    v0 = previous.eigenvectors[:, 0]
    res, t = timed(
        lambda: be.hessian_eigenvalues(model, LOSS, (x, y), k=1, tol=1e-3, v0=v0), repeats
    )
    row(
        problem,
        "lambda_1 after 1 step",
        "breakeven, warm start",
        t,
        res.num_matvecs,
        res.eigenvalues.numpy(),
        ref.values,
    )


def top10(problem, model, x, y, repeats, with_pyhessian):
    ref = reference(model, x, y, 10)
    row(
        problem,
        "top-10 reference",
        "eigsh tol 1e-8",
        [ref.seconds],
        ref.hvps,
        ref.values,
        ref.values,
    )
    ours, t = timed(lambda: be.hessian_eigenvalues(model, LOSS, (x, y), k=10, tol=1e-3), repeats)
    row(
        problem,
        "top-10",
        "breakeven Lanczos tol 1e-3",
        t,
        ours.num_matvecs,
        ours.eigenvalues.numpy(),
        ref.values,
    )
    res, t = timed(lambda: peers.curvlinops_eigsh_top(model, LOSS, x, y, 10, tol=1e-3), repeats)
    row(problem, "top-10", "curvlinops + eigsh tol 1e-3", t, res.hvps, res.values, ref.values)
    if with_pyhessian:
        res, t = timed(lambda: peers.pyhessian_top(model, LOSS, x, y, 10, tol=1e-3), 1)
        row(
            problem,
            "top-10",
            "PyHessian power tol 1e-3",
            t,
            res.hvps,
            res.values,
            ref.values,
            f"min value {res.values.min():.3g}",
        )


def per_example(problem, model, x, y, repeats):
    _, t = timed(lambda: per_example_gradients(model, LOSS, x, y), repeats)
    row(problem, "per-example gradients only", "breakeven vmap(grad)", t, None, [1.0], [1.0])
    _, t = timed(lambda: peers.backpack_per_example_grads(model, LOSS, x, y), repeats)
    row(problem, "per-example gradients only", "BackPACK BatchGrad", t, None, [1.0], [1.0])
    ours, t = timed(lambda: be.per_example_gradient_covariance(model, LOSS, x, y), repeats)
    lam = ours.eigenvalues.numpy()
    row(
        problem,
        "per-example K (M=1)",
        "breakeven vmap(grad) + float64 Gram",
        t,
        None,
        [ours.top, ours.smallest_nonzero],
        [ours.top, ours.smallest_nonzero],
    )

    def backpack():
        res = peers.backpack_per_example_grads(model, LOSS, x, y)
        gram = centred_gram(torch.from_numpy(res.values))
        return torch.linalg.eigvalsh(gram).flip(0).numpy()

    theirs, t = timed(backpack, repeats)
    row(
        problem,
        "per-example K (M=1)",
        "BackPACK BatchGrad + same Gram",
        t,
        None,
        [theirs[0], theirs[-2]],
        [lam[0], lam[-2]],
        "error vs breakeven",
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the 2,560-example SimpleCNN problem")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "core.md")
    ap.add_argument("--per-example-only", action="store_true", help="only the cnn/256 K rows")
    args = ap.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    cx = torch.randn(2560, 3, 32, 32, generator=g)
    cy = torch.randint(0, 10, (2560,), generator=g)
    if args.per_example_only:
        per_example("cnn/256", trained("simple_cnn", cx, cy), cx[:256], cy[:256], args.repeats)
        return write(args.out)

    fm = load_dataset("fashion_mnist")
    x, y = fm.x_train[:2560].float(), fm.y_train[:2560]
    model = trained("mlp", fm.x_train[:20000].float(), fm.y_train[:20000])
    prev = top1("mlp/2560", model, x, y, args.repeats, eigenthings_iter=20)
    warm("mlp/2560", model, x, y, prev, args.repeats)
    top10("mlp/2560", model, x, y, args.repeats, with_pyhessian=True)

    cnn = trained("simple_cnn", cx, cy)
    prev = top1("cnn/256", cnn, cx[:256], cy[:256], args.repeats, eigenthings_iter=20)
    top10("cnn/256", cnn, cx[:256], cy[:256], args.repeats, with_pyhessian=False)
    per_example("cnn/256", cnn, cx[:256], cy[:256], args.repeats)
    warm("cnn/256", cnn, cx[:256], cy[:256], prev, args.repeats)
    if not args.quick:
        cnn = trained("simple_cnn", cx, cy)
        top1("cnn/2560", cnn, cx, cy, 1, eigenthings_iter=20)

    write(args.out)


def write(out: Path) -> None:
    header = (
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; "
        f"date {time.strftime('%Y-%m-%d')}\n\n"
        "| problem | task | tool | seconds, median [min, max] | HVPs | values "
        "| max rel. error | note |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in ROWS) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
