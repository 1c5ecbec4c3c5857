"""Pooled classifiers on tiny offline backbones: loading, saving, Auto classes, pipelines, padding.

The backbones come from ``conftest.py`` (a 2-layer BERT with a WordPiece tokenizer, a 2-layer
28 px ViT with an image processor). Every test runs in eval mode so dropout cannot hide a
difference, and the heads' fresh weights are perturbed away from their init so that a head that
was silently re-initialised on load is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
    pipeline,
)

import poolft
from poolft import PoolftConfig, PoolftForImageClassification, PoolftForSequenceClassification
from poolft.models.modeling import PoolftPreTrainedModel, load_encoder

#: every head that pools any number of tokens (flatten reads one fixed grid: IMAGE_HEAD_SPECS)
POOLERS = [name for name in poolft.available_poolers() if name != "flatten"]
KINDS = ("text", "image")
MODEL_CLASSES = {"text": PoolftForSequenceClassification, "image": PoolftForImageClassification}
AUTO_CLASSES = {"text": AutoModelForSequenceClassification, "image": AutoModelForImageClassification}
TASKS = {"text": "text-classification", "image": "image-classification"}
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
#: heads whose left-padded batch must equal unpadded single examples
PADDING_POOLERS = ("cls", "mean", "max", "attention", "window")
#: every head with its defaults, plus non-default options that must survive save / load
HEAD_SPECS = [(name, {}) for name in POOLERS] + [
    ("cls", {"dense": True}),
    ("gem", {"p": 2.0, "learn_p": False}),
    ("attention", {"num_queries": 2, "num_heads": 2}),
    ("window", {"levels": [1, 3], "reduce": "mean", "project": False}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("clsmean", {"project": True}),
    ("window", {"edges": [[0, 0.1, 0.5, 1.0]], "reduce": "mean"}),
]
#: image-only options (2-D windows over the patch grid)
IMAGE_HEAD_SPECS = [
    ("flatten", {"grid_size": [4, 4]}),  # the tiny ViT: 28 px, patch 7
    ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1, "reduce_windows": "map"}),
]


def spec_id(spec: tuple[str, str, dict]) -> str:
    kind, name, options = spec
    return "-".join([kind, name] + [f"{key}={value}" for key, value in options.items()]).replace(" ", "")


# ----------------------------------------------------------------------------------------------
# helpers


def perturb_head(model: PoolftPreTrainedModel, seed: int = 1) -> PoolftPreTrainedModel:
    """Move the head, layer weights and classifier off their init; return the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.pooler, model.layer_combination, model.classifier):
            for parameter in module.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def random_images(count: int, height: int, width: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def pixel_batch(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def model_inputs(kind: str, source: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    """A small batch for ``kind``: right-padded token ids, or 28 px pixel values."""
    if kind == "text":
        return dict(AutoTokenizer.from_pretrained(source)(texts, padding=True, return_tensors="pt"))
    return {"pixel_values": pixel_batch(3, 28, 28)}


def encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the backbone's own pooler (poolft drops it)."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith("pooler.")}


@dataclass
class Saved:
    kind: str
    pooler: str
    options: dict
    source: Path  # the backbone folder
    folder: Path  # the saved poolft model (+ tokenizer / image processor)
    model: PoolftPreTrainedModel
    inputs: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def backbone_dirs(tiny_bert_dir: Path, tiny_vit_dir: Path) -> dict[str, Path]:
    return {"text": tiny_bert_dir, "image": tiny_vit_dir}


@pytest.fixture(
    scope="module",
    params=[(kind, name, options) for kind in KINDS for name, options in HEAD_SPECS]
    + [("image", name, options) for name, options in IMAGE_HEAD_SPECS],
    ids=spec_id,
)
def saved(request, tmp_path_factory, backbone_dirs, tiny_texts) -> Saved:
    """A poolft model per (kind, head, options) built with ``from_backbone``, saved with its preprocessor."""
    kind, name, options = request.param
    source = backbone_dirs[kind]
    model = MODEL_CLASSES[kind].from_backbone(str(source), pooler=name, pooler_options=options, id2label=ID2LABEL)
    model = perturb_head(model)
    folder = tmp_path_factory.mktemp(f"{kind}-{name}")
    model.save_pretrained(folder)
    if kind == "text":
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    else:
        AutoImageProcessor.from_pretrained(source).save_pretrained(folder)
    return Saved(kind, name, options, source, folder, model, model_inputs(kind, source, tiny_texts))


# ----------------------------------------------------------------------------------------------
# from_backbone / save / load / Auto classes / pipelines, for every head on both backbones


def test_from_backbone_keeps_encoder_weights(saved: Saved) -> None:
    pretrained = AutoModel.from_pretrained(saved.source)
    expected = encoder_state(pretrained)
    actual = saved.model.encoder.state_dict()
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key
    # poolft brings its own head: the backbone's pooler is left out, not left dangling
    assert getattr(saved.model.encoder, "pooler", None) is None
    assert saved.model.config.pooler == saved.pooler
    assert saved.model.config.pooler_options.items() >= saved.options.items()
    assert saved.model.config.num_labels == len(ID2LABEL)
    assert saved.model.classifier.out_features == len(ID2LABEL)


def test_save_then_from_pretrained_gives_identical_logits(saved: Saved) -> None:
    loaded = MODEL_CLASSES[saved.kind].from_pretrained(saved.folder).eval()
    assert loaded.config.pooler == saved.pooler
    assert loaded.config.pooler_options == saved.model.config.pooler_options
    assert loaded.pooler.options == saved.model.pooler.options
    assert loaded.pooler.options.items() >= saved.options.items()
    assert loaded.config.id2label == ID2LABEL
    trainable = {name: parameter.requires_grad for name, parameter in saved.model.named_parameters()}
    assert {name: parameter.requires_grad for name, parameter in loaded.named_parameters()} == trainable
    reference = saved.model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[key]), key
    with torch.no_grad():
        assert torch.equal(loaded(**saved.inputs).logits, saved.model(**saved.inputs).logits)


def test_auto_classes_load_the_poolft_model(saved: Saved) -> None:
    config = AutoConfig.from_pretrained(saved.folder)
    assert isinstance(config, PoolftConfig)
    assert config.pooler == saved.pooler
    loaded = AUTO_CLASSES[saved.kind].from_pretrained(saved.folder).eval()
    assert type(loaded) is MODEL_CLASSES[saved.kind]
    with torch.no_grad():
        assert torch.equal(loaded(**saved.inputs).logits, saved.model(**saved.inputs).logits)


def test_pipeline_scores_are_the_softmax_of_the_logits(saved: Saved, tiny_texts: list[str]) -> None:
    classifier = pipeline(TASKS[saved.kind], model=str(saved.folder))
    assert type(classifier.model) is MODEL_CLASSES[saved.kind]
    if saved.kind == "text":
        examples = tiny_texts
        tokenizer = AutoTokenizer.from_pretrained(saved.folder)
        encoded = [tokenizer(text, return_tensors="pt") for text in examples]
    else:
        examples = random_images(3, 40, 30)  # not 28 px: the image processor must resize
        processor = AutoImageProcessor.from_pretrained(saved.folder)
        encoded = [processor(images=image, return_tensors="pt") for image in examples]
    results = classifier(examples, top_k=None)
    assert len(results) == len(examples)
    for inputs, result in zip(encoded, results, strict=True):
        with torch.no_grad():
            probabilities = saved.model(**inputs).logits.softmax(dim=-1)[0]
        assert [entry["label"] for entry in result] == [
            ID2LABEL[int(i)] for i in probabilities.argsort(descending=True)
        ]
        top = result[0]
        assert top["label"] == ID2LABEL[int(probabilities.argmax())]
        assert top["score"] == pytest.approx(float(probabilities.max()), rel=1e-5, abs=1e-6)
        scores = {entry["label"]: entry["score"] for entry in result}
        expected = {ID2LABEL[i]: float(p) for i, p in enumerate(probabilities)}
        assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_loss_is_returned_with_labels(saved: Saved) -> None:
    model = MODEL_CLASSES[saved.kind].from_pretrained(saved.folder).eval()
    batch = next(iter(saved.inputs.values())).size(0)
    labels = torch.arange(batch) % len(ID2LABEL)
    assert model(**saved.inputs).loss is None
    output = model(**saved.inputs, labels=labels)
    assert output.loss is not None and output.loss.ndim == 0
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))
    output.loss.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    for name, parameter in model.pooler.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name


