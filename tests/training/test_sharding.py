"""Global batches cut into per-process shares: each row once per pass, and the 1-process gradient."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.nn import functional as F

from poolft.data.sampling import (
    FixedBatches,
    ShardedBatches,
    ShuffledBatchSampler,
    length_sorted_batches,
    shard_batch,
)
from poolft.training.loop import share_loss


def shares_per_process(sampler: ShardedBatches, num_processes: int) -> list[list[list]]:
    """What each process reads in one pass: Accelerate's ``split_batches`` slicing of ``sampler``."""
    return [
        list(BatchSamplerShard(sampler, num_processes=num_processes, process_index=rank, split_batches=True))
        for rank in range(num_processes)
    ]


CASES = [  # (rows, batch size, processes): short last batches, rows < processes, batch not a multiple
    (23, 4, 2),
    (7, 8, 2),
    (5, 128, 2),
    (1, 8, 2),
    (1, 1, 3),
    (2, 3, 4),
    (47, 10, 3),
    (16, 4, 4),
    (10, 6, 4),
]


@pytest.mark.parametrize(("rows", "batch_size", "processes"), CASES)
def test_every_row_counted_once_per_pass_on_any_process_count(rows, batch_size, processes):
    batches = FixedBatches(length_sorted_batches(list(range(rows)), batch_size))
    sampler = ShardedBatches(batches, processes)
    for _ in range(3):  # repeated passes (several evaluations) see the same shares
        shares = shares_per_process(sampler, processes)
        assert len({len(s) for s in shares}) == 1, "every process must step the same number of times"
        real = Counter()
        for process_shares in shares:
            for share in process_shares:
                assert len(share) == sampler.share_size
                real.update(key.index for key in share if key.weight > 0)
        assert real == Counter(range(rows))
        assert shares == shares_per_process(sampler, processes)


def test_training_batches_are_the_one_process_batches_with_weight_zero_fillers():
    sampler = ShuffledBatchSampler(list(range(23)), 23, 4, seed=3)
    sharded = ShardedBatches(sampler, 2)
    for epoch in range(2):
        sharded.set_epoch(epoch)
        one_process = sampler.batches()
        shares = shares_per_process(sharded, 2)
        for step, batch in enumerate(one_process):
            keys = shares[0][step] + shares[1][step]
            assert [k.index for k in keys if k.weight > 0] == batch
            assert {k.batch_rows for k in keys} == {len(batch)}
            assert all(k.index in batch for k in keys)  # fillers copy a row of the same batch
    assert sum(len(b) for b in one_process) == 23


def test_one_process_batches_are_never_padded():
    keys = shard_batch([4, 1, 2], 1, 8)
    assert [(k.index, k.weight, k.batch_rows) for k in keys] == [(4, 1.0, 3), (1, 1.0, 3), (2, 1.0, 3)]


def test_a_full_batch_is_cut_like_accelerate_cuts_it():
    keys = shard_batch(list(range(8)), 2, 4)
    assert [k.index for k in keys] == list(range(8)) and {k.weight for k in keys} == {1.0}


def test_fixed_batches_hand_out_copies():
    stored = [[0, 1, 2]]
    batches = FixedBatches(stored)
    first = next(iter(batches))
    first += [9, 9]  # what Accelerate's even_batches padding does to a short first batch
    assert list(batches) == [[0, 1, 2]] and stored == [[0, 1, 2]]


def ddp_gradient(weight: torch.Tensor, features, labels, keys, processes: int, whole_loss) -> torch.Tensor:
    """Average over processes of each share's ``share_loss`` gradient (what DDP all-reduces)."""
    share_size = len(keys) // processes
    gradients = []
    for rank in range(processes):
        share = keys[rank * share_size : (rank + 1) * share_size]
        index = torch.tensor([k.index for k in share])
        weights = torch.tensor([k.weight for k in share])
        parameter = weight.clone().requires_grad_(True)
        logits = features[index] @ parameter
        outputs = SimpleNamespace(logits=logits, loss=whole_loss(logits, labels[index]))
        loss = share_loss(outputs, {"labels": labels[index]}, weights, share[0].batch_rows, processes)
        (gradient,) = torch.autograd.grad(loss, parameter)
        gradients.append(gradient)
    return torch.stack(gradients).mean(0)


@pytest.mark.parametrize(("rows", "processes", "share_size"), [(3, 2, 2), (1, 2, 2), (8, 2, 4), (5, 3, 2), (6, 4, 2)])
def test_share_losses_give_the_one_process_mean_loss_gradient(rows, processes, share_size):
    generator = torch.Generator().manual_seed(rows)
    features = torch.randn(rows, 5, generator=generator)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    weight = torch.randn(5, 3, generator=generator)
    parameter = weight.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(features @ parameter, labels), parameter)
    keys = shard_batch(list(range(rows)), processes, share_size)
    got = ddp_gradient(weight, features, labels, keys, processes, F.cross_entropy)
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_filler_copy_of_a_nonfinite_row_does_not_hide_or_add_to_the_loss():
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])
    outputs = SimpleNamespace(logits=logits, loss=None)
    loss = share_loss(outputs, {"labels": torch.tensor([1, 0])}, torch.tensor([1.0, 0.0]), 3, 2)
    assert torch.isfinite(loss)
    real_nan = share_loss(outputs, {"labels": torch.tensor([1, 0])}, torch.tensor([1.0, 1.0]), 3, 2)
    assert torch.isnan(real_nan)
