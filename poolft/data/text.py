"""Text examples -> token ids: tokenize once with ``datasets.map`` (cached), pad per batch."""

from __future__ import annotations

import functools
import hashlib
import json
import types
from typing import Any

import tokenizers
import torch
import transformers
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
    fingerprint = tokenized_fingerprint(split, tokenizer, [tokenize, _as_text], [columns, max_length, remove])
    return split.map(
        tokenize, batched=True, remove_columns=remove, desc=f"tokenize ({name})", new_fingerprint=fingerprint
    )


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
    """What of a fast tokenizer decides its token ids, as JSON-ready values (None for a slow one, or
    one whose backend holds a custom Python component that cannot be serialised).

    The sha256 of the backend's serialised vocabulary, normaliser, pre-tokeniser and post-processor,
    without the truncation and padding state each call resets; the Python-side class, init
    arguments (not the paths it was read from) and truncation side.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        serialised = backend.to_str()
    except Exception:  # a custom Python component cannot be serialised (tokenizers raises a plain Exception)
        return None
    return {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "backend_sha256": pipeline_digest(serialised),
        "init": json.loads(json.dumps(_without_locations(tokenizer.init_kwargs), sort_keys=True, default=str)),
        "truncation_side": tokenizer.truncation_side,
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }


def _without_locations(init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The init arguments without where the tokenizer was read from (``name_or_path``, ``*_file``):
    the same files under another path, or the same path spelt relative or absolute, give the same
    ids, and what the files hold is in the backend's digest."""
    return {key: value for key, value in init_kwargs.items() if key != "name_or_path" and not key.endswith("_file")}


@functools.lru_cache(maxsize=8)
def pipeline_digest(serialised: str) -> str:
    """sha256 of a serialised ``tokenizers`` pipeline without its truncation and padding state.

    Remembered per serialised text: a sweep loads the same tokenizer for every run, and the JSON
    round trip takes 30-60 ms for a 30,000-word vocabulary.
    """
    pipeline = json.loads(serialised)
    pipeline.pop("truncation", None)
    pipeline.pop("padding", None)
    # tokenizers serialises in a fixed order: no sort_keys (30 times slower on a 30,000-word vocabulary)
    return hashlib.sha256(json.dumps(pipeline).encode()).hexdigest()


def tokenized_fingerprint(
    split: Dataset, tokenizer: PreTrainedTokenizerBase, functions: list[Any], settings: list[Any]
) -> str | None:
    """The ``datasets`` fingerprint of ``split`` tokenized by ``functions`` (their code) with ``tokenizer``.

    ``datasets`` would hash the tokenizer with dill, about 0.7 s for MiniLM's on every run of a
    sweep; this hashes the same facts in milliseconds. None (``datasets`` hashes as usual) where
    :func:`tokenizer_identity` cannot summarise the tokenizer.
    """
    identity = tokenizer_identity(tokenizer)
    if identity is None:
        return None
    digest = hashlib.sha256(split._fingerprint.encode())
    digest.update(json.dumps({"tokenizer": identity, "settings": settings}, sort_keys=True).encode())
    for function in functions:
        digest.update(repr(code_parts(function.__code__)).encode())
    return digest.hexdigest()[:32]


def code_parts(code: types.CodeType) -> tuple[Any, ...]:
    """What a code object computes, as plain values whose ``repr`` is the same in every process.

    Not ``marshal.dumps``: its bytes depend on the reference counts of the constants (it marks an
    object shared only when something else holds it), so the same function hashed differently
    from one run to the next and the tokenize and feature caches missed. Frozenset constants are
    sorted (their order follows the per-process string hash).
    """
    return (
        code.co_code,
        tuple(_constant_parts(constant) for constant in code.co_consts),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_kwonlyargcount,
        code.co_flags,
    )


def _constant_parts(constant: Any) -> Any:
    if isinstance(constant, types.CodeType):
        return code_parts(constant)
    if isinstance(constant, tuple):
        return tuple(_constant_parts(item) for item in constant)
    if isinstance(constant, frozenset):
        return ("frozenset", sorted(repr(_constant_parts(item)) for item in constant))
    return (type(constant).__name__, repr(constant))


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
