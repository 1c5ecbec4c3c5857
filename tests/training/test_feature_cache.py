"""The probe track's feature cache: its key changes with everything the states depend on, and only then.

Each key component is changed alone and must give another cache folder; the same setup must reuse
the cache without a backbone pass (counted with a forward hook). End to end, a bf16 run and then
an fp32 run of the same config must not share states: the fp32 run's cache equals a fresh fp32
computation of the encoder, done here with transformers directly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from datasets_for_tests import write_image_folder, write_sentiment_csv
from transformers import AutoModel, AutoTokenizer, ViTImageProcessor

import poolft.training.feature_cache as feature_cache
from poolft.config import DataConfig, load_config
from poolft.data.images import cache_pixels, processor_for_image_size
from poolft.data.inputs import make_collator
from poolft.data.text import tokenize_split
from poolft.errors import PoolftError
from poolft.models.modeling import PoolftForImageClassification, PoolftForSequenceClassification
from poolft.training.feature_cache import cache_folder, cache_key, cached_loader_inputs
from poolft.training.loop import train

TEXTS = ["good movie", "a bad film", "the plot was very dull and boring", "loved it", "fine"]


def text_model(backbone: Path, **options) -> PoolftForSequenceClassification:
    return PoolftForSequenceClassification.from_backbone(str(backbone), pooler="mean", num_labels=2, **options).eval()


def text_split(tokenizer, max_length: int = 16) -> Dataset:
    raw = Dataset.from_dict({"text": TEXTS, "labels": [1, 0, 0, 1, 1]})
    return tokenize_split(raw, tokenizer, DataConfig(text_column="text", max_length=max_length), "train")


def folder_for(model, preprocessor, split, root, *, storage="float16", autocast=None, device="cpu") -> Path:
    key = cache_key(model, preprocessor, storage_dtype=storage, autocast_dtype=autocast, device=device)
    return cache_folder(str(root), key, split)


def count_backbone_passes(model) -> list[int]:
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def build(model, tokenizer, split, root, storage="float32"):
    collator = make_collator(tokenizer, "text")
    lengths = (split["length"],)
    return cached_loader_inputs(model, (split,), collator, "text", lengths, str(root), storage, tokenizer)[0]


# ----------------------------------------------------------------------------------------------
# one key component at a time
# ----------------------------------------------------------------------------------------------


def test_each_text_key_component_gives_another_folder(tiny_bert_dir, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = text_model(tiny_bert_dir)
    split = text_split(tokenizer)
    base = folder_for(model, tokenizer, split, tmp_path)
    # the same everything (a model loaded again from the same folder, the split tokenized again)
    again = folder_for(
        text_model(tiny_bert_dir), AutoTokenizer.from_pretrained(tiny_bert_dir), text_split(tokenizer), tmp_path
    )
    assert again == base

    variants = {
        "compute dtype (autocast)": folder_for(model, tokenizer, split, tmp_path, autocast=torch.bfloat16),
        "fp16 autocast": folder_for(model, tokenizer, split, tmp_path, autocast=torch.float16),
        "storage dtype": folder_for(model, tokenizer, split, tmp_path, storage="float32"),
        "device type": folder_for(model, tokenizer, split, tmp_path, device="cuda"),
        "max length (split fingerprint)": folder_for(model, tokenizer, text_split(tokenizer, max_length=4), tmp_path),
        "hidden layers": folder_for(text_model(tiny_bert_dir, hidden_layers=[-1, -2]), tokenizer, split, tmp_path),
        "layer combine": folder_for(text_model(tiny_bert_dir, layer_combine="weighted"), tokenizer, split, tmp_path),
        "attention kernel": folder_for(
            text_model(tiny_bert_dir, attn_implementation="eager"), tokenizer, split, tmp_path
        ),
    }
    if model.encoder.config._attn_implementation == "eager":  # the default kernel must differ from the variant
        variants["attention kernel"] = folder_for(
            text_model(tiny_bert_dir, attn_implementation="sdpa"), tokenizer, split, tmp_path
        )
    perturbed = text_model(tiny_bert_dir)
    with torch.no_grad():
        perturbed.encoder.embeddings.word_embeddings.weight[5, 0] += 1e-3
    variants["encoder weights"] = folder_for(perturbed, tokenizer, split, tmp_path)
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    variants["padding side"] = folder_for(model, left, split, tmp_path)
    monkeypatch.setattr(feature_cache, "CACHE_FORMAT", feature_cache.CACHE_FORMAT + 1)
    variants["format version"] = folder_for(model, tokenizer, split, tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    variants["transformers version"] = folder_for(model, tokenizer, split, tmp_path)
    monkeypatch.undo()

    for what, folder in variants.items():
        assert folder != base, what
    assert len(set(variants.values())) == len(variants)  # and from each other
    assert folder_for(model, tokenizer, split, tmp_path) == base  # nothing above leaked into the model


def test_max_length_is_in_the_split_fingerprint(tiny_bert_dir):
    """The tokenized split's fingerprint (part of the key) follows max_length and nothing else."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert text_split(tokenizer, 16)._fingerprint == text_split(tokenizer, 16)._fingerprint
    assert text_split(tokenizer, 16)._fingerprint != text_split(tokenizer, 4)._fingerprint


