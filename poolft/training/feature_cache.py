"""Probe track: the frozen backbone's token states, computed once per dataset and memory-mapped.

With ``train.feature_cache`` the backbone runs once over each split (eval mode, no dropout) and
its last-layer states are stored ragged -- ``states.npy`` ``(total_tokens, hidden)`` plus
``offsets.npy`` ``(examples + 1,)`` and ``labels.npy`` -- so padding costs no disk. Every head then
trains on the cache: a five-head sweep costs one backbone pass plus five cheap head trainings.
The cache key covers the backbone weights, the encoded data's fingerprint and the dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from ..data.sampling import length_sorted_batches
from ..models.modeling import patch_grid

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "poolft" / "features"


def weights_digest(folder: str) -> str:
    """sha256 of the backbone's weight file(s) (or of its name when it is not a local folder)."""
    digest = hashlib.sha256()
    files = (
        sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")) if Path(folder).is_dir() else []
    )
    if not files:
        digest.update(folder.encode())
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_folder(root: str | None, backbone_digest: str, split: Dataset, dtype: str) -> Path:
    key = hashlib.sha256(f"{backbone_digest}|{split._fingerprint}|{dtype}|v1".encode()).hexdigest()[:24]
    return Path(root or DEFAULT_CACHE_DIR) / key


