"""poolft: pluggable, mask-correct pooling heads for Hugging Face encoders, and their fine-tuning.

``import poolft`` registers ``PoolftConfig`` and the two model classes with the Auto classes, so
``AutoModelForSequenceClassification.from_pretrained(saved_dir)`` and ``pipeline(...)`` load a
saved poolft model without ``trust_remote_code``.
"""

from . import cpu_dropout  # noqa: F401  (README: poolft.cpu_dropout.use_cpu_dropout after `import poolft`)
from .models.modeling import (
    PoolftConfig,
    PoolftForImageClassification,
    PoolftForSequenceClassification,
)
from .pooling import Pooler, available_poolers, build_pooler

__version__ = "0.1.0"

__all__ = [
    "Pooler",
    "PoolftConfig",
    "PoolftForImageClassification",
    "PoolftForSequenceClassification",
    "__version__",
    "available_poolers",
    "build_pooler",
    "explain",
]


def __getattr__(name: str):
    """``poolft.explain`` (``poolft.models.explain.explain``), imported on first use: it loads datasets and Pillow."""
    if name == "explain":
        from .models.explain import explain

        return explain
    raise AttributeError(f"module 'poolft' has no attribute {name!r}")
