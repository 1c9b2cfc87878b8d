"""The Lightning and Hugging Face callbacks: records at the scheduled steps, the same values
as the same Tracker in a plain loop, lambda_H^1 at step 0 equal to hessian_eigenvalues at
the initial parameters, training bitwise unchanged by measuring, the run store, errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import breakeven as be
from breakeven.cli import summarize
from breakeven.records import RunStoreError, read_records, read_status
from breakeven.tracking import build_tracker

N, D_IN, CLASSES = 64, 6, 3


def _data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    y = (x @ torch.randn(D_IN, CLASSES, generator=g)).argmax(1)
    return x, y


def _plain_records(spec, net, batches, steps, tracker_kwargs, lr, momentum):
    """The same spec in the README's plain loop; returns the tracker and the trained net."""
    tracker = build_tracker(spec, **tracker_kwargs, lr=lr, momentum=momentum)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for step in range(steps):
        xb, yb = batches[step % len(batches)]
        opt.zero_grad()
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        tracker.before_step(step, net, (xb, yb), loss)
        opt.step()
        tracker.after_step(step, net)
    return tracker, net


def _without_seconds(records):
    return [(r["step"], r["measure"], r["values"], r["matvecs"]) for r in records]


def test_importing_breakeven_imports_neither_library() -> None:
    code = (
        "import sys, breakeven, breakeven.integrations as i; "
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules; "
        "assert 'BreakevenCallback' in dir(i); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- Lightning

SPEC = {
    "covariance": {"every": 2, "num_batches": 3},
    "alignment": {"every": 2, "k": 2},
    "hessian": {"every": 3, "k": 2},
    "edge_of_stability": {"every": 3},
    "loss_change": {"every": 2},
    "lr": {"every": 1},
}


def _lightning():
    L = pytest.importorskip("lightning.pytorch")

    class Module(L.LightningModule):
        def __init__(self, lr: float = 0.1, momentum: float = 0.9) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, CLASSES))
            self.lr, self.momentum = lr, momentum

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)

    def fit(module, loader, callbacks=(), steps=6, val=None, **kwargs):
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=list(callbacks),
            **kwargs,
        )
        trainer.fit(module, loader, val)
        return trainer

    return L, Module, fit


