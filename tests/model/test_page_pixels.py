"""Pages as uint8 pixels at the model's size (model.inputs.page_pixels) and the model's on-device
arithmetic for them (model.gemma4_unified.page_patches), against transformers' own image processor.

No engine: the numbers the model embeds for a page must equal, bit for bit, what the reference
processor emits for the original file (the engine checks are in test_parity.py)."""

from __future__ import annotations

import functools
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor

from jobs import samples
from model.gemma4_unified import page_patches
from model.inputs import media, pages
from model.inputs.page_pixels import PagePixels, content_id, engine_prompt, page_pixels
from tests.model.reference import random_image

# The tiny and the real checkpoints rescale only (the class defaults); the others are settings a
# checkpoint may carry, so the fused rescale+normalise and normalise-only arithmetic are covered too.
SETTINGS = {
    "rescale (checkpoint default)": {},
    "rescale + normalise": {"do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                            "image_std": [0.26862954, 0.26130258, 0.27577711]},
    "normalise only": {"do_rescale": False, "do_normalize": True, "image_mean": [127.5, 120.0, 100.25],
                       "image_std": [58.4, 57.1, 57.4]},
    "neither": {"do_rescale": False},
    "odd rescale factor": {"rescale_factor": 1 / 127.0},
}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _reference(processor, image, budget: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference processor's rows for one image, padding removed."""
    out = processor(images=[image], max_soft_tokens=budget, return_tensors="pt", **kwargs)
    n = out["num_soft_tokens_per_image"][0]
    return out["pixel_values"][0, :n], out["image_position_ids"][0, :n]


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor], label) -> None:
    (values, positions), (ref_values, ref_positions) = got, want
    assert values.dtype == ref_values.dtype, label
    assert values.shape == ref_values.shape, label
    assert torch.equal(values, ref_values), (label, float((values.float() - ref_values.float()).abs().max()))
    assert torch.equal(positions, ref_positions), label


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_page_patches_are_the_reference_processors_numbers(settings):
    processor = Gemma4UnifiedImageProcessor(**settings)
    rng = np.random.default_rng(7)
    shapes = [(48, 48, 70), (1872, 1344, 1120), (48, 2880, 70), (2880, 48, 70), (816, 528, 280), (624, 1008, 280)]
    for height, width, budget in shapes:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        got = page_patches(torch.from_numpy(pixels), processor, 48)
        _assert_same(got, _reference(processor, pixels, budget, do_resize=False), (height, width, settings))


def _pages(data: bytes, name: str, budget: int) -> pages.PreparedPage:
    return next(iter(pages.open_pages(data, name, pages.PageGeometry(budget))))


@functools.lru_cache(maxsize=1)
def _documents():
    rng = np.random.default_rng(11)
    scan = samples.scan_page(300, seed=3)
    odd = random_image(rng, 1213, 997)
    small = random_image(rng, 151, 409)
    wide = random_image(rng, 37, 2950)
    deep = Image.fromarray(np.tile(np.linspace(0, 65535, 397, dtype=np.uint16), (211, 1)))
    return [
        # label, file, budget, form, what the reference processor is given
        ("A4 scan 300 dpi", scan, 1120, "resized", Image.open(io.BytesIO(scan))),
        ("A4 scan 300 dpi", scan, 280, "resized", Image.open(io.BytesIO(scan))),
        ("997x1213", _png(odd), 280, "resized", odd),
        ("997x1213", _png(odd), 1120, "original", odd),  # under the target: the processor enlarges it
        ("409x151", _png(small), 1120, "original", small),
        ("2950x37", _png(wide), 280, "original", wide),  # height rounds up to one patch row
        ("16-bit 397x211", _png(deep), 560, "converted", media.to_rgb(Image.open(io.BytesIO(_png(deep))))),
    ]


@pytest.mark.parametrize("label, data, budget, form, original", _documents(),
                         ids=[f"{d[0]} at {d[2]}" for d in _documents()])
def test_a_page_of_every_form_becomes_the_reference_numbers_of_the_original(label, data, budget, form, original):
    page = _pages(data, label, budget)
    assert page.form == form
    pixels = page_pixels(pickle.loads(pickle.dumps(page)), pages.PageGeometry(budget))
    assert pixels.pixels.dtype == np.uint8 and not pixels.pixels.flags.writeable
    assert pixels.soft_tokens == pages.PageGeometry(budget).soft_tokens(*original.size, resized=False)
    processor = Gemma4UnifiedImageProcessor()
    got = page_patches(torch.from_numpy(pixels.pixels.copy()), processor, 48)
    _assert_same(got, _reference(processor, original, budget), label)


def test_the_content_id_names_exactly_the_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (96, 144, 3), dtype=np.uint8)
    page = PagePixels.from_array(pixels, 70)
    assert page.uuid == PagePixels.from_array(pixels.copy(), 70).uuid  # content, not identity
    changed = pixels.copy()
    changed[95, 143, 2] ^= 1
    assert PagePixels.from_array(changed, 70).uuid != page.uuid
    # The same bytes in another shape are another image.
    assert PagePixels.from_array(pixels.reshape(144, 96, 3), 70).uuid != page.uuid
    assert content_id(pixels[:, ::-1]) == content_id(np.ascontiguousarray(pixels[:, ::-1]))
    with pytest.raises(ValueError, match="read-only"):
        page.pixels[0, 0, 0] = 1


@pytest.mark.parametrize("array, budget, message", [
    (np.zeros((96, 144, 3), dtype=np.float32), 70, "uint8 array of shape"),
    (np.zeros((96, 144), dtype=np.uint8), 70, "uint8 array of shape"),
    (np.zeros((96, 144, 4), dtype=np.uint8), 70, "uint8 array of shape"),
    (np.zeros((100, 144, 3), dtype=np.uint8), 70, "not at a model size for 70"),
    (np.zeros((0, 144, 3), dtype=np.uint8), 70, "not at a model size"),
    (np.zeros((1872, 1344, 3), dtype=np.uint8), 280, "not at a model size for 280"),
    (np.zeros((96, 144, 3), dtype=np.uint8), 100, "one of"),
])
def test_malformed_pixels_are_refused(array, budget, message):
    with pytest.raises(ValueError, match=message):
        PagePixels.from_array(array, budget)


def test_a_page_that_failed_has_no_pixels():
    with pytest.raises(ValueError, match="page 3 has no image: broken"):
        page_pixels(pages.PreparedPage(2, None, None, error="broken"), pages.PageGeometry(280))


def test_engine_prompt_is_vllms_prompt_dict():
    rng = np.random.default_rng(1)
    a = PagePixels.from_array(rng.integers(0, 256, (96, 144, 3), dtype=np.uint8), 280)
    b = PagePixels.from_array(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8), 280)
    request = engine_prompt("<image_soft_token>Read.", a)
    assert request == {
        "prompt": "<image_soft_token>Read.",
        "multi_modal_data": {"image": a.pixels},
        "mm_processor_kwargs": {"max_soft_tokens": 280, "do_resize": False},
        "multi_modal_uuids": {"image": a.uuid},
    }
    two = engine_prompt((2, 8, 8, 9), [a, b])
    assert two["prompt_token_ids"] == [2, 8, 8, 9] and "prompt" not in two
    assert two["multi_modal_data"]["image"] == [a.pixels, b.pixels]
    assert two["multi_modal_uuids"]["image"] == [a.uuid, b.uuid]
    c = PagePixels.from_array(np.zeros((48, 48, 3), dtype=np.uint8), 70)
    with pytest.raises(ValueError, match="one budget"):
        engine_prompt("x", [a, c])