# ----------------------------------------------------------------------------------------------
# head-specific behaviour


@pytest.mark.parametrize("kind", KINDS)
def test_cls_dense_starts_from_the_backbone_pooler(kind, backbone_dirs, tiny_texts, tmp_path) -> None:
    source = backbone_dirs[kind]
    backbone = AutoModel.from_pretrained(source).eval()
    model = MODEL_CLASSES[kind].from_backbone(str(source), pooler="cls", pooler_options={"dense": True}, num_labels=2)
    model.eval()
    assert model.config.pooler_options == {"dense": True}
    assert torch.equal(model.pooler.dense.weight, backbone.pooler.dense.weight)
    assert torch.equal(model.pooler.dense.bias, backbone.pooler.dense.bias)
    # so the pooled vector is exactly the backbone's pooler_output (tanh(W h_cls + b))
    inputs = model_inputs(kind, source, tiny_texts)
    mask = inputs.get("attention_mask")
    with torch.no_grad():
        states = model.encoder(**inputs).last_hidden_state
        torch.testing.assert_close(model.pooler(states, mask), backbone(**inputs).pooler_output)
    # and the dense layer survives a round trip
    model.save_pretrained(tmp_path)
    loaded = MODEL_CLASSES[kind].from_pretrained(tmp_path)
    assert torch.equal(loaded.pooler.dense.weight, backbone.pooler.dense.weight)

    plain = MODEL_CLASSES[kind].from_backbone(str(source), pooler="cls", num_labels=2)
    assert plain.pooler.dense is None


