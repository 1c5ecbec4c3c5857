"""Benchmark: what each pooling head costs next to the backbone it sits on.

For every head in ``poolft.available_poolers()`` this times one forward + backward of the head
(on token states that require grad, as they do in training) and divides it by one training step
(forward + backward) of its backbone:

  (a) a MiniLM-L6-shaped BERT (hidden 384, 6 layers, 12 heads, intermediate 1536), random
      weights, batch 32 x 128 tokens, right-padded with random real lengths;
  (b) a ViT-S/14-shaped ViT (hidden 384, 12 layers, 6 heads, patch 14, 224 px: 16 x 16 grid + CLS),
      batch 32 (``--vit-batch`` to lower it);
  (c) the window head (levels 1, 2, 4, max) against a naive per-example, per-window Python loop at
      512 tokens: both outputs are checked equal, and the speedup is printed.

The goal stated in the issue is that each head costs at most 2% of the backbone step: every row
prints PASS or MISS. Backbones are built exactly as poolft builds them (``build_encoder``: the
backbone's own pooler left out); heads with their default options, the image window head with the
patch grid (``grid=True``) as ``PoolftForImageClassification`` builds it; then the window head's
other modes: unequal ``edges`` (1-D, and per grid axis), sliding windows (1-D of 8 tokens, stride 4;
2-D of 3x3 patches, stride 2) and the 2-D window map (``reduce_windows="map"``, 2x2).

Timing: warm-up calls, then ``--repeats`` timed blocks; a block repeats a fast call until it lasts
``--min-block`` seconds, and the median over blocks is reported (with the interquartile range).
The backbone is timed before and after the heads, pooling all its blocks, so drift in machine load
during the run shows up in its IQR. This is a benchmark, not a test: it never fails on a MISS.

Usage::

    python scripts/bench_poolers.py                 # full run (minutes on a small CPU)
    python scripts/bench_poolers.py --quick         # smoke test: small batches, few repeats
    python scripts/bench_poolers.py --vit-batch 8 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, ViTConfig  # noqa: E402

from poolft import available_poolers, build_pooler  # noqa: E402
from poolft.models.modeling import build_encoder  # noqa: E402
from poolft.pooling.base import POOLERS  # noqa: E402
from poolft.pooling.window import WindowPooler  # noqa: E402
from poolft.training.run_info import cpu_model  # noqa: E402

GOAL = 0.02  # each head <= 2% of the backbone's training step
WINDOW_LEVELS = (1, 2, 4)
EDGES = [[0, 1], [0, 0.3, 1], [0, 0.1, 0.3, 0.6, 1]]  # unequal windows, the same count as levels 1, 2, 4


# ----------------------------------------------------------------------------------------------
# timing


@dataclass
class Timing:
    median: float  # seconds per call
    q1: float
    q3: float
    calls_per_block: int
    blocks: int

    @property
    def iqr_percent(self) -> float:
        return 100 * (self.q3 - self.q1) / self.median if self.median else 0.0


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_blocks(
    fn: Callable[[], None], *, warmup: int, repeats: int, min_block: float, sync: Callable[[], None]
) -> tuple[list[float], int]:
    """Per-call seconds of ``repeats`` blocks, each long enough to be timed reliably, and calls per block."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    single = time.perf_counter() - start
    calls = max(1, math.ceil(min_block / max(single, 1e-7)))
    per_call = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per_call.append((time.perf_counter() - start) / calls)
    return per_call, calls


def summarize(per_call: list[float], calls: int) -> Timing:
    ordered = sorted(per_call)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
    else:
        q1, q3 = ordered[0], ordered[-1]
    return Timing(statistics.median(ordered), q1, q3, calls, len(ordered))


def measure(fn: Callable[[], None], args: argparse.Namespace, sync: Callable[[], None], **overrides) -> Timing:
    options = {"warmup": args.warmup, "repeats": args.repeats, "min_block": args.min_block, **overrides}
    return summarize(*time_blocks(fn, sync=sync, **options))


# ----------------------------------------------------------------------------------------------
# workloads