def image_split(tmp_path: Path) -> Dataset:
    folder = write_image_folder(tmp_path / "images", {"train": 2})
    paths = sorted(str(p) for p in (folder / "train").rglob("*.png"))
    return Dataset.from_dict({"image": paths, "labels": [0, 0, 1, 1]})


def test_image_size_and_processor_settings_change_the_folder(tiny_vit_dir, tmp_path):
    raw = image_split(tmp_path)
    processor = ViTImageProcessor.from_pretrained(tiny_vit_dir)
    model = PoolftForImageClassification.from_backbone(str(tiny_vit_dir), pooler="window", num_labels=2).eval()

    def pixels(image_size, image_processor):
        return cache_pixels(raw, processor_for_image_size(image_processor, image_size), DataConfig(), "train")

    split = pixels(None, processor)
    base = folder_for(model, processor, split, tmp_path)
    same = ViTImageProcessor.from_pretrained(tiny_vit_dir)
    assert folder_for(model, same, pixels(None, same), tmp_path) == base
    # the decoded pixels' fingerprint follows the image size (resize) ...
    assert pixels(14, processor)._fingerprint != split._fingerprint
    assert folder_for(model, processor_for_image_size(processor, 14), pixels(14, processor), tmp_path) != base
    # ... and the key follows the processor's settings even on the same pixels: the collator
    # normalises with them after the pixels are cached
    normalised = copy.deepcopy(processor)
    normalised.image_mean = [0.4, 0.5, 0.5]
    assert folder_for(model, normalised, split, tmp_path) != base


@pytest.mark.parametrize("options", [{}, {"grid": True}, {"grid": False}, {"mode": "sliding"}], ids=str)
def test_image_window_layouts_on_the_model_its_reload_and_cached_states(tiny_vit_dir, tmp_path, options):
    """grid=True pools k x k bins, grid=False / sliding pool 1-D windows; a saved model and the probe
    head on cached states give the logits of the live model, which equal the head applied by hand."""
    model = PoolftForImageClassification.from_backbone(
        str(tiny_vit_dir), pooler="window", num_labels=2, pooler_options={"levels": [1, 2], **options}
    ).eval()
    grid = model.config.pooler_options["grid"]
    assert grid == (options.get("grid", True) and options.get("mode") != "sliding")
    pixel_values = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values).logits
        states = model.encoder(pixel_values).last_hidden_state  # 1 CLS + 4 x 4 patches
        pooled = model.pooler(states, None, num_prefix_tokens=1, grid_size=(4, 4) if grid else None)
        by_hand = model.classifier(pooled)
    torch.testing.assert_close(logits, by_hand, rtol=0, atol=0)

    model.save_pretrained(tmp_path / "saved")
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.pooler_options == model.config.pooler_options
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, logits, rtol=0, atol=0)

    head = feature_cache.HeadOnCachedStates(model, {"num_prefix_tokens": 1, "grid_size": [4, 4]})
    with torch.no_grad():
        cached = head(states, torch.ones(3, 17, dtype=torch.long)).logits
    torch.testing.assert_close(cached, logits, rtol=1e-6, atol=1e-6)


