"""Parameter-free (or nearly) reductions over real, non-prefix tokens: mean, max, mean+max, GeM."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler, register_pooler
from .masking import masked_max, masked_mean, real_token_mask, zero_masked


class _TokenReduction(Pooler):
    """Shared forward: build the real-token mask (prefix excluded) and reduce over it."""

    def reduce(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Reduce ``(batch, tokens, hidden)`` over each row's real tokens after its prefix.

        ``grid_size`` is accepted and ignored: these reductions do not depend on the token order.
        """
        token_mask = real_token_mask(hidden_states, attention_mask, num_prefix_tokens)
        return self.reduce(hidden_states, token_mask)


@register_pooler
class MeanPooler(_TokenReduction):
    """Masked mean over real tokens after the prefix tokens (sentence-transformers' default)."""

    name = "mean"
    summary = "masked mean over real tokens after the prefix tokens"

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)

    def reduce(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden_states, token_mask)


@register_pooler
class MaxPooler(_TokenReduction):
    """Masked per-feature max over real tokens after the prefix tokens."""

    name = "max"
    summary = "masked per-feature max over real tokens after the prefix tokens"

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)

    def reduce(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return masked_max(hidden_states, token_mask)


@register_pooler
class MeanMaxPooler(_TokenReduction):
    """Concatenation ``[mean, max]`` (timm's ``avgmax``/``catavgmax``); ``output_dim = 2 * hidden``."""

    name = "meanmax"
    summary = "concatenated masked mean and max (output 2 x hidden)"

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)

    @property
    def output_dim(self) -> int:
        return 2 * self.hidden_size

    def reduce(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([masked_mean(hidden_states, token_mask), masked_max(hidden_states, token_mask)], dim=-1)


@register_pooler
class GemPooler(_TokenReduction):
    """Generalised mean ``(mean(clamp(x, eps)^p))^(1/p)`` with a learnable ``p``.

    p=1 is the mean of the positive part, large p approaches the max. Computed in float32.
    """

    name = "gem"
    summary = "generalised mean with learnable exponent p (clamped at eps)"

    def __init__(self, hidden_size: int, *, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__(hidden_size)
        if p <= 0:
            raise ValueError(f"gem option p must be positive, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.initial_p = float(p)
        self.eps = eps

    @property
    def options(self) -> dict[str, Any]:
        return {"p": self.initial_p, "eps": self.eps, "learn_p": self.p.requires_grad}

    def reduce(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        p = self.p.float().clamp(min=1e-2)
        # zero the unread tokens before the power: x**p of a huge/inf/NaN padding value would make
        # the backward pass 0 * inf = NaN (in the inputs' and p's gradients) although it is masked out
        powered = zero_masked(hidden_states, token_mask).float().clamp(min=self.eps).pow(p)
        pooled = masked_mean(powered, token_mask).clamp(min=self.eps).pow(1.0 / p)
        has_token = token_mask.any(dim=1, keepdim=True)
        return torch.where(has_token, pooled, pooled.new_zeros(())).to(hidden_states.dtype)