def test_lightning_callback_equals_the_plain_loop(tmp_path: Path) -> None:
    _, Module, fit = _lightning()
    from breakeven.integrations import BreakevenCallback

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    probe = (x[:16], y[:16])
    torch.manual_seed(0)
    module = Module()
    initial = copy.deepcopy(module)

    cb = BreakevenCallback(SPEC, probe=probe, train_data=(x, y), out_dir=tmp_path / "run")
    fit(module, loader, [cb])
    records = cb.tracker.records_

    # at the scheduled steps
    steps = {m: [r["step"] for r in records if r["measure"] == m] for m in SPEC}
    assert steps["covariance"] == steps["alignment"] == steps["loss_change"] == [0, 2, 4]
    assert steps["hessian"] == steps["edge_of_stability"] == [0, 3]
    assert steps["lr"] == list(range(6))
    assert cb.tracker.batch_size == 16 and cb.tracker.steps_per_epoch == 4
    eos = [r["values"] for r in records if r["measure"] == "edge_of_stability"]
    assert eos[0]["eos_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1)  # momentum was read

    # the same values as the same tracker in the plain loop, from the same initial parameters
    batches = list(loader)
    plain, net = _plain_records(
        SPEC,
        copy.deepcopy(initial.net),
        batches,
        6,
        {"probe": probe, "train_data": (x, y), "batch_size": 16, "steps_per_epoch": 4},
        lr=0.1,
        momentum=0.9,
    )
    assert _without_seconds(records) == _without_seconds(plain.records_)

    # lambda_H^1 at step 0: hessian_eigenvalues at the initial parameters
    top = be.hessian_eigenvalues(initial.net, nn.CrossEntropyLoss(), probe, k=2, tol=1e-3)
    first = next(r for r in records if r["measure"] == "hessian")["values"]
    assert first["lambda_H_1"] == pytest.approx(float(top.eigenvalues[0]), rel=1e-3)
    assert first["converged"] == 1.0

    # measuring does not change training: bitwise the plain loop's, and a fit without it
    again = copy.deepcopy(initial)
    fit(again, loader)
    for a, b, c in zip(module.net.parameters(), again.net.parameters(), net.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)

    # the run store
    path = tmp_path / "run"
    assert read_status(path) == "finished" and (path / "model.pt").exists()
    assert _without_seconds(read_records(path)) == _without_seconds(records)
    rows = dict(summarize(path))
    # the maximum along the trajectory is over steps >= 1, as in every table
    top = max(r["values"]["lambda_H_1"] for r in records if r["measure"] == "hessian" and r["step"])
    assert rows["steps"] == "6" and rows["max lambda_H^1 after step 0"].startswith(f"{top:.4g}")
    assert be.load_run(path)["measure"].nunique() == len(SPEC)
    with pytest.raises(RunStoreError, match="already holds a run"):
        fit(
            copy.deepcopy(initial),
            loader,
            [BreakevenCallback(SPEC, probe=probe, train_data=(x, y), out_dir=path)],
        )


def test_lightning_accumulation_and_validation(tmp_path: Path) -> None:
    _, Module, fit = _lightning()
    from breakeven.integrations.lightning import BreakevenCallback

    x, y = _data(32)
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    val = torch.utils.data.DataLoader(ds, batch_size=16)
    tracker = be.Tracker(
        [be.GradientCovariance(num_batches=2)], be.every(1), probe=(x, y), train_data=(x, y)
    )
    cb = BreakevenCallback(tracker, out_dir=tmp_path / "acc")
    trainer = fit(
        Module(momentum=0.0),
        loader,
        [cb],
        steps=-1,
        max_epochs=1,
        accumulate_grad_batches=2,
        val=val,
    )
    assert trainer.global_step == 2
    k = [r for r in tracker.records_ if r["measure"] == "covariance"]
    assert [r["step"] for r in k] == [0, 1]
    assert k[0]["values"]["M"] == 16  # S = 8 per batch x 2 accumulated
    assert [e["step"] for e in cb.evaluations_] == [2]
    assert "val_loss" in cb.evaluations_[0]["values"]
    stored = read_records(tmp_path / "acc")
    assert [r["measure"] for r in stored] == ["covariance", "covariance", "evaluation"]

    with pytest.raises(ValueError, match="pass them to the Tracker"):
        BreakevenCallback(tracker, probe=(x, y))
    with pytest.raises(TypeError, match=r"must be a breakeven\.Tracker"):
        BreakevenCallback("hessian")


# ---------------------------------------------------------------- Hugging Face

HF_SPEC = {
    "covariance": {"every": 2, "num_batches": 3},
    "hessian": {"every": 2},
    "loss_change": {"every": 2},
    "lr": {"every": 1},
}


def _bert(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def _tokens(n: int = 48, length: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, -2:] = 0  # padding on every other example
    ids = ids * mask
    labels = (ids[:, 0] + ids[:, 1]) % 3
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _hf_train(model, data, tmp_path, callbacks=(), steps=4, eval_data=None, **kwargs):
    transformers = pytest.importorskip("transformers")
    rows = [{k: v[i] for k, v in data.items()} for i in range(len(data["labels"]))]
    evals = None
    if eval_data is not None:
        evals = [{k: v[i] for k, v in eval_data.items()} for i in range(len(eval_data["labels"]))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="linear",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="steps" if evals is not None else "no",
        eval_steps=2,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        **kwargs,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=evals, callbacks=list(callbacks)
    )
    trainer.train()
    return trainer


# BERT's attention has data-dependent branches that vmap cannot batch: K's batch gradients
# come from a loop, with this warning.
@pytest.mark.filterwarnings("ignore:torch.func.vmap cannot batch this model:RuntimeWarning")
def test_huggingface_callback(tmp_path: Path) -> None:
    model = _bert()
    from breakeven.integrations.huggingface import (
        BreakevenTrainerCallback,
        HFModel,
        as_batch,
        model_loss,
    )

    initial = copy.deepcopy(model)
    data = _tokens()
    probe = {k: v[:16] for k, v in data.items()}
    cb = BreakevenTrainerCallback(
        HF_SPEC, probe=probe, train_data=data, out_dir=tmp_path / "r", log=["tensorboard"]
    )
    _hf_train(model, data, tmp_path, [cb], eval_data=probe)
    records = cb.tracker.records_

    steps = {m: [r["step"] for r in records if r["measure"] == m] for m in HF_SPEC}
    assert steps["covariance"] == steps["hessian"] == steps["loss_change"] == [0, 2]
    assert steps["lr"] == [0, 1, 2, 3]
    lrs = [r["values"]["lr"] for r in records if r["measure"] == "lr"]
    assert lrs == pytest.approx([0.05 * (4 - t) / 4 for t in range(4)])  # the linear schedule
    assert cb.input_names == ("input_ids", "attention_mask") and cb.tracker.batch_size == 8
    assert all(
        r["values"]["delta_loss"] == r["values"]["delta_loss"]
        for r in records
        if r["measure"] == "loss_change"
    )

    # step 0 equals the same tracker at the initial parameters, and hessian_eigenvalues
    adapter = HFModel(initial, cb.input_names)
    (xp, yp), _ = as_batch(probe)
    (xt, yt), _ = as_batch(data)
    loss_fn = model_loss(initial)
    plain = build_tracker(
        HF_SPEC, probe=(xp, yp), train_data=(xt, yt), loss_fn=loss_fn, lr=0.05, batch_size=8
    )
    plain.before_step(0, adapter)
    plain.after_step(0, adapter)
    for measure in ("covariance", "hessian", "lr"):
        mine = next(r for r in records if r["measure"] == measure and r["step"] == 0)
        theirs = next(r for r in plain.records_ if r["measure"] == measure)
        assert mine["values"] == pytest.approx(theirs["values"], rel=1e-6, abs=1e-9)
    top = be.hessian_eigenvalues(adapter, loss_fn, (xp, yp), tol=1e-3)
    first = next(r for r in records if r["measure"] == "hessian")["values"]
    assert first["lambda_H_1"] == pytest.approx(float(top.eigenvalues[0]), rel=1e-3)

    # the inferred loss is the model's own
    with torch.no_grad():
        initial.eval()
        own = initial(
            input_ids=probe["input_ids"],
            attention_mask=probe["attention_mask"],
            labels=probe["labels"],
        ).loss
        assert float(loss_fn(adapter(xp), yp)) == pytest.approx(float(own), rel=1e-6)

    # measuring does not change training (dropout is on: the global RNG is restored)
    again = copy.deepcopy(initial)
    _hf_train(again, data, tmp_path, eval_data=probe)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)

    # the run store, with the Trainer's evaluations
    path = tmp_path / "r"
    stored = read_records(path)
    assert read_status(path) == "finished"
    evals = [r for r in stored if r["measure"] == "evaluation"]
    assert [r["step"] for r in evals] == [2, 4] and "eval_loss" in evals[0]["values"]
    assert _without_seconds([r for r in stored if r["measure"] != "evaluation"]) == (
        _without_seconds(records)
    )

    # live logging (log=["tensorboard"]): every stored value at its step, measures and the
    # Trainer's evaluations (and training above was bitwise that of a run without it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from breakeven.tracking.sinks import scalars

    want: dict[str, list] = {}
    for r in stored:
        for tag, v in scalars(r).items():
            want.setdefault(tag, []).append((r["step"], v))
    acc = EventAccumulator(str(path / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    assert "breakeven/evaluation/eval_loss" in got and got.keys() == want.keys()
    for tag, series in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in series]
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in series], rel=1e-6)


