"""Check the peer adapters of ``benchmarks/peers.py`` against dense answers on a tiny MLP.

Run in the peers venv (a script, not a pytest test)::

    bash benchmarks/setup_peers.sh
    benchmarks/.peers/bin/python benchmarks/check_peers.py

The model is a 20-10-3 tanh MLP (D = 243 parameters) in float32 on 64 random examples with
a mean-reduced cross-entropy. The reference is the dense Hessian of the flattened-parameter
loss from ``torch.func.hessian`` in float64 and its ``torch.linalg.eigvalsh``. Each peer runs
twice: with its documented defaults (reported, loose check) and with tight settings (strict
check). BackPACK's per-example gradients are compared with a loop of ``autograd.grad``.
It also checks that no adapter changed the caller's model (parameters, ``.grad``, mode)
or the global torch RNG. Exits non-zero on any failure.
"""

from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import peers

K = 3
N = 64
torch.set_num_threads(1)
# Known, harmless peer warnings (see peers.py): PyHessian's backward(create_graph=True)
# reference cycle, BackPACK's full backward hook on a model whose input needs no grad.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def make_problem() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3))
    x = torch.randn(N, 20)
    y = torch.randint(0, 3, (N,))
    return model, nn.CrossEntropyLoss(), x, y


def dense_hessian(model: nn.Module, loss_fn: nn.Module, x, y) -> torch.Tensor:
    """Dense float64 Hessian of the mean loss w.r.t. the flattened parameters."""
    m64 = _to64(model)
    names = [n for n, _ in m64.named_parameters()]
    shapes = [p.shape for _, p in m64.named_parameters()]
    sizes = [p.numel() for _, p in m64.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m64.parameters()])
    x64 = x.double()

    def loss_of_flat(theta: torch.Tensor) -> torch.Tensor:
        chunks = theta.split(sizes)
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return loss_fn(functional_call(m64, params, (x64,)), y)

    return torch.func.hessian(loss_of_flat)(flat)


def _to64(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


def per_example_loop(model: nn.Module, loss_fn: nn.Module, x, y) -> np.ndarray:
    """Row i: gradient of loss(f(x_i), y_i), parameters flattened in order."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        li = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        gi = torch.autograd.grad(li, params)
        rows.append(torch.cat([g.reshape(-1) for g in gi]))
    return torch.stack(rows).numpy()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))


def main() -> int:
    model, loss_fn, x, y = make_problem()
    model.train()
    D = sum(p.numel() for p in model.parameters())
    params_before = [p.detach().clone() for p in model.parameters()]
    rng_before = torch.get_rng_state()

    H = dense_hessian(model, loss_fn, x, y)
    evals = torch.linalg.eigvalsh(H).numpy()  # ascending, float64
    top_la = evals[::-1][:K]
    top_lm = evals[np.argsort(-np.abs(evals))][:K]
    print(f"tiny MLP 20-10-3 tanh, N={N}, D={D}, float32 model, float64 dense reference")
    print(f"dense top-{K} algebraic: {np.array2string(top_la, precision=6)}")
    print(f"dense top-{K} magnitude: {np.array2string(top_lm, precision=6)}")
    print(f"dense smallest: {evals[0]:.6f}  (negative eigenvalues: {(evals < 0).sum()})")
    symmetric = torch.allclose(H, H.T, atol=1e-12)
    print(f"dense Hessian symmetric: {symmetric}")

    failures: list[str] = []

    def report(name: str, res: peers.PeerResult, want: np.ndarray, bound: float | None):
        got = np.sort(res.values)[::-1] if name.startswith("curvlinops") else res.values
        err = rel_err(got, want)
        ok = bound is None or err <= bound
        flag = "ok  " if ok else "FAIL"
        bound_txt = "report only" if bound is None else f"<= {bound:.0e}"
        print(
            f"{flag} {name:<38} values={np.array2string(res.values, precision=6)} "
            f"rel_err={err:.1e} ({bound_txt}) hvps={res.hvps} t={res.seconds * 1e3:.1f} ms"
        )
        if not ok:
            failures.append(name)

    # Reference: scipy eigsh on the dense float64 matrix.
    Hn = H.numpy()
    ref = peers.eigsh_reference(lambda v: Hn @ v, D, K)
    report("eigsh_reference(dense matvec)", ref, top_la, 1e-10)

    # PyHessian: deflated power iteration -> largest magnitude first.
    report(
        "pyhessian defaults (tol=1e-3,it=100)",
        peers.pyhessian_top(model, loss_fn, x, y, K),
        top_lm,
        5e-2,
    )
    report(
        "pyhessian tol=1e-7, max_iter=2000",
        peers.pyhessian_top(model, loss_fn, x, y, K, tol=1e-7, max_iter=2000),
        top_lm,
        1e-3,
    )

    # hessian-eigenthings: Lanczos, 'LM' default, max_iter default min(2k, D-1).
    report(
        "eigenthings defaults (LM, max_iter=2k)",
        peers.eigenthings_top(model, loss_fn, x, y, K),
        top_lm,
        None,
    )
    report(
        "eigenthings LA, max_iter=40",
        peers.eigenthings_top(model, loss_fn, x, y, K, which="LA", max_iter=40),
        top_la,
        1e-4,
    )

    # curvlinops + eigsh(which='LA'): ascending order from eigsh, sorted for comparison.
    report(
        "curvlinops+eigsh tol=1e-3",
        peers.curvlinops_eigsh_top(model, loss_fn, x, y, K, tol=1e-3),
        top_la,
        1e-3,
    )
    report(
        "curvlinops+eigsh tol=1e-6, 4 batches",
        peers.curvlinops_eigsh_top(model, loss_fn, x, y, K, tol=1e-6, batch_size=16),
        top_la,
        1e-4,
    )

    # BackPACK per-example gradients vs a loop.
    bp = peers.backpack_per_example_grads(model, loss_fn, x, y)
    loop = per_example_loop(model, loss_fn, x, y)
    err = float(np.max(np.abs(bp.values - loop)) / np.max(np.abs(loop)))
    ok = bp.values.shape == (N, D) and bp.values.dtype == np.float32 and err < 1e-5
    print(
        f"{'ok  ' if ok else 'FAIL'} {'backpack per-example grads':<38} shape={bp.values.shape} "
        f"dtype={bp.values.dtype} max|diff|/max|g|={err:.1e} (<= 1e-05) "
        f"mean-row==batch grad: {np.allclose(bp.values.mean(0), loop.mean(0), atol=1e-6)} "
        f"t={bp.seconds * 1e3:.1f} ms"
    )
    if not ok:
        failures.append("backpack")

    # The caller's model and RNG are untouched.
    same_params = all(
        torch.equal(a, b) for a, b in zip(params_before, model.parameters(), strict=True)
    )
    no_grads = all(p.grad is None for p in model.parameters())
    rng_same = torch.equal(rng_before, torch.get_rng_state())
    untouched = same_params and no_grads and model.training and rng_same
    print(
        f"{'ok  ' if untouched else 'FAIL'} caller untouched: params={same_params} "
        f"grad None={no_grads} train mode={model.training} rng={rng_same}"
    )
    if not untouched:
        failures.append("caller state")

    print("ALL OK" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
