"""Multi-label classification: list labels or 0/1 columns -> multi-hot labels, sigmoid outputs, BCE loss,
micro/macro-F1 and exact match, all-label predictions, and one-line errors for malformed label columns."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, pipeline

import poolft
from poolft.cli import main
from poolft.config import DataConfig
from poolft.data.images import ImageCollator
from poolft.data.labels import MULTI_LABEL
from poolft.data.sampling import shard_batch
from poolft.data.sources import load_splits
from poolft.metrics import multi_label_metrics
from poolft.models.modeling import per_example_loss
from poolft.training.loop import share_loss

#: each topic's words (all in the tiny BERT vocabulary); a row carries every topic whose word it holds
TOPICS = {"pets": ["cat", "dog"], "cinema": ["movie", "film", "actor", "scene"], "praise": ["good", "great", "best"]}
FILLER = ["the", "a", "is", "was", "very", "so", "and", "it"]
LABELS = sorted(TOPICS)


def topic_rows(count: int, seed: int) -> list[tuple[str, list[str]]]:
    """``(text, topics)`` rows: each topic present with p=0.5 (some rows have none)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        topics = [topic for topic in LABELS if rng.random() < 0.5]
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 6))] + [rng.choice(TOPICS[t]) for t in topics]
        rng.shuffle(words)
        rows.append((" ".join(words), topics))
    return rows


def write_list_labels(folder, train: int = 96, evaluation: int = 32, *, as_ints: bool = False) -> dict[str, str]:
    """``train.jsonl`` / ``validation.jsonl`` whose ``label`` is a list of topics (or of topic indices)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size, seed in (("train", train, 0), ("validation", evaluation, 1)):
        path = folder / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for text, topics in topic_rows(size, seed):
                label = [LABELS.index(t) for t in topics] if as_ints else topics
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
        files[split] = str(path)
    return files


def write_label_columns(folder, train: int = 96, evaluation: int = 32) -> dict[str, str]:
    """``train.csv`` / ``validation.csv`` with a text column and one 0/1 column per topic."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size, seed in (("train", train, 0), ("validation", evaluation, 1)):
        path = folder / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", *LABELS])
            for text, topics in topic_rows(size, seed):
                writer.writerow([text, *(int(t in topics) for t in LABELS)])
        files[split] = str(path)
    return files


def train_args(files: dict[str, str], backbone, output, *extra: str) -> list[str]:
    return [
        "train",
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={output}",
        "--train.batch_size=16",
        "--train.epochs=3",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.progress=false",
        "--train.mixed_precision=no",
        *extra,
    ]


def hand_metrics(predictions: list[list[int]], references: list[list[int]]) -> dict[str, float]:
    """micro-F1, macro-F1 (every label, 0 for a label neither predicted nor present) and exact match, by loops."""
    labels = len(references[0])
    tp, fp, fn = [0] * labels, [0] * labels, [0] * labels
    exact = 0
    for predicted, actual in zip(predictions, references, strict=True):
        exact += predicted == actual
        for j in range(labels):
            tp[j] += predicted[j] == 1 and actual[j] == 1
            fp[j] += predicted[j] == 1 and actual[j] == 0
            fn[j] += predicted[j] == 0 and actual[j] == 1
    per_label = [2 * tp[j] / (2 * tp[j] + fp[j] + fn[j]) if 2 * tp[j] + fp[j] + fn[j] else 0.0 for j in range(labels)]
    micro_denominator = 2 * sum(tp) + sum(fp) + sum(fn)
    return {
        "micro_f1": 2 * sum(tp) / micro_denominator if micro_denominator else 0.0,
        "macro_f1": sum(per_label) / labels,
        "exact_match": exact / len(references),
    }


def test_list_labels_and_label_columns_become_the_same_multi_hot_labels(tmp_path):
    lists = load_splits(DataConfig(data_files=write_list_labels(tmp_path / "lists"), text_column="text"))
    columns = load_splits(
        DataConfig(data_files=write_label_columns(tmp_path / "columns"), text_column="text", label_columns=LABELS)
    )
    ints = load_splits(DataConfig(data_files=write_list_labels(tmp_path / "ints", as_ints=True), text_column="text"))
    expected = [[float(label in topics) for label in LABELS] for _, topics in topic_rows(96, 0)]
    for splits in (lists, columns, ints):
        assert splits.multi_label
        assert splits.train["labels"] == expected
        assert splits.train.features["labels"].feature.dtype == "float32"
    assert lists.label_names == columns.label_names == LABELS
    assert ints.label_names == ["0", "1", "2"]


