"""Helpers shared by the ``scripts/bench_*.py`` benchmarks (not part of the poolft package).

- a hardware/software header every benchmark prints first;
- ``run_job``: run one command in its own process and return its wall time and peak RSS (from
  ``os.wait4``, so the figure is that job's alone);
- ``poolft_train_command``: the ``poolft train`` command line for a text or image job;
- ``poolft_batches``: the batches a finished ``poolft train`` text run executed, rebuilt with
  poolft's own data code and sampler (real and padded token counts, for padding and MFU figures);
- training-FLOP formulas for BERT/ViT-style encoders;
- a plain fixed-width table printer and a median timer.

Nothing here asserts on timings: the benchmarks report, they never fail on a number.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("POOLFT_SHARED", REPO.parent / "shared"))
SST2 = SHARED / "data" / "sst2"
FASHION_MNIST = SHARED / "data" / "fashion_mnist"
VIT_SMALL = SHARED / "models" / "vit-small-patch14-dinov2"


# ----------------------------------------------------------------------------------------------
# hardware header


from poolft.training.run_info import cpu_flags, cpu_model  # noqa: E402  (one definition, shared with poolft)


def bf16_flags() -> str:
    """``"avx512_bf16 yes, amx_bf16 no, amx_tile no"``: what makes CPU bf16 fast (or not)."""
    flags = cpu_flags()
    return ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in ("avx512_bf16", "amx_bf16", "amx_tile"))


def isa_flags() -> str:
    """``"amx_bf16 no, ..., avx512f yes, avx2 yes"``: the CPU matrix features a timing depends on
    (``/proc/cpuinfo``), printed beside every figure so none is read without them."""
    from poolft.training.run_info import MATRIX_FLAGS

    flags = cpu_flags()
    return ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in MATRIX_FLAGS)


def compile_summary(metrics: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """A ``train.compile`` run's compile cost from its ``metrics.json``: seconds, graphs, and the
    train samples/s of the batches that compiled nothing (``None`` entries for an eager run)."""
    stats = metrics.get("compile") or {}
    seconds = stats.get("seconds")
    steady = None
    if seconds is not None and metrics.get("train_seconds"):
        rest = metrics["train_seconds"] - seconds
        samples = metrics["train_samples_seen"] - stats.get("samples", stats.get("steps", 0) * batch_size)
        steady = samples / rest if rest > 0 and samples > 0 else None
    return {"compile_seconds": seconds, "compile_graphs": stats.get("graphs"), "steady_samples_per_second": steady}


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def versions() -> str:
    import accelerate
    import datasets
    import torch
    import transformers

    import poolft

    return (
        f"poolft {poolft.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"accelerate {accelerate.__version__}, datasets {datasets.__version__}, python {platform.python_version()}"
    )


def print_header(title: str, extra: Sequence[str] = ()) -> None:
    """CPU, cores, torch threads, versions, load average, date: the context every table needs."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(title)
    print(f"  date:         {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  cpu:          {cpu_model()} ({os.cpu_count()} logical CPUs, {usable} usable)")
    print(f"  cpu bf16:     {bf16_flags()}")
    print(f"  cpu matrix:   {isa_flags()}")
    threads = f"{torch.get_num_threads()} threads, {torch.get_num_interop_threads()} interop"
    print(f"  torch:        {threads}; cuda {'yes' if torch.cuda.is_available() else 'no'}")
    print(f"  versions:     {versions()}")
    print(f"  platform:     {platform.platform()}")
    print(f"  load average: {load_average()} (other work on the machine skews timings)")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > usable:
        print(
            f"  WARNING: load average {os.getloadavg()[0]:.1f} exceeds the {usable} usable CPUs: timings are "
            "unreliable (with other processes on its cores, torch's OpenMP threads stall at every barrier, "
            "which hurts small ops most); rerun on an idle machine, or compare runs with --threads 1"
        )
    for line in extra:
        print(f"  {line}")
    sys.stdout.flush()


def print_footer(started: float) -> None:
    print(f"\nload average at the end: {load_average()}; total {time.perf_counter() - started:.0f} s")


# ----------------------------------------------------------------------------------------------
# jobs in their own processes


