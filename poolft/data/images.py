"""Images -> pixel tensors: decode, convert to RGB and resize once (cached by ``datasets``),
then rescale, normalise and optionally augment per batch with tensor ops.

Decoding, resizing and cropping use the backbone's image processor with its Pillow backend, with
its own rules (resize-then-crop, plain resize, resample); ``data.image_size`` scales those rules
(:func:`processor_for_image_size`). The cached arrays are ``uint8`` ``(3, height, width)`` so later
epochs skip decoding entirely.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import torch
from datasets import Array3D, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F
from transformers.image_utils import SizeDict

from ..config import DataConfig
from ..errors import PoolftError
from .labels import stack_labels


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: grayscale, 16-bit, float, palette, CMYK; alpha over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


#: two probe images of opposite aspect ratios: a processor whose output differs between them has no
#: fixed output size (a shortest-edge resize without a crop, no resize at all)
PROBE_SIZES = ((48, 80), (80, 48))
#: size fields scaled with the image height, with the width, and with either side
HEIGHT_FIELDS, WIDTH_FIELDS = ("height", "max_height"), ("width", "max_width")
EDGE_FIELDS = ("shortest_edge", "longest_edge")


def processed_size(image_processor: Any) -> tuple[int, int] | None:
    """``(height, width)`` of the ``pixel_values`` the processor gives every image, else None.

    Read from the processor's own output on two blank probe images of opposite aspect ratios, so
    resize-then-crop (CLIP, BiT/DINOv2, DeiT), plain resizes (ViT, SigLIP), crops switched off
    (BEiT) and custom rules (ConvNeXt's ``crop_pct``) all give the size the model really sees.
    """
    probes = [Image.new("RGB", (width, height), (127, 127, 127)) for height, width in PROBE_SIZES]
    output = image_processor(probes, do_rescale=False, do_normalize=False, return_tensors=None)["pixel_values"]
    shapes = {tuple(np.shape(values)[-2:]) for values in output}
    return tuple(int(side) for side in shapes.pop()) if len(shapes) == 1 else None


def processor_for_image_size(image_processor: Any, image_size: int | None) -> Any:
    """A copy of ``image_processor`` whose output is ``image_size`` x ``image_size`` (unchanged if None).

    A processor with a fixed output keeps its rules and has every length scaled by the same factor:
    resize-then-crop (shortest edge 256, crop 224) asked for 112 resizes to 128 and crops 112, so
    256/224 stays the ratio. A processor whose output varies with the image (a shortest-edge resize
    without a crop) resizes to the square instead. Idempotent: asking a processor for the size it
    already gives returns it unchanged. Save the result with the model so predict, eval and
    ``pipeline`` see the pixels training saw.
    """
    if image_size is None:
        return image_processor
    current = processed_size(image_processor)
    if current == (image_size, image_size):
        return image_processor
    sized = copy.deepcopy(image_processor)
    if current is None:
        sized.do_resize = True
        sized.size = SizeDict(height=image_size, width=image_size)
    else:
        scale_height, scale_width = image_size / current[0], image_size / current[1]
        sized.size = scaled_size(sized.size, scale_height, scale_width)
        if getattr(sized, "do_center_crop", False) and getattr(sized, "crop_size", None):
            sized.crop_size = scaled_size(sized.crop_size, scale_height, scale_width)
    try:
        reached = processed_size(sized)
    except (ValueError, TypeError, KeyError):  # the processor rejects its rescaled rules
        reached = None
    if reached != (image_size, image_size):
        raise PoolftError(
            f"cannot make {type(image_processor).__name__} give {image_size} px images (it gives {current}); "
            "leave data.image_size unset to use the processor's own size"
        )
    return sized


def scaled_size(size: Any, scale_height: float, scale_width: float) -> SizeDict:
    """A processor ``size``/``crop_size`` (dict or ``SizeDict``) with every length scaled."""
    scaled = {}
    for key, value in dict(size or {}).items():
        if key in HEIGHT_FIELDS:
            scaled[key] = max(1, round(value * scale_height))
        elif key in WIDTH_FIELDS:
            scaled[key] = max(1, round(value * scale_width))
        elif key in EDGE_FIELDS:  # the larger factor, so the resized image still covers the crop
            scaled[key] = max(1, round(value * max(scale_height, scale_width)))
        else:  # min_pixels / max_pixels
            scaled[key] = max(1, round(value * scale_height * scale_width))
    return SizeDict(**scaled)


def processor_size(image_processor: Any, image_size: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of the pixels the model sees: the processor's output at ``image_size``.

    A processor whose output varies with the image (and no ``image_size``) is a one-line error.
    """
    sized = processor_for_image_size(image_processor, image_size)
    size = processed_size(sized)
    if size is None:
        rules = {key: dict(value) for key in ("size", "crop_size") if (value := getattr(sized, key, None))}
        raise PoolftError(
            f"the image processor {type(sized).__name__} ({rules}, do_center_crop="
            f"{getattr(sized, 'do_center_crop', None)}) gives images of varying size; set data.image_size"
        )
    return size


def decode_image(value: Any, row: int, split_name: str) -> Image.Image:
    """Open an undecoded ``datasets`` image (``{"bytes", "path"}``) or a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if value is None:
        raise PoolftError(f"row {row} of split {split_name!r} has no image; drop it or fix data.image_column")
    try:
        image = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as error:
        where = value.get("path") or f"row {row}"
        raise PoolftError(
            f"image {where} in split {split_name!r} cannot be read ({error}); remove or replace the file"
        ) from None


def cache_pixels(split: Dataset, image_processor: Any, config: DataConfig, name: str) -> Dataset:
    """Decode, convert to RGB and resize (and crop) every image once; keep ``pixels`` uint8 ``(3, h, w)``.

    ``(h, w)`` is what the backbone's processor (sized by ``config.image_size``, see
    :func:`processor_for_image_size`) produces; the pixels equal its output before rescaling.
    """
    image_processor = processor_for_image_size(image_processor, config.image_size)
    height, width = processor_size(image_processor)
    column = config.image_column
    feature = split.features[column]
    if isinstance(feature, ImageFeature):
        split = split.cast_column(column, ImageFeature(decode=False))
    elif not (isinstance(feature, dict) or isinstance(feature, Value) and feature.dtype == "string"):
        raise PoolftError(f"column {column!r} holds {feature}, not images; set data.image_column")

    def prepare(batch: dict[str, list], indices: list[int]) -> dict[str, Any]:
        images = []
        for value, row in zip(batch[column], indices, strict=True):
            value = {"path": value, "bytes": None} if isinstance(value, str) else value
            images.append(to_rgb(decode_image(value, row, name)))
        # the processor's own resize, crop and resample; rescaling and normalising wait for the collator
        resized = image_processor(images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
        return {"pixels": np.clip(np.rint(resized), 0, 255).astype(np.uint8)}

    features = Features({"pixels": Array3D((3, height, width), "uint8"), **{"labels": split.features["labels"]}})
    remove = [c for c in split.column_names if c != "labels"]
    cached = split.map(
        prepare, batched=True, with_indices=True, remove_columns=remove, features=features, desc=f"images ({name})"
    )
    return cached.with_format("numpy")  # rows come back as arrays, not nested Python lists


class ImageCollator:
    """Stacks cached ``uint8`` pixels, rescales and normalises them, and augments when training.

    Returns ``pixel_values`` ``(batch, 3, height, width)`` float32 and ``labels`` ``(batch,)`` (multi-label:
    float ``(batch, num_labels)``).
    Augmentation (train only): horizontal flip with p=0.5 and a random resized crop covering 70-100%
    of the area, drawn from torch's global RNG, which checkpoints save and restore, so a resumed
    run augments exactly like an uninterrupted one.
    """

    def __init__(self, image_processor: Any, *, augment: bool = False) -> None:
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5]
        do_normalize = getattr(image_processor, "do_normalize", True)
        self.mean = torch.tensor(mean if do_normalize else [0.0] * 3).view(1, 3, 1, 1)
        self.std = torch.tensor(std if do_normalize else [1.0] * 3).view(1, 3, 1, 1)
        do_rescale = getattr(image_processor, "do_rescale", True)
        self.scale = float(getattr(image_processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0
        self.augment = augment

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([torch.as_tensor(np.asarray(e["pixels"], dtype=np.uint8)) for e in examples])
        values = pixels.float() * self.scale
        if self.augment:
            values = self.random_augment(values)
        values = (values - self.mean) / self.std
        return {"pixel_values": values, "labels": stack_labels(examples)}

    def random_augment(self, values: torch.Tensor) -> torch.Tensor:
        """Flip and random-resized-crop a batch ``(batch, 3, h, w)``."""
        batch, _, height, width = values.shape
        flip = torch.rand(batch) < 0.5
        values = torch.where(flip.view(-1, 1, 1, 1), values.flip(-1), values)
        out = torch.empty_like(values)
        for i in range(batch):  # crop boxes differ per image; resizing is the cost, not the loop
            area = float(torch.empty(1).uniform_(0.7, 1.0))
            crop_h = max(1, round(height * area**0.5))
            crop_w = max(1, round(width * area**0.5))
            top = int(torch.randint(0, height - crop_h + 1, (1,)))
            left = int(torch.randint(0, width - crop_w + 1, (1,)))
            crop = values[i : i + 1, :, top : top + crop_h, left : left + crop_w]
            out[i] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        return out
