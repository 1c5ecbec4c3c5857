"""Probe track: the frozen backbone's token states, computed once per dataset and memory-mapped.

With ``train.feature_cache`` the backbone runs once over each split (eval mode, no dropout) and
its last-layer states are stored ragged -- ``states.npy`` ``(total_tokens, hidden)`` plus
``offsets.npy`` ``(examples + 1,)`` and ``labels.npy`` -- so padding costs no disk. Every head then
trains on the cache: a five-head sweep costs one backbone pass plus five cheap head trainings.

The cache folder is named by a digest of everything the states depend on (``cache_key``): the
encoder's weights (whatever folder, Hub id or revision they came from) and config, the attention
kernel, the selected layers, the compute dtype (autocast) and device type, the storage dtype, the
preprocessor's settings, the encoded split's ``datasets`` fingerprint (which covers the
tokenization, max length and image resize/crop), torch/transformers versions and a format version.
It is only a cache: the key never enters a run's config, results or identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from ..data.labels import stack_labels
from ..data.sampling import length_sorted_batches
from ..errors import PoolftError
from ..models.modeling import patch_grid

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "poolft" / "features"
# bump when the stored layout or the way states are computed changes (2: per-state cache key)
CACHE_FORMAT = 2


def weights_digest(folder: str) -> str:
    """sha256 of the backbone's weight file(s) (or of its name when it is not a local folder).

    Hashed once per process for files of the same path, size and modification time (a sweep
    records the digest with every run).
    """
    files = (
        sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")) if Path(folder).is_dir() else []
    )
    stamps = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _files_digest(folder, stamps)


def file_digest(path: str) -> str:
    """sha256 of one file, hashed once per process for the same path, size and modification time."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _files_digest(str(resolved), ((str(resolved), stat.st_size, stat.st_mtime_ns),))


