"""CLS pooling: the state of the first real token, optionally through BERT's dense + tanh."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler, register_pooler
from .masking import real_token_mask


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
