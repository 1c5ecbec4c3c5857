"""Datasets: where examples come from (embedded sample, local files, image folders, the Hub),
which columns hold inputs and labels, and the label names shared by both splits."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from datasets.table import CastError

from ..config import DataConfig
from ..errors import PoolftError
from .labels import encode_multi_hot, is_multi_label, multi_label_names

SAMPLE_DIR = Path(__file__).parent / "sample_data"
EMBEDDED = {
    "sst2-sample": {
        "train": SAMPLE_DIR / "sst2_train_sample.parquet",
        "validation": SAMPLE_DIR / "sst2_validation.parquet",
    }
}
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: column names that hold the text when ``data.text_column`` is not set, in the order they are tried
TEXT_COLUMN_NAMES = ("text", "sentence")
#: two columns that together hold a text pair (GLUE's MRPC/RTE/WNLI, QQP, QNLI; MNLI/SNLI)
TEXT_PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
)
STRING_DTYPES = ("string", "large_string")


@dataclass
class LabeledSplits:
    """Train and evaluation splits with a ``labels`` column (int ids, or multi-hot floats) and the label names."""

    train: Dataset
    eval: Dataset
    label_names: list[str]
    task: str  # "text" | "image"
    description: dict[str, Any]
    # the data config the splits were read with, text column(s) resolved (what the run writes to config.yaml)
    data: DataConfig
    # rate search: ``train`` and ``eval`` are rows of this one split (encode it once, then select)
    holdout: HeldOutRows | None = None
    # several labels per row (``labels`` is multi-hot; see ``poolft/data/labels.py``)
    multi_label: bool = False


@dataclass
class HeldOutRows:
    """A training split divided into a training part and a held-out part, by row indices."""

    source: Dataset
    train_rows: list[int]
    eval_rows: list[int]


def hold_out(split: Dataset, fraction: float, seed: int = 0) -> HeldOutRows:
    """A seeded share of ``split`` held out (the same rows as ``Dataset.train_test_split``)."""
    order = np.random.default_rng(seed).permutation(len(split))
    held = math.ceil(fraction * len(split))
    if held == 0 or held == len(split):
        raise PoolftError(
            f"data.holdout_fraction={fraction} leaves no examples on one side of {len(split)}; choose a share "
            "that keeps at least one example in each part"
        )
    return HeldOutRows(split, order[held:].tolist(), order[:held].tolist())


def load_splits(config: DataConfig, *, need_train: bool = True) -> LabeledSplits:
    """Load, check and label the configured splits; every user mistake is a ``PoolftError``."""
    raw, description = _load_raw(config, need_train)
    splits = [config.train_split, config.eval_split] if need_train else [config.eval_split]
    held_out = config.holdout_fraction is not None and need_train
    if held_out:  # evaluated on a share of the training split: an evaluation split may be absent
        splits = [config.train_split]
    for split in splits:
        if split not in raw:
            raise PoolftError(
                f"split {split!r} not found (have: {', '.join(raw)}); set data.train_split / data.eval_split"
            )
    train = raw[config.train_split] if need_train else raw[config.eval_split]
    train_name = config.train_split if need_train else config.eval_split  # the split the labels are read from
    evaluation = raw[config.eval_split] if config.eval_split in raw or not held_out else train  # replaced below
    task = infer_task(config, train)
    if task == "text":
        config = with_text_columns(config, train, train_name)
    check_image_folder_labels(config, description, train)
    for split_name, split in ((train_name, train), (config.eval_split, evaluation)):
        check_columns(config, task, split, split_name)
        if len(split) == 0:
            raise PoolftError(f"split {split_name!r} has no examples; point data.path at a non-empty dataset")
    if config.max_train_samples is not None and need_train:
        train = train.select(range(min(config.max_train_samples, len(train))))
    multi_label = check_same_label_kind(config, train, evaluation, need_train)
    if multi_label:
        label_names = multi_label_names(config, train)
        train = encode_multi_hot(train, config, label_names, config.train_split)
    else:
        label_names = label_names_of(train, config.label_column, train_name)
        train = encode_labels(train, config.label_column, label_names, train_name)
    holdout = None
    if held_out:
        # rate search: hold out a seeded share of the run's training examples and evaluate on it
        holdout = hold_out(train, config.holdout_fraction)
        if config.max_eval_samples is not None:
            holdout.eval_rows = holdout.eval_rows[: config.max_eval_samples]
        train, evaluation = train.select(holdout.train_rows), train.select(holdout.eval_rows)
        description["holdout_fraction"] = config.holdout_fraction
    else:
        if config.max_eval_samples is not None:
            evaluation = evaluation.select(range(min(config.max_eval_samples, len(evaluation))))
        if multi_label:
            evaluation = encode_multi_hot(evaluation, config, label_names, config.eval_split)
        else:
            evaluation = encode_labels(evaluation, config.label_column, label_names, config.eval_split)
    if not multi_label:  # multi-hot rows were checked while encoding; a label may be absent from them
        for split_name, split in ((config.train_split, train), (config.eval_split, evaluation)):
            check_no_missing_labels(split, config.label_column, split_name)
        if need_train:
            check_two_classes(train, label_names, description, config.holdout_fraction if holdout else None)
            check_evaluated_labels_trained(train, evaluation, label_names, config, holdout is not None)
    elif not label_names:
        raise PoolftError(f"no row of split {config.train_split!r} has a label; give the rows their labels")
    description.update(
        train_split=config.train_split, eval_split=config.eval_split, train_size=len(train), eval_size=len(evaluation)
    )
    return LabeledSplits(train, evaluation, label_names, task, description, config, holdout, multi_label)


def check_same_label_kind(config: DataConfig, train: Dataset, evaluation: Dataset, need_train: bool) -> bool:
    """Whether the splits are multi-label (see ``poolft/data/labels.py``); both must be the same kind."""
    multi_label = is_multi_label(config, train, config.train_split if need_train else config.eval_split)
    if need_train and is_multi_label(config, evaluation, config.eval_split) != multi_label:
        kinds = ("lists of labels", "one label per row") if multi_label else ("one label per row", "lists of labels")
        raise PoolftError(
            f"split {config.train_split!r} has {kinds[0]} but split {config.eval_split!r} has {kinds[1]} in column "
            f"{config.label_column!r}; give both splits the same kind of labels"
        )
    return multi_label


def _load_raw(config: DataConfig, need_train: bool) -> tuple[DatasetDict, dict[str, Any]]:
    if config.data_files:
        files = {split: str(path) for split, path in config.data_files.items()}
        return _load_files(files), {"source": "files", "files": files}
    if config.path in EMBEDDED:
        files = {split: str(path) for split, path in EMBEDDED[config.path].items()}
        return _load_files(files), {"source": config.path, "files": files}
    local = Path(config.path).expanduser()
    if local.exists():
        return _load_local(local)
    if config.path.startswith((".", "/", "~")) or config.path.count("/") > 1:
        raise PoolftError(f"data.path {config.path!r} does not exist; pass an existing folder, file or Hub dataset id")
    try:
        loaded = datasets.load_dataset(config.path, config.name)
    except Exception as error:  # the Hub raises many types; the user needs one line
        raise PoolftError(
            f"could not load dataset {config.path!r}"
            f"{' config ' + repr(config.name) if config.name else ''} from the Hub ({type(error).__name__}: "
            f"{_first_line(error)}); check the id, the network, or use a local folder / data.data_files"
        ) from None
    return loaded, {"source": "hub", "path": config.path, "name": config.name}


def _load_files(files: dict[str, str]) -> DatasetDict:
    builders = set()
    for split, path in files.items():
        if str(path) in ("None", "") and ":" in str(split):  # YAML read "{train:a.csv}" as the key "train:a.csv"
            raise PoolftError(
                f"data.data_files has the split {split!r} with no file; write a space after each colon, "
                "e.g. --data.data_files '{train: a.csv, validation: b.csv}'"
            )
        suffix = Path(path).suffix.lower()
        if suffix not in FILE_BUILDERS:
            raise PoolftError(
                f"data file {path} for split {split!r} has an unsupported type; use one of "
                f"{', '.join(sorted(FILE_BUILDERS))}"
            )
        if not Path(path).is_file():
            raise PoolftError(f"data file {path} for split {split!r} does not exist; fix data.data_files")
        if not has_rows(Path(path)):
            raise PoolftError(f"data file {path} for split {split!r} has no rows; add examples or fix data.data_files")
        builders.add((FILE_BUILDERS[suffix], suffix == ".tsv"))
    if len(builders) > 1:
        raise PoolftError("data.data_files mixes file types; convert the splits to one format")
    ((builder, is_tsv),) = builders
    options = {"delimiter": "\t"} if is_tsv else {}
    try:
        with _datasets_errors_unlogged():  # poolft reports the failure itself, in one line
            return datasets.load_dataset(builder, data_files=files, **options)
    except Exception as error:  # datasets wraps the reader's error (DatasetGenerationError)
        if _caused_by(error, UnicodeDecodeError):
            raise PoolftError(_not_utf8_message(files)) from None
        cause = _root_cause(error)
        cast = next((e for e in _error_chain(error) if isinstance(e, CastError)), None)
        if cast is not None and set(cast.table_column_names) != set(cast.requested_column_names):
            raise PoolftError(
                f"the data files' columns differ: one split has {sorted(cast.table_column_names)}, another "
                f"{sorted(cast.requested_column_names)}; give every split's file the same columns"
            ) from None
        raise PoolftError(
            f"could not read data files {files} ({type(cause).__name__}: {_first_line(cause)}); "
            f"check that each file is a valid {builder} table with a header row"
        ) from None


@contextlib.contextmanager
def _datasets_errors_unlogged() -> Iterator[None]:
    """Silence the ``datasets`` logger's "Failed to read file" line during a load."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def has_rows(path: Path) -> bool:
    """False for a data file that certainly holds no examples (empty, header only, ``[]``)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except Exception:  # not parquet: the loader reports it
            return True
    with open(path, "rb") as stream:
        head = stream.read(65536)
    if suffix in (".csv", ".tsv"):
        lines = [line for line in head.splitlines() if line.strip()]
        return len(lines) > 1 or len(head) == 65536  # more than the header row
    return head.strip() not in (b"", b"[]", b"{}")


def _not_utf8_message(files: dict[str, str]) -> str:
    """Which data file is not UTF-8, where, and the fix."""
    for split, path in files.items():
        if Path(path).suffix.lower() == ".parquet":
            continue
        problem = _utf8_problem(Path(path))
        if problem:
            return f"data file {path} for split {split!r} is not valid UTF-8 ({problem}); re-save it as UTF-8"
    return f"a data file of {', '.join(files.values())} is not valid UTF-8; re-save it as UTF-8"


def _utf8_problem(path: Path) -> str | None:
    """``"byte 0xe9 at offset 12"`` for the first invalid UTF-8 byte of ``path``, else None."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                return f"byte 0x{chunk[error.start]:02x} at offset {offset + error.start}"
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "truncated character at the end"
    return None