@dataclass
class JobResult:
    name: str
    command: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    log: Path
    result: dict[str, Any] = field(default_factory=dict)  # the job's own numbers (metrics.json, ...)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_job(
    name: str, command: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> JobResult:
    """Run ``command`` with stdout+stderr to ``log``; wall time and the child's own peak RSS.

    ``os.wait4`` returns the resource usage of exactly this child (and of its own waited-for
    children), unlike ``RUSAGE_CHILDREN``, which keeps the maximum over every child so far.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    print(f"  [{name}] $ {shlex.join(command)}", flush=True)
    with open(log, "wb") as stream:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    result = JobResult(name, command, process.returncode, wall, usage.ru_maxrss / 1024, log)  # ru_maxrss: KiB
    state = "ok" if result.ok else f"FAILED (exit {result.returncode}; log {log})"
    print(f"  [{name}] {state} in {wall:.1f} s, peak RSS {result.peak_rss_mb:.0f} MiB", flush=True)
    if not result.ok:
        print(result.log_tail(), flush=True)
    return result


def fresh_datasets_cache(workdir: Path, name: str) -> dict[str, str]:
    """Environment giving a job an empty ``datasets`` cache, so no job reuses another's tokenization."""
    cache = workdir / "hf-datasets-cache" / name
    shutil.rmtree(cache, ignore_errors=True)  # a reused --workdir must not hand a job a warm cache
    cache.mkdir(parents=True)
    return {"HF_DATASETS_CACHE": str(cache)}


def poolft_train_command(
    output_dir: Path,
    *,
    image: bool,
    train_samples: int,
    eval_samples: int | None,
    batch_size: int,
    learning_rate: float,
    epochs: float,
    max_length: int = 128,
    image_size: int = 112,
    mixed_precision: str = "auto",
    max_steps: int | None = None,
    pooler: str = "mean",
    extra: Sequence[str] = (),
) -> list[str]:
    """``python -m poolft train ...`` for the SST-2 text job or the Fashion-MNIST ViT job."""
    if image:
        data = [
            "--data.data_files",
            f"{{train: {FASHION_MNIST / 'train.parquet'}, test: {FASHION_MNIST / 'test.parquet'}}}",
            "--data.eval_split",
            "test",
            "--data.image_size",
            str(image_size),
            "--model.backbone",
            str(VIT_SMALL),
        ]
    else:
        data = [
            "--data.data_files",
            f"{{train: {SST2 / 'train.parquet'}, validation: {SST2 / 'validation.parquet'}}}",
            "--data.max_length",
            str(max_length),
        ]
    command = [
        sys.executable,
        "-m",
        "poolft",
        "train",
        *data,
        "--model.pooler",
        pooler,
        "--data.max_train_samples",
        str(train_samples),
        "--train.batch_size",
        str(batch_size),
        "--train.learning_rate",
        str(learning_rate),
        "--train.epochs",
        str(epochs),
        "--train.mixed_precision",
        mixed_precision,
        "--train.output_dir",
        str(output_dir),
        "--train.overwrite_output_dir",
        "true",
        "--train.progress",
        "false",
    ]
    if eval_samples is not None:
        command += ["--data.max_eval_samples", str(eval_samples)]
    if max_steps is not None:
        command += ["--train.max_steps", str(max_steps)]
    return command + list(extra)


def poolft_train_command_for(args: Any, output_dir: Path, mixed_precision: str) -> list[str]:
    """``poolft_train_command`` from a benchmark's parsed arguments (the options every benchmark shares)."""
    extra = ["--train.torch_threads", str(args.threads)] if args.threads else []
    if getattr(args, "pad_to", None):
        extra += ["--data.pad_to_multiple_of", str(args.pad_to)]
    return poolft_train_command(
        output_dir,
        image=args.image,
        train_samples=args.train_samples,
        eval_samples=args.eval_samples,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        epochs=args.epochs,
        max_length=args.max_length,
        image_size=args.image_size,
        mixed_precision=mixed_precision,
        max_steps=args.max_steps,
        extra=extra,
    )


