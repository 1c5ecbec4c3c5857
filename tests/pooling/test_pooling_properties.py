"""Mask-correctness and API properties every pooling head must have."""

from __future__ import annotations

import copy

import pytest
import torch

import poolft
from poolft import available_poolers, build_pooler

HIDDEN = 8
BATCH = 4

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
    ("window", {"reduce": "mean", "project": False}),
    ("window", {"levels": (3,), "reduce": "mean"}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"mode": "sliding", "window_size": 2, "stride": 3, "reduce": "mean", "reduce_windows": "mean"}),
    ("window", {"edges": [[0, 0.1, 0.5, 1.0], [0, 1]], "reduce": "mean"}),
]
GRID_HEADS = [
    ("window", {"grid": True}),
    ("window", {"grid": True, "reduce": "mean", "project": False, "levels": (1, 3)}),
    ("window", {"grid": True, "edges": [[0, 0.3, 1.0]], "project": False}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1}),
    (
        "window",
        {"grid": True, "mode": "sliding", "window_size": 2, "stride": 2, "reduce": "mean", "reduce_windows": "map"},
    ),
]
ALL_HEADS = SEQUENCE_HEADS + GRID_HEADS
GRID_SIZE = (3, 5)
FILLS = {"huge": 3e38, "-huge": -3e38, "inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def head_id(spec):
    name, options = spec
    return name + "".join(f"-{key}={value}" for key, value in options.items())


def make_head(spec, seed=0, dtype=torch.float32):
    name, options = spec
    torch.manual_seed(seed)
    head = build_pooler(name, HIDDEN, **options)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return head.to(dtype).eval()


def is_grid(spec) -> bool:
    return bool(spec[1].get("grid"))


def make_case(spec, prefix, kind="mixed", dtype=torch.float32, seed=0):
    """States, mask and forward kwargs; every row but the all-padding one has real non-prefix tokens."""
    generator = torch.Generator().manual_seed(seed)
    if is_grid(spec):
        tokens = prefix + GRID_SIZE[0] * GRID_SIZE[1]
        patches = (torch.rand(BATCH, tokens - prefix, generator=generator) > 0.3).long()
        patches[0] = 1
        patches[1, :3] = 0
        patches[1, 3] = 1
        mask = torch.cat([torch.ones(BATCH, prefix, dtype=torch.long), patches], dim=1)
        kwargs = {"num_prefix_tokens": prefix, "grid_size": GRID_SIZE}
    else:
        tokens = 9
        lengths = [tokens - prefix, 6 - prefix, 3, 1]
        mask = torch.zeros(BATCH, tokens, dtype=torch.long)
        for b, n in enumerate(lengths):
            if kind == "right":
                mask[b, : prefix + n] = 1
            elif kind == "left":
                mask[b, tokens - n :] = 1
                mask[b, :prefix] = 1
            else:  # interior holes: every other position, or all but one for long rows
                mask[b, :prefix] = 1
                if 2 * n <= tokens - prefix:
                    mask[b, prefix : prefix + 2 * n : 2] = 1
                else:
                    mask[b, prefix:] = 1
                    mask[b, prefix + 1] = 0
        kwargs = {"num_prefix_tokens": prefix}
    x = torch.randn(BATCH, tokens, HIDDEN, generator=generator).to(dtype)
    return x, mask, kwargs


def forward(head, x, mask, **kwargs):
    with torch.no_grad():
        return head(x, mask, **kwargs)


def reads_first_token(spec) -> bool:
    """cls and clsmean read each row's first real token even when it is a prefix token."""
    return spec[0] in ("cls", "clsmean")


def readable(spec, mask, prefix):
    """Positions a head may read: cls reads real tokens including the prefix, the others skip it.

    The prefix is each row's first ``prefix`` real tokens (counted from the first real token);
    clsmean reads the first of them and the real tokens after them.
    """
    readable = mask.bool().clone()
    if spec[0] != "cls":
        for b in range(len(mask)):
            skipped = [t for t in range(mask.size(1)) if mask[b, t] != 0][:prefix]
            for t in skipped[1:] if spec[0] == "clsmean" else skipped:
                readable[b, t] = False
    return readable


def test_every_registered_head_is_covered():
    # flatten reads every position of one fixed grid (no padding): pinned in test_flatten.py
    assert {name for name, _ in ALL_HEADS} | {"flatten"} == set(available_poolers())
    assert available_poolers() == poolft.available_poolers()


# ----------------------------------------------------------------------------------------------
# padding invariance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_padding_values_cannot_change_the_output(spec, prefix):
    head = make_head(spec)
    for kind in ("right", "left", "interior"):
        x, mask, kwargs = make_case(spec, prefix, kind)
        expected = forward(head, x, mask, **kwargs)
        assert torch.isfinite(expected).all()
        for fill, value in FILLS.items():
            dirty = x.clone()
            dirty[mask == 0] = value
            assert torch.equal(forward(head, dirty, mask, **kwargs), expected), (kind, fill)


@pytest.mark.parametrize("fill", list(FILLS), ids=str)
@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
def test_extra_padding_columns_cannot_change_the_output(spec, fill):
    """Longer padded batches give the same result.

    A different token count may change the float summation order of a vectorised reduction or
    matmul, so the comparison allows one or two ulps; any leak of the inf/NaN/3e38 fill would be
    far outside that. (Same-shape changes of padding values are checked bit for bit above.)
    """
    head = make_head(spec)
    for kind, prefix in [(kind, prefix) for kind in ("right", "left", "interior") for prefix in (0, 1, 2)]:
        x, mask, kwargs = make_case(spec, prefix, kind)
        expected = forward(head, x, mask, **kwargs)
        extra = torch.full((BATCH, 5, HIDDEN), FILLS[fill])
        no_mask = torch.zeros(BATCH, 5, dtype=mask.dtype)
        appended = forward(head, torch.cat([x, extra], 1), torch.cat([mask, no_mask], 1), **kwargs)
        torch.testing.assert_close(appended, expected, rtol=1e-6, atol=1e-6, msg=kind)
        if prefix == 0:  # prepending moves the prefix, so only without one
            prepended = forward(head, torch.cat([extra, x], 1), torch.cat([no_mask, mask], 1), **kwargs)
            torch.testing.assert_close(prepended, expected, rtol=1e-6, atol=1e-6, msg=kind)


@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
def test_no_mask_equals_all_ones_mask(spec):
    head = make_head(spec)
    x, mask, kwargs = make_case(spec, 1)
    assert torch.equal(forward(head, x, None, **kwargs), forward(head, x, torch.ones_like(mask), **kwargs))


# ----------------------------------------------------------------------------------------------
# prefix tokens
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_prefix_tokens_are_excluded_except_by_cls(spec, prefix):
    head = make_head(spec)
    x, mask, kwargs = make_case(spec, prefix, "right")
    expected = forward(head, x, mask, **kwargs)
    other = torch.randn(BATCH, prefix, HIDDEN, generator=torch.Generator().manual_seed(123))
    for value in (other, 1e30, float("nan")):
        changed = x.clone()
        changed[:, :prefix] = value
        out = forward(head, changed, mask, **kwargs)
        if spec[0] == "clsmean":  # the class token (position 0) is read, the other prefix tokens never
            later = x.clone()
            later[:, 1:prefix] = value[:, 1:] if isinstance(value, torch.Tensor) else value
            assert torch.equal(forward(head, later, mask, **kwargs), expected)
            if isinstance(value, torch.Tensor):
                assert not torch.equal(out, expected)
        elif spec[0] == "cls":
            # the first real token of every row is position 0, a prefix token
            if isinstance(value, torch.Tensor):
                assert not torch.isclose(out, expected).all(dim=1).any()
                assert torch.isfinite(out).all()
        else:
            assert torch.equal(out, expected)


@pytest.mark.parametrize("spec", [s for s in ALL_HEADS if s[0] != "cls"], ids=head_id)
def test_prefix_count_matters(spec):
    """Sanity check for the test above: reading the prefix would change these outputs."""
    head = make_head(spec)
    x, mask, kwargs = make_case(spec, 2, "right")
    shifted = dict(kwargs, num_prefix_tokens=0)
    if is_grid(spec):  # the grid starts after the prefix: same result as the bare patches
        assert torch.equal(forward(head, x, mask, **kwargs), forward(head, x[:, 2:], mask[:, 2:], **shifted))
    else:
        assert not torch.equal(forward(head, x, mask, **kwargs), forward(head, x, mask, **shifted))


@pytest.mark.parametrize("prefix", [0, 1])
def test_cls_respects_left_padding_and_ignores_prefix_count(prefix):
    head = make_head(("cls", {}))
    x, mask, kwargs = make_case(("cls", {}), prefix, "left")
    out = forward(head, x, mask, **kwargs)
    for b in range(BATCH):
        first = int(mask[b].nonzero()[0])
        assert torch.equal(out[b], x[b, first])
    assert torch.equal(out, forward(head, x, mask, num_prefix_tokens=0))


# ----------------------------------------------------------------------------------------------
# rows without real tokens
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_all_padding_rows_are_exact_zeros(spec, dtype):
    head = make_head(spec, dtype=dtype)
    for prefix in (0, 2):
        x, mask, kwargs = make_case(spec, prefix, "right", dtype=dtype)
        mask[2] = 0  # all padding
        x[2] = float("nan")
        x[3, 1:] = float("inf")
        if not reads_first_token(spec):
            mask[3] = 0
            mask[3, :prefix] = 1  # only prefix tokens are real: nothing for a non-cls head to read
        else:
            mask[3] = 0
        out = forward(head, x, mask, **kwargs)
        assert out.dtype == dtype
        assert out.shape == (BATCH, head.output_dim)
        assert torch.isfinite(out).all()
        assert torch.equal(out[2:], torch.zeros_like(out[2:]))
        assert (out[:2] != 0).any(dim=1).all()
        # and the whole batch empty
        empty = forward(head, x, torch.zeros_like(mask), **kwargs)
        assert torch.equal(empty, torch.zeros_like(empty))


@pytest.mark.parametrize(
    ("dtype", "value", "grid_size"),
    [
        # fp16: 48 tokens near the max would overflow a float16 sum
        (torch.float16, 0.9 * torch.finfo(torch.float16).max, (6, 8)),
        # bf16: a bfloat16 running sum of 600 ones sticks at 256 (8-bit significand)
        (torch.bfloat16, 1.0, (20, 30)),
    ],
    ids=["fp16-overflow", "bf16-precision"],
)
@pytest.mark.parametrize(
    "spec",
    [
        ("mean", {}),
        ("meanmax", {}),
        ("gem", {}),
        ("window", {"reduce": "mean", "project": False}),
        (
            "window",
            {"mode": "sliding", "window_size": 600, "reduce": "mean", "reduce_windows": "mean", "project": False},
        ),
        ("window", {"grid": True, "reduce": "mean", "project": False}),
    ],
    ids=head_id,
)
def test_low_precision_means_accumulate_in_float32(spec, dtype, value, grid_size):
    head = make_head(spec, dtype=dtype)
    tokens = grid_size[0] * grid_size[1]
    kwargs = {"num_prefix_tokens": 0, "grid_size": grid_size} if is_grid(spec) else {}
    x = torch.full((2, tokens, HIDDEN), value, dtype=dtype)
    mask = torch.ones(2, tokens, dtype=torch.long)
    mask[1, tokens - 5 :] = 0
    out = forward(head, x, mask, **kwargs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full(out.shape, x[0, 0, 0].item()), rtol=1e-2, atol=0)


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["random", "huge", "inf", "nan"])
@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_gradients_reach_real_tokens_only(spec, fill):
    head = make_head(spec)
    kinds = ("left", "interior") if not is_grid(spec) else ("mixed",)
    for kind, prefix in [(kind, prefix) for kind in kinds for prefix in (0, 1, 2)]:
        x, mask, kwargs = make_case(spec, prefix, kind)
        mask[3] = 0  # plus one all-padding row
        allowed = readable(spec, mask, prefix)
        if reads_first_token(spec):  # cls reads one token: the first real one; clsmean also the mean's
            first = mask.bool().int().argmax(dim=1)
            if spec[0] == "cls":
                allowed = torch.zeros_like(allowed)
            allowed[torch.arange(BATCH), first] = mask.bool().any(dim=1)
        if fill != "random":
            x[~readable(spec, mask, prefix)] = {"huge": 1e30, "inf": float("inf"), "nan": float("nan")}[fill]
        x.requires_grad_(True)
        head.zero_grad()
        out = head(x, mask, **kwargs)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grad = x.grad
        blocked = grad[~allowed]
        assert torch.equal(blocked, torch.zeros_like(blocked)), (kind, prefix)
        assert torch.isfinite(grad).all()
        for b in range(BATCH):
            if allowed[b].any():  # every row with something to read gets some gradient
                assert (grad[b][allowed[b]] != 0).any()
        if spec[0] == "cls":
            assert (grad[allowed] != 0).all(dim=-1).all()
        for name, param in head.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), name


