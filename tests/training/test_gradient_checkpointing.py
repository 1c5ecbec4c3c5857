"""``model.gradient_checkpointing``: the same gradients for less memory; refused on a frozen backbone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from transformers import AutoModelForSequenceClassification
from transformers.modeling_layers import GradientCheckpointingLayer

from poolft.config import load_config
from poolft.errors import PoolftError
from poolft.models.backbones import use_gradient_checkpointing
from poolft.models.modeling import PoolftForImageClassification, PoolftForSequenceClassification
from poolft.training.cpu_dropout import use_cpu_dropout
from poolft.training.loop import train


def gradients(model, inputs: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one training-mode (dropout on) forward and backward."""
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    model(**inputs).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(model, inputs: dict) -> None:
    checkpointed = copy.deepcopy(model)
    use_gradient_checkpointing(checkpointed)
    layers = [m for m in checkpointed.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    expected, got = gradients(model, inputs), gradients(checkpointed, inputs)
    assert expected.keys() == got.keys() and any(name.startswith(("encoder.", "bert.")) for name in got)
    for name in expected:  # dropout masks are replayed from the saved RNG state in the recomputation
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("cpu_dropout", [False, True])
def test_poolft_text_model_gets_the_same_gradients(tiny_bert_dir, cpu_dropout):
    model = PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="attention", num_labels=3)
    if cpu_dropout:  # poolft's faster dropout draws from the default generator, which checkpointing replays
        use_cpu_dropout(model)
    ids = torch.randint(5, 60, (4, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    assert_same_gradients(model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1, 1])})


def test_stock_text_head_gets_the_same_gradients(tiny_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    ids = torch.randint(5, 60, (3, 9))
    assert_same_gradients(model, {"input_ids": ids, "labels": torch.tensor([0, 1, 1])})


def test_poolft_image_model_gets_the_same_gradients(tiny_vit_dir):
    model = PoolftForImageClassification.from_backbone(str(tiny_vit_dir), pooler="mean", num_labels=2)
    assert_same_gradients(model, {"pixel_values": torch.randn(2, 3, 28, 28), "labels": torch.tensor([0, 1])})


def saved_for_backward_bytes(model, inputs: dict) -> int:
    """Bytes autograd keeps from the forward pass for the backward pass (outside checkpointed layers)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return total


def test_the_layers_keep_far_fewer_activations_for_the_backward_pass(tiny_bert_dir):
    model = PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="mean", num_labels=2)
    inputs = {"input_ids": torch.randint(5, 60, (8, 64)), "labels": torch.zeros(8, dtype=torch.long)}
    plain = saved_for_backward_bytes(model, inputs)
    use_gradient_checkpointing(model)
    assert saved_for_backward_bytes(model, inputs) < plain / 4


def test_on_a_frozen_backbone_it_is_refused_in_one_line():
    with pytest.raises(PoolftError, match="model.gradient_checkpointing .* frozen") as error:
        load_config(None, ["--model.gradient_checkpointing=true", "--train.freeze_backbone=true"])
    assert "\n" not in str(error.value)


def test_a_run_with_it_trains_and_saves_a_model_without_it(tmp_path, tiny_bert_dir):
    files = write_sentiment_csv(tmp_path / "data", train_size=32, eval_size=8)
    arguments = [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={tiny_bert_dir}",
        "--model.gradient_checkpointing=true",
        f"--train.output_dir={tmp_path / 'run'}",
        "--train.batch_size=16",
        "--train.progress=false",
        "--train.mixed_precision=no",
    ]
    assert train(load_config(None, arguments))["global_step"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert not saved.get("gradient_checkpointing")  # a training setting, not part of the saved model
