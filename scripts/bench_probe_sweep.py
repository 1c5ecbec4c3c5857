"""Benchmark: a cached five-head probe sweep against five uncached probe runs.

The probe track freezes the backbone. Without the feature cache every head's run pushes the whole
training split through the backbone again; with it (``train.feature_cache``) the first run
computes the states once and every head trains on the memory-mapped cache. This script runs, each
in its own process with an empty ``datasets`` cache:

1. ``poolft sweep`` over the heads (one seed, the recipe's rate, no search) with an empty feature
   cache folder, so its wall time includes the one backbone pass;
2. ``poolft train`` once per head with ``train.feature_cache false`` (backbone in the loop, frozen).

It prints the wall time of each, the sweep's wall time over one uncached run (goal <= 1.5) and the
five uncached runs over the sweep, plus each head's accuracy both ways (they should agree: the
cache only stores the states the frozen backbone computes anyway, in float16).

Usage::

    python scripts/bench_probe_sweep.py                                 # SST-2 probe recipe, full split
    python scripts/bench_probe_sweep.py --train-samples 8000            # a cheaper check
    python scripts/bench_probe_sweep.py --config recipes/fashion_mnist/probe.yaml
    python scripts/bench_probe_sweep.py --quick                         # smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

HEADS = "cls,mean,max,attention,window"


def size_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.train_samples:
        overrides += ["--data.max_train_samples", str(args.train_samples)]
    if args.eval_samples:
        overrides += ["--data.max_eval_samples", str(args.eval_samples)]
    return overrides


def cached_sweep(args: argparse.Namespace, workdir: Path) -> common.JobResult:
    command = [
        sys.executable,
        "-m",
        "poolft",
        "sweep",
        "--config",
        str(args.config),
        "--poolers",
        args.heads,
        "--seeds",
        "0",
        "--results",
        str(workdir / "sweep-results"),
        "--runs",
        str(workdir / "sweep-runs"),
        "--train.feature_cache_dir",
        str(workdir / "feature-cache"),
        *size_overrides(args),
    ]
    job = common.run_job(
        "cached sweep", command, workdir / "logs" / "sweep.log", env=common.fresh_datasets_cache(workdir, "sweep")
    )
    for result in (workdir / "sweep-results").rglob("*-seed0.json"):
        record = json.loads(result.read_text())
        job.result[record["head"]] = record["final"]["accuracy"]
    return job


def uncached_run(args: argparse.Namespace, workdir: Path, head: str) -> common.JobResult:
    out = workdir / f"uncached-{head}"
    command = [
        sys.executable,
        "-m",
        "poolft",
        "train",
        "--config",
        str(args.config),
        "--model.pooler",
        head,
        "--train.feature_cache",
        "false",
        "--train.torch_threads",
        "null",  # the backbone runs every step: give it every core (the sweep's backbone pass has them too)
        "--train.output_dir",
        str(out),
        "--train.progress",
        "false",
        *size_overrides(args),
    ]
    job = common.run_job(
        f"uncached {head}",
        command,
        workdir / "logs" / f"uncached-{head}.log",
        env=common.fresh_datasets_cache(workdir, f"uncached-{head}"),
    )
    metrics = common.read_poolft_metrics(out)
    if job.ok and metrics:
        job.result = {"accuracy": metrics["final"]["accuracy"]}
    return job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=common.REPO / "recipes" / "sst2" / "probe.yaml")
    parser.add_argument("--heads", default=HEADS)
    parser.add_argument("--train-samples", type=int, default=None, help="default: the recipe's (full split)")
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test: 512 training, 128 evaluation examples")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs, caches and logs here (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples = args.train_samples or 512, args.eval_samples or 128
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    heads = [h for h in args.heads.split(",") if h]
    common.print_header(
        "poolft probe benchmark: cached sweep vs uncached runs",
        [
            f"recipe:       {args.config} (size overrides: {' '.join(size_overrides(args)) or 'none'})",
            f"heads:        {', '.join(heads)}; each job in its own process, empty datasets and feature caches",
        ],
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-probe-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "feature-cache", ignore_errors=True)
    print(f"  workdir:      {workdir}\n")
    sweep = cached_sweep(args, workdir)
    uncached = {head: uncached_run(args, workdir, head) for head in heads}

    rows = [
        [f"uncached run: {head}" + ("" if job.ok else " FAILED"), job.wall_seconds, job.result.get("accuracy")]
        + [sweep.result.get(head)]
        for head, job in uncached.items()
    ]
    rows.append(
        [f"cached sweep ({len(heads)} heads)" + ("" if sweep.ok else " FAILED"), sweep.wall_seconds, None, None]
    )
    print()
    common.print_table(["job", "wall s", "accuracy (uncached)", "accuracy (cached)"], rows)
    one_run = statistics.mean(job.wall_seconds for job in uncached.values())
    all_runs = sum(job.wall_seconds for job in uncached.values())
    print(
        f"\n  cached sweep / one uncached run (mean of {len(heads)}): {common.ratio(sweep.wall_seconds, one_run)} "
        f"(goal <= 1.5x)\n  {len(heads)} uncached runs / cached sweep: {common.ratio(all_runs, sweep.wall_seconds)}"
    )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    common.print_footer(started)
    return 0 if sweep.ok and all(job.ok for job in uncached.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