# ----------------------------------------------------------------------------------------------
# inputs are not modified
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_inputs_are_not_modified_and_leaf_autograd_works(spec):
    head = make_head(spec)
    x, mask, kwargs = make_case(spec, 1, "interior")
    x[mask == 0] = float("nan")
    x_before, mask_before = x.clone(), mask.clone()
    leaf = x.clone().requires_grad_(True)
    out = head(leaf, mask, **kwargs)
    out.sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == leaf.shape
    torch.testing.assert_close(leaf.detach(), x_before, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(mask, mask_before)
    with torch.no_grad():
        head(x, mask, **kwargs)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(mask, mask_before)


# ----------------------------------------------------------------------------------------------
# registry, options, rebuild, output_dim
# ----------------------------------------------------------------------------------------------


def test_unknown_pooler_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        build_pooler("no-such-pooler", HIDDEN)
    message = str(error.value)
    assert "no-such-pooler" in message
    for name in available_poolers():
        assert name in message


@pytest.mark.parametrize("name", ["cls", "clsmean", "mean", "max", "meanmax", "gem", "attention", "window"])
def test_unknown_option_raises(name):
    with pytest.raises(ValueError, match="bogus_option"):
        build_pooler(name, HIDDEN, bogus_option=1)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("attention", {"num_heads": 3}),
        ("attention", {"num_queries": 0}),
        ("gem", {"p": 0.0}),
        ("window", {"levels": ()}),
        ("window", {"levels": (0, 2)}),
        ("window", {"reduce": "sum"}),
        ("window", {"reduce_windows": "min"}),
        ("window", {"mode": "dilated"}),
        ("window", {"window_size": 0}),
        ("window", {"stride": 0}),
        ("window", {"edges": [[0, 0.5, 0.5, 1]]}),  # not strictly increasing
        ("window", {"edges": [[0, 0.7, 0.3, 1]]}),
        ("window", {"edges": [[0, 0.5, 1.5]]}),  # outside [0, 1]
        ("window", {"edges": [[-0.1, 0.5, 1]]}),
        ("window", {"edges": [[0.1, 0.5, 1]]}),  # must start at 0 and end at 1
        ("window", {"edges": [[0, 0.5]]}),
        ("window", {"edges": [[0]]}),
        ("window", {"edges": []}),
        ("window", {"edges": [0, 0.5, 1]}),  # not a list of levels
        ("window", {"edges": [[0, "half", 1]]}),
        ("window", {"edges": [[0, 1e-9, 1]]}),  # equal to 0 as a fraction
        ("window", {"edges": [[0, 0.5, 1]], "levels": [3]}),  # levels disagree with edges
        ("window", {"edges": [[0, 0.5, 1]], "mode": "sliding"}),
        ("window", {"reduce_windows": "map"}),  # map needs grid=True, mode="sliding"
        ("window", {"reduce_windows": "map", "mode": "sliding"}),
        ("window", {"grid": True, "mode": "sliding", "reduce_windows": "map", "map_size": 0}),
    ],
)
def test_invalid_option_values_raise(name, options):
    with pytest.raises(ValueError) as error:
        build_pooler(name, HIDDEN, **options)
    assert "\n" not in str(error.value)


