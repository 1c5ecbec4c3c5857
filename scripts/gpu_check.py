"""GPU check (issue 17 item 4): poolft's heads, training loop and probe sweep on one NVIDIA GPU.

Run through ``scripts/gpu_check.sh`` (it installs the carried wheels and sets the paths). Built for
one command of at most 10 minutes on a machine with torch, transformers, accelerate and peft but
no ``datasets``/``evaluate``, no MiniLM package and no network: the backbone is a BERT with
MiniLM-L6's shape (6 layers, hidden 384, 12 heads, intermediate 1536) built from a ``BertConfig``
with random weights (speed does not depend on them) and a WordPiece tokenizer over the generated
words; the text set is generated (sentiment words decide the label, lengths spread like SST-2's).

(a) every pooling head on the GPU in fp32, bf16 and fp16 against the CPU fp32 reference: the head
    alone on random states in that dtype, and the whole classifier under autocast, each within the
    dtype's tolerance;
(b) ``poolft train`` (bf16) against the ``transformers.Trainer`` with
    ``train_sampling_strategy="group_by_length"`` on the same model class, data, batch, rate,
    schedule and clipping, each in its own process: train samples/s and the ratio (with
    ``--with-compile`` also ``poolft train --train.compile true``, its compile time apart);
(c) the probe sweep: states cached once by the frozen backbone (``train.feature_cache``), then
    several heads trained on them, each head's time and accuracy.

``--dry-run`` runs the same code paths with a tiny model and data on whatever device there is (the
CPU here), in under two minutes; ``tests/test_gpu_check.py`` runs it. Exit status 0 when every
head is within tolerance and every job ran; the figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402
import torch  # noqa: E402

TINY_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
POSITIVE = ["good", "great", "fine", "fun", "loved", "best", "nice", "superb"]
NEGATIVE = ["bad", "awful", "boring", "dull", "poor", "worst", "hated", "weak"]
FILLER = [f"word{i}" for i in range(400)]
#: (atol, rtol) per dtype: logits / pooled vectors against CPU fp32
TOLERANCES = {"fp32": (1e-4, 1e-4), "bf16": (6e-2, 5e-2), "fp16": (1e-2, 1e-2)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_HEADS = ("cls", "mean", "max", "attention", "window")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model and data on this machine's device")
    parser.add_argument("--with-compile", action="store_true", help="(b) also runs poolft train with train.compile")
    parser.add_argument("--train-samples", type=int, default=None, help="default 20000 (dry run 128)")
    parser.add_argument("--eval-samples", type=int, default=None, help="default 2000 (dry run 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run folders here (default: temp)")
    parser.add_argument("--trainer-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_samples is None:
        args.train_samples = 128 if args.dry_run else 20000
    if args.eval_samples is None:
        args.eval_samples = 32 if args.dry_run else 2000
    if args.dry_run:
        args.max_length = min(args.max_length, 32)
    return args


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------
# data and backbone


def sentence(rng: random.Random, max_words: int) -> tuple[str, int]:
    """A generated sentence and its label: more positive than negative words is label 1."""
    words = rng.choices(FILLER, k=min(max_words, max(2, int(rng.lognormvariate(2.6, 0.6)))))
    label = rng.random() < 0.5
    cues = rng.choices(POSITIVE if label else NEGATIVE, k=rng.randint(1, 2))
    for cue in cues:
        words.insert(rng.randrange(len(words) + 1), cue)
    return " ".join(words), int(label)


def write_text_set(folder: Path, train: int, evaluation: int, max_words: int) -> dict[str, str]:
    """``train.csv`` and ``validation.csv`` (columns text, label); returns poolft's data_files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size, seed in (("train", train, 0), ("validation", evaluation, 1)):
        rng = random.Random(seed)
        path = folder / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(sentence(rng, max_words) for _ in range(size))
        files[split] = str(path)
    return files


def read_text_set(path: str) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"text": row["text"], "label": int(row["label"])} for row in csv.DictReader(handle)]


