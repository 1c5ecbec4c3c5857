"""Multi-label metrics at threshold 0.5: micro-F1, macro-F1 and exact match, as scikit-learn defines them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def multi_label_metrics(predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> dict[str, float]:
    """Scores of 0/1 ``predictions`` against 0/1 ``references``, both ``(examples, labels)``.

    ``micro_f1`` pools every (example, label) decision; ``macro_f1`` averages each label's F1 over
    all labels (a label never predicted nor present scores 0, as ``f1_score(zero_division=0)``);
    ``exact_match`` is the share of examples with every label right (subset accuracy, what
    ``accuracy_score`` gives on multi-hot rows), also reported as ``accuracy``.
    """
    predicted = np.asarray(predictions, dtype=bool)
    actual = np.asarray(references, dtype=bool)
    if actual.size == 0:
        nan = float("nan")
        return {"accuracy": nan, "exact_match": nan, "micro_f1": nan, "macro_f1": nan}
    true_positives = (predicted & actual).sum(axis=0)
    # F1 = 2 TP / (predicted + actual): 0 where a label is neither predicted nor present
    counts = predicted.sum(axis=0) + actual.sum(axis=0)
    per_label = np.divide(2.0 * true_positives, counts, out=np.zeros(counts.shape), where=counts > 0)
    micro = 2.0 * true_positives.sum() / counts.sum() if counts.sum() else 0.0
    exact = float((predicted == actual).all(axis=1).mean())
    return {"accuracy": exact, "exact_match": exact, "micro_f1": float(micro), "macro_f1": float(per_label.mean())}