def test_huggingface_errors(tmp_path: Path) -> None:
    model = _bert()
    from breakeven.integrations.huggingface import BreakevenTrainerCallback, as_batch, model_loss

    with pytest.raises(TypeError, match="cannot tell the loss of Sequential"):
        model_loss(nn.Sequential())
    data = _tokens(16)
    with pytest.raises(ValueError, match="must share shape and dtype"):
        as_batch({**data, "attention_mask": data["attention_mask"][:, :3]})
    with pytest.raises(ValueError, match="no 'labels'"):
        as_batch({"input_ids": data["input_ids"]})

    class SummedBertForSequenceClassification(type(model)):
        """Minimises the summed loss: not the mean loss breakeven infers."""

        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            if labels is not None:
                out.loss = F.cross_entropy(out.logits, labels, reduction="sum")
            return out

    summed = SummedBertForSequenceClassification(model.config)
    cb = BreakevenTrainerCallback({"hessian": {"every": 1}}, probe=data, train_data=data)
    with pytest.raises(ValueError, match="the model's own loss is"):
        _hf_train(summed, data, tmp_path, [cb], steps=1)
    # with its loss given, it trains and measures
    cb = BreakevenTrainerCallback(
        {"hessian": {"every": 1}},
        probe=data,
        train_data=data,
        loss_fn=lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum"),
    )
    _hf_train(summed, data, tmp_path, [cb], steps=1)
    assert [r["step"] for r in cb.tracker.records_] == [0]
