"""LoRA through peft (``model.lora``): what trains, what is saved, reloaded and merged, and the mistakes.

Only the adapters and the pooled head train; the run folder's adapter (``modules_to_save`` holding
the head) reloads to the trained logits; ``export-merged`` and ``train.merge_lora_at_end`` write a
plain model that the Auto classes and ``pipeline`` load with peft blocked; resume is bit-exact; a
2-process run trains; every family's default targets exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from families import FAMILIES
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from poolft.cli import main
from poolft.config import LORA_DEFAULTS, ModelConfig, TrainConfig
from poolft.models import backbones, lora
from poolft.pooling import build_pooler
from poolft.training.optim import parameter_groups

pytest.importorskip("peft")

LABELS = ["neg", "pos"]
TEXTS = ["the movie was great", "a boring film with awful acting and a dull plot", "loved it"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def lora_classifier(backbone: Path, pooler: str = "attention", **options):
    model = backbones.build_model(str(backbone), "text", ModelConfig(pooler=pooler), LABELS)
    return lora.apply_lora(model, {**LORA_DEFAULTS, **options}, str(backbone))


def trained_a_little(model) -> None:
    """Move every trainable parameter off its init (LoRA's B starts at zero: the adapter would be a no-op)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def logits_of(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_only_the_adapters_and_the_head_train(tiny_bert_dir):
    model = lora_classifier(tiny_bert_dir, r=4)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    hidden, layers, r = 32, 2, 4
    adapters = layers * 2 * (r * hidden + hidden * r)  # query and value: A (r x in) + B (out x r)
    head = sum(p.numel() for p in build_pooler("attention", hidden).parameters())
    classifier = hidden * len(LABELS) + len(LABELS)
    assert sum(trainable.values()) == adapters + head + classifier
    assert all(".lora_" in name or ".modules_to_save." in name for name in trainable)
    # the backbone's own weights, and the head's frozen originals, do not train
    assert not any(p.requires_grad for name, p in model.named_parameters() if ".original_module." in name)
    # adapters learn at the backbone's rate, the head at head_learning_rate
    config = TrainConfig(learning_rate=1e-4, head_learning_rate=1e-2)
    groups = {group["name"]: group for group in parameter_groups(model, config)}
    backbone_count = sum(p.numel() for name, g in groups.items() if name.startswith("backbone") for p in g["params"])
    assert backbone_count == adapters and all(g["lr"] == 1e-4 for n, g in groups.items() if n.startswith("backbone"))


def test_a_head_parameter_that_is_fixed_stays_fixed(tiny_bert_dir):
    model = lora_classifier(tiny_bert_dir, pooler="gem")
    model_config = ModelConfig(pooler="gem", pooler_options={"learn_p": False})
    fixed = backbones.build_model(str(tiny_bert_dir), "text", model_config, LABELS)
    fixed = lora.apply_lora(fixed, dict(LORA_DEFAULTS), str(tiny_bert_dir))
    p = fixed.get_base_model().pooler.modules_to_save["default"].p
    assert not p.requires_grad
    assert model.get_base_model().pooler.modules_to_save["default"].p.requires_grad


def test_the_saved_adapter_reloads_to_the_trained_logits_and_merges(tmp_path, tiny_bert_dir):
    model = lora_classifier(tiny_bert_dir)
    trained_a_little(model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    expected = logits_of(model, tokenizer)
    lora.save_adapter(model, tmp_path / "run")
    tokenizer.save_pretrained(tmp_path / "run")
    saved = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any("pooler" in key for key in saved) and any("classifier" in key for key in saved)
    assert not any("original_module" in key or "query.base_layer" in key for key in saved)  # no frozen weights
    reloaded = lora.load_lora_classifier(tmp_path / "run")
    torch.testing.assert_close(logits_of(reloaded, tokenizer), expected, rtol=0, atol=0)
    merged = lora.merged_classifier(reloaded)
    assert type(merged).__name__ == "PoolftForSequenceClassification"
    torch.testing.assert_close(logits_of(merged, tokenizer), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_targets_are_the_attention_projections_of_every_family(family, family_dir):
    folder = family_dir(family)
    task = FAMILIES[family].modality
    model = backbones.build_model(str(folder), task, ModelConfig(), LABELS)
    targets = lora.resolve_targets(model, None, str(folder))
    assert tuple(targets) in lora.DEFAULT_TARGETS
    wrapped = lora.apply_lora(model, dict(LORA_DEFAULTS), str(folder))
    adapted = [name for name, module in wrapped.named_modules() if hasattr(module, "lora_A")]
    # every layer's projections (ALBERT's two layers share one), each target found
    assert {name.rsplit(".", 1)[-1] for name in adapted} == set(targets)
    assert len(adapted) == len(targets) * (1 if family == "albert" else 2)
    assert all("attn" in name.lower() or "attention" in name.lower() for name in adapted), adapted
    assert all(".encoder." in f".{name}" for name in adapted)  # the backbone only, never the head


def write_data(tmp_path: Path, train_size: int = 24, eval_size: int = 8) -> list[str]:
    files = write_sentiment_csv(tmp_path / "data", train_size=train_size, eval_size=eval_size)
    return [f"--data.data_files={json.dumps(files)}", "--data.text_column=text"]


def lora_run(tmp_path: Path, backbone: Path, output: str, *extra: str) -> list[str]:
    return [
        *write_data(tmp_path),
        f"--model.backbone={backbone}",
        "--model.pooler=attention",
        "--model.lora={r: 4, alpha: 8}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=8",
        "--train.learning_rate=1e-2",
        "--train.mixed_precision=no",
        "--train.progress=false",
        *extra,
    ]


BLOCK_PEFT = "import sys\nsys.modules['peft'] = None  # as if peft were not installed\n"


def without_peft(tmp_path: Path, script: str) -> dict:
    """Run ``script`` in a fresh interpreter that cannot import peft; its last stdout line as JSON."""
    shim = tmp_path / "no-peft"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCK_PEFT)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(shim), *filter(None, [ENV.get("PYTHONPATH")])])}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_lora_run_saves_its_adapter_and_a_merged_model_that_loads_without_peft(tmp_path, tiny_bert_dir, capsys):
    arguments = lora_run(tmp_path, tiny_bert_dir, "run", "--train.merge_lora_at_end=true")
    assert main(["train", *arguments]) == 0
    run = tmp_path / "run"
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "config.yaml", "tokenizer.json"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(tiny_bert_dir).resolve())
    assert adapter["modules_to_save"] == ["pooler", "classifier"] and adapter["r"] == 4
    assert (run / "best" / "adapter_model.safetensors").is_file()
    assert (run / "merged" / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run)
    adapter_logits = logits_of(lora.load_lora_classifier(run), tokenizer)
    # poolft export-merged writes the same plain model
    capsys.readouterr()
    assert main(["export-merged", "--model", str(run), "--output", str(tmp_path / "exported")]) == 0
    assert "exported" in capsys.readouterr().out
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    torch.testing.assert_close(logits_of(exported, tokenizer), adapter_logits, rtol=0, atol=1e-5)
    # predict and eval read the adapter folder
    assert main(["predict", "--model", str(run), "--json", *TEXTS]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(predicted) == 3
    assert main(["eval", "--model", str(run)]) == 0
    # the merged folder loads with the Auto classes and pipeline where peft cannot be imported
    loaded = without_peft(
        tmp_path,
        f"""
        import json, torch
        import poolft
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        try:
            import peft
            raise SystemExit("peft is importable")
        except ImportError:
            pass
        folder = {str(run / "merged")!r}
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            logits = model(**tokenizer({TEXTS!r}, padding=True, return_tensors="pt")).logits
        labels = [r["label"] for r in pipeline("text-classification", model=folder)({TEXTS!r})]
        print(json.dumps({{"class": type(model).__name__, "logits": logits.tolist(), "labels": labels}}))
        """,
    )
    assert loaded["class"] == "PoolftForSequenceClassification"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), adapter_logits, rtol=0, atol=1e-5)
    assert loaded["labels"] == [LABELS[i] for i in adapter_logits.argmax(dim=-1).tolist()]


