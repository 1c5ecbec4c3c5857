"""Benchmark: what a training step costs the first time it meets a new batch length, in fp32 and bf16.

oneDNN builds kernels per matrix shape; a length-grouped epoch of text batches meets a few dozen
lengths. This times a forward + backward of a BERT with MiniLM-L6's shape (6 layers, hidden 384,
12 heads, intermediate 1536; random weights: speed does not depend on them) on a ``--batch`` x L
batch, for each L: the first call, then the next two at the same L. If the first call costs much
more, padding batches to fewer lengths (``data.pad_to_multiple_of``) pays. This is a benchmark:
nothing fails on a number.

Usage::

    python scripts/bench_new_shapes.py                 # fp32 and bf16 (autocast), lengths 17..37
    python scripts/bench_new_shapes.py --lengths 9 13 --dtype bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel


def step(model: BertModel, length: int, batch: int, bf16: bool) -> float:
    """Seconds of one forward + backward on ``(batch, length)`` random ids."""
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(ids).last_hidden_state.float().sum()
    loss.backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[17, 19, 23, 29, 31, 37])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    args = parser.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = sorted({flag for flag in cpuinfo.split() if flag.startswith("amx")})
    print(
        f"bench_new_shapes: batch {args.batch}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"AMX flags: {' '.join(flags) or 'none'}"
    )
    for dtype in ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]:
        torch.manual_seed(0)
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        model = BertModel(config)
        bf16 = dtype == "bf16"
        step(model, 16, args.batch, bf16)  # warm-up at a length not in the list
        for length in args.lengths:
            first = step(model, length, args.batch, bf16)
            again = [step(model, length, args.batch, bf16) for _ in range(2)]
            print(
                f"{dtype} L={length}: first {first * 1e3:.0f} ms, then {again[0] * 1e3:.0f} and {again[1] * 1e3:.0f} ms"
            )


if __name__ == "__main__":
    main()
