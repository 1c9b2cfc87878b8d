"""Why a warm start after one SGD step takes 5 products on the MLP problem (issue 2).

    .venv/bin/python benchmarks/warm_start.py

The bench_core problems (the MLP after 100 SGD steps on FashionMNIST, 2,560 probe images;
SimpleCNN on 256 CIFAR-shaped examples), then one more SGD step: how far the top eigenpair
moves, the true error of Lanczos after k products from the previous eigenvector alone and
from the mixed start (random + gradient + previous), and the products the certified stop
(tol 1e-3) needs for several weightings of the previous eigenvector in the start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import breakeven as be
from bench_core import LOSS, sgd_step, trained
from breakeven.data import load_dataset
from breakeven.operators.hessian import HessianOperator
from breakeven.spectra.lanczos import lanczos, random_unit


def main() -> None:
    torch.set_num_threads(1)
    fm = load_dataset("fashion_mnist")
    g = torch.Generator().manual_seed(0)
    cx = torch.randn(2560, 3, 32, 32, generator=g)
    cy = torch.randint(0, 10, (2560,), generator=g)
    problems = [
        (
            "mlp/2560",
            trained("mlp", fm.x_train[:20000].float(), fm.y_train[:20000]),
            fm.x_train[:2560].float(),
            fm.y_train[:2560],
        ),
        ("cnn/256", trained("simple_cnn", cx, cy), cx[:256], cy[:256]),
    ]
    for name, model, x, y in problems:
        prev = be.hessian_eigenvalues(model, LOSS, (x, y), k=1, tol=1e-8, max_iter=80)
        sgd_step(model, x, y)
        ref = be.hessian_eigenvalues(model, LOSS, (x, y), k=1, tol=1e-9, max_iter=80)
        lam = float(ref.eigenvalues[0])
        v = prev.eigenvectors[:, 0] / prev.eigenvectors[:, 0].norm()
        overlap = abs(float(v @ ref.eigenvectors[:, 0]))
        print(
            f"\n{name}: lambda_H^1 {float(prev.eigenvalues[0]):.4g} -> {lam:.4g}, "
            f"overlap of the top eigenvectors {overlap:.2f}"
        )
        op = HessianOperator(model, LOSS, (x, y))
        grad = op.gradient()
        grad = grad / grad.norm()
        r = random_unit(op.shape[0], torch.Generator().manual_seed(0)).to(grad)
        print("| start | k=2 | k=3 | k=4 | k=5 | k=6 |")
        print("|---|---|---|---|---|---|")
        for label, start in (
            ("previous eigenvector", v),
            ("random + gradient + previous", r + grad + v),
        ):
            errs = []
            for k in range(2, 7):
                res = lanczos(op, 1, tol=1e-12, max_iter=k, v0=start)
                errs.append(f"{abs(float(res.eigenvalues[0]) - lam) / lam:.1e}")
            print(f"| {label} | " + " | ".join(errs) + " |")
        print("| weights (random, gradient, previous) | products to the certified 1e-3 | error |")
        print("|---|---|---|")
        for w in ((1, 1, 1), (1, 1, 3), (1, 1, 10), (0, 0, 1)):
            res = lanczos(op, 1, tol=1e-3, v0=w[0] * r + w[1] * grad + w[2] * v)
            err = abs(float(res.eigenvalues[0]) - lam) / lam
            print(f"| {w} | {res.num_matvecs} | {err:.1e} |")


if __name__ == "__main__":
    main()
