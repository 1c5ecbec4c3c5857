"""``poolft export --format onnx``: the whole pooled classifier as one graph, equal to PyTorch on ONNX Runtime.

Every registered head is exported from a tiny BERT and a tiny ViT (``conftest.py``) with its head
perturbed off its init; the graph's logits must equal the PyTorch model's within 1e-4 at batch 1
and 3, texts of several lengths padded on the left and on the right, and a row that is all
padding. ``poolft predict`` and ``load_classifier`` on the exported folder must give what they give
on the saved model. A head or encoder the exporter cannot trace is a one-line error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXTS, snapshot
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BertForSequenceClassification,
)

import poolft
from poolft import PoolftForImageClassification, PoolftForSequenceClassification
from poolft.cli import main
from poolft.models.onnx_export import export_onnx
from poolft.models.onnx_model import OnnxClassifierModel, load_onnx_classifier
from poolft.models.prediction import load_classifier

pytest.importorskip("onnxruntime")

ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
TEXT_HEADS = [name for name in poolft.available_poolers() if name != "flatten"]
#: the window head's modes (its 1-D ranges, sliding windows and 2-D bins take other code paths)
WINDOW_SPECS = [
    ("window", {"levels": [1, 3], "reduce": "mean", "project": False}),
    ("window", {"edges": [[0, 0.1, 0.5, 1.0]], "reduce": "mean"}),
    ("window", {"mode": "sliding", "window_size": 3, "stride": 2}),
    ("window", {"mode": "sliding", "window_size": 2, "stride": 3, "reduce_windows": "mean"}),
]
TEXT_HEAD_SPECS = [(name, {}) for name in TEXT_HEADS] + WINDOW_SPECS
#: every head on images; flatten reads the tiny ViT's fixed 4 x 4 patch grid (28 px, patch 7)
IMAGE_HEAD_SPECS = (
    TEXT_HEAD_SPECS
    + [("flatten", {"grid_size": [4, 4]})]
    + [
        ("window", {"grid": True, "mode": "sliding", "window_size": 2, "stride": 1, "reduce_windows": "map"}),
        ("window", {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce": "mean"}),
    ]
)
#: texts of different lengths (an empty one, one longer than the rest)
TEXTS = [*TINY_TEXTS, "", "great", "awful acting " * 8]
#: fp32 tolerance on logits
ATOL = 1e-4


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """The head and classifier moved off their init (a re-initialised head cannot pass), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.pooler, model.layer_combination, model.classifier):
            for parameter in module.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def save_text_classifier(folder: Path, backbone: Path, pooler: str, options: dict | None = None):
    model = PoolftForSequenceClassification.from_backbone(
        str(backbone), pooler=pooler, pooler_options=options or {}, id2label=ID2LABEL
    )
    model = perturbed(model)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)
    return model


def save_image_classifier(folder: Path, backbone: Path, pooler: str, options: dict | None = None):
    model = PoolftForImageClassification.from_backbone(
        str(backbone), pooler=pooler, pooler_options=options or {}, id2label=ID2LABEL
    )
    model = perturbed(model)
    model.save_pretrained(folder)
    AutoImageProcessor.from_pretrained(backbone).save_pretrained(folder)
    return model


def text_batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    """Batches of 1 and 3 texts padded on each side, and a batch of 3 whose middle row is all padding."""
    batches = []
    for side in ("right", "left"):
        for size in (1, 3):
            for start in range(0, len(TEXTS) - size + 1, 3):
                batch = tokenizer(TEXTS[start : start + size], padding=True, padding_side=side, return_tensors="pt")
                batches.append(dict(batch))
    empty = dict(tokenizer(TEXTS[:3], padding=True, return_tensors="pt"))
    empty["attention_mask"] = empty["attention_mask"].clone()
    empty["attention_mask"][1] = 0
    empty["input_ids"] = empty["input_ids"].clone()
    empty["input_ids"][1] = tokenizer.pad_token_id
    batches.append(empty)
    assert any((batch["attention_mask"][:, 0] == 0).any() for batch in batches)  # some batch is left-padded
    return batches


