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


def write_demo_inputs(directory: pathlib.Path, *, seed: int = 0, long_audio_s: float = 70.0) -> dict[str, str]:
    """The demo corpus: documents, audio, one bad file. Returns {file name: what it is}."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "invoice.png": (png_page(SAMPLE_TEXTS[0]), "rendered text page (PNG)"),
        "letter.jpg": (jpeg_page(SAMPLE_TEXTS[2]), "rendered text page (JPEG)"),
        "report.tiff": (tiff_doc(SAMPLE_TEXTS[:3]), "3-page TIFF"),
        "report.pdf": (pdf_doc(SAMPLE_TEXTS[1:4]), "3-page PDF"),
        "memo.wav": (wav_bytes(tone(6.0, 44100, seed), 44100), "6 s clip, 44.1 kHz"),
        "meeting.flac": (wav_bytes(tone(long_audio_s, 16000, seed + 1), 16000, fmt="FLAC"),
                         f"{long_audio_s:g} s recording (chunked)"),
        "broken.pdf": (b"%PDF-1.7\nthis file was cut off during upload", "bad file (corrupt PDF)"),
    }
    for name, (payload, _) in files.items():
        (directory / name).write_bytes(payload)
    return {name: what for name, (_, what) in files.items()}
