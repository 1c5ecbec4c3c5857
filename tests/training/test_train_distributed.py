"""Two processes (torchrun, gloo, MULTI_CPU) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from datasets_for_tests import write_sentiment_csv


def no_dropout_copy(backbone, target):
    shutil.copytree(backbone, target)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return target


def run(command, env):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_run(folder):
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return json.loads((folder / "metrics.json").read_text()), [r["loss"] for r in log if "loss" in r]


def test_two_processes_match_one_process(tmp_path, tiny_bert_dir):
    backbone = no_dropout_copy(tiny_bert_dir, tmp_path / "backbone")
    files = write_sentiment_csv(tmp_path / "data", train_size=128, eval_size=47)
    arguments = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        "--model.classifier_dropout=0",
        "--train.batch_size=16",
        "--train.eval_batch_size=10",
        "--train.epochs=2",
        "--train.eval_every_steps=5",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.mixed_precision=no",
        "--train.progress=false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = tmp_path / "single"
    run([sys.executable, "-m", "poolft", "train", *arguments, f"--train.output_dir={single}"], env)
    double = tmp_path / "double"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    run([*torchrun, "-m", "poolft", "train", *arguments, f"--train.output_dir={double}"], env)

    one, one_losses = read_run(single)
    two, two_losses = read_run(double)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert len(one_losses) == len(two_losses) == 16
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-5)
    # every evaluation sample counted exactly once, although 47 does not split into even batches
    assert one["final"]["samples"] == two["final"]["samples"] == 47
    assert two["final"]["accuracy"] == one["final"]["accuracy"]
    assert two["final"]["loss"] == pytest.approx(one["final"]["loss"], rel=1e-4)
