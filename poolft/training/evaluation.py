"""``poolft eval``: metrics of a saved model on a dataset split, with the training loop's evaluator."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator, DataLoaderConfiguration

from ..config import DataConfig, load_config
from ..data.inputs import encode_split, example_lengths, make_collator
from ..data.labels import MULTI_LABEL
from ..data.sampling import FixedBatches, length_sorted_batches
from ..data.sources import load_splits, with_number_aliases
from ..errors import PoolftError
from ..models.prediction import text_max_length
from ..models.saved_models import load_saved_classifier
from .run_folder import CONFIG_FILE


def eval_data_config(model_dir: str, config_path: str | None, overrides: dict[str, Any]) -> DataConfig:
    """The data section of ``--config``, else of the run that wrote ``model_dir``, plus overrides."""
    if config_path is None and (Path(model_dir) / CONFIG_FILE).is_file():
        config_path = str(Path(model_dir) / CONFIG_FILE)
    data = load_config(config_path).data if config_path else DataConfig()
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    # other data: the training files and the text column(s) chosen from them do not apply
    other_data = {"data_files": None, "text_column": None, "text_pair_column": None}
    if not ("path" in overrides or "data_files" in overrides):
        other_data = {}
    return dataclasses.replace(data, **{**other_data, **{k: v for k, v in overrides.items() if k in fields}})


def evaluate_saved_model(
    model_dir: str, config_path: str | None, overrides: dict[str, Any], batch_size: int = 64
) -> dict[str, Any]:
    """Accuracy, macro-F1, loss and throughput of ``model_dir`` on the configured evaluation split."""
    from .loop import evaluate_model, sharded_loader

    model, preprocessor, task = load_saved_classifier(model_dir)
    data = eval_data_config(model_dir, config_path, overrides)
    splits = load_splits(data, need_train=False)
    data = splits.data  # text column(s) chosen from the data when unset
    max_length = text_max_length(model.config, preprocessor) if task == "text" else None
    if max_length is not None:  # truncate as training did (the saved tokenizer's length, within the positions)
        data = dataclasses.replace(data, max_length=max_length)
    if splits.task != task:
        raise PoolftError(
            f"model {model_dir} is a {task} model but split {data.eval_split!r} is {splits.task} data; "
            f"evaluate it on {task} data (--data.path)"
        )
    names = {name: int(i) for i, name in model.config.id2label.items()}
    model_labels = with_number_aliases(names)  # 0/1 learned, 0.0/1.0 in a file pandas wrote: the same labels
    missing = [name for name in splits.label_names if name not in model_labels]
    if missing:
        raise PoolftError(
            f"labels {missing[:5]} of split {data.eval_split!r} are not among the model's labels "
            f"{list(names)}; evaluate on data with the model's label set"
        )
    check_label_kind(model_dir, model.config, splits.multi_label, data.eval_split)
    remap = [model_labels[name] for name in splits.label_names]
    if splits.multi_label:  # multi-hot columns in the split's label order -> the model's
        size = model.config.num_labels
        split = splits.eval.map(
            lambda b: {"labels": [multi_hot_in(row, remap, size) for row in b["labels"]]}, batched=True
        )
    else:
        split = splits.eval.map(lambda b: {"labels": [remap[i] for i in b["labels"]]}, batched=True)
    encoded = encode_split(split, preprocessor, task, data, data.eval_split)
    lengths = example_lengths(encoded, task) or [0] * len(encoded)
    # each process evaluates its share of every batch (see ShardedBatches); each sample counts once
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    batches = FixedBatches(length_sorted_batches(lengths, batch_size))
    loader = sharded_loader(encoded, batches, make_collator(preprocessor, task), accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    started = time.perf_counter()
    metrics = evaluate_model(model, loader, accelerator)
    seconds = time.perf_counter() - started
    metrics.update(seconds=seconds, samples_per_second=metrics["samples"] / seconds, split=data.eval_split)
    return metrics


def check_label_kind(model_dir: str, config: Any, multi_label: bool, split: str) -> None:
    """A multi-label model on single-label data, or the reverse, is a one-line error."""
    model_multi_label = config.problem_type == MULTI_LABEL
    if model_multi_label != multi_label:
        kinds = ("multi-label", "one label per row") if model_multi_label else ("single-label", "lists of labels")
        raise PoolftError(
            f"model {model_dir} is a {kinds[0]} classifier but split {split!r} has {kinds[1]}; "
            "evaluate it on data labelled like its training data"
        )


def multi_hot_in(row: list[float], positions: list[int], size: int) -> list[float]:
    """A multi-hot ``row`` moved to ``size`` label positions (``positions[i]``: label i's index there)."""
    vector = [0.0] * size
    for value, position in zip(row, positions, strict=True):
        vector[position] = value
    return vector
