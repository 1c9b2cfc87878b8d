"""The model state of a measurement: train/eval modes, BatchNorm and the RNG, set for the
measurement and restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

BNMode = Literal["eval", "train"]

#: The BatchNorm layers (of any dimension): the modules whose train mode couples examples.
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


def check_bn_mode(bn_mode: object) -> None:
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")


def check_forward_mode(model: nn.Module, bn_mode: BNMode) -> None:
    """Refuse forward-mode AD through train-mode BatchNorm: in torch 2.13 it silently returns
    wrong second derivatives there (an asymmetric Hessian), so it is never used."""
    if bn_mode == "train" and any(isinstance(m, BATCHNORM_TYPES) for m in model.modules()):
        raise ValueError(
            "forward-mode derivatives through train-mode BatchNorm are wrong in torch.func; "
            "use method='reverse' (or bn_mode='eval')"
        )


@contextlib.contextmanager
def measuring(model: nn.Module, bn_mode: BNMode = "eval") -> Iterator[None]:
    """Put the model in the mode that defines "the" measured loss, and restore everything.

    Every module is put in eval mode (dropout off: each product of one estimate must see the
    same function); with ``bn_mode="train"`` the BatchNorm layers alone are put back in train
    mode, so that they normalise with the statistics of each chunk, and their
    ``track_running_stats`` is switched off meanwhile, so that no forward pass writes the
    running statistics (which also keeps the forward pure for ``torch.func``). On exit the
    train/eval flags, ``track_running_stats`` and the global CPU (and CUDA) RNG state are
    restored. Sparse embeddings (``sparse=True``) give dense gradients meanwhile, and the
    weights of embeddings with ``max_norm`` (renormalised in place by each lookup) are put
    back as they were. Parameters and ``.grad`` are never written (the operators differentiate
    detached copies).
    """
    check_bn_mode(bn_mode)
    modes = [(m, m.training) for m in model.modules()]
    tracking = [
        (m, m.track_running_stats) for m in model.modules() if isinstance(m, BATCHNORM_TYPES)
    ]
    # cuDNN's RNN kernels run backward only in train mode and are not twice differentiable:
    # measure recurrent models with PyTorch's own kernels (same function, CPU unaffected).
    rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = torch.backends.cudnn.flags(enabled=False) if rnn else contextlib.nullcontext()
    # Sparse embedding gradients cannot be stacked, flattened or differentiated again: the
    # embeddings give dense ones meanwhile (the same numbers; the forward is unchanged).
    embeddings = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    sparse = [m for m in embeddings if m.sparse]
    # An embedding with max_norm renormalises the rows it looks up in place, in the weight's
    # own storage (the operators' detached copies share it): its weight is put back on exit.
    renormed = [(m.weight, m.weight.detach().clone()) for m in embeddings if m.max_norm is not None]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        model.eval()
        for m in sparse:
            m.sparse = False
        if bn_mode == "train":
            for m, _ in tracking:
                m.train()
                m.track_running_stats = False
        with cudnn:
            yield
    finally:
        for m, flag in modes:
            m.training = flag
        for m, flag in tracking:
            m.track_running_stats = flag
        for m in sparse:
            m.sparse = True
        with torch.no_grad():
            for weight, saved in renormed:
                if not torch.equal(weight, saved):  # no version bump when no row was renormed
                    weight.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
