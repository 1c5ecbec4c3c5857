"""LP-FT: train the head alone on frozen features, then fine-tune the whole model from that head.

Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") showed that a randomly initialised head, fine-tuned together with the
backbone, pushes large early gradients into the pretrained features; training the head first
(linear probing) and then everything (fine-tuning) avoids it. In poolft the first stage is the
probe track: the backbone's states are cached once (``train.feature_cache``) and only the pooling
head and classifier train, for ``train.head_warmup_epochs`` epochs at ``head_learning_rate``.

``train.head_warmup_epochs: N`` is exactly the two runs a user could make by hand -- a probe run
into ``output_dir/head_warmup``, then ``poolft train --model.head_from output_dir/head_warmup`` --
in one resumable command: a finished first stage is reused, an interrupted one resumes from its
checkpoint, and the second stage resumes as any run does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import PoolftError
from .loop import build_accelerator, default_output_dir, run_training, shared_on_main
from .run_folder import CONFIG_FILE, prepare_output_dir, write_json

HEAD_WARMUP_DIR = "head_warmup"


def head_warmup_config(config: RunConfig) -> RunConfig:
    """The first stage: ``config`` with a frozen backbone (its states cached where a cache can serve
    the head) trained for ``head_warmup_epochs`` epochs into ``output_dir/head_warmup``."""
    warm = copy.deepcopy(config)
    warm.train.head_warmup_epochs = 0.0
    warm.train.epochs = config.train.head_warmup_epochs
    warm.train.max_steps = None
    warm.train.output_dir = str(Path(config.train.output_dir) / HEAD_WARMUP_DIR)
    warm.train.freeze_backbone = True
    warm.model.lora = None  # model.lora: the adapters train in the second stage, the head alone in this one
    # the cache holds poolft's encoder -> pooler split of the last layer, for fixed (unaugmented) inputs
    warm.train.feature_cache = (
        not config.model.stock_head and not config.data.augment and config.model.hidden_layers == [-1]
    )
    warm.train.save_best_model = False
    warm.train.save_model = True  # the second stage starts from the head saved here
    warm.train.merge_lora_at_end = False  # stage 1 trains no adapter (LoRA starts in stage 2)
    # the warmup trains the head for the epochs asked; early stopping belongs to the fine-tune
    warm.train.early_stopping_patience = None
    warm.train.eval_every_steps = None
    warm.train.eval_every_epoch = True
    # an explicit checkpoint path belongs to the second stage; the first resumes from its own latest
    warm.train.resume_from_checkpoint = "latest" if config.train.resume_from_checkpoint else None
    return warm


def check_lpft(config: RunConfig) -> None:
    """LP-FT settings that contradict each other are one-line errors."""
    if config.model.head_from is not None:
        raise PoolftError(
            "train.head_warmup_epochs trains the head itself; drop model.head_from (or set head_warmup_epochs 0 to "
            "start from that head)"
        )
    if config.train.freeze_backbone or config.train.feature_cache:
        raise PoolftError(
            "train.head_warmup_epochs fine-tunes the whole model after the head warmup; drop train.freeze_backbone "
            "and train.feature_cache (the warmup caches the frozen states itself)"
        )


def stage_finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and any(folder.glob("*.safetensors"))


def only_warmup_inside(folder: Path) -> bool:
    """The folder holds the first stage and nothing else (the second has not written its config yet)."""
    return folder.is_dir() and [child.name for child in folder.iterdir()] == [HEAD_WARMUP_DIR]


def train_lpft(config: RunConfig) -> dict[str, Any]:
    """Run both stages; returns the second stage's metrics with ``head_warmup`` (the first's) added.

    ``wall_seconds`` counts both stages (the first as recorded when it ran).
    """
    check_lpft(config)
    accelerator = build_accelerator(config)
    if config.train.output_dir is None:
        config.train.output_dir = shared_on_main(accelerator, lambda: default_output_dir(config))
    folder = Path(config.train.output_dir)
    if not only_warmup_inside(folder):  # a stage-1-only folder is this run in progress: stage 1 checks it
        shared_on_main(accelerator, lambda: str(prepare_output_dir(config, clear=False)))
    warm = head_warmup_config(config)
    warm_dir = Path(warm.train.output_dir)
    reuse = (
        stage_finished(warm_dir)
        and not config.train.overwrite_output_dir
        and bool(config.train.resume_from_checkpoint or (folder / CONFIG_FILE).is_file())
    )
    if reuse:
        accelerator.print(f"poolft: LP-FT head warmup already done in {warm_dir}; fine-tuning from it")
    else:
        accelerator.print(f"poolft: LP-FT stage 1: the head alone for {warm.train.epochs:g} epoch(s) -> {warm_dir}")
        run_training(warm)
    first = json.loads((warm_dir / "metrics.json").read_text(encoding="utf-8"))
    accelerator.print("poolft: LP-FT stage 2: the whole model from the warmed head")
    metrics = run_training(config, warmed_head=str(warm_dir))
    metrics["head_warmup"] = {
        "epochs": warm.train.epochs,
        "folder": HEAD_WARMUP_DIR,
        "feature_cache": warm.train.feature_cache,
        "final": first["final"],
        "wall_seconds": first["wall_seconds"],
    }
    metrics["wall_seconds"] += first["wall_seconds"]
    if accelerator.is_main_process:
        write_json(folder / "metrics.json", metrics)
    return metrics
