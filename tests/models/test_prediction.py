"""A text's prediction does not depend on what it is batched with, or on the side padding is on.

The reference is always one text at a time with no padding at all (what a text "has alone"); each
padded batch asserts the side its attention mask really has, so a tokenizer that silently pads on
the other side cannot make a test pass.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXTS
from families import FAMILIES
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from poolft import PoolftForSequenceClassification
from poolft.data.text import TextCollator
from poolft.models.modeling import right_padding_order
from poolft.models.prediction import load_classifier

# different lengths (an empty text, a long one), more texts than one batch holds
TEXTS = [*TINY_TEXTS, "", "great", "awful acting " * 12, "the plot", *reversed(TINY_TEXTS)]
TEXT_FAMILIES = [name for name, family in FAMILIES.items() if family.modality == "text"]


def assert_padded_on(side: str, attention_mask: torch.Tensor) -> None:
    """The batch really is padded on ``side``: some row has padding in that end column, none in the other."""
    end, other = (0, -1) if side == "left" else (-1, 0)
    assert (attention_mask[:, end] == 0).any(), f"no row is padded on the {side}"
    assert (attention_mask[:, other] == 1).all(), f"a row is padded on the side opposite to {side}"


def save_tokenizer(source, folder, side: str):
    """Save ``source``'s tokenizer so that it reloads with ``padding_side == side``.

    transformers 5.24 writes the tokenizer's init kwargs to ``tokenizer_config.json``: a side given
    to ``from_pretrained`` is saved, ``tokenizer.padding_side = side`` afterwards is not.
    """
    AutoTokenizer.from_pretrained(source, padding_side=side).save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded.padding_side == side
    return reloaded


def classifier_folder(tmp_path, backbone, pooler: str, side: str):
    torch.manual_seed(0)
    model = PoolftForSequenceClassification.from_backbone(
        str(backbone), pooler=pooler, num_labels=3, id2label={0: "neg", 1: "mid", 2: "pos"}
    )
    torch.nn.init.normal_(model.classifier.weight, std=0.02)  # probabilities well inside (0, 1)
    model.save_pretrained(tmp_path)
    return model.eval(), save_tokenizer(backbone, tmp_path, side)


def single_probabilities(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """``(texts, labels)``: each text alone, unpadded, through the model."""
    with torch.no_grad():
        logits = [model(**tokenizer(text, truncation=True, return_tensors="pt")).logits for text in texts]
    return torch.cat(logits).softmax(-1)


def recorded_masks(model) -> tuple[list[torch.Tensor], object]:
    """The ``attention_mask`` of every call to ``model``, and the hook's handle."""
    masks: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"].clone()), with_kwargs=True
    )
    return masks, handle


