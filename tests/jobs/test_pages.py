"""model.inputs.pages: pages leave decoding at the model's size, bit-identical to the reference
image processor's input; kept encoded (pickled at their encoded size); one page at a time. No engine:
the reference is transformers' own Gemma4UnifiedImageProcessor on the original file."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor

from jobs import samples
from model.inputs import media, pages
from model.inputs.pages import EncodedImage, PageGeometry
from tests.model.reference import random_image


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _model_input(image, budget: int, **kwargs) -> dict:
    out = Gemma4UnifiedImageProcessor(max_soft_tokens=budget)(images=[image], return_tensors="pt", **kwargs)
    return {k: out[k] for k in ("pixel_values", "image_position_ids", "num_soft_tokens_per_image")}


def _assert_same_model_input(original, page: pages.PreparedPage, budget: int) -> None:
    """The engine's processor on the prepared page == the reference processor on the original."""
    reference = _model_input(original, budget)
    shipped = pickle.loads(pickle.dumps(page.image))  # what crosses the stage boundaries
    got = _model_input(shipped, budget, **page.processor_kwargs)
    for key in reference:
        assert torch.equal(torch.as_tensor(reference[key]), torch.as_tensor(got[key])), (key, page.form)


def test_geometry_reads_the_checkpoint(tiny_checkpoint):
    geometry = PageGeometry.from_checkpoint(tiny_checkpoint)
    assert (geometry.patch_size, geometry.pooling_kernel_size, geometry.resample) == (16, 3, 3)
    assert PageGeometry.from_checkpoint(tiny_checkpoint, 1120).max_soft_tokens == 1120
    assert PageGeometry(1120).target_size(2480, 3508) == (1344, 1872)
    with pytest.raises(ValueError, match="one of"):
        PageGeometry(100)


@pytest.mark.parametrize("budget", [70, 280, 1120])
def test_a_scan_is_resized_once_with_the_processors_own_functions(budget):
    data = samples.scan_page(300)
    page = next(iter(pages.open_pages(data, "scan.jpg", PageGeometry(budget))))
    assert page.form == "resized" and page.processor_kwargs == {"do_resize": False}
    assert (page.width, page.height) == PageGeometry(budget).target_size(2480, 3508)
    assert (page.source_width, page.source_height) == (2480, 3508)
    _assert_same_model_input(Image.open(io.BytesIO(data)), page, budget)


def test_shapes_the_size_function_does_not_map_to_themselves():
    """200x1215 -> 960x144 at 70 tokens, but 960x144 -> a larger size: the engine must not resize."""
    rng = np.random.default_rng(3)
    geometry = PageGeometry(70)
    assert geometry.target_size(960, 144) != (960, 144)
    checked = 0
    for _ in range(12):
        h, w = int(rng.integers(150, 1400)), int(rng.integers(150, 1400))
        original = random_image(rng, h, w)
        page = next(iter(pages.open_pages(_png(original), "x.png", geometry)))
        _assert_same_model_input(original, page, 70)
        checked += page.form == "resized"
    assert checked >= 6
    original = random_image(rng, 200, 1215)
    page = next(iter(pages.open_pages(_png(original), "x.png", geometry)))
    assert (page.width, page.height) == (960, 144)
    _assert_same_model_input(original, page, 70)
    # Without do_resize=False the processor would resize the prepared page again: different input.
    wrong = _model_input(pickle.loads(pickle.dumps(page.image)), 70)
    assert wrong["num_soft_tokens_per_image"] != _model_input(original, 70)["num_soft_tokens_per_image"]


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "L"), ("WEBP", "RGB")])
def test_a_plain_image_at_or_under_the_target_passes_through_undecoded(fmt, mode):
    image = random_image(np.random.default_rng(0), 300, 200).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = buf.getvalue()
    page = next(iter(pages.open_pages(data, f"x.{fmt.lower()}", PageGeometry(280))))
    assert page.form == "original" and page.processor_kwargs == {}
    assert page.image.encoded == data and page.image.mode == mode
    assert page.image._im is None  # never decoded here
    _assert_same_model_input(Image.open(io.BytesIO(data)), page, 280)
    assert page.data_url().startswith(f"data:image/{fmt.lower()};base64,")


def test_modes_the_engine_must_not_convert_itself_are_converted_here():
    """16-bit greyscale is scaled (media.to_rgb), not clipped by Pillow's convert."""
    deep = Image.fromarray(np.tile(np.linspace(0, 65535, 96, dtype=np.uint16), (64, 1)))
    page = next(iter(pages.open_pages(_png(deep), "deep.png", PageGeometry(280))))
    assert page.form == "converted" and page.image.mode == "RGB" and page.processor_kwargs == {}
    _assert_same_model_input(media.to_rgb(Image.open(io.BytesIO(_png(deep)))), page, 280)
    assert int(np.asarray(page.image)[0, 48, 0]) in range(120, 136)  # mid-grey stays mid-grey


