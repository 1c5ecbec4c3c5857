"""``PoolftForImageClassification`` on every image family, checked against the stock HF encoder.

Each family is a tiny encoder saved with its own processor (``tests/families.py``). The
right value of a pooled vector is computed from ``AutoModel``'s own ``last_hidden_state`` with
plain tensor ops (the prefix-token count is the family's known layout, not poolft's inference).
"""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, IMAGE_FAMILIES, IMAGE_SIZE
from transformers import AutoConfig, AutoModel, CLIPVisionConfig, SiglipVisionConfig

from poolft import PoolftForImageClassification
from poolft.errors import PoolftError
from poolft.models.backbones import build_model, modality_of
from poolft.models.modeling import has_class_token


def pooled_and_reference(folder, pooler: str, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """poolft's pooled vector and the stock encoder's states ``(batch, tokens, hidden)`` at ``side`` px."""
    model = PoolftForImageClassification.from_backbone(str(folder), pooler=pooler, num_labels=2).eval()
    encoder = AutoModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    pooled = {}
    model.pooler.register_forward_hook(lambda module, args, output: pooled.setdefault("vector", output))
    kwargs = {"interpolate_pos_encoding": True} if side != IMAGE_SIZE and encoder.config.model_type != "dinov2" else {}
    if encoder.config.model_type == "dinov2_with_registers":
        kwargs = {}  # always interpolates, like DINOv2
    with torch.no_grad():
        model(pixel_values=pixels)
        states = encoder(pixels, **kwargs).last_hidden_state
    return pooled["vector"], states


@pytest.mark.parametrize("side", [IMAGE_SIZE, 48], ids=["native-size", "interpolated-48px"])
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_mean_head_averages_the_patch_tokens_after_every_prefix_token(family_dir, family, side):
    vector, states = pooled_and_reference(family_dir(family), "mean", side)
    prefix = FAMILIES[family].prefix_tokens  # DeiT: CLS + distillation; registers: CLS + 4; SigLIP: 0
    assert states.shape[1] == prefix + (side // 8) ** 2
    torch.testing.assert_close(vector, states[:, prefix:].mean(dim=1))


@pytest.mark.parametrize("family", [name for name in IMAGE_FAMILIES if name != "siglip-vision"])
def test_cls_head_takes_the_class_token(family_dir, family):
    vector, states = pooled_and_reference(family_dir(family), "cls", IMAGE_SIZE)
    torch.testing.assert_close(vector, states[:, 0])


def test_clip_states_are_before_post_layernorm_as_clip_classifier_pools_them(family_dir):
    """CLIP's ``last_hidden_state`` skips ``post_layernorm`` (applied to its pooled CLS only)."""
    vector, states = pooled_and_reference(family_dir("clip-vision"), "cls", IMAGE_SIZE)
    encoder = AutoModel.from_pretrained(family_dir("clip-vision")).eval()
    with torch.no_grad():
        post = encoder.post_layernorm(states[:, 0])
    assert not torch.allclose(vector, post)
    torch.testing.assert_close(vector, states[:, 0])


@pytest.mark.parametrize("pooler", ["cls", "clsmean"])
def test_siglip_has_no_class_token_so_class_token_heads_are_refused_at_build_time(family_dir, pooler):
    folder = family_dir("siglip-vision")
    assert not has_class_token(AutoConfig.from_pretrained(folder))
    assert all(
        has_class_token(AutoConfig.from_pretrained(family_dir(n))) for n in IMAGE_FAMILIES if n != "siglip-vision"
    )
    with pytest.raises(ValueError, match=r"siglip_vision_model encoder has no class token.*'mean' or 'attention'"):
        PoolftForImageClassification.from_backbone(str(folder), pooler=pooler, num_labels=2)
    from poolft.config import ModelConfig

    with pytest.raises(PoolftError, match=rf"is a siglip_vision_model, which has no class token, so the {pooler} "):
        build_model(str(folder), "image", ModelConfig(backbone=str(folder), pooler=pooler), ["a", "b"])


def test_vision_towers_are_image_backbones():
    assert modality_of(CLIPVisionConfig()) == "image"
    assert modality_of(SiglipVisionConfig()) == "image"


def test_a_text_and_image_model_asks_for_its_vision_tower():
    from transformers import CLIPConfig

    from poolft.models.backbones import check_modality

    with pytest.raises(PoolftError, match=r"text\+image clip model; fine-tune its vision tower: CLIPVisionModel"):
        check_modality("openai/clip", CLIPConfig(), "image")


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_every_family_saves_and_reloads_through_the_auto_classes(family_dir, family, tmp_path):
    from transformers import AutoModelForImageClassification

    model = PoolftForImageClassification.from_backbone(str(family_dir(family)), pooler="attention", num_labels=3)
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits)
