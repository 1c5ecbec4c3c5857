"""CPU dropout (poolft/training/cpu_dropout.py): the drop rate, scaling, gradients, independence of the
masks and the attention path, checked against direct computations and torch's own kernels.

Rates are checked within 5 standard deviations of a binomial proportion, so the tests fail on a
biased mask, not on chance (a fixed seed makes each run identical anyway).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poolft import PoolftForSequenceClassification
from poolft.training.cpu_dropout import (
    CPU_ATTENTION,
    LEVELS,
    CpuDropout,
    cpu_dropout,
    cpu_dropout_attention,
    drop_mask,
    keep_and_scale,
    keep_level,
    keep_mask,
    use_cpu_dropout,
)


def drop_rate(p: float) -> float:
    return 1.0 - keep_level(p) / LEVELS


def within_five_sigma(observed: float, expected: float, count: int) -> bool:
    return abs(observed - expected) <= 5 * math.sqrt(expected * (1 - expected) / count)


@pytest.mark.parametrize("p", [0.02, 0.1, 0.5, 0.9])
def test_drop_mask_drops_at_rate_p(p: float) -> None:
    torch.manual_seed(0)
    mask = drop_mask((1000, 2003), p)  # an element count that is not a multiple of 4
    assert mask.dtype == torch.bool and mask.shape == (1000, 2003)
    assert abs(drop_rate(p) - p) < 1 / LEVELS
    assert within_five_sigma(mask.float().mean().item(), p, mask.numel())


def test_neighbouring_elements_are_independent() -> None:
    # four elements share one 64-bit word: each of those pairs must be independent
    torch.manual_seed(1)
    p = 0.3
    mask = drop_mask((1_000_000, 4), p).float()
    count = mask.shape[0]
    for left, right in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (mask[:, left] * mask[:, right]).mean().item()
        assert within_five_sigma(both, p * p, count), (left, right, both)
    # and consecutive words too
    across = (mask[:-1, 3] * mask[1:, 0]).mean().item()
    assert within_five_sigma(across, p * p, count - 1)


def test_masks_follow_the_seed() -> None:
    torch.manual_seed(5)
    first = drop_mask((64, 64), 0.1)
    torch.manual_seed(5)
    again = drop_mask((64, 64), 0.1)
    torch.manual_seed(6)
    other = drop_mask((64, 64), 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_kept_elements_are_scaled_by_the_inverse_keep_probability(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    p = 0.1
    x = torch.randn(300, 500).to(dtype)
    out = cpu_dropout(x, p)
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    scale = LEVELS / keep_level(p)
    expected = (x.double() * scale).to(dtype)  # rounding may differ by one unit: compare within dtype tolerance
    torch.testing.assert_close(out[kept], expected[kept])
    assert within_five_sigma(1 - kept.float().mean().item(), p, x.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "broadcast"])
def test_keep_and_scale_is_bit_for_bit_masked_fill(dtype: torch.dtype, layout: str) -> None:
    # the integer-multiply path against the obvious computation, special values included
    torch.manual_seed(7)
    x = torch.randn(64, 48).to(dtype)
    x[0, :6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-30]).to(dtype)
    keep = keep_mask((64, 48), 0.3)
    if layout == "transposed":
        x, keep = x.t(), keep.t()
    elif layout == "broadcast":  # a gradient as sum's backward hands it over: one row, stride 0
        x = x[3].expand(64, 48)
    scale = LEVELS / keep_level(0.3)
    out = keep_and_scale(x, keep, scale)
    expected = x.mul(scale).masked_fill_(~keep, 0.0)
    assert out.dtype == dtype and out.shape == x.shape
    # the same bits, NaNs and signed zeros included
    assert torch.equal(out.contiguous().view(torch.uint8), expected.contiguous().view(torch.uint8))
    assert (~keep).any() and keep.any()


def test_drop_mask_is_the_complement_of_the_keep_mask_of_the_same_draw() -> None:
    torch.manual_seed(8)
    keep = keep_mask((100, 33), 0.4)
    torch.manual_seed(8)
    assert torch.equal(drop_mask((100, 33), 0.4), ~keep)


def test_output_expectation_equals_the_input() -> None:
    torch.manual_seed(3)
    ones = torch.ones(4_000_000)
    p = 0.25
    mean = cpu_dropout(ones, p).double().mean().item()
    # mean = kept share * scale; its std is sqrt(p(1-p)/n) * scale
    assert abs(mean - 1.0) <= 5 * math.sqrt(p * (1 - p) / ones.numel()) / (1 - p)


def test_gradient_is_the_same_mask_and_scale() -> None:
    torch.manual_seed(4)
    x = torch.ones(200, 300, requires_grad=True)
    upstream = torch.randn(200, 300)
    out = cpu_dropout(x, 0.2)
    out.backward(upstream)
    # with x = 1 the output is mask * scale, so d(out . upstream)/dx = upstream * out
    assert torch.equal(x.grad, upstream * out.detach())


def test_identity_in_eval_mode_and_at_p_zero_and_zeros_at_p_one() -> None:
    x = torch.randn(10, 10)
    assert cpu_dropout(x, 0.5, training=False) is x
    assert cpu_dropout(x, 0.0) is x
    assert torch.equal(cpu_dropout(x, 1.0), torch.zeros_like(x))
    layer = CpuDropout(0.5).eval()
    assert layer(x) is x


def test_matches_nn_dropout_in_distribution() -> None:
    # same p: the share of zeros and the mean of a large tensor agree with torch's dropout
    torch.manual_seed(7)
    x = torch.rand(2_000_000) + 0.5
    ours, torchs = cpu_dropout(x, 0.1), F.dropout(x, 0.1)
    for out in (ours, torchs):
        assert within_five_sigma((out == 0).float().mean().item(), 0.1, x.numel())
    assert abs(ours.mean().item() - torchs.mean().item()) < 3e-3


class EncoderAttention(nn.Module):
    """What transformers passes as ``module``: a training, non-causal attention layer."""

    is_causal = False


def attention_inputs(mask_kind: str, *, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, tokens, dim = 3, 4, 9, 8
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([9, 5, 1])
    valid = torch.arange(tokens)[None, :] < lengths[:, None]  # (batch, keys)
    if mask_kind == "bool":  # SDPA's format: True attends, (batch, 1, queries, keys)
        mask = valid[:, None, None, :].expand(batch, 1, tokens, tokens)
    elif mask_kind == "float":
        mask = torch.zeros(batch, 1, 1, tokens, dtype=torch.float64).masked_fill(~valid[:, None, None, :], -1e9)
    else:
        mask = None
    return q, k, v, mask, valid


def reference_attention(q, k, v, valid, drop, p):
    """softmax(q k^T / sqrt(d)) over the valid keys, dropped out by ``drop``, times v."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = probs.masked_fill(drop, 0.0) * (LEVELS / keep_level(p))
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_attention_with_dropout_matches_a_direct_computation(mask_kind: str) -> None:
    q, k, v, mask, valid = attention_inputs(mask_kind)
    if mask is None:
        valid = torch.ones_like(valid)
    p = 0.3
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    torch.manual_seed(11)
    out, weights = cpu_dropout_attention(EncoderAttention(), *leaves, mask, dropout=p, scaling=q.shape[-1] ** -0.5)
    torch.manual_seed(11)
    drop = drop_mask((q.shape[0], q.shape[1], q.shape[2], k.shape[2]), p)
    reference_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    expected = reference_attention(*reference_leaves, valid, drop, p)
    assert weights is None and out.shape == (3, 9, 4, 8)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    for ours, theirs in zip(leaves, reference_leaves):
        torch.testing.assert_close(ours.grad, theirs.grad)
    assert drop.any() and not drop.all()


