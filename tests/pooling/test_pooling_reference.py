"""Every pooling head against an independent, loop-based reference.

The references below are written from the documented semantics only: they loop over examples,
windows, queries and heads in plain Python, compute in float64, and read nothing from
``poolft.pooling`` except the head's own parameters (and, for ``window``, its ``options``).
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch

from poolft import build_pooler

HIDDEN = 16
TOKENS = 10

# (batch=5, tokens=10) masks; every row of every kind has at least one real token after 2 prefix
# positions except where noted, so prefix 0/1/2 all exercise real tokens.
MASKS = {
    "right": [
        [1] * 10,
        [1] * 7 + [0] * 3,
        [1] * 3 + [0] * 7,
        [1] * 4 + [0] * 6,
        [1] * 5 + [0] * 5,
    ],
    "left": [
        [1] * 10,
        [0] * 3 + [1] * 7,
        [0] * 7 + [1] * 3,
        [0] * 6 + [1] * 4,
        [0] * 9 + [1],
    ],
    "interior": [
        [1, 0, 1, 1, 0, 1, 0, 0, 1, 1],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 1],
        [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 1, 1, 1, 1, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    ],
    # left padding with the prefix after the padding (what a left-padding tokenizer makes): the
    # prefix is each row's first real tokens, wherever the row starts
    "left_prefix": [
        [1] * 10,
        [0] * 2 + [1] * 8,
        [0] * 5 + [1] * 5,
        [0] * 7 + [1] * 3,
        [0] * 8 + [1] * 2,
    ],
    # left- and right-padded rows (and interior holes) in one batch
    "mixed": [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
        [1] * 10,
    ],
    # an all-padding row, a row whose only real tokens are (for prefix 2) the prefix, short rows
    "empty_rows": [
        [0] * 10,
        [1, 1] + [0] * 8,
        [1, 1, 1] + [0] * 7,
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [1] * 10,
    ],
}
MASK_KINDS = list(MASKS)
PREFIXES = [0, 1, 2]
# every mask kind with every prefix count; looped inside the tests (cheaper than 12x more test items)
MASK_CASES = [(kind, prefix) for kind in MASK_KINDS for prefix in PREFIXES]

FP32_TOL = {"rtol": 1e-5, "atol": 1e-5}
LOW_PRECISION_TOL = {torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2}, torch.float16: {"rtol": 2e-3, "atol": 2e-3}}


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------


def real_positions(mask_row: list[int], prefix: int) -> list[int]:
    """Positions of the row's real tokens after its prefix, in order.

    The prefix is the row's first ``prefix`` real tokens, wherever the row starts (left padding).
    """
    real = [t for t, m in enumerate(mask_row) if m != 0]
    return real[prefix:]


def grid_start(mask_row: list[int], prefix: int) -> int:
    """Position of the row's first patch: right after its last prefix token (0 without a prefix)."""
    if prefix == 0:
        return 0
    real = [t for t, m in enumerate(mask_row) if m != 0]
    return real[prefix - 1] + 1 if len(real) >= prefix else len(mask_row)


def reduce_vectors(vectors: list[torch.Tensor], how: str, hidden: int) -> torch.Tensor:
    """Max or mean of a list of float64 vectors; zeros for an empty list."""
    if not vectors:
        return torch.zeros(hidden, dtype=torch.float64)
    if how == "max":
        result = vectors[0].clone()
        for vector in vectors[1:]:
            result = torch.maximum(result, vector)
        return result
    total = torch.zeros(hidden, dtype=torch.float64)
    for vector in vectors:
        total = total + vector
    return total / len(vectors)