# ----------------------------------------------------------------------------------------------
# (a) heads against the CPU fp32 reference


def head_rows(backbone: Path, dry_run: bool) -> bool:
    """Every text head: alone in each dtype on random states, and the classifier under autocast."""
    from transformers import AutoTokenizer

    import poolft

    target = device()
    print(f"\n== (a) pooling heads on {target} vs CPU fp32 (atol, rtol: {TOLERANCES})")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    rng = random.Random(2)
    texts = [sentence(rng, 8 if dry_run else 60)[0] for _ in range(16)]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    hidden = poolft.PoolftForSequenceClassification.from_backbone(str(backbone), num_labels=2).config.hidden_size
    torch.manual_seed(0)
    states = torch.randn(16, batch["input_ids"].shape[1], hidden)
    rows, passed = [], True
    for name in poolft.available_poolers():
        if name == "flatten":  # a fixed patch grid: images only (refused on text backbones)
            continue
        torch.manual_seed(0)
        model = poolft.PoolftForSequenceClassification.from_backbone(str(backbone), pooler=name, num_labels=2).eval()
        with torch.no_grad():
            pooled_ref = model.pooler(states, batch["attention_mask"]).float()
            logits_ref = model(**batch).logits.float()
        model.to(target)
        on_device = {key: value.to(target) for key, value in batch.items()}
        for dtype_name, dtype in DTYPES.items():
            atol, rtol = TOLERANCES[dtype_name]
            head = copy.deepcopy(model.pooler).to(dtype)  # a copy: casting back would round the model's weights
            with torch.no_grad():
                pooled = head(states.to(target, dtype), on_device["attention_mask"]).float().cpu()
            with torch.no_grad(), torch.autocast(target.type, dtype=dtype, enabled=dtype is not torch.float32):
                logits = model(**on_device).logits.float().cpu()
            errors = [(pooled - pooled_ref).abs().max().item(), (logits - logits_ref).abs().max().item()]
            ok = all(
                torch.allclose(value, reference, atol=atol, rtol=rtol) and torch.isfinite(value).all()
                for value, reference in ((pooled, pooled_ref), (logits, logits_ref))
            )
            passed &= ok
            rows.append([name, dtype_name, f"{errors[0]:.2e}", f"{errors[1]:.2e}", "ok" if ok else "FAIL"])
    common.print_table(["head", "dtype", "head max |err|", "logits max |err|", "within tolerance"], rows)
    print(f"  (a) {'PASS' if passed else 'FAIL'}: {sum(r[-1] == 'ok' for r in rows)} of {len(rows)} within tolerance")
    return passed


# ----------------------------------------------------------------------------------------------
# (b) poolft train vs the length-grouped Trainer


def poolft_arguments(args: argparse.Namespace, backbone: Path, files: dict[str, str], output: Path) -> list[str]:
    return [
        "--data.data_files",
        json.dumps(files),
        "--data.text_column",
        "text",
        "--data.max_length",
        str(args.max_length),
        "--model.backbone",
        str(backbone),
        "--model.pooler",
        "mean",
        "--train.batch_size",
        str(args.batch_size),
        "--train.learning_rate",
        str(args.lr),
        "--train.epochs",
        "1",
        "--train.mixed_precision",
        "bf16",
        "--train.output_dir",
        str(output),
        "--train.overwrite_output_dir",
        "true",
        "--train.progress",
        "false",
    ]


