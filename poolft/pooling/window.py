"""Variable-window pooling: multi-scale (pyramid) windows that follow each example's length.

Adaptive mode: for each level ``k`` the ``n`` real, non-prefix tokens of an example are split
into ``k`` windows, window ``j`` covering ranks ``[floor(j*n/k), ceil((j+1)*n/k))`` -- the bounds of
PyTorch's adaptive pooling -- and each window is reduced by max or mean. With ``grid=True`` the
patch grid is split into ``k x k`` bins with those bounds on each axis (spatial pyramid pooling);
a row's grid starts right after its prefix (its first ``num_prefix_tokens`` real tokens).
Sliding mode: fixed-size windows with a stride over the real tokens, reduced within each window,
then over the windows.

Everything is vectorised and reads real tokens only: windows are runs of ranks over each row's
real tokens (so left and interior padding are handled alike), and all windows of all rows and
levels are reduced by a single ``index_select`` + ``segment_reduce``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import Pooler, register_pooler
from .masking import lowest_value, masked_reduce, patch_grid_start, real_token_mask

REDUCTIONS = ("max", "mean")
MODES = ("adaptive", "sliding")


def window_bounds(lengths: torch.Tensor, windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pooling bounds of ``windows`` windows over sequences of ``lengths``.

    Args:
        lengths: ``(batch,)`` integer token counts ``n``.
        windows: number of windows ``k``.

    Returns:
        ``start, end`` each ``(batch, k)``: window ``j`` covers ``[floor(j*n/k), ceil((j+1)*n/k))``.
    """
    j = torch.arange(windows, device=lengths.device)
    n = lengths.long().unsqueeze(-1)
    start = torch.div(j * n, windows, rounding_mode="floor")
    end = torch.div((j + 1) * n + windows - 1, windows, rounding_mode="floor")
    return start, end


def reduce_token_ranges(
    hidden_states: torch.Tensor, token_mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor, reduce: str
) -> torch.Tensor:
    """Reduce, for each row ``b`` and window ``w``, the real tokens of rank ``start[b, w]`` to ``end[b, w] - 1``.

    Only real tokens are read: their flat positions are listed row by row, each window becomes a
    run of that list, and one ``index_select`` + ``segment_reduce`` handles every window of every
    row at once -- no padded copies, so the cost follows the real lengths, not the padded one.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        token_mask: ``(batch, tokens)`` bool; the ranks count the True positions of a row.
        start, end: ``(batch, windows)`` integer ranks (``end <= start`` is an empty window).
        reduce: ``"max"`` or ``"mean"``.

    Returns:
        ``(batch, windows, hidden)``; an empty window gives zeros. Means accumulate in float32.
    """
    batch, tokens, hidden = hidden_states.shape
    windows = start.size(1)
    device = hidden_states.device
    real_positions = token_mask.reshape(-1).nonzero().squeeze(1)  # row-major: row 0's tokens, then row 1's...
    counts = token_mask.sum(dim=1)
    row_offsets = torch.cumsum(counts, 0) - counts
    sizes = (end - start).clamp(min=0).reshape(-1)
    first = (row_offsets.unsqueeze(1) + start).reshape(-1)
    total = int(sizes.sum())
    window_of = torch.repeat_interleave(torch.arange(batch * windows, device=device), sizes, output_size=total)
    run_starts = torch.cumsum(sizes, 0) - sizes
    rank = first[window_of] + torch.arange(total, device=device) - run_starts[window_of]
    rows = hidden_states.reshape(batch * tokens, hidden).index_select(0, real_positions[rank])
    if reduce == "mean":
        rows = rows.float()
    elif reduce != "max":
        raise ValueError(f"unknown reduce {reduce!r}; use 'mean' or 'max'")
    reduced = torch.segment_reduce(rows, reduce, lengths=sizes, axis=0, unsafe=True)
    reduced = torch.where((sizes > 0).unsqueeze(1), reduced, reduced.new_zeros(()))
    return reduced.to(hidden_states.dtype).view(batch, windows, hidden)


