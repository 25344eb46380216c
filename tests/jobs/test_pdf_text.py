"""model.inputs.pdf_text: pdfium's text layer of real PDFs (born-digital, garbage fonts, OCR layers
over scans, image-only scans) and the stated usability test."""

from __future__ import annotations

from jobs import samples
from model.inputs import pdf_text


def test_born_digital_pages_give_exactly_their_text():
    layers = list(pdf_text.text_layers(samples.text_pdf(samples.BORN_DIGITAL_PAGES)))
    assert [layer.text for layer in layers] == ["\n".join(lines) for lines in samples.BORN_DIGITAL_PAGES]
    assert all(layer.usable and layer.coverage == 1.0 and layer.printable == 1.0 for layer in layers)


def test_layers_that_must_still_go_to_the_model():
    scan = list(pdf_text.text_layers(samples.pdf_doc(samples.SAMPLE_TEXTS[:2])))
    assert [layer.verdict for layer in scan] == ["none", "none"]  # image-only scan
    garbled = next(pdf_text.text_layers(samples.text_pdf(samples.BORN_DIGITAL_PAGES, garbled=True)))
    assert garbled.verdict == "garbled" and garbled.printable < 0.97  # renders fine, its text is private-use garbage
    assert not garbled.anchorable
    ocr = next(pdf_text.text_layers(samples.text_pdf(samples.BORN_DIGITAL_PAGES, invisible=True)))
    assert ocr.verdict == "partial" and ocr.coverage == 0.0 and ocr.anchorable  # invisible text over a scan
    stamp = next(pdf_text.text_layers(samples.text_pdf([["Page 7"]])))
    assert stamp.verdict == "sparse" and stamp.chars == 5


def test_rules_are_parameters():
    page = samples.BORN_DIGITAL_PAGES[:1]
    strict = pdf_text.LayerRules(min_chars=10_000)
    assert next(pdf_text.text_layers(samples.text_pdf(page), strict)).verdict == "sparse"
    lenient = pdf_text.LayerRules(min_coverage=0.0)
    assert next(pdf_text.text_layers(samples.text_pdf(page, scan_under=True), lenient)).verdict == "usable"


def test_normalize_and_printable_share():
    assert pdf_text.normalize("a  \r\nb\x02\r\n\r\n\r\n\r\nc\x00 ") == "a\nb-\n\nc"
    assert pdf_text.printable_share("ab \ue000\ufffd") == (4, 0.5)
    assert pdf_text.printable_share("   ") == (0, 0.0)


def test_document_layers_walk_once_in_page_order():
    data = samples.text_pdf(samples.BORN_DIGITAL_PAGES + [["Page 3"]])
    layers = pdf_text.DocumentLayers(data)
    assert [(i, layer.verdict) for i, layer in layers.take_usable()] == [(0, "usable"), (1, "usable")]
    assert layers.verdict(2) == "sparse" and layers.verdict(0) is None  # only the others' verdicts are kept
    walk = pdf_text.DocumentLayers(data)
    assert walk.at(1).text == "\n".join(samples.BORN_DIGITAL_PAGES[1]) and walk.at(2).verdict == "sparse"
    try:
        walk.at(0)
    except ValueError:
        pass
    else:
        raise AssertionError("asking for an earlier page must fail")
    walk.close()
