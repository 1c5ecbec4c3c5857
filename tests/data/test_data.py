"""Data: every source kind through ``load_splits``, labels, tokenization and padding, image decoding
and mode conversion, pixel caching and normalisation, and the length-grouping batch sampler."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from datasets_for_tests import write_image_folder
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from poolft.config import DataConfig
from poolft.data.images import ImageCollator, cache_pixels, to_rgb
from poolft.data.sampling import ShuffledBatchSampler
from poolft.data.sources import load_splits
from poolft.data.text import TextCollator, tokenize_split
from poolft.errors import PoolftError

TRAIN_ROWS = [
    {"text": "a good film", "label": "pos"},
    {"text": "bad", "label": "neg"},
    {"text": "the plot was dull", "label": "neg"},
    {"text": "loved it", "label": "pos"},
]
EVAL_ROWS = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]


def write_table(path, rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    suffix = path.suffix
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")  # one JSON array
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    return str(path)


# --- sources ------------------------------------------------------------------------------------


def test_embedded_sst2_sample():
    splits = load_splits(DataConfig())
    assert splits.task == "text"
    assert splits.label_names == ["negative", "positive"]
    assert len(splits.eval) == 872
    assert len(splits.train) > 0
    assert isinstance(splits.eval.features["labels"], ClassLabel)
    assert splits.eval.features["labels"].names == ["negative", "positive"]
    assert set(splits.eval.unique("labels")) == {0, 1}
    assert "sentence" in splits.eval.column_names
    assert splits.description["source"] == "sst2-sample" and splits.description["eval_size"] == 872


def test_embedded_sample_is_capped_by_max_samples():
    splits = load_splits(DataConfig(max_train_samples=10, max_eval_samples=7))
    assert (len(splits.train), len(splits.eval)) == (10, 7)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".json", ".jsonl"])
def test_data_files_of_every_format(tmp_path, suffix):
    files = {
        "train": write_table(tmp_path / f"train{suffix}", TRAIN_ROWS),
        "validation": write_table(tmp_path / f"validation{suffix}", EVAL_ROWS),
    }
    splits = load_splits(DataConfig(data_files=files, text_column="text"))
    assert splits.task == "text"
    assert splits.label_names == ["neg", "pos"]  # sorted training labels
    assert splits.train["text"] == [row["text"] for row in TRAIN_ROWS]
    assert splits.train["labels"] == [1, 0, 0, 1]
    assert splits.eval["labels"] == [1, 0]
    assert "label" not in splits.train.column_names
    assert splits.description["source"] == "files"


def test_folder_of_split_named_files(tmp_path):
    write_table(tmp_path / "train.csv", TRAIN_ROWS)
    write_table(tmp_path / "test.csv", EVAL_ROWS)
    (tmp_path / "README.md").write_text("not data")
    splits = load_splits(DataConfig(path=str(tmp_path), eval_split="test", text_column="text"))
    assert (len(splits.train), len(splits.eval)) == (4, 2)
    assert splits.description["source"] == "folder"
    with pytest.raises(PoolftError, match=r"split 'validation' not found \(have: test, train\)"):
        load_splits(DataConfig(path=str(tmp_path), text_column="text"))


def test_image_folder(tmp_path):
    folder = write_image_folder(tmp_path / "images", {"train": 3, "validation": 2}, mode="RGB")
    splits = load_splits(DataConfig(path=str(folder)))
    assert splits.task == "image"
    assert splits.label_names == ["dark", "light"]  # ClassLabel from the class folders
    assert (len(splits.train), len(splits.eval)) == (6, 4)
    assert sorted(splits.eval["labels"]) == [0, 0, 1, 1]
    assert isinstance(splits.train.features["image"], ImageFeature)
    assert splits.description["source"] == "imagefolder"


def test_label_names_from_classlabel_are_kept_in_their_order(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["zebra", "apple"])})
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=features).to_parquet(tmp_path / "train.parquet")
    Dataset.from_dict({"text": ["c"], "label": [1]}, features=features).to_parquet(tmp_path / "validation.parquet")
    splits = load_splits(DataConfig(path=str(tmp_path), text_column="text"))
    assert splits.label_names == ["zebra", "apple"]  # not sorted: the ClassLabel's order
    assert splits.eval["labels"] == [1]


def test_integer_labels_are_sorted_as_numbers(tmp_path):
    rows = [{"text": t, "label": v} for t, v in (("a", 10), ("b", 2), ("c", 1), ("d", 2))]
    files = {
        "train": write_table(tmp_path / "t.jsonl", rows),
        "validation": write_table(tmp_path / "v.jsonl", rows[:2]),
    }
    splits = load_splits(DataConfig(data_files=files, text_column="text"))
    assert splits.label_names == ["1", "2", "10"]
    assert splits.train["labels"] == [2, 1, 0, 1]
    assert splits.eval["labels"] == [2, 1]


def test_whole_number_labels_match_across_int_and_float_columns():
    """A model that learned labels 1/2/10 evaluates a file where pandas wrote them 1.0/2.0/10.0 (and
    the reverse); an empty label in an evaluated split names that split."""
    from datasets import Dataset

    from poolft.data.sources import encode_labels

    floats = Dataset.from_dict({"label": [10.0, 1.0, 2.0]})
    assert encode_labels(floats, "label", ["1", "2", "10"], "validation")["labels"] == [2, 0, 1]
    ints = Dataset.from_dict({"label": [10, 1]})
    assert encode_labels(ints, "label", ["1.0", "10.0"], "validation")["labels"] == [1, 0]
    with pytest.raises(PoolftError, match=r"split 'validation' has label\(s\) '2.5' never seen in training"):
        encode_labels(Dataset.from_dict({"label": [1.0, 2.5]}), "label", ["1", "2"], "validation")
    with pytest.raises(PoolftError, match=r"split 'validation' has empty labels in column 'label'"):
        encode_labels(Dataset.from_dict({"label": [1.0, None]}), "label", ["1", "2"], "validation")


def test_evaluation_label_unseen_in_training_is_an_error(tmp_path):
    files = {
        "train": write_table(tmp_path / "train.csv", TRAIN_ROWS),
        "validation": write_table(tmp_path / "validation.csv", EVAL_ROWS + [{"text": "meh", "label": "neutral"}]),
    }
    with pytest.raises(PoolftError, match=r"split 'validation' has label\(s\) 'neutral' never seen in training"):
        load_splits(DataConfig(data_files=files, text_column="text"))


def test_missing_column_names_the_existing_ones(tmp_path):
    files = {
        "train": write_table(tmp_path / "train.csv", TRAIN_ROWS),
        "validation": write_table(tmp_path / "validation.csv", EVAL_ROWS),
    }
    with pytest.raises(
        PoolftError, match=r"column 'sentence' not in split 'train' \(columns: text, label\); set data.text_column"
    ):
        load_splits(DataConfig(data_files=files, text_column="sentence"))
    with pytest.raises(
        PoolftError, match=r"column 'lable' not in split 'train' \(columns: text, label\); set data.label_column"
    ):
        load_splits(DataConfig(data_files=files, text_column="text", label_column="lable"))


def test_single_class_training_split_is_an_error(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}]
    files = {"train": write_table(tmp_path / "train.csv", rows), "validation": write_table(tmp_path / "v.csv", rows)}
    with pytest.raises(PoolftError, match="only one label"):
        load_splits(DataConfig(data_files=files, text_column="text"))


# --- text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_empty_and_none_texts_tokenize_and_pad(tokenizer):
    texts = ["the movie was great", "", None, "loved it"]
    split = Dataset.from_dict({"text": texts, "labels": [0, 1, 0, 1], "extra": [1, 2, 3, 4]})
    encoded = tokenize_split(split, tokenizer, DataConfig(text_column="text"), "train")
    assert set(encoded.column_names) == {"labels", "input_ids", "attention_mask", "token_type_ids", "length"}
    lengths = encoded["length"]
    assert lengths[1] == lengths[2] == 2  # [CLS] [SEP]
    assert lengths == [len(ids) for ids in encoded["input_ids"]]
    assert tokenizer.padding_side == "right"
    batch = TextCollator(tokenizer)(list(encoded))
    longest = max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, longest)
    for row, length in enumerate(lengths):
        expected_mask = [1] * length + [0] * (longest - length)
        assert batch["attention_mask"][row].tolist() == expected_mask
        assert batch["input_ids"][row, :length].tolist() == list(encoded[row]["input_ids"])
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["token_type_ids"][row, length:] == 0).all()
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.cls_token_id] * 4
    assert batch["labels"].tolist() == [0, 1, 0, 1]


def test_all_none_text_column_tokenizes(tokenizer):
    split = Dataset.from_dict({"text": [None, None], "labels": [0, 1]})
    encoded = tokenize_split(split, tokenizer, DataConfig(text_column="text"), "validation")
    assert encoded["length"] == [2, 2]


def test_truncation_and_right_padding_under_a_left_padding_tokenizer(tokenizer):
    texts = ["the actors were not bad but the ending was really the worst", "loved it"]
    split = Dataset.from_dict({"text": texts, "labels": [0, 1]})
    encoded = tokenize_split(split, tokenizer, DataConfig(text_column="text", max_length=6), "train")
    assert max(encoded["length"]) == 6
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    assert tokenizer.pad(list(encoded), return_tensors="pt")["attention_mask"][1, 0] == 0  # it pads left itself
    batch = TextCollator(tokenizer)(list(encoded))
    # ... poolft pads on the right all the same: an encoder counts positions from the first column
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["input_ids"][1, :4].tolist() == encoded[1]["input_ids"]


def test_non_text_column_is_an_error(tokenizer):
    split = Dataset.from_dict({"text": [1, 2], "labels": [0, 1]})
    with pytest.raises(PoolftError, match="not text; set data.text_column"):
        tokenize_split(split, tokenizer, DataConfig(text_column="text"), "train")


# --- images -------------------------------------------------------------------------------------

SIZE = (5, 4)  # width, height


def gradient(dtype, low, high) -> np.ndarray:
    return np.linspace(low, high, SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]).astype(dtype)


def assert_rgb(image: Image.Image) -> np.ndarray:
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == SIZE
    array = np.asarray(converted)
    assert array.shape == (SIZE[1], SIZE[0], 3) and array.dtype == np.uint8
    return array


def test_gray_becomes_three_equal_channels():
    array = assert_rgb(Image.fromarray(gradient(np.uint8, 0, 200), "L"))
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array[0, 0, 0] == 0 and array[-1, -1, 0] == 200


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(mode):
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent
    rgba[0, 1, 3] = 128  # half transparent
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    array = assert_rgb(image).astype(int)
    assert array[0, 0].tolist() == [255, 255, 255]
    opaque = np.asarray(image.convert("RGBA"))[1, 1, :3].astype(int)
    assert array[1, 1].tolist() == opaque.tolist()  # opaque pixels keep their colour
    assert all(opaque[c] <= array[0, 1, c] <= 255 for c in range(3))  # half way to white
    assert array[0, 1].tolist() != opaque.tolist() and array[0, 1].tolist() != [255, 255, 255]


def test_palette_with_and_without_transparency():
    image = Image.new("P", SIZE, 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((4, 3), 1)
    array = assert_rgb(image)
    assert array[0, 0].tolist() == [255, 0, 0] and array[3, 4].tolist() == [0, 255, 0]
    image.info["transparency"] = 0  # palette entry 0 (red) is transparent
    array = assert_rgb(image)
    assert array[0, 0].tolist() == [255, 255, 255] and array[3, 4].tolist() == [0, 255, 0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(gradient(np.uint16, 0, 60000)),  # I;16
        lambda: Image.fromarray(gradient(np.int32, -5000, 100000)),  # I
        lambda: Image.fromarray(gradient(np.float32, -1.0, 3.5)),  # F
    ],
    ids=["I;16", "I", "F"],
)
def test_high_depth_images_are_rescaled_not_clipped(make):
    image = make()
    assert image.mode in ("I;16", "I", "F")
    array = assert_rgb(image).astype(int)
    gray = array[..., 0].ravel()
    assert (array[..., 0] == array[..., 2]).all()
    assert gray[0] == 0 and gray[-1] == 255  # the full range is used
    assert (np.diff(gray) >= 0).all() and len(set(gray.tolist())) > 10  # order and detail survive


def test_sixteen_bit_values_above_255_stay_distinct():
    image = Image.fromarray(np.array([[0, 1000, 3000, 65535]] * 2, dtype=np.uint16))
    assert image.mode == "I;16"
    row = np.asarray(to_rgb(image))[0, :, 0].tolist()
    assert row[0] == 0 and row[-1] == 255 and 0 < row[1] < row[2] < 255


def test_cmyk_and_bilevel():
    array = assert_rgb(Image.new("CMYK", SIZE, (0, 0, 0, 0)))
    assert (array == 255).all()  # no ink is white
    array = assert_rgb(Image.new("CMYK", SIZE, (0, 0, 0, 255)))
    assert (array == 0).all()
    bilevel = Image.new("1", SIZE, 0)
    bilevel.putpixel((4, 3), 1)
    array = assert_rgb(bilevel)
    assert array[0, 0].tolist() == [0, 0, 0] and array[3, 4].tolist() == [255, 255, 255]


def test_rgb_is_returned_unchanged():
    image = Image.new("RGB", SIZE, (1, 2, 3))
    assert to_rgb(image) is image


@pytest.fixture(scope="module")
def image_processor(tiny_vit_dir):
    return AutoImageProcessor.from_pretrained(
        tiny_vit_dir, backend="pil", image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.125]
    )


def image_split() -> Dataset:
    images = [
        Image.new("RGB", (1, 1), (10, 20, 30)),
        Image.new("L", (3, 3), 7),
        Image.new("RGBA", (30, 10), (0, 0, 0, 0)),
        Image.fromarray(gradient(np.uint16, 0, 60000)),
        Image.new("CMYK", (7, 9), (0, 0, 0, 255)),
    ]
    features = Features({"image": ImageFeature(), "labels": Value("int64")})
    return Dataset.from_dict({"image": images, "labels": [0, 1, 0, 1, 0]}, features=features)


@pytest.mark.parametrize("image_size, expected", [(None, 28), (12, 12)])
def test_cache_pixels_is_uint8_at_the_configured_size(image_processor, image_size, expected):
    cached = cache_pixels(image_split(), image_processor, DataConfig(image_size=image_size), "train")
    assert cached.column_names == ["pixels", "labels"]
    assert cached.features["pixels"] == Array3D((3, expected, expected), "uint8")
    assert cached.data.column("pixels").type.value_type == pa.uint8()  # stored as bytes, not floats
    pixels = cached.with_format("numpy")[:]["pixels"]
    assert pixels.shape == (5, 3, expected, expected)
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert pixels[0, :, 0, 0].tolist() == [10, 20, 30]  # a 1x1 image fills the frame
    assert (pixels[1] == 7).all()
    assert (pixels[2] == 255).all()  # transparent -> white
    assert (pixels[4] == 0).all()
    assert cached["labels"] == [0, 1, 0, 1, 0]


def test_image_collator_normalises_with_the_processor_statistics(image_processor):
    cached = cache_pixels(image_split(), image_processor, DataConfig(image_size=8), "train")
    batch = ImageCollator(image_processor)(list(cached))
    values = batch["pixel_values"]
    assert values.dtype == torch.float32 and values.shape == (5, 3, 8, 8)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 0.125])
    expected = (torch.tensor([10, 20, 30]) / 255 - mean) / std
    torch.testing.assert_close(values[0, :, 3, 3], expected)
    torch.testing.assert_close(values[2, :, 0, 0], (1 - mean) / std)
    assert batch["labels"].tolist() == [0, 1, 0, 1, 0]


def test_unreadable_image_is_an_error(image_processor, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    split = Dataset.from_dict({"image": [str(broken)], "labels": [0]})
    with pytest.raises(PoolftError, match=r"broken.png in split 'train' cannot be read .*; remove or replace the file"):
        cache_pixels(split, image_processor, DataConfig(), "train")


# --- length grouping ----------------------------------------------------------------------------


def skewed_lengths(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(512, 2 + int(rng.lognormvariate(3.0, 1.0))) for _ in range(count)]


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("count", [1000, 1003, 5])
def test_every_index_once_and_short_batch_last(group_by_length, count):
    lengths = skewed_lengths(count)
    sampler = ShuffledBatchSampler(lengths, count, 16, seed=3, group_by_length=group_by_length, mega_factor=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(count))
        assert all(len(batch) == 16 for batch in batches[:-1])
        assert 1 <= len(batches[-1]) <= 16
        assert len(batches[-1]) == (count % 16 or 16)


def test_drop_last_drops_the_short_batch():
    sampler = ShuffledBatchSampler(skewed_lengths(100), 100, 16, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 and all(len(b) == 16 for b in batches)


def test_order_depends_only_on_seed_and_epoch():
    lengths = skewed_lengths(500)

    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = ShuffledBatchSampler(lengths, 500, 8, seed=seed)
        sampler.set_epoch(epoch)
        return sampler.batches()

    assert batches(1, 0) == batches(1, 0)
    assert batches(1, 4) == batches(1, 4)
    assert batches(1, 0) != batches(1, 1)
    assert batches(1, 0) != batches(2, 0)
    sampler = ShuffledBatchSampler(lengths, 500, 8, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # set_epoch changes the order
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_length_grouping_wastes_much_less_padding():
    lengths = skewed_lengths(4000, seed=5)
    grouped = ShuffledBatchSampler(lengths, 4000, 32, seed=0, group_by_length=True)
    plain = ShuffledBatchSampler(lengths, 4000, 32, seed=0, group_by_length=False)
    real = sum(lengths)
    grouped_tokens = padded_tokens(grouped.batches(), lengths)
    plain_tokens = padded_tokens(plain.batches(), lengths)
    assert grouped_tokens < 0.5 * plain_tokens
    assert grouped_tokens < 1.3 * real  # close to no padding at all
    # the batch order is still shuffled: batches of mixed lengths follow each other
    maxima = [max(lengths[i] for i in batch) for batch in grouped.batches()]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".json", ".jsonl"])
def test_data_file_without_rows_is_an_error(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    if suffix == ".parquet":
        pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(empty)
    elif suffix in (".csv", ".tsv"):
        empty.write_text("text,label\n\n" if suffix == ".csv" else "text\tlabel\n", encoding="utf-8")
    else:
        empty.write_text("[]\n" if suffix == ".json" else "\n", encoding="utf-8")
    files = {"train": write_table(tmp_path / f"train{suffix}", TRAIN_ROWS), "validation": str(empty)}
    with pytest.raises(PoolftError, match=r"empty\.\w+ for split 'validation' has no rows; add examples"):
        load_splits(DataConfig(data_files=files, text_column="text"))


def test_non_utf8_file_is_named_with_the_offending_byte(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_bytes("text,label\nna\xefve,pos\nbad,neg\n".encode("latin-1"))
    files = {"train": str(bad), "validation": write_table(tmp_path / "validation.csv", EVAL_ROWS)}
    with pytest.raises(PoolftError, match=r"train.csv for split 'train' is not valid UTF-8 \(byte 0xef at offset 13\)"):
        load_splits(DataConfig(data_files=files, text_column="text"))


def test_image_folder_without_class_folders_is_an_error(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(tmp_path / split / f"{i}.png")
    with pytest.raises(PoolftError, match=r"gives no labels .*<split>/<class>/<image>"):
        load_splits(DataConfig(path=str(tmp_path)))


def test_training_split_with_one_present_class_is_an_error(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": ["a", "b"], "label": [1, 1]}, features=features).to_parquet(tmp_path / "train.parquet")
    Dataset.from_dict({"text": ["c"], "label": [0]}, features=features).to_parquet(tmp_path / "validation.parquet")
    with pytest.raises(PoolftError, match=r"only one label \('pos'\)"):
        load_splits(DataConfig(path=str(tmp_path), text_column="text"))


def test_held_out_rows_match_datasets_train_test_split():
    from datasets import Dataset

    from poolft.data.sources import hold_out

    split = Dataset.from_dict({"x": list(range(1003))})
    reference = split.train_test_split(test_size=0.1, seed=0, shuffle=True)
    rows = hold_out(split, 0.1)
    assert rows.eval_rows == reference["test"]["x"] and rows.train_rows == reference["train"]["x"]
    assert sorted(rows.train_rows + rows.eval_rows) == list(range(1003))


def test_a_hold_out_that_takes_a_rare_class_names_the_hold_out(tmp_path):
    """The rate search holds out a share of the training rows; when it takes every example of a class,
    the error says so (the user's training file does have that class)."""
    import csv

    from poolft.data.sources import hold_out

    rows = 20
    probe = Dataset.from_dict({"x": list(range(rows))})
    rare_row = hold_out(probe, 0.25).eval_rows[0]  # a row the seeded hold-out takes
    labels = ["a" if i % 2 else "b" for i in range(rows)]
    labels[rare_row] = "c"
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([f"text {i}", label] for i, label in enumerate(labels))
    files = {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "train.csv")}
    with pytest.raises(
        PoolftError,
        match=r"held-out share \(data.holdout_fraction 0.25\) took every training example "
        r"of label\(s\) 'c'",
    ):
        load_splits(DataConfig(data_files=files, text_column="text", holdout_fraction=0.25))
    assert load_splits(DataConfig(data_files=files, text_column="text")).label_names == ["a", "b", "c"]


def test_a_hold_out_needs_no_evaluation_split(tmp_path):
    """data.holdout_fraction evaluates on a share of the training split: a data set with a training
    split alone is enough, and the evaluated rows are the held-out ones (datasets' own split)."""
    labels = ["a" if i % 3 else "b" for i in range(30)]
    rows = pd.DataFrame({"text": [f"text {i}" for i in range(30)], "label": labels})
    rows.to_csv(tmp_path / "train.csv", index=False)
    config = DataConfig(data_files={"train": str(tmp_path / "train.csv")}, text_column="text", holdout_fraction=0.2)
    splits = load_splits(config)
    reference = Dataset.from_dict({"row": list(range(30))}).train_test_split(test_size=0.2, seed=0, shuffle=True)
    assert splits.eval["text"] == [f"text {i}" for i in reference["test"]["row"]]
    assert splits.train["text"] == [f"text {i}" for i in reference["train"]["row"]]
    with pytest.raises(PoolftError, match=r"split 'validation' not found \(have: train\)"):
        load_splits(DataConfig(data_files={"train": str(tmp_path / "train.csv")}, text_column="text"))
