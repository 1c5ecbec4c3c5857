"""Benchmark: poolft's fast training kernels (``train.fast_kernels``) against torch's, piece by piece.

1. Dropout (p = 0.1) of an attention-probability tensor, ``--batch`` x 12 heads x ``--seq-len`` x
   ``--seq-len`` (MiniLM-L6 at 32 x 128), in float32 and bfloat16:
   ``poolft.training.cpu_dropout.cpu_dropout`` vs ``torch.nn.functional.dropout`` and vs poolft's
   own mask applied with ``masked_fill_`` (its earlier kernel), forward and forward + backward,
   and each one's share of zeros (all should be 0.100).
2. Clipping + AdamW step on the parameters of poolft's MiniLM-L6 + mean pooler with random
   gradients: ``poolft.training.clipping.clipped_optimizer_step`` (norm by dot products, clip factor
   folded into the fused AdamW) vs ``clip_grad_norm_`` then ``step()``; and each norm's relative
   error against a float64 norm of the same gradients.

Usage::

    python scripts/bench_fast_kernels.py
    python scripts/bench_fast_kernels.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small tensors, few repeats")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


class MaskedFillDrop(torch.autograd.Function):
    """poolft's earlier way to apply its mask: ``x.mul(scale).masked_fill_(drop, 0)``, forward and backward."""

    @staticmethod
    def forward(ctx, x, drop, scale):
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.mul(scale).masked_fill_(drop, 0.0)

    @staticmethod
    def backward(ctx, grad):
        (drop,) = ctx.saved_tensors
        return grad.mul(ctx.scale).masked_fill_(drop, 0.0), None, None


def masked_fill_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """poolft's mask (the same draw as ``cpu_dropout``), applied with ``masked_fill_``."""
    from poolft.training.cpu_dropout import LEVELS, drop_mask, keep_level

    return MaskedFillDrop.apply(x, drop_mask(x.shape, p), LEVELS / keep_level(p))


def dropout_rows(args: argparse.Namespace) -> None:
    from poolft.training.cpu_dropout import cpu_dropout

    shape = (args.batch, 12, args.seq_len, args.seq_len)
    print(f"\n1. dropout p=0.1 of a {' x '.join(map(str, shape))} tensor, median of {args.repeats}")
    implementations = (
        ("torch F.dropout", F.dropout),
        ("poolft mask, masked_fill_", masked_fill_dropout),
        ("poolft cpu_dropout", cpu_dropout),
    )
    rows, forward, both = [], {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.rand(shape, dtype=dtype, requires_grad=True)
        for name, fn in implementations:
            key = (str(dtype).removeprefix("torch."), name)
            # forward as in training: on a tensor that requires grad (the backward graph is built, not run)
            forward[key], _ = common.median_seconds(lambda fn=fn, x=x: fn(x, 0.1), repeats=args.repeats)
            both[key], _ = common.median_seconds(lambda fn=fn, x=x: fn(x, 0.1).sum().backward(), repeats=args.repeats)
            with torch.no_grad():
                zeros = (fn(x, 0.1) == 0).float().mean().item()
            rows.append([*key, f"{forward[key] * 1e3:.1f}", f"{both[key] * 1e3:.1f}", f"{zeros:.4f}"])
    common.print_table(["dtype", "implementation", "forward ms", "fwd+bwd ms", "share of zeros"], rows)
    for dtype in ("float32", "bfloat16"):
        ours = (dtype, "poolft cpu_dropout")
        for other in ("torch F.dropout", "poolft mask, masked_fill_"):
            print(
                f"  {dtype}: cpu_dropout vs {other}: forward {common.ratio(forward[(dtype, other)], forward[ours])}, "
                f"fwd+bwd {common.ratio(both[(dtype, other)], both[ours])}"
            )


def clipping_rows(args: argparse.Namespace) -> None:
    from accelerate import Accelerator

    from poolft import PoolftForSequenceClassification
    from poolft.config import TrainConfig
    from poolft.models.backbones import default_text_backbone
    from poolft.training.clipping import clipped_optimizer_step, gradient_norm
    from poolft.training.optim import build_optimizer

    model = PoolftForSequenceClassification.from_backbone(default_text_backbone(), pooler="mean", num_labels=2)
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
    count = sum(g.numel() for g in gradients)
    reference = torch.stack([g.double().pow(2).sum() for g in gradients]).sum().sqrt().item()
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, TrainConfig())

    def with_gradients(step):
        def run():
            for parameter, gradient in zip(model.parameters(), gradients):
                parameter.grad = gradient.clone()
            step()

        return run

    def stock() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def folded() -> None:
        clipped_optimizer_step(accelerator, model, optimizer, 1.0)

    def copies_only() -> None:
        pass

    print(
        f"\n2. clip to norm 1 + AdamW step, poolft MiniLM-L6 + mean pooler ({count / 1e6:.1f}M parameters), "
        f"median of {args.repeats}"
    )
    copy_seconds, _ = common.median_seconds(with_gradients(copies_only), repeats=args.repeats)
    seconds = {}
    for name, step in (("clip_grad_norm_ + step", stock), ("poolft clipped_optimizer_step", folded)):
        total, _ = common.median_seconds(with_gradients(step), repeats=args.repeats)
        seconds[name] = total - copy_seconds  # minus re-installing the gradients before each call
    for parameter, gradient in zip(model.parameters(), gradients):
        parameter.grad = gradient.clone()
    norms = {
        "clip_grad_norm_ + step": torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item(),
        "poolft clipped_optimizer_step": gradient_norm(model.parameters()).item(),
    }
    rows = [[name, f"{seconds[name] * 1e3:.1f}", f"{abs(norms[name] - reference) / reference:.1e}"] for name in seconds]
    common.print_table(["implementation", "ms", "norm rel. error vs float64"], rows)
    print(f"  speedup: {common.ratio(seconds['clip_grad_norm_ + step'], seconds['poolft clipped_optimizer_step'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.batch, args.seq_len, args.repeats = 4, 32, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    common.print_header("poolft fast-kernels benchmark: CPU dropout and folded clipping vs torch")
    dropout_rows(args)
    clipping_rows(args)
    common.print_footer(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
