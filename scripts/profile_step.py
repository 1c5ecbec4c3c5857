"""Profile: where a MiniLM-L6 training step spends its time, fp32 against bf16, eager against compiled.

The step is the one ``poolft train`` runs on text: poolft's mean-pooled classifier on a BERT with
MiniLM-L6's shape (6 layers, hidden 384, 12 heads, intermediate 1536; random weights: speed does
not depend on them), poolft's CPU dropout, ``model(**batch).loss.backward()`` under CPU autocast
(bf16 rows) and clipping folded into the fused AdamW step (``clipped_optimizer_step``), on a batch of
``--batch`` x ``--seq-len`` real tokens. Each variant (fp32 / bf16, eager / ``train.compile``'s
``nn.Module.compile(dynamic=False)``) warms up (and compiles), then ``torch.profiler`` records
``--steps`` steps. Ops are grouped by their *self* CPU time:

  matmul        GEMMs (``mm``, ``addmm``, ``bmm``, oneDNN linear) -- what AMX speeds up;
  attention     fused scaled-dot-product attention, forward and backward (matmuls + softmax inside);
  casts         dtype conversions (``_to_copy``, ``copy_``): autocast's weight and activation casts;
  element-wise  layer norm, GELU, softmax, dropout, adds, multiplies and their backwards, eager;
  fused         inductor's generated kernels (compiled rows: element-wise work fused into loops);
  optimizer     the fused AdamW step and the gradient-norm reduction;
  other         everything else (autograd bookkeeping, views, embedding lookups).

It prints the step time, the MFU against the same dtype's measured matmul peak (4096^2, as
``bench_mfu.py`` measures it), the share of each group, and the top ops. This is a benchmark: nothing
fails on a number.

Usage::

    python scripts/profile_step.py                # MiniLM-L6 shape, 32 x 128 (minutes: two compiles)
    python scripts/profile_step.py --no-compile   # eager rows only
    python scripts/profile_step.py --quick        # smoke test: tiny model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402
import bench_compile  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

WORDS = bench_compile.WORDS
GROUPS = ("matmul", "attention", "casts", "element-wise", "fused", "optimizer", "other")
MATMUL = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "mkldnn::_linear_pointwise",
    "aten::_addmm_activation",
)
CASTS = ("aten::_to_copy", "aten::copy_", "aten::to", "aten::_autocast_to_reduced_precision")
OPTIMIZER = ("aten::_fused_adamw_", "aten::_foreach_norm", "aten::_foreach_mul_", "aten::linalg_vector_norm")
ELEMENTWISE = (
    "layer_norm", "gelu", "softmax", "dropout", "add", "mul", "div", "sub", "tanh", "where", "masked_fill",
    "sum", "mean", "clamp", "neg", "exp", "log", "rsqrt", "pow", "fill_", "zero_", "threshold", "nll_loss",
    "cpu_dropout", "keep_mask", "bernoulli", "rand", "cat", "clone", "contiguous",
)  # fmt: skip
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")  # exact names: "ge" is also the start of "gelu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 layer, hidden 64, 16 tokens")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling (the compile happens here)")
    parser.add_argument("--top", type=int, default=12, help="ops listed per variant")
    parser.add_argument("--size", type=int, default=4096, help="matrix size of the matmul peak")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq_len, args.steps, args.warmup, args.size = 4, 16, 2, 2, 512
    return args


def group_of(name: str) -> str:
    """The group of one profiler event name (see the module docstring)."""
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in CASTS:
        return "casts"
    if name in OPTIMIZER or name.startswith("aten::_foreach"):
        return "optimizer"
    if name.startswith(("cpp_fused", "graph_", "triton_")) or "Compiled" in name or "inductor" in name.lower():
        return "fused"
    short = name.split("::")[-1].lower()
    if short in COMPARISONS or any(part in short for part in ELEMENTWISE):
        return "element-wise"
    return "other"


def matmul_peak(size: int, dtype: torch.dtype) -> float:
    """FLOP/s of ``size`` x ``size`` matmuls in ``dtype``, the median of 5."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    seconds, _ = common.median_seconds(lambda: torch.matmul(a, b), repeats=5, warmup=1)
    return 2 * size**3 / seconds


