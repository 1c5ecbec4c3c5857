"""Benchmark: model FLOPs utilisation (MFU) of poolft text training on this machine.

1. Peak: the machine's matmul throughput, ``torch.matmul`` of two ``--size`` x ``--size`` matrices
   (default 4096) in float32 and in bf16, median of ``--repeats`` products (2 n^3 FLOPs each). This
   is a measured peak, not the datasheet's: MFU below is relative to what this CPU's matmul
   reaches, in the same dtype.
2. Training step at sequence length 128: poolft's MiniLM-L6 model (mean pooler) on a synthetic
   batch of ``--batch`` x ``--seq-len`` real tokens (no padding), the step poolft train runs
   (its CPU dropout, ``model(**batch).loss.backward()``, clipping folded into poolft's fused AdamW
   step), in float32 and under bf16 autocast, and for comparison the same model with torch's
   dropout and ``clip_grad_norm_`` + ``step()`` (what the Trainer runs); forward, backward and
   clip + optimiser step timed separately, median over ``--steps``.
   Training FLOPs per sequence of length s: s x (6 x non-embedding parameters + 12 x layers x
   hidden x s) (matmuls forward + backward, plus the attention scores and weighted sum).
   MFU = FLOPs per step / step time / same-dtype peak. The optimiser step is also timed with
   ``torch.optim.AdamW(fused=True)`` (the Trainer's default ``adamw_torch_fused``) for comparison.
3. A real ``poolft train`` run (``--run-dir`` of a finished text run, e.g. bench_train's, or a new
   run on ``--train-samples`` SST-2 sentences): its batches are rebuilt with poolft's own data code
   and sampler; "useful" FLOPs count each sentence's real tokens, "executed" FLOPs the padded batch
   shape (padding costs compute too); both divided by the run's ``train_seconds`` and the peak of
   the run's precision.

Usage::

    python scripts/bench_mfu.py                        # peak, step MFU, and a 2,000-sentence poolft run
    python scripts/bench_mfu.py --run-dir RUN           # use a finished poolft text run instead
    python scripts/bench_mfu.py --train-samples 0       # skip the real run
    python scripts/bench_mfu.py --quick                 # smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402
import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(size: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Median FLOP/s of ``size x size @ size x size`` in ``dtype`` and the median seconds."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    seconds, _ = common.median_seconds(lambda: torch.matmul(a, b, out=out), repeats=repeats, warmup=1)
    return 2.0 * size**3 / seconds, seconds


def build_model(poolft_kernels: bool = True):
    """MiniLM-L6 + mean pooler in training mode; with ``poolft_kernels`` the CPU dropout ``poolft train`` uses."""
    from poolft import PoolftForSequenceClassification
    from poolft.models.backbones import default_text_backbone
    from poolft.training.cpu_dropout import use_cpu_dropout

    torch.manual_seed(0)
    model = PoolftForSequenceClassification.from_backbone(default_text_backbone(), pooler="mean", num_labels=2)
    if poolft_kernels:
        use_cpu_dropout(model)
    return model.train()


def time_training_steps(
    model, batch: dict[str, torch.Tensor], bf16: bool, steps: int, warmup: int, optimizer, poolft_kernels: bool
):
    """Median seconds of forward, backward, clip+optimiser step and the whole step."""
    from accelerate import Accelerator

    from poolft.training.clipping import clipped_optimizer_step

    accelerator = Accelerator(cpu=True)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for index in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if poolft_kernels:
            clipped_optimizer_step(accelerator, model, optimizer, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if index >= warmup:
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                parts[key].append(value)
    return {key: statistics.median(values) for key, values in parts.items()}


def time_optimizer_only(model, optimizer, repeats: int) -> float:
    """Median seconds of ``optimizer.step()`` with gradients present (random, fixed)."""
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    seconds, _ = common.median_seconds(optimizer.step, repeats=repeats, warmup=1)
    optimizer.zero_grad()
    return seconds


def synthetic_mfu(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    from poolft.config import TrainConfig
    from poolft.training.optim import build_optimizer

    model = build_model()
    encoder = model.config.encoder_config
    params = common.nonembedding_params(model)
    total = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, encoder.vocab_size, (args.batch, args.seq_len), generator=generator)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (args.batch,), generator=generator),
    }
    flops = args.batch * common.train_flops(params, encoder.num_hidden_layers, encoder.hidden_size, args.seq_len)
    print(
        f"\n2. training step: poolft MiniLM-L6 + mean pooler ({total / 1e6:.1f}M parameters, "
        f"{params / 1e6:.1f}M outside the embeddings), batch {args.batch} x {args.seq_len} real tokens; "
        f"{flops / 1e9:.1f} GFLOP per step (6N + attention), median of {args.steps} steps after {args.warmup}"
    )
    optimizer = build_optimizer(model, TrainConfig())
    stock_model = build_model(poolft_kernels=False)
    stock_optimizer = build_optimizer(stock_model, TrainConfig())
    rows = []
    runs = [
        ("fp32", "fp32", model, optimizer, True),
        ("fp32, torch dropout + clip_grad_norm_", "fp32", stock_model, stock_optimizer, False),
        ("bf16", "bf16", model, optimizer, True),
    ]
    for label, name, run_model, run_optimizer, poolft_kernels in runs:
        t = time_training_steps(
            run_model, batch, name == "bf16", args.steps, args.warmup, run_optimizer, poolft_kernels
        )
        achieved = flops / t["step"]
        rows.append(
            [
                label,
                f"{t['step'] * 1e3:.0f}",
                f"{t['forward'] * 1e3:.0f}",
                f"{t['backward'] * 1e3:.0f}",
                f"{t['optimizer'] * 1e3:.0f}",
                f"{args.batch * args.seq_len / t['step']:.0f}",
                f"{achieved / 1e9:.1f}",
                f"{peaks[name] / 1e9:.1f}",
                f"{achieved / peaks[name]:.1%}",
                f"{flops / (t['forward'] + t['backward']) / peaks[name]:.1%}",
                f"{achieved / peaks['fp32']:.1%}",
            ]
        )
    common.print_table(
        [
            "precision",
            "step ms",
            "fwd ms",
            "bwd ms",
            "clip+opt ms",
            "tokens/s",
            "GFLOP/s",
            "peak GFLOP/s",
            "MFU",
            "MFU fwd+bwd",
            "vs fp32 peak",
        ],
        rows,
    )
    print(
        "  MFU: achieved / the same dtype's matmul peak; 'MFU fwd+bwd' leaves out clip + optimiser; 'vs fp32 peak' "
        "compares with the float32 peak (where bf16 matmuls are slower than float32 ones, bf16's MFU flatters it); "
        "'torch dropout + clip_grad_norm_' is the same step without poolft's CPU dropout and folded clipping"
    )
    same_groups = [{k: g[k] for k in ("params", "lr", "weight_decay")} for g in optimizer.param_groups]
    fused = torch.optim.AdamW(same_groups, betas=(0.9, 0.999), eps=1e-8, fused=True)
    repeats = max(3, args.steps)
    default_seconds = time_optimizer_only(model, optimizer, repeats)
    fused_seconds = time_optimizer_only(model, fused, repeats)
    print(
        f"  optimiser step alone ({total / 1e6:.1f}M parameters): "
        "poolft's AdamW (poolft.training.optim.build_optimizer) "
        f"{default_seconds * 1e3:.1f} ms, AdamW(fused=True) {fused_seconds * 1e3:.1f} ms "
        f"({common.ratio(default_seconds, fused_seconds)})"
    )


def real_run_mfu(args: argparse.Namespace, peaks: dict[str, float], workdir: Path) -> None:
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = workdir / "poolft"
        print(f"\n3. a real poolft train run: {args.train_samples} SST-2 sentences (its own process)")
        command = common.poolft_train_command(
            run_dir,
            image=False,
            train_samples=args.train_samples,
            eval_samples=64 if args.quick else None,
            batch_size=32,
            learning_rate=5e-5,
            epochs=1.0,
            max_length=args.seq_len,
        )
        job = common.run_job("poolft", command, workdir / "poolft.log", env=common.fresh_datasets_cache(workdir, "p"))
        if not job.ok:
            return
    else:
        print(f"\n3. the finished poolft train run in {run_dir}")
    metrics = common.read_poolft_metrics(run_dir)
    stats = common.poolft_batches(run_dir)
    precision = "bf16" if metrics["mixed_precision"] == "bf16" else "fp32"
    seconds = metrics["train_seconds"]
    peak = peaks[precision]
    lengths = [n for batch in stats.batches for n in batch]
    padded = [max(batch) for batch in stats.batches]
    print(
        f"  {stats.samples} sentences in {len(stats.batches)} batches, {seconds:.1f} train s "
        f"({metrics['train_samples_per_second']:.1f} samples/s), precision {metrics['mixed_precision']}; "
        f"real length mean {statistics.mean(lengths):.1f} (max {max(lengths)}), padded batch length mean "
        f"{statistics.mean(padded):.1f}; padding efficiency {stats.padding_efficiency:.1%}"
    )
    rows = []
    for name, flops, tokens in (
        ("useful (real tokens)", stats.useful_flops(), stats.real_tokens),
        ("executed (padded)", stats.executed_flops(), stats.executed_tokens),
    ):
        achieved = flops / seconds
        rows.append(
            [
                name,
                f"{tokens:,}",
                f"{flops / 1e12:.2f}",
                f"{achieved / 1e9:.1f}",
                f"{peak / 1e9:.1f}",
                f"{achieved / peak:.1%}",
                f"{achieved / peaks['fp32']:.1%}",
            ]
        )
    common.print_table(
        ["FLOPs counted", "tokens", "TFLOP", "GFLOP/s", f"{precision} peak GFLOP/s", "MFU", "vs fp32 peak"], rows
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1024 matmul, batch 4 x 32, 2 steps")
    parser.add_argument("--size", type=int, default=4096, help="matrix size for the matmul peak")
    parser.add_argument("--repeats", type=int, default=5, help="matmul products timed (median)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished poolft text run to analyse")
    parser.add_argument("--train-samples", type=int, default=None, help="sentences for a new run (0: no real run)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = min(args.size, 1024), min(args.repeats, 2)
        args.batch, args.seq_len, args.steps, args.warmup = min(args.batch, 4), min(args.seq_len, 32), 2, 1
    if args.train_samples is None:
        args.train_samples = 64 if args.quick else 2000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mfu-"))
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache" / "p")  # the run's own, if it runs here
    common.print_header("poolft MFU benchmark")
    print(f"\n1. matmul peak: {args.size} x {args.size} @ {args.size} x {args.size}, median of {args.repeats}")
    peaks, rows = {}, []
    for name, dtype in DTYPES.items():
        peaks[name], seconds = matmul_peak(args.size, dtype, args.repeats)
        rows.append([name, f"{seconds * 1e3:.0f}", f"{peaks[name] / 1e9:.1f}"])
    rows.append(["bf16 / fp32", "", common.ratio(peaks["bf16"], peaks["fp32"])])
    common.print_table(["dtype", "ms per product", "GFLOP/s"], rows)
    synthetic_mfu(args, peaks)
    try:
        if args.run_dir is not None or args.train_samples:
            real_run_mfu(args, peaks, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    common.print_footer(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
