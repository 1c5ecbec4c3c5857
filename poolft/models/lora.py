"""LoRA through peft: low-rank adapters in the backbone, the pooled head trained in full.

``apply_lora`` wraps a classifier (poolft head or stock head) in a ``peft.PeftModel``: adapters
on the backbone's attention query/value projections (found in the model, whatever the family
calls them) or on ``model.lora.target_modules``, and every module outside the backbone (pooler,
layer mix, classifier) in peft's ``modules_to_save``, so the head trains in full and is saved and
restored with the adapter. ``save_adapter`` writes peft's ``adapter_config.json`` and
``adapter_model.safetensors`` beside the classifier's ``config.json``; ``load_lora_classifier``
rebuilds the base model from the backbone the adapter names and loads the adapter;
``export_merged`` folds the adapter into the weights (``merge_and_unload``) and saves a plain
model that loads with no peft installed.

peft is an optional extra (``pip install -e ".[peft]"``); it is imported only when LoRA is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from ..config import ModelConfig
from ..errors import PoolftError
from .backbones import build_model, load_backbone_config, modality_of

PEFT_INSTALL = 'pip install -e ".[peft]"'
ADAPTER_CONFIG = "adapter_config.json"
#: where ``train.merge_lora_at_end`` writes the merged model inside the run folder
MERGED_DIR = "merged"
#: the attention query/value projections of each family, tried in order; the first whose names all
#: exist in the backbone are its default targets (BERT, RoBERTa, ELECTRA, ALBERT, XLM-R | ViT, DeiT,
#: BEiT, DINOv2, CLIP, SigLIP | DistilBERT | DeBERTa-v2), then fused query-key-value projections
#: (ModernBERT's ``Wqkv``, timm-style ``qkv``, GPT-NeoX-style ``query_key_value``)
DEFAULT_TARGETS = (
    ("query", "value"),
    ("q_proj", "v_proj"),
    ("q_lin", "v_lin"),
    ("query_proj", "value_proj"),
    ("Wqkv",),
    ("qkv",),
    ("query_key_value",),
)
#: layers peft's LoRA can adapt
LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)


def require_peft() -> Any:
    """The ``peft`` module, or a one-line error saying how to install it."""
    try:
        import peft
    except ImportError:
        raise PoolftError(f"model.lora needs the peft package, which is not installed; run {PEFT_INSTALL}") from None
    return peft


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the transformers deprecation notice peft's own calls trigger (nothing a user can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_lora_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (False when peft was never imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a LoRA run's adapter (``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def backbone_layers(model: PreTrainedModel) -> dict[str, nn.Module]:
    """The layers LoRA can adapt inside the backbone, by name relative to it (``encoder.layer.0.output.dense``)."""
    backbone = model.get_submodule(model.base_model_prefix)
    return {name: module for name, module in backbone.named_modules() if isinstance(module, LORA_LAYERS)}


def matches(name: str, target: str) -> bool:
    """peft's rule: a target names a module by its full name or a dotted suffix of it."""
    return name == target or name.endswith(f".{target}")


def resolve_targets(model: PreTrainedModel, targets: list[str] | None, backbone: str) -> list[str]:
    """``targets``, each checked to name a layer of the backbone; None -> the family's query/value projections.

    Raises:
        PoolftError: a target that matches no layer, or no default found; the message lists the
            backbone's Linear layers by leaf name.
    """
    layers = backbone_layers(model)
    linear = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, m in layers.items() if isinstance(m, nn.Linear)))
    if targets is None:
        for names in DEFAULT_TARGETS:
            if all(any(matches(layer, name) for layer in layers) for name in names):
                return list(names)
        raise PoolftError(
            f"found no attention query/value projections in backbone {backbone} ({model.config.model_type}); "
            f"set model.lora.target_modules to some of its Linear layers: {', '.join(linear)}"
        )
    for target in targets:
        if not any(matches(layer, target) for layer in layers):
            raise PoolftError(
                f"model.lora.target_modules entry {target!r} matches no layer of backbone {backbone}; "
                f"its Linear layers are: {', '.join(linear)}"
            )
    return list(targets)


def target_pattern(model: PreTrainedModel, targets: list[str]) -> str:
    """peft's ``target_modules`` as one regex over full module names, limited to the backbone.

    A plain list would also match the head (the attention pooler has its own ``key``/``value``
    layers, the ``cls`` head a ``dense`` one), which trains in full instead.
    """
    names = "|".join(re.escape(target) for target in targets)
    return rf"{re.escape(model.base_model_prefix)}(\..*)?\.({names})"


def head_modules(model: PreTrainedModel) -> list[str]:
    """The top-level modules outside the backbone that hold parameters: ``pooler``, ``classifier``, ..."""
    return [
        name
        for name, module in model.named_children()
        if name != model.base_model_prefix and any(True for _ in module.parameters())
    ]


