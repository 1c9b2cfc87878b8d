"""A user's own training loop that records with ``Tracker(out_dir=...)`` and checkpoints
itself; run by tests/test_own_loop.py in a subprocess (killed with SIGKILL, then resumed).

Usage: python own_loop_script.py OUT_DIR CHECKPOINT STEPS KILL_AT SAVE_TRACKER_STATE
(KILL_AT -1: never; SAVE_TRACKER_STATE 0/1: keep ``tracker.state_dict()`` in the loop's
checkpoint, for records bitwise equal to an uninterrupted run's)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

import breakeven as be

BATCH = 16


def main(out_dir: str, checkpoint: str, steps: int, kill_at: int, save_state: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    ckpt = Path(checkpoint)
    measures = [
        be.GradientCovariance(num_batches=4),
        ("hessian", be.every(3)),
        "loss_change",
        ("lr", be.per_epoch(1)),
    ]
    with be.Tracker(
        measures,
        be.every(3),
        loss_fn=loss_fn,
        probe=(x[:32], y[:32]),
        train_data=(x, y),
        lr=0.1,
        batch_size=BATCH,
        out_dir=out_dir,
        config={"model": "mlp"},
    ) as tracker:
        start = 0
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start = state["step"]
            if save_state:
                tracker.load_state_dict(state["tracker"])
        for step in range(start, steps):
            i = (step % (len(y) // BATCH)) * BATCH
            xb, yb = x[i : i + BATCH], y[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            tracker.before_step(step, model, (xb, yb), loss)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            opt.step()
            tracker.after_step(step, model)
            if (step + 1) % 4 == 0:
                state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}
                if save_state:
                    state["tracker"] = tracker.state_dict()
                torch.save(state, ckpt)


if __name__ == "__main__":
    out, ck, n, kill, save = sys.argv[1:6]
    main(out, ck, int(n), int(kill), bool(int(save)))
