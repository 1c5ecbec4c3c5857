"""``train.early_stopping_patience``: the stop step recomputed from an uninterrupted run's evaluations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets_for_tests import write_sentiment_csv

import poolft.training.loop
from poolft.config import load_config
from poolft.errors import PoolftError
from poolft.training.loop import train

PATIENCE = 2


def stopping_run(tmp_path: Path, backbone: Path, output: str, *extra: str) -> list[str]:
    """An evaluation after every step (64 rows, batches of 8: 8 steps an epoch, 3 epochs), by accuracy."""
    files = write_sentiment_csv(tmp_path / "data", train_size=64, eval_size=16)
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=8",
        "--train.epochs=3",
        "--train.eval_every_steps=1",
        "--train.metric_for_best=accuracy",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--model.classifier_dropout=0",
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.torch_threads=1",
        *extra,
    ]


def evaluations(folder: Path) -> list[tuple[int, float]]:
    """``(step, eval_accuracy)`` of every evaluation in ``log.jsonl``."""
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]


def expected_stop(history: list[tuple[int, float]], patience: int) -> tuple[int, int, float]:
    """``(stop step, best step, best accuracy)`` by the rule, written out independently of poolft."""
    best, best_step, stalled, counted = None, None, 0, None
    for step, accuracy in history:
        if step == counted:  # an epoch's end evaluates the step just evaluated again
            continue
        counted = step
        if best is None or accuracy > best:
            best, best_step, stalled = accuracy, step, 0
        else:
            stalled += 1
        if stalled == patience:
            return step, best_step, best
    raise AssertionError(f"the metric never stalled {patience} times: {history}")


@pytest.fixture
def no_dropout_bert(tmp_path, tiny_bert_dir):
    """The tiny BERT without dropout, so that one and two processes train alike."""
    target = tmp_path / "backbone"
    shutil.copytree(tiny_bert_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture
def full_history(tmp_path, no_dropout_bert):
    """The evaluations of the whole run without early stopping, and where it should have stopped."""
    train(load_config(None, stopping_run(tmp_path, no_dropout_bert, "full")))
    history = evaluations(tmp_path / "full")
    return history, expected_stop(history, PATIENCE)


def test_the_run_stops_where_the_metric_stalled_for_patience_evaluations(
    tmp_path, no_dropout_bert, full_history, capsys
):
    history, (stop, best_step, best) = full_history
    assert stop < 24  # the test needs a stall before the end
    arguments = stopping_run(tmp_path, no_dropout_bert, "stopped", f"--train.early_stopping_patience={PATIENCE}")
    capsys.readouterr()
    metrics = train(load_config(None, arguments))
    run = tmp_path / "stopped"
    assert metrics["global_step"] == stop
    assert evaluations(run) == [(step, accuracy) for step, accuracy in history if step <= stop]
    reason = {"step": stop, "metric": "accuracy", "patience": PATIENCE, "best_metric": best, "best_step": best_step}
    assert metrics["stopped_early"] == reason
    assert json.loads((run / "metrics.json").read_text())["stopped_early"] == reason
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r for r in records if "stopped_early" in r] == [{"step": stop, "stopped_early": reason}]
    printed = [line for line in capsys.readouterr().out.splitlines() if "stopping early" in line]
    assert printed == [
        f"poolft: stopping early at step {stop}: accuracy has not improved for {PATIENCE} evaluation(s) "
        f"(best {best:.4f} at step {best_step})"
    ]
    assert (run / "model.safetensors").is_file() and metrics["best"]["step"] == best_step
    # no stop without the option
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["stopped_early"] is None


class SimulatedCrash(RuntimeError):
    pass


def test_a_resumed_run_keeps_counting_from_its_checkpoint(tmp_path, no_dropout_bert, full_history, monkeypatch):
    """Crash just after an evaluation that did not improve: the resumed run stops at the same step."""
    history, (stop, _, _) = full_history
    arguments = stopping_run(
        tmp_path,
        no_dropout_bert,
        "resumed",
        f"--train.early_stopping_patience={PATIENCE}",
        "--train.save_every_steps=1",
    )
    config = load_config(None, arguments)
    crash_at = stop  # the checkpoint of step stop - 1 holds one stalled evaluation
    original_write = poolft.training.loop.StepLog.write

    def crash(self, record):
        original_write(self, record)
        if record.get("step") == crash_at and "loss" in record:
            raise SimulatedCrash

    monkeypatch.setattr(poolft.training.loop.StepLog, "write", crash)
    with pytest.raises(SimulatedCrash):
        train(config)
    monkeypatch.setattr(poolft.training.loop.StepLog, "write", original_write)
    saved = json.loads((tmp_path / "resumed" / "checkpoints" / f"step-{stop - 1}" / "trainer_state.json").read_text())
    assert saved["evaluations_without_improvement"] == PATIENCE - 1
    config.train.resume_from_checkpoint = "latest"
    metrics = train(config)
    assert metrics["global_step"] == stop and metrics["stopped_early"]["step"] == stop


def test_two_processes_stop_together_at_the_same_step(tmp_path, no_dropout_bert, full_history):
    _, (stop, _, _) = full_history
    arguments = stopping_run(tmp_path, no_dropout_bert, "two", f"--train.early_stopping_patience={PATIENCE}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    result = subprocess.run(
        [*torchrun, "-m", "poolft", "train", *arguments], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    # two processes train like one (tests/training/test_train_distributed.py), so they stop at the same step
    assert metrics["global_step"] == metrics["stopped_early"]["step"] == stop
    assert result.stdout.count("stopping early") == 1  # printed once, by the main process


@pytest.mark.parametrize("value", [0, -1])
def test_patience_below_one_is_a_one_line_error(value):
    with pytest.raises(PoolftError, match="train.early_stopping_patience must be at least 1"):
        load_config(None, [f"--train.early_stopping_patience={value}"])
