"""Which column holds the text when ``data.text_column`` is not set, and that a run records the choice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, Value
from datasets_for_tests import sentiment_rows
from transformers import AutoTokenizer

from poolft.cli import main
from poolft.config import DataConfig
from poolft.data.sources import choose_text_columns, load_splits
from poolft.data.text import tokenize_split
from poolft.errors import PoolftError


def split_with(columns: dict[str, str]) -> Dataset:
    """Two rows; ``columns`` maps a name to ``"string"``, ``"int32"`` or ``"label"`` (a ClassLabel)."""
    features, values = {}, {}
    for name, kind in columns.items():
        if kind == "label":
            features[name], values[name] = ClassLabel(names=["neg", "pos"]), [0, 1]
        elif kind == "string":
            features[name], values[name] = Value("string"), [f"{name} one", f"{name} two"]
        else:
            features[name], values[name] = Value(kind), [1, 2]
    return Dataset.from_dict(values, features=Features(features))


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"text": "string", "label": "label"}, ("text", None)),
        ({"idx": "int32", "sentence": "string", "label": "label"}, ("sentence", None)),  # GLUE SST-2
        ({"review": "string", "stars": "int32", "label": "label"}, ("review", None)),  # the only string column
        ({"sentence1": "string", "sentence2": "string", "label": "label", "idx": "int32"}, ("sentence1", "sentence2")),
        ({"question": "string", "sentence": "string", "label": "label"}, ("question", "sentence")),  # QNLI
        ({"premise": "string", "hypothesis": "string", "label": "label"}, ("premise", "hypothesis")),
        ({"title": "string", "text": "string", "label": "label"}, ("text", None)),  # named like the text
        ({"label": "string", "sentence": "string"}, ("sentence", None)),  # string labels are not the text
    ],
    ids=["text", "sst2", "only-string", "sentence-pair", "qnli", "nli", "named", "string-label"],
)
def test_text_column_is_chosen_from_the_columns(columns, expected):
    text, pair, _ = choose_text_columns(split_with(columns), "label", None, "train")
    assert (text, pair) == expected


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"title": "string", "body": "string", "label": "label"},
            "cannot tell which column of split 'train' holds the text (text columns title, body; "
            "columns: title, body, label); set data.text_column (and data.text_pair_column for pairs)",
        ),
        (
            {"text": "string", "sentence": "string", "label": "label"},
            "cannot tell which column of split 'train' holds the text (text columns text, sentence; "
            "columns: text, sentence, label); set data.text_column",
        ),
        (
            {"idx": "int32", "label": "label"},
            "cannot tell which column of split 'train' holds the text (no text column; columns: idx, label); "
            "set data.text_column",
        ),
    ],
    ids=["two-unnamed", "text-and-sentence", "no-string-column"],
)
def test_ambiguous_columns_are_one_line_errors(columns, message):
    with pytest.raises(PoolftError) as caught:
        choose_text_columns(split_with(columns), "label", None, "train")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_set_pair_column_is_left_out_of_the_choice():
    split = split_with({"sentence1": "string", "sentence2": "string", "label": "label"})
    assert choose_text_columns(split, "label", "sentence1", "train")[:2] == ("sentence2", "sentence1")


def write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_load_splits_says_which_column_it_chose_in_one_line(tmp_path, capsys):
    rows = sentiment_rows(6, 0)
    files = {
        "train": write_csv(tmp_path / "train.csv", rows),
        "validation": write_csv(tmp_path / "validation.csv", rows[:2]),
    }
    splits = load_splits(DataConfig(data_files=files))
    assert (splits.data.text_column, splits.data.text_pair_column) == ("text", None)
    assert splits.train["text"] == [row["text"] for row in rows]
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("poolft")]  # not progress bars
    assert said == ["poolft: text column 'text' (the only text column); set data.text_column to choose another"]
    load_splits(DataConfig(data_files=files, text_column="text"))
    assert "poolft" not in capsys.readouterr().err  # a set column is not announced


def test_a_sentence_pair_is_tokenized_as_text_and_text_pair(tmp_path, tiny_bert_dir):
    rows = [
        {"sentence1": "the movie was great", "sentence2": "loved it", "label": "same"},
        {"sentence1": "a dull plot", "sentence2": "the actors were not bad", "label": "other"},
    ]
    files = {"train": write_csv(tmp_path / "t.csv", rows), "validation": write_csv(tmp_path / "v.csv", rows)}
    splits = load_splits(DataConfig(data_files=files))
    assert (splits.data.text_column, splits.data.text_pair_column) == ("sentence1", "sentence2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    encoded = tokenize_split(splits.train, tokenizer, splits.data, "train")
    for row, example in zip(rows, encoded, strict=True):
        expected = tokenizer(row["sentence1"], row["sentence2"])
        assert example["input_ids"] == expected["input_ids"]
        assert example["token_type_ids"] == expected["token_type_ids"]
        assert 1 in example["token_type_ids"]  # the second segment really is there


def run_arguments(files: dict[str, str], backbone: Path, output: Path) -> list[str]:
    return [
        f"--data.data_files={json.dumps(files)}",
        f"--model.backbone={backbone}",
        f"--train.output_dir={output}",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.save_every_steps=1",
        "--train.progress=false",
        "--train.mixed_precision=no",
    ]


def test_run_records_the_chosen_column_and_reuses_it(tmp_path, tiny_bert_dir, capsys):
    """`text, label` files train with no text_column; config.yaml, resume, --config and eval reuse it."""
    rows = sentiment_rows(24, 0)
    files = {
        "train": write_csv(tmp_path / "data" / "train.csv", rows),
        "validation": write_csv(tmp_path / "data" / "validation.csv", rows[:8]),
    }
    run = tmp_path / "run"
    assert main(["train", *run_arguments(files, tiny_bert_dir, run)]) == 0
    assert "poolft: text column 'text' (the only text column)" in capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["text_column"] == "text" and saved["data"]["text_pair_column"] is None

    # the same command continues the run: the chosen column is not "a different run"
    resumed = [*run_arguments(files, tiny_bert_dir, run), "--train.max_steps=3", "--resume_from_checkpoint=latest"]
    assert main(["train", *resumed]) == 2
    assert "holds a different run" in capsys.readouterr().err  # max_steps differs: a real comparison
    assert main(["train", *run_arguments(files, tiny_bert_dir, run), "--resume_from_checkpoint=latest"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(run / "config.yaml"), f"--train.output_dir={tmp_path / 'again'}"]) == 0
    assert "poolft: text column" not in capsys.readouterr().err  # read from config.yaml, not chosen again
    assert (tmp_path / "again" / "metrics.json").is_file()

    assert main(["eval", "--model", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 8

    # other data with a `sentence` column: the run's `text` does not apply, the new column is chosen
    other = tmp_path / "other"
    write_csv(other / "validation.csv", [{"sentence": row["text"], "label": row["label"]} for row in rows[:5]])
    assert main(["eval", "--model", str(run), "--data.path", str(other)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"] == 5
    assert "poolft: text column 'sentence' (the only text column)" in captured.err