def params(module: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias in float64 (a bias-free layer has a zero bias)."""
    weight = module.weight.detach().double()
    bias = module.bias.detach().double() if module.bias is not None else torch.zeros(weight.size(0)).double()
    return weight, bias


def ref_cls(head, x, mask, prefix):
    batch, _, hidden = x.shape
    rows = []
    for b in range(batch):
        positions = real_positions(mask[b], 0)  # prefix tokens are NOT skipped by cls
        if not positions:
            rows.append(torch.zeros(hidden, dtype=torch.float64))
            continue
        vector = x[b, positions[0]]
        if head.options["dense"]:
            weight, bias = params(head.dense)
            vector = torch.tanh(weight @ vector + bias)
        rows.append(vector)
    return torch.stack(rows)


def ref_clsmean(head, x, mask, prefix):
    """``[first real token, mean of the real tokens after the prefix]``, projected if asked."""
    batch, _, hidden = x.shape
    rows = []
    for b in range(batch):
        real = real_positions(mask[b], 0)
        first = x[b, real[0]] if real else torch.zeros(hidden, dtype=torch.float64)
        vector = torch.cat([first, reduce_vectors([x[b, t] for t in real_positions(mask[b], prefix)], "mean", hidden)])
        if head.options["project"]:
            weight, bias = params(head.projection)
            vector = weight @ vector + bias if real else torch.zeros(hidden, dtype=torch.float64)
        rows.append(vector)
    return torch.stack(rows)


def ref_mean(head, x, mask, prefix):
    hidden = x.shape[-1]
    return torch.stack(
        [reduce_vectors([x[b, t] for t in real_positions(mask[b], prefix)], "mean", hidden) for b in range(len(x))]
    )


def ref_max(head, x, mask, prefix):
    hidden = x.shape[-1]
    return torch.stack(
        [reduce_vectors([x[b, t] for t in real_positions(mask[b], prefix)], "max", hidden) for b in range(len(x))]
    )


def ref_meanmax(head, x, mask, prefix):
    return torch.cat([ref_mean(head, x, mask, prefix), ref_max(head, x, mask, prefix)], dim=1)


def ref_gem(head, x, mask, prefix):
    hidden = x.shape[-1]
    p = max(float(head.p.detach().double()), 1e-2)
    eps = head.options["eps"]
    rows = []
    for b in range(len(x)):
        positions = real_positions(mask[b], prefix)
        if not positions:
            rows.append(torch.zeros(hidden, dtype=torch.float64))
            continue
        total = torch.zeros(hidden, dtype=torch.float64)
        for t in positions:
            total = total + x[b, t].clamp(min=eps) ** p
        rows.append((total / len(positions)).clamp(min=eps) ** (1.0 / p))
    return torch.stack(rows)


def ref_attention_with_weights(head, x, mask, prefix):
    """Per example, per query, per head softmax over the real non-prefix tokens."""
    batch, tokens, hidden = x.shape
    heads, queries = head.options["num_heads"], head.options["num_queries"]
    dim = hidden // heads
    query = head.query.detach().double()
    key_w, key_b = params(head.key)
    value_w, value_b = params(head.value)
    out_w, out_b = params(head.output)
    weights = torch.zeros(batch, heads, queries, tokens, dtype=torch.float64)
    rows = []
    for b in range(batch):
        positions = real_positions(mask[b], prefix)
        if not positions:
            rows.append(torch.zeros(hidden, dtype=torch.float64))
            continue
        keys = [key_w @ x[b, t] + key_b for t in positions]
        values = [value_w @ x[b, t] + value_b for t in positions]
        parts = []
        for q in range(queries):
            for h in range(heads):
                part = slice(h * dim, (h + 1) * dim)
                scores = [float(query[q, part] @ key[part]) / math.sqrt(dim) for key in keys]
                top = max(scores)
                exps = [math.exp(s - top) for s in scores]
                norm = sum(exps)
                attended = torch.zeros(dim, dtype=torch.float64)
                for t, e, value in zip(positions, exps, values):
                    weights[b, h, q, t] = e / norm
                    attended = attended + (e / norm) * value[part]
                parts.append(attended)
        rows.append(out_w @ torch.cat(parts) + out_b)
    return torch.stack(rows), weights


def ref_attention(head, x, mask, prefix):
    return ref_attention_with_weights(head, x, mask, prefix)[0]


def floor_div(a: int, b: int) -> int:
    return a // b


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def level_ranges(level, n: int) -> list[tuple[int, int]]:
    """Windows of one level over ``n`` items: ``k`` equal ones, or ``[floor(e_j*n), ceil(e_{j+1}*n))`` for edges.

    Edges are read as decimal fractions (``Fraction(str(e))``), so ``0.3 * 10`` is exactly 3.
    """
    if isinstance(level, int):
        return [(floor_div(j * n, level), ceil_div((j + 1) * n, level)) for j in range(level)]
    edges = [Fraction(str(e)) for e in level]
    return [(math.floor(a * n), math.ceil(b * n)) for a, b in zip(edges, edges[1:])]


def window_levels(opts) -> list:
    return opts["edges"] if opts.get("edges") is not None else list(opts["levels"])


def ref_window_adaptive(x, mask, prefix, levels, how):
    batch, _, hidden = x.shape
    rows = []
    for b in range(batch):
        positions = real_positions(mask[b], prefix)
        n = len(positions)
        feats = []
        for level in levels:
            for start, end in level_ranges(level, n):
                feats.append(reduce_vectors([x[b, positions[r]] for r in range(start, end)], how, hidden))
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def grid_cells(x, mask, b, prefix, grid_size):
    """``cells[r][c]``: the float64 state of patch (r, c) of row ``b``, or None for an absent patch."""
    height, width = grid_size
    start = grid_start(mask[b], prefix)
    cells = [[None] * width for _ in range(height)]
    for r in range(height):
        for c in range(width):
            t = start + r * width + c
            if t < len(mask[b]) and mask[b][t] != 0:
                cells[r][c] = x[b, t]
    return cells


def pool_rectangles(cells, row_ranges, col_ranges, how, hidden):
    """Reduce the present cells of each rectangle; returns ``[[vector or None]]`` (None: nothing present)."""
    out = []
    for row_lo, row_hi in row_ranges:
        line = []
        for col_lo, col_hi in col_ranges:
            members = [cells[r][c] for r in range(row_lo, row_hi) for c in range(col_lo, col_hi)]
            members = [m for m in members if m is not None]
            line.append(reduce_vectors(members, how, hidden) if members else None)
        out.append(line)
    return out


def ref_window_grid_sliding(x, mask, prefix, grid_size, opts):
    """Windows along each axis as ``sliding_windows`` lists them (= max_pool2d with ceil_mode=True)."""
    batch, _, hidden = x.shape
    size, stride, how = opts["window_size"], opts["stride"], opts["reduce"]
    rows = []
    for b in range(batch):
        cells = grid_cells(x, mask, b, prefix, grid_size)
        row_ranges = sliding_windows(grid_size[0], size, stride)
        col_ranges = sliding_windows(grid_size[1], size, stride)
        windows = pool_rectangles(cells, row_ranges, col_ranges, how, hidden)
        if opts["reduce_windows"] != "map":
            present = [w for line in windows for w in line if w is not None]
            rows.append(reduce_vectors(present, opts["reduce_windows"], hidden))
            continue
        k = opts["map_size"]
        bins = pool_rectangles(windows, level_ranges(k, len(row_ranges)), level_ranges(k, len(col_ranges)), how, hidden)
        zero = torch.zeros(hidden, dtype=torch.float64)
        rows.append(torch.cat([v if v is not None else zero for line in bins for v in line]))
    return torch.stack(rows)


def ref_window_grid(x, mask, prefix, grid_size, levels, how):
    batch, _, hidden = x.shape
    height, width = grid_size
    assert x.shape[1] == prefix + height * width
    rows = []
    for b in range(batch):
        start = grid_start(mask[b], prefix)
        feats = []
        for level in levels:
            for row_lo, row_hi in level_ranges(level, height):
                for col_lo, col_hi in level_ranges(level, width):
                    members = []
                    for r in range(row_lo, row_hi):
                        for c in range(col_lo, col_hi):
                            t = start + r * width + c
                            if t < len(mask[b]) and mask[b][t] != 0:
                                members.append(x[b, t])
                    feats.append(reduce_vectors(members, how, hidden))
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def sliding_windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Windows start at 0, stride, 2*stride... while inside the row and the previous one ended early."""
    windows = []
    start = 0
    while start < n:
        windows.append((start, min(start + size, n)))
        if start + size >= n:
            break
        start += stride
    return windows


def ref_window_sliding(x, mask, prefix, size, stride, how, how_windows):
    batch, _, hidden = x.shape
    rows = []
    for b in range(batch):
        positions = real_positions(mask[b], prefix)
        per_window = [
            reduce_vectors([x[b, positions[r]] for r in range(start, end)], how, hidden)
            for start, end in sliding_windows(len(positions), size, stride)
        ]
        rows.append(reduce_vectors(per_window, how_windows, hidden))
    return torch.stack(rows)


def ref_window_features(head, x, mask, prefix, grid_size=None):
    opts = head.options
    if opts["mode"] == "sliding" and opts["grid"]:
        return ref_window_grid_sliding(x, mask, prefix, grid_size, opts)
    if opts["mode"] == "sliding":
        return ref_window_sliding(
            x, mask, prefix, opts["window_size"], opts["stride"], opts["reduce"], opts["reduce_windows"]
        )
    if opts["grid"]:
        return ref_window_grid(x, mask, prefix, grid_size, window_levels(opts), opts["reduce"])
    return ref_window_adaptive(x, mask, prefix, window_levels(opts), opts["reduce"])


def ref_window(head, x, mask, prefix, grid_size=None):
    feats = ref_window_features(head, x, mask, prefix, grid_size)
    if not head.options["project"]:
        return feats
    weight, bias = params(head.projection)
    rows = []
    for b in range(len(x)):
        if real_positions(mask[b], prefix):
            rows.append(weight @ feats[b] + bias)
        else:
            rows.append(torch.zeros(x.shape[-1], dtype=torch.float64))
    return torch.stack(rows)


REFERENCES = {
    "cls": ref_cls,
    "clsmean": ref_clsmean,
    "mean": ref_mean,
    "max": ref_max,
    "meanmax": ref_meanmax,
    "gem": ref_gem,
    "attention": ref_attention,
}


def reference(head, x, mask, prefix=0, grid_size=None):
    """Float64 reference output of ``head`` for ``x`` (any dtype) and a list-of-lists mask."""
    x = x.detach().double()
    if head.name == "window":
        return ref_window(head, x, mask, prefix, grid_size)
    return REFERENCES[head.name](head, x, mask, prefix)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def make_head(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    head = build_pooler(name, HIDDEN, **options)
    with torch.no_grad():  # move every parameter off its init so the references see "trained" weights
        for param in head.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return head.eval()


def make_states(mask: list[list[int]], seed: int, hidden: int = HIDDEN) -> torch.Tensor:
    """Random states; padding positions get large garbage so a leak shows up in the comparison."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(mask), len(mask[0]), hidden, generator=generator)
    padding = torch.tensor(mask) == 0
    x[padding] = 1e4 * torch.randn(int(padding.sum()), hidden, generator=generator)
    return x


def run_head(head, x, mask, prefix=0, grid_size=None):
    with torch.no_grad():
        return head(x, torch.tensor(mask), num_prefix_tokens=prefix, grid_size=grid_size)


def check_against_reference(head, x, mask, prefix=0, grid_size=None, exact=False, case=""):
    out = run_head(head, x, mask, prefix, grid_size)
    expected = reference(head, x, mask, prefix, grid_size)
    assert out.shape == (len(mask), head.output_dim), case
    assert out.dtype == torch.float32, case
    if exact:
        torch.testing.assert_close(out, expected.float(), rtol=0, atol=0, msg=lambda m: f"{case}: {m}")
    else:
        torch.testing.assert_close(out.double(), expected, **FP32_TOL, msg=lambda m: f"{case}: {m}")


SEQUENCE_HEADS = [
    ("cls", {}),
    ("cls", {"dense": True}),
    ("clsmean", {}),
    ("clsmean", {"project": True}),
    ("mean", {}),
    ("max", {}),
    ("meanmax", {}),
    ("gem", {}),
    ("gem", {"p": 1.5, "eps": 1e-4, "learn_p": False}),
    ("attention", {}),
    ("attention", {"num_queries": 2, "num_heads": 2}),
    ("attention", {"num_queries": 3, "num_heads": 1}),
    ("attention", {"num_queries": 1, "num_heads": 16}),
]


def head_id(spec):
    name, options = spec
    return name + "".join(f"-{key}={value}" for key, value in options.items())


# ----------------------------------------------------------------------------------------------
# fp32: cls / mean / max / meanmax / gem / attention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
def test_sequence_heads_match_reference(spec):
    name, options = spec
    head = make_head(name, **options)
    for seed, (kind, prefix) in enumerate(MASK_CASES):
        mask = MASKS[kind]
        x = make_states(mask, seed=seed)
        exact = name in ("max", "cls") and not options  # these copy input values
        check_against_reference(head, x, mask, prefix, exact=exact, case=f"{kind} prefix={prefix}")


@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
def test_no_mask_means_all_tokens_real(spec):
    name, options = spec
    head = make_head(name, **options)
    x = torch.randn(3, 7, HIDDEN)
    mask = [[1] * 7] * 3
    with torch.no_grad():
        out = head(x, None, num_prefix_tokens=1)
    torch.testing.assert_close(out.double(), reference(head, x, mask, 1), **FP32_TOL)


def test_mask_dtypes_bool_float_long_agree():
    head = make_head("attention")
    mask = MASKS["interior"]
    x = make_states(mask, seed=3)
    outs = [
        head(x, torch.tensor(mask, dtype=dtype), num_prefix_tokens=1)
        for dtype in (torch.bool, torch.float32, torch.long)
    ]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_cls_reads_first_real_token_exactly():
    head = make_head("cls")
    mask = MASKS["left"]
    x = make_states(mask, seed=7)
    out = run_head(head, x, mask, prefix=2)  # prefix must not matter for cls
    for b, row in enumerate(mask):
        assert torch.equal(out[b], x[b, row.index(1)])


def test_cls_dense_is_tanh_of_dense_of_first_real_token():
    head = make_head("cls", dense=True)
    mask = MASKS["interior"]
    x = make_states(mask, seed=8)
    out = run_head(head, x, mask)
    with torch.no_grad():
        for b, row in enumerate(mask):
            expected = torch.tanh(head.dense(x[b, row.index(1)]))
            torch.testing.assert_close(out[b], expected, rtol=1e-6, atol=1e-6)


def test_gem_matches_power_mean_and_limits():
    mask = MASKS["right"]
    x = make_states(mask, seed=9).abs() + 0.1
    # p=1 on positive inputs is the mean
    head = make_head("gem", p=1.0, learn_p=False)
    with torch.no_grad():
        head.p.fill_(1.0)
    torch.testing.assert_close(run_head(head, x, mask), run_head(make_head("mean"), x, mask), **FP32_TOL)
    # the learned p is what is used
    head = make_head("gem")
    with torch.no_grad():
        head.p.fill_(4.25)
    check_against_reference(head, x, mask, prefix=1)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("spec", [s for s in SEQUENCE_HEADS if s[0] == "attention"], ids=head_id)
def test_attention_weights_match_reference(spec, prefix):
    head = make_head(spec[0], **spec[1])
    for kind in MASK_KINDS:
        check_attention_weights(head, spec, MASKS[kind], prefix)


def check_attention_weights(head, spec, mask, prefix):
    x = make_states(mask, seed=11)
    with torch.no_grad():
        pooled, weights = head.forward_with_weights(x, torch.tensor(mask), num_prefix_tokens=prefix)
    expected_pooled, expected_weights = ref_attention_with_weights(head, x.double(), mask, prefix)
    torch.testing.assert_close(pooled.double(), expected_pooled, **FP32_TOL)
    batch, tokens = len(mask), len(mask[0])
    assert weights.shape == (batch, spec[1].get("num_heads", 4), spec[1].get("num_queries", 1), tokens)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-5, atol=1e-6)
    for b in range(batch):
        real = real_positions(mask[b], prefix)
        others = [t for t in range(tokens) if t not in real]
        assert torch.all(weights[b][..., others] == 0)
        if real:
            sums = weights[b][..., real].sum(-1)
            torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)
            assert torch.all(weights[b][..., real] > 0)
        else:
            assert torch.all(weights[b] == 0)
    # forward() returns the same pooled vector as forward_with_weights()
    assert torch.equal(run_head(head, x, mask, prefix), pooled)


# ----------------------------------------------------------------------------------------------
# fp32: window (adaptive sequence windows, grid bins, sliding)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("levels", [(1, 2, 4), (3,), (5, 1)], ids=str)
def test_window_adaptive_matches_reference(levels, reduce, project):
    head = make_head("window", levels=levels, reduce=reduce, project=project)
    if not project:
        assert head.output_dim == HIDDEN * sum(levels)
    for seed, (kind, prefix) in enumerate(MASK_CASES):
        mask = MASKS[kind]
        x = make_states(mask, seed=seed)
        # max windows pick existing values, so the raw concatenation must match bit for bit
        exact = reduce == "max" and not project
        check_against_reference(head, x, mask, prefix, exact=exact, case=f"{kind} prefix={prefix}")


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("levels", [(1, 2, 4), (3,), (7,)], ids=str)
def test_window_adaptive_fewer_tokens_than_windows(levels, reduce):
    # rows with n = 1, 2, 3 (< k) real tokens, n = 0, and n = k
    mask = [
        [1, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ]
    head = make_head("window", levels=levels, reduce=reduce, project=False)
    x = make_states(mask, seed=17)
    out = run_head(head, x, mask)
    torch.testing.assert_close(out.double(), ref_window_adaptive(x.double(), mask, 0, levels, reduce), **FP32_TOL)
    # a single real token fills every window of every level with itself
    assert torch.equal(out[0], x[0, 0].repeat(sum(levels)))


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_adaptive_every_length_and_level(reduce):
    """Unpadded rows of every length 1..13 at levels 1..8: covers windows of width ceil(n/k) + 1."""
    levels = tuple(range(1, 9))
    head = make_head("window", levels=levels, reduce=reduce, project=False)
    for tokens in range(1, 14):
        mask = [[1] * tokens, [0] + [1] * (tokens - 1)]
        x = make_states(mask, seed=tokens)
        check_against_reference(head, x, mask, exact=reduce == "max", case=f"tokens={tokens}")
        check_against_reference(head, x, mask, prefix=1, exact=reduce == "max", case=f"tokens={tokens} prefix=1")


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_sliding_every_length(reduce):
    for size, stride in [(3, 2), (4, 1), (2, 3), (5, 5)]:
        head = make_head("window", mode="sliding", window_size=size, stride=stride, reduce=reduce, project=False)
        for tokens in range(1, 14):
            mask = [[1] * tokens, [1] * (tokens // 2) + [0] * (tokens - tokens // 2)]
            x = make_states(mask, seed=tokens)
            check_against_reference(head, x, mask, exact=reduce == "max", case=f"{size}/{stride} tokens={tokens}")


def test_window_adaptive_explicit_bounds():
    """Hand-computed windows for n=5, k=2: ranks [0, 3) and [2, 5) (they overlap by one)."""
    head = make_head("window", levels=(2,), reduce="mean", project=False)
    x = torch.arange(1.0, 8.0).view(1, 7, 1).expand(1, 7, HIDDEN).contiguous()
    mask = torch.tensor([[1, 0, 1, 1, 1, 0, 1]])  # real values 1, 3, 4, 5, 7
    out = head(x, mask).view(2, HIDDEN)
    torch.testing.assert_close(out[0], torch.full((HIDDEN,), (1 + 3 + 4) / 3))
    torch.testing.assert_close(out[1], torch.full((HIDDEN,), (4 + 5 + 7) / 3))


GRIDS = [(4, 4), (3, 5), (5, 3), (1, 1), (2, 7)]


def grid_mask(batch: int, prefix: int, grid_size: tuple[int, int], seed: int) -> list[list[int]]:
    height, width = grid_size
    generator = torch.Generator().manual_seed(seed)
    rows = [[1] * (prefix + height * width)]  # full image
    holes = (torch.rand(batch - 2, height * width, generator=generator) > 0.35).long().tolist()
    rows += [[1] * prefix + hole for hole in holes]  # masked patches
    rows.append([1] * prefix + [0] * (height * width))  # no real patch at all
    # a row with fewer patches, padded on the left (prefix after the padding) and on the right
    pad = max(1, height * width // 3) if height * width > 1 else 0
    patches = holes[0][: height * width - pad] if holes else [1] * (height * width - pad)
    rows.append([0] * pad + [1] * prefix + patches)
    rows.append([1] * prefix + patches + [0] * pad)
    return rows


@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("levels", [(1, 2, 4), (3,), (1, 2, 3)], ids=str)
def test_window_grid_matches_reference(levels, reduce, project):
    head = make_head("window", levels=levels, reduce=reduce, project=project, grid=True)
    if not project:
        assert head.output_dim == HIDDEN * sum(k * k for k in levels)
    for grid_size in GRIDS:
        for prefix in PREFIXES:
            mask = grid_mask(4, prefix, grid_size, seed=sum(grid_size) + prefix)
            x = make_states(mask, seed=prefix)
            exact = reduce == "max" and not project
            check_against_reference(head, x, mask, prefix, grid_size, exact=exact, case=f"{grid_size} prefix={prefix}")


def test_window_grid_bins_are_row_major_with_explicit_bounds():
    """A 3x5 grid at level 2: rows [0,2), [1,3); cols [0,3), [2,5); bins in row-major order."""
    height, width = 3, 5
    head = make_head("window", levels=(2,), reduce="max", project=False, grid=True)
    values = torch.arange(height * width, dtype=torch.float32)  # patch (r, c) holds r*5 + c
    x = torch.cat([torch.full((1,), -1.0), values]).view(1, -1, 1).expand(1, -1, HIDDEN).contiguous()
    out = head(x, None, num_prefix_tokens=1, grid_size=(height, width)).view(4, HIDDEN)[:, 0]
    # max of each bin is its bottom-right patch: (1,2)=7, (1,4)=9, (2,2)=12, (2,4)=14
    assert out.tolist() == [7.0, 9.0, 12.0, 14.0]
    head = make_head("window", levels=(2,), reduce="mean", project=False, grid=True)
    out = head(x, None, num_prefix_tokens=1, grid_size=(height, width)).view(4, HIDDEN)[:, 0]
    expected = []
    for rows in ((0, 1), (1, 2)):
        for cols in ((0, 1, 2), (2, 3, 4)):
            expected.append(sum(r * width + c for r in rows for c in cols) / 6)
    torch.testing.assert_close(out, torch.tensor(expected))


def test_window_grid_left_padded_row_starts_after_its_prefix():
    """A 2x2 grid, prefix 1, row ``[pad, CLS, p0, p1, p2]``: bins hold p0, p1 / p2 / nothing."""
    head = make_head("window", levels=(2,), reduce="max", project=False, grid=True)
    values = torch.tensor([1e4, -1.0, 10.0, 11.0, 12.0])
    x = values.view(1, 5, 1).expand(1, 5, HIDDEN).contiguous()
    out = head(x, torch.tensor([[0, 1, 1, 1, 1]]), num_prefix_tokens=1, grid_size=(2, 2)).view(4, HIDDEN)[:, 0]
    assert out.tolist() == [10.0, 11.0, 12.0, 0.0]  # the last cell lies past the row: an absent patch
    right = torch.tensor([-1.0, 10.0, 11.0, 12.0, 1e4]).view(1, 5, 1).expand(1, 5, HIDDEN).contiguous()
    same = head(right, torch.tensor([[1, 1, 1, 1, 0]]), num_prefix_tokens=1, grid_size=(2, 2))
    assert torch.equal(same.view(4, HIDDEN)[:, 0], out)


@pytest.mark.parametrize("spec", SEQUENCE_HEADS + [("window", {}), ("window", {"mode": "sliding"})], ids=head_id)
def test_prefix_is_counted_from_the_first_real_token(spec):
    """The issue's case: mask ``[0, 0, 1, 1, 1, 1]`` with one prefix token reads positions 3-5 only."""
    name, options = spec
    head = make_head(name, **options)
    mask = [[0, 0, 1, 1, 1, 1]]
    x = make_states(mask, seed=31)
    out = run_head(head, x, mask, prefix=1)
    torch.testing.assert_close(out.double(), reference(head, x, mask, 1), **FP32_TOL)
    if name == "mean":
        torch.testing.assert_close(out[0], x[0, 3:].mean(dim=0))
    if name == "cls" and not options:  # the first real token, which is the prefix token
        assert torch.equal(out[0], x[0, 2])
    # the same tokens padded on the right give the same result
    right = torch.cat([x[:, 2:], x[:, :2]], dim=1)
    torch.testing.assert_close(run_head(head, right, [[1, 1, 1, 1, 0, 0]], prefix=1), out, rtol=1e-6, atol=1e-6)


def test_reference_prefix_positions_themselves():
    """Pin the references' reading of the prefix so they cannot drift with the code under test."""
    assert real_positions([0, 0, 1, 1, 1, 1], 1) == [3, 4, 5]
    assert real_positions([1, 0, 1, 1, 0, 1], 2) == [3, 5]
    assert real_positions([0, 0, 0, 1], 2) == []
    assert grid_start([0, 1, 1, 1, 1], 1) == 2
    assert grid_start([0, 1, 0, 1, 1], 2) == 4
    assert grid_start([0, 0, 1, 1, 1], 0) == 0
    assert grid_start([0, 0, 0, 0, 1], 2) == 5


SLIDING = [
    (3, 2, "max", "max"),
    (3, 2, "mean", "max"),
    (4, 4, "mean", "mean"),
    (2, 5, "max", "mean"),  # stride > window: tokens between windows are skipped
    (8, 4, "max", "max"),  # default window, longer than most rows
    (1, 1, "mean", "mean"),
    (5, 1, "max", "mean"),
]


@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("sliding", SLIDING, ids=str)
def test_window_sliding_matches_reference(sliding, project):
    size, stride, reduce, reduce_windows = sliding
    head = make_head(
        "window",
        mode="sliding",
        window_size=size,
        stride=stride,
        reduce=reduce,
        reduce_windows=reduce_windows,
        project=project,
    )
    for seed, (kind, prefix) in enumerate(MASK_CASES):
        mask = MASKS[kind]
        x = make_states(mask, seed=seed)
        exact = reduce == reduce_windows == "max" and not project
        check_against_reference(head, x, mask, prefix, exact=exact, case=f"{kind} prefix={prefix}")


def test_sliding_windows_reference_itself():
    """Pin the reference's window list so the reference cannot drift with the code under test."""
    assert sliding_windows(0, 3, 2) == []
    assert sliding_windows(2, 3, 2) == [(0, 2)]
    assert sliding_windows(7, 3, 2) == [(0, 3), (2, 5), (4, 7)]
    assert sliding_windows(8, 3, 2) == [(0, 3), (2, 5), (4, 7), (6, 8)]
    assert sliding_windows(9, 2, 5) == [(0, 2), (5, 7)]
    assert sliding_windows(5, 2, 5) == [(0, 2)]


def test_window_sliding_explicit_values():
    """n=6 real values 1..6, window 3, stride 2: windows [1,2,3], [3,4,5], [5,6]."""
    head = make_head(
        "window", mode="sliding", window_size=3, stride=2, reduce="mean", reduce_windows="max", project=False
    )
    x = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 100]).view(1, 8, 1).expand(1, 8, HIDDEN).contiguous()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    out = head(x, mask, num_prefix_tokens=1)
    torch.testing.assert_close(out, torch.full((1, HIDDEN), 5.5))
    head = make_head(
        "window", mode="sliding", window_size=3, stride=2, reduce="max", reduce_windows="mean", project=False
    )
    torch.testing.assert_close(head(x, mask, num_prefix_tokens=1), torch.full((1, HIDDEN), (3 + 5 + 6) / 3))


