"""Batch order: seeded, epoch-dependent shuffling with optional length grouping.

Grouping puts examples of similar length in one batch so little compute goes to padding:
shuffle, cut into mega-batches of ``mega_factor`` batches, sort each by length, cut into batches,
then shuffle the batch order. Everything depends only on ``(seed, epoch)``, so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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
