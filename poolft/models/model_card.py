"""The README.md model card saved with every trained model."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

from ..config import RunConfig

#: what the card of a LoRA run's folder adds to "Use": the folder itself holds an adapter, not a model
LORA_USE = [
    "A LoRA run's folder holds a peft adapter on the backbone, not a whole model: `poolft predict --model "
    "FOLDER` and `poolft eval --model FOLDER` read it, and `poolft export-merged --model FOLDER --output DIR` "
    "(or `merged/`, written with `train.merge_lora_at_end`) is the plain model that the lines above load.",
    "",
]


def repeat_command(config_path: str) -> str:
    """The command that repeats a run from its saved config."""
    return f"poolft train --config {shlex.quote(config_path)}"


def model_card(config: RunConfig, metrics: dict[str, Any], label_names: list[str], task: str) -> str:
    """Markdown describing the pooler, data, metrics and how to repeat the run."""
    model, data = config.model, config.data
    head = "stock Hugging Face head" if model.stock_head else f"`{model.pooler}` {json.dumps(model.pooler_options)}"
    pipeline_task = "text-classification" if task == "text" else "image-classification"
    final = metrics.get("final", {})
    best = metrics.get("best", {})
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_task}",
        "tags: [poolft]",
        "---",
        "",
        f"# poolft {task} classifier",
        "",
        f"- Backbone: `{metrics.get('backbone', model.backbone)}`",
        f"- Pooling head: {head}; hidden layers {model.hidden_layers}",
        f"- Data: `{data_source(config)}` train split `{data.train_split}` ({metrics.get('train_size')} examples), "
        f"evaluated on `{data.eval_split}` ({metrics.get('eval_size')} examples)",
        f"- Labels: {', '.join(label_names)}",
        "",
        "| metric | final | best |",
        "|---|---|---|",
    ]
    for key in ("accuracy", "micro_f1", "macro_f1", "exact_match", "loss"):  # micro_f1, exact_match: multi-label
        if key in final or key in best:
            lines.append(f"| {key} | {_fmt(final.get(key))} | {_fmt(best.get(key))} |")
    lines += [
        "",
        f"Trained for {metrics.get('global_step')} steps in {_fmt(metrics.get('wall_seconds'))} s "
        f"({_fmt(metrics.get('train_samples_per_second'))} samples/s) on {metrics.get('hardware', {}).get('cpu')}.",
        "",
        "## Use",
        "",
        "```python",
        "import poolft  # registers the poolft model classes with transformers",
        "from transformers import pipeline",
        f'classifier = pipeline("{pipeline_task}", model="path/to/this/folder")',
        "```",
        "",
        *(LORA_USE if model.lora is not None else []),
        "## Repeat",
        "",
        "```bash",
        repeat_command("config.yaml"),
        "```",
        "",
        f"Original command: `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
    ]
    return "\n".join(lines)


def data_source(config: RunConfig) -> str:
    """The dataset as the user named it: data files, or the path (+ Hub config name)."""
    data = config.data
    if data.data_files:
        return ", ".join(f"{split}: {path}" for split, path in data.data_files.items())
    return data.path + (f" ({data.name})" if data.name else "")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
