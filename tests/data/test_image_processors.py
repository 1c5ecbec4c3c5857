"""The image cache and ``data.image_size`` against each image-processor style's own output.

Right values come from the stock Hugging Face processors (``*ImageProcessorPil``), built
independently of poolft: the cached ``uint8`` pixels must equal a processor's output with
``do_rescale=False, do_normalize=False``, and the collated batch its full output.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from families import FAMILIES, IMAGE_FAMILIES, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    ConvNextImageProcessorPil,
    DeiTImageProcessorPil,
)

from poolft.config import DataConfig
from poolft.data.images import ImageCollator, cache_pixels, processed_size, processor_for_image_size
from poolft.errors import PoolftError


def varied_images() -> list[Image.Image]:
    """Noisy RGB images of several sizes and aspect ratios (landscape, portrait, tiny, square)."""
    rng = np.random.RandomState(0)
    sizes = [(24, 20), (50, 31), (13, 90), (7, 5), (64, 64)]  # (width, height)
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


def image_dataset(images: list[Image.Image]) -> Dataset:
    features = Features({"image": ImageFeature(), "labels": Value("int64")})
    return Dataset.from_dict({"image": images, "labels": [i % 2 for i in range(len(images))]}, features=features)


def family_processor(family_dir, family: str):
    """The stock ``*ImageProcessorPil`` saved with family ``family``'s double (``tests/families.py``)."""
    processor = AutoImageProcessor.from_pretrained(family_dir(family), backend="pil")
    assert type(processor).__name__ == FAMILIES[family].preprocessor_class + "Pil"
    return processor


def stock_pixels(processor, images, **kwargs) -> np.ndarray:
    """The processor's own output, unscaled: ``(images, 3, h, w)`` uint8-valued."""
    values = processor(images, do_rescale=False, do_normalize=False, return_tensors="np", **kwargs)["pixel_values"]
    return np.stack(values)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_cached_pixels_equal_each_family_processor_output(family_dir, family):
    processor = family_processor(family_dir, family)
    images = varied_images()
    cached = cache_pixels(image_dataset(images), processor, DataConfig(), "train")
    assert cached.data.column("pixels").type.value_type == pa.uint8()  # stored as bytes
    expected = stock_pixels(processor, images)
    assert cached[:]["pixels"].shape == expected.shape
    np.testing.assert_array_equal(cached[:]["pixels"], expected)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_collated_batch_equals_each_family_processor_full_output(family_dir, family):
    processor = family_processor(family_dir, family)
    processor.image_mean, processor.image_std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)  # not the defaults
    images = varied_images()
    cached = cache_pixels(image_dataset(images), processor, DataConfig(), "train")
    batch = ImageCollator(processor)(list(cached))
    expected = torch.from_numpy(np.stack(processor(images, return_tensors="np")["pixel_values"])).float()
    torch.testing.assert_close(batch["pixel_values"], expected, atol=1e-5, rtol=0)


def test_dinov2_hub_processor_output_is_the_crop_not_the_resize():
    """The issue's case: resize the shortest edge to 40, then centre-crop 32."""
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    assert processed_size(processor) == (32, 32)
    cached = cache_pixels(image_dataset(varied_images()), processor, DataConfig(), "train")
    assert cached[:]["pixels"].shape == (5, 3, 32, 32)


@pytest.mark.parametrize(
    "processor, image_size, independent",
    [
        # DINOv2 / BiT on the Hub: shortest edge 256, crop 224; asked for 112 -> 128 then 112
        (
            BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}),
            112,
            BitImageProcessorPil(size={"shortest_edge": 128}, crop_size={"height": 112, "width": 112}),
        ),
        # the tiny DINOv2 of the issue, asked for 48: 60 then 48
        (
            BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
            48,
            BitImageProcessorPil(size={"shortest_edge": 60}, crop_size={"height": 48, "width": 48}),
        ),
        # DeiT on the Hub: 256 x 256, crop 224
        (
            DeiTImageProcessorPil(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}),
            56,
            DeiTImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 56, "width": 56}),
        ),
        # CLIP on the Hub: shortest edge 224, crop 224
        (
            CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
            40,
            CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40}),
        ),
        # ConvNeXt: shortest edge 224 / crop_pct 0.875, then crop 224 (no crop_size at all)
        (
            ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875),
            112,
            ConvNextImageProcessorPil(size={"shortest_edge": 112}, crop_pct=0.875),
        ),
    ],
    ids=["bit-hub", "bit-tiny", "deit-hub", "clip-hub", "convnext-hub"],
)
def test_image_size_is_the_crop_side_and_the_resize_keeps_its_ratio(processor, image_size, independent):
    sized = processor_for_image_size(processor, image_size)
    assert processed_size(sized) == (image_size, image_size)
    images = varied_images()
    np.testing.assert_array_equal(stock_pixels(sized, images), stock_pixels(independent, images))
    cached = cache_pixels(image_dataset(images), processor, DataConfig(image_size=image_size), "train")
    np.testing.assert_array_equal(cached[:]["pixels"], stock_pixels(independent, images))
    assert processed_size(processor) != (image_size, image_size)  # the original is left as it was