def assert_same_logits(onnx_model: OnnxClassifierModel, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    with torch.no_grad():
        expected = model(**batch).logits
    got = onnx_model(**batch).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    return expected


# ----------------------------------------------------------------------------------------------
# every head, text and images: ONNX logits == PyTorch logits


def spec_id(spec: tuple[str, dict]) -> str:
    name, options = spec
    return "-".join([name] + [f"{key}={value}" for key, value in options.items()]).replace(" ", "")


@pytest.mark.parametrize(("pooler", "options"), TEXT_HEAD_SPECS, ids=map(spec_id, TEXT_HEAD_SPECS))
def test_every_text_head_exports_with_its_pooling_intact(tmp_path, tiny_bert_dir, pooler, options):
    model = save_text_classifier(tmp_path / "model", tiny_bert_dir, pooler, options)
    export_onnx(str(tmp_path / "model"), str(tmp_path / "onnx"))
    onnx_model, tokenizer, task = load_onnx_classifier(tmp_path / "onnx")
    assert task == "text" and onnx_model.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    largest = 0.0
    for batch in text_batches(tokenizer):
        largest = max(largest, float(assert_same_logits(onnx_model, model, batch).abs().max()))
    assert largest > 0.1  # logits far from 0: the comparison means something


@pytest.mark.parametrize(("pooler", "options"), IMAGE_HEAD_SPECS, ids=map(spec_id, IMAGE_HEAD_SPECS))
def test_every_image_head_exports_with_its_pooling_intact(tmp_path, tiny_vit_dir, pooler, options):
    model = save_image_classifier(tmp_path / "model", tiny_vit_dir, pooler, options)
    export_onnx(str(tmp_path / "model"), str(tmp_path / "onnx"))
    onnx_model, _, task = load_onnx_classifier(tmp_path / "onnx")
    settings = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert task == "image" and onnx_model.input_names == ["pixel_values"] and settings["image_size"] == [28, 28]
    for size in (1, 3):
        pixels = torch.randn(size, 3, 28, 28, generator=torch.Generator().manual_seed(size))
        assert float(assert_same_logits(onnx_model, model, {"pixel_values": pixels}).abs().max()) > 0.1


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_other_text_families_export_the_inputs_their_tokenizer_returns(tmp_path, family_dir, family):
    """RoBERTa (padding-offset positions) and DistilBERT return no token_type_ids, ELECTRA does."""
    backbone = family_dir(family)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    expected_inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in tokenizer("a")]
    for pooler in ("cls", "mean"):
        model = save_text_classifier(tmp_path / f"{pooler}-model", backbone, pooler)
        export_onnx(str(tmp_path / f"{pooler}-model"), str(tmp_path / f"{pooler}-onnx"))
        onnx_model, tokenizer, _ = load_onnx_classifier(tmp_path / f"{pooler}-onnx")
        assert onnx_model.input_names == expected_inputs
        for batch in text_batches(tokenizer):
            assert_same_logits(onnx_model, model, batch)
    assert ("token_type_ids" in expected_inputs) == (family == "electra")


def test_a_stock_head_exports_too(tmp_path, tiny_bert_dir):
    """``poolft train --model.stock_head true`` saves a transformers classifier; it exports as it is."""
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, id2label=ID2LABEL).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "model")
    export_onnx(str(tmp_path / "model"), str(tmp_path / "onnx"))
    settings = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert settings["head"] == "stock:BertForSequenceClassification"
    onnx_model, tokenizer, _ = load_onnx_classifier(tmp_path / "onnx")
    for batch in text_batches(tokenizer):
        assert_same_logits(onnx_model, model, batch)


def test_a_lora_run_exports_with_its_adapter_merged(tmp_path, tiny_bert_dir):
    pytest.importorskip("peft")
    from poolft.config import LORA_DEFAULTS, ModelConfig
    from poolft.models import backbones, lora

    model = lora.apply_lora(
        backbones.build_model(str(tiny_bert_dir), "text", ModelConfig(pooler="attention"), ["neg", "pos"]),
        dict(LORA_DEFAULTS),
        str(tiny_bert_dir),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: move the adapters (and head) off their init
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    lora.save_adapter(model, tmp_path / "run")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "run")
    export_onnx(str(tmp_path / "run"), str(tmp_path / "onnx"))
    onnx_model, tokenizer, _ = load_onnx_classifier(tmp_path / "onnx")
    for batch in text_batches(tokenizer):
        assert_same_logits(onnx_model, model.eval(), batch)


