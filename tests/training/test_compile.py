"""``train.compile``: compiled training matches eager within float tolerance, resumes bit for bit,
and saves plain Hugging Face models; ``data.pad_to_multiple_of`` pads on the right with mask 0.

Compiling takes tens of seconds on a small CPU, so the default tests share three short runs on one
batch shape (every batch padded to ``data.max_length``: one graph), plus one compiled run on two
processes. The 50-step comparison in fp32 and bf16 (minutes of compiling on a small CPU) is left to
a benchmark script, not the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_bert
from datasets_for_tests import write_sentiment_csv
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import poolft
import poolft.training.loop
from poolft.config import load_config
from poolft.data.text import TextCollator
from poolft.training.compilation import graph_budget, mark_token_axis_dynamic
from poolft.training.loop import train

MAX_LENGTH = 24  # the sentiment sentences are shorter: padded to 24, every batch has one shape


def run_arguments(tmp_path: Path, backbone: Path, output: str, *extra: str) -> list[str]:
    """64 training rows in batches of 16 (4 full batches per epoch), padded to one length."""
    files = write_sentiment_csv(tmp_path / "data", train_size=64, eval_size=16)
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--data.max_length={MAX_LENGTH}",
        f"--data.pad_to_multiple_of={MAX_LENGTH}",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=16",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.torch_threads=1",
        *extra,
    ]


def logged_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def one_layer_bert(tmp_path_factory) -> Path:
    """The tiny BERT with one layer: half the kernels to compile."""
    return build_tiny_bert(tmp_path_factory.mktemp("one-layer-bert"), num_hidden_layers=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_layer_bert):
    """An eager run, a compiled run, and a compiled run interrupted at step 6 (after the step-4
    checkpoint) and resumed; 8 steps each.

    Dropout stays on (poolft's CPU dropout, ``train.fast_kernels``): compiled steps draw the same
    masks, given the same batch shapes (so the eager run pads as the compiled ones do: a mask is
    drawn for every column, padding included).
    """
    root, tiny_bert_dir = tmp_path_factory.mktemp("compile"), one_layer_bert
    steps = ("--train.max_steps=8", "--train.save_every_steps=4")
    train(load_config(None, run_arguments(root, tiny_bert_dir, "eager", *steps)))
    compiled = (*steps, "--train.compile=true")
    straight = train(load_config(None, run_arguments(root, tiny_bert_dir, "compiled", *compiled)))
    interrupted = load_config(None, run_arguments(root, tiny_bert_dir, "resumed", *compiled))
    original_write = poolft.training.loop.StepLog.write

    def crash_at_step_6(self, record):  # after the checkpoint of step 4, mid-way to the next one
        original_write(self, record)
        if record.get("step") == 6 and "loss" in record:
            raise SimulatedCrash

    poolft.training.loop.StepLog.write = crash_at_step_6
    try:
        with pytest.raises(SimulatedCrash):
            train(interrupted)
    finally:
        poolft.training.loop.StepLog.write = original_write
    interrupted.train.resume_from_checkpoint = "latest"
    resumed = train(interrupted)
    return root, straight, resumed


def test_compiled_training_matches_eager_within_float32_tolerance(runs):
    root, straight, _ = runs
    eager, compiled = logged_losses(root / "eager"), logged_losses(root / "compiled")
    assert len(eager) == len(compiled) == 8
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    first, second = load_file(root / "eager" / "model.safetensors"), load_file(root / "compiled" / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-3, atol=1e-4)
    assert straight["compile"]["graphs"] >= 1  # and the graphs were counted in metrics.json
    assert 0 < straight["compile"]["seconds"] <= straight["train_seconds"]


def test_compiled_run_resumed_ends_with_the_uninterrupted_weights_bit_for_bit(runs):
    root, straight, resumed = runs
    assert resumed["global_step"] == straight["global_step"] == 8
    assert logged_losses(root / "resumed")[-2:] == logged_losses(root / "compiled")[-2:]
    first = load_file(root / "compiled" / "model.safetensors")
    second = load_file(root / "resumed" / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_compiled_run_saves_plain_names_that_auto_classes_load(runs):
    root, _, _ = runs
    run = root / "compiled"
    weights = [run / "model.safetensors", *sorted((run / "checkpoints").rglob("*.safetensors"))]
    for path in weights:
        assert not [key for key in load_file(path) if "_orig_mod" in key], path
    model = AutoModelForSequenceClassification.from_pretrained(run)
    assert isinstance(model, poolft.PoolftForSequenceClassification)
    tokenizer = AutoTokenizer.from_pretrained(run)
    batch = tokenizer(["a great film", "an awful plot"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_padding_to_a_multiple_stays_on_the_right_with_mask_zero(tiny_bert_dir, tiny_texts):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [dict(tokenizer(text)) for text in tiny_texts]
    plain = TextCollator(tokenizer)(examples)
    padded = TextCollator(tokenizer, pad_to_multiple_of=8, max_length=20)(examples)
    width = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == min(-(-width // 8) * 8, 20) >= width
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(padded[key][:, :width], plain[key])
        assert not padded[key][:, width:].any()  # pad id 0, mask 0, token type 0
    # never past max_length, never shorter than the longest text
    assert TextCollator(tokenizer, pad_to_multiple_of=16, max_length=14)(examples)["input_ids"].shape[1] == max(
        width, 14
    )
    model = poolft.PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="mean", num_labels=2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**padded).logits, model(**plain).logits, rtol=1e-5, atol=1e-6
        )  # a mask-correct head ignores the extra padding


def test_compile_budgets_a_graph_per_length():
    assert graph_budget(128, 16) == 18  # 8 lengths, each for a full and a short batch, + 2
    assert graph_budget(64, None) == 130  # where dynamo specialises the token axis: one per length


def test_token_axis_is_marked_dynamic_on_text_inputs_only():
    batch = {"input_ids": torch.zeros(2, 5), "attention_mask": torch.ones(2, 5), "labels": torch.zeros(2, 3)}
    mark_token_axis_dynamic(batch)
    assert 1 in getattr(batch["input_ids"], "_dynamo_weak_dynamic_indices", set())
    assert 1 in getattr(batch["attention_mask"], "_dynamo_weak_dynamic_indices", set())
    assert not getattr(batch["labels"], "_dynamo_weak_dynamic_indices", set())  # multi-hot labels keep their shape


def test_compiled_run_over_many_batch_lengths_compiles_one_graph_and_tracks_eager(
    tmp_path, one_layer_bert, monkeypatch
):
    """No ``pad_to_multiple_of``: batches keep their own longest length (several lengths), the
    compiled run pads as the eager one does, so it draws the same dropout masks and its losses
    track eager's; the dynamic token axis serves every length with one graph."""
    files = write_sentiment_csv(tmp_path / "data", train_size=96, eval_size=16)
    common = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        "--data.max_length=64",
        f"--model.backbone={one_layer_bert}",
        "--train.batch_size=8",
        "--train.max_steps=8",
        "--train.learning_rate=1e-3",
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.torch_threads=1",
        "--train.save_at_end=false",
    ]
    train(load_config(None, [*common, f"--train.output_dir={tmp_path / 'eager'}"]))
    lengths = []

    def record_and_mark(batch):
        lengths.append(batch["input_ids"].shape[1])
        mark_token_axis_dynamic(batch)

    monkeypatch.setattr(poolft.training.loop, "mark_token_axis_dynamic", record_and_mark)
    metrics = train(load_config(None, [*common, f"--train.output_dir={tmp_path / 'compiled'}", "--train.compile=true"]))
    assert len(lengths) == 8 and len(set(lengths)) >= 3, lengths  # the batches really have several lengths
    eager, compiled = logged_losses(tmp_path / "eager"), logged_losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 8
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    assert 1 <= metrics["compile"]["graphs"] <= 2, metrics["compile"]
    assert metrics["compile"]["steps"] <= 2  # the other steps, at other lengths, reused the graph


def test_compiled_run_on_two_processes_trains(tmp_path, one_layer_bert):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "poolft",
        "train",
        *run_arguments(tmp_path, one_layer_bert, "ddp", "--train.max_steps=4", "--train.compile=true"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["global_step"] == 4
    assert metrics["compile"]["graphs"] >= 1