# ----------------------------------------------------------------------------------------------
# bf16 / fp16: finite and close to the fp32 reference of the same (rounded) inputs and weights
# ----------------------------------------------------------------------------------------------

LOW_PRECISION_HEADS = SEQUENCE_HEADS + [
    ("window", {}),
    ("window", {"reduce": "mean", "project": False}),
    ("window", {"levels": (3,), "reduce": "mean"}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"mode": "sliding", "window_size": 4, "stride": 3, "reduce": "mean", "reduce_windows": "mean"}),
    ("window", {"grid": True}),
    ("window", {"grid": True, "reduce": "mean", "project": False}),
    ("window", {"grid": True, "reduce": "max", "project": False, "levels": (3,)}),
    ("window", {"edges": [[0, 0.1, 0.5, 1.0]], "reduce": "mean"}),
    ("window", {"grid": True, "edges": [[0, 0.3, 1.0], [0, 0.25, 0.5, 1.0]], "reduce": "mean", "project": False}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1, "reduce": "mean"}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce_windows": "map"}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("spec", LOW_PRECISION_HEADS, ids=head_id)
def test_low_precision_matches_fp32_reference(spec, dtype):
    name, options = spec
    head = copy.deepcopy(make_head(name, **options)).to(dtype)
    cases = []
    if options.get("grid"):
        for grid_size, prefix in [((3, 5), 1), ((1, 1), 0), ((4, 4), 2)]:
            cases.append((grid_mask(4, prefix, grid_size, seed=5), prefix, grid_size))
    else:
        for kind, prefix in [("interior", 2), ("left", 1), ("empty_rows", 2), ("right", 0)]:
            cases.append((MASKS[kind], prefix, None))
    for mask, prefix, grid_size in cases:
        x = torch.randn(len(mask), len(mask[0]), HIDDEN, generator=torch.Generator().manual_seed(29))
        x = torch.where(torch.tensor(mask).bool()[..., None], x, 3e4).to(dtype)  # fp16-finite garbage
        with torch.no_grad():
            out = head(x, torch.tensor(mask), num_prefix_tokens=prefix, grid_size=grid_size)
        assert out.dtype == dtype
        assert out.shape == (len(mask), head.output_dim)
        assert torch.isfinite(out).all()
        expected = reference(head, x, mask, prefix, grid_size)  # float64 from the same rounded numbers
        torch.testing.assert_close(out.double(), expected, **LOW_PRECISION_TOL[dtype])


