"""Deterministic sample inputs: rendered text pages, multi-page TIFF/PDF, audio clips, bad files.

Used by `python -m jobs.demo`, the tests and the bench, so everything is generated locally (no
downloads) and byte-identical for a given seed.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

SAMPLE_TEXTS = [
    "Invoice number 4521, total due: 1,250.00 EUR by 2026-12-01.",
    "Page one of the quarterly report; revenue grew by seven percent.",
    "Dear customer, thank you for your order #88213 shipped today.",
    "The quick brown fox jumps over the lazy dog.",
]


def text_page(text: str, size: tuple[int, int] = (480, 640)):
    """A white page with black text lines, as a scanner would deliver it."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    y = 40
    for line in _wrap(text, 40):
        draw.text((30, y), line, fill="black")
        y += 18
    return page


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _save(images, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    first, *rest = images
    if rest:
        kwargs.update(save_all=True, append_images=rest)
    first.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_page(text: str, size=(480, 640)) -> bytes:
    return _save([text_page(text, size)], "PNG")


def jpeg_page(text: str, size=(480, 640)) -> bytes:
    return _save([text_page(text, size)], "JPEG", quality=90)


def tiff_doc(texts: list[str], size=(320, 420)) -> bytes:
    return _save([text_page(t, size) for t in texts], "TIFF", compression="tiff_deflate")


def pdf_doc(texts: list[str], size=(612, 792)) -> bytes:
    """A PDF with one page per text (Pillow writes it at 72 dpi: page size in points = pixels)."""
    return _save([text_page(t, size) for t in texts], "PDF", resolution=72.0)


def png_bomb(width: int, height: int) -> bytes:
    """A single-colour PNG that is small on disk and huge once decoded."""
    from PIL import Image

    return _save([Image.new("1", (width, height))], "PNG", optimize=True)


def tone(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like signal: a few harmonics with a slow envelope plus faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 20 * rng.random()
    signal = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2
    return (0.25 * signal * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def wav_bytes(audio: np.ndarray, sr: int = 16000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


# -- the demo's inputs (`make demo`) ----------------------------------------------------------------
# Documents made of what the demo checkpoint reads (docs/demo-model.md, "What it can read"): one rendered
# line per page, laid out by `model.checkpoints.demo.line_image` in Pillow's built-in font (the same on
# every machine). The lines are freshly written; of 54 candidates, these are among the 25 the shipped checkpoint
# read exactly as PNG, JPEG, PDF page and TIFF page (tests/model/test_demo.py checks them through the vLLM engine).
DEMO_DOCUMENTS = {
    "receipt.jpg": ["Receipt 3391 total 86.40 EUR"],
    "report.pdf": ["Budget report for the year 2026", "Order total 1425.00 EUR", "Report page 3 of 3"],
    "delivery.tiff": ["Delivery note 7710 for order 5523", "Order 6617 shipped on 2026-11-02",
                      "Signed by the project office"],
}
DEMO_PDF_DPI = 100.0  # jobs.demo renders PDFs at this resolution: report.pdf's pages come back at their own size
MEMO_TEXT = "7 5 9 4 7 0 0"  # memo.wav: this string of the long recording, as a 44.1 kHz stereo WAV


def _line_images(texts: list[str]):
    from model.checkpoints.demo import line_image
    from model.checkpoints.demo_data import BUILTIN_FONT

    return [line_image(text, font_index=BUILTIN_FONT) for text in texts]


def line_jpeg(text: str) -> bytes:
    return _save(_line_images([text]), "JPEG", quality=90)


def line_tiff(texts: list[str]) -> bytes:
    """A multi-page TIFF, one line per page."""
    return _save(_line_images(texts), "TIFF", compression="tiff_deflate")


def line_pdf(texts: list[str], dpi: float = DEMO_PDF_DPI) -> bytes:
    """A PDF of scanned pages, one line per page, at `dpi`: rendering it at `dpi` gives back the pixels
    exactly. Pages are grayscale+alpha, which Pillow stores as lossless JPEG 2000 (RGB or L would be JPEG)."""
    pages = [image.convert("LA") for image in _line_images(texts)]
    return _save(pages, "PDF", resolution=dpi)


def write_demo_inputs(directory: pathlib.Path) -> dict[str, tuple[str, str | None]]:
    """The demo corpus: documents, speech, one bad file, plus the demo model's own samples.

    Returns {file name: (what it is, the text it holds)}: the text the demo checkpoint is expected to
    read (None for the bad file, which becomes one error row)."""
    import soxr

    from model.checkpoints import demo
    from model.inputs.media import decode_audio

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index, flac = demo.recording()
    memo = next(u for u in index["utterances"] if u["text"] == MEMO_TEXT)
    audio = decode_audio(flac)[int(memo["start_s"] * 16000) - 1600: int(memo["end_s"] * 16000) + 1600]
    audio44 = soxr.resample(audio, 16000, 44100).astype(np.float32)
    lines = DEMO_DOCUMENTS
    files = {
        "receipt.jpg": (line_jpeg(lines["receipt.jpg"][0]), "a rendered line (JPEG)", lines["receipt.jpg"][0]),
        "report.pdf": (line_pdf(lines["report.pdf"]), f"{len(lines['report.pdf'])}-page PDF, one line per page",
                       "\n\n".join(lines["report.pdf"])),
        "delivery.tiff": (line_tiff(lines["delivery.tiff"]), f"{len(lines['delivery.tiff'])}-page TIFF, one line per page",
                          "\n\n".join(lines["delivery.tiff"])),
        "memo.wav": (wav_bytes(np.stack([audio44, audio44], axis=1), 44100), "spoken digits (WAV, 44.1 kHz stereo)",
                     memo["text"]),
        "recording.flac": (flac, f"{index['seconds']:.0f} s recording of {len(index['utterances'])} spoken digit strings",
                           index["text"]),
        "broken.pdf": (b"%PDF-1.7\nthis file was cut off during upload", "bad file (corrupt PDF)", None),
    }
    for name, (payload, _, _) in files.items():
        (directory / name).write_bytes(payload)
    described = {name: (what, text) for name, (_, what, text) in files.items()}
    for name, text in demo.write_samples(directory).items():
        described[name] = ("demo-model sample: a rendered line" if name.endswith(".png")
                           else "demo-model sample: spoken digits", text)
    return described


# -- production-like documents (benchmarks and scale tests) ---------------------------------------

PAPER_MM = {"A4": (210, 297), "A3": (297, 420), "letter": (215.9, 279.4)}


def scan_page(dpi: int = 300, paper: str = "A4", *, seed: int = 0, quality: int = 85, mode: str = "RGB") -> bytes:
    """A JPEG as a flatbed scanner delivers it: off-white paper, lines of text, sensor noise.

    A4 at 300 dpi is 2480x3508 (about 2 MB); the noise keeps it from compressing unrealistically well."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    width_mm, height_mm = PAPER_MM[paper]
    width, height = round(width_mm / 25.4 * dpi), round(height_mm / 25.4 * dpi)
    page = Image.new("L", (width, height), 245)
    draw = ImageDraw.Draw(page)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", max(8, int(dpi * 0.15)))
    except OSError:
        font = ImageFont.load_default(max(8, int(dpi * 0.15)))
    words = " ".join(SAMPLE_TEXTS).split()
    y, margin, line_height = int(dpi * 0.8), int(dpi * 0.8), int(dpi * 0.23)
    while y < height - margin:
        draw.text((margin, y), " ".join(rng.choice(words, size=10)), fill=20, font=font)
        y += line_height
    grey = np.asarray(page, dtype=np.float32) + 6 * rng.standard_normal((height, width), dtype=np.float32)
    if mode == "L":
        pixels = grey.clip(0, 255).astype(np.uint8)
    else:
        pixels = np.stack([grey, grey * 0.99, grey * 0.97], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, dpi=(dpi, dpi))
    return buf.getvalue()


def tiff16_page(dpi: int = 300, paper: str = "A4", *, seed: int = 0) -> bytes:
    """A 16-bit greyscale TIFF scan (archival scanners), deflate-compressed."""
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(scan_page(dpi, paper, seed=seed, mode="L"))), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey * 257).save(buf, format="TIFF", compression="tiff_deflate")
    return buf.getvalue()


def _pdf_string(text: str) -> bytes:
    return b"(" + text.encode("latin-1", "replace").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _wrap_rows(text: str, width: int = 80) -> list[str]:
    rows, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            rows.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return rows + [line]


def text_pdf(pages: int | list[str] | list[list[str]], size: tuple[float, float] = (595.0, 842.0), *,
             lines: int = 30, font_size: float = 11.0, garbled: bool = False, invisible: bool = False,
             scan_under: bool = False) -> bytes:
    """A born-digital PDF (Helvetica, one of the standard fonts every reader has: a real text layer),
    written directly: objects, a content stream per page, xref. Cheap at any page count (a 2,000-page
    file is about 2 MB), so scale tests do not need a stored fixture.

    `pages`: a count (page i says "Page i" followed by sample sentences), texts (wrapped at 80
    characters, at most `lines` rows), or lists of lines (set as given: pdfium extracts exactly
    `"\\n".join(lines)`).
    `garbled`: the font's ToUnicode map sends every code to the private use area (what a badly embedded
    font gives: it renders, its text is garbage). `invisible`: text render mode 3 over a page-sized
    image (an earlier OCR's layer over a scan). `scan_under`: the same image under visible text."""
    if isinstance(pages, int):
        pages = [f"Page {i + 1}. " + " ".join(SAMPLE_TEXTS) for i in range(pages)]
    page_rows = [_wrap_rows(p)[:lines] if isinstance(p, str) else list(p) for p in pages]
    width, height = size
    objects: list[bytes] = [b"", b""]  # catalog, page tree: filled in below

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(content: bytes, extra: bytes = b"") -> bytes:
        return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(content), extra, content)

    font_extra = b""
    if garbled:
        cmap = (b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Garbled def "
                b"1 begincodespacerange <00> <FF> endcodespacerange 1 beginbfrange <00> <FF> <E000> endbfrange "
                b"endcmap CMapName currentdict /CMap defineresource pop end end")
        font_extra = b" /ToUnicode %d 0 R" % add(stream(cmap))
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding%s >>" % font_extra)
    image = None
    if invisible or scan_under:  # a 4x4 light-grey "scan", stretched over the page
        image = add(stream(bytes([235]) * 16, b"/Type /XObject /Subtype /Image /Width 4 /Height 4 "
                                              b"/ColorSpace /DeviceGray /BitsPerComponent 8 "))
    kids = []
    for rows in page_rows:
        ops = [b"q %.2f 0 0 %.2f 0 0 cm /Im1 Do Q" % (width, height)] if image is not None else []
        ops.append(b"BT /F1 %g Tf %g TL %s 56 %.0f Td" % (font_size, round(font_size * 1.3), b"3 Tr" if invisible else b"0 Tr",
                                                          height - 72))
        ops += [_pdf_string(row) + b" Tj T*" for row in rows]
        ops.append(b"ET")
        content = add(stream(b"\n".join(ops)))
        xobjects = b" /XObject << /Im1 %d 0 R >>" % image if image is not None else b""
        kids.append(add(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Resources << /Font << /F1 %d 0 R >>%s >> "
                        b"/Contents %d 0 R >>" % (width, height, font, xobjects, content)))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


BORN_DIGITAL_PAGES = [
    ["Quarterly report 2026", "Revenue grew by seven percent to 4.2 million EUR.",
     "Operating costs fell by two percent; the margin rose to 18 percent.", "Outlook: stable demand in Q1."],
    ["Invoice 4521 (customer 88213)", "Item A: 3 x 120.00 EUR = 360.00 EUR",
     "Item B: 1 x 890.00 EUR = 890.00 EUR", "Total due: 1,250.00 EUR by 2026-12-01"],
]


def speech_recording(seconds: float, *, seed: int = 0, noise: float = 0.002,
                     pauses: tuple[float, float] = (0.6, 2.5)) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """A long 16 kHz recording made of the demo's shipped spoken digit strings
    (model/checkpoints/demo_assets, no espeak-ng needed) separated by pauses drawn from `pauses`
    seconds, with faint noise. Returns the waveform and each string's (start, end) sample and text."""
    import soundfile as sf

    from model.checkpoints import demo, demo_data

    clips = []
    for stem in ("digits_a", "digits_b"):
        text, flac = demo.speech_clip(stem)
        audio, rate = sf.read(io.BytesIO(flac), dtype="float32")
        assert rate == 16000, rate
        clips.append((demo_data.trim_silence(audio), text))
    rng = np.random.default_rng(seed)
    total = int(seconds * 16000)
    audio = np.zeros(total, np.float32)
    at = int(rng.uniform(*pauses) * 16000)
    placed = []
    while True:
        clip, text = clips[int(rng.integers(len(clips)))]
        if at + clip.size > total:
            break
        audio[at:at + clip.size] = clip
        placed.append((at, at + clip.size, text))
        at += clip.size + int(rng.uniform(*pauses) * 16000)
    if noise:
        audio += rng.normal(0.0, noise, total).astype(np.float32)
    return audio, placed
