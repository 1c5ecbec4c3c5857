"""An exponential moving average (EMA) of the trained weights (``train.ema_decay``).

``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` keeps the average: after each
optimiser step, ``average = decay * average + (1 - decay) * weights`` (one fused ``lerp`` over all
tensors); its first update copies the weights, as torch's ``AveragedModel`` does. Buffers are not
averaged but copied (the encoders poolft trains have no running statistics).

Evaluation and saving run with the averaged weights copied into the trained model for the while
(:func:`averaged_weights`), so the DDP wrapper, the probe track's head-only module and
``save_pretrained`` see one model whichever weights it holds. The average is part of every
training checkpoint (:func:`ema_tensors`, :func:`load_ema_tensors`), so a resumed run continues it
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import PoolftError

#: the number of updates so far, stored beside the averaged parameters in a checkpoint
UPDATES_KEY = "n_averaged"


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model``'s parameters (a copy on the same device; it never needs gradients)."""
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    average.requires_grad_(False)
    return average


@contextmanager
def averaged_weights(average: AveragedModel | None, model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` holds the averaged weights; after it, its own again, bit for bit."""
    if average is None or int(average.n_averaged) == 0:  # nothing averaged yet: the weights are the average
        yield
        return
    own = list(model.parameters())
    kept = [p.detach().clone() for p in own]
    with torch.no_grad():
        for parameter, averaged in zip(own, average.module.parameters(), strict=True):
            parameter.copy_(averaged)
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, value in zip(own, kept, strict=True):
                parameter.copy_(value)


def ema_tensors(average: AveragedModel) -> dict[str, torch.Tensor]:
    """The averaged parameters by name, and the update count: what a checkpoint keeps."""
    tensors = {name: p.detach().contiguous() for name, p in average.module.named_parameters()}
    tensors[UPDATES_KEY] = average.n_averaged.detach().reshape(1)
    return tensors


def load_ema_tensors(average: AveragedModel, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Inverse of :func:`ema_tensors`; ``source`` names the file in the error for a foreign checkpoint."""
    own = dict(average.module.named_parameters())
    if set(own) | {UPDATES_KEY} != set(tensors):
        raise PoolftError(
            f"{source} holds the weight average of another model; resume with the model it was saved with"
        )
    with torch.no_grad():
        for name, parameter in own.items():
            parameter.copy_(tensors[name])
        average.n_averaged.copy_(tensors[UPDATES_KEY].reshape(()))