def test_edges_derive_levels_and_rebuild():
    head = build_pooler("window", HIDDEN, edges=[[0, 0.1, 0.5, 1.0], [0, 1]])
    assert head.levels == (3, 1)
    assert head.options["edges"] == [[0.0, 0.1, 0.5, 1.0], [0.0, 1.0]]
    assert build_pooler("window", HIDDEN, edges=[[0, 0.5, 1]], levels=[2]).levels == (2,)


@pytest.mark.parametrize("options", [{}, {"mode": "sliding"}, {"grid": False, "levels": (1, 2), "project": False}])
def test_window_without_grid_refuses_a_grid_size(options):
    """The issue's case: a grid passed to a 1-D window head is refused in one line, never dropped."""
    head = make_head(("window", options))
    assert not head.uses_grid
    x = torch.randn(2, 16, HIDDEN)
    with pytest.raises(ValueError, match="grid=True") as error:
        head(x, None, num_prefix_tokens=1, grid_size=(3, 5))
    assert "\n" not in str(error.value)
    assert forward(head, x, None, num_prefix_tokens=1).shape == (2, head.output_dim)


def test_grid_window_uses_the_grid():
    head = make_head(("window", {"grid": True, "levels": (1, 2), "project": False}))
    assert head.uses_grid
    out = forward(head, torch.randn(2, 16, HIDDEN), None, num_prefix_tokens=1, grid_size=(3, 5))
    assert out.shape == (2, HIDDEN * 5)  # 1 + 4 bins


