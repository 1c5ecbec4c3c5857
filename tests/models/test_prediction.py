"""``poolft predict``'s batched, length-sorted path against one-text-at-a-time forwards."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEXTS
from transformers import AutoTokenizer

from poolft import PoolftForSequenceClassification
from poolft.models.prediction import load_classifier

# different lengths (an empty text, a long one), more texts than one batch holds
TEXTS = [*TINY_TEXTS, "", "great", "awful acting " * 12, "the plot", *reversed(TINY_TEXTS)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pooler", ["mean", "cls", "attention"])
def test_batched_prediction_equals_unbatched_forwards(tmp_path, tiny_bert_dir, padding_side, pooler):
    torch.manual_seed(0)
    model = PoolftForSequenceClassification.from_backbone(
        str(tiny_bert_dir), pooler=pooler, num_labels=3, id2label={0: "neg", 1: "mid", 2: "pos"}
    )
    torch.nn.init.normal_(model.classifier.weight, std=0.02)  # probabilities well inside (0, 1)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    tokenizer.padding_side = padding_side
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    predicted = load_classifier(str(tmp_path)).predict(TEXTS, batch_size=4)

    model.eval()
    for text, (label, probability) in zip(TEXTS, predicted, strict=True):
        with torch.no_grad():
            single = tokenizer(text, truncation=True, return_tensors="pt")  # no padding at all
            probabilities = model(**single).logits.softmax(-1)[0]
        assert label == model.config.id2label[int(probabilities.argmax())]
        assert probability == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert all(probability < 0.999 for _, probability in predicted)  # not saturated: a real check
    assert len({round(probability, 6) for _, probability in predicted}) > len(TEXTS) // 2
