"""LP-FT (``train.head_warmup_epochs``): the same as its two stages run by hand, resumable, and checked.

By hand: a probe run (frozen backbone, cached states, the head alone) into folder A, then a
fine-tune with ``model.head_from A``. The one-command run must give the same weights bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets_for_tests import write_image_folder, write_sentiment_csv
from safetensors.torch import load_file

import poolft.training.loop
from poolft.cli import main
from poolft.config import load_config
from poolft.training.loop import train


def text_overrides(tmp_path, backbone, output, *extra: str) -> list[str]:
    files = write_sentiment_csv(tmp_path / "data", train_size=48, eval_size=16)
    return [
        f"--model.backbone={backbone}",
        "--model.pooler=attention",
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        "--data.max_length=32",
        "--train.epochs=1",
        "--train.batch_size=8",
        "--train.learning_rate=1e-3",
        "--train.save_best_model=false",
        "--train.progress=false",
        "--train.mixed_precision=no",
        f"--train.feature_cache_dir={tmp_path / 'cache'}",
        f"--train.output_dir={output}",
        *extra,
    ]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(first, second) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_lpft_equals_probe_then_fine_tune_by_hand(tmp_path, tiny_bert_dir):
    probe_dir, by_hand_dir, lpft_dir = tmp_path / "probe", tmp_path / "by-hand", tmp_path / "lpft"
    probe = load_config(
        None,
        text_overrides(
            tmp_path,
            tiny_bert_dir,
            probe_dir,
            "--train.epochs=2",
            "--train.freeze_backbone=true",
            "--train.feature_cache=true",
        ),
    )
    train(probe)
    fine_tune = load_config(
        None, text_overrides(tmp_path, tiny_bert_dir, by_hand_dir, f"--model.head_from={probe_dir}")
    )
    by_hand = train(fine_tune)

    lpft = load_config(None, text_overrides(tmp_path, tiny_bert_dir, lpft_dir, "--train.head_warmup_epochs=2"))
    metrics = train(lpft)

    # stage 1 is the probe run, stage 2 the fine-tune from its head
    assert_same_weights(weights(probe_dir), weights(lpft_dir / "head_warmup"))
    assert_same_weights(weights(by_hand_dir), weights(lpft_dir))
    assert metrics["final"] == by_hand["final"]
    assert (
        metrics["head_warmup"]["final"]["accuracy"]
        == json.loads((probe_dir / "metrics.json").read_text())["final"]["accuracy"]
    )
    assert metrics["head_warmup"]["feature_cache"] is True
    # the whole model moved in stage 2, the head started from stage 1
    start = weights(probe_dir)
    end = weights(lpft_dir)
    assert not torch.equal(
        start["encoder.embeddings.word_embeddings.weight"], end["encoder.embeddings.word_embeddings.weight"]
    )
    assert json.loads((lpft_dir / "metrics.json").read_text())["head_warmup"]["epochs"] == 2
    # config.yaml records the one-command run (repeatable with --config)
    again = load_config(lpft_dir / "config.yaml")
    assert again.train.head_warmup_epochs == 2 and again.model.head_from is None


def test_lpft_resumes_in_stage_2_and_reuses_stage_1(tmp_path, tiny_bert_dir, monkeypatch):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    extra = ("--train.head_warmup_epochs=1", "--train.save_every_steps=2")
    train(load_config(None, text_overrides(tmp_path, tiny_bert_dir, straight_dir, *extra)))

    interrupted = load_config(None, text_overrides(tmp_path, tiny_bert_dir, resumed_dir, *extra))
    original = poolft.training.loop.StepLog.write
    calls = {"stage2_steps": 0}

    class Crash(RuntimeError):
        pass

    def crash_in_stage_2(self, record):
        original(self, record)
        if "loss" in record and "head_warmup" not in str(self.stream.name if self.stream else ""):
            calls["stage2_steps"] += 1
            if calls["stage2_steps"] == 5:
                raise Crash

    monkeypatch.setattr(poolft.training.loop.StepLog, "write", crash_in_stage_2)
    with pytest.raises(Crash):
        train(interrupted)
    monkeypatch.setattr(poolft.training.loop.StepLog, "write", original)
    warm_before = weights(resumed_dir / "head_warmup")
    warm_log = (resumed_dir / "head_warmup" / "log.jsonl").read_text()

    interrupted.train.resume_from_checkpoint = "latest"
    train(interrupted)
    # stage 1 was not run again, stage 2 resumed: the same result as the uninterrupted run
    assert (resumed_dir / "head_warmup" / "log.jsonl").read_text() == warm_log
    assert_same_weights(warm_before, weights(resumed_dir / "head_warmup"))
    assert_same_weights(weights(straight_dir), weights(resumed_dir))


def test_lpft_on_images_and_the_stock_head(tmp_path, tiny_vit_dir):
    images = write_image_folder(tmp_path / "images", {"train": 12, "test": 4})
    for head in ("--model.pooler=mean", "--model.stock_head=true"):
        output = tmp_path / head.split(".")[-1]
        config = load_config(
            None,
            [
                f"--model.backbone={tiny_vit_dir}",
                head,
                f"--data.path={images}",
                "--data.eval_split=test",
                "--train.epochs=1",
                "--train.batch_size=8",
                "--train.head_warmup_epochs=1",
                "--train.save_best_model=false",
                "--train.progress=false",
                f"--train.feature_cache_dir={tmp_path / 'cache'}",
                f"--train.output_dir={output}",
            ],
        )
        metrics = train(config)
        # the stock head has no cached split: its warmup runs the frozen backbone (classifier alone)
        assert metrics["head_warmup"]["feature_cache"] is ("pooler=mean" in head)
        assert metrics["final"]["samples"] == 8


def test_lpft_without_saving_the_final_model_still_saves_the_warmed_head(tmp_path, tiny_bert_dir):
    output = tmp_path / "out"
    overrides = text_overrides(tmp_path, tiny_bert_dir, output, "--train.head_warmup_epochs=1")
    config = load_config(None, [*overrides, "--train.save_model=false", "--train.save_at_end=false"])
    metrics = train(config)
    assert (output / "metrics.json").is_file() and metrics["head_warmup"]["final"]["samples"] > 0
    assert list((output / "head_warmup").glob("*.safetensors"))  # stage 2 started from this head
    assert not list(output.glob("*.safetensors")) and not (output / "config.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train.head_warmup_epochs=1", "--train.freeze_backbone=true"], "drop train.freeze_backbone"),
        (["--train.head_warmup_epochs=1", "--model.head_from=somewhere"], "drop model.head_from"),
        (["--model.head_from=/no/such/run"], "holds no saved model"),
    ],
)
def test_lpft_mistakes_are_one_line(tmp_path, tiny_bert_dir, capsys, quiet_libraries, extra, message):
    overrides = text_overrides(tmp_path, tiny_bert_dir, tmp_path / "out", *extra)
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_head_from_another_pooler_is_one_line(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    probe_dir = tmp_path / "probe"
    probe = text_overrides(tmp_path, tiny_bert_dir, probe_dir, "--train.freeze_backbone=true", "--model.pooler=mean")
    assert main(["train", *probe]) == 0
    capsys.readouterr()
    attention = text_overrides(tmp_path, tiny_bert_dir, tmp_path / "ft", f"--model.head_from={probe_dir}")
    assert main(["train", *attention]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "same pooler" in err, err


def test_head_from_another_kind_of_head_is_one_line(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    """Same shapes are not enough: a mean head's classifier must not start a max head or a stock head."""
    probe_dir = tmp_path / "probe"
    probe = text_overrides(tmp_path, tiny_bert_dir, probe_dir, "--train.freeze_backbone=true", "--model.pooler=mean")
    assert main(["train", *probe]) == 0
    capsys.readouterr()
    for index, other in enumerate(("--model.pooler=max", "--model.stock_head=true")):
        output = tmp_path / f"ft{index}"
        arguments = text_overrides(tmp_path, tiny_bert_dir, output, f"--model.head_from={probe_dir}", other)
        assert main(["train", *arguments]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds a poolft mean" in err, err


def test_lpft_with_lora_merged_at_the_end(tmp_path, tiny_bert_dir):
    output = tmp_path / "lora-lpft"
    config = load_config(
        None,
        text_overrides(
            tmp_path,
            tiny_bert_dir,
            output,
            "--train.head_warmup_epochs=1",
            "--model.lora={}",
            "--train.merge_lora_at_end=true",
            "--train.max_steps=3",
        ),
    )
    train(config)
    assert (output / "merged" / "config.json").is_file() and (output / "head_warmup" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "value, message",
    [("-1", "head_warmup_epochs must be 0"), (".nan", "head_warmup_epochs must be a number, got nan")],
)
def test_head_warmup_epochs_must_be_zero_or_positive(value, message):
    from poolft.errors import PoolftError

    with pytest.raises(PoolftError, match=message):
        load_config(None, [f"--train.head_warmup_epochs={value}"])