# ----------------------------------------------------------------------------------------------
# clsmean: DINOv2's [CLS, mean of patches] against the stock transformers models
# ----------------------------------------------------------------------------------------------


def test_clsmean_reads_first_real_token_and_mean_after_the_prefix():
    head = make_head("clsmean")
    mask = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    x = make_states(mask, seed=41)
    out = run_head(head, x, mask, prefix=1)
    assert head.output_dim == 2 * HIDDEN
    assert torch.equal(out[0, :HIDDEN], x[0, 2])
    torch.testing.assert_close(out[0, HIDDEN:], x[0, 3:].mean(dim=0))
    assert torch.equal(out[1, :HIDDEN], x[1, 0])
    torch.testing.assert_close(out[1, HIDDEN:], x[1, 1:3].mean(dim=0))


@pytest.mark.parametrize("registers", [0, 2])
def test_clsmean_equals_the_features_dinov2_classifies(registers):
    """``clsmean`` on a tiny DINOv2 is, bit for bit, what ``Dinov2(WithRegisters)ForImageClassification`` classifies."""
    from transformers import (
        Dinov2Config,
        Dinov2ForImageClassification,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersForImageClassification,
    )

    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    settings.update(image_size=28, patch_size=7, num_labels=3)
    torch.manual_seed(0)
    if registers:
        model = Dinov2WithRegistersForImageClassification(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **settings)
        )
        encoder = model.dinov2_with_registers
    else:
        model = Dinov2ForImageClassification(Dinov2Config(**settings))
        encoder = model.dinov2
    model.eval()
    seen = {}
    model.classifier.register_forward_hook(lambda module, args, output: seen.update(features=args[0]))
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(pixel_values=pixels)
        states = encoder(pixel_values=pixels).last_hidden_state
        pooled = build_pooler("clsmean", 32)(states, None, num_prefix_tokens=1 + registers)
    assert states.shape[1] == 1 + registers + 16
    assert torch.equal(pooled, seen["features"])


