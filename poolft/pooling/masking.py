"""Token masks and masked reductions shared by the pooling heads.

Every head works on a boolean ``token_mask`` of shape ``(batch, tokens)`` that is True for the
tokens it may read. Padding is removed with ``torch.where`` rather than multiplication so that any
value in a padding column (even inf or NaN) cannot reach the result, and rows with no readable
token reduce to zeros rather than NaN.
"""

from __future__ import annotations

import torch


def real_token_mask(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Boolean mask of the real, non-prefix tokens.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        attention_mask: ``(batch, tokens)``, nonzero for real tokens; None means all real.
        num_prefix_tokens: leading special tokens (CLS, registers) to exclude.

    Returns:
        ``(batch, tokens)`` bool.
    """
    batch, tokens, _ = hidden_states.shape
    if attention_mask is None:
        mask = torch.ones(batch, tokens, dtype=torch.bool, device=hidden_states.device)
    else:
        if attention_mask.shape != (batch, tokens):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but hidden_states has "
                f"(batch, tokens) = {(batch, tokens)}; pass the mask that came with these tokens"
            )
        mask = attention_mask.to(device=hidden_states.device) != 0
    if num_prefix_tokens < 0 or num_prefix_tokens > tokens:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must be between 0 and tokens={tokens}")
    if num_prefix_tokens:
        positions = torch.arange(tokens, device=hidden_states.device)
        mask = mask & (positions >= num_prefix_tokens)
    return mask


def zero_masked(hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Return a copy of ``hidden_states`` ``(batch, tokens, hidden)`` with masked tokens set to 0."""
    return torch.where(token_mask.unsqueeze(-1), hidden_states, hidden_states.new_zeros(()))


def lowest_value(dtype: torch.dtype) -> float:
    """The most negative finite value of ``dtype``: a max-fill that never becomes -inf or NaN."""
    return torch.finfo(dtype).min


def masked_mean(hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked-in tokens.

    Args:
        hidden_states: ``(..., tokens, hidden)``.
        token_mask: ``(..., tokens)`` bool.

    Returns:
        ``(..., hidden)`` in the input dtype; zeros where no token is masked in. Sums are
        accumulated in float32 so long fp16 sequences cannot overflow.
    """
    kept = torch.where(token_mask.unsqueeze(-1), hidden_states, hidden_states.new_zeros(()))
    total = kept.sum(dim=-2, dtype=torch.float32)
    count = token_mask.sum(dim=-1, keepdim=True).clamp(min=1).to(torch.float32)
    return (total / count).to(hidden_states.dtype)


def masked_max(hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Maximum over masked-in tokens.

    Args:
        hidden_states: ``(..., tokens, hidden)``.
        token_mask: ``(..., tokens)`` bool.

    Returns:
        ``(..., hidden)``; zeros where no token is masked in.
    """
    fill = hidden_states.new_full((), lowest_value(hidden_states.dtype))
    kept = torch.where(token_mask.unsqueeze(-1), hidden_states, fill)
    maximum = kept.amax(dim=-2)
    has_token = token_mask.any(dim=-1, keepdim=True)
    return torch.where(has_token, maximum, maximum.new_zeros(()))


def masked_reduce(hidden_states: torch.Tensor, token_mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """``masked_mean`` or ``masked_max`` chosen by name (``"mean"`` | ``"max"``)."""
    if reduce == "mean":
        return masked_mean(hidden_states, token_mask)
    if reduce == "max":
        return masked_max(hidden_states, token_mask)
    raise ValueError(f"unknown reduce {reduce!r}; use 'mean' or 'max'")
