"""``poolft explain``: how much of each token (text) or patch (image) a model's head reads.

A head's *reading* is one weight per position of a row, zero on what the head never reads (padding,
and the prefix tokens -- CLS, registers -- that the head skips), which are also marked excluded:

- ``attention``: the pooler's own softmax weights (``AttentionPooler.forward_with_weights``),
  averaged over heads and queries (or one row per query).
- ``max``: the share of features whose maximum came from each token (ties: the first token).
- ``mean``, ``flatten``: uniform over the tokens read (``flatten`` reads every patch).
- ``meanmax``: half ``mean``, half ``max``.
- ``gem``: its effective weights ``x^p / sum_t x^p`` per feature (with the head's learned ``p`` and
  ``eps`` clamp), averaged over features: the share of each feature's power sum a token brings.
- ``cls``: everything on the first real token. ``clsmean``: half on it, half uniform over the
  tokens after the prefix (for text there is no prefix, so CLS is also in the mean half).
- ``window``: each window (every level's, before any projection) is reduced alone -- max: the share
  of features a token wins in it, mean: uniform in it -- and the windows are averaged, as the head
  concatenates (adaptive) or averages them (sliding, ``reduce_windows="mean"``); with
  ``reduce_windows="max"`` each feature follows its winning window; a ``map`` of windows is shown
  averaged over its windows. The window bounds come back with the weights.
- stock heads (``model.stock_head``): the rule of the head ``describe_head`` names (CLS, mean of the
  patch tokens, or DINOv2's ``[CLS, mean]``).

Weights of a row sum to 1 when the head reads any token (``clsmean`` with no token after the prefix:
0.5). They describe what the pooled vector is made of, not how the classifier then uses it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import to_rgb
from ..errors import PoolftError
from ..pooling import Pooler, build_pooler
from ..pooling.masking import lowest_value, patch_grid_start, real_token_mask
from ..pooling.window import equal_edges
from .backbones import describe_head, modality_of
from .modeling import has_class_token
from .modeling import patch_grid as pixel_patch_grid
from .prediction import open_image, text_max_length
from .saved_models import load_saved_classifier


@dataclass
class HeadReading:
    """What a head reads in one batch.

    Attributes:
        weights: ``(batch, tokens)`` float32, zero where ``excluded``.
        excluded: ``(batch, tokens)`` bool: padding, and prefix tokens the head skips.
        rule: how ``weights`` were computed, in words.
        query_weights: ``(batch, queries, tokens)`` per attention query (averaged over heads), or None.
        windows: per row, per level, each window's bounds: ``[start, end)`` token positions (1-D) or
            ``[row_start, row_end, col_start, col_end)`` patch-grid cells (2-D); None for other heads.
    """

    weights: torch.Tensor
    excluded: torch.Tensor
    rule: str
    query_weights: torch.Tensor | None = None
    windows: list[list[list[list[int]]]] | None = None


@dataclass
class Explanation:
    """One input's reading by a saved model's head, as plain values (``to_dict`` for JSON).

    ``tokens``, ``weights`` and ``excluded`` have one entry per position the encoder produced: the
    tokenizer's pieces (padding included when inputs were batched) or, for an image, its prefix
    tokens and then the patches in row-major order (``grid_size`` rows x columns).
    """

    input: str
    kind: str
    head: str
    rule: str
    label: str
    probability: float
    tokens: list[str]
    weights: list[float]
    excluded: list[bool]
    num_prefix_tokens: int = 0
    grid_size: list[int] | None = None
    windows: list[list[list[int]]] | None = None
    query_weights: list[list[float]] | None = None
    #: the pixels the model saw, ``(height, width, 3)`` uint8 (images only; not in ``to_dict``)
    image: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``image``, as JSON-ready values."""
        values = asdict(self)
        values.pop("image")
        return values


def uniform_weights(token_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, tokens)`` weights ``1/n`` on the ``n`` True positions of each row (zeros for none)."""
    mask = token_mask.float()
    return mask / mask.sum(dim=1, keepdim=True).clamp(min=1)


def first_token_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, tokens)`` one-hot on each row's first real token (left padding respected)."""
    real = attention_mask != 0
    first = real.to(torch.uint8).argmax(dim=1)
    onehot = torch.zeros(real.shape, dtype=torch.float32, device=real.device)
    onehot[torch.arange(real.size(0)), first] = 1.0
    return torch.where(real.any(dim=1, keepdim=True), onehot, onehot.new_zeros(()))


