"""Text examples -> token ids: tokenize once with ``datasets.map`` (cached), pad per batch."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from ..errors import PoolftError
from .labels import stack_labels


def check_max_length(config: DataConfig, tokenizer: PreTrainedTokenizerBase, max_positions: int | None) -> None:
    """``max_length`` above what the backbone's position embeddings cover is an error."""
    if max_positions is not None and config.max_length > max_positions:
        raise PoolftError(
            f"data.max_length={config.max_length} exceeds the backbone's {max_positions} positions; "
            f"set data.max_length <= {max_positions}"
        )


def tokenize_split(split: Dataset, tokenizer: PreTrainedTokenizerBase, config: DataConfig, name: str) -> Dataset:
    """Add ``input_ids``/``attention_mask`` (+``token_type_ids``) and ``length``; drop raw columns.

    Empty or missing texts become empty strings (the tokenizer still emits [CLS] [SEP]).
    """
    if config.text_column is None:
        from .sources import with_text_columns

        config = with_text_columns(config, split, name)
    text_column, pair_column, max_length = config.text_column, config.text_pair_column, config.max_length
    columns = [text_column] + ([pair_column] if pair_column else [])

    # the closure holds only what tokenizing needs, so its fingerprint (and datasets' cache, and the
    # probe's feature cache) does not change with unrelated settings such as holdout_fraction
    def tokenize(batch: dict[str, list]) -> dict[str, Any]:
        texts = [_as_text(t) for t in batch[text_column]]
        pairs = [_as_text(t) for t in batch[pair_column]] if pair_column else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    keep = {"labels"}
    remove = [c for c in split.column_names if c not in keep]
    for column in columns:
        value = split.features[column]
        # "null": every value is missing (read as empty texts, like single missing ones)
        if getattr(value, "dtype", "string") not in ("string", "large_string", "null"):
            raise PoolftError(f"text column {column!r} holds {value}, not text; set data.text_column to a text column")
    return split.map(tokenize, batched=True, remove_columns=remove, desc=f"tokenize ({name})")


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


class TextCollator:
    """Pads a list of tokenized examples on the right to the longest in the batch.

    Always on the right, whatever the tokenizer's ``padding_side``: encoders count positions from
    the first column (absolute, padding-offset or rotary), so only right padding gives every text
    the positions it has alone. (Left padding is for decoders that generate after the prompt.)

    With ``pad_to_multiple_of`` the batch is padded further, still on the right with attention
    mask 0, to the next multiple of it, but never past ``max_length`` (the backbone's positions end
    there): batches then take a few shapes (``train.compile`` compiles one graph per shape).

    Returns ``input_ids``/``attention_mask`` (``token_type_ids``) ``(batch, tokens)`` and
    ``labels`` ``(batch,)`` (multi-label: float ``(batch, num_labels)``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
    ) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            rounded = (longest + multiple - 1) // multiple * multiple
            longest = max(longest, min(rounded, self.max_length or rounded))
        batch: dict[str, torch.Tensor] = {}
        fills = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0}
        for key, fill in fills.items():
            if key not in examples[0]:
                continue
            padded = torch.full((len(examples), longest), fill, dtype=torch.long)
            for row, example in enumerate(examples):
                values = torch.as_tensor(example[key], dtype=torch.long)
                padded[row, : len(values)] = values
            batch[key] = padded
        if "labels" in examples[0]:
            batch["labels"] = stack_labels(examples)
        return batch
