"""Benchmark: how to adapt the backbone -- full fine-tuning, LoRA, layer-wise rate decay, EMA -- side by side.

On SST-2 from ``../shared`` (``--train-samples`` sentences, default 16,000; 1 epoch; max length 64;
the full 872-sentence validation split), for the ``mean`` and ``attention`` heads, each method runs
``poolft train`` in its own process:

  full        the whole model at ``--lr`` (backbone) and 1e-3 (head);
  lora        ``model.lora`` r=8 (alpha 16, dropout 0.1, the family's default attention targets) at
              ``--lora-lr``, pooler + classifier trained in full, merged at the end
              (``train.merge_lora_at_end``);
  layer-decay the whole model with ``train.layer_decay 0.8`` (the top layer at ``--lr`` x 0.8, each
              layer below 0.8 x the one above, the embeddings lowest);
  ema         the whole model with ``train.ema_decay`` (``--ema-decay``), evaluating the averaged weights.

For each: validation accuracy, train samples/s, wall time, peak RSS (``os.wait4`` of the job) and
trainable parameters (from ``metrics.json``), then each method's ratio to ``full`` for the same
head. One invocation runs all of them, so the figures share a machine and its load; the header
prints the CPU and its flags.

Usage::

    python scripts/bench_methods.py                       # 8 jobs, ~25 min on 2 idle cores (fp32)
    python scripts/bench_methods.py --quick               # smoke test: 256 sentences, 8 steps per job
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_common import bf16_flags, poolft_train_command, print_footer, print_header, print_table, run_job

METHODS = {
    "full": [],
    "lora": ["--model.lora", "{r: 8, alpha: 16, dropout: 0.1}", "--train.merge_lora_at_end", "true"],
    "layer-decay": ["--train.layer_decay", "0.8"],
    "ema": [],  # --train.ema_decay is added from --ema-decay
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=16000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full validation split")
    parser.add_argument("--poolers", default="mean,attention")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lr", type=float, default=1e-4, help="backbone rate of full, layer-decay and ema")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="rate of the LoRA adapters")
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mixed-precision", default="no", help="no (default: reproducible on one CPU kind) | auto")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="256 sentences, 64 for evaluation, 8 steps per job")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.eval_samples, args.max_steps = 256, 64, 8
    started = time.perf_counter()
    print_header(
        "bench_methods: full fine-tuning vs LoRA vs layer decay vs EMA (SST-2, MiniLM-L6)",
        [f"CPU bf16 flags: {bf16_flags()}", f"precision: {args.mixed_precision}"],
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-methods-"))
    rows = []
    results: dict[tuple[str, str], dict] = {}
    for pooler in args.poolers.split(","):
        for method in args.methods.split(","):
            output = workdir / f"{pooler}-{method}"
            extra = list(METHODS[method])
            if method == "ema":
                extra += ["--train.ema_decay", str(args.ema_decay)]
            command = poolft_train_command(
                output,
                image=False,
                train_samples=args.train_samples,
                eval_samples=args.eval_samples,
                batch_size=args.batch_size,
                learning_rate=args.lora_lr if method == "lora" else args.lr,
                epochs=1,
                max_length=64,
                mixed_precision=args.mixed_precision,
                max_steps=args.max_steps,
                pooler=pooler,
                extra=[*extra, "--train.save_at_end", "false", "--train.save_best_model", "false"],
            )
            job = run_job(f"{pooler}/{method}", command, workdir / "logs" / f"{pooler}-{method}.log")
            if not job.ok:
                continue
            metrics = json.loads((output / "metrics.json").read_text())
            results[pooler, method] = {**metrics, "rss": job.peak_rss_mb, "wall": job.wall_seconds}
    for (pooler, method), metrics in results.items():
        full = results.get((pooler, "full"))
        speed = metrics["train_samples_per_second"] or 0.0
        ratio = speed / full["train_samples_per_second"] if full and full["train_samples_per_second"] else None
        rows.append(
            [
                f"{pooler}/{method}",
                f"{100 * metrics['final']['accuracy']:.2f}",
                f"{speed:.1f}",
                f"{ratio:.2f}x" if ratio else "—",
                f"{metrics['wall']:.0f}",
                f"{metrics['rss']:.0f}",
                f"{metrics['trainable_parameters']:,}",
            ]
        )
    print()
    print_table(
        ["head/method", "accuracy %", "train samples/s", "vs full", "wall s", "peak RSS MiB", "trainable params"],
        rows,
    )
    print_footer(started)


if __name__ == "__main__":
    main()
