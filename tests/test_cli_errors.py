"""User mistakes through ``poolft.cli.main``: one ``poolft: error:`` line naming the problem and the
fix, exit status 2, no traceback, and every file that existed before left byte-identical.

One table holds the cases; one test runs them all (sharing the tiny backbones, data files and
saved models built once) and reports every case that misbehaves. Not in the table: a read-only
output folder made with chmod (the tests run as root, who ignores permissions); the case
"output_dir below a file" covers an output_dir that cannot be written.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import snapshot
from datasets_for_tests import write_image_folder, write_sentiment_csv
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from poolft import PoolftForImageClassification, PoolftForSequenceClassification
from poolft.cli import EXIT_USER_ERROR, main
from poolft.config import config_to_yaml, load_config


@dataclass
class Workspace:
    """Everything the cases point at; built once, then must not change."""

    root: Path
    bert: Path
    vit: Path

    def path(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def out(self, name: str) -> str:
        return self.path("out", name)


def text_args(ws: Workspace, output: str, files: dict[str, str] | None = None, *extra: str) -> list[str]:
    """A valid tiny text run, plus ``extra`` overrides (the mistake)."""
    files = files or {"train": ws.path("text", "train.csv"), "validation": ws.path("text", "validation.csv")}
    return [
        "train",
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={ws.bert}",
        f"--train.output_dir={output}",
        "--train.batch_size=4",
        "--train.epochs=1",
        "--train.progress=false",
        "--train.mixed_precision=no",
        *extra,
    ]


def image_args(ws: Workspace, output: str, folder: str, *extra: str) -> list[str]:
    return [
        "train",
        f"--data.path={folder}",
        f"--model.backbone={ws.vit}",
        f"--train.output_dir={output}",
        "--train.batch_size=4",
        "--train.epochs=1",
        "--train.progress=false",
        "--train.mixed_precision=no",
        *extra,
    ]


def csv_files(ws: Workspace, train: str, validation: str = "validation.csv") -> dict[str, str]:
    return {"train": ws.path("text", train), "validation": ws.path("text", validation)}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def build_workspace(root: Path, bert: Path, vit: Path) -> Workspace:
    ws = Workspace(root, bert, vit)
    text = root / "text"
    write_sentiment_csv(text, train_size=12, eval_size=4)
    write_csv(text / "unseen_label.csv", [("good", "pos"), ("meh", "maybe")])
    (text / "header_only.csv").write_text("text,label\n", encoding="utf-8")
    (text / "latin1.csv").write_bytes("text,label\ncaf\xe9 was good,pos\nbad,neg\n".encode("latin-1"))
    (text / "table.xlsx").write_bytes(b"PK\x03\x04")
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": "one"}, {"text": "fine", "label": 0}]
    (text / "mixed_labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (text / "no_label.csv").write_text("text\ngood\nbad\n", encoding="utf-8")
    (text / "empty_label.csv").write_text("text,label\ngood,pos\nbad,\n", encoding="utf-8")
    (text / "other_columns.csv").write_text("text,y\ngood,pos\nbad,neg\n", encoding="utf-8")
    (text / "validation.jsonl").write_text(json.dumps({"text": "good", "label": 1}) + "\n", encoding="utf-8")
    (root / "empty_folder").mkdir()

    images = write_image_folder(root / "images", {"train": 2, "validation": 1}, mode="RGB")
    broken = write_image_folder(root / "broken_images", {"train": 2, "validation": 1}, mode="RGB")
    (broken / "train" / "dark" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    one_class = root / "one_class"
    for split in ("train", "validation"):
        (one_class / split / "cat").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(one_class / split / "cat" / f"{i}.png")
    eval_only = root / "eval_only_class"  # class folder "medium" in validation only
    for split, classes in (("train", ("dark", "light")), ("validation", ("dark", "light", "medium"))):
        for number, name in enumerate(classes):
            (eval_only / split / name).mkdir(parents=True)
            Image.new("RGB", (6, 6), (90 * number, 0, 0)).save(eval_only / split / name / "0.png")
    flat = root / "flat_images"  # images right in the split folders: no classes
    for split in ("train", "validation"):
        (flat / split).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(flat / split / f"{i}.png")
    assert images.is_dir()

    not_a_model = root / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("no config.json here")
    no_weights = root / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (bert / name).is_file():
            shutil.copy(bert / name, no_weights / name)

    no_tokenizer = root / "no_tokenizer"  # weights and config only: transformers builds a special-tokens-only tokenizer
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert / name, no_tokenizer / name)
    other_tokenizer = root / "other_tokenizer"  # a tokenizer with ids past the embedding table
    shutil.copytree(no_tokenizer, other_tokenizer)
    larger = AutoTokenizer.from_pretrained(bert)
    larger.add_tokens([f"extra{i}" for i in range(5)])
    larger.save_pretrained(other_tokenizer)

    text_model = root / "text_model"
    PoolftForSequenceClassification.from_backbone(str(bert), id2label={0: "neg", 1: "pos"}).save_pretrained(text_model)
    AutoTokenizer.from_pretrained(bert).save_pretrained(text_model)
    image_model = root / "image_model"
    PoolftForImageClassification.from_backbone(str(vit), id2label={0: "dark", 1: "light"}).save_pretrained(image_model)
    AutoImageProcessor.from_pretrained(vit, backend="pil").save_pretrained(image_model)

    previous = root / "previous_run"  # another run's folder: must survive every mistake untouched
    previous.mkdir()
    other = load_config(None, text_args(ws, str(previous), None, "--model.pooler=max")[1:])
    (previous / "config.yaml").write_text(config_to_yaml(other), encoding="utf-8")
    (previous / "marker.txt").write_text("written by another run\n")
    same = root / "same_run"  # this very run, interrupted: needs --resume_from_checkpoint
    same.mkdir()
    (same / "config.yaml").write_text(config_to_yaml(load_config(None, same_run_args(ws)[1:])), encoding="utf-8")
    (same / "marker.txt").write_text("half a run\n")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("\\documentclass{article}\n")
    (root / "a_file.txt").write_text("I am a file\n")

    (root / "malformed.yaml").write_text("model:\n  pooler: [mean\ntrain:\n  seed: 1\n", encoding="utf-8")
    (root / "unsafe.yaml").write_text(
        f'model:\n  pooler: !!python/object/apply:os.system ["touch {root / "pwned"}"]\n', encoding="utf-8"
    )
    return ws


def eval_file(ws: Workspace, name: str) -> list[str]:
    """``poolft eval`` of the saved text model on one CSV file of ``text/`` as the validation split."""
    files = json.dumps({"validation": ws.path("text", name)})
    return ["eval", "--model", ws.path("text_model"), f"--data.data_files={files}", "--data.text_column=text"]


def same_run_args(ws: Workspace) -> list[str]:
    return text_args(ws, ws.path("same_run"))


@dataclass
class Case:
    name: str
    argv: Callable[[Workspace], list[str]]
    expected: tuple[str, ...]  # fragments of the error line: the problem and the fix


CASES = [
    # --- configuration ---
    Case(
        "unknown config key",
        lambda ws: text_args(ws, ws.out("a"), None, "--train.lerning_rate=1e-3"),
        ("unknown config key train.lerning_rate", "did you mean 'learning_rate'", "poolft train --help"),
    ),
    Case(
        "unknown bare key",
        lambda ws: text_args(ws, ws.out("a"), None, "--max_lenght", "64"),
        ("unknown config key 'max_lenght'", "did you mean 'max_length'"),
    ),
    Case(
        "unknown section",
        lambda ws: text_args(ws, ws.out("a"), None, "--trian.seed", "1"),
        ("unknown config section 'trian'", "valid sections: model, data, train"),
    ),
    Case(
        "wrong type",
        lambda ws: text_args(ws, ws.out("a"), None, "--train.epochs", "three"),
        ("train.epochs must be a number", "got 'three'"),
    ),
    Case(
        "wrong type boolean",
        lambda ws: text_args(ws, ws.out("a"), None, "--data.group_by_length", "maybe"),
        ("data.group_by_length must be true or false", "got 'maybe'"),
    ),
    Case(
        "bad scheduler choice",
        lambda ws: text_args(ws, ws.out("a"), None, "--train.scheduler", "cosin"),
        ("train.scheduler='cosin' is not a valid choice", "use one of linear, cosine, constant"),
    ),
    Case(
        "missing config file",
        lambda ws: ["train", "--config", ws.path("nope.yaml")],
        ("nope.yaml does not exist", "pass --config with a YAML file path"),
    ),
    Case(
        "malformed YAML",
        lambda ws: ["train", "--config", ws.path("malformed.yaml")],
        ("malformed.yaml is not valid YAML (line", "fix the syntax"),
    ),
    Case(
        "python object tag in YAML",
        lambda ws: ["train", "--config", ws.path("unsafe.yaml")],
        ("YAML tag that safe loading refuses", "python/object/apply:os.system", "write plain values"),
    ),
    Case(
        "stray argument",
        lambda ws: text_args(ws, ws.out("a"), None, "seed"),
        ("cannot read argument 'seed'", "write overrides as --section.key value or key=value"),
    ),
    Case(
        "batch_size zero",
        lambda ws: text_args(ws, ws.out("a"), None, "--train.batch_size=0"),
        ("train.batch_size must be at least 1", "got 0"),
    ),
    Case(
        "negative learning rate",
        lambda ws: text_args(ws, ws.out("a"), None, "--train.learning_rate=-1e-3"),
        ("train.learning_rate must be positive", "got -0.001"),
    ),
    Case(
        "hidden layer the backbone lacks",
        lambda ws: text_args(ws, ws.out("hidden"), None, "--model.hidden_layers=[-1,5]"),
        ("model.hidden_layers [5] do not exist in a backbone with 2 layers", "use indices from -3 to 2"),
    ),
    # --- pooling heads ---
    Case(
        "unknown pooler",
        lambda ws: text_args(ws, ws.out("a"), None, "--model.pooler=maxx"),
        ("unknown pooler 'maxx'", "choose one of: cls, clsmean, mean, max"),
    ),
    Case(
        "unknown pooler option",
        lambda ws: text_args(ws, ws.out("a"), None, "--model.pooler=attention", "--model.pooler_options={heads: 2}"),
        ("unknown option(s) heads for pooler 'attention'", "valid: num_queries, num_heads"),
    ),
    Case(
        "pooler option of the wrong type",
        lambda ws: text_args(ws, ws.out("a"), None, "--model.pooler=window", "--model.pooler_options={levels: 4}"),
        ("pooler option window.levels=4 has the wrong type", "make it a list of integers"),
    ),
    Case(
        "window levels [0]",
        lambda ws: text_args(
            ws, ws.out("window"), None, "--model.pooler=window", "--model.pooler_options={levels: [0]}"
        ),
        ("cannot build pooler 'window'", "levels must be positive integers", "fix model.pooler_options"),
    ),
    Case(
        "attention heads not dividing hidden",
        lambda ws: text_args(
            ws, ws.out("heads"), None, "--model.pooler=attention", "--model.pooler_options={num_heads: 5}"
        ),
        ("num_heads=5 must divide hidden_size=32", "fix model.pooler_options"),
    ),
    # --- data ---
    Case(
        "missing text column",
        lambda ws: text_args(ws, ws.out("no-text"), None, "--data.text_column=sentence"),
        ("column 'sentence' not in split 'train' (columns: text, label)", "set data.text_column"),
    ),
    Case(
        "misnamed label column",
        lambda ws: text_args(ws, ws.out("lable"), None, "--data.label_column=lable"),
        ("column 'lable' not in split 'train' (columns: text, label)", "set data.label_column"),
    ),
    Case(
        "label only in the evaluation split",
        lambda ws: text_args(ws, ws.out("unseen"), csv_files(ws, "train.csv", "unseen_label.csv")),
        ("split 'validation' has label(s) 'maybe' never seen in training", "make every evaluation label appear"),
    ),
    Case(
        "empty training csv",
        lambda ws: text_args(ws, ws.out("empty"), csv_files(ws, "header_only.csv")),
        ("header_only.csv for split 'train' has no rows", "add examples or fix data.data_files"),
    ),
    Case(
        "empty evaluation csv",
        lambda ws: text_args(ws, ws.out("empty-eval"), csv_files(ws, "train.csv", "header_only.csv")),
        ("header_only.csv for split 'validation' has no rows", "add examples"),
    ),
    Case(
        "csv with non-UTF-8 bytes",
        lambda ws: text_args(ws, ws.out("latin1"), csv_files(ws, "latin1.csv")),
        ("latin1.csv for split 'train' is not valid UTF-8 (byte 0xe9 at offset 14)", "re-save it as UTF-8"),
    ),
    Case(
        "unsupported data file type",
        lambda ws: text_args(ws, ws.out("xlsx"), csv_files(ws, "table.xlsx")),
        ("table.xlsx for split 'train' has an unsupported type", "use one of .csv, .json"),
    ),
    Case(
        "missing evaluation split",
        lambda ws: text_args(ws, ws.out("split"), None, "--data.eval_split=test"),
        ("split 'test' not found (have: train, validation)", "set data.train_split / data.eval_split"),
    ),
    Case(
        "data path that does not exist",
        lambda ws: (
            [a for a in text_args(ws, ws.out("nodata")) if not a.startswith("--data.data_files")]
            + [f"--data.path={ws.path('no', 'such', 'data')}"]
        ),
        ("does not exist", "pass an existing folder, file or Hub dataset id"),
    ),
    Case(
        "data folder without data",
        lambda ws: image_args(ws, ws.out("nothing"), ws.path("empty_folder")),
        ("holds no data files", "and no images; point data.path at a dataset folder"),
    ),
    Case(
        "corrupted image in an image folder",
        lambda ws: image_args(ws, ws.out("broken"), ws.path("broken_images")),
        ("9.png in split 'train' cannot be read", "remove or replace the file"),
    ),
    Case(
        "image folder with one class",
        lambda ws: image_args(ws, ws.out("one-class"), ws.path("one_class")),
        ("gives no labels", "<split>/<class>/<image> with at least two class folders"),
    ),
    Case(
        "image folder with a class in validation only",
        lambda ws: image_args(ws, ws.out("eval-only"), ws.path("eval_only_class")),
        ("split 'validation' has label(s) 'medium' with no example in split 'train'", "make every evaluation label"),
    ),
    Case(
        "rate-search hold-out leaves one class",
        lambda ws: text_args(ws, ws.out("held"), None, "--data.holdout_fraction=0.9"),
        ("after holding out 0.9 of the training split for the rate search", "its rest has only one label", "--holdout"),
    ),
    Case(
        "image folder without class folders",
        lambda ws: image_args(ws, ws.out("flat"), ws.path("flat_images")),
        ("flat_images gives no labels", "arrange it as <split>/<class>/<image>"),
    ),
    Case(
        "image folder without split folders",
        lambda ws: image_args(ws, ws.out("no-splits"), ws.path("images", "train")),
        ("split 'validation' not found (have: train)", "set data.train_split / data.eval_split"),
    ),
    # --- backbones ---
    Case(
        "backbone folder that is not a model",
        lambda ws: text_args(ws, ws.out("nomodel"), None, f"--model.backbone={ws.path('not_a_model')}"),
        ("has no config.json, so it is not a model folder", "pass a model"),
    ),
    Case(
        "backbone folder that does not exist",
        lambda ws: text_args(ws, ws.out("nobackbone"), None, f"--model.backbone={ws.path('no', 'such', 'model')}"),
        ("backbone folder", "does not exist; pass an existing folder or a Hub id"),
    ),
    Case(
        "backbone with a config but no weights",
        lambda ws: text_args(ws, ws.out("noweights"), None, f"--model.backbone={ws.path('no_weights')}"),
        ("cannot load the weights of backbone", "pass a folder with model.safetensors"),
    ),
    Case(
        "a JSON label column of numbers and text",
        lambda ws: text_args(
            ws,
            ws.out("mixed"),
            {"train": ws.path("text", "mixed_labels.jsonl"), "validation": ws.path("text", "validation.jsonl")},
        ),
        ("label column 'label' of split 'train' mixes value types", "write every label the same way"),
    ),
    Case(
        "splits whose files have different columns",
        lambda ws: text_args(
            ws,
            ws.out("columns"),
            {"train": ws.path("text", "train.csv"), "validation": ws.path("text", "other_columns.csv")},
        ),
        ("the data files' columns differ", "give every split's file the same columns"),
    ),
    Case(
        "backbone folder without tokenizer files",
        lambda ws: text_args(ws, ws.out("notok"), None, f"--model.backbone={ws.path('no_tokenizer')}"),
        ("has no tokenizer files", "save the backbone's tokenizer with it"),
    ),
    Case(
        "tokenizer larger than the backbone's vocabulary",
        lambda ws: text_args(ws, ws.out("othertok"), None, f"--model.backbone={ws.path('other_tokenizer')}"),
        ("tokens but the model's embeddings hold", "save the backbone's own tokenizer with it"),
    ),
    Case(
        "text backbone on image data",
        lambda ws: image_args(ws, ws.out("text-on-image"), ws.path("images"), f"--model.backbone={ws.bert}"),
        ("is a text model but the data is image", "use a ViT-family image backbone"),
    ),
    Case(
        "image backbone on text data",
        lambda ws: text_args(ws, ws.out("image-on-text"), None, f"--model.backbone={ws.vit}"),
        ("is an image model but the data is text", "use a BERT-family text backbone"),
    ),
    Case(
        "max_length beyond the position embeddings",
        lambda ws: text_args(ws, ws.out("long"), None, "--data.max_length=512"),
        ("data.max_length=512 exceeds the backbone's 128 positions", "set data.max_length <= 128"),
    ),
    # --- output folder ---
    Case(
        "output folder of another run",
        lambda ws: text_args(ws, ws.path("previous_run")),
        ("holds a different run", "choose another train.output_dir or pass --overwrite_output_dir true"),
    ),
    Case(
        "same run without --resume_from_checkpoint",
        same_run_args,
        ("already holds this run", "pass --resume_from_checkpoint latest to continue it"),
    ),
    Case(
        "output folder with foreign files",
        lambda ws: text_args(ws, ws.path("foreign")),
        ("already holds files that are not a poolft run", "choose another train.output_dir"),
    ),
    Case(
        "output_dir that is a file",
        lambda ws: text_args(ws, ws.path("a_file.txt")),
        ("a_file.txt is a file", "choose a folder path for train.output_dir"),
    ),
    Case(
        "output_dir below a file",
        lambda ws: text_args(ws, ws.path("a_file.txt", "run")),
        ("cannot write to output_dir", "Not a directory", "choose a writable folder"),
    ),
    Case(
        "data_files mapping without a space after the colon",
        lambda ws: text_args(ws, ws.out("a"), None, f"--data.data_files={{train:{ws.path('text', 'train.csv')}}}"),
        ("data.data_files has the split 'train:", "write a space after each colon"),
    ),
    Case(
        "feature cache folder the file system refuses although root may write there",
        lambda ws: text_args(
            ws,
            ws.out("proc-cache"),
            None,
            "--train.freeze_backbone=true",
            "--train.feature_cache=true",
            "--train.feature_cache_dir=/proc/poolft-cache",
        ),
        ("train.feature_cache_dir /proc/poolft-cache cannot hold the feature cache", "set it to a writable folder"),
    ),
    Case(
        "overwriting a run, with a feature cache folder the file system refuses: the run is kept",
        lambda ws: text_args(
            ws,
            ws.path("previous_run"),
            None,
            "--train.overwrite_output_dir=true",
            "--train.freeze_backbone=true",
            "--train.feature_cache=true",
            "--train.feature_cache_dir=/proc/poolft-cache",
        ),
        ("train.feature_cache_dir /proc/poolft-cache cannot hold the feature cache", "set it to a writable folder"),
    ),
    Case(
        "feature cache folder that is a file",
        lambda ws: text_args(
            ws,
            ws.out("cache"),
            None,
            "--train.freeze_backbone=true",
            "--train.feature_cache=true",
            f"--train.feature_cache_dir={ws.path('a_file.txt', 'cache')}",
        ),
        ("train.feature_cache_dir", "a_file.txt is a file", "set it to a writable folder"),
    ),
    Case(
        "checkpoint path that does not exist",
        lambda ws: text_args(ws, ws.out("resume"), None, f"--train.resume_from_checkpoint={ws.path('no', 'step-5')}"),
        ("step-5 cannot be used: no such folder", "or 'latest'"),
    ),
    Case(
        "checkpoint path that is no checkpoint",
        lambda ws: text_args(ws, ws.out("resume2"), None, f"--train.resume_from_checkpoint={ws.path('foreign')}"),
        ("cannot be used: no completion manifest", "or 'latest'"),
    ),
    # --- eval / predict / command line ---
    Case(
        "unknown command",
        lambda ws: ["trian"],
        ("invalid choice: 'trian'", "run `poolft --help`"),
    ),
    Case(
        "eval without --model",
        lambda ws: ["eval"],
        ("the following arguments are required: --model", "run `poolft eval --help`"),
    ),
    Case(
        "eval of a folder that is not a model",
        lambda ws: ["eval", "--model", ws.path("not_a_model")],
        ("not_a_model has no config.json", "pass the output_dir of a finished poolft train run"),
    ),
    Case(
        "eval of a folder that does not exist",
        lambda ws: ["eval", "--model", ws.path("no_such_run")],
        ("no_such_run does not exist", "pass the output_dir of a finished poolft train run"),
    ),
    Case(
        "eval of a text model on images",
        lambda ws: ["eval", "--model", ws.path("text_model"), "--data.path", ws.path("images")],
        ("is a text model but split 'validation' is image data", "evaluate it on text data"),
    ),
    Case(
        "eval on a file without the label column",
        lambda ws: eval_file(ws, "no_label.csv"),
        ("column 'label' not in split 'validation'", "set data.label_column"),
    ),
    Case(
        "eval on a file with an empty label",
        lambda ws: eval_file(ws, "empty_label.csv"),
        ("split 'validation' has empty labels in column 'label'", "drop or fill those rows"),
    ),
    Case(
        "eval batch_size zero",
        lambda ws: ["eval", "--model", ws.path("text_model"), "--batch_size", "0"],
        ("argument --batch_size: must be at least 1", "run `poolft eval --help`"),
    ),
    Case(
        "eval unknown option",
        lambda ws: ["eval", "--model", ws.path("text_model"), "--data.pth", ws.path("images")],
        ("unrecognized arguments: --data.pth", "--help"),
    ),
    Case(
        "predict with nothing to predict",
        lambda ws: ["predict", "--model", ws.path("text_model")],
        ("nothing to predict", "pass texts as arguments or --image FILE"),
    ),
    Case(
        "predict of a missing image",
        lambda ws: ["predict", "--model", ws.path("image_model"), "--image", ws.path("no_such.png")],
        ("image", "no_such.png does not exist", "pass existing image files to --image"),
    ),
    Case(
        "predict of a file that is not an image",
        lambda ws: ["predict", "--model", ws.path("image_model"), "--image", ws.path("a_file.txt")],
        ("a_file.txt cannot be read", "pass a PNG/JPEG"),
    ),
    Case(
        "predict images with a text model",
        lambda ws: [
            "predict",
            "--model",
            ws.path("text_model"),
            "--image",
            ws.path("images", "validation", "dark", "0.png"),
        ],
        ("this is a text model", "pass texts"),
    ),
    Case(
        "predict texts with an image model",
        lambda ws: ["predict", "--model", ws.path("image_model"), "a great film"],
        ("this is an image model", "pass image files (--image)"),
    ),
    Case(
        "predict batch_size zero",
        lambda ws: ["predict", "--model", ws.path("text_model"), "--batch_size", "0", "a great film"],
        ("argument --batch_size: must be at least 1", "run `poolft predict --help`"),
    ),
    Case(
        "predict with a model that is not a model",
        lambda ws: ["predict", "--model", ws.path("not_a_model"), "a great film"],
        ("has no config.json", "pass the output_dir of a finished poolft train run"),
    ),
]


def run_case(case: Case, ws: Workspace, capsys: pytest.CaptureFixture) -> list[str]:
    """Run one mistake; return what is wrong with poolft's answer (empty: all good)."""
    capsys.readouterr()
    try:
        status = main(case.argv(ws))
    except BaseException as error:  # noqa: BLE001 (a case must report, not stop the table)
        return [f"raised {type(error).__name__}: {error}"]
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    problems = []
    if status != EXIT_USER_ERROR:
        problems.append(f"exit status {status}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines: {lines[:6]}")
    if not err.startswith("poolft: error: "):
        problems.append(f"stderr does not start with 'poolft: error: ': {err[:200]!r}")
    if "Traceback" in err + out:
        problems.append("traceback printed")
    missing = [fragment for fragment in case.expected if fragment not in err]
    if missing:
        problems.append(f"message lacks {missing}: {err.strip()!r}")
    if "; " not in err and " must be " not in err:  # "problem; fix", or "x must be y, got z"
        problems.append(f"message has no fix: {err.strip()!r}")
    return problems


