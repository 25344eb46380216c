"""Files made the way users' files are made, each with the outcome production must give it.

* phone photos: a page stored sideways or upside down with the EXIF Orientation tag set (Pillow
  writes it exactly as a camera does: `Image.Exif()[0x0112]`), in JPEG, PNG (eXIf) and WebP;
* HEIC, what iPhones save (pillow-heif / libheif; the rotation lives in the container);
* scanner output: a multi-page TIFF whose frames carry their own Orientation tags, PNM (PBM/PGM/PPM:
  SANE's `scanimage` default), and the other raster formats Pillow writes;
* an animated GIF (every frame a page);
* recordings libsndfile writes: AIFF, AIFC with A-law and u-law, Sun AU, CAF, W64;
* a PDF page turned with /Rotate (what a viewer's "rotate and save" writes) whose content is stored
  sideways: displayed upright;
* a LaTeX-made PDF from a Debian package (pdfTeX, shared-mime-info's spec, when installed).

`upright(o)` and `stored(image, o)` are exact inverses of Pillow's `ImageOps.exif_transpose`: the
stored pixels of orientation `o`, turned back, are the upright page.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np

from jobs import samples

# The Pillow transpose that `exif_transpose` applies for each orientation, and its inverse (what a
# camera stored). 5 and 7 (transpose/transverse) are their own inverses, 6 and 8 each other's.
_UNDO = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
         7: "TRANSVERSE", 8: "ROTATE_90"}
_STORE = {**_UNDO, 6: "ROTATE_90", 8: "ROTATE_270"}
LATEX_PDF = pathlib.Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


def stored(image, orientation: int):
    """The pixels a camera stores for `image` (upright) with this EXIF orientation."""
    from PIL import Image

    return image if orientation == 1 else image.transpose(getattr(Image.Transpose, _STORE[orientation]))


def exif(orientation: int) -> bytes:
    from PIL import Image

    tags = Image.Exif()
    tags[0x0112] = orientation
    tags[0x010F] = "Phone maker"  # Make, as a camera writes it
    return tags.tobytes()


def encode(image, fmt: str, **kwargs) -> bytes:
    from model.inputs import media

    media.register_image_plugins()  # HEIF
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo(image, orientation: int, fmt: str = "JPEG", **kwargs) -> bytes:
    """`image` (upright) saved as a phone does: stored turned, the EXIF tag saying how to undo it."""
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return encode(stored(image, orientation), fmt, exif=exif(orientation), **{**options, **kwargs})


def heic(image, orientation: int = 1) -> bytes:
    """A HEIC photo; pillow-heif turns the EXIF orientation into the container's rotation."""
    return encode(stored(image, orientation), "HEIF", quality=95, exif=exif(orientation))


def tiff_with_orientations(images: list, orientations: list[int]) -> bytes:
    """A multi-page TIFF, each frame stored turned with its own Orientation tag (274)."""
    from PIL import TiffImagePlugin

    buf = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buf, new=True) as out:
        for image, orientation in zip(images, orientations):
            stored(image, orientation).save(out, "TIFF", compression="tiff_deflate", tiffinfo={274: orientation})
            out.newFrame()
    return buf.getvalue()


def gif(images: list) -> bytes:
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=500)


