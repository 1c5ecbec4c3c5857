"""Memory growth: does a long ``poolft train`` run keep its resident memory flat?

Trains a pooled head on a tiny BERT (2 layers, hidden 32; built in a temporary folder, no
download) for ``--steps`` optimiser steps (default 2,000) in this process with
``poolft.training.loop.train``: batch 4 on a small synthetic CSV repeated over many epochs, so every
epoch also runs an evaluation and writes a checkpoint. ``poolft.training.loop.StepLog.write`` is wrapped to
read this process's resident set size (``VmRSS`` in ``/proc/self/status``) after every
``--every`` steps. The RSS after step ``--baseline`` (default 200: caches, allocator pools and
lazy imports have settled by then) is compared with the RSS after the last step; growth within
``--limit`` percent (default 10) prints PASS.

Usage::

    python scripts/memory_growth.py               # 2,000 steps, about a minute on 2 CPU cores
    python scripts/memory_growth.py --steps 400 --baseline 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this script needs Linux)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=200, help="step whose RSS is the reference")
    parser.add_argument("--every", type=int, default=200, help="print the RSS every this many steps")
    parser.add_argument("--limit", type=float, default=10.0, help="allowed growth in percent")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=256)
    args = parser.parse_args()
    if not 0 < args.baseline < args.steps:
        parser.error("--baseline must be between 0 and --steps")

    from conftest import build_tiny_bert
    from datasets_for_tests import write_sentiment_csv

    import poolft.training.loop
    from poolft.config import load_config

    samples: dict[int, float] = {}
    original_write = poolft.training.loop.StepLog.write

    def write_and_sample(self, record):
        original_write(self, record)
        step = record.get("step")
        if "loss" in record and (step in (args.baseline, args.steps) or step % args.every == 0):
            samples[step] = rss_mb()
            print(f"step {step:5d}  rss {samples[step]:7.1f} MiB", flush=True)

    poolft.training.loop.StepLog.write = write_and_sample
    with tempfile.TemporaryDirectory(prefix="poolft-memory-") as work:
        work = Path(work)
        backbone = build_tiny_bert(work / "tiny-bert")
        files = write_sentiment_csv(work / "data", train_size=args.train_size, eval_size=32)
        config = load_config(
            None,
            [
                f"--data.data_files={json.dumps(files)}",
                "--data.text_column=text",
                f"--model.backbone={backbone}",
                f"--train.output_dir={work / 'run'}",
                f"--train.batch_size={args.batch_size}",
                f"--train.max_steps={args.steps}",
                "--train.eval_batch_size=32",
                "--train.learning_rate=1e-4",
                "--train.head_learning_rate=1e-3",
                "--train.mixed_precision=no",
                f"--train.log_every_steps={args.every}",
                "--train.torch_threads=1",
                "--train.progress=false",
            ],
        )
        started = time.perf_counter()
        metrics = poolft.training.loop.train(config)
        seconds = time.perf_counter() - started
    poolft.training.loop.StepLog.write = original_write

    first, last = samples[args.baseline], samples[args.steps]
    growth = 100 * (last - first) / first
    verdict = "PASS" if growth <= args.limit else "FAIL"
    print(
        f"{metrics['global_step']} steps, {metrics['epochs_completed']} epochs (each with an evaluation and a "
        f"checkpoint) in {seconds:.0f} s"
    )
    print(
        f"rss after step {args.baseline}: {first:.1f} MiB; after step {args.steps}: {last:.1f} MiB; "
        f"growth {growth:+.2f}% (limit {args.limit:g}%) {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