def build(args: argparse.Namespace):
    """``bench_compile.build_model`` (the same random MiniLM-shaped BERT, mean head, poolft's CPU
    dropout), with poolft's optimizer and an Accelerator for the clipped step."""
    from accelerate import Accelerator

    from poolft.config import TrainConfig
    from poolft.training.optim import build_optimizer

    model = bench_compile.build_model(args, fast_kernels=True)
    return model, build_optimizer(model, TrainConfig()), Accelerator(cpu=True)


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 5 + len(WORDS), (args.batch, args.seq_len), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 2, (args.batch,), generator=generator),
    }


def profile_variant(args: argparse.Namespace, bf16: bool, compiled: bool):
    """(median step seconds, {group: self seconds per step}, [(op, self seconds per step)])."""
    from poolft.training.clipping import clipped_optimizer_step

    torch._dynamo.reset()
    model, optimizer, accelerator = build(args)
    if compiled:
        model.compile(dynamic=False)
    batch = make_batch(args)

    def step() -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        clipped_optimizer_step(accelerator, model, optimizer, 1.0)
        optimizer.zero_grad()
        return time.perf_counter() - started

    for _ in range(args.warmup):
        step()
    plain = [step() for _ in range(args.steps)]  # timed without the profiler's overhead
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    groups = dict.fromkeys(GROUPS, 0.0)
    ops = []
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / args.steps
        if seconds <= 0:
            continue
        groups[group_of(event.key)] += seconds
        ops.append((event.key, seconds, event.count // args.steps))
    ops.sort(key=lambda op: -op[1])
    return statistics.median(plain), groups, ops


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    common.print_header("poolft step profile: where a MiniLM-L6 training step spends its time (torch.profiler)")
    peaks = {"fp32": matmul_peak(args.size, torch.float32), "bf16": matmul_peak(args.size, torch.bfloat16)}
    print(
        f"\nmatmul peak at {args.size}^2: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
        f"({common.ratio(peaks['bf16'], peaks['fp32'])}); cpu: {common.isa_flags()}"
    )
    model, _, _ = build(args)
    encoder = model.config.encoder_config
    flops = args.batch * common.train_flops(
        common.nonembedding_params(model), encoder.num_hidden_layers, encoder.hidden_size, args.seq_len
    )
    del model
    variants = [("fp32 eager", False, False), ("bf16 eager", True, False)]
    if not args.no_compile:
        variants += [("fp32 compiled", False, True), ("bf16 compiled", True, True)]
    results = {}
    for name, bf16, compiled in variants:
        results[name] = profile_variant(args, bf16, compiled)
        step_s, groups, ops = results[name]
        peak = peaks["bf16" if bf16 else "fp32"]
        total = sum(groups.values())
        print(
            f"\n{name}: step {step_s * 1e3:.0f} ms (median of {args.steps}, no profiler), "
            f"{flops / step_s / 1e9:.0f} GFLOP/s, "
            f"MFU {flops / step_s / peak:.1%} of the {'bf16' if bf16 else 'fp32'} peak; "
            f"profiled self time {total * 1e3:.0f} ms per step"
        )
        common.print_table(
            ["group", "ms per step", "share"],
            [[g, f"{s * 1e3:.1f}", f"{s / total:.1%}"] for g, s in groups.items() if s > 0],
        )
        common.print_table(
            ["op", "group", "calls", "ms per step", "share"],
            [[op, group_of(op), calls, f"{s * 1e3:.1f}", f"{s / total:.1%}"] for op, s, calls in ops[: args.top]],
        )
    print(f"\nsummary, batch {args.batch} x {args.seq_len}, {flops / 1e9:.1f} GFLOP per step:")
    base = results["fp32 eager"][0]
    rows = []
    for name, (step_s, groups, _) in results.items():
        non_matmul = sum(s for g, s in groups.items() if g not in ("matmul", "attention"))
        rows.append(
            [
                name,
                f"{step_s * 1e3:.0f}",
                common.ratio(base, step_s),
                f"{(groups['matmul'] + groups['attention']) * 1e3:.0f}",
                f"{non_matmul * 1e3:.0f}",
                f"{groups['casts'] * 1e3:.0f}",
            ]
        )
    common.print_table(
        ["variant", "step ms", "speed vs fp32 eager", "matmul+attention ms", "everything else ms", "casts ms"], rows
    )
    print(f"  cpu: {common.isa_flags()}")
    common.print_footer(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