def test_user_mistakes_are_one_clean_line(tmp_path, tiny_bert_dir, tiny_vit_dir, capsys, quiet_libraries):
    ws = build_workspace(tmp_path, tiny_bert_dir, tiny_vit_dir)
    before = snapshot(tmp_path)
    failures = {}
    for case in CASES:
        problems = run_case(case, ws, capsys)
        after = snapshot(tmp_path)
        changed = [name for name, data in before.items() if after.get(name) != data]
        if changed:
            problems.append(f"changed or removed existing files {changed}")
        outputs = tmp_path / "out"
        written = (
            sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file()) if outputs.exists() else []
        )
        if written:
            problems.append(f"a failed run left files behind: {written}")
        if problems:
            failures[case.name] = problems
    assert not (tmp_path / "pwned").exists()  # the YAML tag was not executed
    with capsys.disabled():
        print(f"\ntried {len(CASES)} user mistakes; {len(CASES) - len(failures)} gave one clean line")
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    assert not failures, "\n".join(f"{name}: {'; '.join(problems)}" for name, problems in failures.items())


def test_one_pixel_images_train(tmp_path, tiny_vit_dir, capsys, quiet_libraries):
    """1x1 images are tiny, not wrong: they are resized to the backbone's input and train."""
    folder = tmp_path / "pixels"
    for split, count in (("train", 4), ("validation", 2)):
        for label, level in (("dark", 30), ("light", 220)):
            (folder / split / label).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (1, 1), (level + i, level, level)).save(folder / split / label / f"{i}.png")
    output = tmp_path / "run"
    status = main(image_args(Workspace(tmp_path, tiny_vit_dir, tiny_vit_dir), str(output), str(folder)))
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "poolft: error" not in err
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["final"]["samples"] == 4
    assert metrics["train_size"] == 8 and metrics["label_names"] == ["dark", "light"]
    assert (output / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["predict", "--model", str(output), "--image", str(folder / "validation" / "dark" / "0.png")]) == 0
    assert capsys.readouterr().out.split("\t")[0] in {"dark", "light"}


def test_a_run_that_fails_its_checks_leaves_no_empty_folders(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """Without train.output_dir a run names its folder runs/<head>-<time>; a mistake found while
    loading the data or the model removes the folders the run made (and only those)."""
    files = write_sentiment_csv(tmp_path / "data", train_size=8, eval_size=4)
    monkeypatch.chdir(tmp_path)
    arguments = ["train", f"--data.data_files={json.dumps(files)}", f"--model.backbone={tiny_bert_dir}"]
    assert main([*arguments, "--model.pooler=avg"]) == EXIT_USER_ERROR
    assert "unknown pooler 'avg'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "kept").mkdir()
    deep = tmp_path / "kept" / "a" / "b"
    assert main([*arguments, "--data.text_column=nope", f"--train.output_dir={deep}"]) == EXIT_USER_ERROR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "kept"] and not any((tmp_path / "kept").iterdir())
