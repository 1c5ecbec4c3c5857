"""Benchmark: float32 vs bf16 (CPU autocast) for the same ``poolft train`` job.

Runs ``poolft train`` twice, each in its own process with an empty ``datasets`` cache, once with
``--train.mixed_precision no`` and once with ``bf16``, and prints train samples/s, wall time, peak
RSS and accuracy of each, the bf16/fp32 throughput ratio and the accuracy difference in points.
Each precision runs a second time with ``--train.compile true`` (``--no-compile`` skips those two
rows): its compile time is shown apart, with the train samples/s of the batches that compiled nothing.
It also reports whether the CPU has the instructions that make bf16 fast (``avx512_bf16``: bf16 dot
products in AVX-512; ``amx_bf16``/``amx_tile``: Intel AMX tiles), which is what poolft's
``train.mixed_precision auto`` looks at.

Text (default): SST-2 + MiniLM-L6, ``--train-samples`` (default 8,000) sentences, the full
validation split. ``--image``: Fashion-MNIST + ViT-S/14 at ``--image-size`` (default 112) px,
``--train-samples`` (default 2,000) images, ``--eval-samples`` (default 2,000) test images.

Usage::

    python scripts/bench_precision.py             # text (minutes)
    python scripts/bench_precision.py --image
    python scripts/bench_precision.py --quick     # smoke test: 64 sentences
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

PRECISIONS = ("no", "bf16")


def run(args: argparse.Namespace, workdir: Path, precision: str, compiled: bool = False) -> common.JobResult:
    name = f"{precision}-compiled" if compiled else precision
    out = workdir / f"poolft-{name}"
    command = common.poolft_train_command_for(args, out, precision)
    command += ["--train.compile", "true"] if compiled else []
    job = common.run_job(
        f"poolft {name}",
        command,
        workdir / "logs" / f"poolft-{name}.log",
        env=common.fresh_datasets_cache(workdir, name),
    )
    metrics = common.read_poolft_metrics(out)
    if job.ok and metrics:
        job.result = {
            **common.compile_summary(metrics, args.batch_size),
            "train_samples_per_second": metrics["train_samples_per_second"],
            "train_seconds": metrics["train_seconds"],
            "accuracy": metrics["final"]["accuracy"],
            "loss": metrics["final"]["loss"],
            "eval_samples": metrics["final"]["samples"],
            "mixed_precision": metrics["mixed_precision"],
        }
    return job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 examples, 64 evaluation examples")
    parser.add_argument("--image", action="store_true", help="Fashion-MNIST + ViT-S/14 instead of SST-2 + MiniLM")
    parser.add_argument("--train-samples", type=int, default=None, help="default 8000 (text) / 2000 (image)")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: all (text) / 2000 (image)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=None, help="train.torch_threads for every run")
    parser.add_argument("--pad-to", type=int, default=None, help="text: data.pad_to_multiple_of for every run")
    parser.add_argument("--no-compile", action="store_true", help="skip the train.compile rows")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders and logs here (default: temp)")
    args = parser.parse_args(argv)
    if args.train_samples is None:
        args.train_samples = (32 if args.image else 64) if args.quick else (2000 if args.image else 8000)
    if args.eval_samples is None and (args.quick or args.image):
        args.eval_samples = (32 if args.image else 64) if args.quick else 2000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.print_header(
        "poolft precision benchmark: float32 vs bf16 autocast",
        [f"job:          {'image (--image)' if args.image else 'text'}; each run in its own process"],
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    workdir = workdir / ("image" if args.image else "text")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"  workdir:      {workdir}\n")
    jobs = {precision: run(args, workdir, precision) for precision in PRECISIONS}
    if not args.no_compile:
        jobs.update({f"{p}-compiled": run(args, workdir, p, compiled=True) for p in PRECISIONS})

    what = (
        f"Fashion-MNIST, ViT-S/14 at {args.image_size} px"
        if args.image
        else f"SST-2, MiniLM-L6, max_length {args.max_length}"
    )
    print(
        f"\n{what}: {args.train_samples} training examples, {args.epochs:g} epoch(s)"
        f"{f' (max {args.max_steps} steps)' if args.max_steps else ''}, batch {args.batch_size}, lr {args.lr:g}"
    )
    rows = []
    for name, job in jobs.items():
        r = job.result
        label = "float32 (no)" if name.startswith("no") else "bf16 autocast"
        label += ", compiled" if name.endswith("compiled") else ""
        rows.append(
            [
                label + ("" if job.ok else " FAILED"),
                r.get("train_samples_per_second"),
                r.get("steady_samples_per_second"),
                r.get("train_seconds"),
                r.get("compile_seconds"),
                job.wall_seconds,
                round(job.peak_rss_mb),
                f"{r['accuracy']:.4f}" if "accuracy" in r else None,
                f"{r['loss']:.4f}" if "loss" in r else None,
                r.get("eval_samples"),
            ]
        )
    headers = ["precision", "train samples/s", "after compile", "train s", "compile s", "wall s", "peak RSS MiB"]
    common.print_table([*headers, "accuracy", "eval loss", "eval n"], rows)
    print(f"  cpu: {common.isa_flags()}")
    fp32, bf16 = jobs["no"], jobs["bf16"]
    speed = common.ratio(bf16.result.get("train_samples_per_second"), fp32.result.get("train_samples_per_second"))
    print(
        f"\n  bf16 / fp32: train samples/s {speed}, "
        f"wall time {common.ratio(bf16.wall_seconds, fp32.wall_seconds)}, "
        f"peak RSS {common.ratio(bf16.peak_rss_mb, fp32.peak_rss_mb)}; "
        f"accuracy bf16 - fp32 {common.points(bf16.result.get('accuracy'), fp32.result.get('accuracy'))}"
    )
    from poolft.training.loop import resolve_mixed_precision

    auto = resolve_mixed_precision("auto")
    for precision in PRECISIONS:
        eager, compiled = jobs[precision].result, jobs.get(f"{precision}-compiled")
        if compiled is None or not compiled.result:
            continue
        c, speed = compiled.result, eager.get("train_samples_per_second")
        print(
            f"  {precision} compiled / eager: train samples/s {common.ratio(c.get('train_samples_per_second'), speed)} "
            f"with the compile time, {common.ratio(c.get('steady_samples_per_second'), speed)} after it; compile "
            f"{c.get('compile_seconds') or 0:.1f} s for {c.get('compile_graphs')} graphs; eval loss "
            f"{c.get('loss', float('nan')):.4f} vs {eager.get('loss', float('nan')):.4f}"
        )
    print(f"  CPU: {common.bf16_flags()} -> poolft's mixed_precision=auto picks {auto!r} here")
    print(f"  cpu: {common.isa_flags()}")
    if args.workdir is None:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    common.print_footer(started)
    return 0 if all(job.ok for job in jobs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
