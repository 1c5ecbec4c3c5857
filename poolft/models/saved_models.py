"""Load a folder written by ``poolft train`` (or any HF classifier folder) with its preprocessor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from ..errors import PoolftError
from . import modeling  # noqa: F401  (registers the poolft classes with the Auto classes)
from .backbones import modality_of
from .lora import is_adapter_folder, load_lora_classifier, merged_classifier
from .onnx_model import is_onnx_export


def load_saved_classifier(folder: str) -> tuple[Any, Any, str]:
    """``(model in eval mode, tokenizer or image processor, "text" | "image")``."""
    path = Path(folder)
    if is_onnx_export(path):
        raise PoolftError(
            f"{folder} is an ONNX export (poolft export): poolft predict runs it; eval, export and the PyTorch "
            "API take the saved model folder it was exported from"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise PoolftError(f"{folder} has no config.json; pass the output_dir of a finished poolft train run")
    if not path.exists() and (folder.startswith((".", "/", "~")) or folder.count("/") > 1):
        raise PoolftError(f"model folder {folder} does not exist; pass the output_dir of a finished poolft train run")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise PoolftError(
            f"cannot load model {folder} ({_first_line(error)}); pass the output_dir of a finished poolft train run"
        ) from None
    architectures = getattr(config, "architectures", None) or []
    if architectures and config.model_type != "poolft" and not any("Classification" in a for a in architectures):
        raise PoolftError(
            f"{folder} holds a bare backbone ({architectures[0]}), not a classifier: its head would be random; pass "
            "the output_dir of a finished poolft train run (or a folder written by poolft export-merged)"
        )
    task = modality_of(config)
    auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
    try:
        if is_adapter_folder(path):  # a LoRA run: its backbone + adapter, merged for inference
            model = merged_classifier(load_lora_classifier(path))
        else:
            model = auto.from_pretrained(folder).eval()
    except (OSError, ValueError) as error:
        raise PoolftError(
            f"cannot load the weights of model {folder} ({_first_line(error)}); pass the output_dir of a finished "
            "poolft train run (it holds model.safetensors)"
        ) from None
    try:
        preprocessor = (
            AutoTokenizer.from_pretrained(folder)
            if task == "text"
            else AutoImageProcessor.from_pretrained(folder, backend="pil")
        )
    except (OSError, ValueError) as error:
        what = "tokenizer" if task == "text" else "image processor"
        raise PoolftError(
            f"{folder} has no {what} saved with the model ({_first_line(error)}); save it with "
            f"{what.replace(' ', '_')}.save_pretrained({folder!r})"
        ) from None
    return model, preprocessor, task


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def head_parameter_names(model: Any) -> list[str]:
    """Names of the state entries outside the encoder (``base_model_prefix``): pooler, classifier, ..."""
    prefix = f"{getattr(model, 'base_model_prefix', 'encoder')}."
    return [name for name in model.state_dict() if not name.startswith(prefix)]


def head_identity(config: Any) -> str:
    """``"poolft mean {}"`` or ``"stock bert"``: what a head is, to match a saved head to a run's."""
    if config.model_type == "poolft":
        options = json.dumps(config.pooler_options, sort_keys=True)  # tuples and lists alike
        return f"poolft {config.pooler} {options}"
    return f"stock {config.model_type}"


def load_head(model: Any, folder: str, label_names: list[str]) -> list[str]:
    """Copy the head (every weight outside the encoder) of the saved model in ``folder`` into ``model``.

    LP-FT by hand: a probe run trains the head on frozen states, then a fine-tune starts from it
    (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"). Returns the names copied.

    Raises:
        PoolftError: ``folder`` holds no saved model, another label set, or a head of another shape
            (another pooler, options or backbone width).
    """
    from safetensors.torch import load_file

    path = Path(folder)
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not weights or not (path / "config.json").is_file():
        raise PoolftError(
            f"model.head_from {folder} holds no saved model (config.json + *.safetensors); pass the output_dir "
            "of a finished poolft train run (e.g. a probe run with the same pooler)"
        )
    saved = AutoConfig.from_pretrained(folder)
    wanted = getattr(model, "config", None)
    if wanted is not None and head_identity(saved) != head_identity(wanted):
        raise PoolftError(
            f"model.head_from {folder} holds a {head_identity(saved)} head, this run builds a {head_identity(wanted)} "
            "one; start from a run with the same pooler, options and backbone (or a stock head for a stock head)"
        )
    saved_labels = [name for _, name in sorted(saved.id2label.items())]
    if saved_labels != list(label_names):
        raise PoolftError(
            f"model.head_from {folder} was trained on labels {saved_labels[:5]}, this run has {list(label_names)[:5]}; "
            "start from a head trained on the same labels"
        )
    state: dict[str, Any] = {}
    for file in weights:
        state.update(load_file(str(file)))
    names = head_parameter_names(model)
    current = model.state_dict()
    for name in names:
        if name not in state or tuple(state[name].shape) != tuple(current[name].shape):
            found = tuple(state[name].shape) if name in state else "nothing"
            raise PoolftError(
                f"model.head_from {folder} has {found} for {name} where this run's head needs "
                f"{tuple(current[name].shape)}; start from a run with the same pooler, options and backbone"
            )
    model.load_state_dict({name: state[name] for name in names}, strict=False)
    return names
