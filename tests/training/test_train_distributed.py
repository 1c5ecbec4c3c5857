"""Two processes (torchrun, gloo, MULTI_CPU) train like one process with the same global batch.

Each case runs once with ``python -m poolft train`` and once under ``torchrun --nproc_per_node 2``
with dropout off, and demands the same rows trained per epoch, the same logged losses and every
evaluation counting each sample exactly once, with splits that do not cut into even shares: a
short last training batch, an evaluation split smaller than one batch (or than the process count)
and several evaluations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from datasets_for_tests import write_image_folder, write_sentiment_csv

from poolft.config import RunConfig
from poolft.errors import PoolftError
from poolft.training.loop import build_accelerator


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
    """``metrics.json``, the logged training losses and the sample count of each evaluation."""
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    return (
        json.loads((folder / "metrics.json").read_text()),
        losses,
        [r["eval_samples"] for r in log if "eval_samples" in r],
    )


COMMON = [
    "--model.classifier_dropout=0",
    "--train.learning_rate=1e-3",
    "--train.head_learning_rate=1e-2",
    "--train.mixed_precision=no",
    "--train.progress=false",
]


def train_on_one_and_two_processes(tmp_path, arguments):
    """Run ``arguments`` on 1 process and under torchrun on 2; ``read_run`` of each."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single, double = tmp_path / "single", tmp_path / "double"
    run([sys.executable, "-m", "poolft", "train", *COMMON, *arguments, f"--train.output_dir={single}"], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    run([*torchrun, "-m", "poolft", "train", *COMMON, *arguments, f"--train.output_dir={double}"], env)
    return read_run(single), read_run(double)


def assert_same_training(one_run, two_run, *, steps, rows_per_epoch, epochs, eval_rows, evaluations):
    (one, one_losses, one_evals), (two, two_losses, two_evals) = one_run, two_run
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    # each training row once per epoch: a short last batch is not topped up with rows trained twice
    assert one["train_samples_seen"] == two["train_samples_seen"] == rows_per_epoch * epochs
    assert len(one_losses) == len(two_losses) == steps
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-5)
    # every evaluation (not only the first) counts each sample exactly once
    assert one_evals == two_evals == [eval_rows] * evaluations
    assert two["final"]["accuracy"] == one["final"]["accuracy"]
    assert two["final"]["loss"] == pytest.approx(one["final"]["loss"], rel=1e-4)


def test_text_on_two_processes_trains_each_row_once_and_evaluates_each_sample_once(tmp_path, tiny_bert_dir):
    """23 rows in global batches of 4 (last one 3) and 7 evaluation rows in one batch of 8, twice an epoch."""
    backbone = no_dropout_copy(tiny_bert_dir, tmp_path / "backbone")
    files = write_sentiment_csv(tmp_path / "data", train_size=23, eval_size=7)
    arguments = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        "--train.batch_size=4",
        "--train.eval_batch_size=8",
        "--train.epochs=2",
        "--train.eval_every_steps=3",
    ]
    one_run, two_run = train_on_one_and_two_processes(tmp_path, arguments)
    # 6 steps an epoch; evaluations at steps 3, 6, 6 (end of epoch 1), 9 and 12 (the last step)
    assert_same_training(one_run, two_run, steps=12, rows_per_epoch=23, epochs=2, eval_rows=7, evaluations=5)


def test_images_on_two_processes_train_each_row_once_with_fewer_eval_rows_than_processes(tmp_path, tiny_vit_dir):
    """21 images in global batches of 8 (last one 5, shares of 3 + 2) and a 1-image evaluation split."""
    images = write_image_folder(tmp_path / "images", {"train": 11, "validation": 1})
    (images / "train" / "light" / "10.png").unlink()
    (images / "validation" / "light" / "0.png").unlink()
    arguments = [
        f"--data.path={images}",
        f"--model.backbone={tiny_vit_dir}",  # ViT's dropout is 0 by default
        "--train.batch_size=8",
        "--train.epochs=2",
        "--train.eval_every_steps=2",
    ]
    one_run, two_run = train_on_one_and_two_processes(tmp_path, arguments)
    # 3 steps an epoch; evaluations at steps 2, 3 (end of epoch 1), 4 and 6 (the last step)
    assert_same_training(one_run, two_run, steps=6, rows_per_epoch=21, epochs=2, eval_rows=1, evaluations=4)