def test_a_left_padding_tokenizer_saves_and_reloads_as_left(tmp_path, tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.padding_side = "left"  # the attribute alone is not written to disk (the trap of issue 12)
    tokenizer.save_pretrained(tmp_path / "attribute")
    assert AutoTokenizer.from_pretrained(tmp_path / "attribute").padding_side == "right"

    reloaded = save_tokenizer(tiny_bert_dir, tmp_path / "kwarg", "left")
    assert json.loads((tmp_path / "kwarg" / "tokenizer_config.json").read_text())["padding_side"] == "left"
    assert_padded_on("left", reloaded(TINY_TEXTS, padding=True, return_tensors="pt")["attention_mask"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pooler", ["mean", "cls", "attention"])
def test_batched_prediction_equals_unbatched_forwards(tmp_path, tiny_bert_dir, padding_side, pooler):
    model, tokenizer = classifier_folder(tmp_path, tiny_bert_dir, pooler, padding_side)
    assert_padded_on(padding_side, tokenizer(TEXTS, padding=True, return_tensors="pt")["attention_mask"])

    classifier = load_classifier(str(tmp_path))
    assert classifier.preprocessor.padding_side == padding_side
    masks, handle = recorded_masks(classifier.model)
    predicted = classifier.predict(TEXTS, batch_size=4)
    handle.remove()
    # poolft pads on the right whatever the tokenizer says (encoders count positions from column 0)
    assert len(masks) == 4 and any((mask[:, -1] == 0).any() for mask in masks)
    assert all((mask[:, 0] == 1).all() for mask in masks)

    singles = single_probabilities(model, tokenizer, TEXTS)
    for (label, probability), expected in zip(predicted, singles, strict=True):
        assert label == model.config.id2label[int(expected.argmax())]
        assert probability == pytest.approx(float(expected.max()), abs=1e-5)
    assert all(probability < 0.999 for _, probability in predicted)  # not saturated: a real check
    assert len({round(probability, 6) for _, probability in predicted}) > len(TEXTS) // 2


@pytest.mark.parametrize("pooler", ["mean", "cls"])
def test_pipeline_with_a_left_padding_tokenizer_gives_each_text_its_own_scores(tmp_path, tiny_bert_dir, pooler):
    model, tokenizer = classifier_folder(tmp_path, tiny_bert_dir, pooler, "left")
    classify = pipeline("text-classification", model=str(tmp_path), top_k=None, batch_size=4)
    assert classify.tokenizer.padding_side == "left"
    masks, handle = recorded_masks(classify.model)
    outputs = classify(TEXTS)
    handle.remove()
    assert any((mask[:, 0] == 0).any() for mask in masks)  # the pipeline did pad on the left
    singles = single_probabilities(model, tokenizer, TEXTS)
    for scores, expected in zip(outputs, singles, strict=True):
        by_label = {score["label"]: score["score"] for score in scores}
        got = [by_label[model.config.id2label[i]] for i in range(3)]
        torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_every_family_gives_a_text_its_own_logits_in_a_padded_batch(family, family_dir):
    """BERT-style absolute, RoBERTa/XLM-R padding-offset, DeBERTa-v2 relative, ModernBERT rotary positions."""
    folder = family_dir(family)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    texts = ["the movie was great", "a boring film with awful acting and a dull plot", "loved it", ""]
    for pooler in ("cls", "mean"):
        model = PoolftForSequenceClassification.from_backbone(
            str(folder), pooler=pooler, num_labels=3, hidden_layers=[-1, -2]
        ).eval()
        torch.nn.init.normal_(model.classifier.weight, std=1.0)
        with torch.no_grad():
            singles = [model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True) for t in texts]
            for side in ("left", "right"):
                batch = tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")
                assert_padded_on(side, batch["attention_mask"])
                output = model(**batch, output_hidden_states=True)
                for row, single in enumerate(singles):
                    torch.testing.assert_close(output.logits[row], single.logits[0], rtol=1e-4, atol=1e-5)
                    # hidden states come back in the caller's columns: row's real tokens where it sent them
                    real = batch["attention_mask"][row].bool()
                    for layer, layer_alone in zip(output.hidden_states, single.hidden_states, strict=True):
                        torch.testing.assert_close(layer[row][real], layer_alone[0], rtol=1e-4, atol=1e-4)
        assert max(float(s.logits.abs().max()) for s in singles) > 0.5  # logits far from 0: a real comparison


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_poolft_collator_keeps_a_stock_model_batch_invariant(family, family_dir):
    """``stock_head``: plain HF classifiers see poolft's right-padded batches, even from a left tokenizer."""
    folder = family_dir(family)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    texts = ["the movie was great", "a boring film with awful acting and a dull plot", "loved it"]
    examples = [dict(tokenizer(t)) for t in texts]
    batch = TextCollator(tokenizer)(examples)
    assert_padded_on("right", batch["attention_mask"])
    with torch.no_grad():
        batched = model(**batch).logits
        singles = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
        left = tokenizer(texts, padding=True, return_tensors="pt")  # what a batched pipeline would pass
        assert_padded_on("left", left["attention_mask"])
        left_logits = model(**left).logits
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-5)
    # the stock head alone is not batch-invariant under left padding (README): why the collator pads right
    assert (left_logits - singles).abs().max() > 1e-3


def test_right_padding_order_moves_real_tokens_first_in_order():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]])
    order = right_padding_order(mask)
    expected = [[2, 3, 4, 0, 1], [0, 1, 2, 3, 4], [1, 3, 0, 2, 4]]  # stable: real in order, then padding in order
    assert order.tolist() == expected
    assert right_padding_order(torch.tensor([[1, 1, 0], [1, 0, 0]])) is None  # already right-padded
    assert right_padding_order(None) is None
