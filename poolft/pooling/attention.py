"""Attention pooling: learned queries attend over the real, non-prefix tokens (multi-head)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler, register_pooler
from .masking import lowest_value, real_token_mask, zero_masked


@register_pooler
class AttentionPooler(Pooler):
    """Multi-head attention of ``num_queries`` learned queries over the tokens.

    Keys and values are linear maps of the token states (computed in the folded form described in
    ``forward_with_weights``, which never projects every token); each query's output is the
    attention-weighted sum of values over real, non-prefix tokens. The query outputs are
    concatenated and projected to ``hidden_size`` (the ``output_dim``). Scores and the softmax are
    computed in float32, and masked scores use the dtype's lowest finite value, so fp16/bf16 stay
    finite; a row with no real token returns zeros.
    """

    name = "attention"
    summary = "learned-query multi-head attention over real tokens (options: num_queries, num_heads)"

    def __init__(self, hidden_size: int, *, num_queries: int = 1, num_heads: int = 4) -> None:
        super().__init__(hidden_size)
        if num_queries < 1:
            raise ValueError(f"attention option num_queries must be >= 1, got {num_queries}")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(
                f"attention option num_heads={num_heads} must divide hidden_size={hidden_size}; "
                "pick a divisor such as 1, 2, 4 or 8"
            )
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Parameter(torch.randn(num_queries, hidden_size) * hidden_size**-0.5)
        # no key bias: q . b_k is the same for every token, so softmax would ignore it
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(num_queries * hidden_size, hidden_size)

    @property
    def options(self) -> dict[str, Any]:
        return {"num_queries": self.num_queries, "num_heads": self.num_heads}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Pool ``(batch, tokens, hidden)`` to ``(batch, hidden)``.

        ``grid_size`` is accepted and ignored: attention without position terms does not depend on
        the token order.
        """
        pooled, _ = self.forward_with_weights(hidden_states, attention_mask, num_prefix_tokens=num_prefix_tokens)
        return pooled

    def forward_with_weights(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and also return the attention weights for inspection.

        Returns:
            pooled ``(batch, hidden)`` and weights ``(batch, heads, queries, tokens)`` (float32),
            zero on padding and prefix tokens, summing to 1 over tokens for rows with real tokens.
        """
        batch, tokens, hidden = hidden_states.shape
        token_mask = real_token_mask(hidden_states, attention_mask, num_prefix_tokens)
        states = zero_masked(hidden_states, token_mask)
        heads, head_dim, queries = self.num_heads, self.head_dim, self.num_queries
        # Exact rewrite of softmax(q . (W_k x + b_k)) and sum_t w_t (W_v x_t + b_v) that never projects
        # every token: fold W_k into the queries (q . b_k is the same for all tokens, so softmax drops
        # it) and apply W_v after the weighted sum (weights sum to 1). Cost: O(tokens * hidden * heads)
        # instead of O(tokens * hidden^2).
        query = self.query.float().view(queries, heads, head_dim)
        key_weight = self.key.weight.float().view(heads, head_dim, hidden)
        folded = torch.einsum("qhd,hdi->hqi", query, key_weight) * head_dim**-0.5  # (heads, queries, hidden)
        scores = torch.einsum("hqi,bti->bhqt", folded.to(states.dtype), states).float()
        visible = token_mask[:, None, None, :]
        scores = torch.where(visible, scores, scores.new_full((), lowest_value(scores.dtype)))
        weights = torch.where(visible, scores.softmax(dim=-1), scores.new_zeros(()))
        mixed = torch.einsum("bhqt,bti->bhqi", weights.to(states.dtype), states)  # (batch, heads, queries, hidden)
        value_weight = self.value.weight.view(heads, head_dim, hidden).to(mixed.dtype)
        attended = torch.einsum("bhqi,hdi->bqhd", mixed, value_weight)
        value_bias = self.value.bias.to(attended.dtype).view(heads, head_dim)
        attended = attended + value_bias * weights.sum(dim=-1).permute(0, 2, 1).unsqueeze(-1).to(attended.dtype)
        pooled = self.output(attended.reshape(batch, queries * hidden))
        has_token = token_mask.any(dim=1, keepdim=True)
        return torch.where(has_token, pooled, pooled.new_zeros(())), weights
