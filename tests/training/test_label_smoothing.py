"""``train.label_smoothing``: poolft heads smooth their own loss, the loop smooths a stock head's from its
logits, on 1 process as on N shares; the saved model and the evaluation loss are unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification

import poolft
from poolft.cli import main
from poolft.data.sampling import shard_batch
from poolft.training.loop import share_loss, takes_label_smoothing, without_labels


def text_batch(rows: int = 5, labels: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    return {
        "input_ids": torch.randint(5, 60, (rows, 6), generator=generator),
        "attention_mask": torch.ones(rows, 6, dtype=torch.long),
        "labels": torch.randint(0, labels, (rows,), generator=generator),
    }


def test_a_poolft_head_smooths_its_own_cross_entropy_and_saves_no_smoothing(tmp_path, tiny_bert_dir):
    model = poolft.PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), num_labels=3).eval()
    batch = text_batch()
    assert takes_label_smoothing(model, 0.2) and model.label_smoothing == 0.2
    output = model(**batch)
    expected = F.cross_entropy(output.logits, batch["labels"], label_smoothing=0.2)
    assert torch.allclose(output.loss, expected, atol=1e-6)
    assert not torch.allclose(output.loss, F.cross_entropy(output.logits, batch["labels"]), atol=1e-4)

    model.save_pretrained(tmp_path / "saved")
    assert "label_smoothing" not in (tmp_path / "saved" / "config.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.label_smoothing == 0.0  # inference and a later plain loss are unchanged
    again = reloaded(**batch)
    assert torch.allclose(again.logits, output.logits, atol=1e-6)
    assert torch.allclose(again.loss, F.cross_entropy(output.logits, batch["labels"]), atol=1e-6)


def test_the_loop_smooths_a_stock_heads_loss_from_its_logits(tiny_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).eval()
    batch = text_batch()
    assert not takes_label_smoothing(model, 0.2)  # its forward computes the plain loss
    assert takes_label_smoothing(model, 0.0)
    outputs = model(**without_labels(batch))
    assert outputs.loss is None
    weights = torch.ones(len(batch["labels"]))
    loss = share_loss(outputs, batch, weights, len(batch["labels"]), 1, label_smoothing=0.2)
    expected = F.cross_entropy(outputs.logits, batch["labels"], label_smoothing=0.2)
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize(("rows", "processes", "share_size"), [(3, 2, 2), (1, 2, 2), (8, 2, 4), (5, 3, 2)])
@pytest.mark.parametrize("stock", [False, True])
def test_shares_give_the_one_process_smoothed_gradient(rows, processes, share_size, stock):
    generator = torch.Generator().manual_seed(rows)
    features = torch.randn(rows, 5, generator=generator)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    weight = torch.randn(5, 3, generator=generator)
    parameter = weight.clone().requires_grad_(True)
    one_process = F.cross_entropy(features @ parameter, labels, label_smoothing=0.1)
    (expected,) = torch.autograd.grad(one_process, parameter)
    keys = shard_batch(list(range(rows)), processes, share_size)
    gradients, losses = [], []
    for rank in range(processes):
        share = keys[rank * share_size : (rank + 1) * share_size]
        index = torch.tensor([k.index for k in share])
        weights = torch.tensor([k.weight for k in share])
        parameter = weight.clone().requires_grad_(True)
        logits = features[index] @ parameter
        # a poolft head brings its smoothed loss; a stock head, given no labels, none
        own = None if stock else F.cross_entropy(logits, labels[index], label_smoothing=0.1)
        outputs = SimpleNamespace(logits=logits, loss=own)
        loss = share_loss(
            outputs, {"labels": labels[index]}, weights, share[0].batch_rows, processes, label_smoothing=0.1
        )
        losses.append(loss.detach())
        gradients.append(torch.autograd.grad(loss, parameter)[0])
    assert torch.allclose(torch.stack(gradients).mean(0), expected, atol=1e-6)
    assert torch.allclose(torch.stack(losses).mean(), one_process.detach(), atol=1e-6)


def run_first_loss(tmp_path, backbone, name: str, *extra: str) -> float:
    files = write_sentiment_csv(tmp_path / "data", train_size=16, eval_size=8)
    arguments = [
        "train",
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / name}",
        "--train.batch_size=8",
        "--train.max_steps=1",
        "--train.progress=false",
        "--train.mixed_precision=no",
        *extra,
    ]
    assert main(arguments) == 0
    records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    (loss,) = [record["loss"] for record in records if "loss" in record]
    return loss


def test_a_stock_head_run_trains_on_the_smoothed_loss(tmp_path, tiny_bert_dir):
    plain = run_first_loss(tmp_path, tiny_bert_dir, "plain", "--model.stock_head=true")
    smoothed = run_first_loss(
        tmp_path, tiny_bert_dir, "smoothed", "--model.stock_head=true", "--train.label_smoothing=0.5"
    )
    assert smoothed != pytest.approx(plain, abs=1e-4)  # same seed, same first batch and forward: only the loss differs
    assert "label_smoothing" not in (tmp_path / "smoothed" / "config.json").read_text()
    assert "label_smoothing: 0.5" in (tmp_path / "smoothed" / "config.yaml").read_text()


def test_label_smoothing_outside_zero_to_one_is_a_one_line_error(capsys):
    assert main(["train", "--train.label_smoothing=1.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.label_smoothing must be in [0, 1)" in err[0]
