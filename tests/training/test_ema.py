"""``train.ema_decay``: the saved, evaluated and best weights are the average, continued exactly on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from safetensors.torch import load_file

import poolft.training.loop
from poolft.cli import main
from poolft.config import load_config
from poolft.errors import PoolftError
from poolft.training.checkpoints import EMA_FILE
from poolft.training.loop import train

DECAY = 0.8


def ema_run(tmp_path: Path, backbone: Path, output: str, *extra: str) -> list[str]:
    """64 training rows in batches of 16: 4 optimiser steps per epoch, 2 epochs."""
    files = write_sentiment_csv(tmp_path / "data", train_size=64, eval_size=16)
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=16",
        "--train.epochs=2",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.torch_threads=1",
        f"--train.ema_decay={DECAY}",
        *extra,
    ]


def test_the_average_is_the_one_an_independent_loop_computes(tmp_path, tiny_bert_dir, capsys):
    """Every step's trained weights (a checkpoint per step) averaged by hand equal the saved model."""
    arguments = ema_run(tmp_path, tiny_bert_dir, "run", "--train.save_every_steps=1", "--train.save_total_limit=20")
    metrics = train(load_config(None, arguments))
    run = tmp_path / "run"
    assert metrics["global_step"] == 8
    assert metrics["weights"] == "ema" and metrics["ema_decay"] == DECAY
    average = None
    for step in range(1, 9):
        trained = load_file(run / "checkpoints" / f"step-{step}" / "model.safetensors")
        # torch's AveragedModel convention: the first update copies the weights
        average = (
            dict(trained) if average is None else {k: DECAY * average[k] + (1 - DECAY) * trained[k] for k in trained}
        )
        kept = load_file(run / "checkpoints" / f"step-{step}" / EMA_FILE)
        assert int(kept["n_averaged"]) == step
        for name in trained:
            torch.testing.assert_close(kept[name], average[name], rtol=1e-5, atol=1e-6)
    saved = load_file(run / "model.safetensors")
    assert set(trained) <= set(saved)
    for name in trained:
        torch.testing.assert_close(saved[name], average[name], rtol=1e-5, atol=1e-6)
        if name.startswith("classifier."):  # the average is not the last trained weights
            assert not torch.equal(saved[name], trained[name])
    # the reported evaluation is the average's: `poolft eval` of the saved model gives the same numbers
    capsys.readouterr()
    assert main(["eval", "--model", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert evaluated["loss"] == pytest.approx(metrics["final"]["loss"], rel=1e-5)
    # best/ holds the average as it was at the best step
    best_step = metrics["best"]["step"]
    best = load_file(run / "best" / "model.safetensors")
    at_best = load_file(run / "checkpoints" / f"step-{best_step}" / EMA_FILE)
    for name in trained:
        torch.testing.assert_close(best[name], at_best[name], rtol=0, atol=0)


class SimulatedCrash(RuntimeError):
    pass


def test_interrupted_and_resumed_run_saves_the_same_average_bit_for_bit(tmp_path, tiny_bert_dir, monkeypatch):
    straight = load_config(None, ema_run(tmp_path, tiny_bert_dir, "straight", "--train.save_every_steps=2"))
    train(straight)
    interrupted = load_config(None, ema_run(tmp_path, tiny_bert_dir, "resumed", "--train.save_every_steps=2"))
    original_write = poolft.training.loop.StepLog.write

    def crash_at_step_7(self, record):  # after the checkpoint of step 6, mid-way to the next one
        original_write(self, record)
        if record.get("step") == 7 and "loss" in record:
            raise SimulatedCrash

    monkeypatch.setattr(poolft.training.loop.StepLog, "write", crash_at_step_7)
    with pytest.raises(SimulatedCrash):
        train(interrupted)
    monkeypatch.setattr(poolft.training.loop.StepLog, "write", original_write)
    interrupted.train.resume_from_checkpoint = "latest"
    metrics = train(interrupted)
    assert metrics["global_step"] == 8
    for name in ("model.safetensors", "best/model.safetensors"):
        first, second = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (name, key)


def test_resuming_a_checkpoint_saved_without_an_average_says_so(tmp_path, tiny_bert_dir):
    plain = [a for a in ema_run(tmp_path, tiny_bert_dir, "run", "--train.max_steps=2") if "ema_decay" not in a]
    train(load_config(None, plain))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    resumed = load_config(
        None,
        [
            *ema_run(tmp_path, tiny_bert_dir, "other", "--train.max_steps=2"),
            f"--train.resume_from_checkpoint={checkpoint}",
        ],
    )
    with pytest.raises(PoolftError, match="has no weight average .* without train.ema_decay"):
        train(resumed)


@pytest.mark.parametrize("value", [0, 1, 1.5])
def test_ema_decay_out_of_range_is_a_one_line_error(value):
    with pytest.raises(PoolftError, match=r"train.ema_decay must be in \(0, 1\)"):
        load_config(None, [f"--train.ema_decay={value}"])