@functools.lru_cache(maxsize=64)
def _files_digest(folder: str, stamps: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    if not stamps:
        digest.update(folder.encode())
    for path, _, _ in stamps:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_digest(encoder: nn.Module) -> str:
    """sha256 over the encoder's parameters and buffers: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict(keep_vars=False).items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def preprocessor_settings(preprocessor: Any) -> dict[str, Any]:
    """What of the tokenizer or image processor reaches the states, as JSON-ready values.

    An image processor's full ``to_dict()`` (size, crop, resample, rescale, mean/std); for a
    tokenizer its class, padding side and pad id (the token ids themselves are in the split's
    fingerprint).
    """
    if hasattr(preprocessor, "padding_side"):  # a tokenizer
        return {
            "class": type(preprocessor).__name__,
            "padding_side": preprocessor.padding_side,
            "pad_token_id": preprocessor.pad_token_id,
        }
    settings = preprocessor.to_dict() if hasattr(preprocessor, "to_dict") else vars(preprocessor)
    return {"class": type(preprocessor).__name__, **json.loads(json.dumps(settings, sort_keys=True, default=str))}


def cache_key(
    model: Any,
    preprocessor: Any,
    *,
    storage_dtype: str,
    autocast_dtype: torch.dtype | None,
    device: torch.device | str,
) -> dict[str, Any]:
    """Everything the cached states of a split depend on, besides the split itself.

    Returns a JSON-ready dict; ``cache_folder`` adds the split's fingerprint and hashes it.
    """
    encoder_config = model.config.encoder_config.to_dict()
    for unrelated in ("_name_or_path", "transformers_version", "architectures", "id2label", "label2id"):
        encoder_config.pop(unrelated, None)
    return {
        "format": CACHE_FORMAT,
        "encoder_weights": encoder_digest(model.encoder),
        "encoder_config": json.loads(json.dumps(encoder_config, sort_keys=True, default=str)),
        "attn_implementation": getattr(model.encoder.config, "_attn_implementation", None),
        "hidden_layers": list(model.config.hidden_layers),
        "layer_combine": model.config.layer_combine,
        "compute_dtype": str(autocast_dtype) if autocast_dtype is not None else "none",
        "device": torch.device(device).type,
        "storage_dtype": storage_dtype,
        "preprocessor": preprocessor_settings(preprocessor),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def check_cache_root(root: str | None) -> None:
    """A one-line error, before a run writes anything, when the cache root cannot hold folders.

    Raises:
        PoolftError: ``root`` (or its nearest existing parent) is a file or is not writable.
    """
    from .run_folder import write_problem

    path = Path(root or DEFAULT_CACHE_DIR).absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        problem = write_problem(path)  # the file system may refuse where permissions allow (/proc)
        if problem is None:
            return
    raise PoolftError(
        f"train.feature_cache_dir {path} cannot hold the feature cache ({problem}); set it to a writable folder"
    )


def cache_folder(root: str | None, key: dict[str, Any], split: Dataset) -> Path:
    """``root/<digest>``: one folder per (cache key, split fingerprint)."""
    text = json.dumps({**key, "split": split._fingerprint}, sort_keys=True)
    return Path(root or DEFAULT_CACHE_DIR) / hashlib.sha256(text.encode()).hexdigest()[:24]


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
    all_layers = model.wants_all_layers()
    if task == "text":
        states = model.selected_states(model.encoder(**batch, output_hidden_states=all_layers))
        return states, batch["attention_mask"].bool(), {"num_prefix_tokens": 0, "grid_size": None}
    pixel_values = batch["pixel_values"]
    encoded = model.encoder(pixel_values, output_hidden_states=all_layers, **model.encoder_kwargs(pixel_values))
    states = model.selected_states(encoded)
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
    key: dict[str, Any] | None = None,
) -> Path:
    """Write the cache for one split atomically (temporary folder, then rename); reuse if present."""
    if (folder / "meta.json").is_file():
        return folder
    temporary = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    remove_stale_temporaries(folder)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
    except OSError as error:  # the cache root is a file, or not writable
        raise PoolftError(
            f"cannot write the feature cache in {folder.parent} ({error.strerror}); "
            "set train.feature_cache_dir to a writable folder"
        ) from None
    states, offsets, layout = compute_states(model, split, collator, task, lengths, batch_size, dtype, autocast_dtype)
    np.save(temporary / "states.npy", states)
    np.save(temporary / "offsets.npy", offsets)
    labels = np.asarray(split["labels"])  # ids (examples,), or multi-hot floats (examples, labels)
    np.save(temporary / "labels.npy", labels.astype(np.int64 if labels.ndim == 1 else np.float32))
    meta = {
        "examples": len(split),
        "tokens": int(offsets[-1]),
        "hidden": int(states.shape[1]),
        "dtype": dtype,
        **layout,
        "key": key or {},  # what the folder name is a digest of, for inspection
    }
    (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(temporary)
    else:
        os.replace(temporary, folder)
    return folder


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the half-written caches of ``folder`` whose writer process is gone (an interrupted build);
    one that a live process is still writing stays."""
    for temporary in folder.parent.glob(f".tmp-{folder.name}-*"):
        pid = temporary.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(temporary, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


class CachedStates(torch.utils.data.Dataset):
    """Memory-mapped cached states: item ``i`` is ``{"states": (tokens_i, hidden), "labels": id or multi-hot}``."""

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
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Rows ``indices`` read with one gather from the memory map (a batch costs one read, not one per row).

        Each row's ``states`` is a float32 ``(tokens_i, hidden)`` view into one writable copy.
        """
        rows = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.starts[rows], self.ends[rows] - self.starts[rows]
        ends = np.cumsum(lengths)
        # token t of the batch is token (t - first token of its row) of that row's cached span
        tokens = np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
        # torch widens float16 about 5x faster than numpy's astype
        states = torch.from_numpy(np.asarray(self.states[tokens])).float().numpy()
        labels = self.labels[rows]
        return [
            {"states": row_states, "labels": int(label) if label.ndim == 0 else label.astype(np.float32)}
            for row_states, label in zip(np.split(states, ends[:-1]), labels, strict=True)
        ]


class CachedStatesCollator:
    """Right-pads cached states: ``hidden_states`` ``(batch, tokens, hidden)``, ``attention_mask``, ``labels``."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = np.array([len(e["states"]) for e in examples])
        states = np.zeros((len(examples), lengths.max(), examples[0]["states"].shape[1]), dtype=np.float32)
        for row, example in enumerate(examples):  # numpy row copies: cheaper than one torch index_put here
            states[row, : lengths[row]] = example["states"]
        mask = np.arange(lengths.max()) < lengths[:, None]  # (batch, longest)
        return {
            "hidden_states": torch.from_numpy(states),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": stack_labels(examples),
        }


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
        mask = None if self.grid_size else attention_mask  # images: every cached token is real
        pooler = self.full_model[0].pooler
        grid_size = self.grid_size if pooler.uses_grid else None  # other heads ignore or refuse a grid
        loss, logits = self.full_model[0].classify(
            hidden_states, mask, labels, num_prefix_tokens=self.num_prefix_tokens, grid_size=grid_size
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
    preprocessor: Any,
    autocast_dtype: torch.dtype | None = None,
) -> list[CachedStates]:
    """Build (or reuse) the cache of each split; returns one memory-mapped dataset per split.

    Raises:
        PoolftError: a learned (``weighted``) layer combination, which sits before the cached
            states and so could not be trained on them; a cache folder that cannot be written.
    """
    if model.config.layer_combine == "weighted" and len(model.config.hidden_layers) > 1:
        raise PoolftError(
            "train.feature_cache cannot train model.layer_combine=weighted (the layer weights sit before the "
            "cached states); use layer_combine mean or train.feature_cache false"
        )
    device = next(model.parameters()).device
    key = cache_key(model, preprocessor, storage_dtype=dtype, autocast_dtype=autocast_dtype, device=device)
    caches = []
    for split, split_lengths in zip(splits, lengths, strict=True):
        folder = cache_folder(root, key, split)
        build_cache(model, split, collator, task, split_lengths, folder, 64, dtype, autocast_dtype, key)
        caches.append(CachedStates(folder))
    return caches