def test_backbone_without_pooler_weights_gives_no_dense_to_copy(tiny_bert_dir, tmp_path) -> None:
    """A checkpoint saved without its pooler: the pooler ``from_pretrained`` builds is random, not pretrained."""
    backbone = AutoModel.from_pretrained(tiny_bert_dir)
    _, dense = load_encoder(str(tiny_bert_dir))
    assert torch.equal(dense.weight, backbone.pooler.dense.weight)

    backbone.pooler = None
    backbone.save_pretrained(tmp_path)  # weights without pooler.*, config still says BertModel
    encoder, dense = load_encoder(str(tmp_path))
    assert dense is None
    assert getattr(encoder, "pooler", None) is None
    model = PoolftForSequenceClassification.from_backbone(
        str(tmp_path), pooler="cls", pooler_options={"dense": True}, num_labels=2
    )
    assert model.pooler.dense is not None
    assert torch.equal(model.pooler.dense.bias, torch.zeros(model.config.hidden_size))  # poolft's own init


def test_backbone_pooler_of_another_width_is_not_copied(tmp_path) -> None:
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        pooler_output_size=16,
    )
    ViTModel(config, add_pooling_layer=True).save_pretrained(tmp_path)
    model = PoolftForImageClassification.from_backbone(
        str(tmp_path), pooler="cls", pooler_options={"dense": True}, num_labels=2
    )
    assert model.pooler.dense.weight.shape == (32, 32)
    assert model(pixel_values=pixel_batch(1, 28, 28)).logits.shape == (1, 2)


