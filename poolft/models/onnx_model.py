"""An exported ONNX classifier run on ONNX Runtime, called like a transformers model.

``OnnxClassifierModel(**batch).logits`` runs the folder ``poolft export --format onnx`` wrote, with
no PyTorch model code: ``prediction.Classifier`` then tokenizes, sorts by length, pads on the
right and scores exactly as it does for a saved PyTorch model. Threads: ONNX Runtime's intra-op
pool gets one thread per CPU core this process may use, inter-op one (the graph is a chain).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig

from ..errors import PoolftError

#: the export's settings file (``onnx_export.ONNX_CONFIG``)
ONNX_CONFIG = "onnx_config.json"


def is_onnx_export(folder: str | Path) -> bool:
    """Whether ``folder`` was written by ``poolft export --format onnx``."""
    return (Path(folder) / ONNX_CONFIG).is_file()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads (default: cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PoolftError(
            'running an ONNX export needs onnxruntime; install it with pip install -e ".[onnx]"'
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxClassifierModel:
    """``model(**batch).logits`` (``(batch, labels)`` float32) from an ONNX export, on ONNX Runtime.

    ``config`` carries what ``Classifier`` reads: ``id2label``, ``num_labels``, ``problem_type``.
    Inputs are torch tensors (``input_ids`` / ``attention_mask`` / ``token_type_ids`` ``(batch,
    tokens)`` or ``pixel_values`` ``(batch, 3, height, width)``); those the graph does not take are
    ignored, as a tokenizer may return more than the exported model reads.
    """

    def __init__(self, session: Any, settings: dict[str, Any]) -> None:
        self.session, self.settings = session, settings
        id2label = {int(i): label for i, label in settings["id2label"].items()}
        self.config = PretrainedConfig(
            id2label=id2label,
            label2id={label: i for i, label in id2label.items()},
            problem_type=settings.get("problem_type"),
        )
        self.input_names = [item.name for item in session.get_inputs()]

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        dtypes = {"pixel_values": np.float32}
        feeds = {name: batch[name].numpy().astype(dtypes.get(name, np.int64), copy=False) for name in self.input_names}
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load_onnx_classifier(folder: str | Path, threads: int | None = None) -> tuple[OnnxClassifierModel, Any, str]:
    """``(model, tokenizer or image processor, "text" | "image")`` of an ONNX export folder."""
    path = Path(folder)
    settings = json.loads((path / ONNX_CONFIG).read_text(encoding="utf-8"))
    graph = path / settings["model_file"]
    if not graph.is_file():
        raise PoolftError(f"{folder} has no {settings['model_file']}; export the model again with poolft export")
    task = settings["task"]
    preprocessor = (
        AutoTokenizer.from_pretrained(path)
        if task == "text"
        else AutoImageProcessor.from_pretrained(path, backend="pil")
    )
    return OnnxClassifierModel(onnx_session(graph, threads), settings), preprocessor, task
