"""Clipping folded into the fused AdamW step (poolft/training/clipping.py) against torch's
``clip_grad_norm_`` followed by a plain step, on the same parameters and gradients."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from poolft.training.clipping import can_fold, clipped_optimizer_step, gradient_norm, zero_gradients


def model_with_gradients(seed: int = 0, grad_size: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 3))
    for parameter in model.parameters():
        parameter.grad = grad_size * torch.randn_like(parameter)
    model[1].bias.grad = None  # a parameter without a gradient this step
    return model


def reference_norm(model: nn.Module) -> float:
    grads = [p.grad.double().flatten() for p in model.parameters() if p.grad is not None]
    return torch.cat(grads).norm().item()


def test_gradient_norm_matches_a_float64_norm() -> None:
    model = model_with_gradients(grad_size=3.0)
    assert gradient_norm(model.parameters()).item() == pytest.approx(reference_norm(model), rel=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped, and left alone
def test_folded_step_equals_clip_then_step(max_norm: float) -> None:
    accelerator = Accelerator(cpu=True)
    ours, theirs = model_with_gradients(), model_with_gradients()
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    theirs_optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    assert can_fold(accelerator, ours_optimizer)
    for step in range(3):  # Adam's moments carry the scaled gradients into later steps
        if step:
            for a, b in zip(ours.parameters(), theirs.parameters()):
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
        norm = clipped_optimizer_step(accelerator, ours, ours_optimizer, max_norm)
        their_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
        theirs_optimizer.step()
        assert norm.item() == pytest.approx(their_norm.item(), rel=1e-4)
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert getattr(ours_optimizer, "grad_scale", None) is None  # a later plain step is not scaled


def test_clipping_changes_the_step_when_the_norm_is_large() -> None:
    # guards the test above: with a small max_norm the clipped update differs from an unclipped one
    accelerator = Accelerator(cpu=True)
    clipped, unclipped = model_with_gradients(grad_size=10.0), model_with_gradients(grad_size=10.0)
    for model, max_norm in ((clipped, 0.1), (unclipped, 1e9)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # SGD: the step is the gradient itself
        clipped_optimizer_step(accelerator, model, optimizer, max_norm)
    assert not torch.allclose(clipped[3].weight, unclipped[3].weight)


def test_other_optimizers_clip_then_step() -> None:
    accelerator = Accelerator(cpu=True)
    ours, theirs = model_with_gradients(grad_size=5.0), model_with_gradients(grad_size=5.0)
    ours_optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    assert not can_fold(accelerator, ours_optimizer)
    assert not can_fold(accelerator, torch.optim.AdamW(ours.parameters(), fused=False))
    norm = clipped_optimizer_step(accelerator, ours, ours_optimizer, 1.0)
    their_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    torch.optim.SGD(theirs.parameters(), lr=0.1).step()
    assert norm.item() == pytest.approx(their_norm.item(), rel=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


def test_zero_gradients_clears_at_synchronising_steps_only_as_accelerates_wrapper_does() -> None:
    # the reference is Accelerate's own wrapper (AcceleratedOptimizer.zero_grad) over two micro-steps of
    # gradient accumulation: gradients stay between them and are set to None at the synchronising one
    results = []
    for ours in (True, False):
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model = nn.Linear(4, 2)
        optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), fused=True))
        seen = []
        for _ in range(2):
            with accelerator.accumulate(model):
                model(torch.ones(1, 4)).sum().backward()
                if ours:
                    zero_gradients(accelerator, optimizer)
                else:
                    optimizer.zero_grad()
                seen.append(None if model.weight.grad is None else model.weight.grad.clone())
        results.append(seen)
    (ours_first, ours_second), (their_first, their_second) = results
    assert their_first is not None and their_second is None  # the reference does what this test says
    torch.testing.assert_close(ours_first, their_first)
    assert ours_second is None
