"""``tokenize_split``'s own ``datasets`` fingerprint: a cached tokenization is reused only when the
tokenizer, its settings and the data would give the same token ids.

Every expected value is the tokenizer called directly on the texts, not poolft's output.
"""

from __future__ import annotations

import pandas as pd
import pytest
from transformers import AutoTokenizer, BertTokenizer

from poolft.config import DataConfig
from poolft.data.sources import load_splits
from poolft.data.text import tokenize_split, tokenized_fingerprint, tokenizer_identity

TEXTS = ["The Movie was GREAT", "Loved it, truly loved it", "not my kind of film at all, sadly", "Fine"]


@pytest.fixture()
def disk_split(tmp_path):
    """A training split backed by a parquet file, so ``datasets.map`` caches its results on disk."""
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": TEXTS, "label": [1, 1, 0, 1]}).to_parquet(path)
    splits = load_splits(DataConfig(data_files={"train": str(path), "validation": str(path)}, text_column="text"))
    return splits.train


def direct_ids(tokenizer, max_length: int) -> list[list[int]]:
    return tokenizer(TEXTS, truncation=True, max_length=max_length)["input_ids"]


def save_bert_tokenizer(folder, vocab: list[str], lower: bool):
    BertTokenizer(vocab=dict((t, i) for i, t in enumerate(vocab)), do_lower_case=lower).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "loved", "it", ","]
VOCAB += ["truly", "not", "my", "kind", "of", "film", "at", "all", "sadly", "fine", "Movie", "GREAT", "The"]


def test_the_second_run_reuses_the_cached_tokenization(disk_split, tmp_path):
    first = save_bert_tokenizer(tmp_path / "tok", VOCAB, lower=True)
    data = DataConfig(text_column="text", max_length=8)
    encoded = tokenize_split(disk_split, first, data, "train")
    again = tokenize_split(disk_split, AutoTokenizer.from_pretrained(tmp_path / "tok"), data, "train")
    assert encoded.cache_files and again.cache_files == encoded.cache_files
    assert again["input_ids"] == direct_ids(first, 8)


@pytest.mark.parametrize("change", ["max_length", "lowercasing", "vocabulary", "truncation_side"])
def test_anything_that_changes_the_token_ids_misses_the_cache(disk_split, tmp_path, change):
    base = save_bert_tokenizer(tmp_path / "tok", VOCAB, lower=True)
    before = tokenize_split(disk_split, base, DataConfig(text_column="text", max_length=8), "train")
    max_length = 8
    if change == "max_length":
        tokenizer, max_length = base, 5
    elif change == "lowercasing":
        tokenizer = save_bert_tokenizer(tmp_path / "tok", VOCAB, lower=False)  # re-saved in the same folder
    elif change == "vocabulary":  # two words swap ids; the special tokens and every setting stay
        swapped = [{"movie": "great", "great": "movie"}.get(token, token) for token in VOCAB]
        tokenizer = save_bert_tokenizer(tmp_path / "tok", swapped, lower=True)
    else:  # set on the object, not in its saved settings
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
        tokenizer.truncation_side = "left"
    after = tokenize_split(disk_split, tokenizer, DataConfig(text_column="text", max_length=max_length), "train")
    expected = direct_ids(tokenizer, max_length)
    assert expected != before["input_ids"]  # the change matters for these texts
    assert after["input_ids"] == expected
    assert after["length"] == [len(ids) for ids in expected]


def test_a_call_does_not_change_the_identity(tmp_path):
    # a fast tokenizer's backend keeps the last call's truncation and padding: that state is left out
    tokenizer = save_bert_tokenizer(tmp_path / "tok", VOCAB, lower=True)
    before = tokenizer_identity(tokenizer)
    tokenizer(TEXTS, truncation=True, max_length=3, padding="max_length")
    assert tokenizer_identity(tokenizer) == before


def test_a_tokenizer_without_a_serialisable_backend_leaves_hashing_to_datasets(disk_split):
    class PythonOnlyTokenizer:
        pass

    class UnserialisableBackend:  # as tokenizers answers for a custom Python pre-tokenizer
        def to_str(self):
            raise Exception("Custom PreTokenizer cannot be serialized")

    class CustomComponentTokenizer:
        backend_tokenizer = UnserialisableBackend()

    for tokenizer in (PythonOnlyTokenizer(), CustomComponentTokenizer()):
        assert tokenizer_identity(tokenizer) is None
        assert tokenized_fingerprint(disk_split, tokenizer, [len], []) is None


SOURCE = """
def tokenize(batch):
    texts = [t + 'a_constant_no_other_code_holds' for t in batch['a_column_no_other_code_names']]
    return {'ids': [len(t) for t in texts if t not in {'x', 'y', 'z'}]}
"""


def compiled(source: str):
    namespace: dict = {}
    exec(compile(source, "tokenize_source", "exec"), namespace)
    return namespace["tokenize"]


def test_the_code_digest_does_not_follow_reference_counts(disk_split):
    """``marshal.dumps`` marks a constant as shared only when something else holds it, so its bytes
    changed between runs and the caches missed; the fingerprint must not change with who holds what."""
    import marshal

    tokenizer = save_bert_tokenizer(disk_split.cache_files[0]["filename"] + ".tok", VOCAB, lower=False)
    function = compiled(SOURCE)
    before_bytes = marshal.dumps(function.__code__)
    before = tokenized_fingerprint(disk_split, tokenizer, [function], [])
    held = [*function.__code__.co_consts, *function.__code__.co_names]  # a second holder of each constant
    assert marshal.dumps(function.__code__) != before_bytes  # what the old digest hashed did change
    assert tokenized_fingerprint(disk_split, tokenizer, [function], []) == before
    assert held
    # the same source compiled again gives the same digest; another constant gives another
    assert tokenized_fingerprint(disk_split, tokenizer, [compiled(SOURCE)], []) == before
    changed = compiled(SOURCE.replace("'y'", "'w'"))
    assert tokenized_fingerprint(disk_split, tokenizer, [changed], []) != before


def test_the_code_digest_is_the_same_under_another_string_hash_seed():
    """A frozenset constant iterates in the order of the per-process string hash."""
    import os
    import subprocess
    import sys

    script = (
        "import hashlib; from poolft.data.text import code_parts\n"
        f"namespace = {{}}; exec(compile({SOURCE!r}, 'tokenize_source', 'exec'), namespace)\n"
        "print(hashlib.sha256(repr(code_parts(namespace['tokenize'].__code__)).encode()).hexdigest())"
    )
    digests = set()
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        output = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True)
        assert output.returncode == 0, output.stderr
        digests.add(output.stdout.strip())
    assert len(digests) == 1


def test_the_same_tokenizer_read_from_another_path_has_the_same_identity(tmp_path, monkeypatch):
    """Spelt relative or absolute, or copied elsewhere: the same files give the same ids, so the
    tokenize and feature caches must not miss."""
    import shutil

    save_bert_tokenizer(tmp_path / "tok", VOCAB, lower=False)
    shutil.copytree(tmp_path / "tok", tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    identities = [
        tokenizer_identity(AutoTokenizer.from_pretrained(path)) for path in ("tok", str(tmp_path / "tok"), "copy")
    ]
    assert identities[0] == identities[1] == identities[2]
    (tmp_path / "other").mkdir()
    other = save_bert_tokenizer(tmp_path / "other", [*VOCAB, "extra"], lower=False)
    assert tokenizer_identity(other) != identities[0]