def test_a_weighted_layer_mix_is_refused_on_cached_states(tiny_bert_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = text_model(tiny_bert_dir, hidden_layers=[-1, -2], layer_combine="weighted")
    with pytest.raises(PoolftError, match="layer_combine") as error:
        build(model, tokenizer, text_split(tokenizer), tmp_path)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# reuse: the same everything runs the backbone once
# ----------------------------------------------------------------------------------------------


def test_same_setup_reuses_the_cache_and_a_change_recomputes(tiny_bert_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    split = text_split(tokenizer)
    model = text_model(tiny_bert_dir)
    passes = count_backbone_passes(model)
    first = build(model, tokenizer, split, tmp_path)
    assert len(passes) > 0
    computed = len(passes)

    fresh = text_model(tiny_bert_dir)  # loaded again: same weights, same key
    fresh_passes = count_backbone_passes(fresh)
    second = build(fresh, tokenizer, text_split(tokenizer), tmp_path)
    assert fresh_passes == [] and second.folder == first.folder
    assert np.array_equal(np.asarray(second.states), np.asarray(first.states))

    third = build(fresh, tokenizer, split, tmp_path, storage="float16")  # one thing changed
    assert len(fresh_passes) == computed and third.folder != first.folder
    key = json.loads((third.folder / "meta.json").read_text())["key"]
    assert key["storage_dtype"] == "float16" and key["format"] == feature_cache.CACHE_FORMAT


def test_selected_layers_are_cached_as_the_model_combines_them(tiny_bert_dir, tmp_path):
    """hidden_layers with a fixed mean: the cache holds the mean of those layers (not the last one)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = text_model(tiny_bert_dir, hidden_layers=[-1, -2])
    cache = build(model, tokenizer, text_split(tokenizer), tmp_path)
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    encoded = tokenizer(TEXTS[2], return_tensors="pt", truncation=True, max_length=16)
    with torch.no_grad():
        layers = encoder(**encoded, output_hidden_states=True).hidden_states
    expected = ((layers[-1] + layers[-2]) / 2)[0].numpy()
    np.testing.assert_allclose(cache[2]["states"], expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# end to end: bf16 then fp32 does not reuse the bf16 states
# ----------------------------------------------------------------------------------------------


def test_fp32_run_after_bf16_run_caches_fp32_states(tiny_bert_dir, tmp_path):
    files = write_sentiment_csv(tmp_path / "data", train_size=24, eval_size=8)
    cache_root = tmp_path / "cache"
    caches = {}
    for precision in ("bf16", "no"):
        before = set(cache_root.iterdir()) if cache_root.exists() else set()
        config = load_config(
            None,
            [
                f"--model.backbone={tiny_bert_dir}",
                f"--data.data_files={json.dumps(files)}",
                "--data.text_column=text",
                "--data.max_length=32",
                "--train.epochs=1",
                "--train.batch_size=8",
                "--train.freeze_backbone=true",
                "--train.feature_cache=true",
                f"--train.feature_cache_dir={cache_root}",
                "--train.feature_cache_dtype=float32",
                f"--train.mixed_precision={precision}",
                "--train.save_best_model=false",
                "--train.progress=false",
                f"--train.output_dir={tmp_path / precision}",
            ],
        )
        train(config)
        created = set(cache_root.iterdir()) - before
        assert len(created) == 2, precision  # train and validation, computed for this precision
        caches[precision] = {json.loads((f / "meta.json").read_text())["examples"]: f for f in created}[24]

    # a fresh fp32 computation with transformers alone, one text at a time (no padding)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    texts = [line.split(",")[0] for line in Path(files["train"]).read_text().splitlines()[1:]]
    expected = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=32)
            expected.append(encoder(**encoded).last_hidden_state[0].numpy())
    expected = np.concatenate(expected)
    fp32 = np.load(caches["no"] / "states.npy")
    bf16 = np.load(caches["bf16"] / "states.npy")
    assert fp32.shape == bf16.shape == expected.shape
    np.testing.assert_allclose(fp32, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(bf16 - expected).max() > 1e-3  # what reusing the bf16 cache would have given


def test_weights_digest_is_the_files_sha256_and_follows_a_rewrite(tmp_path):
    import hashlib

    folder = tmp_path / "backbone"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"first weights")
    expected = hashlib.sha256(b"first weights").hexdigest()
    assert feature_cache.weights_digest(str(folder)) == expected
    assert feature_cache.weights_digest(str(folder)) == expected  # the second call is remembered
    (folder / "model.safetensors").write_bytes(b"other weights, longer")
    assert feature_cache.weights_digest(str(folder)) == hashlib.sha256(b"other weights, longer").hexdigest()
    assert feature_cache.weights_digest("org/name-on-the-hub") == hashlib.sha256(b"org/name-on-the-hub").hexdigest()


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_batch_read_from_the_cache_is_its_rows_right_padded(tmp_path, multi_label):
    """One gather per batch returns each row's own span; the collator pads them as a plain loop does."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=12)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = rng.standard_normal((offsets[-1], 5)).astype(np.float16)
    labels = (rng.random((12, 3)) > 0.5).astype(np.float32) if multi_label else rng.integers(0, 4, size=12)
    np.save(tmp_path / "states.npy", states)
    np.save(tmp_path / "offsets.npy", offsets)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")

    view = feature_cache.CachedStates(tmp_path).rows([11, 3, 4, 0, 7])  # a held-out style row view
    batch = [4, 0, 2, 2]  # rows of the view, one twice (a filler copy)
    read = view.__getitems__(batch)
    expected_rows = [[11, 3, 4, 0, 7][i] for i in batch]
    for item, row in zip(read, expected_rows, strict=True):
        np.testing.assert_array_equal(item["states"], states[offsets[row] : offsets[row + 1]].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(item["labels"]), labels[row])
    np.testing.assert_array_equal(view[batch[1]]["states"], read[1]["states"])  # one row alone

    collated = feature_cache.CachedStatesCollator()(read)
    longest = max(lengths[row] for row in expected_rows)
    padded = torch.zeros(len(batch), longest, 5)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, row in enumerate(expected_rows):
        for t in range(lengths[row]):
            padded[i, t] = torch.tensor(states[offsets[row] + t].astype(np.float32))
            mask[i, t] = 1
    torch.testing.assert_close(collated["hidden_states"], padded, rtol=0, atol=0)
    torch.testing.assert_close(collated["attention_mask"], mask, rtol=0, atol=0)
    assert collated["labels"].tolist() == [labels[row].tolist() for row in expected_rows]


def test_a_half_written_cache_of_a_dead_process_is_removed(tmp_path):
    """An interrupted build leaves ``.tmp-<folder>-<pid>``; the next build of that folder removes it,
    but not one a live process is writing."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "cache" / "0123abcd"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder.parent / f".tmp-{folder.name}-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    (stale / "states.npy").write_bytes(b"half")
    alive = folder.parent / f".tmp-{folder.name}-{os.getppid()}"  # this test's parent: alive
    alive.mkdir()
    feature_cache.remove_stale_temporaries(folder)
    assert not stale.exists() and alive.exists()
