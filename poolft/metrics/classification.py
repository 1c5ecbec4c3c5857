"""Accuracy and macro-F1 as an ``evaluate`` module shipped inside poolft (no Hub script needed)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy and macro-averaged F1 of integer class predictions."
_KWARGS = """
Args:
    predictions (list[int]): predicted class ids.
    references (list[int]): true class ids.
    num_labels (int, optional): number of classes; classes never predicted nor present count as F1 0
        only when they appear in references or predictions.
Returns:
    accuracy (float), macro_f1 (float)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Classification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            return {"accuracy": float("nan"), "macro_f1": float("nan")}
        classes = np.union1d(np.unique(references), np.unique(predictions))
        scores = []
        for label in classes:
            true_positive = np.sum((predictions == label) & (references == label))
            predicted = np.sum(predictions == label)
            actual = np.sum(references == label)
            denominator = predicted + actual
            scores.append(2.0 * true_positive / denominator if denominator else 0.0)
        return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(scores))}
