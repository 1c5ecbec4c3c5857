"""The window head's export paths (taken while ``torch.onnx.export`` traces) pool exactly as its own paths.

``poolft export`` traces the window head through ops the ONNX exporter supports: a dense
membership mask instead of ``segment_reduce``, window starts that follow the token axis, and range
reductions instead of adaptive pooling on patch grids. Each must give the head's output.
"""

from __future__ import annotations

import pytest
import torch

from poolft import build_pooler
from poolft.pooling.window import reduce_token_ranges, reduce_token_ranges_dense, window_bounds

HIDDEN = 8


def masks(batch: int, tokens: int, seed: int) -> torch.Tensor:
    """Right-, left- and interior-padded rows, a full row and an empty one."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.rand(tokens, generator=generator) > 0.3 for _ in range(batch - 4)]
    lengths = torch.arange(tokens)
    rows += [
        lengths < tokens - 2,
        lengths >= 3,
        torch.ones(tokens, dtype=torch.bool),
        torch.zeros(tokens, dtype=torch.bool),
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("windows", [1, 3, 5])
def test_dense_token_ranges_equal_segment_reduce(reduce, windows):
    token_mask = masks(7, 11, seed=windows)
    states = torch.randn(7, 11, HIDDEN, generator=torch.Generator().manual_seed(0))
    start, end = window_bounds(token_mask.sum(dim=1), windows)
    expected = reduce_token_ranges(states, token_mask, start, end, reduce)
    torch.testing.assert_close(reduce_token_ranges_dense(states, token_mask, start, end, reduce), expected)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"levels": [1, 3], "reduce": "mean"},
        {"edges": [[0, 0.1, 0.5, 1.0]]},
        {"mode": "sliding", "window_size": 3, "stride": 2},
        {"mode": "sliding", "window_size": 2, "stride": 3, "reduce_windows": "mean"},
        {"mode": "sliding", "window_size": 20, "stride": 4},
    ],
)
def test_tokens_pool_alike_while_exporting(options, monkeypatch):
    torch.manual_seed(0)
    pooler = build_pooler("window", HIDDEN, **options).eval()
    states = torch.randn(7, 13, HIDDEN)
    attention_mask = masks(7, 13, seed=1).long()
    with torch.no_grad():
        expected = pooler(states, attention_mask)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        torch.testing.assert_close(pooler(states, attention_mask), expected)


@pytest.mark.parametrize(
    "options",
    [
        {"grid": True},
        {"grid": True, "levels": [1, 3], "reduce": "mean"},
        {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1, "reduce_windows": "map"},
        {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce_windows": "map", "map_size": 3},
    ],
)
def test_patch_grids_pool_alike_while_exporting(options, monkeypatch):
    torch.manual_seed(0)
    pooler = build_pooler("window", HIDDEN, **options).eval()
    states = torch.randn(3, 1 + 5 * 4, HIDDEN)  # a class token and a 5 x 4 grid
    with torch.no_grad():
        expected = pooler(states, None, num_prefix_tokens=1, grid_size=(5, 4))
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        got = pooler(states, None, num_prefix_tokens=1, grid_size=(5, 4))
    torch.testing.assert_close(got, expected)
