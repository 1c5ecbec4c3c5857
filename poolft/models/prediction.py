"""``poolft predict``: label texts or image files with a saved model, batched by length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.images import processor_size, to_rgb
from ..data.text import TextCollator
from ..errors import PoolftError
from .saved_models import load_saved_classifier


class Classifier:
    """A saved model + preprocessor that returns ``(label, probability)`` per input."""

    def __init__(self, model: Any, preprocessor: Any, task: str) -> None:
        self.model, self.preprocessor, self.task = model, preprocessor, task

    @torch.inference_mode()
    def predict(self, inputs: list[Any], batch_size: int = 64, images: bool = False) -> list[tuple[str, float]]:
        if images != (self.task == "image"):
            kind = "image files (--image)" if self.task == "image" else "texts"
            article = "an" if self.task == "image" else "a"
            raise PoolftError(f"this is {article} {self.task} model; pass {kind}")
        if self.task == "text":
            # tokenize everything once, then batch by token count: similar lengths per batch waste
            # the least compute on padding (sorting by characters leaves ~20% more padded tokens)
            examples = self.tokenize(inputs)
            order = sorted(range(len(inputs)), key=lambda i: len(examples[i]["input_ids"]))
            collate = TextCollator(self.preprocessor)
        else:
            order = list(range(len(inputs)))
        results: list[tuple[str, float]] = [("", 0.0)] * len(inputs)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if self.task == "text":
                batch = collate([examples[i] for i in chunk])
            else:
                batch = self.encode_images([inputs[i] for i in chunk])
            logits = self.model(**batch).logits
            probabilities = logits.float().softmax(dim=-1)
            best = probabilities.max(dim=-1)
            for row, index in enumerate(chunk):
                label = self.model.config.id2label[int(best.indices[row])]
                results[index] = (label, float(best.values[row]))
        return results

    def tokenize(self, texts: list[str]) -> list[dict[str, list[int]]]:
        """One tokenizer call for all texts; per text its unpadded ``input_ids`` (+ mask, type ids)."""
        encoded = self.preprocessor(list(texts), truncation=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{key: encoded[key][row] for key in keys} for row in range(len(texts))]

    def encode_images(self, items: list[str]) -> dict[str, torch.Tensor]:
        height, width = processor_size(self.preprocessor, None)
        pixel_values = self.preprocessor(
            [to_rgb(open_image(path)) for path in items], size={"height": height, "width": width}, return_tensors="np"
        )["pixel_values"]
        return {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values))}


def open_image(path: str) -> Image.Image:
    if not Path(path).is_file():
        raise PoolftError(f"image {path} does not exist; pass existing image files to --image")
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError) as error:
        raise PoolftError(f"image {path} cannot be read ({error}); pass a PNG/JPEG/... file") from None


def load_classifier(folder: str) -> Classifier:
    return Classifier(*load_saved_classifier(folder))