@pytest.mark.parametrize("spec", [s for s in SEQUENCE_HEADS if s[0] != "window"], ids=head_id)
def test_order_free_heads_ignore_grid_size(spec):
    """Heads whose result does not depend on the token order accept a grid and give the same result."""
    head = make_head(spec)
    assert not head.uses_grid
    x = torch.randn(BATCH, 16, HIDDEN)
    mask = torch.ones(BATCH, 16, dtype=torch.long)
    mask[1, 12:] = 0
    expected = forward(head, x, mask, num_prefix_tokens=1)
    assert torch.equal(forward(head, x, mask, num_prefix_tokens=1, grid_size=(3, 5)), expected)


def test_grid_head_needs_matching_grid_size():
    head = make_head(("window", {"grid": True}))
    x, mask, kwargs = make_case(("window", {"grid": True}), 1)
    with pytest.raises(ValueError):
        head(x, mask, num_prefix_tokens=1)
    with pytest.raises(ValueError):
        head(x, mask, num_prefix_tokens=1, grid_size=(4, 4))


def test_bad_mask_shape_and_prefix_count_raise():
    head = make_head(("mean", {}))
    x = torch.randn(2, 5, HIDDEN)
    with pytest.raises(ValueError):
        head(x, torch.ones(2, 4))
    with pytest.raises(ValueError):
        head(x, torch.ones(2, 5), num_prefix_tokens=6)


