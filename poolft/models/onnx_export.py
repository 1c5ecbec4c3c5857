"""``poolft export --format onnx``: a saved classifier, pooling head included, as one ONNX graph.

The graph maps the preprocessor's outputs to ``logits``: ``input_ids`` / ``attention_mask`` (and
``token_type_ids`` where the family's tokenizer returns them) with dynamic batch and token axes
for text, ``pixel_values`` with a dynamic batch at the saved processor's fixed size for images.
A poolft text model moves left padding to the right before its encoder; that move is traced here
as ``argsort`` + ``gather`` so the graph takes either side, as the PyTorch model does.

Exporter: the TorchScript one (``torch.onnx.export(..., dynamo=False)``). The dynamo exporter
(torch 2.13's default) needs ``onnxscript`` and stops at the data-dependent branch that checks
the padding side (``GuardOnDataDependentSymNode``); tracing records the ops the example takes,
which is right for every input here because the wrapper always moves padding to the right first
and the window head pools through export-only paths that follow the token axis
(``torch.onnx.is_in_onnx_export()`` in ``pooling/window.py``).

The output folder holds ``model.onnx`` (or ``model.int8.onnx``: ONNX Runtime's dynamic
quantization, int8 weights), the tokenizer or image processor, and ``onnx_config.json``
(``ONNX_CONFIG``): labels, task, input names, max length, padding side, opset, head, versions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..data.images import processor_size
from ..errors import PoolftError
from .modeling import PoolftForSequenceClassification, PoolftPreTrainedModel, gather_tokens
from .onnx_model import ONNX_CONFIG
from .prediction import text_max_length
from .saved_models import load_saved_classifier

#: formats ``poolft export`` writes
EXPORT_FORMATS = ("onnx",)
#: ``--quantize`` choices: ONNX Runtime dynamic quantization with int8 weights
QUANTIZATIONS = ("int8",)
#: ONNX opset of the exported graph
OPSET = 17
#: the graph's file name per quantization
MODEL_FILES = {None: "model.onnx", "int8": "model.int8.onnx"}
#: per-token inputs the graph can take, in this order
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_EXTRA_HINT = 'pip install -e ".[onnx]"'


def require_onnx() -> None:
    """Raise a one-line ``PoolftError`` naming the extra when ``onnx`` or ``onnxruntime`` is missing."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise PoolftError(f"ONNX export and inference need {module}; install them with {ONNX_EXTRA_HINT}") from None


