"""``poolft predict``: label texts or image files with a saved model, batched by length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from ..data.images import to_rgb
from ..data.labels import MULTI_LABEL
from ..data.text import TextCollator
from ..errors import PoolftError
from .backbones import max_positions
from .onnx_model import is_onnx_export, load_onnx_classifier
from .saved_models import load_saved_classifier

#: ``model_max_length`` at or above this means "no limit" (transformers' sentinel is 1e30)
UNBOUNDED_LENGTH = 10**9


class Classifier:
    """A saved model + preprocessor that returns ``(label, probability)`` per input, or every label's score."""

    def __init__(self, model: Any, preprocessor: Any, task: str) -> None:
        self.model, self.preprocessor, self.task = model, preprocessor, task

    @property
    def multi_label(self) -> bool:
        """A multi-label model: independent sigmoid scores, every label above 0.5 applies."""
        return self.model.config.problem_type == MULTI_LABEL

    def predict(self, inputs: list[Any], batch_size: int = 64, images: bool = False) -> list[tuple[str, float]]:
        """Per input its most likely label and that label's score (softmax, or sigmoid if multi-label)."""
        results = []
        for row in self.scores(inputs, batch_size, images):
            best = int(row.argmax())
            results.append((self.model.config.id2label[best], float(row[best])))
        return results

    def predict_all(self, inputs: list[Any], batch_size: int = 64, images: bool = False) -> list[dict[str, float]]:
        """Per input every label with its score, highest first (``pipeline(..., top_k=None)``'s scores)."""
        id2label = self.model.config.id2label
        return [
            dict(sorted(((id2label[i], float(score)) for i, score in enumerate(row)), key=lambda pair: -pair[1]))
            for row in self.scores(inputs, batch_size, images)
        ]

    @torch.inference_mode()
    def scores(self, inputs: list[Any], batch_size: int = 64, images: bool = False) -> torch.Tensor:
        """``(inputs, labels)`` scores: softmax probabilities, or sigmoid scores for a multi-label model."""
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
        results = torch.zeros(len(inputs), self.model.config.num_labels)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if self.task == "text":
                batch = collate([examples[i] for i in chunk])
            else:
                batch = self.encode_images([inputs[i] for i in chunk])
            logits = self.model(**batch).logits.float()
            results[chunk] = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        return results

    def tokenize(self, texts: list[str]) -> list[dict[str, list[int]]]:
        """One tokenizer call for all texts; per text its unpadded ``input_ids`` (+ mask, type ids).

        Truncated at ``text_max_length``: the trained length, never more than the backbone's positions.
        """
        max_length = text_max_length(self.model.config, self.preprocessor)
        encoded = self.preprocessor(list(texts), truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{key: encoded[key][row] for key in keys} for row in range(len(texts))]

    def encode_images(self, items: list[str]) -> dict[str, torch.Tensor]:
        """``pixel_values`` ``(batch, 3, height, width)`` from the saved processor, used as it is.

        Training saved the processor it resized and cropped with, so its own rules (resize-then-crop,
        resample, statistics) give the pixels training saw, as in ``pipeline``.
        """
        pixel_values = self.preprocessor([to_rgb(open_image(path)) for path in items], return_tensors="np")[
            "pixel_values"
        ]
        return {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values))}


def text_max_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Tokens per text a saved text classifier takes: ``min(tokenizer.model_max_length, positions)``.

    ``poolft train`` saves the tokenizer with ``model_max_length = data.max_length``, so this is
    the length training truncated at; a tokenizer without a limit (the 1e30 sentinel) is still
    capped by the backbone's position embeddings (512 of RoBERTa's 514). None: neither sets a
    limit (rotary encoders without ``max_position_embeddings``). ``config`` is a ``PoolftConfig``
    or a stock model's config.
    """
    encoder_config = getattr(config, "encoder_config", None) or config
    limits = [max_positions(encoder_config), tokenizer.model_max_length]
    bounded = [int(limit) for limit in limits if limit is not None and limit < UNBOUNDED_LENGTH]
    return min(bounded) if bounded else None


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
    """The classifier saved in ``folder``: a PyTorch model, or an ONNX export run on ONNX Runtime."""
    if is_onnx_export(folder):
        return Classifier(*load_onnx_classifier(folder))
    return Classifier(*load_saved_classifier(folder))
