"""poolft's evaluation metrics: single-label ones as a local ``evaluate`` module (works offline), multi-label
ones (micro-F1, macro-F1, exact match) in ``multi_label.py``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate

from .multi_label import multi_label_metrics

__all__ = ["classification_metrics", "load_classification_metric", "multi_label_metrics"]

METRIC_SCRIPT = Path(__file__).parent / "classification.py"


@lru_cache(maxsize=1)
def load_classification_metric() -> evaluate.EvaluationModule:
    """The accuracy + macro-F1 module from this package (never fetched from the Hub)."""
    return evaluate.load(str(METRIC_SCRIPT))


def classification_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}`` for integer predictions and references."""
    return load_classification_metric().compute(predictions=predictions, references=references)
