"""Gradient-norm clipping folded into the fused AdamW step.

``clip_grad_norm_`` takes the norm of every gradient one tensor at a time and then multiplies
every gradient by ``max_norm / norm``: on a CPU that is two passes over all gradients (90 MB for
MiniLM-L6) besides the optimiser's own (``scripts/bench_fast_kernels.py`` times both ways).
Fine-tuning clips most steps (see ``grad_norm`` in a run's ``log.jsonl``), so the multiply is not
optional.

The fused Adam/AdamW kernel already divides each gradient by ``optimizer.grad_scale`` as it reads
it (the hook ``torch.amp.GradScaler`` uses to unscale). :func:`clipped_optimizer_step` sets that
scale to ``(norm + 1e-6) / max_norm`` when the norm is above ``max_norm`` (1 otherwise), the
reciprocal of ``clip_grad_norm_``'s coefficient, and takes the norm with one BLAS dot product per
tensor, accumulated in float64. Same update, one pass fewer.

It applies where the gradients are whole on every process and no gradient scaler is in use (one
process, or DDP on CPUs or GPUs) with a fused Adam/AdamW; otherwise the step is Accelerate's
``clip_grad_norm_`` followed by ``optimizer.step()``.

In that plain setup Accelerate's optimizer wrapper only forwards ``step`` and ``zero_grad`` to the
torch optimizer, after checks that cost more than a small head's whole update: it looks for the
``lomo_optim`` package twice per step (``importlib`` finding no spec, 85 us each) and reads
``zero_grad``'s signature every call (25 us). The folded step and :func:`zero_gradients` call the
torch optimizer directly there; the update is the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

WHOLE_GRADIENTS = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all gradients together (a 0-dim float32 tensor); parameters without one are skipped."""
    grads = [p.grad.reshape(-1) for p in parameters if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
    for grad in grads:
        total += torch.dot(grad, grad).to(torch.float64)
    return total.sqrt().float()


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimiser inside Accelerate's wrapper (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def can_fold(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> bool:
    inner = inner_optimizer(optimizer)
    return (
        isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))
        and bool(inner.defaults.get("fused"))
        and accelerator.scaler is None
        and accelerator.distributed_type in WHOLE_GRADIENTS
    )


def clipped_optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    *,
    fold: bool = True,
) -> torch.Tensor:
    """Clip the gradients of ``model`` to ``max_norm`` and step ``optimizer``; returns the norm before clipping.

    ``fold=False`` (or an optimiser/setup that cannot fold) runs Accelerate's ``clip_grad_norm_``, then ``step()``.
    """
    if not (fold and can_fold(accelerator, optimizer)):
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return norm
    norm = gradient_norm(model.parameters())
    inner = inner_optimizer(optimizer)
    inner.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    try:
        inner.step()  # what Accelerate's wrapper calls here (no scaler, gradients in sync), minus its checks
    finally:
        inner.grad_scale = None
    return norm


def zero_gradients(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad()`` as Accelerate's wrapper does it: at a synchronising step only, gradients set to None.

    Where the wrapper can do no more than forward the call (no gradient scaler, whole gradients), the torch
    optimizer is called directly, without the wrapper's per-call signature check.
    """
    if not (accelerator.scaler is None and accelerator.distributed_type in WHOLE_GRADIENTS):
        optimizer.zero_grad()
    elif accelerator.sync_gradients:
        inner_optimizer(optimizer).zero_grad(set_to_none=True)