def max_share_weights(hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Share of the features whose masked maximum came from each token: ``(batch, tokens)``.

    Args:
        hidden_states: ``(batch, tokens, hidden)``.
        token_mask: ``(batch, tokens)`` bool of the tokens the max reads.
    """
    batch, tokens, hidden = hidden_states.shape
    filled = torch.where(
        token_mask.unsqueeze(-1), hidden_states, hidden_states.new_full((), lowest_value(hidden_states.dtype))
    )
    winners = filled.argmax(dim=1)  # (batch, hidden): the first maximal token per feature
    counts = torch.zeros(batch, tokens, dtype=torch.float32, device=hidden_states.device)
    counts.scatter_add_(1, winners, torch.ones_like(winners, dtype=torch.float32))
    return torch.where(token_mask.any(dim=1, keepdim=True), counts / hidden, counts.new_zeros(()))


def gem_weights(hidden_states: torch.Tensor, token_mask: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """GeM's effective weights ``clamp(x, eps)^p / sum_t clamp(x, eps)^p``, averaged over features.

    Returns ``(batch, tokens)``: GeM's output is ``(mean_t x_t^p)^(1/p)``, so a token's part of
    feature f is its share of that power sum.
    """
    powered = hidden_states.float().clamp(min=eps).pow(p)
    powered = torch.where(token_mask.unsqueeze(-1), powered, powered.new_zeros(()))
    shares = powered / powered.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    return shares.mean(dim=-1)


def attention_weights(
    pooler: Pooler, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, num_prefix_tokens: int
) -> torch.Tensor:
    """The attention pooler's weights ``(batch, heads, queries, tokens)`` (float32)."""
    _, weights = pooler.forward_with_weights(hidden_states, attention_mask, num_prefix_tokens=num_prefix_tokens)
    return weights


def window_reading(
    pooler: Pooler,
    hidden_states: torch.Tensor,
    token_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_prefix_tokens: int,
    grid_size: tuple[int, int] | None,
) -> tuple[torch.Tensor, list[list[list[list[int]]]]]:
    """Weights ``(batch, tokens)`` and per-row window bounds of a ``window`` head (see the module docstring)."""
    batch, tokens, hidden = hidden_states.shape
    weights = torch.zeros(batch, tokens, dtype=torch.float32)
    all_bounds = []
    for row in range(batch):
        levels = window_levels(pooler, token_mask, attention_mask, num_prefix_tokens, grid_size, row)
        all_bounds.append([[bounds for bounds, _ in level] for level in levels])
        windows = [positions for level in levels for _, positions in level if positions.numel()]
        if windows:
            weights[row] = combined_window_weights(pooler, hidden_states[row].float(), windows, tokens)
    return weights, all_bounds


def window_levels(
    pooler: Pooler,
    token_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_prefix_tokens: int,
    grid_size: tuple[int, int] | None,
    row: int,
) -> list[list[tuple[list[int], torch.Tensor]]]:
    """Per level, each window of row ``row`` as ``(bounds, positions of the real tokens it reads)``.

    Bounds follow the head's own rules (``edge_bounds`` ranks, ``max_pool2d`` with ``ceil_mode``);
    a sliding head has one level.
    """
    mask = token_mask[row]
    if pooler.grid:
        height, width = grid_size
        # the grid's token positions: after the row's prefix, cells past the end are absent
        start = patch_grid_start(attention_mask, num_prefix_tokens)
        first = num_prefix_tokens if start is None else int(start[row])
        cells = torch.arange(height * width) + first
        present = (cells < mask.numel()) & mask[cells.clamp(max=mask.numel() - 1)]

        def rectangle(r0: int, r1: int, c0: int, c1: int) -> tuple[list[int], torch.Tensor]:
            grid_cells = (torch.arange(r0, r1)[:, None] * width + torch.arange(c0, c1)[None, :]).flatten()
            return [r0, r1, c0, c1], cells[grid_cells[present[grid_cells]]]

        if pooler.mode == "sliding":
            rows = sliding_ranges(height, pooler.window_size, pooler.stride)
            cols = sliding_ranges(width, pooler.window_size, pooler.stride)
            return [[rectangle(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]]
        return [
            [rectangle(r0, r1, c0, c1) for r0, r1 in edge_ranges(height, edges) for c0, c1 in edge_ranges(width, edges)]
            for edges in level_edges(pooler)
        ]
    positions = mask.nonzero().squeeze(1)
    n = positions.numel()

    def run(first: int, last: int) -> tuple[list[int], torch.Tensor]:  # ranks [first, last)
        read = positions[first:last]
        bounds = [int(read[0]), int(read[-1]) + 1] if read.numel() else [0, 0]
        return bounds, read

    if pooler.mode == "sliding":
        starts = range(0, max(n, 1), pooler.stride)
        # the head's rule: a window is used if it is the first or the previous one stopped short
        used = [s for s in starts if s == 0 or s - pooler.stride + pooler.window_size < n]
        return [[run(s, min(s + pooler.window_size, n)) for s in used]]
    return [[run(r0, r1) for r0, r1 in edge_ranges(n, edges)] for edges in level_edges(pooler)]


def level_edges(pooler: Pooler) -> list[tuple]:
    """The window head's fractional edges per level (equal edges for ``levels``)."""
    if pooler.level_edges is not None:
        return list(pooler.level_edges)
    return [equal_edges(k) for k in pooler.levels]


def edge_ranges(length: int, edges: tuple) -> list[tuple[int, int]]:
    """``[floor(e_j*n), ceil(e_{j+1}*n))`` for each window of one level (``edge_bounds``' rule)."""
    return [(math.floor(a * length), math.ceil(b * length)) for a, b in zip(edges, edges[1:])]


def sliding_ranges(length: int, window_size: int, stride: int) -> list[tuple[int, int]]:
    """Window ranges of ``max_pool2d(window_size, stride, ceil_mode=True)`` on one axis of ``length``.

    An axis shorter than the window is padded up to it (one window), as ``grid_sliding_features`` does.
    """
    padded = max(length, window_size)
    count = math.ceil((padded - window_size) / stride) + 1
    if (count - 1) * stride >= padded:  # ceil_mode: the last window must start inside the input
        count -= 1
    return [(i * stride, min(i * stride + window_size, length)) for i in range(count)]


def combined_window_weights(
    pooler: Pooler, states: torch.Tensor, windows: list[torch.Tensor], tokens: int
) -> torch.Tensor:
    """Token weights ``(tokens,)`` of one row from its non-empty windows; ``states`` ``(tokens, hidden)``."""
    hidden = states.size(1)
    per_window = []  # (hidden,) winning position per feature (max) or None (mean)
    values = []  # (hidden,) the window's reduced value per feature
    for positions in windows:
        read = states[positions]
        if pooler.reduce == "max":
            best, index = read.max(dim=0)
            per_window.append(positions[index])
            values.append(best)
        else:
            per_window.append(None)
            values.append(read.mean(dim=0))

    def one_window(w: int, features: torch.Tensor) -> torch.Tensor:
        """Token weights of window ``w`` over the feature indices ``features``, summing to ``len(features)/hidden``."""
        out = torch.zeros(tokens)
        if per_window[w] is None:
            out[windows[w]] = features.numel() / (hidden * windows[w].numel())
        else:
            out.index_add_(0, per_window[w][features], torch.full((features.numel(),), 1.0 / hidden))
        return out

    every = torch.arange(hidden)
    if pooler.mode == "sliding" and pooler.reduce_windows == "max":
        winner = torch.stack(values).argmax(dim=0)  # (hidden,) the window each feature's max came from
        return sum(one_window(w, (winner == w).nonzero().squeeze(1)) for w in range(len(windows)))
    return sum(one_window(w, every) for w in range(len(windows))) / len(windows)


def head_reading(
    pooler: Pooler,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_prefix_tokens: int = 0,
    grid_size: tuple[int, int] | None = None,
) -> HeadReading:
    """What ``pooler`` reads of ``hidden_states`` ``(batch, tokens, hidden)``, called as the model calls it.

    The arguments are the pooler's own (``attention_mask`` ``(batch, tokens)``, the prefix count and
    grid); the rules per head are in the module docstring.
    """
    states = hidden_states.detach()
    mask = attention_mask if attention_mask is not None else torch.ones(states.shape[:2], dtype=torch.long)
    real = mask != 0
    read = real_token_mask(states, mask, num_prefix_tokens)
    name = pooler.name
    query_weights = windows = None
    if name == "cls":
        weights, excluded = first_token_weights(mask), ~real
        rule = "cls: all weight on the first real token"
    elif name == "clsmean":
        first = first_token_weights(mask)
        weights = 0.5 * first + 0.5 * uniform_weights(read)
        excluded = ~(read | (first > 0))
        rule = "clsmean: half on the first real token, half uniform over the tokens after the prefix"
    elif name in ("mean", "flatten"):
        weights, excluded = uniform_weights(read), ~read
        rule = f"{name}: uniform over the {'patches' if name == 'flatten' else 'tokens'} read"
    elif name == "max":
        weights, excluded = max_share_weights(states, read), ~read
        rule = f"max: share of the {states.size(-1)} features whose max came from each token"
    elif name == "meanmax":
        weights = 0.5 * uniform_weights(read) + 0.5 * max_share_weights(states, read)
        excluded = ~read
        rule = "meanmax: half uniform (mean), half the share of features whose max came from each token"
    elif name == "gem":
        p = float(pooler.p.detach().float().clamp(min=1e-2))
        weights, excluded = gem_weights(states, read, p, pooler.eps), ~read
        rule = f"gem: effective weights x^p / sum x^p (p={p:.3g}) averaged over features"
    elif name == "attention":
        per_head = attention_weights(pooler, states, mask, num_prefix_tokens)
        query_weights = per_head.mean(dim=1)
        weights, excluded = query_weights.mean(dim=1), ~read
        rule = (
            f"attention: softmax weights averaged over {pooler.num_heads} heads and {pooler.num_queries} "
            f"quer{'y' if pooler.num_queries == 1 else 'ies'}"
        )
    elif name == "window":
        weights, windows = window_reading(pooler, states, read, attention_mask, num_prefix_tokens, grid_size)
        excluded = ~read
        within = "share of features won" if pooler.reduce == "max" else "uniform"
        how = (
            "each feature follows its winning window"
            if pooler.mode == "sliding" and pooler.reduce_windows == "max"
            else "averaged over the windows"
        )
        rule = f"window ({pooler.mode}{', grid' if pooler.grid else ''}): {within} within a window, {how}"
    else:
        raise ValueError(f"poolft explain does not know what the {name!r} head reads")
    weights = torch.where(excluded, weights.new_zeros(()), weights.float())
    return HeadReading(weights, excluded, rule, query_weights, windows)


#: stock classification heads (class name -> config -> rule): what ``describe_head`` says they read
STOCK_RULES: dict[str, Any] = {
    "ViTForImageClassification": lambda c: "cls",
    "DeiTForImageClassification": lambda c: "cls",
    "BeitForImageClassification": lambda c: "mean" if c.use_mean_pooling else "cls",
    "Data2VecVisionForImageClassification": lambda c: "mean" if c.use_mean_pooling else "cls",
    "Dinov2ForImageClassification": lambda c: "clsmean",
    "Dinov2WithRegistersForImageClassification": lambda c: "clsmean",
    "ModernBertForSequenceClassification": lambda c: "cls" if c.classifier_pooling == "cls" else "mean",
    **{
        f"{family}ForSequenceClassification": lambda c: "cls"
        for family in ("Bert", "Albert", "Roberta", "XLMRoberta", "Camembert", "Electra", "DistilBert", "Deberta")
    },
    "DebertaV2ForSequenceClassification": lambda c: "cls",
}


def stock_reading(
    model: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, num_prefix_tokens: int
) -> HeadReading:
    """The reading of a stock head: its rule from ``STOCK_RULES``, applied as the poolft head of that name."""
    rule = STOCK_RULES[type(model).__name__](model.config)
    # these rules need no weights: the parameter-free poolft head of the same name computes them
    reading = head_reading(
        build_pooler(rule, hidden_states.size(-1)),
        hidden_states,
        attention_mask,
        num_prefix_tokens=num_prefix_tokens,
    )
    reading.rule = f"stock head ({describe_head(model)['head']}): read as poolft's {reading.rule}"
    return reading


def checked_model(model: Any) -> None:
    """A poolft model, or a stock head whose reading is known; else a one-line ``PoolftError``."""
    config = model.config
    if config.model_type == "poolft":
        return
    architectures = list(getattr(config, "architectures", None) or [])
    if type(model).__name__ not in STOCK_RULES or (architectures and architectures[0] not in STOCK_RULES):
        what = architectures[0] if architectures else type(model).__name__
        raise PoolftError(
            f"the model is a {what}, not a classifier saved by poolft train (a poolft head or a stock head "
            f"poolft knows: {', '.join(sorted(STOCK_RULES))}); pass the output_dir of a poolft train run"
        )


def checked_folder(folder: Path) -> None:
    """A folder whose ``config.json`` names a bare backbone (or an unknown head) is a one-line ``PoolftError``."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no readable config: load_saved_classifier says what is wrong
    architectures = config.get("architectures") or []
    if config.get("model_type") != "poolft" and architectures and architectures[0] not in STOCK_RULES:
        raise PoolftError(
            f"{folder} holds a {architectures[0]}, not a classifier saved by poolft train; pass the output_dir "
            "of a poolft train run"
        )


def checked_inputs(inputs: list[Any], task: str, images: bool | None) -> None:
    """Inputs of the model's modality (texts, or existing image files / PIL images), else a one-line ``PoolftError``."""
    pictures = [isinstance(item, Image.Image) for item in inputs]
    if task == "text" and (images or any(pictures)):
        raise PoolftError("this is a text model; pass texts, not images (--image)")
    if task == "text" and not all(isinstance(item, str) for item in inputs):
        raise PoolftError("this is a text model; pass texts (strings)")
    if task == "image" and (images is False or not all(isinstance(i, (str, Path, Image.Image)) for i in inputs)):
        raise PoolftError("this is an image model; pass image files (--image), not texts")
    for item in inputs:
        if task == "image" and isinstance(item, (str, Path)) and not Path(item).is_file():
            raise PoolftError(f"image {item} does not exist; pass existing image files to --image")


def explain(
    model: str | Path | Any,
    inputs: list[Any],
    *,
    preprocessor: Any = None,
    images: bool | None = None,
    per_query: bool = False,
    batch_size: int = 16,
) -> list[Explanation]:
    """What the head of ``model`` reads of each input, with the model's prediction.

    Args:
        model: a folder written by ``poolft train`` (or a model object, then with ``preprocessor``).
        inputs: texts, or image files / PIL images for an image model.
        preprocessor: the tokenizer or image processor of a model object (read from the folder otherwise).
        images: whether ``inputs`` are images (None: as the model's modality); a mismatch is an error.
        per_query: keep the attention head's weights per query (``query_weights``).
        batch_size: inputs encoded together (texts are padded to the longest of their batch).

    Returns:
        One ``Explanation`` per input, in order.

    Raises:
        PoolftError: no inputs, inputs of the other modality, a missing image, or a model that is
            not a poolft classifier (or a stock head poolft knows).
    """
    if not inputs:
        raise PoolftError("nothing to explain; pass texts as arguments or --image FILE...")
    if isinstance(model, (str, Path)):
        checked_folder(Path(model))  # before loading: a bare backbone would load with a random classifier
        model, preprocessor, task = load_saved_classifier(str(model))
    elif preprocessor is None:
        raise PoolftError("explain(model, ...) with a model object needs preprocessor= (its tokenizer or processor)")
    else:
        task = modality_of(model.config)
    checked_model(model)
    checked_inputs(inputs, task, images)
    model.eval()
    results: list[Explanation] = []
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start : start + batch_size])
        explain_batch = explain_texts if task == "text" else explain_images
        results += explain_batch(model, preprocessor, chunk, per_query)
    return results


