"""model.inputs.media: real encoders (Pillow, pillow-heif, pypdfium2, soundfile) produce the inputs;
no engine. Files that fail go through `tests.reliability.corpus.decode`, the production decoders
(`model.inputs.pages` for documents, `media.decode_audio` for recordings)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs import samples
from model.inputs import media, pages
from model.inputs.media import MediaError, MediaLimits, decode_audio, decode_images, sniff_kind, to_rgb
from tests import realfiles
from tests.reliability.corpus import decode


def test_sniff_by_magic_beats_extension():
    png = samples.png_page("hello")
    assert sniff_kind(png, "scan.jpg") == ("image", "png")
    assert sniff_kind(samples.pdf_doc(["a"]), None) == ("pdf", "pdf")
    assert sniff_kind(samples.wav_bytes(samples.tone(0.5)), "x.bin") == ("audio", "wav")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_single_images_decode_to_rgb(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (64, 40), (10, 200, 30)).save(buf, format=fmt)
    out = decode_images(buf.getvalue())
    assert len(out) == 1 and out[0].mode == "RGB" and out[0].size == (64, 40)


def test_multipage_tiff_and_pdf_give_every_page():
    tiff = decode_images(samples.tiff_doc(["one", "two", "three"]))
    assert len(tiff) == 3 and all(p.mode == "RGB" for p in tiff)
    geometry = pages.PageGeometry(1120)
    pdf = list(pages.open_pages(samples.pdf_doc(["one", "two"]), "d.pdf", geometry, MediaLimits(pdf_dpi=72)))
    assert len(pdf) == 2
    # A4-ish page at 72 dpi is ~612x792 points; at 144 dpi twice that.
    big = next(iter(pages.open_pages(samples.pdf_doc(["x"]), "d.pdf", geometry, MediaLimits(pdf_dpi=144))))
    assert big.source_width == pytest.approx(2 * pdf[0].source_width, abs=2)


def test_pdf_page_limit_is_an_error_not_a_truncation():
    with pytest.raises(MediaError, match="page limit of 2"):
        media.open_pdf(samples.pdf_doc(["a", "b", "c"]), MediaLimits(max_pages=2))


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
        decode_images(bomb, MediaLimits(max_image_pixels=50_000_000))


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
        decode_images(buf.getvalue())


def test_audio_resampled_to_16k_mono_float32():
    sr = 44100
    t = np.arange(int(sr * 1.5)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    for fmt in ("WAV", "FLAC", "OGG"):
        audio = decode_audio(samples.wav_bytes(stereo, sr, fmt=fmt))
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - 24000) <= 2
        # A real resampler keeps a 440 Hz tone's energy (peak ~0.5), no aliasing blow-up.
        assert 0.4 < np.abs(audio[4000:20000]).max() < 0.6


def test_audio_already_16k_is_bit_exact():
    x = samples.tone(1.0, sr=16000).astype(np.float32)
    np.testing.assert_array_equal(decode_audio(samples.wav_bytes(x, 16000, subtype="FLOAT")), x)


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
    from tests.reliability import corpus

    for _ in range(2):
        with pytest.raises(MediaError, match=r"encrypted \(password protected\)"):
            media.open_pdf(corpus.encrypted_pdf(), MediaLimits())
        with pytest.raises(MediaError, match=r"PDF is corrupt") as info:
            media.open_pdf(corpus.zero_page_pdf(), MediaLimits())
        assert "password" not in str(info.value)


# -- orientation ------------------------------------------------------------------------------------


def _page():
    """An asymmetric page: every turn and mirror of it differs."""
    return samples.text_page("Upright 1,250.00 EUR", (120, 72))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_undone_exactly(fmt, orientation):
    """Lossless files stored turned/mirrored with the tag set decode to the upright page, bit for bit."""
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = realfiles.photo(_page(), orientation, fmt, **kwargs)
    with media.ImageFile(data, MediaLimits()) as image:
        frame = image.frame(0)
        assert frame.orientation == orientation and frame.size == (120, 72)
        np.testing.assert_array_equal(np.asarray(frame.upright()), np.asarray(_page()))


def test_a_jpeg_photo_is_read_upright_and_never_passed_through_as_stored():
    for orientation in (3, 6, 8):
        data = realfiles.photo(_page(), orientation)
        page = next(iter(pages.open_pages(data, "photo.jpg", pages.PageGeometry(280))))
        assert page.orientation == orientation and page.form == "converted"  # not the stored bytes
        assert (page.width, page.height) == (120, 72)
        diff = np.abs(np.asarray(to_rgb(page.image), np.int16) - np.asarray(_page(), np.int16))
        assert diff.mean() < 3, diff.mean()  # JPEG noise, not a turned page
    upright = next(iter(pages.open_pages(realfiles.photo(_page(), 1), "photo.jpg", pages.PageGeometry(280))))
    assert upright.form == "original" and upright.orientation == 1


def test_a_large_sideways_photo_is_sized_by_its_upright_shape():
    big = samples.text_page("A portrait page photographed sideways.", (1200, 1800))
    page = next(iter(pages.open_pages(realfiles.photo(big, 6), "phone.jpg", pages.PageGeometry(280))))
    assert page.form == "resized" and page.orientation == 6
    assert (page.width, page.height) == pages.PageGeometry(280).target_size(1200, 1800)
    assert (page.source_width, page.source_height) == (1200, 1800)


def test_tiff_frames_carry_their_own_orientation():
    first, second = _page(), samples.text_page("Second page", (90, 60))
    data = realfiles.tiff_with_orientations([first, second, first], [1, 6, 8])
    out = list(pages.open_pages(data, "scan.tiff", pages.PageGeometry(280)))
    assert [p.orientation for p in out] == [1, 6, 8]
    for page, upright in zip(out, [first, second, first]):
        np.testing.assert_array_equal(np.asarray(to_rgb(page.image)), np.asarray(upright))


def test_heic_is_read_upright_and_records_the_turn():
    data = realfiles.heic(_page(), 6)
    assert sniff_kind(data, "IMG_0001.HEIC") == ("image", "heif")
    page = next(iter(pages.open_pages(data, "IMG_0001.HEIC", pages.PageGeometry(280))))
    assert page.orientation == 6 and (page.width, page.height) == (120, 72)
    diff = np.abs(np.asarray(to_rgb(page.image), np.int16) - np.asarray(_page(), np.int16))
    assert diff.mean() < 4, diff.mean()


def test_pdf_rotate_is_rendered_upright():
    page = next(iter(pages.open_pages(realfiles.rotated_pdf(_page(), 90), "turned.pdf", pages.PageGeometry(1120),
                                      MediaLimits(pdf_dpi=100))))
    assert page.orientation == 6 and (page.source_width, page.source_height) == (120, 72)
    diff = np.abs(np.asarray(to_rgb(page.image), np.int16) - np.asarray(_page(), np.int16))
    assert diff.mean() < 3, diff.mean()


# -- formats ----------------------------------------------------------------------------------------


def test_every_real_file_opens_with_its_format_by_content():
    """The real-file corpus, under a misleading name: sniffed by content, every page/clip decodes."""
    for item in realfiles.corpus():
        kind, fmt = sniff_kind(item.data, "upload.bin")
        assert (kind == "audio") == (item.kind == "audio") and fmt == item.fmt, (item.name, kind, fmt)
        decoded = decode(item.data, item.name)
        if item.kind == "audio":
            assert decoded.duration_s == pytest.approx(item.duration_s, abs=0.01), item.name
        else:
            assert len(decoded.pages) == item.pages, item.name


def test_a_gif_gives_every_frame_as_a_page():
    frames = [samples.text_page(f"frame {i}", (80, 50)) for i in range(3)]
    out = decode_images(realfiles.gif(frames))
    assert len(out) == 3 and all(p.size == (80, 50) and p.mode == "RGB" for p in out)
    assert len({np.asarray(p).tobytes() for p in out}) == 3


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "PCX", "SGI", "QOI", "JPEG2000", "DDS", "IM"])
def test_pillow_raster_formats_are_read(fmt):
    image = Image.new("RGB", (48, 32), (10, 200, 30))
    out = decode_images(realfiles.encode(image, fmt))
    assert out[0].size == (48, 32) and np.asarray(out[0])[5, 5].tolist() == [10, 200, 30]


def test_formats_pillow_cannot_decode_alone_and_unknown_files_are_clear_errors():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"0 0 moveto\n" * 20
    with pytest.raises(MediaError, match="EPS images cannot be read here"):
        sniff_kind(eps, "figure.eps")
    with pytest.raises(MediaError, match="unsupported file type '.docx'.*AIFF"):
        sniff_kind(b"PK\x03\x04" + b"\x00" * 64, "letter.docx")
