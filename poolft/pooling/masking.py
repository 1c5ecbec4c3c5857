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

    The prefix is counted from each row's first real token, not from position 0: the first
    ``num_prefix_tokens`` real tokens of a row are its prefix, so a left-padded row loses its own
    special tokens, never real ones.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        attention_mask: ``(batch, tokens)``, nonzero for real tokens; None means all real.
        num_prefix_tokens: leading special tokens (CLS, registers) of each row to exclude.

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
    if num_prefix_tokens and attention_mask is None:
        positions = torch.arange(tokens, device=hidden_states.device)
        mask = mask & (positions >= num_prefix_tokens)
    elif num_prefix_tokens:
        # rank of each real token in its row (1 = first real token): the prefix is ranks 1..P
        mask = mask & (mask.cumsum(dim=1) > num_prefix_tokens)
    return mask


def patch_grid_start(attention_mask: torch.Tensor | None, num_prefix_tokens: int) -> torch.Tensor | None:
    """Position where each row's patch grid begins: right after the row's prefix.

    The prefix (the row's first ``num_prefix_tokens`` real tokens) anchors the grid, so a
    left-padded row's grid starts where its own patches start. Without a prefix nothing tells
    left padding from absent leading patches, and every grid starts at position 0.

    Args:
        attention_mask: ``(batch, tokens)``, nonzero for real tokens; None means all real.
        num_prefix_tokens: special tokens at the start of each row.

    Returns:
        ``(batch,)`` int64 positions (past the end for a row with too few real tokens), or None
        when every row's grid starts at ``num_prefix_tokens`` (no mask, or no prefix).
    """
    if attention_mask is None or not num_prefix_tokens:
        return None
    rank = (attention_mask != 0).cumsum(dim=1)
    # the positions before the row's last prefix token, plus that token
    return (rank < num_prefix_tokens).sum(dim=1) + 1


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
