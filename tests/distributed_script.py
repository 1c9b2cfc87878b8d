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
(Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(out))
dist.destroy_process_group()
