"""``poolft explain``: what each head reads, per token or patch, checked against independent recomputations.

Every head's weights are exactly 0 on padding and on the prefix tokens it skips, never negative,
and sum to 1 over a row it reads; attention weights are the softmax recomputed from the pooler's
query and key projections, max shares a numpy argmax count. Pictures have the size the layout
says, ``--json`` prints parseable lines, and mistakes are one-line errors (exit 2).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, TINY_TEXTS, snapshot
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import poolft
from poolft import PoolftForImageClassification, PoolftForSequenceClassification, build_pooler
from poolft.cli import EXIT_USER_ERROR, main
from poolft.errors import PoolftError
from poolft.models.explain import head_reading
from poolft.models.explain_plot import DPI, picture_size

HIDDEN = 32
GRID = TINY_IMAGE_SIZE // TINY_PATCH_SIZE
#: every head (and the window variants) on token sequences
SEQUENCE_HEADS = [
    ("cls", {}),
    ("clsmean", {}),
    ("mean", {}),
    ("max", {}),
    ("meanmax", {}),
    ("gem", {}),
    ("attention", {"num_queries": 2, "num_heads": 4}),
    ("window", {"levels": [1, 2, 4], "reduce": "max"}),
    ("window", {"levels": [1, 3], "reduce": "mean"}),
    ("window", {"edges": [[0, 0.25, 1.0]]}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2, "reduce": "mean", "reduce_windows": "mean"}),
]
#: heads that need the patch grid
GRID_HEADS = [
    ("flatten", {"grid_size": [GRID, GRID]}),
    ("window", {"grid": True, "levels": [1, 2]}),
    ("window", {"grid": True, "levels": [1, 3], "reduce": "mean"}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 2, "reduce_windows": "map"}),
]
#: right, left and interior padding, and a row with every token real
MASK = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1],
        [1, 1, 0, 1, 1, 1, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
)


def head_id(spec) -> str:
    name, options = spec
    return name + "".join(f"-{key}={value}" for key, value in options.items())


def make_head(name: str, options: dict):
    torch.manual_seed(0)
    head = build_pooler(name, HIDDEN, **options).eval()
    if name == "attention":  # spread-out weights, so a wrong recomputation cannot pass by uniformity
        torch.nn.init.normal_(head.query, std=3.0)
    return head


def states_for(batch: int, tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, HIDDEN, generator=generator)


def prefix_positions(mask_row: torch.Tensor, prefix: int) -> list[int]:
    """The first ``prefix`` real positions of a row."""
    return mask_row.nonzero().squeeze(1)[:prefix].tolist()


def assert_reading_is_a_distribution(
    reading, mask: torch.Tensor, skipped: list[list[int]], unread: list[list[int]] | None = None
) -> None:
    """Zero and excluded on padding and ``skipped`` positions, zero on ``unread`` ones, non-negative, summing to 1."""
    weights = reading.weights
    assert weights.dtype == torch.float32
    assert torch.all(weights >= 0)
    padding = mask == 0
    assert torch.all(weights[padding] == 0)
    assert torch.all(reading.excluded[padding])
    for row, positions in enumerate(skipped):
        assert torch.all(weights[row, positions] == 0), (row, positions, weights[row])
        assert torch.all(reading.excluded[row, positions])
    for row, positions in enumerate(unread or []):
        assert torch.all(weights[row, positions] == 0), (row, positions, weights[row])
    assert torch.all(weights[reading.excluded] == 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(weights.size(0)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("spec", SEQUENCE_HEADS, ids=head_id)
def test_sequence_heads_read_nothing_of_padding_or_the_prefix_they_skip(spec, prefix):
    name, options = spec
    head = make_head(name, options)
    reading = head_reading(head, states_for(*MASK.shape, seed=1), MASK, num_prefix_tokens=prefix)
    unread = None
    if name == "cls":  # the first real token, whatever the prefix: the others are real but weigh 0
        first = [prefix_positions(row, 1)[0] for row in MASK]
        for row, position in enumerate(first):
            assert reading.weights[row, position] == 1
        skipped = [[] for _ in first]
        unread = [[p for p in range(MASK.size(1)) if p != first[row]] for row in range(MASK.size(0))]
    elif name == "clsmean":  # the class token is read (by the cls half); the other prefix tokens are not
        skipped = [prefix_positions(row, prefix)[1:] for row in MASK]
    else:
        skipped = [prefix_positions(row, prefix) for row in MASK]
    assert_reading_is_a_distribution(reading, MASK, skipped, unread)


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("spec", GRID_HEADS, ids=head_id)
def test_grid_heads_read_nothing_of_the_prefix(spec, prefix):
    name, options = spec
    head = make_head(name, options)
    states = states_for(2, prefix + GRID * GRID, seed=2)
    reading = head_reading(head, states, None, num_prefix_tokens=prefix, grid_size=(GRID, GRID))
    assert_reading_is_a_distribution(reading, torch.ones(states.shape[:2]), [list(range(prefix))] * 2)
    if name == "flatten":
        assert torch.all(reading.weights[:, prefix:] == 1 / GRID**2)


def reference_attention(head, states: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """Softmax of the pooler's queries against its key projections, in plain torch: ``(batch, queries, tokens)``."""
    heads, head_dim = head.num_heads, HIDDEN // head.num_heads
    with torch.no_grad():
        keys = head.key(states).view(*states.shape[:2], heads, head_dim)  # (batch, tokens, heads, head_dim)
        queries = head.query.view(-1, heads, head_dim)  # (queries, heads, head_dim)
        scores = torch.einsum("qhd,bthd->bhqt", queries, keys) / math.sqrt(head_dim)
    readable = torch.zeros(mask.shape, dtype=torch.bool)
    for row in range(mask.size(0)):
        real = mask[row].nonzero().squeeze(1)[prefix:]
        readable[row, real] = True
    scores = scores.masked_fill(~readable[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_weights_equal_a_recomputation_from_query_and_keys(prefix):
    head = make_head("attention", {"num_queries": 2, "num_heads": 4})
    states = states_for(*MASK.shape, seed=3)
    reading = head_reading(head, states, MASK, num_prefix_tokens=prefix)
    expected = reference_attention(head, states, MASK, prefix)
    torch.testing.assert_close(reading.query_weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reading.weights, expected.mean(dim=1), rtol=1e-5, atol=1e-6)
    assert reading.weights.std() > 0.01  # not uniform: the comparison is not trivial


def numpy_max_shares(states: np.ndarray, mask: np.ndarray, prefix: int) -> np.ndarray:
    """Per row, how many features have their max (over the read tokens) at each token, over ``hidden``."""
    shares = np.zeros(mask.shape)
    for row in range(mask.shape[0]):
        read = np.flatnonzero(mask[row])[prefix:]
        winners = read[np.argmax(states[row, read], axis=0)]
        shares[row] = np.bincount(winners, minlength=mask.shape[1]) / states.shape[2]
    return shares


@pytest.mark.parametrize("prefix", [0, 1])
def test_max_shares_equal_a_numpy_argmax_count(prefix):
    states = states_for(*MASK.shape, seed=4)
    expected = numpy_max_shares(states.numpy(), MASK.numpy(), prefix)
    reading = head_reading(make_head("max", {}), states, MASK, num_prefix_tokens=prefix)
    np.testing.assert_allclose(reading.weights.numpy(), expected, rtol=0, atol=1e-7)
    uniform = MASK.float().numpy() * 0
    for row in range(MASK.size(0)):
        read = np.flatnonzero(MASK[row].numpy())[prefix:]
        uniform[row, read] = 1 / len(read)
    meanmax = head_reading(make_head("meanmax", {}), states, MASK, num_prefix_tokens=prefix)
    np.testing.assert_allclose(meanmax.weights.numpy(), 0.5 * uniform + 0.5 * expected, rtol=0, atol=1e-6)
    # one max window over the whole row is the max head; one mean window is the mean head
    window = head_reading(make_head("window", {"levels": [1]}), states, MASK, num_prefix_tokens=prefix)
    np.testing.assert_allclose(window.weights.numpy(), expected, rtol=0, atol=1e-6)
    # max of the windows' maxima is the max over every token they cover
    sliding = head_reading(
        make_head("window", {"mode": "sliding", "window_size": 3, "stride": 2}), states, MASK, num_prefix_tokens=prefix
    )
    np.testing.assert_allclose(sliding.weights.numpy(), expected, rtol=0, atol=1e-6)
    mean_window = head_reading(make_head("window", {"levels": [1], "reduce": "mean"}), states, MASK)
    np.testing.assert_allclose(mean_window.weights.numpy(), MASK.numpy() / MASK.sum(1, keepdims=True).numpy())


MEAN_WINDOWS = [
    ({"levels": [1, 3], "reduce": "mean"}, None),
    ({"edges": [[0, 0.3, 1.0]], "reduce": "mean"}, None),
    ({"mode": "sliding", "window_size": 3, "stride": 2, "reduce": "mean", "reduce_windows": "mean"}, None),
    ({"grid": True, "levels": [1, 3], "reduce": "mean"}, (GRID, GRID)),
    (
        {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce": "mean", "reduce_windows": "mean"},
        (GRID, GRID),
    ),
]


@pytest.mark.parametrize(("options", "grid"), MEAN_WINDOWS, ids=[head_id(("window", o)) for o, _ in MEAN_WINDOWS])
def test_mean_window_weights_rebuild_the_heads_features(options, grid):
    # mean windows are linear: the weights times the states are the head's window features averaged
    head = make_head("window", {**options, "project": False})
    if grid is None:
        states, mask = states_for(*MASK.shape, seed=7), MASK
    else:
        states, mask = states_for(2, 1 + GRID * GRID, seed=7), None
    reading = head_reading(head, states, mask, num_prefix_tokens=1, grid_size=grid)
    with torch.no_grad():
        features = head(states, mask, num_prefix_tokens=1, grid_size=grid).view(states.size(0), -1, HIDDEN)
    torch.testing.assert_close(torch.einsum("bt,bth->bh", reading.weights, states), features.mean(dim=1))


def test_window_bounds_follow_the_heads_ranks_over_real_tokens():
    head = make_head("window", {"levels": [1, 2]})
    reading = head_reading(head, states_for(*MASK.shape, seed=5), MASK, num_prefix_tokens=1)
    # row 2: real positions 0 1 3 4 5 7, prefix 0 skipped -> ranks over 1 3 4 5 7 (n = 5): [0, 5), [0, 3) and [2, 5)
    assert reading.windows[2] == [[[1, 8]], [[1, 5], [4, 8]]]
    grid = make_head("window", {"grid": True, "levels": [2]})
    grid_reading = head_reading(grid, states_for(1, 1 + 9, seed=5), None, num_prefix_tokens=1, grid_size=(3, 3))
    assert grid_reading.windows[0] == [[[0, 2, 0, 2], [0, 2, 1, 3], [1, 3, 0, 2], [1, 3, 1, 3]]]


def test_gem_weights_are_the_power_shares_averaged_over_features():
    head = make_head("gem", {"p": 2.0, "learn_p": False})
    states = states_for(*MASK.shape, seed=6).abs() + 0.1
    reading = head_reading(head, states, MASK)
    powered = states.pow(2) * MASK.unsqueeze(-1)
    expected = (powered / powered.sum(dim=1, keepdim=True)).mean(dim=-1)
    torch.testing.assert_close(reading.weights, expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------ saved models


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert_dir, tiny_vit_dir):
    """``saved("text", "attention", {...})``: a saved poolft model folder with its preprocessor (built once)."""
    root = tmp_path_factory.mktemp("explain-models")
    built = {}

    def build(kind: str, pooler: str, options: dict | None = None):
        key = (kind, pooler, json.dumps(options or {}, sort_keys=True))
        if key not in built:
            folder = root / f"{kind}-{len(built)}"
            torch.manual_seed(0)
            cls = PoolftForSequenceClassification if kind == "text" else PoolftForImageClassification
            backbone = tiny_bert_dir if kind == "text" else tiny_vit_dir
            model = cls.from_backbone(str(backbone), pooler=pooler, pooler_options=options, num_labels=2)
            if pooler == "attention":
                torch.nn.init.normal_(model.pooler.query, std=3.0)
            model.save_pretrained(folder)
            if kind == "text":
                AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)
            else:
                AutoImageProcessor.from_pretrained(backbone).save_pretrained(folder)
            built[key] = folder
        return built[key]

    return build


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 50), (28, 28)]):
        path = root / f"image-{i}.png"
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_explain_on_a_saved_attention_model_equals_the_recomputation(saved, tiny_bert_dir):
    folder = saved("text", "attention", {"num_queries": 2})
    explanations = poolft.explain(folder, TINY_TEXTS, per_query=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TINY_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(**batch).last_hidden_state
        probabilities = model(**batch).logits.softmax(-1)
    expected = reference_attention(model.pooler, states, batch["attention_mask"], 0)
    for row, explanation in enumerate(explanations):
        assert explanation.tokens == tokenizer.convert_ids_to_tokens(batch["input_ids"][row])
        torch.testing.assert_close(torch.tensor(explanation.query_weights), expected[row], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(explanation.weights), expected[row].mean(0), rtol=1e-4, atol=1e-6)
        padding = batch["attention_mask"][row] == 0
        assert explanation.excluded == padding.tolist()
        assert all(w == 0 for w, pad in zip(explanation.weights, padding, strict=True) if pad)
        assert explanation.probability == pytest.approx(float(probabilities[row].max()), abs=1e-5)
        assert explanation.label == model.config.id2label[int(probabilities[row].argmax())]


def test_explain_on_a_saved_max_model_equals_numpy_argmax(saved):
    folder = saved("text", "max")
    explanations = poolft.explain(folder, TINY_TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = AutoTokenizer.from_pretrained(folder)(TINY_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(**batch).last_hidden_state.numpy()
    expected = numpy_max_shares(states, batch["attention_mask"].numpy(), 0)
    np.testing.assert_allclose([e.weights for e in explanations], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("spec", [("mean", {}), ("cls", {}), ("window", {"levels": [1, 2]})], ids=head_id)
def test_image_explanations_skip_the_class_token_where_the_head_does(saved, image_files, spec):
    explanations = poolft.explain(saved("image", *spec), image_files)
    for explanation in explanations:
        assert explanation.grid_size == [GRID, GRID] and explanation.num_prefix_tokens == 1
        assert explanation.tokens[0] == "[CLS]" and len(explanation.weights) == 1 + GRID * GRID
        assert explanation.image.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
        assert sum(explanation.weights) == pytest.approx(1, abs=1e-5)
        if spec[0] == "cls":
            assert explanation.weights[0] == 1 and not explanation.excluded[0]
        else:
            assert explanation.weights[0] == 0 and explanation.excluded[0]


def test_stock_heads_read_the_class_token(tmp_path, tiny_bert_dir, tiny_vit_dir, image_files):
    text = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    text.save_pretrained(tmp_path / "text")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "text")
    image = AutoModelForImageClassification.from_pretrained(tiny_vit_dir, num_labels=2)
    image.save_pretrained(tmp_path / "image")
    AutoImageProcessor.from_pretrained(tiny_vit_dir).save_pretrained(tmp_path / "image")
    for explanation in poolft.explain(tmp_path / "text", TINY_TEXTS[:2]) + poolft.explain(
        tmp_path / "image", image_files
    ):
        assert explanation.weights[0] == 1 and sum(explanation.weights) == 1
        assert "stock head" in explanation.rule and "CLS" in explanation.head


# ------------------------------------------------------------------------------------------ CLI and pictures


def test_text_picture_has_the_layout_size(saved, tmp_path, capsys):
    out = tmp_path / "text.png"
    assert (
        main(["explain", "--model", str(saved("text", "window", {"levels": [1, 2]})), "loved it", "--out", str(out)])
        == 0
    )
    [explanation] = poolft.explain(saved("text", "window", {"levels": [1, 2]}), ["loved it"])
    with Image.open(out) as picture:
        assert picture.size == picture_size(explanation)
        assert picture.size[0] == 10 * DPI  # text pictures are 10 inches wide
    assert str(out) in capsys.readouterr().out


def test_several_images_give_numbered_pictures_of_the_layout_size(saved, image_files, tmp_path):
    folder = saved("image", "window", {"levels": [1, 2]})
    out = tmp_path / "image.png"
    assert main(["explain", "--model", str(folder), "--image", *image_files, "--out", str(out)]) == 0
    assert not out.exists()
    for i, explanation in enumerate(poolft.explain(folder, image_files)):
        with Image.open(tmp_path / f"image-{i}.png") as picture:
            assert picture.size == picture_size(explanation)
            # a weight panel, a panel per window level (2) and the notes column, each 2.6 inches wide;
            # a 2.6-inch panel under a title of 3 to 5 lines
            width, height = picture.size
            assert width == 4 * 260 and 355 <= height <= 385


def test_json_lines_parse_and_hold_the_numbers(saved, capsys):
    folder = saved("text", "attention", {"num_queries": 2})
    assert main(["explain", "--model", str(folder), *TINY_TEXTS[:3], "--json", "--per-query"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, text in zip(lines, TINY_TEXTS, strict=False):
        record = json.loads(line)
        assert record["input"] == text
        assert len(record["tokens"]) == len(record["weights"]) == len(record["excluded"])
        assert len(record["query_weights"]) == 2
        assert sum(record["weights"]) == pytest.approx(1, abs=1e-5)


ERROR_CASES = {
    "bare backbone": (lambda ws: ["--model", ws["bert"], "great", "--json"], "not a classifier saved by poolft"),
    "folder without config": (lambda ws: ["--model", ws["empty"], "great", "--json"], "has no config.json"),
    "image to a text model": (lambda ws: ["--model", ws["text"], "--image", ws["image"], "--json"], "text model"),
    "text to an image model": (lambda ws: ["--model", ws["vision"], "great", "--json"], "image model"),
    "missing image": (lambda ws: ["--model", ws["vision"], "--image", ws["missing"], "--json"], "does not exist"),
    "no inputs": (lambda ws: ["--model", ws["text"], "--json"], "nothing to explain"),
    "no output": (lambda ws: ["--model", ws["text"], "great"], "--out FILE.png"),
    "out in a missing folder": (lambda ws: ["--model", ws["text"], "great", "--out", ws["nowhere"]], "does not exist"),
    "out below a file": (lambda ws: ["--model", ws["text"], "great", "--out", ws["below_file"]], "is a file"),
    "out not a png": (lambda ws: ["--model", ws["text"], "great", "--out", ws["jpeg"]], "must end in .png"),
}


def test_mistakes_are_one_line_errors(saved, image_files, tiny_bert_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    ws = {
        "bert": str(tiny_bert_dir),
        "empty": str(tmp_path / "empty"),
        "text": str(saved("text", "mean")),
        "vision": str(saved("image", "mean")),
        "image": image_files[0],
        "missing": str(tmp_path / "missing.png"),
        "nowhere": str(tmp_path / "no" / "such" / "out.png"),
        "below_file": str(tmp_path / "a-file" / "out.png"),
        "jpeg": str(tmp_path / "out.jpg"),
    }
    before = snapshot(tmp_path)
    failures = []
    for case, (arguments, expected) in ERROR_CASES.items():
        capsys.readouterr()
        status = main(["explain", *arguments(ws)])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.startswith("poolft: error:")]
        if status != EXIT_USER_ERROR or len(lines) != 1 or expected not in lines[0] or captured.out:
            failures.append(f"{case}: status {status}, stderr {captured.err!r}, stdout {captured.out[:100]!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(tmp_path) == before


def test_a_model_object_is_explained_with_its_preprocessor(saved):
    folder = saved("text", "max")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    from_object = poolft.explain(model, TINY_TEXTS[:2], preprocessor=tokenizer)
    assert [e.to_dict() for e in from_object] == [e.to_dict() for e in poolft.explain(folder, TINY_TEXTS[:2])]
    with pytest.raises(PoolftError, match="preprocessor="):
        poolft.explain(model, TINY_TEXTS[:2])
