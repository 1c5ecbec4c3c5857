"""Load a folder written by ``poolft train`` (or any HF classifier folder) with its preprocessor."""

from __future__ import annotations

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


def load_saved_classifier(folder: str) -> tuple[Any, Any, str]:
    """``(model in eval mode, tokenizer or image processor, "text" | "image")``."""
    path = Path(folder)
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
    task = modality_of(config)
    auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
    try:
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