def read_poolft_metrics(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------
# what a poolft text run executed


@dataclass
class BatchStats:
    """Token counts of the batches a run trained on."""

    batches: list[list[int]]  # real lengths per example, per batch
    num_layers: int
    hidden_size: int
    nonembedding_params: int
    pad_to_multiple_of: int | None = None  # data.pad_to_multiple_of: each batch padded up to a multiple

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def real_tokens(self) -> int:
        return sum(sum(b) for b in self.batches)

    @property
    def executed_tokens(self) -> int:
        multiple = self.pad_to_multiple_of or 1
        return sum(len(b) * -(-max(b) // multiple) * multiple for b in self.batches)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / max(self.executed_tokens, 1)

    def useful_flops(self) -> float:
        return sum(
            train_flops(self.nonembedding_params, self.num_layers, self.hidden_size, n) for b in self.batches for n in b
        )

    def executed_flops(self) -> float:
        return sum(
            len(b) * train_flops(self.nonembedding_params, self.num_layers, self.hidden_size, max(b))
            for b in self.batches
        )


def poolft_batches(run_dir: Path) -> BatchStats:
    """Rebuild the training batches of the finished text run in ``run_dir`` with poolft's own code.

    Same config (``config.yaml``), same data loading and tokenization, the same seeded
    length-grouping sampler and the number of batches the run took (``metrics.json``). Single
    process and no resume assumed (what the benchmarks run).
    """
    import datasets
    import transformers

    from poolft.config import load_config
    from poolft.data.inputs import encode_split, example_lengths
    from poolft.data.sampling import ShuffledBatchSampler
    from poolft.data.sources import load_splits

    config = load_config(run_dir / "config.yaml")
    metrics = read_poolft_metrics(run_dir)
    if metrics.get("task") != "text":
        raise ValueError(f"{run_dir} is not a finished text run")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run_dir))
    datasets.disable_progress_bars()
    splits = load_splits(config.data)
    train = encode_split(splits.train, tokenizer, "text", config.data, config.data.train_split)
    lengths = list(example_lengths(train, "text"))
    sampler = ShuffledBatchSampler(
        lengths,
        len(train),
        config.train.batch_size,
        seed=config.train.seed,
        group_by_length=config.data.group_by_length,
    )
    state = metrics["trainer_state"]
    calls, epochs = state["accumulate_calls"], state["epoch"] + 1
    batches: list[list[int]] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [[lengths[i] for i in batch] for batch in sampler.batches()]
    batches = batches[:calls]
    encoder = transformers.AutoConfig.from_pretrained(str(run_dir))
    encoder = getattr(encoder, "encoder_config", encoder)
    model_params = nonembedding_params_of_config(encoder)
    return BatchStats(
        batches, encoder.num_hidden_layers, encoder.hidden_size, model_params, config.data.pad_to_multiple_of
    )


# ----------------------------------------------------------------------------------------------
# a MiniLM-shaped backbone without the MiniLM package (random weights: speed does not depend on them)

#: all-MiniLM-L6-v2's encoder shape
MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def random_bert(folder: Path, shape: dict[str, int], words: Sequence[str], seed: int = 0) -> Path:
    """Save a BERT of ``shape`` with random weights and a WordPiece tokenizer over ``words`` in ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *words]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the file as vocab=; vocab_file= is ignored (a tokenizer of special tokens alone)
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, pad_token_id=0, **shape)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# FLOPs


def train_flops(nonembedding_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) of one sequence of ``seq_len`` tokens.

    Per token: 6 x non-embedding parameters (matmuls: 2 forward, 4 backward) plus the attention
    scores and weighted sum, 12 x layers x hidden x seq_len (QK^T and AV, 2 x 2 x seq_len x hidden
    per layer forward, x3 with backward).
    """
    return seq_len * (6.0 * nonembedding_params + 12.0 * layers * hidden * seq_len)


def nonembedding_params(model: Any) -> int:
    """Parameters outside the embedding module (word/position/token-type tables: lookups, not matmuls)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def nonembedding_params_of_config(config: Any) -> int:
    """Non-embedding parameter count of a BERT/ViT-style encoder from its config (no weights)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    if getattr(model, "pooler", None) is not None:  # poolft drops the backbone's own pooler
        model.pooler = None
    return nonembedding_params(model)


# ----------------------------------------------------------------------------------------------
# timing and tables


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Right-aligned fixed-width table; the first column left-aligned."""
    cells = [[str(h) for h in headers]] + [[format_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        text = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print(indent + text.rstrip())
        if index == 0:
            print(indent + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def points(a: float | None, b: float | None) -> str:
    """``a - b`` in percentage points, signed."""
    if a is None or b is None:
        return "-"
    return f"{100 * (a - b):+.1f} pt"
