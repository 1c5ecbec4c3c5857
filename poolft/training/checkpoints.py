"""Crash-safe training checkpoints.

A checkpoint is written by ``accelerator.save_state`` into ``checkpoints/.tmp-step-N``, completed
with poolft's own pickle-free files (trainer state and RNG states as JSON, the weight average of
``train.ema_decay`` as safetensors) and a ``COMPLETE`` manifest holding every file's size, then
renamed to ``checkpoints/step-N``. "latest" is the newest checkpoint whose manifest matches the
files on disk, so a crash mid-save or a damaged file never becomes "latest": resume falls back to
the newest intact one and says why in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import PoolftError
from .averaging import ema_tensors, load_ema_tensors
from .fault_injection import maybe_fail

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"  # the weight average of train.ema_decay (poolft/training/averaging.py)


@dataclass
class TrainerState:
    """Where training stands: enough, with the weights and optimiser, to continue exactly."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    accumulate_calls: int = 0
    samples_seen: int = 0
    skipped_nonfinite_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    # early stopping: evaluations in a row without a better metric_for_best (the last one counted at
    # counted_evaluation_step: an epoch's end re-evaluates that step), and why the run stopped
    evaluations_without_improvement: int = 0
    counted_evaluation_step: int | None = None
    stopped_early: dict[str, Any] | None = None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU RNG states as JSON-safe values."""
    numpy_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def write_manifest(folder: Path) -> None:
    """Record every file's size; written last, it marks the checkpoint complete."""
    sizes = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = folder / MANIFEST
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump(sizes, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None if it is intact."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no completion manifest (the save was interrupted)"
    try:
        sizes = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "damaged completion manifest"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != size:
            return f"truncated file {name} ({path.stat().st_size} of {size} bytes)"
    return None


def step_of(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished-looking checkpoint folders ``step-N``, oldest first (not yet verified)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=step_of)


def resolve_checkpoint(output_dir: str | Path, request: str, report: Any = print) -> Path | None:
    """``"latest"`` -> newest intact checkpoint (None when there is none); a path -> that path.

    Damaged checkpoints are reported in one line each through ``report`` and skipped.
    """
    if request != "latest":
        folder = Path(request)
        problem = checkpoint_problem(folder) if folder.is_dir() else "no such folder"
        if problem:
            raise PoolftError(f"checkpoint {folder} cannot be used: {problem}; pass another one or 'latest'")
        return folder
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        report(f"poolft: skipping damaged checkpoint {folder}: {problem}")
    return None


def save_checkpoint(
    accelerator: Any, output_dir: str | Path, state: TrainerState, total_limit: int, *, ema: Any = None
) -> Path:
    """Save model/optimizer/scheduler + trainer and RNG state atomically; keep ``total_limit``.

    ``ema`` (an ``AveragedModel``) is saved too, as ``ema.safetensors``.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.global_step}"
    temporary = root / f".tmp-step-{state.global_step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    rng_file = temporary / f"rng_state_{accelerator.process_index}.json"
    rng_file.write_text(json.dumps(rng_state()), encoding="utf-8")
    maybe_fail("checkpoint", state.global_step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        if ema is not None:
            save_file(ema_tensors(ema), temporary / EMA_FILE)
        write_manifest(temporary)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, folder: Path, *, ema: Any = None) -> TrainerState:
    """Restore weights, optimiser, scheduler, RNG states (and ``ema``'s average); return the trainer state.

    Raises:
        PoolftError: the checkpoint was saved by another number of processes (its batches and RNG
            streams are per process: every process finds the same files and stops with this line).
    """
    saved_by = len(list(folder.glob("rng_state_*.json")))
    if saved_by and saved_by != accelerator.num_processes:
        raise PoolftError(
            f"checkpoint {folder} was saved by {saved_by} process(es) and this run has "
            f"{accelerator.num_processes}; resume it with {saved_by} (the batches and random streams are per process)"
        )
    try:
        accelerator.load_state(str(folder))
    except pickle.UnpicklingError as error:  # accelerate loads optimiser files with weights_only=True
        raise PoolftError(
            f"checkpoint {folder} holds a file that is not plain tensors ({str(error).splitlines()[0][:120]}); "
            "it was refused unread: resume from another checkpoint"
        ) from None
    state = TrainerState(**json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8")))
    rng_file = folder / f"rng_state_{accelerator.process_index}.json"
    if not rng_file.is_file():
        raise PoolftError(
            f"checkpoint {folder} has no RNG state for process {accelerator.process_index}; "
            "resume with the same number of processes it was saved with"
        )
    restore_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
    if ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise PoolftError(
                f"checkpoint {folder} has no weight average (it was saved without train.ema_decay); "
                "resume it without train.ema_decay, or start a new run"
            )
        # read on the CPU (a MULTI_CPU device "cpu:0" is no device name to safetensors); copy_ moves it
        load_ema_tensors(ema, load_file(folder / EMA_FILE), str(folder / EMA_FILE))
    return state
