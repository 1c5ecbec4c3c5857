"""Stock heads (``--model.stock_head true``): what each family's classifier is, and that it trains,
saves, reloads and predicts; a clear error where transformers has none.

Each description from ``describe_head`` is pinned twice: as text, and by recomputing the stock
model's logits from its own base model's ``last_hidden_state`` with the operations it names.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets_for_tests import write_image_folder
from families import IMAGE_SIZE, PATCH_SIZE
from torch.nn import functional as F
from transformers import (
    AlbertConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BeitConfig,
    BeitForImageClassification,
    BertConfig,
    DebertaV2Config,
    DeiTConfig,
    DeiTForImageClassification,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    RobertaConfig,
    ViTConfig,
    ViTForImageClassification,
    XLMRobertaConfig,
    pipeline,
)

from poolft.cli import main
from poolft.config import load_config
from poolft.errors import PoolftError
from poolft.models.backbones import describe_head, stock_at_image_size
from poolft.models.prediction import load_classifier
from poolft.training.optim import freeze_backbone

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def cls_then(*ops):
    return lambda states, mask: _apply(states[:, 0], ops)


def _apply(x, ops):
    for op in ops:
        x = op(x)
    return x


# family -> (description, logits from the base model's last_hidden_state (batch, tokens, hidden))
IMAGE_HEADS = {
    "vit": ("CLS token after the final layernorm -> linear", lambda m, s: m.classifier(s[:, 0])),
    "deit": (
        "CLS token (not the distillation token) after the final layernorm -> linear",
        lambda m, s: m.classifier(s[:, 0]),
    ),
    "beit": (
        "mean of the patch tokens (CLS excluded) -> layernorm -> linear",
        lambda m, s: m.classifier(m.beit.pooler.layernorm(s[:, 1:].mean(dim=1))),
    ),
    "dinov2": (
        "[CLS, mean(patch tokens)] after the final layernorm -> linear",
        lambda m, s: m.classifier(torch.cat([s[:, 0], s[:, 1:].mean(dim=1)], dim=-1)),
    ),
    "dinov2-registers": (
        "[CLS, mean(patch tokens, the 4 registers excluded)] after the final layernorm -> linear",
        lambda m, s: m.classifier(torch.cat([s[:, 0], s[:, 5:].mean(dim=1)], dim=-1)),
    ),
}


@pytest.mark.parametrize("family", IMAGE_HEADS)
def test_image_stock_head_is_what_its_description_says(family_dir, family):
    description, logits_from_states = IMAGE_HEADS[family]
    model = AutoModelForImageClassification.from_pretrained(family_dir(family), num_labels=3).eval()
    assert describe_head(model) == {"class": type(model).__name__, "head": description}
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model.base_model(pixels).last_hidden_state
        torch.testing.assert_close(model(pixels).logits, logits_from_states(model, states))


TEXT_HEADS = {
    "bert": (
        BertConfig(**TINY, vocab_size=99),
        "CLS -> dense + tanh (BERT pooler) -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier(torch.tanh(m.bert.pooler.dense(s[:, 0]))),
    ),
    "albert": (
        AlbertConfig(**TINY, vocab_size=99, embedding_size=16),
        "CLS -> dense + tanh (ALBERT pooler) -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier(torch.tanh(m.albert.pooler(s[:, 0]))),
    ),
    "roberta": (
        RobertaConfig(**TINY, vocab_size=99),
        "first token (<s>/CLS) -> dropout 0.1 -> dense + tanh -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier.out_proj(torch.tanh(m.classifier.dense(s[:, 0]))),
    ),
    "xlm-roberta": (
        XLMRobertaConfig(**TINY, vocab_size=99),
        "first token (<s>/CLS) -> dropout 0.1 -> dense + tanh -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier.out_proj(torch.tanh(m.classifier.dense(s[:, 0]))),
    ),
    "electra": (
        ElectraConfig(**TINY, vocab_size=99, embedding_size=16),
        "CLS -> dropout 0.1 -> dense + gelu -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier.out_proj(F.gelu(m.classifier.dense(s[:, 0]))),
    ),
    "distilbert": (
        DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=99),
        "CLS -> dense + ReLU -> dropout 0.2 -> linear",
        lambda m, s, mask: m.classifier(F.relu(m.pre_classifier(s[:, 0]))),
    ),
    "deberta-v2": (
        DebertaV2Config(**TINY, vocab_size=99),
        "CLS -> dropout 0 -> dense + gelu -> dropout 0.1 -> linear",
        lambda m, s, mask: m.classifier(F.gelu(m.pooler.dense(s[:, 0]))),
    ),
    "modernbert-cls": (
        ModernBertConfig(**TINY, vocab_size=99, pad_token_id=0),
        "CLS -> dense + gelu -> layernorm -> dropout 0 -> linear",
        lambda m, s, mask: m.classifier(m.head(s[:, 0])),
    ),
    "modernbert-mean": (
        ModernBertConfig(**TINY, vocab_size=99, pad_token_id=0, classifier_pooling="mean"),
        "masked mean of the tokens -> dense + gelu -> layernorm -> dropout 0 -> linear",
        lambda m, s, mask: m.classifier(m.head((s * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))),
    ),
}


@pytest.mark.parametrize("family", TEXT_HEADS)
def test_text_stock_head_is_what_its_description_says(family):
    config, description, logits_from_states = TEXT_HEADS[family]
    config.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert describe_head(model) == {"class": type(model).__name__, "head": description}
    input_ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        states = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        expected = logits_from_states(model, states, mask.to(states.dtype))
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask).logits, expected)


def run_stock(tmp_path, backbone, *extra: str) -> tuple[int, object]:
    images = write_image_folder(tmp_path / "images", {"train": 4, "test": 2})
    arguments = [
        "train",
        f"--data.path={images}",
        "--data.eval_split=test",
        f"--model.backbone={backbone}",
        "--model.stock_head=true",
        f"--train.output_dir={tmp_path / 'run'}",
        "--train.batch_size=4",
        "--train.progress=false",
        *extra,
    ]
    return main(arguments), images


@pytest.mark.parametrize(
    "family, extra",
    # every stock family at its processor's size, and two heads saved at another size than their backbone's
    [(name, ()) for name in IMAGE_HEADS] + [("vit", ("--data.image_size=48",)), ("deit", ("--data.image_size=48",))],
    ids=[*IMAGE_HEADS, "vit-48px", "deit-48px"],
)
def test_stock_head_trains_saves_reloads_and_predicts(family_dir, family, extra, tmp_path, capsys):
    code, images = run_stock(tmp_path, family_dir(family), *extra)
    assert code == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(run).eval()
    assert metrics["head"] == describe_head(model) and metrics["head"]["head"] == IMAGE_HEADS[family][0]
    image = str(images / "test" / "light" / "1.png")
    top = pipeline("image-classification", model=str(run))(image)[0]
    [(label, probability)] = load_classifier(str(run)).predict([image], images=True)
    assert label == top["label"] and probability == pytest.approx(top["score"], abs=1e-5)
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--image", image]) == 0
    assert capsys.readouterr().out.split("\t")[0] == label
    assert main(["eval", "--model", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4


@pytest.mark.parametrize(
    "family, config_class", [("clip-vision", "CLIPVisionConfig"), ("siglip-vision", "SiglipVisionConfig")]
)
def test_vision_towers_have_no_stock_head_and_say_so_in_one_line(family_dir, family, config_class, tmp_path, capsys):
    code, _ = run_stock(tmp_path, family_dir(family))
    stderr = capsys.readouterr().err
    error = [line for line in stderr.splitlines() if line.startswith("poolft: error")]
    assert code == 2 and len(error) == 1 and "Traceback" not in stderr
    assert f"({config_class}) and transformers has no stock classifier for it" in error[0]
    assert "use a poolft head (--model.pooler mean, attention, ...)" in error[0]


@pytest.mark.parametrize(
    "model_class, config_class", [(ViTForImageClassification, ViTConfig), (DeiTForImageClassification, DeiTConfig)]
)
def test_stock_model_rebuilt_at_another_size_equals_hf_interpolation(model_class, config_class):
    torch.manual_seed(0)
    model = model_class(config_class(**TINY, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_labels=2)).eval()
    resized = stock_at_image_size(model, 48)
    assert resized.config.image_size == 48
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(resized(pixels).logits, model(pixels, interpolate_pos_encoding=True).logits)


def test_stock_beit_with_relative_position_bias_at_another_size_is_refused():
    config = BeitConfig(
        **TINY, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, use_relative_position_bias=True, num_labels=2
    )
    with pytest.raises(PoolftError, match=r"stock BeitForImageClassification head cannot be trained at 48 px"):
        stock_at_image_size(BeitForImageClassification(config), 48)


def test_freezing_a_stock_dinov2_leaves_only_its_classifier_trainable(family_dir):
    model = AutoModelForImageClassification.from_pretrained(family_dir("dinov2"), num_labels=2)
    freeze_backbone(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_stock_head_with_the_feature_cache_is_a_one_line_error(family_dir, tmp_path, capsys):
    """The probe track caches poolft's encoder states; a stock model has no such split."""
    code, _ = run_stock(tmp_path, family_dir("dinov2"), "--train.freeze_backbone=true", "--train.feature_cache=true")
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    assert "poolft: error: train.feature_cache trains a poolft head on cached states; drop model.stock_head" in stderr