# ----------------------------------------------------------------------------------------------
# predict on an exported folder: same output as on the saved model


@pytest.fixture(scope="module")
def exported_mean(tmp_path_factory, tiny_bert_dir) -> tuple[Path, Path]:
    """A saved mean-head BERT classifier and its fp32 ONNX export (made with the CLI)."""
    root = tmp_path_factory.mktemp("exported-mean")
    save_text_classifier(root / "model", tiny_bert_dir, "mean")
    assert main(["export", "--model", str(root / "model"), "--format", "onnx", "--output", str(root / "onnx")]) == 0
    return root / "model", root / "onnx"


def test_the_export_folder_holds_the_graph_the_tokenizer_and_its_settings(exported_mean):
    model_dir, onnx_dir = exported_mean
    assert {"model.onnx", "onnx_config.json", "tokenizer_config.json"} <= {p.name for p in onnx_dir.iterdir()}
    settings = json.loads((onnx_dir / "onnx_config.json").read_text())
    assert settings["id2label"] == {str(i): label for i, label in ID2LABEL.items()}
    assert settings["task"] == "text" and settings["head"] == "mean" and settings["padding_side"] == "right"
    assert settings["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert settings["max_length"] == 128 and settings["opset"] == 17 and settings["poolft_version"]
    assert AutoTokenizer.from_pretrained(onnx_dir).model_max_length == 128
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx")).graph
    dims = {item.name: [d.dim_param or d.dim_value for d in item.type.tensor_type.shape.dim] for item in graph.input}
    assert dims == {name: ["batch", "tokens"] for name in settings["input_names"]}


def test_predict_on_the_export_equals_predict_on_the_model(exported_mean, capsys):
    model_dir, onnx_dir = exported_mean
    reference = load_classifier(str(model_dir))
    exported = load_classifier(str(onnx_dir))
    assert isinstance(exported.model, OnnxClassifierModel) and "torch" not in type(exported.model).__module__
    texts = [*TEXTS, *reversed(TEXTS)]
    for (label, probability), (expected_label, expected) in zip(
        exported.predict(texts, batch_size=4), reference.predict(texts, batch_size=4), strict=True
    ):
        assert label == expected_label and probability == pytest.approx(expected, abs=1e-5)
    for got, expected in zip(exported.predict_all(texts), reference.predict_all(texts), strict=True):
        assert list(got) == list(expected) and np.allclose(list(got.values()), list(expected.values()), atol=1e-5)
    assert main(["predict", "--model", str(onnx_dir), "--json", *TEXTS[:3]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == [label for label, _ in reference.predict(TEXTS[:3])]


def test_predict_on_an_image_export_equals_predict_on_the_model(tmp_path, tiny_vit_dir):
    save_image_classifier(tmp_path / "model", tiny_vit_dir, "mean")
    export_onnx(str(tmp_path / "model"), str(tmp_path / "onnx"))
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(40, 30), (28, 28), (17, 50)]):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    reference = load_classifier(str(tmp_path / "model")).predict(paths, images=True)
    exported = load_classifier(str(tmp_path / "onnx")).predict(paths, batch_size=2, images=True)
    for (label, probability), (expected_label, expected) in zip(exported, reference, strict=True):
        assert label == expected_label and probability == pytest.approx(expected, abs=1e-5)


def test_int8_export_is_close_and_agrees_on_most_labels(tmp_path, exported_mean):
    """Dynamic int8 quantization is lossy: here logits of up to 2.4 move by up to 0.02 (tolerance 0.05)."""
    model_dir, _ = exported_mean
    output = tmp_path / "int8"
    assert main(["export", "--model", str(model_dir), "--quantize", "int8", "--output", str(output)]) == 0
    assert (output / "model.int8.onnx").is_file() and not (output / "model.onnx").exists()
    assert json.loads((output / "onnx_config.json").read_text())["quantization"] == "int8"
    model = PoolftForSequenceClassification.from_pretrained(model_dir).eval()
    onnx_model, tokenizer, _ = load_onnx_classifier(output)
    texts = [*TEXTS, "the plot was dull and boring", "loved the music", "a dog sat on the mat", "not good"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = model(**batch).logits
    got = onnx_model(**batch).logits
    assert float((got - expected).abs().max()) < 0.05
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) >= 0.8


# ----------------------------------------------------------------------------------------------
# one-line errors; nothing written


def run_cli(argv: list[str], capsys) -> str:
    """Run ``poolft`` and return its one error line (exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("poolft: error: "), err
    return err[0]


def test_an_unknown_format_is_one_line(tmp_path, exported_mean, capsys, quiet_libraries):
    model_dir, _ = exported_mean
    line = run_cli(["export", "--model", str(model_dir), "--format", "tflite", "--output", str(tmp_path / "o")], capsys)
    assert "unknown export format 'tflite'" in line and "onnx" in line
    line = run_cli(["export", "--model", str(model_dir), "--quantize", "int4", "--output", str(tmp_path / "o")], capsys)
    assert "unknown quantization 'int4'" in line and "int8" in line
    assert not (tmp_path / "o").exists()


def test_a_folder_that_holds_no_model_is_one_line(tmp_path, capsys, quiet_libraries):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    line = run_cli(["export", "--model", str(tmp_path / "notes"), "--output", str(tmp_path / "o")], capsys)
    assert "has no config.json" in line
    assert not (tmp_path / "o").exists()


def test_eval_and_export_of_an_export_are_one_line(tmp_path, exported_mean, capsys, quiet_libraries):
    _, onnx_dir = exported_mean
    line = run_cli(["eval", "--model", str(onnx_dir), "--data.path", "sst2-sample"], capsys)
    assert "is an ONNX export" in line and "poolft predict runs it" in line
    line = run_cli(["export", "--model", str(onnx_dir), "--output", str(tmp_path / "o")], capsys)
    assert "is an ONNX export" in line and not (tmp_path / "o").exists()


def test_an_existing_output_folder_is_refused_and_kept(tmp_path, exported_mean, capsys, quiet_libraries):
    model_dir, _ = exported_mean
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.onnx").write_bytes(b"keep me")
    before = snapshot(tmp_path)
    line = run_cli(["export", "--model", str(model_dir), "--output", str(tmp_path / "o")], capsys)
    assert "already exists and is not empty" in line
    assert snapshot(tmp_path) == before
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert main(["export", "--model", str(model_dir), "--output", str(tmp_path / "empty")]) == 0


def test_an_exporter_failure_is_one_line_naming_the_head(tmp_path, exported_mean, capsys, quiet_libraries, monkeypatch):
    model_dir, _ = exported_mean

    def fail(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX is not supported\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fail)
    line = run_cli(["export", "--model", str(model_dir), "--output", str(tmp_path / "o")], capsys)
    assert "(bert encoder, mean head) cannot be exported to ONNX" in line and "'aten::made_up'" in line
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder left behind


def test_an_encoder_the_exporter_cannot_trace_is_one_line(tmp_path, family_dir, capsys, quiet_libraries):
    """DINOv2 with registers resizes its position embeddings with antialiased bicubic interpolation (no ONNX op)."""
    save_image_classifier(tmp_path / "model", family_dir("dinov2-registers"), "mean")
    line = run_cli(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "o")], capsys)
    assert "(dinov2_with_registers encoder, mean head) cannot be exported to ONNX" in line
    assert "upsample_bicubic2d_aa" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_missing_onnx_packages_name_the_extra(tmp_path, exported_mean, capsys, quiet_libraries, monkeypatch):
    model_dir, _ = exported_mean
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    line = run_cli(["export", "--model", str(model_dir), "--output", str(tmp_path / "o")], capsys)
    assert 'pip install -e ".[onnx]"' in line
    assert not (tmp_path / "o").exists()
