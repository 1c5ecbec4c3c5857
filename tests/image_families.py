"""Tiny image backbones of every supported family, each saved with its own processor class and rules.

``build_image_family(name, folder)`` saves a 2-layer, hidden-32 encoder (random weights, seeded)
with ``save_pretrained`` and the family's Hub-style image processor: resize-then-crop for DINOv2
(``BitImageProcessor``), DeiT and CLIP, a plain ``height x width`` resize for ViT and SigLIP, and
BEiT's processor with its ``crop_size`` present but ``do_center_crop`` off. Sizes are tiny but keep
the Hub ratios (DINOv2 and CLIP resize the shortest edge to 40 and crop 32; DeiT 36 -> 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BeitConfig,
    BeitImageProcessorPil,
    BeitModel,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTImageProcessorPil,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)

#: encoder input side and patch: a 4 x 4 patch grid
SIDE, PATCH = 32, 8
ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
ENCODER_IMAGE = {**ENCODER, "image_size": SIDE, "patch_size": PATCH, "num_channels": 3}


@dataclass(frozen=True)
class ImageFamily:
    """How to build one family: config + base model class + processor, and what it looks like."""

    config: Any
    model_class: Any
    processor: Any
    prefix_tokens: int  # CLS, distillation and register tokens before the patches
    has_stock_head: bool


def image_families() -> dict[str, ImageFamily]:
    """The seven image families of the compatibility matrix, built fresh on each call."""
    crop = {"crop_size": {"height": SIDE, "width": SIDE}}
    return {
        "vit": ImageFamily(
            ViTConfig(**ENCODER_IMAGE),
            ViTModel,
            ViTImageProcessorPil(size={"height": SIDE, "width": SIDE}),
            1,
            True,
        ),
        "deit": ImageFamily(
            DeiTConfig(**ENCODER_IMAGE),
            DeiTModel,
            DeiTImageProcessorPil(size={"height": 36, "width": 36}, **crop),  # Hub: 256 -> crop 224
            2,
            True,
        ),
        "beit": ImageFamily(
            BeitConfig(**ENCODER_IMAGE, vocab_size=64),
            BeitModel,
            BeitImageProcessorPil(size={"height": SIDE, "width": SIDE}, **crop),  # crop off by default
            1,
            True,
        ),
        "dinov2": ImageFamily(
            Dinov2Config(**ENCODER_IMAGE),
            Dinov2Model,
            BitImageProcessorPil(size={"shortest_edge": 40}, **crop),  # Hub: 256 -> crop 224
            1,
            True,
        ),
        "dinov2_with_registers": ImageFamily(
            Dinov2WithRegistersConfig(**ENCODER_IMAGE, num_register_tokens=2),
            Dinov2WithRegistersModel,
            BitImageProcessorPil(size={"shortest_edge": 40}, **crop),
            3,
            True,
        ),
        "clip_vision": ImageFamily(
            CLIPVisionConfig(**ENCODER_IMAGE),
            CLIPVisionModel,
            CLIPImageProcessorPil(size={"shortest_edge": 40}, **crop),
            1,
            False,
        ),
        "siglip_vision": ImageFamily(
            SiglipVisionConfig(**ENCODER_IMAGE),
            SiglipVisionModel,
            SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE}),
            0,
            False,
        ),
    }


IMAGE_FAMILY_NAMES = tuple(image_families())


def build_image_family(name: str, folder: Path, seed: int = 0) -> Path:
    """Save family ``name``'s tiny encoder and its image processor into ``folder``; return it."""
    family = image_families()[name]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = family.model_class(family.config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # off the init, so "kept the pretrained weights" is testable
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    family.processor.save_pretrained(folder)
    return folder
