"""``train.layer_decay``: each parameter's rate, recomputed here from the layer index in its name."""

from __future__ import annotations

import json
import re

import pytest
from datasets_for_tests import write_sentiment_csv
from transformers import AutoConfig, AutoModelForSequenceClassification

from poolft.config import TrainConfig, load_config
from poolft.errors import PoolftError
from poolft.models.modeling import PoolftForImageClassification, PoolftForSequenceClassification
from poolft.training.loop import train
from poolft.training.optim import no_decay, parameter_groups

LEARNING_RATE, HEAD_LEARNING_RATE, DECAY = 1e-3, 5e-2, 0.5
#: ``.layer.3.`` / ``.layers.3.`` / ALBERT's ``.albert_layer_groups.0.``: the block index in a parameter's name
BLOCK = re.compile(r"\.(?:layer|layers|albert_layer_groups)\.(\d+)\.")


def expected_rate(name: str, prefix: str, blocks: int, seen_block: bool) -> float:
    """The timm / BEiT rule written out: embeddings decay^(L+1), block i decay^(L-i), above them 1."""
    if not name.startswith(f"{prefix}."):
        return HEAD_LEARNING_RATE
    match = BLOCK.search(name)
    if match:
        return LEARNING_RATE * DECAY ** (blocks - int(match.group(1)))
    layer = blocks + 1 if seen_block else 0  # above the blocks, or an embedding
    return LEARNING_RATE * DECAY ** (blocks + 1 - layer)


def rates_by_name(model, **changes) -> dict[str, tuple[float, float, str]]:
    """``{parameter name: (lr, weight_decay, group name)}`` from ``parameter_groups``."""
    config = TrainConfig(learning_rate=LEARNING_RATE, head_learning_rate=HEAD_LEARNING_RATE, **changes)
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (group["lr"], group["weight_decay"], group["name"])
        for group in parameter_groups(model, config)
        for p in group["params"]
    }


def assert_rates_follow_names(model, prefix: str, blocks: int) -> None:
    rates = rates_by_name(model, layer_decay=DECAY)
    assert set(rates) == {n for n, p in model.named_parameters() if p.requires_grad}
    seen_block = False
    for name, parameter in model.named_parameters():
        seen_block = seen_block or bool(BLOCK.search(name))
        rate, weight_decay, group = rates[name]
        assert rate == pytest.approx(expected_rate(name, prefix, blocks, seen_block), rel=1e-12), name
        assert weight_decay == (0.0 if no_decay(name, parameter) else 0.01), name  # the no-decay split is kept
        assert group.startswith("backbone" if name.startswith(f"{prefix}.") else "head"), name


@pytest.mark.parametrize("layers", [2, 4])
def test_bert_rates_follow_the_layer_in_each_parameter_name(tiny_bert_dir, tmp_path, layers):
    from conftest import build_tiny_bert

    folder = tiny_bert_dir if layers == 2 else build_tiny_bert(tmp_path / "bert4", num_hidden_layers=4)
    poolft_model = PoolftForSequenceClassification.from_backbone(str(folder), pooler="mean", num_labels=2)
    assert_rates_follow_names(poolft_model, "encoder", layers)
    # the stock head: BERT's own pooler sits above the blocks (rate 1x), the classifier is the head
    stock = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    assert_rates_follow_names(stock, "bert", layers)
    assert rates_by_name(stock, layer_decay=DECAY)["bert.pooler.dense.weight"][0] == LEARNING_RATE


def test_vit_rates_follow_the_layer_in_each_parameter_name(tiny_vit_dir):
    model = PoolftForImageClassification.from_backbone(str(tiny_vit_dir), pooler="mean", num_labels=2)
    assert_rates_follow_names(model, "encoder", 2)
    rates = rates_by_name(model, layer_decay=DECAY)
    assert rates["encoder.embeddings.cls_token"][0] == LEARNING_RATE * DECAY**3
    assert rates["encoder.layernorm.weight"][0] == LEARNING_RATE  # the final norm: above the blocks


FAMILIES = ["bert", "roberta", "distilbert", "albert", "deberta-v2", "modernbert", "vit", "dinov2", "clip-vision"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_a_rate_per_block_and_the_lowest_for_its_embeddings(family_dir, family):
    folder = family_dir(family)
    config = AutoConfig.from_pretrained(folder)
    image = family in ("vit", "dinov2", "clip-vision")
    cls = PoolftForImageClassification if image else PoolftForSequenceClassification
    model = cls.from_backbone(str(folder), pooler="mean", num_labels=2)
    # ALBERT runs one shared layer group at every depth: it is one block, not num_hidden_layers
    blocks = config.num_hidden_groups if family == "albert" else config.num_hidden_layers
    assert_rates_follow_names(model, "encoder", blocks)
    rates = rates_by_name(model, layer_decay=DECAY)
    first = next(model.encoder.get_input_embeddings().parameters())  # word or patch embedding
    embedding = next(n for n, p in model.named_parameters() if p is first)
    assert rates[embedding][0] == min(rate for rate, _, _ in rates.values())
    assert rates[embedding][0] == pytest.approx(LEARNING_RATE * DECAY ** (blocks + 1))


def test_without_layer_decay_the_groups_are_unchanged(tiny_bert_dir):
    model = PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="mean", num_labels=2)
    config = TrainConfig(learning_rate=LEARNING_RATE, head_learning_rate=HEAD_LEARNING_RATE)
    assert [g["name"] for g in parameter_groups(model, config)] == [
        "head",
        "head-no-decay",
        "backbone",
        "backbone-no-decay",
    ]
    flat = rates_by_name(model, layer_decay=1.0)  # decay 1: one backbone rate, layer groups or not
    assert {rate for name, (rate, _, _) in flat.items() if name.startswith("encoder.")} == {LEARNING_RATE}


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_layer_decay_out_of_range_is_a_one_line_error(value):
    with pytest.raises(PoolftError, match=r"train.layer_decay must be in \(0, 1\]") as error:
        load_config(None, [f"--train.layer_decay={value}"])
    assert "\n" not in str(error.value)


def test_a_run_with_layer_decay_logs_the_top_rate(tmp_path, tiny_bert_dir):
    files = write_sentiment_csv(tmp_path / "data", train_size=32, eval_size=8)
    config = load_config(
        None,
        [
            f"--data.data_files={json.dumps(files)}",
            "--data.text_column=text",
            f"--model.backbone={tiny_bert_dir}",
            f"--train.output_dir={tmp_path / 'run'}",
            "--train.batch_size=16",
            "--train.scheduler=constant",
            "--train.warmup_steps=0",
            f"--train.learning_rate={LEARNING_RATE}",
            "--train.layer_decay=0.5",
            "--train.progress=false",
            "--train.mixed_precision=no",
        ],
    )
    assert train(config)["global_step"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # poolft's BERT has no parameter above its two blocks: the top block trains at learning_rate * 0.5
    assert [r["lr"] for r in records if "loss" in r] == [LEARNING_RATE * 0.5] * 2