def trainer_worker(args: argparse.Namespace, backbone: Path, files: dict[str, str]) -> int:
    """The Trainer job, in its own process: poolft's model class and settings, Trainer's loop."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    import poolft

    tokenizer = AutoTokenizer.from_pretrained(backbone)

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": r["label"]} for i, r in enumerate(rows)]

    train_set, eval_set = encode(read_text_set(files["train"])), encode(read_text_set(files["validation"]))
    torch.manual_seed(0)
    model = poolft.PoolftForSequenceClassification.from_backbone(str(backbone), pooler="mean", num_labels=2)

    class Timer(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.begin = time.perf_counter()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            self.end = time.perf_counter()

    timer = Timer()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(args.trainer_worker.parent / "trainer"),
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128,
            learning_rate=args.lr,
            num_train_epochs=1,
            warmup_steps=0.06,  # poolft's warm-up share, weight decay and clipping
            weight_decay=0.01,
            max_grad_norm=1.0,
            bf16=True,
            use_cpu=not torch.cuda.is_available(),
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            train_sampling_strategy="group_by_length",
        ),
        train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
    )
    trainer.train()
    seconds = timer.end - timer.begin
    prediction = trainer.predict(eval_set)
    accuracy = float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
    result = {"train_seconds": seconds, "train_samples_per_second": len(train_set) / seconds, "accuracy": accuracy}
    args.trainer_worker.write_text(json.dumps(result))
    return 0


def training_rows(args: argparse.Namespace, backbone: Path, files: dict[str, str], workdir: Path) -> bool:
    print(
        f"\n== (b) training, bf16: poolft train vs Trainer(group_by_length), {args.train_samples} texts, 1 epoch, "
        f"batch {args.batch_size}, max_length {args.max_length}, mean head on both"
    )
    jobs: dict[str, dict[str, Any]] = {}
    names = ["poolft", "poolft-compiled", "trainer"] if args.with_compile else ["poolft", "trainer"]
    for name in names:
        if name == "trainer":
            result = workdir / "trainer.json"
            command = [sys.executable, __file__, "--trainer-worker", str(result), "--workdir", str(workdir)]
            command += ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
            command += ["--lr", str(args.lr)] + (["--dry-run"] if args.dry_run else [])
        else:
            command = [
                sys.executable,
                "-m",
                "poolft",
                "train",
                *poolft_arguments(args, backbone, files, workdir / name),
            ]
            command += ["--train.compile", "true"] if name == "poolft-compiled" else []
        job = common.run_job(name, command, workdir / "logs" / f"{name}.log")
        if not job.ok:
            jobs[name] = {}
            continue
        if name == "trainer":
            jobs[name] = json.loads(result.read_text())
        else:
            metrics = common.read_poolft_metrics(workdir / name)
            jobs[name] = {
                "train_seconds": metrics["train_seconds"],
                "train_samples_per_second": metrics["train_samples_per_second"],
                "accuracy": metrics["final"]["accuracy"],
                **common.compile_summary(metrics, args.batch_size),
            }
    rows = [
        [
            name,
            r.get("train_samples_per_second"),
            r.get("steady_samples_per_second"),
            r.get("train_seconds"),
            r.get("compile_seconds"),
            r.get("accuracy") and f"{r['accuracy']:.4f}",
        ]
        for name, r in jobs.items()
    ]
    common.print_table(["job", "train samples/s", "after compile", "train s", "compile s", "accuracy"], rows)
    speed = {name: r.get("train_samples_per_second") for name, r in jobs.items()}
    print(f"  poolft / Trainer train samples/s: {common.ratio(speed.get('poolft'), speed.get('trainer'))}")
    print(
        "  differences that remain: the head's rate (poolft 1e-3, Trainer = lr), batch order, poolft's checkpoint "
        "and best/ copy; the same model class, data, batch, rate, warm-up, weight decay and clipping"
    )
    if args.with_compile:
        steady = jobs["poolft-compiled"].get("steady_samples_per_second")
        print(f"  compiled / eager poolft (after compile): {common.ratio(steady, speed.get('poolft'))}")
    ok = all(jobs.values())
    print(f"  (b) {'PASS' if ok else 'FAIL'}: {sum(map(bool, jobs.values()))} of {len(jobs)} jobs ran")
    return ok


# ----------------------------------------------------------------------------------------------
# (c) probe sweep on cached states


def probe_rows(args: argparse.Namespace, backbone: Path, files: dict[str, str], workdir: Path) -> bool:
    from poolft.config import load_config
    from poolft.training.loop import train

    print(f"\n== (c) probe sweep: frozen backbone, states cached once, heads {', '.join(PROBE_HEADS)}")
    rows, ok = [], True
    cache = workdir / "feature-cache"
    for head in PROBE_HEADS:
        arguments = poolft_arguments(args, backbone, files, workdir / f"probe-{head}")
        arguments += ["--model.pooler", head, "--train.freeze_backbone", "true", "--train.feature_cache", "true"]
        arguments += ["--train.feature_cache_dir", str(cache), "--train.learning_rate", "1e-3"]
        arguments += ["--train.epochs", "2"]
        started = time.perf_counter()
        try:
            metrics = train(load_config(None, arguments))
        except Exception as error:  # report every head; the exit status says one failed
            ok = False
            rows.append([head, None, None, None, f"FAILED: {type(error).__name__}: {error}"[:80]])
            continue
        wall = time.perf_counter() - started
        rows.append([head, wall, metrics["train_samples_per_second"], f"{metrics['final']['accuracy']:.4f}", "ok"])
    common.print_table(["head", "wall s (first: + cache)", "train samples/s", "accuracy", "status"], rows)
    print(f"  (c) {'PASS' if ok else 'FAIL'}: {sum(r[-1] == 'ok' for r in rows)} of {len(rows)} heads trained")
    return ok


# ----------------------------------------------------------------------------------------------


def guarded(section: Any, *arguments: Any) -> bool:
    """Run one section; an exception fails it (printed) and the next section still runs."""
    try:
        return section(*arguments)
    except Exception as error:
        print(f"  FAILED: {type(error).__name__}: {error}")
        return False


def print_machine() -> None:
    import transformers

    print("poolft GPU check")
    print(f"  date:      {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        f"  python:    {platform.python_version()}; torch {torch.__version__}; transformers {transformers.__version__}"
    )
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        print(f"  gpu:       {properties.name}, {properties.total_memory / 2**30:.0f} GiB, cuda {torch.version.cuda}")
    else:
        print("  gpu:       none (the device is the CPU)")
    print(f"  cpu:       {common.cpu_model()}; {common.isa_flags()}")
    packages = []
    for name in ("accelerate", "datasets", "evaluate", "pyarrow", "peft"):
        try:
            packages.append(f"{name} {__import__(name).__version__}")
        except Exception as error:  # datasets may be missing or refuse this pyarrow: (b) and (c) then fail
            packages.append(f"{name} unavailable ({type(error).__name__})")
    print(f"  packages:  {', '.join(packages)}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    backbone, files = workdir / "backbone", {"train": str(workdir / "data" / "train.csv")}
    files["validation"] = str(workdir / "data" / "validation.csv")
    if args.trainer_worker is not None:
        return trainer_worker(args, backbone, files)
    started = time.perf_counter()
    print_machine()
    if args.dry_run:
        print("  mode:      --dry-run (tiny model and data: the code paths, not the figures)")
    shape = TINY_SHAPE if args.dry_run else common.MINILM_SHAPE
    common.random_bert(backbone, shape, [*FILLER, *POSITIVE, *NEGATIVE])
    files = write_text_set(workdir / "data", args.train_samples, args.eval_samples, 8 if args.dry_run else 100)
    os.environ.setdefault("HF_DATASETS_CACHE", str(workdir / "hf-datasets-cache"))
    print(f"  backbone:  BERT {shape} (random weights); workdir {workdir}")
    results = {
        "(a) heads": guarded(head_rows, backbone, args.dry_run),
        "(b) training": guarded(training_rows, args, backbone, files, workdir),
        "(c) probe sweep": guarded(probe_rows, args, backbone, files, workdir),
    }
    print("\n== summary")
    for name, ok in results.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    print(f"  total {time.perf_counter() - started:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
