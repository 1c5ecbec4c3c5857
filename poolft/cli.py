"""``poolft`` command line: train, eval, predict, poolers.

User mistakes print one line (``poolft: error: ...``) and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from .errors import PoolftError

if typing.TYPE_CHECKING:
    from .config import KeyDoc

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``poolft`` console script and ``python -m poolft``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        if extra and args.command not in ("train", "sweep", "compare"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return COMMANDS[args.command](args, extra)
    except PoolftError as error:
        if debug:
            raise
        print(f"poolft: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("poolft: interrupted", file=sys.stderr)
        return 130


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one-line ``PoolftError``s (exit status 2, no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:
        raise PoolftError(f"{message}; run `{self.prog} --help` for the usage")


def int_at_least(minimum: int) -> typing.Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def data_files_mapping(text: str) -> dict[str, str]:
    """argparse type: a YAML mapping of split name to file path, e.g. ``{validation: b.csv}``."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a mapping of split to file; write it as '{{validation: b.csv}}' (a space after the colon)"
        )
    return {str(split): path for split, path in value.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="poolft", description="Fine-tune Hugging Face encoders with pluggable pooling heads.")
    commands = parser.add_subparsers(dest="command")
    from .config import SECTIONS

    train = commands.add_parser(
        "train",
        help="fine-tune a pooled model (no arguments: the offline SST-2 quickstart)",
        description="Train one run. Any config key below can be overridden: --section.key VALUE,\n"
        "--key VALUE (a key that one section holds) or section.key=VALUE. Values are read\n"
        "as YAML (1e-4, true, [1, 2], {key: value}); write None as null.",
        epilog=config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", help="YAML file with model/data/train sections")
    train.add_argument(
        "--help-key",
        "--help_key",
        dest="help_key",
        metavar="KEY",
        help="show one config key (section.key, or a key that one section holds) and exit",
    )
    train.add_argument(
        "--help-section",
        "--help_section",
        dest="help_section",
        choices=list(SECTIONS),
        help="show one section's keys and exit",
    )
    evaluate = commands.add_parser("eval", help="evaluate a trained model on a dataset split")
    evaluate.add_argument("--model", required=True, help="folder written by poolft train")
    evaluate.add_argument("--config", help="YAML whose data section names the dataset (default: the model's run)")
    evaluate.add_argument("--data.path", dest="data_path", help="dataset: sst2-sample, a folder, or a Hub id")
    evaluate.add_argument("--data.name", dest="data_name", help="Hub dataset config")
    evaluate.add_argument(
        "--data.data_files",
        dest="data_files",
        type=data_files_mapping,
        help="local files by split, e.g. '{validation: b.csv}' (parquet, csv, tsv, json, jsonl)",
    )
    evaluate.add_argument("--data.eval_split", dest="eval_split", help="split to evaluate")
    evaluate.add_argument("--data.text_column", dest="text_column")
    evaluate.add_argument("--data.text_pair_column", dest="text_pair_column")
    evaluate.add_argument("--data.image_column", dest="image_column")
    evaluate.add_argument("--data.label_column", dest="label_column")
    evaluate.add_argument("--data.max_eval_samples", dest="max_eval_samples", type=positive_int)
    evaluate.add_argument("--batch_size", type=positive_int, default=64)
    predict = commands.add_parser("predict", help="label texts or images with a trained model")
    predict.add_argument("--model", required=True, help="folder written by poolft train")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--image", nargs="+", default=[], help="image files to classify")
    predict.add_argument("--batch_size", type=positive_int, default=64)
    predict.add_argument("--json", action="store_true", help="print JSON lines")
    explain = commands.add_parser(
        "explain",
        help="picture what a trained model's head reads of each token or patch",
        description="Per input, the weight the pooling head gives each token (text) or patch (image), with the "
        "prediction: a PNG per input (--out FILE.png for one input; FILE-0.png, FILE-1.png, ... for several) "
        "and/or the numbers as JSON lines (--json).",
    )
    explain.add_argument("--model", required=True, help="folder written by poolft train")
    explain.add_argument("texts", nargs="*", help="texts to explain")
    explain.add_argument("--image", nargs="+", default=[], help="image files to explain")
    explain.add_argument("--out", help="PNG to write (several inputs: FILE-0.png, FILE-1.png, ...)")
    explain.add_argument("--json", action="store_true", help="print the numbers as JSON lines")
    explain.add_argument(
        "--per-query", dest="per_query", action="store_true", help="attention head: one panel per query"
    )
    export = commands.add_parser(
        "export-merged", help="fold a LoRA run's adapter into a plain model folder that loads without peft"
    )
    export.add_argument("--model", required=True, help="output_dir of a poolft train run with model.lora")
    export.add_argument("--output", required=True, help="new folder for the merged model")
    onnx = commands.add_parser(
        "export", help="export a trained model, pooling head included, to ONNX (optionally int8) for ONNX Runtime"
    )
    onnx.add_argument("--model", required=True, help="folder written by poolft train (or a transformers classifier)")
    onnx.add_argument("--format", dest="export_format", default="onnx", help="export format: onnx")
    onnx.add_argument("--quantize", default=None, help="int8: ONNX Runtime dynamic quantization (int8 weights)")
    onnx.add_argument("--output", required=True, help="new folder for the graph, preprocessor and onnx_config.json")
    commands.add_parser("poolers", help="list the pooling heads and their options")
    sweep = commands.add_parser(
        "sweep",
        help="run a recipe's grid of heads x seeds (with a rate search), resumably",
        description="Extra arguments are config overrides, as for poolft train.",
    )
    sweep.add_argument("--config", required=True, help="the recipe's base YAML")
    sweep.add_argument(
        "--poolers",
        default="stock,cls,mean,max,clsmean,attention,window",
        help="comma-separated heads; 'stock' = the stock Hugging Face head, 'window-sliding' = 2-D local windows",
    )
    sweep.add_argument("--seeds", default="0,1,2")
    sweep.add_argument(
        "--rates", default=None, help="candidate rates to search per head (backbone rate; head rate on the probe track)"
    )
    sweep.add_argument("--holdout", type=float, default=0.1, help="share of the training split for the rate search")
    sweep.add_argument(
        "--grid-extensions",
        dest="grid_extensions",
        type=non_negative_int,
        default=2,
        help="when the best rate is an end of the grid, try up to this many rates beyond it (0: never)",
    )
    sweep.add_argument("--track", choices=["finetune", "finetune-lpft", "probe"], default=None)
    sweep.add_argument("--task", default=None, help="name in the results (default: the config's folder name)")
    sweep.add_argument("--results", default="recipes/results")
    sweep.add_argument("--runs", default="runs/sweeps", help="where the runs' output folders go")
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (worth it for probe heads, which use one thread each)",
    )
    sweep.add_argument(
        "--any-cpu",
        dest="any_cpu",
        action="store_true",
        help="count runs recorded on another kind of CPU as done (a long sweep spread over machines); by default "
        "they run again, as full-precision numbers differ between CPU vendors and matrix features",
    )
    compare = commands.add_parser(
        "compare",
        help="which head for your data: every head, 3 seeds, a rate search and 95%% intervals (probe track)",
        description="Runs every head that fits the backbone on your config (poolft train's YAML and overrides) and "
        "prints accuracy per head with the 95% paired-bootstrap interval of its difference to the stock head, the "
        "best head and the heads within noise of it. The probe track caches the backbone's states once. Extra "
        "arguments are config overrides, as for poolft train; finished runs are skipped on a rerun.",
    )
    compare.add_argument("--config", help="YAML file with model/data/train sections (optional)")
    compare.add_argument("--poolers", default=None, help="comma-separated heads (default: every head that fits)")
    compare.add_argument("--seeds", default="0,1,2")
    compare.add_argument("--rates", default=None, help="rates to search per head (default: a grid for the track)")
    compare.add_argument("--track", choices=["probe", "finetune", "lpft", "finetune-lpft"], default="probe")
    compare.add_argument("--holdout", type=float, default=0.1, help="share of the training split for the rate search")
    compare.add_argument("--grid-extensions", dest="grid_extensions", type=non_negative_int, default=2)
    compare.add_argument("--output", default="runs/compare", help="folder for the runs, results, table and plot")
    compare.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs trained at once, each in its own process (default: one per CPU core on the probe track, else 1)",
    )
    report = commands.add_parser("report", help="regenerate recipes/README.md from recipes/results/*.json")
    report.add_argument(
        "--results", default="recipes/results", help="folder of poolft sweep's JSON records (default: %(default)s)"
    )
    report.add_argument(
        "--output", default="recipes/README.md", help="Markdown file to write, plots beside it (default: %(default)s)"
    )
    report.add_argument(
        "--readme",
        default="README.md",
        help="README whose <!-- poolft-report:start/end --> block gets the headline tables (default: %(default)s)",
    )
    return parser