def right_padding_permutation(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the column order with the real tokens first (in order) and the padding after.

    ``(batch, tokens)`` -> ``(batch, tokens)`` indices, the same as ``right_padding_order``'s stable
    sort (the identity on a right-padded row), always computed: each column's key ``is_padding *
    tokens + column`` is distinct, so a plain ``argsort`` (which the exporter supports, unlike a
    stable sort) gives that order.
    """
    tokens = attention_mask.size(1)
    columns = torch.arange(tokens, device=attention_mask.device).unsqueeze(0)
    return torch.argsort((attention_mask == 0).long() * tokens + columns, dim=1)


class TextLogits(nn.Module):
    """A text classifier as ``(input_ids, attention_mask[, token_type_ids]) -> logits (batch, labels)``.

    For a poolft model the inputs are moved to right padding first (``right_padding_permutation``),
    so the model's own data-dependent check is traced on right-padded inputs, where it is a no-op.
    A stock head gets its inputs as given, as in PyTorch.
    """

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, list(input_names)
        self.to_right_padding = isinstance(model, PoolftForSequenceClassification)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        if self.to_right_padding:
            order = right_padding_permutation(named["attention_mask"])
            named = {name: gather_tokens(value, order) for name, value in named.items()}
        return self.model(**named).logits


class ImageLogits(nn.Module):
    """An image classifier as ``pixel_values (batch, 3, height, width) -> logits (batch, labels)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def head_name(model: nn.Module) -> str:
    """``"mean"`` for a poolft head, ``"stock:BertForSequenceClassification"`` for a transformers one."""
    if isinstance(model, PoolftPreTrainedModel):
        return model.config.pooler
    return f"stock:{type(model).__name__}"


def example_text_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two texts of different lengths, right-padded: the tracing example (any lengths work after)."""
    texts = ["the movie was great , really great", "fine"]
    encoded = tokenizer(texts, padding=True, padding_side="right", truncation=True, return_tensors="pt")
    names = [name for name in TEXT_INPUTS if name in encoded]
    if "input_ids" not in names or "attention_mask" not in names:
        raise PoolftError(f"the tokenizer returns {sorted(encoded)}; an ONNX export needs input_ids and attention_mask")
    return {name: encoded[name].long() for name in names}


def example_pixel_values(image_processor: Any) -> torch.Tensor:
    """``(2, 3, height, width)`` pixels of the saved processor's fixed output size."""
    height, width = processor_size(image_processor)
    blank = Image.new("RGB", (width, height), color=(127, 64, 200))
    pixels = image_processor([blank, blank], return_tensors="pt")["pixel_values"]
    return pixels.float()


def check_output_folder(output: Path) -> None:
    """Refuse an existing file or a non-empty folder: an export never overwrites anything."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PoolftError(f"{output} already exists and is not empty; pass a new --output folder (nothing was written)")


def export_onnx(model_dir: str, output: str, quantize: str | None = None, export_format: str = "onnx") -> Path:
    """Export the saved classifier in ``model_dir`` (poolft or stock head) to ``output``; return it.

    Raises:
        PoolftError: an unknown format or quantization, onnx/onnxruntime missing, ``output`` not
            new or empty, ``model_dir`` not a saved classifier, or a head the exporter cannot trace.
    """
    if export_format not in EXPORT_FORMATS:
        raise PoolftError(f"unknown export format {export_format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if quantize not in (None, *QUANTIZATIONS):
        raise PoolftError(f"unknown quantization {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    require_onnx()
    target = Path(output)
    check_output_folder(target)
    model, preprocessor, task = load_saved_classifier(model_dir)
    model = model.float().eval()
    if task == "text":
        example = example_text_inputs(preprocessor)
        wrapper: nn.Module = TextLogits(model, list(example))
        dynamic_axes = {name: {0: "batch", 1: "tokens"} for name in example}
    else:
        example = {"pixel_values": example_pixel_values(preprocessor)}
        wrapper = ImageLogits(model)
        dynamic_axes = {"pixel_values": {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"  # renamed to ``target`` once complete
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        graph = staging / MODEL_FILES[None]
        encoder_config = getattr(model.config, "encoder_config", None) or model.config
        what = f"{model_dir} ({encoder_config.model_type} encoder, {head_name(model)} head)"
        trace(wrapper.eval(), example, graph, {**dynamic_axes, "logits": {0: "batch"}}, what)
        if quantize == "int8":
            quantize_int8(graph, staging / MODEL_FILES["int8"])
            graph.unlink()
        max_length = text_max_length(model.config, preprocessor) if task == "text" else None
        if max_length is not None:  # the limit travels with the tokenizer, as poolft train saves it
            preprocessor.model_max_length = max_length
        preprocessor.save_pretrained(staging)
        settings = export_settings(model, task, list(example), max_length, quantize, example)
        (staging / ONNX_CONFIG).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # an empty folder (checked above)
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def trace(
    wrapper: nn.Module, example: dict[str, torch.Tensor], path: Path, dynamic_axes: dict[str, dict[int, str]], what: str
) -> None:
    """``torch.onnx.export`` with the TorchScript exporter; a failure is one line naming the model, encoder and head."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape-derived Python values, all checked by the tests
        try:
            torch.onnx.export(
                wrapper,
                tuple(example.values()),
                str(path),
                input_names=list(example),
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as error:  # the exporter raises many types; each means "this graph cannot be traced"
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise PoolftError(
                f"{what} cannot be exported to ONNX: {reason}; "
                "use poolft predict on the saved model, or train a head that exports (README: Export to ONNX)"
            ) from None


def quantize_int8(source: Path, destination: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights (``QInt8``), activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger
    try:
        quantize_dynamic(source, destination, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def export_settings(
    model: nn.Module,
    task: str,
    input_names: list[str],
    max_length: int | None,
    quantize: str | None,
    example: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The ``onnx_config.json`` of an export: what the runtime needs, and what was exported."""
    config = model.config
    settings: dict[str, Any] = {
        "format": "onnx",
        "model_file": MODEL_FILES[quantize],
        "quantization": quantize,
        "task": task,
        "head": head_name(model),
        "id2label": {str(i): label for i, label in sorted(config.id2label.items())},
        "problem_type": config.problem_type,
        "input_names": input_names,
        "output_names": ["logits"],
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False)",
        "poolft_version": package_version("poolft"),
        "torch_version": torch.__version__,
    }
    if task == "text":
        # the runtime pads on the right (as poolft's collator does); a poolft graph also takes left padding
        settings.update(max_length=max_length, padding_side="right")
    else:
        settings["image_size"] = list(example["pixel_values"].shape[-2:])
    return settings


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
