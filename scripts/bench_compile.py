"""Benchmark: ``train.compile`` -- a MiniLM-L6-shaped training step eager and compiled, and what to compile.

1. Dropout under inductor: poolft's training step (mean head, AdamW) four ways, each in a fresh
   dynamo state: eager or compiled (``nn.Module.compile(dynamic=False)``, as ``poolft train`` does),
   with poolft's CPU dropout (``train.fast_kernels``: masks drawn by an opaque op, the same as
   eager) or torch's ``nn.Dropout`` (inductor generates and fuses its own random numbers). For
   each: compile time (the first steps at every length, which compile) apart from the median step
   time after it, at ``--batch`` x each of ``--lengths``.
2. Graphs compiled over one epoch's batch lengths (length-grouped SST-2-like lengths): static
   shapes with the batches padded to multiples of 16 (one graph per padded length) against what
   poolft does, the token axis marked dynamic (``mark_token_axis_dynamic``) with no padding past
   each batch's longest text: graphs, compile time, median step, padding efficiency and the
   epoch's time with the compile.

The backbone is a BERT built from a ``BertConfig`` with MiniLM-L6's shape (6 layers, hidden 384,
12 heads, intermediate 1536; random weights: speed does not depend on them). Every figure is
printed with the CPU's matrix flags. This is a benchmark: nothing fails on a number.

Usage::

    python scripts/bench_compile.py            # minutes: every mode compiles a MiniLM-sized model
    python scripts/bench_compile.py --quick    # smoke test: a 1-layer, hidden-64 model, short texts
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402
import torch  # noqa: E402

QUICK_SHAPE = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128}
WORDS = [f"w{i}" for i in range(2000)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, short texts, few steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128], help="padded lengths of part 1")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per length after compiling")
    parser.add_argument("--epoch-batches", type=int, default=60, help="batches of part 2's epoch")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.lengths, args.steps, args.epoch_batches = 8, [16, 32], 3, 12
    return args


def build_model(args: argparse.Namespace, fast_kernels: bool) -> torch.nn.Module:
    """poolft's mean-pooled classifier on a random BERT (MiniLM-L6's shape; ``--quick``: 1 layer, hidden 64)."""
    import poolft
    from poolft.training.cpu_dropout import use_cpu_dropout

    if not hasattr(args, "backbone"):
        shape = QUICK_SHAPE if args.quick else common.MINILM_SHAPE
        args.backbone = common.random_bert(Path(tempfile.mkdtemp(prefix="bench-compile-")), shape, WORDS)
    torch.manual_seed(0)
    model = poolft.PoolftForSequenceClassification.from_backbone(str(args.backbone), pooler="mean", num_labels=2)
    model.config.problem_type = "single_label_classification"  # as poolft train settles it before compiling
    if fast_kernels:
        use_cpu_dropout(model)
    return model.train()


def make_batch(batch: int, length: int, real: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels: row i has ``real[i]`` real tokens (default: all)."""
    real = real or [length] * batch
    mask = (torch.arange(length)[None, :] < torch.tensor(real)[:, None]).long()
    ids = torch.randint(5, 5 + len(WORDS), (batch, length)) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (batch,))}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    started = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def dropout_rows(args: argparse.Namespace) -> None:
    print(
        f"\n1. training step, batch {args.batch} x lengths {args.lengths}: compile time apart, then the median of "
        f"{args.steps} steps per length"
    )
    rows, medians = [], {}
    for compiled in (False, True):
        for fast_kernels in (True, False):
            torch._dynamo.reset()
            model = build_model(args, fast_kernels)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            if compiled:
                model.compile(dynamic=False)
            graphs, compile_seconds, times = compiled_graphs(), 0.0, {}
            for length in args.lengths:
                for _ in range(2):  # the first two steps compile (problem_type and shapes settle), or warm up
                    compile_seconds += train_step(model, optimizer, make_batch(args.batch, length))
                times[length] = statistics.median(
                    train_step(model, optimizer, make_batch(args.batch, length)) for _ in range(args.steps)
                )
            name = f"{'compiled' if compiled else 'eager'}, {'poolft CPU dropout' if fast_kernels else 'torch dropout'}"
            medians[name] = times
            rows.append(
                [
                    name,
                    f"{compile_seconds:.1f}" if compiled else "-",
                    compiled_graphs() - graphs if compiled else "-",
                    *(f"{times[length] * 1e3:.0f}" for length in args.lengths),
                ]
            )
    common.print_table(["step", "compile s", "graphs", *(f"ms at {n}" for n in args.lengths)], rows)
    base = medians["eager, poolft CPU dropout"]
    for name, times in medians.items():
        ratios = ", ".join(common.ratio(base[n], times[n]) for n in args.lengths)
        print(f"  speed vs eager with poolft's CPU dropout: {name}: {ratios}")
    print(f"  cpu: {common.isa_flags()}")


def epoch_lengths(args: argparse.Namespace) -> list[list[int]]:
    """Length-grouped batches of SST-2-like lengths (mostly short, a tail to 128): real lengths per row."""
    rng = random.Random(0)
    longest = 32 if args.quick else 128
    texts = sorted(
        min(longest, max(4, int(rng.lognormvariate(3.0, 0.6)))) for _ in range(args.batch * args.epoch_batches)
    )
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    rng.shuffle(batches)
    return batches


def graph_rows(args: argparse.Namespace) -> None:
    from poolft.training.compilation import compile_limits, mark_token_axis_dynamic

    multiple = 16
    batches = epoch_lengths(args)
    padded = [-(-max(b) // multiple) * multiple for b in batches]
    real_tokens = sum(sum(b) for b in batches)
    print(
        f"\n2. graphs over one epoch of {len(batches)} length-grouped batches of {args.batch} "
        f"({len(set(max(b) for b in batches))} distinct longest lengths); poolft CPU dropout; static shapes with the "
        f"batches padded to multiples of {multiple} ({len(set(padded))} lengths: {sorted(set(padded))}) against "
        "poolft's dynamic token axis with no padding past each batch's longest text"
    )
    rows = []
    for name in (f"static, multiples of {multiple}", "dynamic token axis (poolft)"):
        torch._dynamo.reset()
        model = build_model(args, fast_kernels=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        static = name.startswith("static")
        model.compile(dynamic=False)
        graphs, times, compile_seconds, executed = compiled_graphs(), [], 0.0, 0
        with compile_limits(2 * len(set(padded)) + 2):
            for real, padded_length in zip(batches, padded, strict=True):
                length = padded_length if static else max(real)
                executed += length * len(real)
                batch = make_batch(args.batch, length, real)
                if not static:
                    mark_token_axis_dynamic(batch)
                before = compiled_graphs()
                seconds = train_step(model, optimizer, batch)
                if compiled_graphs() > before:
                    compile_seconds += seconds
                else:
                    times.append(seconds)
        median = statistics.median(times) * 1e3 if times else None
        rows.append(
            [
                name,
                compiled_graphs() - graphs,
                f"{compile_seconds:.1f}",
                median and f"{median:.0f}",
                f"{real_tokens / executed:.1%}",
                f"{compile_seconds + sum(times):.1f}",
            ]
        )
    common.print_table(
        ["shapes", "graphs", "compile s", "median step ms (no compile)", "padding eff.", "epoch s (with compile)"], rows
    )
    print(f"  cpu: {common.isa_flags()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    common.print_header("poolft compile benchmark: eager vs torch.compile (inductor) training steps")
    dropout_rows(args)
    graph_rows(args)
    common.print_footer(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
