"""Predict, eval and ``pipeline`` truncate a text where training did, within the backbone's positions."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    RobertaConfig,
    pipeline,
)

from poolft import PoolftForSequenceClassification
from poolft.cli import main
from poolft.config import DataConfig
from poolft.data.text import check_max_length
from poolft.errors import PoolftError
from poolft.models.backbones import max_positions

LONG_TEXT = "awful acting " * 100  # ~200 word pieces
SHORT_TEXT = "the movie was great"


def bert_with_positions(source, folder, positions: int):
    """The tiny BERT of ``source`` with only ``positions`` position embeddings, and its tokenizer (no limit)."""
    config = AutoConfig.from_pretrained(source)
    config.max_position_embeddings = positions
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert tokenizer.model_max_length > 10**9  # transformers' "no limit" sentinel
    tokenizer.save_pretrained(folder)
    return folder


def probabilities_truncated_at(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """``(texts, labels)``: each text alone, truncated at ``max_length`` by the tokenizer itself."""
    with torch.no_grad():
        logits = [
            model(**tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")).logits
            for text in texts
        ]
    return torch.cat(logits).softmax(-1)


def predicted(run, texts: list[str], capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--json", *texts]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def bert64(tiny_bert_dir, tmp_path_factory):
    return bert_with_positions(tiny_bert_dir, tmp_path_factory.mktemp("bert64"), 64)


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_a_run_trained_at_32_tokens_predicts_evaluates_and_pipelines_at_32(tmp_path, bert64, capsys):
    rows = [{"text": (SHORT_TEXT + " ") * (i % 3 + 1), "label": "pos" if i % 2 else "neg"} for i in range(16)]
    files = {"train": write_rows(tmp_path / "train.csv", rows), "validation": write_rows(tmp_path / "v.csv", rows)}
    run = tmp_path / "run"
    arguments = [
        "train",
        f"--data.data_files={json.dumps(files)}",
        f"--model.backbone={bert64}",
        "--data.max_length=32",
        f"--train.output_dir={run}",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.progress=false",
        "--train.mixed_precision=no",
    ]
    assert main(arguments) == 0
    assert json.loads((run / "tokenizer_config.json").read_text())["model_max_length"] == 32

    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(bert64)  # the backbone's: no limit of its own
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > 64  # untruncated it would not fit the positions
    texts = [LONG_TEXT, SHORT_TEXT]
    expected = probabilities_truncated_at(model, tokenizer, texts, 32)
    for line, reference in zip(predicted(run, texts, capsys), expected, strict=True):
        assert line["label"] == model.config.id2label[int(reference.argmax())]
        assert line["probability"] == pytest.approx(float(reference.max()), abs=1e-5)

    classify = pipeline("text-classification", model=str(run), truncation=True)
    assert classify(LONG_TEXT)[0]["score"] == pytest.approx(float(expected[0].max()), abs=1e-5)

    long_rows = [{"text": LONG_TEXT + "good " * i, "label": ["neg", "pos"][i % 2]} for i in range(4)]
    write_rows(tmp_path / "long" / "validation.csv", long_rows)
    assert main(["eval", "--model", str(run), "--data.path", str(tmp_path / "long")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    probabilities = probabilities_truncated_at(model, tokenizer, [row["text"] for row in long_rows], 32)
    labels = torch.tensor([model.config.label2id[row["label"]] for row in long_rows])
    assert metrics["samples"] == 4
    assert metrics["loss"] == pytest.approx(float(F.nll_loss(probabilities.log(), labels)), abs=1e-5)


def test_a_tokenizer_without_a_limit_is_capped_by_the_backbone_positions(tmp_path, bert64, capsys):
    tokenizer = AutoTokenizer.from_pretrained(bert64)
    torch.manual_seed(0)
    for name, model in {
        "poolft": PoolftForSequenceClassification.from_backbone(str(bert64), pooler="mean", num_labels=2),
        "stock": AutoModelForSequenceClassification.from_pretrained(bert64, num_labels=2),
    }.items():
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)  # model_max_length: the 1e30 sentinel
        expected = probabilities_truncated_at(model.eval(), tokenizer, [LONG_TEXT], 64)[0]
        (line,) = predicted(tmp_path / name, [LONG_TEXT], capsys)
        assert line["probability"] == pytest.approx(float(expected.max()), abs=1e-5), name

        # no config.yaml beside this model: eval's default data.max_length (128) must not apply either
        long_rows = [{"text": LONG_TEXT + "good " * i, "label": f"LABEL_{i % 2}"} for i in range(4)]
        write_rows(tmp_path / "long" / "validation.csv", long_rows)
        assert main(["eval", "--model", str(tmp_path / name), "--data.path", str(tmp_path / "long")]) == 0
        metrics = json.loads(capsys.readouterr().out)
        probabilities = probabilities_truncated_at(model, tokenizer, [row["text"] for row in long_rows], 64)
        labels = torch.tensor([i % 2 for i in range(4)])
        assert metrics["loss"] == pytest.approx(float(F.nll_loss(probabilities.log(), labels)), abs=1e-5), name


def test_roberta_positions_are_512_of_514(family_dir, tmp_path, capsys):
    """RoBERTa numbers positions from padding_idx + 1: the double's 130 embeddings hold 128 tokens."""
    folder = family_dir("roberta")
    config = AutoConfig.from_pretrained(folder)
    assert (config.max_position_embeddings, config.pad_token_id) == (130, 1)
    assert max_positions(config) == 128
    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # roberta-base
    assert max_positions(BertConfig(max_position_embeddings=512, pad_token_id=0)) == 512  # no offset
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(PoolftError, match=r"data.max_length=130 exceeds the backbone's 128 positions"):
        check_max_length(DataConfig(max_length=130), tokenizer, max_positions(config))

    torch.manual_seed(0)
    model = PoolftForSequenceClassification.from_backbone(str(folder), pooler="mean", num_labels=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "the movie was great " * 60
    assert len(tokenizer(text)["input_ids"]) > 128
    expected = probabilities_truncated_at(model.eval(), tokenizer, [text], 128)[0]
    (line,) = predicted(tmp_path, [text], capsys)
    assert line["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
