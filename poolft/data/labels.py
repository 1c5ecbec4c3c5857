"""Multi-label data: which splits are multi-label, their label names, and the multi-hot ``labels`` column.

A split is multi-label when ``data.label_columns`` names several 0/1 columns (one per label), or
when ``data.label_column`` holds a list of labels per row (``["sports", "politics"]``, ``[0, 3]``,
``[]`` for none). Its ``labels`` column is then a float multi-hot vector ``(num_labels,)`` per row,
which the collators stack into ``(batch, num_labels)``; the model is built with
``problem_type="multi_label_classification"`` (sigmoid outputs, BCE-with-logits loss), as
transformers does. Single-label data keeps the int ``labels`` column of ``sources.encode_labels``.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset

from ..config import DataConfig
from ..errors import PoolftError

#: ``PretrainedConfig.problem_type`` of a multi-label classifier (transformers' name)
MULTI_LABEL = "multi_label_classification"


def is_multi_label(config: DataConfig, split: Dataset, split_name: str) -> bool:
    """Whether ``split``'s labels are multi-label; a column mixing lists and single labels is an error."""
    if config.label_columns:
        return True
    feature = split.features.get(config.label_column)
    if isinstance(feature, (datasets.Sequence, datasets.LargeList)):
        return True
    if not isinstance(feature, datasets.Json):  # what datasets reads a column of mixed JSON types as
        return False
    first_is_list = None
    for row, value in enumerate(split[config.label_column]):
        if value is None:
            continue
        if first_is_list is None:
            first_is_list, first_row = isinstance(value, list), row
        elif isinstance(value, list) != first_is_list:
            rows = (first_row, row) if first_is_list else (row, first_row)
            raise PoolftError(
                f"column {config.label_column!r} of split {split_name!r} mixes lists and single labels (row "
                f"{rows[0] + 1} holds a list, row {rows[1] + 1} holds "
                f"{value if first_is_list else split[first_row][config.label_column]!r}); write every row's "
                'labels as a list (e.g. ["sports"]) for multi-label data, or one label per row'
            )
    return bool(first_is_list)


def multi_label_names(config: DataConfig, train: Dataset) -> list[str]:
    """``data.label_columns`` in order, else the names of a list ``ClassLabel``, else the sorted distinct labels."""
    if config.label_columns:
        return list(config.label_columns)
    inner = getattr(train.features[config.label_column], "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    values = {value for labels in train[config.label_column] if labels is not None for value in labels}
    if None in values:
        raise PoolftError(
            f"the training split has empty labels inside the lists of column {config.label_column!r}; drop them"
        )
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def encode_multi_hot(split: Dataset, config: DataConfig, label_names: list[str], split_name: str) -> Dataset:
    """Replace the label column(s) with a float multi-hot ``labels`` column ``(len(label_names),)`` per row.

    Raises ``PoolftError`` (one line, naming the row) for a row without labels, a 0/1 column holding
    anything else, or a listed label that is not in ``label_names``.
    """
    if config.label_columns:
        columns = list(config.label_columns)
        for column in columns:
            for row, value in enumerate(split[column]):
                if value not in (0, 1) or isinstance(value, str):
                    raise PoolftError(
                        f"label column {column!r} of split {split_name!r} holds {value!r} in row {row + 1}; "
                        "each of data.label_columns holds 0 or 1 per row"
                    )

        def to_multi_hot(batch: dict[str, list]) -> dict[str, list]:
            rows = zip(*(batch[column] for column in columns), strict=True)
            return {"labels": [[float(value) for value in row] for row in rows]}

    else:
        column = config.label_column
        inner = getattr(split.features[column], "feature", None)
        if isinstance(inner, ClassLabel) and list(inner.names) != label_names:
            raise PoolftError(
                f"split {split_name!r} has label names {inner.names} but training has {label_names}; "
                "use the same label set in every split"
            )
        index = {name: i for i, name in enumerate(label_names)}
        # ClassLabel lists hold ids; other lists hold the labels themselves (compared as text)
        name_of = inner.int2str if isinstance(inner, ClassLabel) else str
        for row, labels in enumerate(split[column]):
            if labels is None:
                raise PoolftError(
                    f"split {split_name!r} has no labels in row {row + 1} of column {column!r}; write [] for a row "
                    "with no label, or drop the row"
                )
            unknown = [value for value in labels if value is None or name_of(value) not in index]
            if unknown:
                raise PoolftError(
                    f"split {split_name!r} row {row + 1} has label {unknown[0]!r}, not in the training labels "
                    f"({', '.join(label_names[:10])}{', ...' if len(label_names) > 10 else ''}); "
                    "make every label appear in the training split"
                )
        columns = [column]

        def to_multi_hot(batch: dict[str, list]) -> dict[str, list]:
            vectors = []
            for labels in batch[column]:
                vector = [0.0] * len(label_names)
                for value in labels:
                    vector[index[name_of(value)]] = 1.0
                vectors.append(vector)
            return {"labels": vectors}

    features = split.features.copy()
    for column in columns:
        del features[column]
    features["labels"] = datasets.List(datasets.Value("float32"), length=len(label_names))
    remove = [column for column in columns if column != "labels"]
    return split.map(
        to_multi_hot, batched=True, features=features, remove_columns=remove, desc=f"labels ({split_name})"
    )


def stack_labels(examples: list[dict[str, Any]]) -> torch.Tensor:
    """``labels`` of a batch: int ids ``(batch,)``, or float multi-hot ``(batch, num_labels)``."""
    return torch.as_tensor(np.stack([np.asarray(example["labels"]) for example in examples]))
