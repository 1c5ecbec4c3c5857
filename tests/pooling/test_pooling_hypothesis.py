"""Hypothesis property tests: random batches, masks, prefix counts, grids and dtypes for every head.

For every drawn case the output must be finite, rows with nothing to read must be exact zeros, and
the values at padding positions (and extra padding columns) must not change the result.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poolft import available_poolers, build_pooler

HIDDEN = 8
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FILLS = ["huge", "-huge", "inf", "-inf", "nan"]
# tolerance for the extra-columns comparison only: a longer padded row may change the float
# summation order; a leak of the inf/NaN/huge padding would be far outside these
REORDER_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}

SEQUENCE_HEADS = [
    ("cls", {}),
    ("cls", {"dense": True}),
    ("clsmean", {}),
    ("clsmean", {"project": True}),
    ("mean", {}),
    ("max", {}),
    ("meanmax", {}),
    ("gem", {}),
    ("attention", {}),
    ("attention", {"num_queries": 2, "num_heads": 2}),
    ("window", {}),
    ("window", {"levels": (3,), "reduce": "mean", "project": False}),
    ("window", {"levels": (2, 5), "reduce": "max", "project": False}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"mode": "sliding", "window_size": 4, "stride": 5, "reduce": "mean", "reduce_windows": "mean"}),
    ("window", {"edges": [[0, 0.1, 0.5, 1.0], [0, 0.7, 1]], "reduce": "max", "project": False}),
]
GRID_HEADS = [
    ("window", {"grid": True}),
    ("window", {"grid": True, "levels": (1, 3), "reduce": "mean", "project": False}),
    ("window", {"grid": True, "levels": (2,), "reduce": "max", "project": False}),
    ("window", {"grid": True, "edges": [[0, 0.2, 1], [0, 0.5, 0.6, 1]], "reduce": "mean", "project": False}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1, "reduce_windows": "mean"}),
    (
        "window",
        {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce": "mean", "reduce_windows": "map"},
    ),
]

# a head that reads every position of one fixed grid takes no padding and no other grid: its
# properties (the plain-loop reference, the refusals) are pinned in test_flatten.py
FIXED_GRID_HEADS = {"flatten"}

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

_HEADS: dict[tuple[str, torch.dtype], torch.nn.Module] = {}


def head_id(spec) -> str:
    name, options = spec
    return name + "".join(f"-{key}={value}" for key, value in options.items())


def get_head(spec, dtype):
    key = (head_id(spec), dtype)
    if key not in _HEADS:
        torch.manual_seed(0)
        head = build_pooler(spec[0], HIDDEN, **spec[1])
        with torch.no_grad():
            for param in head.parameters():
                param.add_(0.1 * torch.randn_like(param))
        _HEADS[key] = head.to(dtype).eval()
    return _HEADS[key]


def test_every_registered_head_is_covered():
    assert {name for name, _ in SEQUENCE_HEADS + GRID_HEADS} | FIXED_GRID_HEADS == set(available_poolers())


@st.composite
def masks(draw, batch: int, tokens: int) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["random", "left", "right", "empty", "full"]))
        if kind == "random":
            row = draw(st.lists(st.booleans(), min_size=tokens, max_size=tokens))
        elif kind in ("left", "right"):
            n = draw(st.integers(0, tokens))
            row = [False] * (tokens - n) + [True] * n if kind == "left" else [True] * n + [False] * (tokens - n)
        else:
            row = [kind == "full"] * tokens
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


@st.composite
def sequence_cases(draw):
    batch = draw(st.integers(1, 4))
    tokens = draw(st.integers(1, 24))
    prefix = draw(st.integers(0, min(2, tokens)))
    return {
        "mask": draw(masks(batch, tokens)),
        "prefix": prefix,
        "grid_size": None,
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": draw(st.integers(0, 2**16)),
        "scale": draw(st.sampled_from([0.01, 1.0, 30.0])),
        "fill": draw(st.sampled_from(FILLS)),
    }


@st.composite
def grid_cases(draw):
    batch = draw(st.integers(1, 4))
    grid_size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    prefix = draw(st.integers(0, 2))
    patches = draw(masks(batch, grid_size[0] * grid_size[1]))
    prefix_mask = draw(masks(batch, prefix)) if prefix else torch.zeros(batch, 0, dtype=torch.long)
    return {
        "mask": torch.cat([prefix_mask, patches], dim=1),
        "prefix": prefix,
        "grid_size": grid_size,
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": draw(st.integers(0, 2**16)),
        "scale": draw(st.sampled_from([0.01, 1.0, 30.0])),
        "fill": draw(st.sampled_from(FILLS)),
    }


def fill_value(fill: str, dtype: torch.dtype) -> float:
    huge = torch.finfo(dtype).max
    return {"huge": huge, "-huge": -huge, "inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}[fill]


def check_case(spec, case, extra_columns: bool):
    dtype, mask, prefix = case["dtype"], case["mask"], case["prefix"]
    head = get_head(spec, dtype)
    batch, tokens = mask.shape
    generator = torch.Generator().manual_seed(case["seed"])
    x = (case["scale"] * torch.randn(batch, tokens, HIDDEN, generator=generator)).to(dtype)
    kwargs = {"num_prefix_tokens": prefix, "grid_size": case["grid_size"]}
    with torch.no_grad():
        out = head(x, mask, **kwargs)
    assert out.shape == (batch, head.output_dim)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()

    # cls (and clsmean) read the first real token even if it is a prefix token; the others skip each row's
    # first ``prefix`` real tokens, so a row needs more than ``prefix`` of them
    real_count = mask.bool().sum(dim=1)
    empty = real_count == 0 if spec[0] in ("cls", "clsmean") else real_count <= prefix
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))

    value = fill_value(case["fill"], dtype)
    dirty = x.clone()
    dirty[mask == 0] = value
    with torch.no_grad():
        assert torch.equal(head(dirty, mask, **kwargs), out)

    if extra_columns:
        extra = torch.full((batch, 3, HIDDEN), value, dtype=dtype)
        longer_mask = torch.cat([mask, torch.zeros(batch, 3, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            longer = head(torch.cat([dirty, extra], dim=1), longer_mask, **kwargs)
        tol = REORDER_TOL[dtype]
        torch.testing.assert_close(longer, out, rtol=tol, atol=tol * case["scale"])


@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
@SETTINGS
@given(case=sequence_cases())
def test_sequence_heads_random_batches(spec, case):
    check_case(spec, case, extra_columns=True)


@pytest.mark.parametrize("spec", GRID_HEADS, ids=head_id)
@SETTINGS
@given(case=grid_cases())
def test_grid_window_random_batches(spec, case):
    check_case(spec, case, extra_columns=False)


# ----------------------------------------------------------------------------------------------
# random masks with prefixes against the plain-loop references (fp32), and padding-side invariance
# ----------------------------------------------------------------------------------------------


@st.composite
def padded_rows(draw, tokens: int, prefix: int) -> list[tuple[int, list[bool]]]:
    """Rows of real-token patterns (holes allowed) with a left-padding amount each."""
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        length = draw(st.integers(0, tokens))
        pattern = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        pattern = [True] * min(prefix, length) + pattern[min(prefix, length) :]  # the prefix is real
        rows.append((tokens - length, pattern))
    return rows


def as_masks(rows: list[tuple[int, list[bool]]], tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """The same rows padded on the left and on the right: ``(left, right)`` masks."""
    left = [[0] * pad + [int(v) for v in pattern] for pad, pattern in rows]
    right = [[int(v) for v in pattern] + [0] * pad for pad, pattern in rows]
    return left, right


def as_states(x: torch.Tensor, rows: list[tuple[int, list[bool]]]) -> torch.Tensor:
    """Right-padded states ``x`` moved to the left padding of ``rows`` (padding columns rotated)."""
    return torch.stack([torch.roll(x[b], shifts=pad, dims=0) for b, (pad, _) in enumerate(rows)])


def check_reference_and_padding_side(spec, rows, tokens, prefix, grid_size, seed):
    from test_pooling_reference import reference  # the plain-loop references (tests/pooling)

    head = get_head(spec, torch.float32)
    left, right = as_masks(rows, tokens)
    x = torch.randn(len(rows), tokens, HIDDEN, generator=torch.Generator().manual_seed(seed))
    kwargs = {"num_prefix_tokens": prefix, "grid_size": grid_size}
    with torch.no_grad():
        out_right = head(x, torch.tensor(right), **kwargs)
        out_left = head(as_states(x, rows), torch.tensor(left), **kwargs)
    for mask, states, out in ((right, x, out_right), (left, as_states(x, rows), out_left)):
        expected = reference(head, states, mask, prefix, grid_size)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_left, out_right, rtol=1e-5, atol=1e-6)


@st.composite
def prefix_cases(draw):
    tokens = draw(st.integers(1, 16))
    prefix = draw(st.integers(0, min(2, tokens)))
    return {
        "rows": draw(padded_rows(tokens, prefix)),
        "tokens": tokens,
        "prefix": prefix,
        "seed": draw(st.integers(0, 99)),
    }


@st.composite
def grid_prefix_cases(draw):
    grid_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    prefix = draw(st.integers(1, 2))  # the prefix anchors a padded row's grid
    tokens = prefix + grid_size[0] * grid_size[1]
    return {
        "rows": draw(padded_rows(tokens, prefix)),
        "tokens": tokens,
        "prefix": prefix,
        "grid_size": grid_size,
        "seed": draw(st.integers(0, 99)),
    }


@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
@SETTINGS
@given(case=prefix_cases())
def test_sequence_heads_match_reference_on_left_and_right_padding(spec, case):
    check_reference_and_padding_side(spec, case["rows"], case["tokens"], case["prefix"], None, case["seed"])


@pytest.mark.parametrize("spec", GRID_HEADS, ids=head_id)
@SETTINGS
@given(case=grid_prefix_cases())
def test_grid_window_matches_reference_on_left_and_right_padding(spec, case):
    check_reference_and_padding_side(
        spec, case["rows"], case["tokens"], case["prefix"], case["grid_size"], case["seed"]
    )
