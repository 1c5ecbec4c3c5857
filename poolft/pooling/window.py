"""Variable-window pooling: multi-scale (pyramid) windows that follow each example's length.

Adaptive mode: for each level ``k`` the ``n`` real, non-prefix tokens of an example are split
into ``k`` windows, window ``j`` covering ranks ``[floor(j*n/k), ceil((j+1)*n/k))`` -- the bounds of
PyTorch's adaptive pooling -- and each window is reduced by max or mean. ``edges`` generalise the
equal split to fractional edges per level (window ``j`` covers ``[floor(e_j*n), ceil(e_{j+1}*n))``,
in exact integer arithmetic), so windows can be short at the start and long after. With
``grid=True`` the patch grid is split into ``k x k`` bins with those bounds on each axis (spatial
pyramid pooling); a row's grid starts right after its prefix (its first ``num_prefix_tokens`` real
tokens).
Sliding mode: fixed-size windows with a stride over the real tokens, reduced within each window,
then over the windows; with ``grid=True``, ``window_size x window_size`` windows moved by
``stride`` over the patch grid (CNN local max/average pooling, bounds of ``max_pool2d`` with
``ceil_mode=True``), reduced over the windows or kept as a ``map_size x map_size`` map.

Everything is vectorised and reads real tokens only: 1-D windows are runs of ranks over each row's
real tokens (so left and interior padding are handled alike), reduced by a single
``index_select`` + ``segment_reduce``; 2-D windows are ranges of grid rows and columns, reduced
the same way one axis at a time over the masked grid.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import Pooler, register_pooler
from .masking import lowest_value, masked_reduce, patch_grid_start, real_token_mask

REDUCTIONS = ("max", "mean")
WINDOW_REDUCTIONS = ("max", "mean", "map")
MODES = ("adaptive", "sliding")
#: edges are read as the nearest fraction with at most this denominator (see ``exact_edges``)
EDGE_DENOMINATOR = 10**6


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
    if torch.onnx.is_in_onnx_export():
        return reduce_token_ranges_dense(hidden_states, token_mask, start, end, reduce)
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


def reduce_token_ranges_dense(
    hidden_states: torch.Tensor, token_mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor, reduce: str
) -> torch.Tensor:
    """``reduce_token_ranges`` as one masked reduction over a ``(batch, windows, tokens)`` membership mask.

    The same windows and result (zeros for an empty window, means in float32), in ops the ONNX
    exporter traces with a dynamic token axis (``segment_reduce`` has no ONNX form, and the run
    lengths would be frozen at the example's); it holds a ``(batch, windows, tokens, hidden)``
    intermediate, so it serves ``poolft export`` only.
    """
    rank = (token_mask.long().cumsum(dim=1) - 1).unsqueeze(1)  # (batch, 1, tokens)
    member = token_mask.unsqueeze(1) & (rank >= start.unsqueeze(2)) & (rank < end.unsqueeze(2))
    return masked_reduce(hidden_states.unsqueeze(1), member, reduce)


def equal_edges(windows: int) -> tuple[Fraction, ...]:
    """The edges ``0, 1/k, ..., 1`` of ``k`` equal windows: ``levels`` as ``edges``."""
    return tuple(Fraction(j, windows) for j in range(windows + 1))


def exact_edges(edges: Any) -> tuple[tuple[Fraction, ...], ...]:
    """Validate ``edges`` (per level, fractional window edges) and read each as an exact fraction.

    Each edge becomes the nearest fraction with denominator at most ``EDGE_DENOMINATOR`` (so ``0.3``
    is exactly 3/10 and ``1/3`` written as 0.333... is 1/3): ranks are then computed in integers,
    and equal edges give exactly ``levels``' windows.

    Raises:
        ValueError: one line naming the level and the fix, unless every level is a list of at
            least two numbers that starts at 0, ends at 1 and strictly increases.
    """
    example = "e.g. edges=[[0, 0.1, 0.5, 1.0]]"
    if not isinstance(edges, (list, tuple)) or not edges:
        raise ValueError(f"window option edges must be a non-empty list of levels, each a list of edges; {example}")
    levels = []
    for level in edges:
        if not isinstance(level, (list, tuple)) or len(level) < 2:
            raise ValueError(f"window option edges: level {level!r} needs at least two edges (0 and 1); {example}")
        if not all(isinstance(e, (int, float, Fraction)) and not isinstance(e, bool) for e in level):
            raise ValueError(f"window option edges: level {level!r} must hold numbers only; {example}")
        if any(not 0 <= e <= 1 for e in level):
            raise ValueError(f"window option edges: level {list(level)} has an edge outside [0, 1]; {example}")
        if level[0] != 0 or level[-1] != 1:
            raise ValueError(f"window option edges: level {list(level)} must start at 0 and end at 1; {example}")
        exact = tuple(Fraction(e).limit_denominator(EDGE_DENOMINATOR) for e in level)
        if any(b <= a for a, b in zip(exact, exact[1:])):
            raise ValueError(
                f"window option edges: level {list(level)} must be strictly increasing (edges closer than "
                f"1/{EDGE_DENOMINATOR} count as equal); {example}"
            )
        levels.append(exact)
    return tuple(levels)


def edge_bounds(
    lengths: torch.Tensor, level_edges: list[tuple[Fraction, ...]] | tuple[tuple[Fraction, ...], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window bounds from fractional edges, in integer arithmetic.

    Args:
        lengths: ``(batch,)`` integer token counts ``n``.
        level_edges: per level, edges ``e_0 = 0 < ... < e_k = 1`` as fractions.

    Returns:
        ``start, end`` each ``(batch, windows)`` (all levels' windows in order): window ``j`` of a
        level covers ``[floor(e_j*n), ceil(e_{j+1}*n))``, never empty for ``n >= 1``.
    """
    starts = [edge for edges in level_edges for edge in edges[:-1]]
    ends = [edge for edges in level_edges for edge in edges[1:]]
    device = lengths.device

    def integers(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    n = lengths.long().unsqueeze(-1)
    start_num, start_den = integers([e.numerator for e in starts]), integers([e.denominator for e in starts])
    end_num, end_den = integers([e.numerator for e in ends]), integers([e.denominator for e in ends])
    start = torch.div(start_num * n, start_den, rounding_mode="floor")
    end = torch.div(end_num * n + end_den - 1, end_den, rounding_mode="floor")
    return start, end


def adaptive_window_features(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    levels: tuple[int, ...] | tuple[tuple[Fraction, ...], ...],
    reduce: str,
) -> torch.Tensor:
    """Concatenated adaptive-window features of a token sequence.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        token_mask: ``(batch, tokens)`` bool of the tokens to pool.
        levels: per level a window count ``k`` (equal edges) or fractional edges (``exact_edges``).

    Returns:
        ``(batch, hidden * windows)``, levels in order, windows in order.
    """
    level_edges = [equal_edges(k) if isinstance(k, int) else k for k in levels]
    start, end = edge_bounds(token_mask.sum(dim=1), level_edges)
    return reduce_token_ranges(hidden_states, token_mask, start, end, reduce).flatten(1)


def patch_grid(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: tuple[int, int],
    grid_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch tokens laid out as an image: ``(batch, hidden, h, w)`` and its mask ``(batch, 1, h, w)``.

    Patch ``i`` (row-major) of a row is the token at ``grid_start + i``; tokens that are masked
    out, or positions past the end of the sequence, are absent patches (mask False).

    Args:
        hidden_states: ``(batch, prefix + h*w, hidden)``.
        token_mask: ``(batch, prefix + h*w)`` bool (prefix already False).
        grid_start: ``(batch,)`` position of each row's first patch (see ``patch_grid_start``);
            None: every row's grid starts at ``num_prefix_tokens``.
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
    return grid, mask.reshape(batch, 1, height, width)


def range_membership(start: torch.Tensor, end: torch.Tensor, length: int) -> torch.Tensor:
    """``(ranges, length)`` bool: row ``r`` is True on ``[start[r], end[r])``."""
    positions = torch.arange(length, device=start.device)
    return (positions >= start.unsqueeze(1)) & (positions < end.unsqueeze(1))


def masked_pool2d(grid: torch.Tensor, grid_mask: torch.Tensor, reduce: str, pool) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a torch 2-D pooling ``pool(values, reduce)`` to the real cells of a masked grid only.

    Max: absent cells are filled with the dtype's lowest value, and windows without a real cell
    become 0. Mean: the pooled sum of the real cells over the pooled count (both pooled with the
    same divisor, which cancels), in float32.

    Returns:
        pooled ``(batch, hidden, R, C)`` in ``grid``'s dtype and the presence mask ``(batch, 1, R, C)``.
    """
    share = pool(grid_mask.float(), "mean")
    has_cell = share > 0
    if reduce == "max":
        pooled = pool(torch.where(grid_mask, grid, grid.new_full((), lowest_value(grid.dtype))), "max")
    elif reduce == "mean":
        total = pool(torch.where(grid_mask, grid, grid.new_zeros(())).float(), "mean")
        pooled = (total / share.clamp(min=1e-12)).to(grid.dtype)
    else:
        raise ValueError(f"unknown reduce {reduce!r}; use 'mean' or 'max'")
    return torch.where(has_cell, pooled, pooled.new_zeros(())), has_cell


def padded_range_index(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``(ranges, longest)`` positions of each range, its last position repeated to the longest length.

    Repeating a member does not change a max, so ranges of any lengths reduce as one block.
    """
    steps = torch.arange(int((end - start).max()), device=start.device)
    return torch.minimum(start.unsqueeze(1) + steps, (end - 1).unsqueeze(1))


def range_argmax_cells(
    values: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], cols: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Flat cell index ``row * w + col`` of the max of every rectangle ``rows[i] x cols[j]``.

    Args:
        values: ``(batch, hidden, h, w)``.

    Returns:
        ``(batch, hidden, R, C)`` int64. Each axis is reduced with the axis outermost, so the max
        runs over contiguous slabs (fast), not over a short innermost axis.
    """
    batch, hidden, height, width = values.shape
    col_index, row_index = padded_range_index(*cols), padded_range_index(*rows)
    num_cols, num_rows = col_index.size(0), row_index.size(0)
    by_col = values.permute(3, 0, 1, 2).reshape(width, -1)  # (w, b*c*h)
    picked = by_col[col_index.flatten()].view(num_cols, col_index.size(1), -1)
    col_max, col_step = picked.max(dim=1)  # (C, b*c*h)
    col_arg = col_index.gather(1, col_step).view(num_cols, batch * hidden, height)
    by_row = col_max.view(num_cols, batch * hidden, height).permute(2, 0, 1).reshape(height, -1)  # (h, C*b*c)
    picked = by_row[row_index.flatten()].view(num_rows, row_index.size(1), -1)
    row_arg = row_index.gather(1, picked.max(dim=1).indices).view(num_rows, num_cols, batch * hidden)  # (R, C, b*c)
    col_at_row = col_arg.permute(2, 0, 1).gather(0, row_arg)  # (R, C, b*c)
    cell = row_arg * width + col_at_row
    return cell.permute(2, 0, 1).reshape(batch, hidden, num_rows, num_cols)


def reduce_grid_ranges(
    grid: torch.Tensor,
    grid_mask: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
    reduce: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce the real cells of every rectangle ``rows[i] x cols[j]`` of a masked grid (any ranges).

    Sums (and counts) are two matmuls with the ranges' membership matrices. The max is located one
    axis at a time without autograd (``range_argmax_cells``), then the winning cells are gathered:
    the gradient flows to exactly those cells, as in ``max_pool2d``.

    Args:
        grid: ``(batch, hidden, h, w)``.
        grid_mask: ``(batch, 1, h, w)`` bool, True for real cells.
        rows, cols: ``(start, end)`` integer ranges ``(R,)`` over ``h`` and ``(C,)`` over ``w``, non-empty.
        reduce: ``"max"`` or ``"mean"`` (mean over the real cells, accumulated in float32).

    Returns:
        pooled ``(batch, hidden, R, C)`` in ``grid``'s dtype, zeros where a rectangle has no real
        cell, and that presence mask ``(batch, 1, R, C)`` bool.
    """
    batch, hidden, height, width = grid.shape
    row_member = range_membership(*rows, height)  # (R, h)
    col_member = range_membership(*cols, width)  # (C, w)

    def range_sums(values: torch.Tensor) -> torch.Tensor:  # (b, c, h, w) -> (b, c, R, C)
        return row_member.float() @ (values @ col_member.float().T)

    count = range_sums(grid_mask.float())
    has_cell = count > 0
    if reduce == "max":
        filled = torch.where(grid_mask, grid, grid.new_full((), lowest_value(grid.dtype)))
        with torch.no_grad():
            cell = range_argmax_cells(filled, rows, cols)
        pooled = filled.flatten(2).gather(2, cell.flatten(2)).view(batch, hidden, *cell.shape[2:])
    elif reduce == "mean":
        total = range_sums(torch.where(grid_mask, grid, grid.new_zeros(())).float())
        pooled = (total / count.clamp(min=1)).to(grid.dtype)
    else:
        raise ValueError(f"unknown reduce {reduce!r}; use 'mean' or 'max'")
    return torch.where(has_cell, pooled, pooled.new_zeros(())), has_cell


def grid_window_features(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: tuple[int, int],
    levels: tuple[int, ...] | tuple[tuple[Fraction, ...], ...],
    reduce: str,
    grid_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Spatial-pyramid features of a patch grid: ``k x k`` bins per level.

    A level is a window count ``k`` (equal edges ``j/k``) or its fractional edges; on each axis of
    length ``n`` bin ``j`` covers ``[floor(e_j*n), ceil(e_{j+1}*n))`` -- adaptive pooling's bounds
    when the edges are equal. A level with equal edges runs through ``adaptive_max_pool2d``/
    ``adaptive_avg_pool2d`` (so ``edges`` ``j/k`` give exactly ``levels`` ``k``), any other through
    ``reduce_grid_ranges``.

    Args:
        hidden_states: ``(batch, prefix + h*w, hidden)``.
        token_mask: ``(batch, prefix + h*w)`` bool (prefix already False).
        grid_start: see ``patch_grid``.

    Returns:
        ``(batch, hidden * sum(k*k))``, levels in order, bins row-major.
    """
    grid, grid_mask = patch_grid(hidden_states, token_mask, num_prefix_tokens, grid_size, grid_start)
    device = grid.device
    features = []
    for level in levels:
        edges = equal_edges(level) if isinstance(level, int) else level
        k = len(edges) - 1
        # the exporter cannot size adaptive pooling; reduce_grid_ranges gives the same bins
        if edges == equal_edges(k) and not torch.onnx.is_in_onnx_export():

            def adaptive(values: torch.Tensor, how: str, k: int = k) -> torch.Tensor:
                return F.adaptive_max_pool2d(values, k) if how == "max" else F.adaptive_avg_pool2d(values, k)

            pooled, _ = masked_pool2d(grid, grid_mask, reduce, adaptive)
        else:
            rows = edge_bounds(torch.tensor([grid_size[0]], device=device), [edges])
            cols = edge_bounds(torch.tensor([grid_size[1]], device=device), [edges])
            pooled, _ = reduce_grid_ranges(grid, grid_mask, (rows[0][0], rows[1][0]), (cols[0][0], cols[1][0]), reduce)
        features.append(pooled.flatten(2))
    return torch.cat(features, dim=2).transpose(1, 2).flatten(1)


def grid_sliding_features(
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: tuple[int, int],
    window_size: int,
    stride: int,
    reduce: str,
    reduce_windows: str,
    map_size: int,
    grid_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local (CNN-style) pooling of the patch grid: ``window_size x window_size`` windows with ``stride``.

    Window ``(i, j)`` covers rows ``[i*stride, min(i*stride + window_size, h))`` and the same for
    columns: ``max_pool2d``/``avg_pool2d`` with ``ceil_mode=True`` and no padding, so a partial
    window at the edge is kept when it starts inside the grid, and a mean divides by the real
    patches inside the grid (never by padding). An axis shorter than the window has one window
    covering it. Each window is reduced over its real patches by ``reduce``; windows without a
    real patch are absent. ``reduce_windows="max"|"mean"`` then reduces over the present windows
    (``(batch, hidden)``); ``"map"`` keeps the window map, adaptive-pooled by ``reduce`` over its
    present windows to ``map_size x map_size`` (``(batch, hidden * map_size**2)``, bins row-major).
    """
    grid, grid_mask = patch_grid(hidden_states, token_mask, num_prefix_tokens, grid_size, grid_start)
    height, width = grid_size
    # an axis shorter than the window is padded with absent cells up to it: one window covers it
    pad_rows, pad_cols = max(window_size - height, 0), max(window_size - width, 0)
    if pad_rows or pad_cols:
        grid = F.pad(grid, (0, pad_cols, 0, pad_rows))
        grid_mask = F.pad(grid_mask, (0, pad_cols, 0, pad_rows))

    def local(values: torch.Tensor, how: str) -> torch.Tensor:
        if how == "max":
            return F.max_pool2d(values, window_size, stride, ceil_mode=True)
        return F.avg_pool2d(values, window_size, stride, ceil_mode=True)

    windows, has_window = masked_pool2d(grid, grid_mask, reduce, local)
    if reduce_windows != "map":
        return masked_reduce(windows.flatten(2).transpose(1, 2), has_window.flatten(1), reduce_windows)

    def adaptive(values: torch.Tensor, how: str) -> torch.Tensor:
        return F.adaptive_max_pool2d(values, map_size) if how == "max" else F.adaptive_avg_pool2d(values, map_size)

    if torch.onnx.is_in_onnx_export():  # the exporter cannot size adaptive pooling; reduce_grid_ranges: same bins
        bins = [equal_edges(map_size)]
        rows = edge_bounds(torch.tensor([int(windows.size(2))], device=windows.device), bins)
        cols = edge_bounds(torch.tensor([int(windows.size(3))], device=windows.device), bins)
        pooled, _ = reduce_grid_ranges(windows, has_window, (rows[0][0], rows[1][0]), (cols[0][0], cols[1][0]), reduce)
    else:
        pooled, _ = masked_pool2d(windows, has_window, reduce, adaptive)
    return pooled.flatten(2).transpose(1, 2).flatten(1)


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
    if torch.onnx.is_in_onnx_export():
        # a start every stride steps up to the (dynamic) token count: the windows below plus unused ones
        starts = torch.arange(0, tokens, stride, device=hidden_states.device)
    else:
        count = math.ceil(max(tokens - window_size, 0) / stride) + 1
        starts = torch.arange(count, device=hidden_states.device) * stride
    start = starts.unsqueeze(0).expand(lengths.size(0), -1)
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
        edges: per level, fractional window edges instead of equal ones (adaptive mode), e.g.
            ``[[0, 0.1, 0.5, 1.0]]``: window ``j`` covers ranks ``[floor(e_j*n), ceil(e_{j+1}*n))`` of
            the ``n`` real tokens (1-D) or of each grid axis (``grid=True``); ``levels`` is the case
            ``e_j = j/k``. With ``edges``, ``levels`` is derived from it (window counts); a ``levels``
            other than its default that disagrees with ``edges`` is refused.
        reduce: ``"max"`` or ``"mean"`` within a window.
        project: project the concatenation to ``hidden_size`` (else ``output_dim`` is the raw
            concatenation: ``hidden * sum(levels)``, ``hidden * sum(k*k)`` with ``grid``, ``hidden``
            for sliding windows, ``hidden * map_size**2`` for ``reduce_windows="map"``).
        grid: pool the patch grid in 2-D (needs ``grid_size`` at forward; without ``grid`` a
            ``grid_size`` is refused, since ``output_dim`` is fixed at construction).
        mode: ``"adaptive"`` (``levels``/``edges`` bins) or ``"sliding"`` (fixed windows).
        window_size, stride: the sliding window and its step (tokens; with ``grid``, a
            ``window_size x window_size`` window moved by ``stride`` on both axes).
        reduce_windows: how sliding windows are combined: ``"max"`` or ``"mean"`` over the windows,
            or (``grid`` only) ``"map"``: keep the window map, adaptive-pooled to
            ``map_size x map_size`` bins.
        map_size: side of the kept window map for ``reduce_windows="map"``.
    """

    name = "window"
    summary = "variable-window multi-scale pooling (levels or edges, max|mean, grid bins, 1-D or 2-D sliding windows)"
    supports_grid = True

    def __init__(
        self,
        hidden_size: int,
        *,
        levels: tuple[int, ...] | list[int] = (1, 2, 4),
        edges: list[list[float]] | None = None,
        reduce: str = "max",
        project: bool = True,
        grid: bool = False,
        mode: str = "adaptive",
        window_size: int = 8,
        stride: int = 4,
        reduce_windows: str = "max",
        map_size: int = 2,
    ) -> None:
        super().__init__(hidden_size)
        levels = tuple(int(k) for k in levels)
        if not levels or any(k < 1 for k in levels):
            raise ValueError(f"window option levels must be positive integers, got {levels}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"window option reduce={reduce!r} is not one of {REDUCTIONS}")
        if reduce_windows not in WINDOW_REDUCTIONS:
            raise ValueError(f"window option reduce_windows={reduce_windows!r} is not one of {WINDOW_REDUCTIONS}")
        if mode not in MODES:
            raise ValueError(f"window option mode={mode!r} is not one of {MODES}")
        if window_size < 1 or stride < 1:
            raise ValueError(f"window options window_size and stride must be >= 1, got {window_size}, {stride}")
        if map_size < 1:
            raise ValueError(f"window option map_size must be >= 1, got {map_size}")
        if reduce_windows == "map" and not (grid and mode == "sliding"):
            raise ValueError(
                "window option reduce_windows='map' keeps a 2-D window map: it needs grid=True and mode='sliding'"
            )
        self.level_edges: tuple[tuple[Fraction, ...], ...] | None = None
        if edges is not None:
            if mode != "adaptive":
                raise ValueError("window option edges sets adaptive bins: use it with mode='adaptive' (the default)")
            self.level_edges = exact_edges(edges)
            derived = tuple(len(level) - 1 for level in self.level_edges)
            if levels not in (derived, (1, 2, 4)):
                raise ValueError(
                    f"window options levels={list(levels)} and edges (window counts {list(derived)}) disagree; "
                    "give edges alone, levels is derived from it"
                )
            levels = derived
            edges = [[float(e) for e in level] for level in edges]
        self.levels, self.edges, self.reduce, self.grid, self.mode = levels, edges, reduce, grid, mode
        self.window_size, self.stride, self.reduce_windows, self.map_size = (
            window_size,
            stride,
            reduce_windows,
            map_size,
        )
        self.projection = nn.Linear(self.feature_dim, hidden_size) if project else None

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated window features before projection."""
        if self.mode == "sliding":
            return self.hidden_size * (self.map_size**2 if self.reduce_windows == "map" else 1)
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
            "edges": self.edges,
            "reduce": self.reduce,
            "project": self.projection is not None,
            "grid": self.grid,
            "mode": self.mode,
            "window_size": self.window_size,
            "stride": self.stride,
            "reduce_windows": self.reduce_windows,
            "map_size": self.map_size,
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
        if self.grid and grid_size is None:
            raise ValueError("window pooler built with grid=True needs grid_size=(h, w) at forward")
        token_mask = real_token_mask(hidden_states, attention_mask, num_prefix_tokens)
        levels = self.level_edges if self.level_edges is not None else self.levels
        if self.grid:
            grid_start = patch_grid_start(attention_mask, num_prefix_tokens)
            if self.mode == "sliding":
                features = grid_sliding_features(
                    hidden_states,
                    token_mask,
                    num_prefix_tokens,
                    tuple(grid_size),
                    self.window_size,
                    self.stride,
                    self.reduce,
                    self.reduce_windows,
                    self.map_size,
                    grid_start,
                )
            else:
                features = grid_window_features(
                    hidden_states, token_mask, num_prefix_tokens, tuple(grid_size), levels, self.reduce, grid_start
                )
        elif self.mode == "sliding":
            features = sliding_window_features(
                hidden_states, token_mask, self.window_size, self.stride, self.reduce, self.reduce_windows
            )
        else:
            features = adaptive_window_features(hidden_states, token_mask, levels, self.reduce)
        if self.projection is None:
            return features
        pooled = self.projection(features)
        has_token = token_mask.any(dim=1, keepdim=True)
        return torch.where(has_token, pooled, pooled.new_zeros(()))