def test_a_prepared_page_pickles_at_its_encoded_size_and_decodes_lazily():
    page = next(iter(pages.open_pages(samples.scan_page(300), "scan.jpg", PageGeometry(1120))))
    blob = pickle.dumps(page.image)
    assert len(blob) < page.nbytes + 1024
    assert page.nbytes < 1.5 * len(media.image_to_png_bytes(page.image))  # about a PNG's size
    restored = pickle.loads(blob)
    assert isinstance(restored, EncodedImage) and isinstance(restored, Image.Image)
    assert restored._im is None and restored.size == (1344, 1872)
    assert np.array_equal(np.asarray(restored), np.asarray(page.image))
    assert len(pickle.dumps(restored)) == len(blob)  # still the encoded bytes after decoding
    assert page.content_part() == {"type": "image_pil", "image_pil": page.image}


def test_pdf_pages_are_rendered_directly_at_the_target_size():
    data = samples.text_pdf(3)  # A4 in points
    geometry = PageGeometry(1120)
    doc = pages.open_pages(data, "doc.pdf", geometry, media.MediaLimits(pdf_dpi=300))
    assert (doc.kind, doc.count) == ("pdf", 3)
    rendered = list(doc)
    assert [p.form for p in rendered] == ["resized"] * 3
    assert {(p.width, p.height) for p in rendered} == {(1344, 1872)}
    assert (rendered[0].source_width, rendered[0].source_height) == (2479, 3508)  # the 300 dpi cap
    # The DPI is a cap: at 72 dpi the page is smaller than the target and left to the processor.
    capped = next(iter(pages.open_pages(data, "doc.pdf", geometry, media.MediaLimits(pdf_dpi=72))))
    assert capped.form == "converted" and capped.image.size == (595, 842) and capped.processor_kwargs == {}


def test_pages_are_produced_one_at_a_time_and_skips_are_never_rendered():
    doc = pages.open_pages(samples.text_pdf(50), "doc.pdf", PageGeometry(70), media.MediaLimits(pdf_dpi=72))
    produced = doc.iter(skip={0, 1, 2})
    first = next(produced)
    assert first.index == 3 and first.number == 4
    assert sum(1 for _ in produced) == 46


def test_a_page_that_fails_is_an_error_naming_it_and_the_others_go_on(monkeypatch):
    real = pages.render_pdf_page
    calls = []

    def flaky(page, width, height):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("pdfium could not render this page")
        return real(page, width, height)

    monkeypatch.setattr(pages, "render_pdf_page", flaky)
    out = list(pages.open_pages(samples.text_pdf(3), "doc.pdf", PageGeometry(70), media.MediaLimits(pdf_dpi=72)))
    assert [p.error is None for p in out] == [True, False, True]
    assert out[1].image is None and "PDF page 2 cannot be rendered" in out[1].error


def test_a_corrupt_tiff_frame_fails_that_page_only():
    data = bytearray(samples.tiff_doc(["one", "two", "three"]))
    header = Image.open(io.BytesIO(bytes(data)))
    header.seek(1)
    start = header.tag_v2[273][0]  # StripOffsets: the second frame's first deflate strip
    data[start:start + 16] = b"\xff" * 16
    out = list(pages.open_pages(bytes(data), "doc.tiff", PageGeometry(70)))
    assert [p.error is None for p in out] == [True, False, True]
    assert out[1].error.startswith("page 2 is truncated or corrupt")


def test_whole_file_errors_are_media_errors():
    with pytest.raises(media.MediaError, match="page limit of 2"):
        pages.open_pages(samples.text_pdf(3), "doc.pdf", PageGeometry(70), media.MediaLimits(max_pages=2))
    with pytest.raises(media.MediaError, match="empty"):
        pages.open_pages(b"", "x.png", PageGeometry(70))
    with pytest.raises(media.MediaError, match="corrupt"):
        pages.open_pages(b"%PDF-1.7\nnot really", "x.pdf", PageGeometry(70))
    truncated = next(iter(pages.open_pages(samples.jpeg_page("cut")[:1500], "x.jpg", PageGeometry(70))))
    assert truncated.error and "truncated or corrupt" in truncated.error  # decoded here, not in the engine
    assert media.MediaLimits().max_pages >= 10_000


def test_every_corpus_file_has_its_expected_outcome(tmp_path):
    """The reliability corpus of bad and odd files: each document gets its expected outcome (ok or error)."""
    from tests.reliability.corpus import file_cases

    for case in file_cases(tmp_path, long_audio_s=1.0):
        payload = case.payload()
        if case.expect == "ok" and media.sniff_kind(payload, case.filename)[0] == "audio":
            continue
        try:
            kind, _ = media.sniff_kind(payload, case.filename)
        except media.MediaError:
            kind = None
        if kind == "audio":
            continue
        try:
            prepared = list(pages.open_pages(payload, case.filename, PageGeometry(280)))
            outcome = "error" if any(p.error for p in prepared) else "ok"
        except media.MediaError:
            outcome = "error"
        assert outcome == case.expect, case.kind