# ----------------------------------------------------------------------------------------------
# edges: position-dependent adaptive windows
# ----------------------------------------------------------------------------------------------

EDGES = [
    [[0, 0.1, 0.5, 1.0]],
    [[0, 1], [0, 0.3, 1.0], [0, 0.25, 0.3, 0.9, 1]],
    [[0, 0.05, 0.15, 0.3, 0.6, 1.0]],
]


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("edges", EDGES, ids=str)
def test_window_edges_match_reference(edges, reduce):
    head = make_head("window", edges=edges, reduce=reduce, project=False)
    assert head.levels == tuple(len(level) - 1 for level in edges)
    assert head.output_dim == HIDDEN * sum(head.levels)
    for seed, (kind, prefix) in enumerate(MASK_CASES):
        mask = MASKS[kind]
        check_against_reference(head, make_states(mask, seed), mask, prefix, exact=reduce == "max", case=kind)
    head = make_head("window", edges=edges, reduce=reduce, project=False, grid=True)
    for grid_size in GRIDS:
        mask = grid_mask(4, 1, grid_size, seed=sum(grid_size))
        x = make_states(mask, seed=3)
        check_against_reference(head, x, mask, 1, grid_size, exact=reduce == "max", case=str(grid_size))
    head = make_head("window", edges=edges, reduce=reduce)  # projected
    check_against_reference(head, make_states(MASKS["mixed"], 5), MASKS["mixed"], 1)