def help_width() -> int:
    """Columns for the config keys' help: the terminal's, at most 100."""
    return max(60, min(100, shutil.get_terminal_size().columns - 2))


def wrap_paragraph(text: str, indent: str = "") -> str:
    """``text`` wrapped to ``help_width()``, every line indented by ``indent``."""
    return textwrap.fill(text, help_width(), initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


def format_key_doc(doc: KeyDoc) -> str:
    """``  --train.seed  int  (default: 0)`` and, below it, the key's help wrapped to ``help_width()``."""
    header = f"  --{doc.section}.{doc.name}  {doc.type}  (default: {doc.default})"
    return f"{header}\n{wrap_paragraph(doc.help, indent=' ' * 6)}"


def config_keys_help(section: str | None = None) -> str:
    """Every config key (or one section's) with its type, default and help, grouped by section."""
    from .config import SECTIONS, key_docs

    blocks = []
    for name, cls in SECTIONS.items():
        if section in (None, name):
            title = f"{name} keys: {(cls.__doc__ or '').strip().splitlines()[0]}"
            blocks.append("\n".join([title, *(format_key_doc(doc) for doc in key_docs(name))]))
    return "\n\n".join(blocks)


def key_help(key: str) -> str:
    """One key's entry for ``poolft train --help-key KEY``, with the ways to set it."""
    from .config import key_doc, key_docs

    doc = key_doc(key.removeprefix("--"))
    ways = [f"--{doc.section}.{doc.name} VALUE"]
    if [other.section for other in key_docs() if other.name == doc.name] == [doc.section]:
        ways.append(f"--{doc.name} VALUE")  # a name that several sections hold needs its section
    ways.append(f"{doc.name}: VALUE under {doc.section}: in a --config YAML file")
    ways_text = f"set with {', '.join(ways[:-1])} or {ways[-1]}"
    return f"{format_key_doc(doc)}\n{wrap_paragraph(ways_text, indent=' ' * 6)}"


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.help_key is not None:  # an argument of its own, never read as a config override
        print(key_help(args.help_key))
        return 0
    if args.help_section is not None:
        print(config_keys_help(args.help_section))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .config import load_config
    from .training.loop import train

    config = load_config(args.config, overrides)
    metrics = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return 0
    print(run_summary_line(metrics, config.train.output_dir, config.train.save_model))
    return 0


def run_summary_line(metrics: dict[str, Any], output_dir: str, save_model: bool) -> str:
    """The one line ``poolft train`` ends with: the final scores, the time, and what was saved where."""
    final = metrics["final"]
    if save_model:
        saved = f"model saved to {output_dir}"
    elif (Path(output_dir) / "best").is_dir():
        saved = f"no final model (train.save_model false); best model in {Path(output_dir) / 'best'}"
    else:
        saved = f"no model saved (train.save_model false); metrics and predictions in {output_dir}"
    if not save_model and (Path(output_dir) / "checkpoints").is_dir():
        saved += f"; training checkpoints (with weights) in {Path(output_dir) / 'checkpoints'}"
    return (
        f"poolft: validation accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f} "
        f"({final['samples']} examples) in {metrics['wall_seconds']:.0f} s; {saved}"
    )


def run_eval(args: argparse.Namespace, _: list[str]) -> int:
    from .training.evaluation import evaluate_saved_model

    overrides = {
        "path": args.data_path,
        "name": args.data_name,
        "eval_split": args.eval_split,
        "data_files": args.data_files,
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "image_column": args.image_column,
        "label_column": args.label_column,
        "max_eval_samples": args.max_eval_samples,
    }
    metrics = evaluate_saved_model(
        args.model, args.config, {k: v for k, v in overrides.items() if v is not None}, args.batch_size
    )
    print(json.dumps(metrics, indent=2))
    return 0


def run_predict(args: argparse.Namespace, _: list[str]) -> int:
    from .models.prediction import load_classifier

    check_launched_once("predict")  # each process would predict every input and print it
    if not args.texts and not args.image:
        raise PoolftError("nothing to predict; pass texts as arguments or --image FILE...")
    if args.texts and args.image:
        raise PoolftError("pass either texts or --image files, not both; run one poolft predict per kind")
    check_files_exist(args.image)  # before the (slower) model loading
    classifier = load_classifier(args.model)
    inputs: list[Any] = list(args.texts) if args.texts else list(args.image)
    if classifier.multi_label:  # every label with its sigmoid score; those above 0.5 apply
        for item, scores in zip(inputs, classifier.predict_all(inputs, args.batch_size, not args.texts), strict=True):
            if args.json:
                labels = [label for label, score in scores.items() if score > 0.5]
                print(json.dumps({"input": item, "labels": labels, "scores": scores}))
            else:
                print(" ".join(f"{label}:{score:.4f}" for label, score in scores.items()) + f"\t{item}")
        return 0
    results = classifier.predict(inputs, batch_size=args.batch_size, images=not args.texts)
    for item, (label, probability) in zip(inputs, results, strict=True):
        if args.json:
            print(json.dumps({"input": item, "label": label, "probability": probability}))
        else:
            print(f"{label}\t{probability:.4f}\t{item}")
    return 0


def check_files_exist(paths: list[str]) -> None:
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise PoolftError(f"image {missing[0]} does not exist; pass existing image files to --image")


def run_explain(args: argparse.Namespace, _: list[str]) -> int:
    from .models.explain import explain
    from .models.explain_plot import check_out_path, new_figure, save_pictures

    if not args.texts and not args.image:
        raise PoolftError("nothing to explain; pass texts as arguments or --image FILE...")
    if args.texts and args.image:
        raise PoolftError("pass either texts or --image files, not both; run one poolft explain per kind")
    if args.out is None and not args.json:
        raise PoolftError("nothing to write; pass --out FILE.png for pictures and/or --json for the numbers")
    if args.out is not None:  # before the (slower) model loading
        check_out_path(args.out)
        new_figure(1, 1)  # matplotlib is there
    check_files_exist(args.image)
    inputs = list(args.texts) if args.texts else list(args.image)
    explanations = explain(args.model, inputs, images=bool(args.image), per_query=args.per_query)
    if args.json:
        for explanation in explanations:
            print(json.dumps(explanation.to_dict()))
    if args.out is not None:
        paths = save_pictures(explanations, args.out)
        # stdout stays pure JSON lines under --json
        print(f"poolft explain: wrote {', '.join(map(str, paths))}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_poolers(args: argparse.Namespace, _: list[str]) -> int:
    from .pooling import POOLERS, pooler_option_defaults

    for name, cls in POOLERS.items():
        options = ", ".join(f"{k}={v!r}" for k, v in pooler_option_defaults(name).items()) or "no options"
        print(f"{name:10s} {cls.summary}\n{'':10s} options: {options}")
    return 0


def check_launched_once(command: str) -> None:
    """A one-line error where a command that runs in one process (a grid runs its own workers) was
    started as several processes (torchrun, ``accelerate launch``): each would do all of it."""
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes.isdigit() and int(processes) > 1:
        how = "it runs its grid itself (--workers)" if command in ("sweep", "compare") else "it runs in one process"
        raise PoolftError(
            f"poolft {command} was started as {processes} processes (torchrun or accelerate launch); {how}: "
            f"start it once, as `poolft {command} ...`"
        )


def run_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    check_launched_once("sweep")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .recipes.sweep import run_sweep as sweep
    from .recipes.workers import check_workers

    check_workers(args.workers)
    written = sweep(
        args.config,
        args.poolers,
        args.seeds,
        args.rates,
        args.track,
        args.task,
        args.results,
        args.runs,
        args.holdout,
        overrides,
        args.grid_extensions,
        args.workers,
        args.any_cpu,
    )
    print(f"poolft sweep: {len(written)} result files under {args.results}")
    return 0


def run_compare(args: argparse.Namespace, overrides: list[str]) -> int:
    check_launched_once("compare")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .recipes.compare import run_compare as compare
    from .recipes.workers import check_workers

    if not 0 < args.holdout < 1:
        raise PoolftError(f"--holdout {args.holdout} must be in (0, 1): the share of the training split held out")
    if args.workers is not None:
        check_workers(args.workers)
    text = compare(
        args.config,
        overrides,
        args.poolers,
        args.seeds,
        args.rates,
        args.track,
        args.output,
        args.holdout,
        args.grid_extensions,
        workers=args.workers,
    )
    print(text, end="")
    print(f"poolft compare: table and plot in {args.output}")
    return 0


def run_report(args: argparse.Namespace, _: list[str]) -> int:
    from pathlib import Path

    from .recipes.report import write_report

    write_report(Path(args.results), Path(args.output), Path(args.readme) if args.readme else None)
    print(f"poolft report: wrote {args.output}")
    return 0


def run_export_merged(args: argparse.Namespace, _: list[str]) -> int:
    from .models.lora import export_merged

    output = export_merged(args.model, args.output)
    print(f"poolft export-merged: wrote {output} (loads with AutoModelFor*Classification and pipeline, no peft)")
    return 0


def run_export(args: argparse.Namespace, _: list[str]) -> int:
    from .models.onnx_export import export_onnx

    output = export_onnx(args.model, args.output, args.quantize, args.export_format)
    print(f"poolft export: wrote {output} (poolft predict --model {output} runs it on ONNX Runtime)")
    return 0


COMMANDS = {
    "train": run_train,
    "eval": run_eval,
    "predict": run_predict,
    "explain": run_explain,
    "poolers": run_poolers,
    "sweep": run_sweep,
    "compare": run_compare,
    "report": run_report,
    "export-merged": run_export_merged,
    "export": run_export,
}


if __name__ == "__main__":
    raise SystemExit(main())
