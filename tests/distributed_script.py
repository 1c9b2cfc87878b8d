"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU): each
rank holds half of the data; every estimator must give every rank the result of one process
on all the data. Writes ``rank<r>.json`` into the directory given as argv[1]."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import breakeven as be
from cases import make_case

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
out = {}
for name in ("mlp_ce", "cnn_bn"):
    c = make_case(name, n=16)
    x, y = c.x, c.y
    part = slice(rank * 8, (rank + 1) * 8)
    kw = {"k": 2, "tol": 1e-10, "max_iter": 60}
    full = be.hessian_eigenvalues(c.model, c.loss_fn, (x, y), **kw)
    mine = be.hessian_eigenvalues(c.model, c.loss_fn, (x[part], y[part]), distributed=True, **kw)
    e = full.eigenvectors[:, 0]
    trace = [
        be.hessian_trace(c.model, c.loss_fn, d, num_samples=6, seed=1, distributed=dd).estimate
        for d, dd in (((x, y), False), ((x[part], y[part]), True))
    ]
    s2 = [
        be.curvature_variance(c.model, c.loss_fn, d, e, distributed=dd)
        for d, dd in (((x, y), False), ((x[part], y[part]), True))
    ]
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    k_full = be.gradient_covariance(c.model, c.loss_fn, batches)
    k_mine = be.gradient_covariance(
        c.model, c.loss_fn, batches[rank * 2 : rank * 2 + 2], distributed=True
    )
    out[name] = {
        "full": full.eigenvalues.tolist(),
        "mine": mine.eigenvalues.tolist(),
        "trace": trace,
        "s2": s2,
        "K_full": k_full.eigenvalues.tolist(),
        "K_mine": k_mine.eigenvalues.tolist(),
    }
try:
    be.gradient_covariance(c.model, c.loss_fn, batches[: rank + 2], distributed=True)
    out["uneven"] = "no error"
except ValueError as err:
    out["uneven"] = str(err)


def tracked_loop(distributed: bool):
    """A user's data-parallel loop (each rank half of every batch, gradients all-reduced)
    with a Tracker, against the same loop in one process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (64,), generator=g)

    def mine(t):
        return t[rank::world] if distributed else t

    emitted = []
    tracker = be.build_tracker(
        {
            "hessian": {"every": 2, "tol": 1e-10},
            "stability": {"every": 2},
            "loss_change": {"every": 1},
            "probe": {"every": 2},
            "covariance": {"every": 2, "num_batches": 4, "batch_size": 4},
        },
        probe=(mine(X[:16]), mine(Y[:16])),
        train_data=(mine(X), mine(Y)),
        lr=0.1,
        batch_size=8,
        on_record=emitted.append,
        distributed=distributed,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(4):
        xb, yb = X[step * 8 : (step + 1) * 8], Y[step * 8 : (step + 1) * 8]
        opt.zero_grad()
        loss = loss_fn(model(mine(xb)), mine(yb)) * len(mine(yb)) / len(yb)
        loss.backward()
        if distributed:
            for p in model.parameters():
                dist.all_reduce(p.grad)
        tracker.before_step(step, model, (xb, yb), loss)
        opt.step()
        tracker.after_step(step, model)
    return [(r["step"], r["measure"], r["values"]) for r in tracker.records_], len(emitted)


out["loop_single"], out["emitted_single"] = tracked_loop(False)
out["loop_ranks"], out["emitted_ranks"] = tracked_loop(True)
(Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(out))
dist.destroy_process_group()