@torch.inference_mode()
def run_with_reading(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, HeadReading | None, Any]:
    """Logits ``(batch, labels)`` and, for a poolft model, the reading of the pooler's actual call.

    A forward hook captures the states, mask, prefix count and grid the model passed to its pooler,
    so the reading sees exactly what the head saw. Stock models return their hidden states instead
    (third value).
    """
    if model.config.model_type != "poolft":
        output = model(**batch, output_hidden_states=True)
        return output.logits.float(), None, output.hidden_states[-1]
    captured: dict[str, Any] = {}

    def capture(module: Pooler, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        captured["reading"] = head_reading(module, *args, **kwargs)

    handle = model.pooler.register_forward_hook(capture, with_kwargs=True)
    try:
        logits = model(**batch).logits.float()
    finally:
        handle.remove()
    return logits, captured["reading"], None


def predictions(model: Any, logits: torch.Tensor) -> list[tuple[str, float]]:
    """Per row the most likely label and its score (softmax, or sigmoid for a multi-label model)."""
    multi_label = model.config.problem_type == "multi_label_classification"
    scores = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    best = scores.argmax(dim=-1)
    return [(model.config.id2label[int(b)], float(scores[i, b])) for i, b in enumerate(best)]


def explain_texts(model: Any, tokenizer: Any, texts: list[str], per_query: bool) -> list[Explanation]:
    """Explanations of one batch of texts, padded on the right (as ``poolft predict`` batches them)."""
    max_length = text_max_length(model.config, tokenizer)
    batch = tokenizer(
        [str(text) for text in texts],
        truncation=max_length is not None,
        max_length=max_length,
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )
    batch = {key: value for key, value in batch.items() if key in ("input_ids", "attention_mask", "token_type_ids")}
    logits, reading, last_states = run_with_reading(model, batch)
    if reading is None:
        reading = stock_reading(model, last_states, batch["attention_mask"], 0)
    head = describe_head(model)["head"]
    results = []
    for row, (text, (label, probability)) in enumerate(zip(texts, predictions(model, logits), strict=True)):
        results.append(
            Explanation(
                input=str(text),
                kind="text",
                head=head,
                rule=reading.rule,
                label=label,
                probability=probability,
                tokens=tokenizer.convert_ids_to_tokens(batch["input_ids"][row].tolist()),
                **row_values(reading, row, per_query),
            )
        )
    return results


def row_values(reading: HeadReading, row: int, per_query: bool) -> dict[str, Any]:
    """Row ``row`` of a reading as the plain lists of an ``Explanation``."""
    values: dict[str, Any] = {
        "weights": reading.weights[row].tolist(),
        "excluded": reading.excluded[row].tolist(),
        "windows": reading.windows[row] if reading.windows is not None else None,
    }
    if per_query and reading.query_weights is not None:
        values["query_weights"] = reading.query_weights[row].tolist()
    return values


def explain_images(model: Any, processor: Any, items: list[Any], per_query: bool) -> list[Explanation]:
    """Explanations of one batch of images (files or PIL images), as the saved processor prepares them."""
    pictures = [to_rgb(item if isinstance(item, Image.Image) else open_image(str(item))) for item in items]
    pixel_values = torch.from_numpy(np.ascontiguousarray(processor(pictures, return_tensors="np")["pixel_values"]))
    logits, reading, last_states = run_with_reading(model, {"pixel_values": pixel_values})
    encoder_config = getattr(model.config, "encoder_config", None) or model.config
    grid = pixel_patch_grid(pixel_values, encoder_config.patch_size)
    if reading is None:
        prefix = last_states.size(1) - grid[0] * grid[1]
        reading = stock_reading(model, last_states, None, prefix)
    tokens = reading.weights.size(1)
    prefix = tokens - grid[0] * grid[1]
    names = prefix_names(encoder_config, prefix) + [f"patch {r},{c}" for r in range(grid[0]) for c in range(grid[1])]
    head = describe_head(model)["head"]
    results = []
    for row, (item, (label, probability)) in enumerate(zip(items, predictions(model, logits), strict=True)):
        results.append(
            Explanation(
                input=str(item) if not isinstance(item, Image.Image) else f"<image {row}>",
                kind="image",
                head=head,
                rule=reading.rule,
                label=label,
                probability=probability,
                tokens=names,
                num_prefix_tokens=prefix,
                grid_size=list(grid),
                image=seen_pixels(pixel_values[row], processor),
                **row_values(reading, row, per_query),
            )
        )
    return results


def prefix_names(encoder_config: Any, prefix: int) -> list[str]:
    """Names of an image encoder's prefix tokens: ``[CLS]`` first when it has a class token, then ``[PREFIX i]``."""
    if not prefix:
        return []
    first = ["[CLS]"] if has_class_token(encoder_config) else ["[PREFIX 0]"]
    return first + [f"[PREFIX {i}]" for i in range(1, prefix)]


def seen_pixels(pixel_values: torch.Tensor, processor: Any) -> np.ndarray:
    """The image the model saw, ``(height, width, 3)`` uint8: ``pixel_values`` ``(3, h, w)`` un-normalised."""
    values = pixel_values.float().numpy()
    if getattr(processor, "do_normalize", False):
        mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1, 1, 1)
        values = values * std + mean
    scale = 1.0 if getattr(processor, "do_rescale", True) else 1.0 / 255
    return (np.clip(values * scale, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
