"""model.inputs.media: real encoders (Pillow, pypdfium2, soundfile) produce the inputs; no engine."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.inputs.media import MediaError, MediaLimits, decode, sniff_kind, to_rgb
from jobs import samples


def test_sniff_by_magic_beats_extension():
    png = samples.png_page("hello")
    assert sniff_kind(png, "scan.jpg") == ("image", "png")
    assert sniff_kind(samples.pdf_doc(["a"]), None) == ("pdf", "pdf")
    assert sniff_kind(samples.wav_bytes(samples.tone(0.5)), "x.bin") == ("audio", "wav")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_single_images_decode_to_rgb(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (64, 40), (10, 200, 30)).save(buf, format=fmt)
    out = decode(buf.getvalue(), f"x.{fmt.lower()}")
    assert out.kind == "image" and out.modality == "document"
    assert len(out.pages) == 1 and out.pages[0].mode == "RGB" and out.pages[0].size == (64, 40)


def test_multipage_tiff_and_pdf_give_every_page():
    tiff = decode(samples.tiff_doc(["one", "two", "three"]), "d.tiff")
    assert len(tiff.pages) == 3 and all(p.mode == "RGB" for p in tiff.pages)
    pdf = decode(samples.pdf_doc(["one", "two"]), "d.pdf", MediaLimits(pdf_dpi=72))
    assert len(pdf.pages) == 2
    # A4-ish page at 72 dpi is ~612x792 points; at 144 dpi twice that.
    big = decode(samples.pdf_doc(["x"]), "d.pdf", MediaLimits(pdf_dpi=144)).pages[0]
    assert big.size[0] == pytest.approx(2 * pdf.pages[0].size[0], abs=2)


def test_pdf_page_limit_is_an_error_not_a_truncation():
    with pytest.raises(MediaError, match="page limit of 2"):
        decode(samples.pdf_doc(["a", "b", "c"]), "d.pdf", MediaLimits(max_pages=2))


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "RGBA", "LA", "L", "1"])
def test_odd_modes_become_rgb(mode):
    img = Image.new(mode, (20, 10))
    assert to_rgb(img).mode == "RGB"
    # 16-bit is scaled, not clipped: mid-grey stays mid-grey.
    if mode == "I;16":
        arr = np.full((10, 20), 32768, dtype=np.uint16)
        grey = to_rgb(Image.fromarray(arr))  # uint16 -> mode I;16
        assert 120 <= np.asarray(grey)[0, 0, 0] <= 135


def test_decompression_bomb_rejected_before_decoding():
    # 20000x20000 PNG of one colour is tiny on disk and 1.2 GB decoded.
    bomb = samples.png_bomb(20000, 20000)
    assert len(bomb) < 2_000_000
    with pytest.raises(MediaError, match="decompression-bomb guard"):
        decode(bomb, "bomb.png", MediaLimits(max_image_pixels=50_000_000))


@pytest.mark.parametrize(
    "data,name,message",
    [
        (b"", "a.png", "empty"),
        (b"this is plain text, not audio", "a.wav", "not a valid WAV"),
        (b"hello world" * 10, "notes.txt", "unsupported file type"),
        (b"%PDF-1.4 garbage", "a.pdf", "PDF is corrupt"),
    ],
)
def test_bad_inputs_get_actionable_errors(data, name, message):
    with pytest.raises(MediaError, match=message):
        decode(data, name)


def test_truncated_png_is_an_error():
    png = samples.png_page("truncated")
    with pytest.raises(MediaError, match="truncated or corrupt"):
        decode(png[: len(png) // 2], "t.png")


def test_extreme_aspect_ratio_is_an_error():
    buf = io.BytesIO()
    Image.new("L", (100000, 10)).save(buf, format="PNG")
    with pytest.raises(MediaError, match="aspect ratio"):
        decode(buf.getvalue(), "strip.png")


def test_audio_resampled_to_16k_mono_float32():
    sr = 44100
    t = np.arange(int(sr * 1.5)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    for fmt in ("WAV", "FLAC", "OGG"):
        out = decode(samples.wav_bytes(stereo, sr, fmt=fmt), f"a.{fmt.lower()}")
        assert out.kind == "audio" and out.audio.dtype == np.float32 and out.audio.ndim == 1
        assert abs(len(out.audio) - 24000) <= 2
        # A real resampler keeps a 440 Hz tone's energy (peak ~0.5), no aliasing blow-up.
        assert 0.4 < np.abs(out.audio[4000:20000]).max() < 0.6


def test_audio_already_16k_is_bit_exact():
    x = samples.tone(1.0, sr=16000).astype(np.float32)
    out = decode(samples.wav_bytes(x, 16000, subtype="FLOAT"), "a.wav")
    np.testing.assert_array_equal(out.audio, x)


def test_audio_empty_and_nan_are_errors():
    with pytest.raises(MediaError, match="no samples"):
        decode(samples.wav_bytes(np.zeros((0,), np.float32), 16000, subtype="FLOAT"), "e.wav")
    bad = samples.tone(0.2).astype(np.float32)
    bad[5] = np.nan
    with pytest.raises(MediaError, match="NaN"):
        decode(samples.wav_bytes(bad, 16000, subtype="FLOAT"), "n.wav")


def test_a_broken_pdf_after_an_encrypted_one_is_not_called_encrypted():
    """pdfium's last error is per thread and a failed open does not always set it: a PDF rejected for
    another reason right after an encrypted one must not inherit its "password" error."""
    from model.inputs import media
    from tests.reliability import corpus

    for _ in range(2):
        with pytest.raises(MediaError, match=r"encrypted \(password protected\)"):
            media._open_pdf(corpus.encrypted_pdf())
        with pytest.raises(MediaError, match=r"PDF is corrupt") as info:
            media._open_pdf(corpus.zero_page_pdf())
        assert "password" not in str(info.value)
