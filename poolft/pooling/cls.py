"""CLS pooling: the first real token, optionally through BERT's dense + tanh, or beside the mean (DINOv2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler, register_pooler
from .masking import real_token_mask, zero_masked


def first_real_token(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """State of the first position whose mask is 1 (so left padding is respected).

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        attention_mask: ``(batch, tokens)`` or None.

    Returns:
        ``(batch, hidden)``; zeros for a row with no real token.
    """
    mask = real_token_mask(hidden_states, attention_mask)
    # argmax returns the first maximal index, i.e. the first True.
    first = mask.to(torch.uint8).argmax(dim=1)
    index = first.view(-1, 1, 1).expand(-1, 1, hidden_states.size(-1))
    picked = hidden_states.gather(1, index).squeeze(1)
    return torch.where(mask.any(dim=1, keepdim=True), picked, picked.new_zeros(()))


@register_pooler
class ClsPooler(Pooler):
    """First real token; with ``dense=True`` also BERT's ``tanh(W x + b)``.

    Prefix tokens are not skipped: for a ViT the first token *is* the class token. When built by
    ``from_backbone`` with ``dense=True`` the dense layer starts from the backbone's own pooler.
    """

    name = "cls"
    summary = "first real token (left padding respected); dense=True adds BERT's dense+tanh"

    def __init__(self, hidden_size: int, *, dense: bool = False) -> None:
        super().__init__(hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size) if dense else None

    @property
    def options(self) -> dict[str, Any]:
        return {"dense": self.dense is not None}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The first real token of each row ``(batch, hidden)``, whatever the padding side.

        ``num_prefix_tokens`` and ``grid_size`` are accepted and ignored: the first real token is
        the first prefix token when there is one (a ViT's class token).
        """
        pooled = first_real_token(hidden_states, attention_mask)
        if self.dense is None:
            return pooled
        projected = torch.tanh(self.dense(pooled))
        has_token = real_token_mask(hidden_states, attention_mask).any(dim=1, keepdim=True)
        return torch.where(has_token, projected, projected.new_zeros(()))


def mean_after_prefix(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, num_prefix_tokens: int
) -> torch.Tensor:
    """Masked mean ``(batch, hidden)`` of each row's real tokens after its prefix (zeros for none).

    The float32 sum runs over positions ``num_prefix_tokens:`` in one pass and adds the (masked)
    first columns separately: for an unpadded batch that is bit for bit ``hidden_states[:,
    num_prefix_tokens:].mean(dim=1)``, what ``Dinov2ForImageClassification`` computes in float32
    (summing zero-filled prefix columns in the same pass would change the summation order).
    """
    token_mask = real_token_mask(hidden_states, attention_mask, num_prefix_tokens)
    kept = zero_masked(hidden_states, token_mask)
    total = kept[:, num_prefix_tokens:].sum(dim=1, dtype=torch.float32)
    if num_prefix_tokens:  # a left-padded row's real tokens can sit in the first columns
        total = total + kept[:, :num_prefix_tokens].sum(dim=1, dtype=torch.float32)
    count = token_mask.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)
    return (total / count).to(hidden_states.dtype)


@register_pooler
class ClsMeanPooler(Pooler):
    """``[first real token, mean of the real tokens after the prefix]``: DINOv2's linear-evaluation input.

    The features DINOv2's linear classifiers read (Oquab et al. 2023) and
    ``Dinov2ForImageClassification`` classifies: the class token beside the mean of the patch
    tokens (registers, being prefix tokens, are left out of the mean, as in
    ``Dinov2WithRegistersForImageClassification``). ``output_dim`` is ``2 * hidden``; with
    ``project=True`` a linear layer maps it back to ``hidden``. A row with no real token gives zeros;
    a row whose only real tokens are prefix tokens gives ``[first token, 0]``.
    """

    name = "clsmean"
    summary = "[first real token, masked mean after the prefix] (DINOv2; 2 x hidden; options: project)"

    def __init__(self, hidden_size: int, *, project: bool = False) -> None:
        super().__init__(hidden_size)
        self.projection = nn.Linear(2 * hidden_size, hidden_size) if project else None

    @property
    def output_dim(self) -> int:
        return self.hidden_size if self.projection is not None else 2 * self.hidden_size

    @property
    def options(self) -> dict[str, Any]:
        return {"project": self.projection is not None}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``(batch, 2 * hidden)`` (or ``(batch, hidden)`` projected); ``grid_size`` is ignored (order-free)."""
        pooled = torch.cat(
            [
                first_real_token(hidden_states, attention_mask),
                mean_after_prefix(hidden_states, attention_mask, num_prefix_tokens),
            ],
            dim=-1,
        )
        if self.projection is None:
            return pooled
        projected = self.projection(pooled)
        has_token = real_token_mask(hidden_states, attention_mask).any(dim=1, keepdim=True)
        return torch.where(has_token, projected, projected.new_zeros(()))
