"""poolft's evaluation metrics, loaded as a local ``evaluate`` module (works offline)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate

METRIC_SCRIPT = Path(__file__).parent / "classification.py"


@lru_cache(maxsize=1)
def load_classification_metric() -> evaluate.EvaluationModule:
    """The accuracy + macro-F1 module from this package (never fetched from the Hub)."""
    return evaluate.load(str(METRIC_SCRIPT))


def classification_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}`` for integer predictions and references."""
    return load_classification_metric().compute(predictions=predictions, references=references)
