"""Batch order: seeded, epoch-dependent shuffling with optional length grouping.

Grouping puts examples of similar length in one batch so little compute goes to padding:
shuffle, cut into mega-batches of ``mega_factor`` batches, sort each by length, cut into batches,
then shuffle the batch order. Everything depends only on ``(seed, epoch)``, so a resumed run sees the
same batches as an uninterrupted one.

Several processes: ``ShardedBatches`` cuts each global batch into one share per process itself,
so every row of an epoch is trained or evaluated exactly once, whatever the split size, batch size
and process count. A short global batch leaves some shares short; they are filled with copies of a
real row that carry weight 0 (``RowKey.weight``), and each key also says how many real rows its
global batch holds, so the loss and the metrics count real rows only. One process is never padded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset, Sampler

# the keys ``WeightedCollator`` adds to a batch (the loop takes them out before the model sees it)
ROW_WEIGHTS = "row_weights"
BATCH_ROWS = "batch_rows"


class ShuffledBatchSampler(Sampler[list[int]]):
    """Yields lists of ``batch_size`` indices; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        lengths: Sequence[int] | None,
        num_examples: int,
        batch_size: int,
        *,
        seed: int = 0,
        group_by_length: bool = True,
        drop_last: bool = False,
        mega_factor: int = 50,
    ) -> None:
        self.lengths = torch.as_tensor(lengths) if lengths is not None and group_by_length else None
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.mega_factor = mega_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return (self.num_examples + self.batch_size - 1) // self.batch_size

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of dataset indices."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        if self.lengths is not None:
            mega = self.batch_size * self.mega_factor
            chunks = []
            for start in range(0, self.num_examples, mega):
                chunk = order[start : start + mega]
                chunks.append(chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)])
            order = torch.cat(chunks)
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, self.num_examples, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None:
            # a short batch stays last: sharding across processes expects only the final one short
            full = [b for b in batches if len(b) == self.batch_size]
            short = [b for b in batches if len(b) < self.batch_size]
            permutation = torch.randperm(len(full), generator=generator).tolist()
            batches = [full[i] for i in permutation] + short
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (order does not matter for metrics, padding does)."""
    order = torch.argsort(torch.as_tensor(lengths), descending=True, stable=True).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class FixedBatches(Sampler[list[int]]):
    """A precomputed list of batches, handed out as fresh lists (a consumer may extend what it gets)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = [list(batch) for batch in batches]
        self.batch_size = max((len(batch) for batch in self.batches), default=1)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)

    def __len__(self) -> int:
        return len(self.batches)


class RowKey(NamedTuple):
    """One row of a process's share of a global batch."""

    index: int  # the dataset row
    weight: float  # 1.0 for a real row, 0.0 for a copy that fills a short share
    batch_rows: int  # real rows in the whole global batch, over all processes


def shard_batch(batch: Sequence[int], num_processes: int, share_size: int) -> list[RowKey]:
    """``batch`` as ``num_processes`` consecutive shares of ``share_size`` keys (one process: unchanged).

    The real rows are spread as evenly as possible, in order (share ``r`` takes the next
    ``len(batch) // num_processes`` rows, one more for ``r < len(batch) % num_processes``); a share
    with fewer than ``share_size`` rows is filled with weight-0 copies of its first row (of the
    batch's first row when it has none). A full batch of ``num_processes * share_size`` rows is cut
    exactly as Accelerate's ``split_batches`` slicing would cut it.
    """
    rows = len(batch)
    if num_processes == 1:
        return [RowKey(index, 1.0, rows) for index in batch]
    if not 0 < rows <= num_processes * share_size:
        raise ValueError(f"a batch of {rows} rows does not fit {num_processes} shares of {share_size}")
    keys, start = [], 0
    for rank in range(num_processes):
        count = rows // num_processes + (rank < rows % num_processes)
        share = list(batch[start : start + count])
        start += count
        filler = share[0] if share else batch[0]
        keys += [RowKey(index, 1.0, rows) for index in share]
        keys += [RowKey(filler, 0.0, rows)] * (share_size - count)
    return keys


class ShardedBatches(Sampler[list[RowKey]]):
    """Global batches of ``batches`` as ``RowKey`` lists of ``num_processes * share_size`` keys.

    Every batch this yields is full, so Accelerate (``split_batches=True``) slices it into the
    shares without padding anything itself, and process ``r`` reads share ``r``.
    ``share_size`` defaults to ``ceil(batches.batch_size / num_processes)``.
    """

    def __init__(self, batches: Any, num_processes: int, share_size: int | None = None) -> None:
        self.batches = batches
        self.num_processes = num_processes
        self.share_size = share_size or max(math.ceil(batches.batch_size / num_processes), 1)
        # what Accelerate reads to cut a batch into shares
        self.batch_size = self.share_size * num_processes

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[RowKey]]:
        for batch in self.batches:
            yield shard_batch(batch, self.num_processes, self.share_size)


class KeyedRows(Dataset):
    """``dataset`` read by ``RowKey``: item -> ``(row, key)``, for ``WeightedCollator``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: RowKey) -> tuple[Any, RowKey]:
        return self.dataset[key.index], key

    def __getitems__(self, keys: list[RowKey]) -> list[tuple[Any, RowKey]]:
        indices = [key.index for key in keys]
        read_many = getattr(self.dataset, "__getitems__", None)  # one read per batch (Hugging Face datasets)
        rows = read_many(indices) if read_many is not None else [self.dataset[i] for i in indices]
        return list(zip(rows, keys, strict=True))


class WeightedCollator:
    """``collate`` over the rows, plus ``row_weights`` ``(rows,)`` and ``batch_rows`` (an int)."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: Iterable[tuple[Any, RowKey]]) -> Any:
        rows, keys = zip(*items, strict=True)
        batch = self.collate(list(rows))
        batch[ROW_WEIGHTS] = torch.tensor([key.weight for key in keys])
        batch[BATCH_ROWS] = keys[0].batch_rows
        return batch