def adaptive_window_features(
    hidden_states: torch.Tensor, token_mask: torch.Tensor, levels: tuple[int, ...], reduce: str
) -> torch.Tensor:
    """Concatenated adaptive-window features of a token sequence.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        token_mask: ``(batch, tokens)`` bool of the tokens to pool.

    Returns:
        ``(batch, hidden * sum(levels))``, levels in order, windows in order.
    """
    lengths = token_mask.sum(dim=1)
    bounds = [window_bounds(lengths, k) for k in levels]
    start = torch.cat([b[0] for b in bounds], dim=1)
    end = torch.cat([b[1] for b in bounds], dim=1)
    return reduce_token_ranges(hidden_states, token_mask, start, end, reduce).flatten(1)


def grid_window_features(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: tuple[int, int],
    levels: tuple[int, ...],
    reduce: str,
    grid_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Spatial-pyramid features of a patch grid: ``k x k`` adaptive bins per level.

    Patch ``i`` (row-major) of a row is the token at ``grid_start + i``; tokens that are masked
    out, or positions past the end of the sequence, are absent patches.

    Args:
        hidden_states: ``(batch, prefix + h*w, hidden)``.
        token_mask: ``(batch, prefix + h*w)`` bool (prefix already False).
        grid_start: ``(batch,)`` position of each row's first patch (see ``patch_grid_start``);
            None: every row's grid starts at ``num_prefix_tokens``.

    Returns:
        ``(batch, hidden * sum(k*k))``, levels in order, bins row-major.
    """
    height, width = grid_size
    batch, tokens, hidden = hidden_states.shape
    if tokens - num_prefix_tokens != height * width:
        raise ValueError(
            f"grid_size={grid_size} needs {height * width} patch tokens after {num_prefix_tokens} prefix "
            f"tokens, but got {tokens - num_prefix_tokens}; pass the grid the backbone produced"
        )
    if grid_start is None:
        patches = hidden_states[:, num_prefix_tokens:]
        mask = token_mask[:, num_prefix_tokens:]
    else:
        # a left-padded row's grid is shifted right; cells past the end are absent patches
        positions = grid_start.to(hidden_states.device).unsqueeze(1) + torch.arange(
            height * width, device=hidden_states.device
        )
        inside = positions < tokens
        positions = positions.clamp(max=tokens - 1)
        patches = hidden_states.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden))
        mask = token_mask.gather(1, positions) & inside
    grid = patches.transpose(1, 2).reshape(batch, hidden, height, width)
    grid_mask = mask.view(batch, 1, height, width)
    features = []
    for k in levels:
        if reduce == "max":
            filled = torch.where(grid_mask, grid, grid.new_full((), lowest_value(grid.dtype)))
            pooled = F.adaptive_max_pool2d(filled, k)
            has_token = F.adaptive_max_pool2d(grid_mask.to(grid.dtype), k) > 0
            pooled = torch.where(has_token, pooled, pooled.new_zeros(()))
        else:
            kept = torch.where(grid_mask, grid, grid.new_zeros(())).float()
            total = F.adaptive_avg_pool2d(kept, k)
            share = F.adaptive_avg_pool2d(grid_mask.float(), k)
            pooled = (total / share.clamp(min=1e-12)).where(share > 0, total.new_zeros(())).to(grid.dtype)
        features.append(pooled.flatten(2).transpose(1, 2).flatten(1))
    return torch.cat(features, dim=1)


def sliding_window_features(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    window_size: int,
    stride: int,
    reduce: str,
    reduce_windows: str,
) -> torch.Tensor:
    """Fixed-size windows over each row's real tokens, reduced within then across windows.

    A row shorter than ``window_size`` has one (short) window. Windows start at multiples of
    ``stride`` inside the row while the previous window did not already reach the row's end.

    Returns:
        ``(batch, hidden)``.
    """
    lengths = token_mask.sum(dim=1, keepdim=True)
    tokens = hidden_states.size(1)
    count = math.ceil(max(tokens - window_size, 0) / stride) + 1
    start = (torch.arange(count, device=hidden_states.device) * stride).unsqueeze(0).expand(lengths.size(0), -1)
    # window w is used if it starts inside the row and is the first or the previous one stopped short
    used = ((start == 0) | (start - stride + window_size < lengths)) & (start < lengths)
    end = torch.where(used, torch.minimum(start + window_size, lengths), start)
    per_window = reduce_token_ranges(hidden_states, token_mask, start, end, reduce)
    return masked_reduce(per_window, used, reduce_windows)


@register_pooler
class WindowPooler(Pooler):
    """Variable-window (multi-scale) pooling; see the module docstring for the exact windows.

    Options:
        levels: window counts per level (adaptive mode), default ``(1, 2, 4)``.
        reduce: ``"max"`` or ``"mean"`` within a window.
        project: project the concatenation to ``hidden_size`` (else ``output_dim`` is the raw
            concatenation: ``hidden * sum(levels)``, or ``hidden * sum(k*k)`` with ``grid``).
        grid: pool the patch grid in ``k x k`` bins (needs ``grid_size`` at forward; without
            ``grid`` a ``grid_size`` is refused, since ``output_dim`` is fixed at construction).
        mode: ``"adaptive"`` or ``"sliding"``.
        window_size, stride, reduce_windows: the sliding mode's window, step and across-window
            reduction.
    """

    name = "window"
    summary = "variable-window multi-scale pooling (levels, reduce max|mean, grid bins, sliding mode)"
    supports_grid = True

    def __init__(
        self,
        hidden_size: int,
        *,
        levels: tuple[int, ...] | list[int] = (1, 2, 4),
        reduce: str = "max",
        project: bool = True,
        grid: bool = False,
        mode: str = "adaptive",
        window_size: int = 8,
        stride: int = 4,
        reduce_windows: str = "max",
    ) -> None:
        super().__init__(hidden_size)
        levels = tuple(int(k) for k in levels)
        if not levels or any(k < 1 for k in levels):
            raise ValueError(f"window option levels must be positive integers, got {levels}")
        for key, value in (("reduce", reduce), ("reduce_windows", reduce_windows)):
            if value not in REDUCTIONS:
                raise ValueError(f"window option {key}={value!r} is not one of {REDUCTIONS}")
        if mode not in MODES:
            raise ValueError(f"window option mode={mode!r} is not one of {MODES}")
        if window_size < 1 or stride < 1:
            raise ValueError(f"window options window_size and stride must be >= 1, got {window_size}, {stride}")
        if mode == "sliding" and grid:
            raise ValueError("window option grid=True works with mode='adaptive' only; set grid=False")
        self.levels, self.reduce, self.grid, self.mode = levels, reduce, grid, mode
        self.window_size, self.stride, self.reduce_windows = window_size, stride, reduce_windows
        self.projection = nn.Linear(self.feature_dim, hidden_size) if project else None

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated window features before projection."""
        if self.mode == "sliding":
            return self.hidden_size
        windows = sum(k * k for k in self.levels) if self.grid else sum(self.levels)
        return self.hidden_size * windows

    @property
    def output_dim(self) -> int:
        return self.hidden_size if self.projection is not None else self.feature_dim

    @property
    def uses_grid(self) -> bool:
        return self.grid

    @property
    def options(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "reduce": self.reduce,
            "project": self.projection is not None,
            "grid": self.grid,
            "mode": self.mode,
            "window_size": self.window_size,
            "stride": self.stride,
            "reduce_windows": self.reduce_windows,
        }

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Pool ``hidden_states`` ``(batch, tokens, hidden)`` to ``(batch, output_dim)``.

        ``grid_size=(h, w)`` is required by a head built with ``grid=True`` and refused by any other
        window head: 1-D windows over the flattened patches would silently ignore the 2-D layout.
        """
        if grid_size is not None and not self.grid:
            raise ValueError(
                f"window pooler built with grid=False got grid_size={tuple(grid_size)}; build it with grid=True "
                "to pool k x k patch bins, or pass grid_size=None for 1-D windows over the tokens"
            )
        token_mask = real_token_mask(hidden_states, attention_mask, num_prefix_tokens)
        if self.mode == "sliding":
            features = sliding_window_features(
                hidden_states, token_mask, self.window_size, self.stride, self.reduce, self.reduce_windows
            )
        elif self.grid:
            if grid_size is None:
                raise ValueError("window pooler built with grid=True needs grid_size=(h, w) at forward")
            grid_start = patch_grid_start(attention_mask, num_prefix_tokens)
            features = grid_window_features(
                hidden_states, token_mask, num_prefix_tokens, tuple(grid_size), self.levels, self.reduce, grid_start
            )
        else:
            features = adaptive_window_features(hidden_states, token_mask, self.levels, self.reduce)
        if self.projection is None:
            return features
        pooled = self.projection(features)
        has_token = token_mask.any(dim=1, keepdim=True)
        return torch.where(has_token, pooled, pooled.new_zeros(()))
