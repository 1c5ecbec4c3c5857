"""Dropout with cheap random masks on CPU, for hidden states and attention probabilities.

PyTorch's CPU dropout draws one double-precision Bernoulli sample per element from a serial
generator, stores a float mask and runs three elementwise passes; attention dropout also pushes CPU
``scaled_dot_product_attention`` off its fused kernel onto the unfused math path.
``scripts/bench_fast_kernels.py`` times both dropouts, ``scripts/bench_mfu.py`` a whole MiniLM-L6 step.

Here one 64-bit random word gives four 16-bit uniforms: an element is kept when its uniform is
below ``keep_level`` out of 65,536 (``keep_level = round((1 - p) * 65536)``), and kept elements are
scaled by ``65536 / keep_level``, the exact inverse of the keep probability, so the output's
expectation equals the input's, as with ``nn.Dropout``. The realised drop rate differs from ``p`` by
less than 1 / 131,072. The mask is a bool tensor (a quarter of a float mask's memory) and the
generator is the device's default one, so ``set_seed`` and activation checkpointing (which replays
the generator) behave as with ``nn.Dropout``. The mask is applied by multiplying the float's bits,
as integers, by the bool (vectorised, :func:`keep_and_scale`), not with ``masked_fill_``, which
CPU torch runs one element at a time.

Off CPU, PyTorch's fused dropout and attention kernels are already fast: every function here
hands over to them there, and in evaluation mode (or with ``p = 0``) they are identities / SDPA.
``use_cpu_dropout(model)`` switches a Hugging Face model over; saved weights and configs do not
change (dropout has no parameters and the attention choice is not saved).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

LEVELS = 65536  # 16-bit uniforms
CPU_ATTENTION = "poolft_cpu_dropout"  # registered below; SDPA except for CPU training with dropout


def keep_level(p: float) -> int:
    """How many of the 65,536 uniform levels keep an element, for drop probability ``p``."""
    return round((1.0 - p) * LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A random bool mask of ``shape``: each element True (kept) with probability ``keep_level(p) / 65536``."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(torch.iinfo(torch.int64).min, None)  # all 64 bits uniform
    uniforms = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    return uniforms < keep_level(p) - LEVELS // 2


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The complement of :func:`keep_mask` from the same draw: True (dropped) with probability about ``p``."""
    return ~keep_mask(shape, p, device)


def _keep_mask_of(x: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`keep_mask` of ``x``'s shape on ``x``'s device."""
    return keep_mask(x.shape, p, x.device)


# torch.compile (train.compile) cannot trace the in-place ``random_``: as an opaque op the mask is
# drawn by the eager code above inside the compiled graph, from the same generator in the same
# order, so compiled and eager runs drop the same elements. The tag (where custom_op takes tags) keeps
# the compiler from merging two draws of one shape or recomputing a draw in the backward pass;
# without it, compiled code draws in place (a graph break per dropout, still correct).
keep_mask_like = None
if "tags" in inspect.signature(torch.library.custom_op).parameters:
    keep_mask_like = torch.library.custom_op(
        "poolft::keep_mask", _keep_mask_of, mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
    )
    keep_mask_like.register_fake(lambda x, p: torch.empty(x.shape, dtype=torch.bool, device=x.device))

#: the integer type of each float width, for multiplying a float's bits by a 0/1 mask
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def keep_and_scale(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where ``keep`` is True and 0 elsewhere, bit for bit as ``x.mul(scale).masked_fill_(~keep, 0)``.

    The float's bits are multiplied by the bool mask as integers (0 or the same bits) and then
    scaled: both passes are vectorised, where CPU ``masked_fill_`` and ``where`` run an element at a
    time (``scripts/bench_fast_kernels.py`` times the two).
    """
    bits = _BITS.get(x.element_size())
    if bits is None or not x.is_floating_point():
        return x.mul(scale).masked_fill_(~keep, 0.0)
    return (x.view(bits) * keep).view(x.dtype).mul_(scale)


class ScaleAndDrop(torch.autograd.Function):
    """``x * scale`` with the elements where ``keep`` is False set to 0; the bool ``keep`` is saved
    for backward (not a float mask)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return keep_and_scale(x, keep, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return keep_and_scale(grad, keep, ctx.scale), None, None


def cpu_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of ``x`` (any shape) with drop probability ``p``; ``F.dropout`` off CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    level = keep_level(p)
    if level == LEVELS:  # p below 1/131072: nothing would be dropped
        return x
    if level == 0:
        return x * 0.0
    opaque = keep_mask_like is not None and torch.compiler.is_compiling()
    keep = keep_mask_like(x, p) if opaque else keep_mask(x.shape, p, x.device)
    return ScaleAndDrop.apply(x, keep, LEVELS / level)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same expectation) whose CPU masks come from :func:`cpu_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # no in-place variant: keep the stock behaviour
            return super().forward(x)
        return cpu_dropout(x, self.p, self.training)


def cpu_dropout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Encoder self-attention ``(batch, heads, tokens, head_dim)`` -> ``(batch, tokens, heads, head_dim)``.

    Training on CPU with attention dropout: softmax(q k^T * scaling + mask), dropped out with
    :func:`cpu_dropout`, times v. Everything else (no dropout, evaluation, GPUs, causal or grouped
    attention, position biases) goes to transformers' SDPA function unchanged.
    """
    plain_encoder = (
        not getattr(module, "is_causal", False)
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None
        and kwargs.get("softcap") is None
    )
    if dropout == 0.0 or query.device.type != "cpu" or not plain_encoder:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True: attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    output = torch.matmul(cpu_dropout(probs, dropout), value)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(CPU_ATTENTION, cpu_dropout_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_ATTENTION, sdpa_mask)  # it takes SDPA's masks


def use_cpu_dropout(model: nn.Module) -> int:
    """Switch ``model``'s ``nn.Dropout`` layers to :class:`CpuDropout` and, where its Hugging Face
    submodels use SDPA, their attention to :func:`cpu_dropout_attention`. Returns how many dropout
    layers were switched. Parameters, outputs in evaluation mode and saved files are unchanged.
    """
    switched = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, CpuDropout(child.p, inplace=child.inplace).train(child.training))
                switched += 1
    for submodel in model.modules():
        if isinstance(submodel, PreTrainedModel) and submodel.config._attn_implementation == "sdpa":
            submodel.config._attn_implementation = CPU_ATTENTION
    return switched