@pytest.mark.parametrize("spec", ALL_HEADS + [("gem", {"p": 2.0, "eps": 1e-3, "learn_p": False})], ids=head_id)
def test_options_rebuild_an_identical_head(spec):
    head = make_head(spec, seed=0)
    if spec[0] == "gem":
        with torch.no_grad():
            head.p.fill_(1.75)  # a "learned" p different from the initial one
    rebuilt = build_pooler(spec[0], HIDDEN, **copy.deepcopy(head.options))
    assert type(rebuilt) is type(head)
    assert rebuilt.options == head.options
    assert rebuilt.output_dim == head.output_dim
    rebuilt.load_state_dict(head.state_dict())
    rebuilt.eval()
    x, mask, kwargs = make_case(spec, 1, "interior", seed=5)
    assert torch.equal(forward(rebuilt, x, mask, **kwargs), forward(head, x, mask, **kwargs))
    if spec[0] == "gem":
        assert rebuilt.p.requires_grad == head.p.requires_grad


@pytest.mark.parametrize("spec", ALL_HEADS, ids=head_id)
def test_output_dim_matches_output_shape(spec):
    head = make_head(spec)
    x, mask, kwargs = make_case(spec, 1)
    assert forward(head, x, mask, **kwargs).shape == (BATCH, head.output_dim)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"project": False}, HIDDEN * 7),
        ({"project": False, "levels": (3,)}, HIDDEN * 3),
        ({"project": False, "levels": [2, 5, 1]}, HIDDEN * 8),
        ({"project": False, "grid": True}, HIDDEN * 21),
        ({"project": False, "grid": True, "levels": (1, 3)}, HIDDEN * 10),
        ({"project": False, "mode": "sliding"}, HIDDEN),
        ({"project": False, "edges": [[0, 0.1, 0.5, 1.0], [0, 1]]}, HIDDEN * 4),
        ({"project": False, "grid": True, "edges": [[0, 0.1, 0.5, 1.0], [0, 1]]}, HIDDEN * 10),
        ({"project": False, "grid": True, "mode": "sliding"}, HIDDEN),
        ({"project": False, "grid": True, "mode": "sliding", "reduce_windows": "map"}, HIDDEN * 4),
        ({"project": False, "grid": True, "mode": "sliding", "reduce_windows": "map", "map_size": 3}, HIDDEN * 9),
        ({"grid": True}, HIDDEN),
        ({}, HIDDEN),
    ],
    ids=str,
)
def test_window_output_dim(options, expected):
    head = build_pooler("window", HIDDEN, **options)
    assert head.output_dim == expected
    if options.get("grid"):
        x = torch.randn(2, 1 + 4 * 6, HIDDEN)
        out = head(x, None, num_prefix_tokens=1, grid_size=(4, 6))
    else:
        out = head(torch.randn(2, 11, HIDDEN), None)
    assert out.shape == (2, expected)


@pytest.mark.parametrize(
    ("name", "expected"), [("cls", 1), ("clsmean", 2), ("mean", 1), ("max", 1), ("meanmax", 2), ("gem", 1)]
)
def test_simple_output_dims(name, expected):
    assert build_pooler(name, HIDDEN).output_dim == expected * HIDDEN
