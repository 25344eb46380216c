"""A PDF page's embedded text layer (pdfium's text page) and whether it can stand in for the model.

Born-digital PDFs carry their text; scans carry none, or an earlier OCR's invisible layer, and badly
embedded fonts give a layer of garbage. `page_text_layer(page)` extracts the layer of one pdfium
page and judges it (`LayerRules`, all stated here):

* `none`    - no text at all;
* `sparse`  - fewer than `min_chars` non-whitespace characters (a page number, a stamp);
* `garbled` - under `min_printable` of its non-whitespace characters are printable: control
              characters, private-use or unassigned code points and U+FFFD/U+FFFE are what fonts
              without a usable Unicode mapping produce;
* `partial` - visible text covers under `min_coverage` of the page's content area: the area of its
              text and image objects on a `GRID` x `GRID` grid, where image cells that visible text
              does not also cover count against it (vector paths are ignored: table rules and
              underlines are not content a reader misses). A scanned page with an invisible OCR layer
              (text render mode 3) is `partial`: its content is the image;
* `usable`  - none of the above: the layer is the page's text.

Under `--pdf-text prefer` a `usable` layer becomes the page's text and the model is skipped; under
`anchor` a layer that is not `none`/`garbled` goes into the prompt (`model.inputs.prompts.anchored`).

Cost per page: one pdfium text page plus one walk over the page objects, milliseconds, no
rendering; nothing is kept after the verdict but the text.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterator
from typing import Literal

import numpy as np

Verdict = Literal["usable", "none", "sparse", "garbled", "partial"]
GRID = 48
_BAD_CATEGORIES = {"Cc", "Co", "Cs", "Cn"}


@dataclasses.dataclass(frozen=True)
class LayerRules:
    min_chars: int = 50
    min_printable: float = 0.97
    min_coverage: float = 0.5


@dataclasses.dataclass(frozen=True)
class TextLayer:
    text: str  # normalised (see `normalize`)
    verdict: Verdict
    chars: int  # non-whitespace characters
    printable: float  # share of those that are printable
    coverage: float  # share of the page's content area covered by visible text

    @property
    def usable(self) -> bool:
        return self.verdict == "usable"

    @property
    def anchorable(self) -> bool:
        """Worth giving to the model as context: some real text."""
        return self.verdict in ("usable", "sparse", "partial")


def normalize(text: str) -> str:
    """pdfium's text -> plain text: line breaks as `\\n`, no trailing spaces, at most one blank
    line in a row, no leading/trailing blank lines. pdfium marks a hyphen it found at a line end
    as U+0002; it becomes a plain hyphen."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "-").replace("\x00", "")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n").strip()


def printable_share(text: str) -> tuple[int, float]:
    """(non-whitespace characters, share of them that are printable)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0, 0.0
    bad = sum(1 for c in chars if c in "\ufffd\ufffe" or unicodedata.category(c) in _BAD_CATEGORIES)
    return len(chars), 1.0 - bad / len(chars)


def _coverage(page) -> float:
    import pypdfium2.raw as raw

    left, bottom, right, top = page.get_bbox()
    width, height = max(right - left, 1e-6), max(top - bottom, 1e-6)
    text_cells = np.zeros((GRID, GRID), bool)
    image_cells = np.zeros((GRID, GRID), bool)

    def mark(grid, bounds) -> None:
        x0, y0, x1, y1 = bounds
        c0 = int(np.clip((x0 - left) / width * GRID, 0, GRID - 1))
        c1 = int(np.clip(np.ceil((x1 - left) / width * GRID), c0 + 1, GRID))
        r0 = int(np.clip((y0 - bottom) / height * GRID, 0, GRID - 1))
        r1 = int(np.clip(np.ceil((y1 - bottom) / height * GRID), r0 + 1, GRID))
        grid[r0:r1, c0:c1] = True

    for obj in page.get_objects(filter=[raw.FPDF_PAGEOBJ_TEXT, raw.FPDF_PAGEOBJ_IMAGE], max_depth=4):
        try:
            bounds = obj.get_bounds()
        except Exception:  # noqa: BLE001 - an object without bounds covers nothing
            continue
        if obj.type == raw.FPDF_PAGEOBJ_IMAGE:
            mark(image_cells, bounds)
        elif raw.FPDFTextObj_GetTextRenderMode(obj.raw) != raw.FPDF_TEXTRENDERMODE_INVISIBLE:
            mark(text_cells, bounds)
    content = int((text_cells | image_cells).sum())
    if content == 0:
        return 0.0
    return 1.0 - int((image_cells & ~text_cells).sum()) / content


def page_text_layer(page, rules: LayerRules = LayerRules()) -> TextLayer:
    """The text layer of one `pypdfium2.PdfPage` and its verdict."""
    textpage = page.get_textpage()
    try:
        text = normalize(textpage.get_text_range())
    finally:
        textpage.close()
    chars, printable = printable_share(text)
    if chars == 0:
        return TextLayer("", "none", 0, 0.0, 0.0)
    coverage = _coverage(page)
    if chars < rules.min_chars:
        verdict: Verdict = "sparse"
    elif printable < rules.min_printable:
        verdict = "garbled"
    elif coverage < rules.min_coverage:
        verdict = "partial"
    else:
        verdict = "usable"
    return TextLayer(text, verdict, chars, round(printable, 4), round(coverage, 4))


def text_layers(data: bytes, rules: LayerRules = LayerRules()) -> Iterator[TextLayer]:
    """Every page's layer of a PDF, lazily (standalone use: benches, tests, a quick look)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(data)
    try:
        for index in range(len(doc)):
            page = doc[index]
            try:
                yield page_text_layer(page, rules)
            finally:
                page.close()
    finally:
        doc.close()


class DocumentLayers:
    """The text layers of one PDF as the decode stage needs them, in bounded memory.

    * `take_usable()` (for `prefer`): one pass over every page's layer, yielding (index, layer) for
      the usable ones (the caller emits their text and skips rendering them); the other pages'
      verdicts are kept (one short string each), their text is not.
    * `at(index)`: the layer of a page the model reads, for its verdict and (`anchor`) its text.
      Pages are asked for in increasing order (the order pages are rendered), so this walks the
      document once, alongside the rendering, holding one page's text at a time.
    """

    def __init__(self, data: bytes, rules: LayerRules = LayerRules()):
        self._data, self._rules = data, rules
        self._verdicts: dict[int, Verdict] = {}
        self._walk = None
        self._position = -1
        self._current: TextLayer | None = None

    def take_usable(self) -> Iterator[tuple[int, TextLayer]]:
        for index, layer in enumerate(text_layers(self._data, self._rules)):
            if layer.usable:
                yield index, layer
            else:
                self._verdicts[index] = layer.verdict

    def verdict(self, index: int) -> Verdict | None:
        """A verdict `take_usable` saw (None if it did not run)."""
        return self._verdicts.get(index)

    def at(self, index: int) -> TextLayer:
        if index < self._position:
            raise ValueError(f"pages must be asked for in order ({index} after {self._position})")
        if self._walk is None:
            self._walk = text_layers(self._data, self._rules)
        while self._position < index:
            self._current = next(self._walk)
            self._position += 1
        return self._current

    def close(self) -> None:
        if self._walk is not None:
            self._walk.close()
