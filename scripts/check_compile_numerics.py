"""Check: ``train.compile`` trains like eager, step for step, over 50 steps in fp32 and in bf16.

For each precision (``--train.mixed_precision no`` and ``bf16``) it runs ``poolft train`` twice on
the same SST-2 sentences (MiniLM-L6, mean pooler, batch 32, ``--max-length`` 64), eager and with
``--train.compile true``, both padded to each batch's longest text (the compiled run's token axis
is dynamic), so that poolft's CPU dropout draws the same masks in both. It compares the logged
per-step losses and the final accuracy:

  fp32: every step's loss within rtol 1e-3, atol 1e-4 of eager (float32 reassociation in fused
        kernels, grown over 50 optimiser steps);
  bf16: within rtol 5e-2, atol 1e-2 (bf16 keeps 8 bits of mantissa; inductor keeps some
        intermediates in fp32 where eager rounds them to bf16).

The exit status is 1 if any step is outside its tolerance. These are numerics, not timings; the
compile time and speed are in ``bench_compile.py`` and ``bench_precision.py``. Each run compiles
MiniLM's forward and backward (minutes on a small CPU), which is why this is a script and not a
test of the default suite.

Usage::

    python scripts/check_compile_numerics.py                 # 50 steps, fp32 and bf16
    python scripts/check_compile_numerics.py --quick         # smoke test: 4 steps, fp32 only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

TOLERANCES = {"no": (1e-3, 1e-4), "bf16": (5e-2, 1e-2)}  # (rtol, atol) per step's loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 steps, 256 sentences, fp32 only")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", choices=sorted(TOLERANCES), default=["no", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.precisions = 4, ["no"]
    return args


def logged_losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    return [record["loss"] for record in records if "loss" in record]


def run(args: argparse.Namespace, output: Path, precision: str, compiled: bool) -> dict:
    samples = 32 * args.steps
    extra = [
        "--train.max_steps",
        str(args.steps),
        "--train.log_every_steps",
        "1",
        "--train.compile",
        str(compiled).lower(),
        "--data.max_eval_samples",
        "256" if args.quick else "872",
    ]
    if args.threads:
        extra += ["--train.torch_threads", str(args.threads)]
    command = common.poolft_train_command(
        output,
        image=False,
        train_samples=samples,
        eval_samples=None,
        batch_size=32,
        learning_rate=5e-5,
        epochs=1.0,
        max_length=args.max_length,
        mixed_precision=precision,
        extra=extra,
    )
    name = f"{'compiled' if compiled else 'eager'} {precision}"
    result = common.run_job(name, command, output.parent / f"{output.name}.log")
    metrics = common.read_poolft_metrics(output)
    if not result.ok or not metrics:
        raise SystemExit(f"check_compile_numerics: the {name} run failed; see {output.parent / (output.name + '.log')}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.print_header("poolft compile numerics: eager vs train.compile, per-step losses")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compile-numerics-"))
    rows, failed = [], []
    for precision in args.precisions:
        rtol, atol = TOLERANCES[precision]
        metrics = {
            c: run(args, workdir / f"{precision}-{'compiled' if c else 'eager'}", precision, c) for c in (False, True)
        }
        eager = logged_losses(workdir / f"{precision}-eager")
        compiled = logged_losses(workdir / f"{precision}-compiled")
        if len(eager) != len(compiled):
            raise SystemExit(f"check_compile_numerics: {len(eager)} eager losses but {len(compiled)} compiled ones")
        gaps = [abs(c - e) for e, c in zip(eager, compiled, strict=True)]
        outside = [i + 1 for i, (e, gap) in enumerate(zip(eager, gaps, strict=True)) if gap > atol + rtol * abs(e)]
        if outside:
            failed.append(precision)
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        rows.append(
            [
                "fp32" if precision == "no" else precision,
                len(eager),
                f"{eager[-1]:.5f}",
                f"{compiled[-1]:.5f}",
                f"{gaps[worst]:.2e} (step {worst + 1})",
                f"rtol {rtol:g}, atol {atol:g}",
                "ok" if not outside else f"outside at steps {outside[:5]}",
                f"{metrics[False]['final']['accuracy']:.4f}",
                f"{metrics[True]['final']['accuracy']:.4f}",
            ]
        )
    print(f"\nSST-2, MiniLM-L6 + mean pooler, batch 32, max length {args.max_length}, padded to each batch's longest")
    common.print_table(
        [
            "precision",
            "steps",
            "eager last loss",
            "compiled last loss",
            "largest |gap|",
            "tolerance",
            "verdict",
            "eager acc",
            "compiled acc",
        ],
        rows,
    )
    print(f"  cpu: {common.isa_flags()}")
    common.print_footer(started)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