def rotated_pdf(image, rotate: int = 90) -> bytes:
    """A one-page PDF whose content is `image` stored turned back by `rotate`, with /Rotate `rotate`:
    a viewer (and pdfium) displays it upright."""
    import pypdfium2 as pdfium
    from PIL import Image

    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}[rotate]
    doc = pdfium.PdfDocument(encode(image.transpose(turn), "PDF", resolution=100.0))
    doc[0].set_rotation(rotate)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def audio(fmt: str, subtype: str, seconds: float = 1.5, sr: int = 22050) -> bytes:
    """A mono clip (a 440 Hz tone) in a libsndfile container and encoding."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@dataclasses.dataclass
class RealFile:
    name: str
    data: bytes
    kind: str  # "document" | "audio"
    fmt: str  # the `format` the job reports
    pages: int = 1
    orientations: tuple = ()  # per page: the orientation code applied (documents)
    upright_size: tuple | None = None  # (width, height) of page 1 once upright
    duration_s: float | None = None


def corpus() -> list[RealFile]:
    """The real-file corpus, each with its expected outcome (one ok row each)."""
    page = samples.text_page("Invoice 4521, total due 1,250.00 EUR.", (360, 240))
    narrow = samples.text_page("Delivery note, page two.", (300, 200))
    files = [
        RealFile("phone_o3.jpg", photo(page, 3), "document", "jpeg", orientations=(3,), upright_size=(360, 240)),
        RealFile("phone_o6.jpg", photo(page, 6), "document", "jpeg", orientations=(6,), upright_size=(360, 240)),
        RealFile("phone_o8.jpg", photo(page, 8), "document", "jpeg", orientations=(8,), upright_size=(360, 240)),
        RealFile("screenshot_o6.png", photo(page, 6, "PNG"), "document", "png", orientations=(6,),
                 upright_size=(360, 240)),
        RealFile("photo_o5.webp", photo(page, 5, "WEBP"), "document", "webp", orientations=(5,),
                 upright_size=(360, 240)),
        RealFile("iphone.heic", heic(page, 6), "document", "heif", orientations=(6,), upright_size=(360, 240)),
        RealFile("scan_turned.tiff", tiff_with_orientations([page, narrow, page], [1, 6, 8]), "document", "tiff",
                 pages=3, orientations=(1, 6, 8), upright_size=(360, 240)),
        RealFile("animated.gif", gif([page, page.transpose(0), narrow.resize((360, 240))]), "document", "gif",
                 pages=3, orientations=(1, 1, 1), upright_size=(360, 240)),
        RealFile("scanimage.pgm", encode(page.convert("L"), "PPM"), "document", "ppm", orientations=(1,),
                 upright_size=(360, 240)),
        RealFile("lineart.pbm", encode(page.convert("1"), "PPM"), "document", "ppm", orientations=(1,),
                 upright_size=(360, 240)),
        RealFile("colour.ppm", encode(page, "PPM"), "document", "ppm", orientations=(1,), upright_size=(360, 240)),
        RealFile("scan.jp2", encode(page, "JPEG2000"), "document", "jpeg2000", orientations=(1,),
                 upright_size=(360, 240)),
        RealFile("fax.tga", encode(page, "TGA"), "document", "tga", orientations=(1,), upright_size=(360, 240)),
        RealFile("old.pcx", encode(page, "PCX"), "document", "pcx", orientations=(1,), upright_size=(360, 240)),
        RealFile("page.qoi", encode(page, "QOI"), "document", "qoi", orientations=(1,), upright_size=(360, 240)),
        RealFile("rotated.pdf", rotated_pdf(page, 90), "document", "pdf", orientations=(6,)),
        RealFile("voice.aiff", audio("AIFF", "PCM_16"), "audio", "aiff", duration_s=1.5),
        RealFile("voice_alaw.aifc", audio("AIFF", "ALAW"), "audio", "aiff", duration_s=1.5),
        RealFile("voice_ulaw.aifc", audio("AIFF", "ULAW"), "audio", "aiff", duration_s=1.5),
        RealFile("voice.au", audio("AU", "PCM_16", sr=8000), "audio", "au", duration_s=1.5),
        RealFile("voice_ulaw.au", audio("AU", "ULAW", sr=8000), "audio", "au", duration_s=1.5),
        RealFile("voice.caf", audio("CAF", "PCM_24"), "audio", "caf", duration_s=1.5),
        RealFile("voice.w64", audio("W64", "FLOAT"), "audio", "w64", duration_s=1.5),
    ]
    if LATEX_PDF.is_file():
        import pypdfium2 as pdfium

        data = LATEX_PDF.read_bytes()
        files.append(RealFile("latex_manual.pdf", data, "document", "pdf", pages=len(pdfium.PdfDocument(data))))
    return files
