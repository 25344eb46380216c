"""The bad-input corpus: every kind of broken, odd or hostile input a nightly job meets, generated
locally and deterministically (nothing downloaded).

Each `Case` says what the file is and what must come out of it: either `expect="ok"` (a correct
decode/result; `check` verifies the decoded content where that is meaningful) or `expect="error"`
with a regular expression the error message must match (a message a person can act on).

`file_cases()` are single files (uploaded to the object store or a directory for the job);
`parquet_cases()` are Parquet tables whose rows are bad in themselves (nulls, wrong types, a URI
pointing at a missing object). The long recording is written to disk in blocks so that generating
it does not itself need the memory the test is about to measure.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import zlib
from collections.abc import Callable

import numpy as np

from jobs import samples


@dataclasses.dataclass
class Case:
    kind: str  # short name, unique: the "kind of bad input"
    filename: str
    data: bytes | None  # None: content lives at `path` (large files)
    expect: str  # "ok" | "error"
    message: str | None = None  # regex the error message must match (expect == "error")
    what: str = ""
    check: Callable | None = None  # check(decoded: Decoded) for expect == "ok"
    path: pathlib.Path | None = None

    def payload(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


@dataclasses.dataclass
class Decoded:
    """What production makes of a file: a document's prepared pages (RGB, at the model's size for the
    default budget: `model.inputs.pages`, as the job and the endpoint prepare them) or a recording's
    16 kHz waveform (`model.inputs.media.decode_audio`)."""

    kind: str  # "image" | "pdf" | "audio"
    pages: list = dataclasses.field(default_factory=list)
    audio: np.ndarray | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.audio is None else len(self.audio) / 16000


def decode(data: bytes, name: str) -> Decoded:
    """A file through the production decoders; MediaError for a file (or any page of it) they refuse."""
    from model.inputs import media, pages

    kind, _ = media.sniff_kind(data, name)
    if kind == "audio":
        return Decoded(kind, audio=media.decode_audio(data))
    out = []
    for page in pages.open_pages(data, name, pages.PageGeometry()):
        if page.error:
            raise media.MediaError(page.error)
        out.append(media.to_rgb(page.image))
    return Decoded(kind, pages=out)


# -- builders -------------------------------------------------------------------------------------


def _image_bytes(image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _page(mode: str = "RGB", size=(96, 64)):
    page = samples.text_page("Reliability corpus page.", (240, 160)).resize(size)
    return page.convert(mode) if mode != "RGB" else page


def pdf_from_objects(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A syntactically valid PDF (correct xref offsets) from numbered object bodies; object 1 is
    the catalog. Hand-written because no PDF writer on PyPI here emits the odd files we need."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra, xref))
    return out.getvalue()


def zero_page_pdf() -> bytes:
    return pdf_from_objects([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def encrypted_pdf() -> bytes:
    """Standard security handler (RC4, revision 3) with a user password: pdfium cannot open it
    without the password. The /O and /U entries are fixed bytes, so no empty password matches."""
    o = bytes(range(32)).hex().encode()
    u = bytes(range(32, 64)).hex().encode()
    content = b"BT /F1 12 Tf 72 720 Td (secret) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Filter /Standard /V 2 /R 3 /Length 128 /P -3904 /O <" + o + b"> /U <" + u + b"> >>",
    ]
    return pdf_from_objects(objects, b"/Encrypt 5 0 R /ID [<0123456789abcdef0123456789abcdef> <0123456789abcdef0123456789abcdef>] ")


def poster_pdf() -> bytes:
    """One 200 x 200 inch page: rendered at 144 dpi it would be 829 MP; media scales it down."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >>",
    ]
    return pdf_from_objects(objects)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height written row by row through zlib, so generating it needs
    no full-size image in memory (a 40000 x 40000 bomb is ~190 kB on disk, 4.8 GB as RGB)."""
    import struct

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav(audio: np.ndarray, sr: int, subtype: str | None = None, fmt: str = "WAV") -> bytes:
    return samples.wav_bytes(audio, sr, fmt=fmt, subtype=subtype)


def write_long_recording(path: pathlib.Path, seconds: float, sr: int = 8000) -> pathlib.Path:
    """A long 16-bit mono WAV written in 60 s blocks (a tone with a slow level change)."""
    import soundfile as sf

    block = sine(300.0, 60.0, sr, 0.3)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16", format="WAV") as out:
        left = int(seconds * sr)
        while left > 0:
            n = min(left, block.size)
            out.write(block[:n])
            left -= n
    return path


def dominant_hz(audio: np.ndarray, sr: int = 16000) -> float:
    window = audio[: sr * 2]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(window.size)))
    return float(np.argmax(spectrum) * sr / window.size)


# -- checks for the cases that must decode correctly -------------------------------------------------


def _one_page(size):
    def check(decoded):
        assert decoded.kind == "image" and len(decoded.pages) == 1
        page = decoded.pages[0]
        assert page.mode == "RGB" and page.size == size, (page.mode, page.size)
    return check


def _white_background(decoded):
    """Transparent pixels are composited on white (paper), not black."""
    _one_page((96, 64))(decoded)
    arr = np.asarray(decoded.pages[0])
    assert arr[0, 0].tolist() == [255, 255, 255], arr[0, 0]


def _tone_check(freq: float, seconds: float, amplitude: float):
    def check(decoded):
        assert decoded.kind == "audio" and decoded.audio.dtype == np.float32
        assert abs(decoded.duration_s - seconds) < 0.01, decoded.duration_s
        assert abs(dominant_hz(decoded.audio) - freq) < 2.0
        rms = float(np.sqrt(np.mean(decoded.audio[1000:-1000] ** 2)))
        assert abs(rms - amplitude / np.sqrt(2)) < 0.02, rms
    return check


def _poster_check(decoded):
    assert decoded.kind == "pdf" and len(decoded.pages) == 1
    w, h = decoded.pages[0].size
    assert w == h and w * h <= 100_000_000  # scaled down to the pixel limit, not refused


# -- the corpus -----------------------------------------------------------------------------------


def file_cases(workdir: pathlib.Path, long_audio_s: float) -> list[Case]:
    from PIL import Image

    good_png = samples.png_page("A good page among bad ones.", (240, 160))
    alpha = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    alpha.paste(Image.new("RGBA", (40, 20), (10, 10, 10, 255)), (30, 20))
    palette = _page("P")
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.tile(np.linspace(0, 65535, 96, dtype=np.uint16), (64, 1)))
    stereo = np.stack([sine(440.0, 3.0, 8000), sine(440.0, 3.0, 8000)], axis=1)
    nan_audio = sine(440.0, 1.0, 16000)
    nan_audio[100], nan_audio[200] = np.nan, np.inf
    png = good_png
    truncated_wav = wav(sine(440.0, 2.0, 16000), 16000)
    long_path = write_long_recording(workdir / "long_recording.wav", long_audio_s)
    return [
        Case("good_png", "good.png", good_png, "ok", check=_one_page((240, 160)), what="control: a normal page"),
        Case("truncated_png", "truncated.png", png[: len(png) // 2], "error", r"truncated or corrupt"),
        Case("truncated_jpeg", "truncated.jpg", samples.jpeg_page("cut")[:1500], "error", r"truncated or corrupt"),
        Case("zero_byte", "empty.png", b"", "error", r"empty \(0 bytes\)"),
        Case("decompression_bomb", "bomb.png", png_bomb(40_000, 40_000), "error", r"decompression-bomb guard",
             what="40000x40000 PNG, ~190 kB on disk"),
        Case("image_1x1", "dot.png", _image_bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok",
             check=_one_page((1, 1))),
        Case("image_100000x10", "strip.png", _image_bytes(Image.new("L", (100_000, 10), 200), "PNG"), "error",
             r"aspect ratio"),
        Case("cmyk_jpeg", "cmyk.jpg", _image_bytes(_page("CMYK"), "JPEG"), "ok", check=_one_page((96, 64))),
        Case("png_16bit", "deep.png", _image_bytes(sixteen, "PNG"), "ok", check=_one_page((96, 64))),
        Case("palette_png", "palette.png", _image_bytes(palette, "PNG"), "ok", check=_one_page((96, 64))),
        Case("alpha_png", "alpha.png", _image_bytes(alpha, "PNG"), "ok", check=_white_background),
        Case("encrypted_pdf", "locked.pdf", encrypted_pdf(), "error", r"encrypted \(password protected\)"),
        Case("corrupt_pdf", "corrupt.pdf", b"%PDF-1.7\n1 0 obj << /Type /Cat" + bytes(range(256)) * 4, "error",
             r"PDF is corrupt"),
        Case("zero_page_pdf", "nopages.pdf", zero_page_pdf(), "error", r"no pages|PDF is corrupt",
             what="pdfium refuses a page tree with /Count 0 at open"),
        Case("poster_pdf", "poster.pdf", poster_pdf(), "ok", check=_poster_check,
             what="200x200 inch page: rendered at a lower DPI that fits the pixel limit"),
        Case("wav_zero_samples", "silence0.wav", wav(np.zeros(0, np.float32), 16000), "error", r"no samples"),
        Case("wav_nan_inf", "nan.wav", wav(nan_audio, 16000, "FLOAT"), "error", r"NaN or infinite"),
        Case("truncated_wav", "cut.wav", truncated_wav[: len(truncated_wav) // 3], "ok",
             check=lambda d: (d.kind == "audio") and abs(d.duration_s - 2.0 / 3) < 0.05 or _fail(d),
             what="header promises 2 s, 0.67 s present: the samples present are decoded"),
        Case("wav_8k_stereo", "stereo8k.wav", wav(stereo, 8000), "ok", check=_tone_check(440.0, 3.0, 0.5)),
        Case("wav_96k_24bit", "hires.wav", wav(sine(1000.0, 2.0, 96000), 96000, "PCM_24"), "ok",
             check=_tone_check(1000.0, 2.0, 0.5)),
        Case("long_recording", "long_recording.wav", None, "ok", path=long_path,
             check=lambda d: abs(d.duration_s - long_audio_s) < 0.01 or _fail(d),
             what=f"{long_audio_s / 3600:.2f} h, 8 kHz 16-bit WAV, streamed"),
        Case("text_as_wav", "notes.wav", b"meeting notes: buy milk\n" * 20, "error", r"not a valid WAV"),
        Case("text_as_jpg", "notes.jpg", b"<html><body>not an image</body></html>\n" * 5, "error",
             r"not a valid JPG"),
        Case("random_bytes_mp3", "noise.mp3", np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes()
             .replace(b"\xff", b"\x00").replace(b"ID3", b"xx3"), "error", r"not a valid MP3"),
        Case("unsupported_type", "sheet.xlsx", b"PK\x03\x04" + b"\x00" * 100, "error", r"unsupported file type"),
    ]


def _fail(decoded):
    raise AssertionError(f"unexpected decode: {decoded.kind} {decoded.duration_s}")


def parquet_cases(good_png: bytes, missing_uri: str) -> dict[str, tuple[bytes, list[tuple[str, str]]]]:
    """Parquet tables -> (file bytes, [(row id, expected regex or "ok")])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table_bytes(table: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    nulls = pa.table({"id": ["pq-null-ok", "pq-null-1", "pq-null-2"],
                      "image": pa.array([good_png, None, None], pa.binary())})
    wrong = pa.table({"id": ["pq-wrong-1", "pq-wrong-2"], "image": pa.array([17, 42], pa.int64())})
    uris = pa.table({"id": ["pq-missing", "pq-empty-uri"], "uri": pa.array([missing_uri, None], pa.string())})
    return {
        "rows_with_nulls.parquet": (table_bytes(nulls), [("pq-null-ok", "ok"), ("pq-null-1", r"column is null"),
                                                          ("pq-null-2", r"column is null")]),
        "rows_wrong_types.parquet": (table_bytes(wrong), [("pq-wrong-1", r"holds int, expected binary"),
                                                           ("pq-wrong-2", r"holds int, expected binary")]),
        "rows_missing_uri.parquet": (table_bytes(uris), [("pq-missing", r"object not found"),
                                                          ("pq-empty-uri", r"empty or not a string")]),
    }