def test_window_edges_use_exact_fractions():
    """Edges are exact fractions: ``0.14 * 50`` is 7 and ``0.29 * 100`` is 29, not their float products."""
    assert math.ceil(0.14 * 50) == 8 and math.floor(0.29 * 100) == 28  # the float traps the head must avoid
    head = make_head("window", edges=[[0, 0.14, 1.0]], reduce="mean", project=False)
    x = torch.arange(50.0).view(1, 50, 1).expand(1, 50, HIDDEN).contiguous()
    out = head(x, None).view(2, HIDDEN)[:, 0]
    torch.testing.assert_close(out, torch.tensor([3.0, 28.0]))  # mean(0..6), mean(7..49)
    head = make_head("window", edges=[[0, 0.29, 1.0]], reduce="max", project=False)
    x = torch.arange(100.0).view(1, 100, 1).expand(1, 100, HIDDEN).contiguous()
    assert head(x, None).view(2, HIDDEN)[:, 0].tolist() == [28.0, 99.0]  # [0, 29) and [29, 100)
    head = make_head("window", edges=[[0, 0.29, 1.0]], reduce="mean", project=False)
    assert head(x, None).view(2, HIDDEN)[1, 0].item() == sum(range(29, 100)) / 71
    # a short window at the start, longer after: 20 tokens, edges 0, 0.1, 0.5, 1 -> [0,2) [2,10) [10,20)
    head = make_head("window", edges=[[0, 0.1, 0.5, 1.0]], reduce="max", project=False)
    x = torch.arange(20.0).view(1, 20, 1).expand(1, 20, HIDDEN).contiguous()
    assert head(x, None).view(3, HIDDEN)[:, 0].tolist() == [1.0, 9.0, 19.0]


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_equal_edges_are_levels_bit_for_bit(reduce):
    """``edges = [[j/k for j in 0..k]]`` (floats) gives exactly the ``levels`` head: 1-D at lengths 1..50, and grids."""
    for levels in [(3,), (5,), (7,), (1, 2, 4), (6, 3)]:
        edges = [[j / k for j in range(k + 1)] for k in levels]
        by_levels = make_head("window", levels=levels, reduce=reduce, project=False)
        by_edges = make_head("window", edges=edges, reduce=reduce, project=False)
        x = torch.randn(2, 50, HIDDEN, generator=torch.Generator().manual_seed(len(levels)))
        for n in range(1, 51):
            mask = torch.tensor([[1] * n + [0] * (50 - n), [0] * (50 - n) + [1] * n])
            assert torch.equal(by_edges(x, mask), by_levels(x, mask)), (levels, n)
        by_levels = make_head("window", levels=levels, reduce=reduce, project=False, grid=True)
        by_edges = make_head("window", edges=edges, reduce=reduce, project=False, grid=True)
        for grid_size in [(7, 5), (3, 10), (1, 1)]:
            x = torch.randn(2, 1 + grid_size[0] * grid_size[1], HIDDEN)
            assert torch.equal(
                by_edges(x, None, num_prefix_tokens=1, grid_size=grid_size),
                by_levels(x, None, num_prefix_tokens=1, grid_size=grid_size),
            ), (levels, grid_size)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_generic_grid_ranges_match_adaptive_pooling(reduce):
    """The 2-D path for unequal edges, fed equal ranges, agrees with torch's adaptive pooling."""
    from torch.nn import functional as F

    from poolft.pooling.window import reduce_grid_ranges

    grid = torch.randn(2, HIDDEN, 7, 5, generator=torch.Generator().manual_seed(4))
    for k in (1, 2, 3, 4, 6):
        rows = (
            torch.tensor([j * 7 // k for j in range(k)]),
            torch.tensor([ceil_div((j + 1) * 7, k) for j in range(k)]),
        )
        cols = (
            torch.tensor([j * 5 // k for j in range(k)]),
            torch.tensor([ceil_div((j + 1) * 5, k) for j in range(k)]),
        )
        pooled, present = reduce_grid_ranges(grid, torch.ones(2, 1, 7, 5, dtype=torch.bool), rows, cols, reduce)
        assert present.all()
        if reduce == "max":
            assert torch.equal(pooled, F.adaptive_max_pool2d(grid, k))
        else:
            torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(grid, k), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 2-D sliding (local) pooling over the patch grid
# ----------------------------------------------------------------------------------------------

GRID_SLIDING = [
    {"window_size": 2, "stride": 1, "reduce": "max", "reduce_windows": "max"},
    {"window_size": 3, "stride": 2, "reduce": "mean", "reduce_windows": "mean"},
    {"window_size": 2, "stride": 3, "reduce": "max", "reduce_windows": "mean"},  # gaps between windows
    {"window_size": 4, "stride": 4, "reduce": "mean", "reduce_windows": "max"},  # larger than some grids
    {"window_size": 3, "stride": 2, "reduce": "max", "reduce_windows": "map", "map_size": 2},
    {"window_size": 2, "stride": 1, "reduce": "mean", "reduce_windows": "map", "map_size": 3},
]


@pytest.mark.parametrize("sliding", GRID_SLIDING, ids=lambda o: "-".join(map(str, o.values())))
def test_window_grid_sliding_matches_reference(sliding):
    head = make_head("window", grid=True, mode="sliding", project=False, **sliding)
    exact = sliding["reduce"] == "max" and sliding["reduce_windows"] in ("max", "map")
    for grid_size in GRIDS + [(5, 6)]:
        for prefix in (0, 1, 2):
            mask = grid_mask(4, prefix, grid_size, seed=sum(grid_size) + prefix)
            x = make_states(mask, seed=prefix)
            check_against_reference(head, x, mask, prefix, grid_size, exact=exact, case=f"{grid_size} prefix={prefix}")
    projected = make_head("window", grid=True, mode="sliding", **sliding)
    mask = grid_mask(4, 1, (3, 5), seed=2)
    check_against_reference(projected, make_states(mask, seed=2), mask, 1, (3, 5))


def test_grid_sliding_reference_windows_follow_ceil_mode():
    """Pin the reference's windows to max_pool2d(ceil_mode=True)'s output sizes, and a short axis to one window."""
    from torch.nn import functional as F

    for length in range(1, 12):
        for size, stride in [(2, 1), (3, 2), (2, 3), (4, 4), (3, 5)]:
            windows = sliding_windows(length, size, stride)
            if length >= size:
                pooled = F.max_pool2d(torch.zeros(1, 1, length, 1), (size, 1), (stride, 1), ceil_mode=True)
                assert len(windows) == pooled.shape[2], (length, size, stride)
            else:
                assert windows == [(0, length)]


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_grid_sliding_map_is_torch_pool2d(reduce):
    """A map kept at its own size is ``max_pool2d``/``avg_pool2d(ceil_mode=True)`` of the patches, compared directly."""
    from torch.nn import functional as F

    torch_pool = F.max_pool2d if reduce == "max" else F.avg_pool2d
    for (height, width), size, stride in [
        ((5, 7), 2, 2),
        ((6, 6), 3, 2),
        ((4, 9), 2, 3),
        ((7, 4), 4, 1),
        ((3, 3), 3, 3),
    ]:
        patches = torch.randn(2, HIDDEN, height, width, generator=torch.Generator().manual_seed(height * width))
        expected = torch_pool(patches, size, stride, ceil_mode=True)
        out_h, out_w = expected.shape[-2:]
        if out_h != out_w:
            expected = expected[..., : min(out_h, out_w), : min(out_h, out_w)]  # the map is square: pool a square crop
        crop = (
            min(height, (min(out_h, out_w) - 1) * stride + size),
            min(width, (min(out_h, out_w) - 1) * stride + size),
        )
        head = make_head(
            "window",
            grid=True,
            mode="sliding",
            window_size=size,
            stride=stride,
            reduce=reduce,
            reduce_windows="map",
            map_size=expected.shape[-1],
            project=False,
        )
        cropped = patches[..., : crop[0], : crop[1]]
        tokens = torch.cat([torch.full((2, HIDDEN, 1), 1e4), cropped.flatten(2)], dim=2).transpose(1, 2)
        out = head(tokens, None, num_prefix_tokens=1, grid_size=crop)
        features = out.view(2, -1, HIDDEN).transpose(1, 2).reshape(expected.shape)
        if reduce == "max":
            assert torch.equal(features, expected)
        else:
            torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-6)


def test_window_grid_sliding_explicit_values():
    """A 3x4 grid of values r*4 + c, window 2, stride 2: windows rows [0,2), [2,3) x cols [0,2), [2,4)."""
    head = make_head(
        "window",
        grid=True,
        mode="sliding",
        window_size=2,
        stride=2,
        reduce="mean",
        reduce_windows="map",
        map_size=2,
        project=False,
    )
    values = torch.arange(12.0)
    x = torch.cat([torch.tensor([-1.0]), values]).view(1, 13, 1).expand(1, 13, HIDDEN).contiguous()
    out = head(x, None, num_prefix_tokens=1, grid_size=(3, 4)).view(4, HIDDEN)[:, 0]
    # partial bottom windows divide by their 2 in-grid patches, as avg_pool2d(ceil_mode=True) does
    assert out.tolist() == [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9) / 2, (10 + 11) / 2]
    small = make_head("window", grid=True, mode="sliding", window_size=5, stride=1, reduce="max", project=False)
    assert small(x, None, num_prefix_tokens=1, grid_size=(3, 4))[0, 0].item() == 11.0  # one window covers it all