@pytest.mark.parametrize("pooler", POOLERS)
def test_image_model_at_another_size_interpolates_and_derives_the_grid(pooler, tiny_vit_dir) -> None:
    model = perturb_head(PoolftForImageClassification.from_backbone(str(tiny_vit_dir), pooler=pooler, num_labels=3))
    if pooler == "window":
        assert model.pooler.grid is True  # image models pool the patch grid by default
    pixel_values = pixel_batch(2, 42, 35)  # patch 7 -> 6 x 5 grid, backbone trained at 28 x 28
    with pytest.raises(ValueError):  # the backbone itself refuses this size without interpolation
        model.encoder(pixel_values)

    seen = {}

    def record(module, args, kwargs, output):
        seen.update(kwargs)

    handle = model.pooler.register_forward_hook(record, with_kwargs=True)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        # only a head that pools the grid gets it (the others would ignore it, 1-D windows refuse it)
        assert seen["grid_size"] == ((6, 5) if model.pooler.uses_grid else None)
        assert seen["num_prefix_tokens"] == 1
        model(pixel_values=pixel_batch(2, 28, 28))
        assert seen["grid_size"] == ((4, 4) if model.pooler.uses_grid else None)
        assert seen["num_prefix_tokens"] == 1
    handle.remove()

    with torch.no_grad():  # the same thing by hand
        states = model.encoder(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        assert states.shape[1] == 1 + 6 * 5
        pooled = model.pooler(states, None, num_prefix_tokens=1, grid_size=(6, 5))
        torch.testing.assert_close(logits, model.classifier(pooled), rtol=0, atol=1e-6)
        if pooler == "window":  # the grid's orientation matters, so (6, 5) was really used
            transposed = model.pooler(states, None, num_prefix_tokens=1, grid_size=(5, 6))
            assert not torch.allclose(pooled, transposed, atol=1e-4)


def test_prefix_tokens_come_from_the_output_length(tmp_path) -> None:
    """A ViT with 4 register tokens: 5 prefix tokens, patch grid from the pixel shape."""
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        num_register_tokens=4,
    )
    torch.manual_seed(0)
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path)
    model = perturb_head(PoolftForImageClassification.from_backbone(str(tmp_path), pooler="window", num_labels=2))
    pixel_values = pixel_batch(2, 42, 35)
    seen = {}
    handle = model.pooler.register_forward_hook(lambda m, a, kw, o: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    handle.remove()
    assert seen["num_prefix_tokens"] == 5 and seen["grid_size"] == (6, 5)
    with torch.no_grad():
        states = model.encoder(pixel_values).last_hidden_state
        expected = model.classifier(model.pooler(states, None, num_prefix_tokens=5, grid_size=(6, 5)))
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# padding: BERT's absolute positions count from the first column, padding or not


def single_example_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts])


def padded_batch(tokenizer, texts: list[str], side: str) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = side
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max()  # some rows really are padded
    column = 0 if side == "left" else -1
    assert (batch["attention_mask"][:, column] == 0).any()
    return batch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position 0 at each row's first real token (what an unpadded example gets)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


@pytest.fixture(scope="module")
def text_models(tiny_bert_dir) -> dict[str, PoolftForSequenceClassification]:
    return {
        name: perturb_head(PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler=name, num_labels=3))
        for name in PADDING_POOLERS
    }


@pytest.mark.parametrize("pooler", PADDING_POOLERS)
def test_left_padded_batch_with_position_ids_matches_single_examples(
    pooler, text_models, tiny_bert_dir, tiny_texts
) -> None:
    model = text_models[pooler]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = padded_batch(tokenizer, tiny_texts, "left")
    with torch.no_grad():
        logits = model(**batch, position_ids=positions_from_mask(batch["attention_mask"])).logits
    torch.testing.assert_close(logits, single_example_logits(model, tokenizer, tiny_texts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooler", PADDING_POOLERS)
def test_right_padded_batch_matches_single_examples(pooler, text_models, tiny_bert_dir, tiny_texts) -> None:
    model = text_models[pooler]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = padded_batch(tokenizer, tiny_texts, "right")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, single_example_logits(model, tokenizer, tiny_texts), rtol=1e-4, atol=1e-5)


def test_left_padded_batch_without_position_ids_matches_single_examples(text_models, tiny_bert_dir, tiny_texts) -> None:
    """The model moves a left-padded batch to right padding, so BERT does not number the pads.

    The stock ``BertForSequenceClassification`` on the same encoder shows what that prevents: the
    real tokens of a left-padded row get positions ``pad, pad + 1, ...`` instead of ``0, 1, ...``.
    """
    model = text_models["mean"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = padded_batch(tokenizer, tiny_texts, "left")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, single_example_logits(model, tokenizer, tiny_texts), rtol=1e-4, atol=1e-5)

    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).eval()
    with torch.no_grad():
        stock_logits = stock(**batch).logits
    stock_singles = single_example_logits(stock, tokenizer, tiny_texts)
    padded = batch["attention_mask"][:, 0] == 0
    torch.testing.assert_close(stock_logits[~padded], stock_singles[~padded], rtol=1e-4, atol=1e-5)
    assert ((stock_logits[padded] - stock_singles[padded]).abs().amax(dim=1) > 1e-3).all()