def test_a_resumed_lora_run_ends_with_the_uninterrupted_weights_bit_for_bit(tmp_path, tiny_bert_dir):
    """Killed inside step 5 of 6 (hidden and LoRA dropout on), resumed from the step-3 checkpoint."""
    extra = ("--train.epochs=2", "--train.save_every_steps=3", "--train.eval_every_epoch=false")
    command = [sys.executable, "-m", "poolft", "train"]
    whole = subprocess.run([*command, *lora_run(tmp_path, tiny_bert_dir, "whole", *extra)], env=ENV, timeout=300)
    assert whole.returncode == 0
    interrupted = lora_run(tmp_path, tiny_bert_dir, "resumed", *extra)
    killed = subprocess.run([*command, *interrupted], env={**ENV, "POOLFT_FAULT_AT": "step:5"}, timeout=300)
    assert killed.returncode != 0
    resume = [*command, *interrupted, "--train.resume_from_checkpoint=latest"]
    resumed = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step-3" in resumed.stdout  # not a fresh start
    expected = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    actual = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_lora_run_trains_on_two_processes(tmp_path, tiny_bert_dir):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    arguments = lora_run(tmp_path, tiny_bert_dir, "double", "--train.epochs=2")
    result = subprocess.run([*torchrun, "-m", "poolft", "train", *arguments], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "double" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["train_samples_seen"] == 48
    reloaded = lora.load_lora_classifier(tmp_path / "double")
    assert any(".lora_B." in name and p.abs().sum() > 0 for name, p in reloaded.named_parameters())  # it learned


def test_lpft_with_lora_warms_the_head_alone_then_trains_adapters_and_head(tmp_path, tiny_bert_dir, quiet_libraries):
    assert main(["train", *lora_run(tmp_path, tiny_bert_dir, "run", "--train.head_warmup_epochs=1")]) == 0
    warmup = tmp_path / "run" / "head_warmup"
    assert (warmup / "model.safetensors").is_file() and not (warmup / "adapter_config.json").exists()
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert "export-merged" in (tmp_path / "run" / "README.md").read_text()


MISTAKES = {
    "unknown key": (["--model.lora={rank: 4}"], "unknown key(s) rank in model.lora"),
    "rank below 1": (["--model.lora={r: 0}"], "model.lora.r (the adapters' rank) must be at least 1"),
    "alpha not positive": (["--model.lora={alpha: 0}"], "model.lora.alpha must be positive"),
    "dropout of 1": (["--model.lora={dropout: 1.0}"], "model.lora.dropout must be in [0, 1)"),
    "negative dropout": (["--model.lora={dropout: -0.1}"], "model.lora.dropout must be in [0, 1)"),
    "frozen backbone": (["--model.lora={}", "--train.freeze_backbone=true"], "cannot be frozen or cached"),
    "feature cache": (
        ["--model.lora={}", "--train.freeze_backbone=true", "--train.feature_cache=true"],
        "cannot be frozen or cached",
    ),
    "merge without lora": (["--train.merge_lora_at_end=true"], "train.merge_lora_at_end merges a LoRA adapter"),
    "target that matches nothing": (
        ["--model.lora={target_modules: [query, q_proj]}"],
        "model.lora.target_modules entry 'q_proj' matches no layer of backbone",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_lora_mistakes_are_one_line(mistake, tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    arguments, message = MISTAKES[mistake]
    base = [*write_data(tmp_path), f"--model.backbone={tiny_bert_dir}", f"--train.output_dir={tmp_path / 'run'}"]
    capsys.readouterr()
    assert main(["train", *base, "--train.progress=false", *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    if mistake == "target that matches nothing":  # the layers that do exist, each leaf name once
        assert err.endswith("its Linear layers are: query, key, value, dense")


def test_lora_without_peft_names_the_install_command(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    capsys.readouterr()
    assert main(["train", f"--model.backbone={tiny_bert_dir}", "--model.lora={}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[peft]"' in err


def test_export_merged_refuses_a_folder_without_adapter_and_an_existing_output(tmp_path, tiny_bert_dir, capsys):
    capsys.readouterr()
    assert main(["export-merged", "--model", str(tiny_bert_dir), "--output", str(tmp_path / "out")]) == 2
    assert "holds no LoRA adapter" in capsys.readouterr().err
    model = lora_classifier(tiny_bert_dir)
    lora.save_adapter(model, tmp_path / "run")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export-merged", "--model", str(tmp_path / "run"), "--output", str(tmp_path / "taken")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
