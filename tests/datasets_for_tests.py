"""Small synthetic datasets on disk for trainer tests (learnable in a few steps)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

POSITIVE = ["good", "great", "fine", "nice", "fun", "love", "loved", "like", "liked", "best"]
NEGATIVE = ["bad", "awful", "boring", "dull", "poor", "worst", "hate", "hated"]
FILLER = ["the", "a", "movie", "film", "story", "plot", "was", "is", "very", "so", "and"]


def sentiment_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Sentences whose label is set by one sentiment word among 1-12 filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 12))]
        words.append(rng.choice(POSITIVE if positive else NEGATIVE))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def write_sentiment_csv(folder: Path, train_size: int = 256, eval_size: int = 48) -> dict[str, str]:
    """``train.csv`` and ``validation.csv``; returns the data_files mapping."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size, seed in (("train", train_size, 0), ("validation", eval_size, 1)):
        path = folder / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(size, seed))
        files[split] = str(path)
    return files


def write_image_folder(folder: Path, per_class: dict[str, int], mode: str = "L") -> Path:
    """``folder/<split>/<class>/<i>.png`` with dark vs light noisy images (20x24 px)."""
    for split, count in per_class.items():
        for label, level in (("dark", 50), ("light", 200)):
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = np.random.RandomState(i).randn(20, 24) * 20 + level
                Image.fromarray(np.clip(noise, 0, 255).astype("uint8"), "L").convert(mode).save(target / f"{i}.png")
    return folder