def _error_chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and the errors it was raised from (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(link, kind) for link in _error_chain(error))


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error of a chain (the reader's own message, not the wrapper's)."""
    return _error_chain(error)[-1]


def _load_local(folder: Path) -> tuple[DatasetDict, dict[str, Any]]:
    if folder.is_file():
        raise PoolftError(
            f"data.path {folder} is a single file; give one file per split in data.data_files "
            "(e.g. --data.data_files '{train: a.csv, validation: b.csv}')"
        )
    table_files = {p.stem: str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in FILE_BUILDERS}
    if table_files:
        return _load_files(table_files), {"source": "folder", "files": table_files}
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
        except Exception as error:
            raise PoolftError(
                f"could not read image folder {folder} ({_first_line(error)}); arrange it as <split>/<class>/<image>"
            ) from None
        return loaded, {"source": "imagefolder", "path": str(folder)}
    raise PoolftError(
        f"folder {folder} holds no data files ({', '.join(sorted(FILE_BUILDERS))}) and no images; "
        "point data.path at a dataset folder"
    )


def check_image_folder_labels(config: DataConfig, description: dict[str, Any], train: Dataset) -> None:
    """An image folder without class subfolders has no labels: say how to lay it out."""
    if description.get("source") != "imagefolder":
        return
    column = config.label_column
    if column not in train.column_names or train.unique(column) == [None]:
        raise PoolftError(
            f"image folder {description['path']} gives no labels (one class folder or none); arrange it as "
            "<split>/<class>/<image> with at least two class folders"
        )


def check_no_missing_labels(split: Dataset, label_column: str, split_name: str) -> None:
    """Rows without a label (None in a ``ClassLabel`` column) cannot be trained or scored."""
    if None in split.unique("labels"):
        raise PoolftError(
            f"split {split_name!r} has rows without a label in column {label_column!r}; drop or fill those rows"
        )


HOLDOUT_FIX = (
    "give the rare classes more training examples, or a smaller share (data.holdout_fraction; compare and sweep: "
    "--holdout), or search no rates (one --rates value)"
)


def check_two_classes(
    train: Dataset, label_names: list[str], description: dict[str, Any], holdout_fraction: float | None = None
) -> None:
    """A classifier needs examples of at least two classes in the training split (what is left of it
    after the rate search's hold-out, when ``holdout_fraction`` is given)."""
    present = [label for label in train.unique("labels") if label is not None]
    if len(present) >= 2:
        return
    only = label_names[present[0]] if present else label_names[0]
    if holdout_fraction:
        raise PoolftError(
            f"after holding out {holdout_fraction:g} of the training split for the rate search, its rest has only "
            f"one label ({only!r}); {HOLDOUT_FIX}"
        )
    layout = " arranged as <split>/<class>/<image>" if description.get("source") == "imagefolder" else ""
    raise PoolftError(
        f"the training split has only one label ({only!r}); a classifier needs at least two classes, "
        f"so give it examples of two or more classes{layout}"
    )


def check_evaluated_labels_trained(
    train: Dataset, evaluation: Dataset, label_names: list[str], config: DataConfig, held_out: bool
) -> None:
    """Every label the evaluation split uses must have training examples.

    Labels read as strings are checked while encoding; this covers ``ClassLabel`` columns, whose
    names are the union over the splits (an image folder's class folders), and the rate search's
    held-out share, which may take every training example of a rare class.
    """
    missing = sorted(set(evaluation.unique("labels")) - set(train.unique("labels")) - {None})
    if not missing:
        return
    names = ", ".join(repr(label_names[label]) for label in missing[:5])
    if held_out:
        raise PoolftError(
            f"the rate search's held-out share (data.holdout_fraction {config.holdout_fraction:g}) took every "
            f"training example of label(s) {names}; {HOLDOUT_FIX}"
        )
    raise PoolftError(
        f"split {config.eval_split!r} has label(s) {names} with no example in split {config.train_split!r}; "
        "make every evaluation label appear in the training split"
    )


def infer_task(config: DataConfig, split: Dataset) -> str:
    """``"text"`` or ``"image"``: the configured task, or the one the columns imply."""
    if config.task != "auto":
        return config.task
    feature = split.features.get(config.image_column)
    return "image" if isinstance(feature, datasets.Image) else "text"


def with_text_columns(config: DataConfig, split: Dataset, split_name: str) -> DataConfig:
    """``config`` with ``text_column`` (and ``text_pair_column``) chosen from ``split``'s columns when unset.

    Tried in order: the only string column besides the label (and a set pair column), a known pair
    (``sentence1``/``sentence2``, ...) -> text + text pair, then a column named ``text`` or
    ``sentence``. The choice is printed in one line; anything else is a ``PoolftError`` naming the
    columns and the fix.
    """
    if config.text_column is not None:
        return config
    text, pair, reason = choose_text_columns(split, config.label_column, config.text_pair_column, split_name)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        chosen = f"text column {text!r}" + (f" with pair column {pair!r}" if pair != config.text_pair_column else "")
        print(f"poolft: {chosen} ({reason}); set data.text_column to choose another", file=sys.stderr)
    return dataclasses.replace(config, text_column=text, text_pair_column=pair)


def choose_text_columns(
    split: Dataset, label_column: str, pair_column: str | None, split_name: str
) -> tuple[str, str | None, str]:
    """``(text column, pair column or None, why)`` for ``split``; see ``with_text_columns``."""
    taken = {label_column, pair_column, "labels"}
    strings = [
        name
        for name, feature in split.features.items()
        if name not in taken and getattr(feature, "dtype", None) in STRING_DTYPES
    ]
    if len(strings) == 1:
        return strings[0], pair_column, "the only text column"
    if pair_column is None:
        for first, second in TEXT_PAIR_COLUMNS:
            if first in strings and second in strings:
                return first, second, "a text pair"
    named = [name for name in TEXT_COLUMN_NAMES if name in strings]
    if len(named) == 1:
        return named[0], pair_column, "named like a text column"
    what = f"text columns {', '.join(strings)}" if strings else "no text column"
    raise PoolftError(
        f"cannot tell which column of split {split_name!r} holds the text ({what}; columns: "
        f"{', '.join(split.column_names)}); set data.text_column (and data.text_pair_column for pairs)"
    )


def check_columns(config: DataConfig, task: str, split: Dataset, split_name: str) -> None:
    """Raise a ``PoolftError`` naming the missing column and the ones that exist."""
    needed = {"label_column": config.label_column}
    if config.label_columns:
        needed = {f"label_columns[{i}]": column for i, column in enumerate(config.label_columns)}
    if task == "text":
        needed["text_column"] = config.text_column
        if config.text_pair_column:
            needed["text_pair_column"] = config.text_pair_column
    else:
        needed["image_column"] = config.image_column
    for key, column in needed.items():
        if column not in split.column_names:
            raise PoolftError(
                f"column {column!r} not in split {split_name!r} (columns: {', '.join(split.column_names)}); "
                f"set data.{key.split('[')[0]}"
            )


def distinct_labels(split: Dataset, label_column: str, split_name: str) -> list[Any]:
    """The distinct values of ``label_column``; a column of mixed types (numbers and text in one
    JSON column, which Arrow keeps as raw JSON) is a ``PoolftError``."""
    import pyarrow as pa

    try:
        return split.unique(label_column)
    except (pa.ArrowException, TypeError, ValueError):
        raise PoolftError(
            f'label column {label_column!r} of split {split_name!r} mixes value types (e.g. 1 and "one"); '
            "write every label the same way (all numbers or all text)"
        ) from None


def label_names_of(train: Dataset, label_column: str, split_name: str = "train") -> list[str]:
    """Names from a ``ClassLabel`` feature, else the sorted distinct labels of ``train`` (split ``split_name``)."""
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = distinct_labels(train, label_column, split_name)
    if any(v is None for v in values):
        raise PoolftError(f"split {split_name!r} has empty labels in column {label_column!r}; drop or fill those rows")
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def with_number_aliases(index: dict[str, int]) -> dict[str, int]:
    """``index`` plus the other spelling of each whole-number label: "1" also as "1.0" and the reverse.

    A CSV column that once held an empty cell is read (and written by pandas) as floats, so the
    labels a model learned as 0/1 come back as 0.0/1.0; both name the same class.
    """
    aliases = {}
    for name, position in index.items():
        try:
            number = float(name)
        except ValueError:
            continue
        if number.is_integer():
            for alias in (str(int(number)), str(number)):
                if alias not in index:
                    aliases[alias] = position
    return {**index, **aliases}


def encode_labels(split: Dataset, label_column: str, label_names: list[str], split_name: str) -> Dataset:
    """Add an int ``labels`` column indexing ``label_names``; unknown labels are an error."""
    feature = split.features[label_column]
    if isinstance(feature, ClassLabel):
        if list(feature.names) != label_names:
            raise PoolftError(
                f"split {split_name!r} has label names {feature.names} but training has {label_names}; "
                "use the same label set in every split"
            )
        if label_column == "labels":
            return split
        return split.rename_column(label_column, "labels") if "labels" not in split.column_names else split
    index = with_number_aliases({name: i for i, name in enumerate(label_names)})
    values = distinct_labels(split, label_column, split_name)
    if any(v is None for v in values):
        raise PoolftError(f"split {split_name!r} has empty labels in column {label_column!r}; drop or fill those rows")
    seen = {str(v) for v in values}
    unseen = sorted(seen - set(index))
    if unseen:
        raise PoolftError(
            f"split {split_name!r} has label(s) {', '.join(map(repr, unseen[:5]))} never seen in training; "
            "make every evaluation label appear in the training split"
        )

    def to_index(batch: dict[str, list]) -> dict[str, list]:
        return {"labels": [index[str(v)] for v in batch[label_column]]}

    encoded = split.map(to_index, batched=True, desc=f"labels ({split_name})")
    if label_column != "labels":
        encoded = encoded.remove_columns(label_column)
    return encoded


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