@pytest.mark.parametrize("layout", ["lists-poolft-head", "columns-stock-head"])
def test_multi_label_run_trains_evaluates_and_predicts_every_label(tmp_path, tiny_bert_dir, capsys, layout):
    if layout.startswith("lists"):
        files, extra = write_list_labels(tmp_path / "data"), ["--model.pooler=mean", "--train.metric_for_best=micro_f1"]
    else:
        files = write_label_columns(tmp_path / "data")
        extra = [f"--data.label_columns={json.dumps(LABELS)}", "--model.stock_head=true"]
    run = tmp_path / "run"
    assert main(train_args(files, tiny_bert_dir, run, *extra)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert metrics["label_names"] == LABELS and final["samples"] == 32
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert sum(losses[-6:]) < sum(losses[:6])  # it learns
    # the metrics are those of the per-example 0/1 predictions at threshold 0.5
    examples = json.loads((run / "eval_predictions.json").read_text())
    assert examples["references"] == [[int(label in topics) for label in LABELS] for _, topics in topic_rows(32, 1)]
    expected = hand_metrics(examples["predictions"], examples["references"])
    for key, value in expected.items():
        assert final[key] == pytest.approx(value, abs=1e-12), key
    assert final["accuracy"] == final["exact_match"]

    config = json.loads((run / "config.json").read_text())
    assert config["problem_type"] == MULTI_LABEL
    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    assert model.config.problem_type == MULTI_LABEL
    assert isinstance(model, poolft.PoolftForSequenceClassification) == layout.startswith("lists")

    capsys.readouterr()
    assert main(["eval", "--model", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for key in ("micro_f1", "macro_f1", "exact_match", "accuracy", "loss"):
        assert evaluated[key] == pytest.approx(final[key], abs=1e-6), key

    texts = ["the cat was great", "a movie"]
    classify = pipeline("text-classification", model=str(run), top_k=None)
    encoded = classify.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        sigmoid = model(**encoded).logits.sigmoid()
    for row, predicted in enumerate(classify(texts)):
        assert sorted(p["label"] for p in predicted) == LABELS
        for p in predicted:
            assert p["score"] == pytest.approx(float(sigmoid[row, model.config.label2id[p["label"]]]), abs=1e-5)

    assert main(["predict", "--model", str(run), "--json", *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, line in enumerate(lines):
        assert sorted(line["scores"]) == LABELS
        for label, score in line["scores"].items():
            assert score == pytest.approx(float(sigmoid[row, model.config.label2id[label]]), abs=1e-5)
        assert line["labels"] == [label for label, score in line["scores"].items() if score > 0.5]


def test_a_multi_label_probe_trains_on_cached_states(tmp_path, tiny_bert_dir):
    files = write_list_labels(tmp_path / "data", train=32, evaluation=16)
    extra = [
        "--train.freeze_backbone=true",
        "--train.feature_cache=true",
        f"--train.feature_cache_dir={tmp_path / 'c'}",
    ]
    assert main(train_args(files, tiny_bert_dir, tmp_path / "run", "--train.epochs=1", *extra)) == 0
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert {"micro_f1", "macro_f1", "exact_match"} <= set(final) and final["samples"] == 16


def test_poolft_and_stock_heads_compute_bce_with_logits(tiny_bert_dir):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 60, (4, 7), generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    poolft_head = poolft.PoolftForSequenceClassification.from_backbone(
        str(tiny_bert_dir), num_labels=3, problem_type=MULTI_LABEL
    ).eval()
    stock_head = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, problem_type=MULTI_LABEL
    ).eval()
    for model in (poolft_head, stock_head):
        output = model(input_ids=input_ids, labels=labels)
        expected = F.binary_cross_entropy_with_logits(output.logits, labels)
        assert torch.allclose(output.loss, expected, atol=1e-6)
        assert torch.allclose(per_example_loss(output.logits, labels).mean(), expected, atol=1e-6)
    # label smoothing e: each label's target y (1 - e) + e / 2
    poolft_head.label_smoothing = 0.2
    output = poolft_head(input_ids=input_ids, labels=labels)
    assert torch.allclose(output.loss, F.binary_cross_entropy_with_logits(output.logits, labels * 0.8 + 0.1), atol=1e-6)


def test_multi_label_metrics_equal_hand_computed_ones():
    rng = np.random.default_rng(0)
    for rows, labels in ((20, 4), (7, 1), (50, 6)):
        predictions = rng.integers(0, 2, (rows, labels)).tolist()
        references = rng.integers(0, 2, (rows, labels)).tolist()
        references[0] = predictions[0]  # at least one exact match
        for column in range(labels):  # a label neither predicted nor present scores 0
            if column == labels - 1:
                for row in range(rows):
                    predictions[row][column] = references[row][column] = 0
        got = multi_label_metrics(predictions, references)
        for key, value in hand_metrics(predictions, references).items():
            assert got[key] == pytest.approx(value, abs=1e-12), key
        assert got["accuracy"] == got["exact_match"]


@pytest.mark.parametrize(("rows", "processes", "share_size"), [(3, 2, 2), (1, 2, 2), (8, 2, 4), (5, 3, 2)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_two_shares_give_the_one_process_bce_loss_and_gradient(rows, processes, share_size, label_smoothing):
    generator = torch.Generator().manual_seed(rows)
    features = torch.randn(rows, 5, generator=generator)
    labels = torch.randint(0, 2, (rows, 3), generator=generator).float()
    weight = torch.randn(5, 3, generator=generator)
    targets = labels * (1 - label_smoothing) + label_smoothing / 2
    parameter = weight.clone().requires_grad_(True)
    one_process = F.binary_cross_entropy_with_logits(features @ parameter, targets)
    (expected,) = torch.autograd.grad(one_process, parameter)
    keys = shard_batch(list(range(rows)), processes, share_size)
    gradients, losses = [], []
    for rank in range(processes):
        share = keys[rank * share_size : (rank + 1) * share_size]
        index = torch.tensor([k.index for k in share])
        weights = torch.tensor([k.weight for k in share])
        parameter = weight.clone().requires_grad_(True)
        logits = features[index] @ parameter
        own = F.binary_cross_entropy_with_logits(logits, labels[index] * (1 - label_smoothing) + label_smoothing / 2)
        outputs = SimpleNamespace(logits=logits, loss=own)
        loss = share_loss(
            outputs, {"labels": labels[index]}, weights, share[0].batch_rows, processes, label_smoothing=label_smoothing
        )
        losses.append(loss.detach())
        gradients.append(torch.autograd.grad(loss, parameter)[0])
    assert torch.allclose(torch.stack(gradients).mean(0), expected, atol=1e-6)  # what DDP's average gives
    assert torch.allclose(torch.stack(losses).mean(), one_process.detach(), atol=1e-6)


def test_image_batches_stack_multi_hot_labels():
    collate = ImageCollator(SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3))
    examples = [
        {"pixels": np.zeros((3, 4, 4), np.uint8), "labels": np.array([1.0, 0.0, 1.0], np.float32)},
        {"pixels": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0.0, 0.0, 0.0], np.float32)},
    ]
    labels = collate(examples)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("poolft: error:"), err
    return err[0]


def test_a_column_mixing_lists_and_single_labels_is_a_one_line_error(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    files = write_list_labels(tmp_path / "data", train=8, evaluation=4)
    path = Path(files["train"])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"text": "the cat", "label": "pets"})  # row 3: one label, not a list
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(train_args(files, tiny_bert_dir, tmp_path / "run")) == 2
    line = one_line_error(capsys)
    assert "row 3" in line and "'label'" in line and "mixes lists and single labels" in line
    assert "row 3 holds 'pets'" in line  # the single label named is the one in row 3
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_list_label_never_seen_in_training_is_a_one_line_error(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    files = write_list_labels(tmp_path / "data", train=8, evaluation=4)
    with open(files["validation"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "a zebra", "label": ["pets", "zebras"]}) + "\n")
    capsys.readouterr()
    assert main(train_args(files, tiny_bert_dir, tmp_path / "run")) == 2
    line = one_line_error(capsys)
    assert "row 5" in line and "'zebras'" in line and "'validation'" in line


def test_label_columns_must_hold_zero_or_one(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    files = write_label_columns(tmp_path / "data", train=8, evaluation=4)
    path = Path(files["train"])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",2"  # row 1's last column (praise) holds 2
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(train_args(files, tiny_bert_dir, tmp_path / "run", f"--data.label_columns={json.dumps(LABELS)}")) == 2
    line = one_line_error(capsys)
    assert "'praise'" in line and "row 1" in line and "0 or 1" in line


def test_multi_label_metric_for_best_on_single_label_data_is_a_one_line_error(
    tmp_path, tiny_bert_dir, capsys, quiet_libraries
):
    from datasets_for_tests import write_sentiment_csv

    files = write_sentiment_csv(tmp_path / "data", train_size=8, eval_size=4)
    capsys.readouterr()
    assert main(train_args(files, tiny_bert_dir, tmp_path / "run", "--train.metric_for_best=exact_match")) == 2
    assert "multi-label metric" in one_line_error(capsys)


@pytest.mark.parametrize("head", ["poolft", "stock"])
def test_two_processes_train_a_multi_label_run_with_label_smoothing_like_one(tmp_path, tiny_bert_dir, head):
    """23 rows in global batches of 4 (last one 3): smoothed BCE shares on 2 processes give the 1-process run."""
    from test_train_distributed import no_dropout_copy, train_on_one_and_two_processes

    backbone = no_dropout_copy(tiny_bert_dir, tmp_path / "backbone")
    if head == "poolft":
        files, extra = write_list_labels(tmp_path / "data", train=23, evaluation=7), ["--model.pooler=mean"]
    else:
        files = write_label_columns(tmp_path / "data", train=23, evaluation=7)
        extra = [f"--data.label_columns={json.dumps(LABELS)}", "--model.stock_head=true"]
    arguments = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        "--train.batch_size=4",
        "--train.eval_batch_size=8",
        "--train.epochs=1",
        "--train.label_smoothing=0.1",
        *extra,
    ]
    (one, one_losses, one_evals), (two, two_losses, two_evals) = train_on_one_and_two_processes(tmp_path, arguments)
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert len(one_losses) == 6 and two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-5)
    assert one_evals == two_evals == [7]
    for key in ("micro_f1", "macro_f1", "exact_match"):
        assert two["final"][key] == one["final"][key]
    assert two["final"]["loss"] == pytest.approx(one["final"]["loss"], rel=1e-4)


def test_multi_label_compare_gives_intervals_from_exact_matches(tmp_path, tiny_bert_dir, capsys):
    """Each seed record stores every row's label set (as a bitmask id), so the paired bootstrap of
    exact matches runs for multi-label heads too; equal ids are exactly the rows with every label right."""
    from poolft.recipes.significance import decode_predictions

    files = write_list_labels(tmp_path / "topics")
    output = tmp_path / "compare"
    arguments = [
        "compare",
        f"--model.backbone={tiny_bert_dir}",
        f"--data.data_files={json.dumps(files)}",
        "--data.max_length=32",
        "--train.batch_size=16",
        "--train.mixed_precision=no",
        f"--train.feature_cache_dir={tmp_path / 'cache'}",
        *("--poolers", "stock,mean", "--seeds", "0,1", "--rates", "1e-1", "--workers", "1", "--output", str(output)),
    ]
    assert main(arguments) == 0
    mean_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mean |"))
    assert "[" in mean_row.split("|")[6]  # the 95% CI column holds an interval, not "—"
    for path in sorted((output / "results").rglob("*-seed*.json")):
        record = json.loads(path.read_text())
        predicted, references = decode_predictions(record["predictions"])
        run = output / "runs" / "compare" / "probe" / path.stem
        examples = json.loads((run / "eval_predictions.json").read_text())
        exact = [
            all(bool(p) == bool(r) for p, r in zip(row_p, row_r, strict=True))
            for row_p, row_r in zip(examples["predictions"], examples["references"], strict=True)
        ]
        assert (predicted == references).tolist() == exact
        assert np.mean(exact) == pytest.approx(record["final"]["accuracy"])
