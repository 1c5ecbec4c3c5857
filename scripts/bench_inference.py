"""Benchmark: inference throughput of a saved poolft model -- poolft's paths vs ``transformers.pipeline``.

The same saved model (``--model-dir``, or a fresh untrained MiniLM-L6 + mean pooler saved with its
tokenizer: weights do not change the speed) classifies the same SST-2 validation sentences (872,
or ``--samples``) five ways, at each of ``--batch-sizes`` (default 1 and 64):

  predict   ``poolft.models.prediction.load_classifier(dir).predict(texts, batch_size)`` (what
            ``poolft predict`` runs: tokenizes all texts once, batches sorted by token count);
  eval      ``poolft.training.evaluation.evaluate_saved_model`` (what ``poolft eval`` runs: the split is
            tokenized with ``datasets.map`` first, then the training loop's evaluator over
            length-sorted batches, with Accelerate); timed two ways: the whole call (loading the
            model and data included, the tokenization cached after the first call) and its own
            loop-only ``samples_per_second``;
  pipeline  ``transformers.pipeline("text-classification", model=dir, batch_size=...)`` called on
            the list of texts (tokenizes per batch, keeps the input order);
  onnxruntime fp32 / int8
            ``poolft export --format onnx [--quantize int8]`` of the same model, then ``poolft
            predict`` on the exported folder (``load_classifier``: the same tokenization, length-sorted
            batches and right padding as predict, the graph run on ONNX Runtime's CPU provider with
            ``--threads`` or one intra-op thread per core this process may use, one inter-op thread).

The model is loaded once per path outside the timing (except the ``eval`` whole-call figure);
every figure is the median over ``--repeats`` passes after one untimed pass. All in float32. The
predicted labels of ``predict`` and ``pipeline`` are compared (they should agree on every
sentence), and ``eval``'s accuracy against ``predict``'s; the ONNX Runtime rows report their agreement
with the PyTorch model's labels (``predict``) and their accuracy. For each batch size it also counts the
tokens each batching executes (a batch costs its size x its longest example) against the real
tokens: at equal model speed, pipeline / predict executed tokens bounds predict's speed-up.

Usage::

    python scripts/bench_inference.py                  # 872 sentences, batch sizes 1 and 64
    python scripts/bench_inference.py --quick          # smoke test: 64 sentences, 1 pass
    python scripts/bench_inference.py --model-dir runs/mean-... --batch-sizes 1 8 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

LABELS = {0: "negative", 1: "positive"}  # SST-2's label names, so ``poolft eval`` accepts the model


def save_untrained_model(folder: Path) -> None:
    from transformers import AutoTokenizer

    from poolft import PoolftForSequenceClassification
    from poolft.models.backbones import default_text_backbone

    backbone = default_text_backbone()
    model = PoolftForSequenceClassification.from_backbone(backbone, pooler="mean", num_labels=2, id2label=LABELS)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)


def executed_tokens_line(classifier, texts: list[str], batch_size: int) -> str:
    """Tokens executed by predict's batching (sorted by token count) and the pipeline's (input order)."""
    lengths = [len(example["input_ids"]) for example in classifier.tokenize(texts)]

    def executed(order: list[int]) -> int:
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in chunks)

    by_length = sorted(range(len(texts)), key=lengths.__getitem__)
    predict, pipeline = executed(by_length), executed(list(range(len(texts))))
    return (
        f"batch {batch_size}: executed tokens predict {predict:,}, pipeline {pipeline:,}, real {sum(lengths):,}; "
        f"padding bound on predict / pipeline {pipeline / predict:.2f}x"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 sentences, 1 timed pass")
    parser.add_argument("--model-dir", type=Path, default=None, help="a saved poolft text model (default: untrained)")
    parser.add_argument("--samples", type=int, default=None, help="validation sentences (default: all 872)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads and ONNX Runtime's intra-op threads (default: torch's; ONNX Runtime: cores)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = args.samples or 64
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache")  # before datasets is imported
    import datasets
    import torch
    import transformers
    import yaml

    from poolft.models.onnx_export import export_onnx
    from poolft.models.onnx_model import available_cores, load_onnx_classifier
    from poolft.models.prediction import Classifier, load_classifier
    from poolft.training.evaluation import evaluate_saved_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    common.print_header("poolft inference benchmark: predict / eval paths vs transformers.pipeline")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    try:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = workdir / "model"
            save_untrained_model(model_dir)
        validation = common.SST2 / "validation.parquet"
        split = datasets.load_dataset("parquet", data_files={"validation": str(validation)})["validation"]
        if args.samples:
            split = split.select(range(min(args.samples, len(split))))
        texts, gold = list(split["sentence"]), [LABELS.get(i, str(i)) for i in split["label"]]
        # ``poolft eval`` reads the data section of a config: only the validation file, same rows
        config = workdir / "eval.yaml"
        data = {"data_files": {"validation": str(validation)}, "max_eval_samples": args.samples}
        config.write_text(yaml.safe_dump({"data": {k: v for k, v in data.items() if v is not None}}))
        print(f"  model:        {model_dir}{' (untrained MiniLM-L6 + mean pooler)' if args.model_dir is None else ''}")
        print(f"  data:         {len(texts)} SST-2 validation sentences; median of {args.repeats} passes\n")

        classifier = load_classifier(str(model_dir))
        pipe = transformers.pipeline("text-classification", model=str(model_dir))
        onnx_classifiers = {}
        for precision, quantize in (("fp32", None), ("int8", "int8")):
            exported = export_onnx(str(model_dir), str(workdir / f"onnx-{precision}"), quantize)
            onnx_classifiers[precision] = Classifier(*load_onnx_classifier(exported, args.threads))
        onnx_threads = args.threads or available_cores()
        rows, notes = [], []
        for batch_size in args.batch_sizes:
            outputs: dict = {}
            predict_s, _ = common.median_seconds(
                lambda bs=batch_size, out=outputs: out.update(predict=classifier.predict(texts, batch_size=bs)),
                repeats=args.repeats,
            )
            eval_metrics: dict = {}
            eval_s, _ = common.median_seconds(
                lambda bs=batch_size, out=eval_metrics: out.update(
                    evaluate_saved_model(str(model_dir), str(config), {}, batch_size=bs)
                ),
                repeats=args.repeats,
            )
            loop_sps = eval_metrics["samples_per_second"]
            pipe_s, _ = common.median_seconds(
                lambda bs=batch_size, out=outputs: out.update(pipeline=pipe(texts, batch_size=bs)), repeats=args.repeats
            )
            for precision, onnx_classifier in onnx_classifiers.items():
                onnx_s, _ = common.median_seconds(
                    lambda bs=batch_size, out=outputs, key=precision, c=onnx_classifier: out.update(
                        {key: c.predict(texts, batch_size=bs)}
                    ),
                    repeats=args.repeats,
                )
                outputs[f"{precision}_seconds"] = onnx_s
            n = len(texts)
            rows += [
                [f"predict, batch {batch_size}", n / predict_s, 1e3 * predict_s / n, common.ratio(pipe_s, predict_s)],
                [f"eval (whole call), batch {batch_size}", n / eval_s, 1e3 * eval_s / n, common.ratio(pipe_s, eval_s)],
                [f"eval (loop only), batch {batch_size}", loop_sps, 1e3 / loop_sps, common.ratio(loop_sps * pipe_s, n)],
                [f"pipeline, batch {batch_size}", n / pipe_s, 1e3 * pipe_s / n, "1.00x"],
            ]
            for precision in onnx_classifiers:
                onnx_s = outputs[f"{precision}_seconds"]
                rows.append(
                    [
                        f"onnxruntime {precision} (predict), batch {batch_size}",
                        n / onnx_s,
                        1e3 * onnx_s / n,
                        common.ratio(pipe_s, onnx_s),
                    ]
                )
            predicted = [label for label, _ in outputs["predict"]]
            piped = [item["label"] for item in outputs["pipeline"]]
            agree = sum(a == b for a, b in zip(predicted, piped, strict=True)) / n
            predict_accuracy = sum(a == b for a, b in zip(predicted, gold, strict=True)) / n
            notes.append(executed_tokens_line(classifier, texts, batch_size))
            notes.append(
                f"batch {batch_size}: predict and pipeline agree on {agree:.1%} of labels; accuracy predict "
                f"{predict_accuracy:.4f}, eval {eval_metrics['accuracy']:.4f} ({eval_metrics['samples']} examples)"
            )
            for precision in onnx_classifiers:
                labels = [label for label, _ in outputs[precision]]
                same = sum(a == b for a, b in zip(labels, predicted, strict=True)) / n
                accuracy = sum(a == b for a, b in zip(labels, gold, strict=True)) / n
                notes.append(
                    f"batch {batch_size}: onnxruntime {precision} agrees with the PyTorch model (predict) on "
                    f"{same:.1%} of labels; accuracy {accuracy:.4f}"
                )
        print(
            f"{len(texts)} sentences, float32 (int8: ONNX Runtime dynamic quantization), "
            f"torch {torch.get_num_threads()} threads, ONNX Runtime {onnx_threads} intra-op threads"
        )
        common.print_table(["path", "samples/s", "ms/sample", "speed vs pipeline"], rows)
        for note in notes:
            print(f"  {note}")
        print(
            "  eval (whole call) includes loading the model and the split (tokenization cached by datasets after the "
            "first call); the other rows exclude model loading."
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    common.print_footer(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
