"""``flatten``: every patch token concatenated in grid order (the image probe's no-pooling control)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets_for_tests import write_image_folder, write_sentiment_csv
from transformers import AutoModelForImageClassification

from poolft import build_pooler
from poolft.cli import main
from poolft.config import load_config
from poolft.training.loop import train


def test_flatten_equals_a_plain_loop_over_the_patches():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, 2 + 4 * 5, 6)).astype(np.float32)  # 2 prefix tokens, a 4x5 grid
    pooler = build_pooler("flatten", 6, grid_size=[4, 5])
    pooled = pooler(torch.from_numpy(states), None, num_prefix_tokens=2, grid_size=(4, 5)).numpy()
    for row in range(3):
        expected = []
        for i in range(4):
            for j in range(5):
                expected.extend(states[row, 2 + i * 5 + j])
        np.testing.assert_array_equal(pooled[row], np.array(expected, dtype=np.float32))
    assert pooler.output_dim == 4 * 5 * 6


@pytest.mark.parametrize(
    ("grid", "mask", "message"),
    [
        ((5, 4), None, "built for a 4x5 patch grid"),
        (None, None, "no grid"),
        ((4, 5), torch.tensor([[1] * 21 + [0]] * 2), "padded rows"),
    ],
)
def test_flatten_refuses_another_grid_and_padding(grid, mask, message):
    pooler = build_pooler("flatten", 6, grid_size=[4, 5])
    with pytest.raises(ValueError, match=message):
        pooler(torch.zeros(2, 22, 6), mask, num_prefix_tokens=2, grid_size=grid)


def test_flatten_needs_a_grid_size():
    with pytest.raises(ValueError, match="needs grid_size"):
        build_pooler("flatten", 6)


def test_flatten_probe_run_fills_in_the_grid_from_the_image_size(tmp_path, tiny_vit_dir):
    images = write_image_folder(tmp_path / "images", {"train": 8, "test": 4})
    config = load_config(
        None,
        [
            f"--model.backbone={tiny_vit_dir}",
            "--model.pooler=flatten",
            f"--data.path={images}",
            "--data.eval_split=test",
            "--data.image_size=32",
            "--train.epochs=1",
            "--train.batch_size=4",
            "--train.freeze_backbone=true",
            "--train.feature_cache=true",
            f"--train.feature_cache_dir={tmp_path / 'cache'}",
            "--train.save_best_model=false",
            "--train.progress=false",
            f"--train.output_dir={tmp_path / 'run'}",
        ],
    )
    metrics = train(config)
    assert metrics["final"]["samples"] == 8
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "run")
    patch = model.config.encoder_config.patch_size
    assert model.config.pooler_options == {"grid_size": [32 // patch, 32 // patch]}
    assert model.classifier.in_features == (32 // patch) ** 2 * model.config.hidden_size


def test_flatten_on_text_is_one_line(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    files = write_sentiment_csv(tmp_path / "data", train_size=8, eval_size=4)
    code = main(
        [
            "train",
            f"--model.backbone={tiny_bert_dir}",
            "--model.pooler=flatten",
            f"--data.data_files={json.dumps(files)}",
            "--data.text_column=text",
            f"--train.output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flatten concatenates a fixed patch grid" in err, err