NO_PROBE_STOCK = ("beit", "clip-vision", "siglip-vision")  # BEiT's double pools a layer-normed mean; towers: none


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2", "dinov2-registers", *NO_PROBE_STOCK])
def test_the_probe_track_stock_head_feeds_the_stock_classifier_what_it_reads(family_dir, family):
    """On cached states, ``stock`` is the poolft pooler whose output is exactly the stock classifier's
    input (captured from the transformers model with a hook); families without such a pooler say so."""
    from families import FAMILIES

    from poolft.models.backbones import load_backbone_config, probe_stock_pooler
    from poolft.pooling.base import build_pooler

    folder = family_dir(family)
    config = load_backbone_config(str(folder), load_config(None, [f"--model.backbone={folder}"]).model)
    if family in NO_PROBE_STOCK:
        with pytest.raises(PoolftError, match="no stock image classifier|is not a poolft pooler") as error:
            probe_stock_pooler(str(folder), config)
        assert "\n" not in str(error.value)
        return
    name, options = probe_stock_pooler(str(folder), config)
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=3).eval()
    fed = []
    model.classifier.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0]))
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(pixels)
        states = model.base_model(pixels).last_hidden_state
        pooler = build_pooler(name, config.hidden_size, **options).eval()
        grid = IMAGE_SIZE // PATCH_SIZE
        pooled = pooler(states, None, num_prefix_tokens=FAMILIES[family].prefix_tokens, grid_size=(grid, grid))
    torch.testing.assert_close(pooled, fed[0])