def apply_lora(model: PreTrainedModel, options: dict[str, Any], backbone: str, revision: str | None = None) -> Any:
    """``model`` wrapped in a ``peft.PeftModel``: LoRA adapters in the backbone, the head trained in full.

    ``options`` is the checked ``model.lora`` mapping (``r``, ``alpha``, ``dropout``,
    ``target_modules``). Afterwards only the adapters and the head require grad; the head's
    trainable copy keeps each parameter's ``requires_grad`` (GeM with ``learn_p: false`` keeps ``p`` fixed).

    Raises:
        PoolftError: peft is missing, or a target matches no layer of the backbone.
    """
    require_peft()
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, options.get("target_modules"), backbone)
    heads = head_modules(model)
    for head in heads:  # peft matches modules_to_save by name suffix: "pooler" must not reach into the backbone
        stray = [name for name, _ in model.named_modules() if name != head and name.endswith(head)]
        if stray:
            raise PoolftError(f"cannot train the head {head!r} with LoRA: {stray[0]} has a name ending like it")
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    config = LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=target_pattern(model, targets),
        modules_to_save=heads,
        revision=revision,
    )
    with quiet_peft():
        wrapped = get_peft_model(model, config)
    # where predict, eval and export-merged find the backbone (an absolute path for a local folder)
    local = Path(backbone).expanduser()
    wrapped.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.exists() else backbone
    for head in heads:
        copy = wrapped.get_base_model().get_submodule(head).modules_to_save["default"]
        for name, parameter in copy.named_parameters():
            parameter.requires_grad_(trainable[f"{head}.{name}"])
    return wrapped


class AdapterSaver:
    """A LoRA classifier as ``save_model_atomically`` saves models: ``save_pretrained(folder)`` writes its adapter."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        save_adapter(self.model, Path(folder))


def saveable(model: Any) -> Any:
    """What a run saves: an ``AdapterSaver`` for a LoRA classifier, else ``model`` itself."""
    return AdapterSaver(model) if is_lora_model(model) else model


def save_adapter(model: Any, folder: Path) -> None:
    """peft's adapter files (LoRA weights + the head in ``modules_to_save``) and the classifier's ``config.json``.

    ``config.json`` gives the head, the labels and the modality; ``adapter_config.json`` the backbone
    (``base_model_name_or_path``, ``revision``) the base model is rebuilt from.
    """
    model.save_pretrained(str(folder), safe_serialization=True)
    model.get_base_model().config.save_pretrained(str(folder))


def base_model_config(config: PretrainedConfig, backbone: str, revision: str | None) -> ModelConfig:
    """The ``model`` section that builds a LoRA run's base model again (without LoRA), read from its ``config.json``."""
    if config.model_type != "poolft":
        return ModelConfig(backbone=backbone, stock_head=True, revision=revision)
    return ModelConfig(
        backbone=backbone,
        pooler=config.pooler,
        pooler_options=dict(config.pooler_options),
        hidden_layers=list(config.hidden_layers),
        layer_combine=config.layer_combine,
        classifier_dropout=config.classifier_dropout,
        revision=revision,
    )


def load_lora_classifier(folder: str | Path) -> Any:
    """The ``peft.PeftModel`` saved in ``folder`` by a LoRA run, in eval mode.

    The base model is built from the backbone named in ``adapter_config.json`` with the head and
    labels of ``config.json`` (the head's weights then come from the adapter's ``modules_to_save``).

    Raises:
        PoolftError: peft is missing, or the backbone cannot be loaded.
    """
    require_peft()
    from peft import PeftModel

    folder = Path(folder)
    adapter = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(folder)
    task = modality_of(config)
    backbone = adapter.get("base_model_name_or_path")
    if not backbone:
        raise PoolftError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path); retrain the run")
    model_config = base_model_config(config, backbone, adapter.get("revision"))
    load_backbone_config(backbone, model_config)  # a moved or missing backbone is a one-line error
    labels = [config.id2label[i] for i in range(config.num_labels)]
    image_size = getattr(config, "image_size", None) if model_config.stock_head and task == "image" else None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report calls the head "newly initialized"; the adapter restores it
    try:
        base = build_model(backbone, task, model_config, labels, image_size)
    finally:
        hf_logging.set_verbosity(verbosity)
    with quiet_peft():
        return PeftModel.from_pretrained(base, str(folder), is_trainable=False).eval()


def merged_classifier(model: Any) -> PreTrainedModel:
    """A plain Hugging Face classifier with the adapters folded into the backbone's weights."""
    return model.merge_and_unload().eval()


def export_merged(folder: str | Path, output: str | Path, *, replace: bool = False) -> Path:
    """Write the LoRA run in ``folder`` merged into a plain model folder ``output`` (weights, config,
    tokenizer or image processor, model card), loadable by the Auto classes and ``pipeline``
    without peft. Written to a temporary sibling first; ``replace`` lets an existing ``output`` go.

    Raises:
        PoolftError: ``folder`` holds no LoRA adapter, or ``output`` exists (without ``replace``).
    """
    from .saved_models import load_saved_classifier

    folder, output = Path(folder), Path(output)
    if not is_adapter_folder(folder):
        raise PoolftError(
            f"{folder} holds no LoRA adapter ({ADAPTER_CONFIG}); pass the output_dir of a run trained with model.lora"
        )
    if output.exists() and not replace and (not output.is_dir() or any(output.iterdir())):
        raise PoolftError(f"{output} already exists and is not empty; choose a new folder for --output")
    model, preprocessor, _ = load_saved_classifier(str(folder))
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".tmp-{output.name}-"))
    try:
        model.save_pretrained(temporary, safe_serialization=True)
        preprocessor.save_pretrained(temporary)
        if (folder / "README.md").is_file():
            shutil.copyfile(folder / "README.md", temporary / "README.md")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(temporary, output)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise PoolftError(f"could not write the merged model to {output} ({error.strerror}); free disk space") from None
    return output