def test_attention_without_dropout_is_torch_sdpa() -> None:
    q, k, v, mask, _ = attention_inputs("bool")
    out, _ = cpu_dropout_attention(EncoderAttention(), q, k, v, mask, dropout=0.0, scaling=None)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def tiny_classifier(tiny_bert_dir: Path) -> PoolftForSequenceClassification:
    torch.manual_seed(0)
    return PoolftForSequenceClassification.from_backbone(str(tiny_bert_dir), pooler="mean", num_labels=2)


def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 20, (4, 12), generator=generator)
    mask = (torch.arange(12)[None, :] < torch.tensor([12, 7, 3, 10])[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def test_use_cpu_dropout_switches_every_dropout_and_keeps_eval_outputs(tiny_bert_dir: Path) -> None:
    model = tiny_classifier(tiny_bert_dir).eval()
    stock_layers = sum(type(m) is nn.Dropout for m in model.modules())
    with torch.no_grad():
        before = model(**tiny_batch()).logits
    assert use_cpu_dropout(model) == stock_layers > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert model.encoder.config._attn_implementation == CPU_ATTENTION
    with torch.no_grad():
        after = model(**tiny_batch()).logits
    torch.testing.assert_close(after, before)


def test_training_step_uses_the_new_masks_and_checkpointing_replays_them(tiny_bert_dir: Path) -> None:
    def gradients(checkpointing: bool) -> list[torch.Tensor]:
        model = tiny_classifier(tiny_bert_dir)
        use_cpu_dropout(model)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.encoder.is_activation_checkpointing
        model.train()
        torch.manual_seed(21)
        model(**tiny_batch()).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, replayed = gradients(False), gradients(True)
    assert len(plain) == len(replayed) > 0
    for a, b in zip(plain, replayed):
        torch.testing.assert_close(a, b)
    # dropout is live: another seed gives other gradients
    model = tiny_classifier(tiny_bert_dir)
    use_cpu_dropout(model)
    model.train()
    torch.manual_seed(22)
    model(**tiny_batch()).loss.backward()
    other = [p.grad for p in model.parameters() if p.grad is not None]
    assert not all(torch.equal(a, b) for a, b in zip(plain, other))


def test_saved_model_does_not_record_the_cpu_attention(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = tiny_classifier(tiny_bert_dir)
    use_cpu_dropout(model)
    model.save_pretrained(tmp_path)
    assert CPU_ATTENTION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    reloaded = PoolftForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.encoder.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**tiny_batch()).logits, model.eval()(**tiny_batch()).logits)
