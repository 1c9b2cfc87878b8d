"""``make demo``: a one-shot measurement of K and H on real FashionMNIST.

Trains the paper's MLP (784-300-100-10) for a few hundred SGD steps on the real
FashionMNIST training set, then measures at the reached parameters:

- lambda_H^1 (and the top 3) of the Hessian of the mean loss on the fixed 5% probe,
  by Lanczos, with residuals and the number of Hessian-vector products;
- the gradient covariance K from L = 25 mini-batches of the training batch size M = 64:
  lambda_K^1, lambda_K^*, conditioning lambda_K^*/lambda_K^1, Tr(K);
- the gradient alignment ||g|| / ||g_5|| of a fresh training mini-batch gradient;
- the stability of Eq. 1 along e_H^1 (break-even when it reaches 1);
- Tr(H) by Hutchinson, with its standard error.

Run ``python -m breakeven.demo --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from . import (
    curvature_variance,
    gradient_alignment,
    gradient_covariance,
    hessian_eigenvalues,
    hessian_trace,
    stability,
)
from .data import load_dataset
from .train import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m breakeven.demo", description="One-shot K and H measurement on FashionMNIST."
    )
    ap.add_argument("--steps", type=int, default=300, help="SGD steps before measuring (300)")
    ap.add_argument("--lr", type=float, default=0.1, help="learning rate eta (0.1)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch size S = M (64)")
    ap.add_argument("--num-batches", type=int, default=25, help="L, mini-batches for K (25)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    data = load_dataset("fashion_mnist")
    print(f"FashionMNIST: {data.n_train} training images from {data.source}")
    config = TrainConfig(
        model="mlp",
        dataset="fashion_mnist",
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
    )
    result = train(config, dataset=data)
    model, loss_fn = result.model, nn.CrossEntropyLoss()
    final = result.final or {}
    print(
        f"trained the MLP for {result.steps} SGD steps (eta={args.lr}, S={args.batch_size}) "
        f"in {result.seconds:.1f} s: train accuracy {final.get('train_acc', float('nan')):.3f}"
    )

    x_probe, y_probe = data.probe()
    g = torch.Generator().manual_seed(1)
    M, L = args.batch_size, args.num_batches
    idx = torch.randperm(data.n_train, generator=g)[: (L + 1) * M]
    batches = [(data.x_train[i], data.y_train[i]) for i in idx.split(M)]

    eig = hessian_eigenvalues(model, loss_fn, (x_probe, y_probe), k=3, tol=1e-4)
    spec = gradient_covariance(model, loss_fn, batches[:L])
    x_b, y_b = batches[L]
    params = [p for p in model.parameters() if p.requires_grad]
    grad = torch.autograd.grad(loss_fn(model(x_b), y_b), params)
    align = gradient_alignment(list(grad), spec, k=5)
    lam = float(eig.eigenvalues[0])
    s2 = curvature_variance(model, loss_fn, (x_probe, y_probe), eig.eigenvectors[:, 0])
    stab = stability(args.lr, M, data.n_train, lam, s2)
    tr = hessian_trace(model, loss_fn, (x_probe, y_probe), num_samples=50)

    rows = [
        ("lambda_H^1 (probe)", f"{lam:.4g}", f"{eig.num_matvecs} HVPs, {eig.seconds:.2f} s"),
        ("lambda_H^2, lambda_H^3", ", ".join(f"{v:.4g}" for v in eig.eigenvalues[1:]), ""),
        ("residuals ||Hv - lambda v||", ", ".join(f"{v:.1e}" for v in eig.residuals), ""),
        ("2 / eta (edge of stability)", f"{2 / args.lr:.4g}", ""),
        ("lambda_K^1", f"{spec.top:.4g}", f"L={L}, M={M}, {spec.seconds:.2f} s"),
        ("lambda_K^* (L-1-th)", f"{spec.smallest_nonzero:.4g}", ""),
        ("conditioning lambda_K^*/lambda_K^1", f"{spec.condition:.4g}", ""),
        ("Tr(K)", f"{spec.trace:.4g}", f"per-example scale M Tr(K) = {spec.per_example_trace:.4g}"),
        ("||g|| / ||g_5||", f"{align:.4g}", "alignment of a fresh mini-batch gradient"),
        ("s^2 along e_H^1", f"{s2:.4g}", "variance of per-example curvature"),
        ("stability, Eq. 1", f"{stab:.4g}", "break-even when >= 1"),
        ("Tr(H) (Hutchinson)", f"{tr.estimate:.4g} +- {tr.stderr:.2g}", f"{tr.num_matvecs} HVPs"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nmeasured on {len(y_probe)} probe examples (5% of the training set, BN mode eval):")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:<18} {note}")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