@torch.no_grad()
def compute_states(
    model: Any,
    split: Dataset,
    collator: Any,
    task: str,
    lengths: list[int] | None,
    batch_size: int,
    dtype: str,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the frozen encoder over ``split``; return ragged states, offsets and token layout."""
    encoder = model.encoder
    was_training = encoder.training
    encoder.eval()
    order = length_sorted_batches(lengths or [0] * len(split), batch_size)
    pieces: dict[int, np.ndarray] = {}
    layout: dict[str, Any] = {}
    for batch_indices in tqdm(order, desc="cache backbone states", unit="batch", mininterval=10):
        batch = collator([split[i] for i in batch_indices])
        batch.pop("labels")
        device = next(model.parameters()).device
        batch = {key: value.to(device) for key, value in batch.items()}
        autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with autocast:
            states, mask, layout = encode_batch(model, batch, task)
        values = states.float().cpu().numpy().astype(dtype)
        mask = mask.cpu().numpy()
        for row, index in enumerate(batch_indices):
            pieces[index] = values[row][mask[row]]
    encoder.train(was_training)
    ordered = [pieces[i] for i in range(len(split))]
    offsets = np.zeros(len(ordered) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in ordered])
    return np.concatenate(ordered), offsets, layout


def encode_batch(model: Any, batch: dict[str, torch.Tensor], task: str):
    """Encoder states ``(batch, tokens, hidden)``, the real-token mask and the token layout."""
    if task == "text":
        states = model.selected_states(model.encoder(**batch))
        return states, batch["attention_mask"].bool(), {"num_prefix_tokens": 0, "grid_size": None}
    pixel_values = batch["pixel_values"]
    states = model.selected_states(model.encoder(pixel_values, **model.encoder_kwargs(pixel_values)))
    grid = patch_grid(pixel_values, model.config.encoder_config.patch_size)
    layout = {"num_prefix_tokens": states.size(1) - grid[0] * grid[1], "grid_size": list(grid)}
    return states, torch.ones(states.shape[:2], dtype=torch.bool), layout


def build_cache(
    model: Any,
    split: Dataset,
    collator: Any,
    task: str,
    lengths: list[int] | None,
    folder: Path,
    batch_size: int,
    dtype: str,
    autocast_dtype: torch.dtype | None = None,
) -> Path:
    """Write the cache for one split atomically (temporary folder, then rename); reuse if present."""
    if (folder / "meta.json").is_file():
        return folder
    temporary = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    states, offsets, layout = compute_states(model, split, collator, task, lengths, batch_size, dtype, autocast_dtype)
    np.save(temporary / "states.npy", states)
    np.save(temporary / "offsets.npy", offsets)
    np.save(temporary / "labels.npy", np.asarray(split["labels"], dtype=np.int64))
    meta = {
        "examples": len(split),
        "tokens": int(offsets[-1]),
        "hidden": int(states.shape[1]),
        "dtype": dtype,
        **layout,
    }
    (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(temporary)
    else:
        os.replace(temporary, folder)
    return folder


class CachedStates(torch.utils.data.Dataset):
    """Memory-mapped cached states: item ``i`` is ``{"states": (tokens_i, hidden), "labels": int}``."""

    def __init__(self, folder: Path, rows: list[int] | None = None) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.states = np.load(folder / "states.npy", mmap_mode="r")
        offsets = np.load(folder / "offsets.npy")
        labels = np.load(folder / "labels.npy")
        # a row view (rate search: training part / held-out part of one cached split)
        self.row_ids = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.starts, self.ends = offsets[:-1][self.row_ids], offsets[1:][self.row_ids]
        self.labels = labels[self.row_ids]

    def rows(self, rows: list[int]) -> CachedStates:
        """The same cache restricted to ``rows`` (indices into this view), in that order."""
        return CachedStates(self.folder, self.row_ids[np.asarray(rows, dtype=np.int64)].tolist())

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> list[int]:
        return (self.ends - self.starts).tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, end = self.starts[index], self.ends[index]
        # a copy: memory-mapped rows are read-only and torch wants writable arrays
        return {"states": np.array(self.states[start:end], dtype=np.float32), "labels": int(self.labels[index])}


class CachedStatesCollator:
    """Right-pads cached states: ``hidden_states`` ``(batch, tokens, hidden)``, ``attention_mask``, ``labels``."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["states"]) for e in examples)
        hidden = examples[0]["states"].shape[1]
        states = torch.zeros(len(examples), longest, hidden)
        mask = torch.zeros(len(examples), longest, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["states"])
            states[row, :n] = torch.from_numpy(example["states"])
            mask[row, :n] = 1
        labels = torch.as_tensor([e["labels"] for e in examples])
        return {"hidden_states": states, "attention_mask": mask, "labels": labels}


class HeadOnCachedStates(nn.Module):
    """The pooled model's head (pooler -> dropout -> classifier) fed from cached states.

    It shares its modules with ``model``, so saving ``model`` afterwards saves the trained head.
    """

    def __init__(self, model: Any, layout: dict[str, Any]) -> None:
        super().__init__()
        self.full_model = [model]  # a list, so the frozen encoder is not a submodule (DDP, .to, optimiser)
        self.head = nn.ModuleDict({"pooler": model.pooler, "dropout": model.dropout, "classifier": model.classifier})
        self.num_prefix_tokens = int(layout.get("num_prefix_tokens") or 0)
        self.grid_size = tuple(layout["grid_size"]) if layout.get("grid_size") else None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        mask = None if self.grid_size else attention_mask
        loss, logits = self.full_model[0].classify(
            hidden_states, mask, labels, num_prefix_tokens=self.num_prefix_tokens, grid_size=self.grid_size
        )
        return SequenceClassifierOutput(loss=loss, logits=logits)


def cached_loader_inputs(
    model: Any,
    splits: tuple[Dataset, ...],
    collator: Any,
    task: str,
    lengths: tuple[list[int] | None, ...],
    root: str | None,
    dtype: str,
    backbone: str,
    autocast_dtype: torch.dtype | None = None,
) -> list[CachedStates]:
    """Build (or reuse) the cache of each split; returns one memory-mapped dataset per split."""
    digest = weights_digest(backbone)
    caches = []
    for split, split_lengths in zip(splits, lengths, strict=True):
        folder = cache_folder(root, digest, split, dtype)
        build_cache(model, split, collator, task, split_lengths, folder, 64, dtype, autocast_dtype)
        caches.append(CachedStates(folder))
    return caches