def test_probe_track_on_two_processes_matches_one_process_with_gradient_accumulation(tmp_path, tiny_bert_dir):
    """Cached frozen states, 23 rows in micro-batches of 2 (last one 1) accumulated 3 at a time."""
    files = write_sentiment_csv(tmp_path / "data", train_size=23, eval_size=5)
    arguments = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={tiny_bert_dir}",
        "--model.pooler=attention",
        "--train.freeze_backbone=true",
        "--train.feature_cache=true",
        f"--train.feature_cache_dir={tmp_path / 'cache'}",
        "--train.batch_size=2",
        "--train.gradient_accumulation_steps=3",
        "--train.epochs=2",
        "--train.eval_every_steps=2",
    ]
    one_run, two_run = train_on_one_and_two_processes(tmp_path, arguments)
    # 12 micro-batches an epoch -> 4 steps; evaluations at steps 2, 4, 4 (end of epoch 1), 6 and 8
    assert_same_training(one_run, two_run, steps=8, rows_per_epoch=23, epochs=2, eval_rows=5, evaluations=5)


def test_a_distributed_timeout_that_is_not_positive_is_refused_in_one_line():
    config = RunConfig()
    config.train.distributed_timeout_seconds = 0
    with pytest.raises(PoolftError, match=r"train.distributed_timeout_seconds=0 must be positive"):
        build_accelerator(config)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def quiet_env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def test_an_ema_run_on_two_processes_resumes_after_a_crash_as_if_it_never_stopped(tmp_path, tiny_bert_dir):
    """Killed inside step 8 (checkpoints at 3 and 6; step 7 logged), resumed on 2 processes: the same losses,
    evaluations and weight average as the run that never stopped, each step logged once; the
    checkpoint refuses a resume on 1 process in one line."""
    backbone = no_dropout_copy(tiny_bert_dir, tmp_path / "backbone")
    files = write_sentiment_csv(tmp_path / "data", train_size=23, eval_size=7)
    arguments = [
        "-m",
        "poolft",
        "train",
        *COMMON,
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        "--train.batch_size=4",
        "--train.epochs=2",
        "--train.eval_every_steps=4",
        "--train.save_every_steps=3",
        "--train.ema_decay=0.9",
    ]
    whole, resumed, copy = tmp_path / "whole", tmp_path / "resumed", tmp_path / "copy"
    run([*TORCHRUN, *arguments, f"--train.output_dir={whole}"], quiet_env())
    crashed = subprocess.run(
        [*TORCHRUN, *arguments, f"--train.output_dir={resumed}"],
        env=quiet_env(POOLFT_FAULT_AT="step:8"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert crashed.returncode != 0 and (resumed / "checkpoints" / "step-6").is_dir()
    shutil.copytree(resumed, copy)
    run([*TORCHRUN, *arguments, f"--train.output_dir={resumed}", "--train.resume_from_checkpoint=latest"], quiet_env())
    (whole_metrics, whole_losses, whole_evals), (metrics, losses, evals) = read_run(whole), read_run(resumed)
    assert len(losses) == 12 and losses == whole_losses
    assert evals == whole_evals and len(evals) >= 3 and set(evals) == {7}  # each evaluation: every row once
    steps = [json.loads(line)["step"] for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (whole / "log.jsonl").read_text().splitlines()]
    assert metrics["final"] == whole_metrics["final"]
    one = subprocess.run(
        [sys.executable, *arguments, f"--train.output_dir={copy}", "--train.resume_from_checkpoint=latest"],
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 2 and "Traceback" not in one.stderr
    assert "was saved by 2 process(es) and this run has 1; resume it with 2" in one.stderr


def test_a_data_mistake_on_two_processes_is_one_line_from_each(tmp_path, tiny_bert_dir):
    """A mistake the main process finds while the others wait for its data pass (an evaluation split
    that is not there): every process prints the line; none dies at the barrier (a gloo traceback)."""
    files = write_sentiment_csv(tmp_path / "data", train_size=8, eval_size=4)
    result = subprocess.run(
        [
            *TORCHRUN,
            "-m",
            "poolft",
            "train",
            *COMMON,
            f"--data.data_files={json.dumps(files)}",
            "--data.text_column=text",
            "--data.eval_split=test",
            f"--model.backbone={tiny_bert_dir}",
            f"--train.output_dir={tmp_path / 'run'}",
        ],
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert result.stderr.count("poolft: error: split 'test' not found (have: train, validation)") == 2
    assert "gloo" not in result.stderr and "Connection" not in result.stderr
    assert not (tmp_path / "run").exists()