def test_image_size_on_a_plain_resize_processor_resizes_to_the_square(family_dir):
    processor = family_processor(family_dir, "siglip-vision")
    sized = processor_for_image_size(processor, 20)
    images = varied_images()
    np.testing.assert_array_equal(
        stock_pixels(sized, images), stock_pixels(processor, images, size={"height": 20, "width": 20})
    )


def test_asking_for_the_size_a_processor_already_gives_returns_it_unchanged():
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    assert processor_for_image_size(processor, 32) is processor
    sized = processor_for_image_size(processor, 48)
    assert processor_for_image_size(sized, 48) is sized  # eval re-applies the run's image_size


def test_a_processor_whose_output_varies_needs_image_size():
    processor = CLIPImageProcessorPil(size={"shortest_edge": 40}, do_center_crop=False)
    assert processed_size(processor) is None
    with pytest.raises(PoolftError, match=r"gives images of varying size; set data.image_size"):
        cache_pixels(image_dataset(varied_images()), processor, DataConfig(), "train")
    images = varied_images()
    cached = cache_pixels(image_dataset(images), processor, DataConfig(image_size=24), "train")[:]["pixels"]
    np.testing.assert_array_equal(cached, stock_pixels(processor, images, size={"height": 24, "width": 24}))


def test_collator_does_not_rescale_when_the_processor_does_not(family_dir):
    processor = family_processor(family_dir, "vit")
    processor.do_rescale, processor.image_mean, processor.image_std = False, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    images = varied_images()
    cached = cache_pixels(image_dataset(images), processor, DataConfig(), "train")
    batch = ImageCollator(processor)(list(cached))
    expected = torch.from_numpy(np.stack(processor(images, return_tensors="np")["pixel_values"])).float()
    torch.testing.assert_close(batch["pixel_values"], expected, atol=1e-4, rtol=0)


def test_sized_processor_saves_and_reloads_with_the_same_rules(tmp_path):
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    processor_for_image_size(processor, 48).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 60} and saved["crop_size"] == {"height": 48, "width": 48}
    reloaded = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    images = varied_images()
    independent = BitImageProcessorPil(size={"shortest_edge": 60}, crop_size={"height": 48, "width": 48})
    np.testing.assert_array_equal(stock_pixels(reloaded, images), stock_pixels(independent, images))


@pytest.mark.parametrize("image_size, resize", [(None, 40), (48, 60)], ids=["processor-size", "image-size-48"])
def test_crop_processor_run_trains_and_predicts_on_the_pixels_it_trained_on(
    family_dir, tmp_path, image_size, resize, capsys
):
    """The issue's DINOv2 + BitImageProcessor run: train, then eval, predict and pipeline agree."""
    from datasets_for_tests import write_image_folder
    from transformers import AutoModelForImageClassification, pipeline

    from poolft.cli import main
    from poolft.models.prediction import load_classifier

    backbone = family_dir("dinov2")
    images = write_image_folder(tmp_path / "images", {"train": 4, "test": 3})
    arguments = [
        "train",
        f"--data.path={images}",
        "--data.eval_split=test",
        f"--model.backbone={backbone}",
        "--model.pooler=mean",
        f"--train.output_dir={tmp_path / 'run'}",
        "--train.batch_size=4",
        "--train.progress=false",
    ]
    assert main(arguments + ([f"--data.image_size={image_size}"] if image_size else [])) == 0
    run = tmp_path / "run"
    side = image_size or 32
    saved = json.loads((run / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": resize} and saved["crop_size"] == {"height": side, "width": side}

    # the saved model on pixels from an independently built stock processor with the same rules
    independent = BitImageProcessorPil(
        size={"shortest_edge": resize},
        crop_size={"height": side, "width": side},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    model = AutoModelForImageClassification.from_pretrained(run).eval()
    image = str(images / "test" / "dark" / "2.png")
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack(independent([Image.open(image).convert("RGB")])["pixel_values"]))
        expected = model(pixel_values=pixels.float()).logits.softmax(-1)[0]
    best = int(expected.argmax())
    top = pipeline("image-classification", model=str(run))(image)[0]
    assert top["label"] == model.config.id2label[best] and top["score"] == pytest.approx(
        float(expected[best]), abs=1e-5
    )
    [(label, probability)] = load_classifier(str(run)).predict([image], images=True)
    assert label == top["label"] and probability == pytest.approx(float(expected[best]), abs=1e-5)

    # poolft eval recomputes the pixels from the saved processor: same metrics as the run's last evaluation
    metrics = json.loads((run / "metrics.json").read_text())["final"]
    capsys.readouterr()
    assert main(["eval", "--model", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == metrics["accuracy"] and evaluated["loss"] == pytest.approx(
        metrics["loss"], abs=1e-5
    )


def test_a_processor_that_cannot_reach_the_size_is_a_one_line_error():
    """No resize, a fixed pad: scaling its lengths cannot change what it outputs."""
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil(do_resize=False, do_pad=True, pad_size={"height": 100, "width": 100})
    assert processed_size(processor) == (100, 100)
    with pytest.raises(
        PoolftError, match=r"cannot make ViTImageProcessorPil give 50 px images \(it gives \(100, 100\)\)"
    ):
        processor_for_image_size(processor, 50)