# ----------------------------------------------------------------------------------------------
# several hidden layers


@pytest.mark.parametrize("combine", ["mean", "weighted"])
@pytest.mark.parametrize("kind", KINDS)
def test_hidden_layer_combination_and_round_trip(kind, combine, backbone_dirs, tiny_texts, tmp_path) -> None:
    source = backbone_dirs[kind]
    model_class = MODEL_CLASSES[kind]
    model = model_class.from_backbone(
        str(source), pooler="mean", num_labels=3, hidden_layers=[-1, -2], layer_combine=combine
    )
    if combine == "weighted":
        assert model.layer_combination.logits.shape == (2,)
    else:
        assert model.layer_combination.logits is None
    model = perturb_head(model)  # moves the weighted logits off zero (equal weights)
    inputs = model_inputs(kind, source, tiny_texts)
    mask = inputs.get("attention_mask")
    prefix = 1 if kind == "image" else 0
    grid = (4, 4) if kind == "image" else None
    with torch.no_grad():
        output = model(**inputs)
        encoded = model.encoder(**inputs, output_hidden_states=True)
        last, previous = encoded.last_hidden_state, encoded.hidden_states[-2]
        if combine == "mean":
            states = (last + previous) / 2
        else:
            weights = model.layer_combination.logits.softmax(dim=0)
            assert not torch.allclose(weights, torch.full_like(weights, 0.5))
            states = weights[0] * last + weights[1] * previous
        expected = model.classifier(model.pooler(states, mask, num_prefix_tokens=prefix, grid_size=grid))
        only_last = model.classifier(model.pooler(last, mask, num_prefix_tokens=prefix, grid_size=grid))
    torch.testing.assert_close(output.logits, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(output.logits, only_last, atol=1e-4)  # the second layer really counts
    assert output.hidden_states is not None

    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.config.hidden_layers == [-1, -2]
    assert loaded.config.layer_combine == combine
    if combine == "weighted":
        assert torch.equal(loaded.layer_combination.logits, model.layer_combination.logits)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, output.logits)


# ----------------------------------------------------------------------------------------------
# bad configurations


def test_unknown_pooler_raises(tiny_bert_dir, tiny_vit_dir) -> None:
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="nope", num_labels=2)
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        PoolftForImageClassification.from_backbone(str(tiny_vit_dir), pooler="nope", num_labels=2)
    with pytest.raises(ValueError, match="unknown pooler"):
        PoolftConfig(pooler="nope")


def test_bad_options_raise(tiny_bert_dir) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        PoolftForSequenceClassification.from_backbone(
            str(tiny_bert_dir), pooler="mean", num_labels=2, pooler_options={"levels": [1, 2]}
        )
    with pytest.raises(ValueError, match="layer_combine"):
        PoolftForSequenceClassification.from_backbone(
            str(tiny_bert_dir), pooler="mean", num_labels=2, hidden_layers=[-1, -2], layer_combine="sum"
        )
    with pytest.raises(ValueError, match="id2label"):
        PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), num_labels=2, id2label=ID2LABEL)
