"""Peak memory of the MiniLM quickstart with and without ``model.gradient_checkpointing``.

Each setting runs ``poolft train`` with its defaults (the embedded SST-2 sample, backbone
``minilm``, batch 32) cut to ``--steps`` optimiser steps, in a fresh Python process that reports its
own peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) when the run is done;
``os.wait4``'s figure for the same process is printed beside it as a cross-check. Both settings run
in one invocation, side by side, then the ratio. Peak RSS on a CPU counts everything the process
ever held: the interpreter and libraries, the weights, gradients and AdamW moments (about 4x the
weights), the activations kept for the backward pass (what checkpointing trims) and the
allocator's cached blocks, so the ratio is smaller than the activations' share alone would suggest.

Usage::

    python scripts/bench_memory.py                   # 20 steps per setting, a few minutes on 2 cores
    python scripts/bench_memory.py --steps 50 --batch_size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import print_footer, print_header, print_table, run_job

#: the child process: run `poolft train` with these arguments, then print its own peak RSS in KiB
CHILD = (
    "import json, resource, sys\n"
    "from poolft.cli import main\n"
    "code = main(['train', *json.loads(sys.argv[1])])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)
SETTINGS = {"without": "false", "with": "true"}


def lscpu_matrix_flags() -> str:
    """The AMX and AVX-512 flags ``lscpu`` lists (they pick torch's CPU kernels)."""
    if shutil.which("lscpu") is None:
        return "lscpu not found"
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    flags = next((line.split(":", 1)[1].split() for line in output.splitlines() if line.startswith("Flags")), [])
    chosen = [flag for flag in flags if flag.startswith(("amx", "avx512"))]
    return " ".join(chosen) or "none"


def self_reported_peak_mib(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PEAK_RSS_KIB "):
            return int(line.split()[1]) / 1024
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per setting")
    parser.add_argument("--batch_size", type=int, default=32, help="train.batch_size (the quickstart's is 32)")
    parser.add_argument("--eval_samples", type=int, default=128, help="data.max_eval_samples (one evaluation)")
    parser.add_argument("--workdir", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()

    started = time.perf_counter()
    print_header(
        "poolft bench_memory: peak RSS with and without gradient checkpointing",
        [
            f"lscpu flags:  {lscpu_matrix_flags()}",
            f"job:          poolft train defaults (MiniLM, SST-2 sample), {args.steps} steps, batch {args.batch_size}",
        ],
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="poolft-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    child = workdir / "train_and_report_rss.py"
    child.write_text(CHILD, encoding="utf-8")
    rows, peaks = [], {}
    for name, flag in SETTINGS.items():
        arguments = [
            f"--train.max_steps={args.steps}",
            f"--train.batch_size={args.batch_size}",
            f"--data.max_eval_samples={args.eval_samples}",
            f"--model.gradient_checkpointing={flag}",
            f"--train.output_dir={workdir / name}",
            "--train.overwrite_output_dir=true",
            "--train.progress=false",
        ]
        result = run_job(name, [sys.executable, str(child), json.dumps(arguments)], workdir / f"{name}.log")
        if not result.ok:
            raise SystemExit(f"the {name} run failed; see {result.log}")
        metrics = json.loads((workdir / name / "metrics.json").read_text())
        peaks[name] = self_reported_peak_mib(result.log)
        rows.append(
            [
                name,
                f"{peaks[name]:.0f}",
                f"{result.peak_rss_mb:.0f}",
                f"{metrics['train_samples_per_second']:.1f}",
                f"{result.wall_seconds:.0f}",
                metrics["mixed_precision"],
            ]
        )
    print()
    print_table(["checkpointing", "peak RSS MiB", "wait4 MiB", "train samples/s", "wall s", "precision"], rows)
    print(f"\n  peak RSS with / without: {peaks['with'] / peaks['without']:.3f}")
    print(f"  runs and logs in {workdir}")
    print_footer(started)


if __name__ == "__main__":
    main()
