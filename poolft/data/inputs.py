"""Turn a labelled split into model inputs for either modality (the one place text and images differ)."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from ..config import DataConfig
from .images import ImageCollator, cache_pixels
from .text import TextCollator, tokenize_split


def encode_split(split: Dataset, preprocessor: Any, task: str, data: DataConfig, name: str) -> Dataset:
    """Tokenize (text) or decode+resize once (images); the result is cached by ``datasets``."""
    if task == "text":
        return tokenize_split(split, preprocessor, data, name)
    return cache_pixels(split, preprocessor, data, name)


def make_collator(
    preprocessor: Any,
    task: str,
    *,
    augment: bool = False,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
) -> Any:
    """Batch builder: dynamic padding for text (to a multiple of ``pad_to_multiple_of``, at most
    ``max_length``, when given), normalisation (+augmentation) for images."""
    if task == "text":
        return TextCollator(preprocessor, pad_to_multiple_of, max_length)
    return ImageCollator(preprocessor, augment=augment)


def example_lengths(split: Dataset, task: str) -> list[int] | None:
    """Token counts for length grouping (None for images: they all have one size)."""
    return split["length"] if task == "text" and "length" in split.column_names else None