def random_lengths(batch: int, tokens: int, minimum: int, generator: torch.Generator) -> torch.Tensor:
    """Real lengths of a padded batch: uniform in [minimum, tokens], the longest row full (it set the padding)."""
    lengths = torch.randint(minimum, tokens + 1, (batch,), generator=generator)
    lengths[0] = tokens
    return lengths


def right_padded_mask(lengths: torch.Tensor, tokens: int) -> torch.Tensor:
    return (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()


def autocast_context(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def backbone_step(encoder: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device, bf16: bool):
    """One training step of the backbone: forward, then backward from a fixed random gradient."""
    with torch.no_grad(), autocast_context(device, bf16):
        shape = encoder(**inputs).last_hidden_state.shape
    upstream = torch.randn(shape, device=device)

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        with autocast_context(device, bf16):
            states = encoder(**inputs).last_hidden_state
        states.backward(upstream.to(states.dtype))

    return step


def head_step(head: nn.Module, states: torch.Tensor, mask: torch.Tensor | None, device, bf16, **pool_kwargs):
    """One forward + backward of a head on states that require grad (as the encoder's output does)."""
    with torch.no_grad(), autocast_context(device, bf16):
        width = head(states, mask, **pool_kwargs).shape
    upstream = torch.randn(width, device=device)

    def step() -> None:
        head.zero_grad(set_to_none=True)
        states.grad = None
        with autocast_context(device, bf16):
            pooled = head(states, mask, **pool_kwargs)
        pooled.backward(upstream.to(pooled.dtype))

    return step


def head_options(name: str, image: bool) -> dict:
    """The options poolft's model classes give a head by default."""
    if image and POOLERS[name].supports_grid:
        return {"grid": True}
    return {}


#: non-default window options timed beside the defaults: (label, options for text, options for images)
WINDOW_VARIANTS = [
    ("window(edges)", {"edges": EDGES}, {"grid": True, "edges": EDGES}),
    ("window(sliding)", {"mode": "sliding"}, {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2}),
    (
        "window(map)",
        None,
        {"grid": True, "mode": "sliding", "window_size": 3, "stride": 2, "reduce_windows": "map", "map_size": 2},
    ),
]


def head_variants(image: bool, grid_size: tuple[int, int] | None = None) -> list[tuple[str, str, dict]]:
    """``(label, head, options)``: every head with the defaults, then the window variants.

    ``flatten`` (a linear map's input of every patch token) needs the image's patch grid: it is
    timed on images at ``grid_size`` and left out of the text rows (text has no fixed length).
    """
    variants = []
    for name in available_poolers():
        if name == "flatten":
            if image and grid_size is not None:
                variants.append(("flatten", name, {"grid_size": list(grid_size)}))
            continue
        options = head_options(name, image)
        variants.append((name + ("(grid)" if options.get("grid") else ""), name, options))
    for label, text_options, image_options in WINDOW_VARIANTS:
        options = image_options if image else text_options
        if options is not None:
            variants.append((label, "window", options))
    return variants


@dataclass
class Row:
    head: str
    timing: Timing
    ratio: float


def bench_heads(
    hidden: int,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    image: bool,
    pool_kwargs: dict,
    args: argparse.Namespace,
    device: torch.device,
) -> list[tuple[str, Timing]]:
    results = []
    for label, name, options in head_variants(image, pool_kwargs.get("grid_size")):
        torch.manual_seed(0)
        head = build_pooler(name, hidden, **options).to(device).train()
        step = head_step(head, states, mask, device, args.bf16, **pool_kwargs)
        results.append((label, measure(step, args, synchronizer(device))))
    return results


def bench_backbone_and_heads(
    title: str,
    encoder: nn.Module,
    inputs: dict[str, torch.Tensor],
    states_shape: tuple[int, int, int],
    mask: torch.Tensor | None,
    *,
    image: bool,
    pool_kwargs: dict,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[Timing, list[Row]]:
    print(f"\n{title}", flush=True)
    sync = synchronizer(device)
    encoder = encoder.to(device).train()
    step = backbone_step(encoder, inputs, device, args.bf16)
    # a backbone step lasts long enough to time alone; one warm-up call settles the allocator
    before, calls = time_blocks(step, warmup=min(args.warmup, 1), repeats=args.repeats, min_block=0.0, sync=sync)
    print(f"  backbone step timed ({statistics.median(before) * 1e3:.1f} ms); timing heads ...", flush=True)
    states = torch.randn(states_shape, device=device, requires_grad=True)
    heads = bench_heads(states_shape[-1], states, mask, image=image, pool_kwargs=pool_kwargs, args=args, device=device)
    after, _ = time_blocks(step, warmup=0, repeats=args.repeats, min_block=0.0, sync=sync)
    backbone = summarize(before + after, calls)
    rows = [Row(label, timing, timing.median / backbone.median) for label, timing in heads]
    print_table(backbone, rows, before, after)
    return backbone, rows


def print_table(backbone: Timing, rows: list[Row], before: list[float], after: list[float]) -> None:
    print(
        f"  backbone train step (fwd+bwd): median {backbone.median * 1e3:.1f} ms over {backbone.blocks} steps "
        f"(IQR {backbone.iqr_percent:.0f}%; before heads {statistics.median(before) * 1e3:.1f} ms, "
        f"after {statistics.median(after) * 1e3:.1f} ms)"
    )
    print(f"  {'head':<16} {'fwd+bwd ms':>11} {'IQR':>5} {'% of step':>10}  goal <= {GOAL:.0%}")
    for row in rows:
        verdict = "PASS" if row.ratio <= GOAL else "MISS"
        print(
            f"  {row.head:<16} {row.timing.median * 1e3:>11.3f} {row.timing.iqr_percent:>4.0f}% "
            f"{row.ratio:>10.3%}  {verdict}"
        )


# ----------------------------------------------------------------------------------------------
# (c) window head vs a naive loop


class NaiveWindowPooler(nn.Module):
    """The obvious implementation: per example, drop padding, then slice and reduce every window."""

    def __init__(self, head: WindowPooler) -> None:
        super().__init__()
        self.levels = head.levels
        self.projection = head.projection  # shared weights: outputs must match exactly

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = []
        for states, mask in zip(hidden_states, attention_mask, strict=True):
            real = states[mask.bool()]
            n = real.size(0)
            features = []
            for k in self.levels:
                for j in range(k):
                    start, end = (j * n) // k, -((-(j + 1) * n) // k)
                    features.append(real[start:end].amax(dim=0) if end > start else real.new_zeros(real.size(1)))
            rows.append(torch.cat(features))
        return self.projection(torch.stack(rows))


def bench_window_vs_naive(args: argparse.Namespace, device: torch.device) -> None:
    batch, tokens, hidden = args.window_batch, args.window_tokens, args.hidden
    print(
        f"\n(c) window head (levels {list(WINDOW_LEVELS)}, max, projected) vs a naive per-example, per-window "
        f"Python loop: batch {batch} x {tokens} tokens, hidden {hidden}",
        flush=True,
    )
    generator = torch.Generator().manual_seed(2)
    lengths = random_lengths(batch, tokens, max(1, tokens // 8), generator)
    mask = right_padded_mask(lengths, tokens).to(device)
    states = torch.randn(batch, tokens, hidden, generator=generator).to(device).requires_grad_(True)
    torch.manual_seed(0)
    head = build_pooler("window", hidden, levels=WINDOW_LEVELS, reduce="max").to(device).train()
    naive = NaiveWindowPooler(head)
    with torch.no_grad():
        torch.testing.assert_close(naive(states, mask), head(states, mask), rtol=1e-5, atol=1e-5)
    sync = synchronizer(device)
    fast = measure(head_step(head, states, mask, device, False), args, sync)
    slow = measure(head_step(naive, states, mask, device, False), args, sync)
    print(f"  outputs equal (checked); mean real length {lengths.float().mean():.0f} of {tokens}")
    print(f"  {'implementation':<22} {'fwd+bwd ms':>11} {'IQR':>5}")
    print(f"  {'vectorised (poolft)':<22} {fast.median * 1e3:>11.3f} {fast.iqr_percent:>4.0f}%")
    print(f"  {'naive Python loop':<22} {slow.median * 1e3:>11.3f} {slow.iqr_percent:>4.0f}%")
    print(f"  speedup: {slow.median / fast.median:.1f}x")


# ----------------------------------------------------------------------------------------------


def print_hardware(device: torch.device, args: argparse.Namespace) -> None:
    print("poolft pooling-head benchmark")
    print(f"  cpu:          {cpu_model()} ({os.cpu_count()} logical CPUs)")
    threads = f"threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}"
    print(f"  torch:        {torch.__version__} ({threads})")
    print(f"  transformers: {transformers.__version__}; python {platform.python_version()}; {platform.platform()}")
    if device.type == "cuda":
        print(f"  device:       {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        print("  device:       cpu")
    if hasattr(os, "getloadavg"):
        print(f"  load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())} (other work skews timings)")
    precision = "bf16 autocast" if args.bf16 else "float32"
    print(
        f"  precision {precision}; {args.warmup} warm-up calls, median of {args.repeats} blocks "
        f"(fast calls repeated to >= {args.min_block * 1e3:.0f} ms per block)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny batches, 1 warm-up, 3 blocks")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=128, help="padded length of the text batch")
    parser.add_argument("--vit-batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--window-batch", type=int, default=32)
    parser.add_argument("--window-tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=384, help="hidden width for (c)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--min-block", type=float, default=0.2, help="seconds a timed block of a fast call lasts")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for backbone and heads")
    parser.add_argument("--skip", choices=["text", "vit", "window"], action="append", default=[])
    args = parser.parse_args(argv)
    if args.quick:
        args.text_batch, args.vit_batch, args.window_batch = min(args.text_batch, 4), min(args.vit_batch, 2), 4
        args.repeats, args.warmup, args.min_block = 3, 1, 0.02
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print_hardware(device, args)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    summary = []

    if "text" not in args.skip:
        config = BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        )
        torch.manual_seed(0)
        encoder = build_encoder(config)
        batch, tokens = args.text_batch, args.text_tokens
        lengths = random_lengths(batch, tokens, max(1, tokens // 8), generator)
        mask = right_padded_mask(lengths, tokens)
        input_ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=generator) * mask
        inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        title = (
            f"(a) text: MiniLM-L6-shaped BERT (hidden 384, 6 layers, 12 heads, intermediate 1536; "
            f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M params), batch {batch} x {tokens} tokens, "
            f"real lengths {lengths.min()}..{lengths.max()} (mean {lengths.float().mean():.0f})"
        )
        _, rows = bench_backbone_and_heads(
            title,
            encoder,
            inputs,
            (batch, tokens, config.hidden_size),
            mask.to(device),
            image=False,
            pool_kwargs={},
            args=args,
            device=device,
        )
        summary.append(("text", rows))
        del encoder

    if "vit" not in args.skip:
        config = ViTConfig(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=14,
            image_size=args.image_size,
        )
        torch.manual_seed(0)
        encoder = build_encoder(config)
        grid = args.image_size // 14
        batch = args.vit_batch
        pixels = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator)
        title = (
            f"(b) image: ViT-S/14-shaped ViT (hidden 384, 12 layers, 6 heads; "
            f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M params), batch {batch} x "
            f"{args.image_size} px = {grid}x{grid} patches + CLS ({grid * grid + 1} tokens)"
        )
        _, rows = bench_backbone_and_heads(
            title,
            encoder,
            {"pixel_values": pixels.to(device)},
            (batch, grid * grid + 1, config.hidden_size),
            None,
            image=True,
            pool_kwargs={"num_prefix_tokens": 1, "grid_size": (grid, grid)},
            args=args,
            device=device,
        )
        summary.append(("vit", rows))
        del encoder

    if "window" not in args.skip:
        bench_window_vs_naive(args, device)

    if summary:
        missed = [f"{backbone}:{row.head}" for backbone, rows in summary for row in rows if row.ratio > GOAL]
        verdict = "all heads PASS" if not missed else f"MISS: {', '.join(missed)}"
        print(f"\ngoal: each head <= {GOAL:.0%} of its backbone's training step -> {verdict}")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
