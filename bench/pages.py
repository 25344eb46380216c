"""Benchmark page preparation: CPU-seconds and bytes per page from the file to the engine's input.

    python -m bench.pages [--model PATH] [--repeat 3] [--budgets 280 1120] [--json out.json]

Cases: A4 scans (JPEG) at 150, 300 and 400 dpi, A3 at 300 dpi, a born-digital PDF page (A4) and a
16-bit greyscale TIFF scan (A4, 300 dpi); budgets 280 and 1120 soft tokens. Three paths, each run in
this process on one thread, timed with `time.process_time()` (CPU-seconds, all threads counted):

* `today`   the document path before `model.inputs.pages`, kept here as the baseline:
            a full-resolution decode (images: `media.decode_images`; PDFs rendered at the old
            144 dpi, `old_pdf_render`) -> lossless PNG data URL in
            `messages_json` -> `json.loads` -> vLLM's chat parser (base64 + PNG decode into
            `MediaWithBytes`) -> the row through the three `ray.data.llm` stage boundaries it
            crossed (pickled and unpickled, `messages_json` still in it) -> vLLM's multimodal hash ->
            the image processor (which resizes).
* `pages`   `jobs.stages.decode_source` (`model.inputs.pages`) -> `jobs.stages.to_llm_request` ->
            vLLM's chat parser (`image_pil`) -> the same three boundaries -> hash -> the image
            processor (`do_resize=False` for pages already at their size).
* `minimum` the bare minimum: decode the file once (PDF: render it at the target size) + the image
            processor on it.

Bytes: the largest pickled row at any stage boundary from decoding to the engine, against the page
encoded losslessly at its target size (PNG, compress level 1). The engine's input (pixel values)
of `pages` is checked to equal `minimum`'s for image files (bit for bit).

Targets (issue 11): `pages` at most 1.5x `minimum` in CPU-seconds, and at least 5x fewer than
`today` at A4/300 dpi; bytes at most 1.5x the page encoded at its target size.
Figures go into docs/benchmarks.md ("Page preparation").
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import pickle
import statistics
import time

BOUNDARIES = 3  # prepare-multimodal -> chat template -> tokenize -> engine


def make_cases() -> dict[str, tuple[bytes, str]]:
    from jobs import samples

    return {
        "A4 150 dpi JPEG": (samples.scan_page(150), "scan.jpg"),
        "A4 300 dpi JPEG": (samples.scan_page(300), "scan.jpg"),
        "A4 400 dpi JPEG": (samples.scan_page(400), "scan.jpg"),
        "A3 300 dpi JPEG": (samples.scan_page(300, "A3"), "scan.jpg"),
        "born-digital PDF page": (samples.text_pdf(1), "doc.pdf"),
        "A4 300 dpi 16-bit TIFF": (samples.tiff16_page(300), "scan.tiff"),
    }


class Engine:
    """The parts of the engine's input path that see the page: vLLM's chat parser (as ray.data.llm's
    prepare stage runs it), vLLM's multimodal hasher and the checkpoint's image processor."""

    def __init__(self, model: str):
        from vllm.config import ModelConfig

        from model.registration import UPSTREAM_ARCHITECTURE

        self.model_config = ModelConfig(model=model, dtype="float32", max_model_len=4096,
                                        hf_overrides={"architectures": [UPSTREAM_ARCHITECTURE]},
                                        limit_mm_per_prompt={"image": 1, "audio": 1, "video": 0})
        self.processors: dict = {}

    def parse(self, messages: list[dict]):
        from vllm.entrypoints.chat_utils import parse_chat_messages

        conversation, mm_data, uuids = parse_chat_messages(messages, self.model_config, content_format="openai")
        return conversation, mm_data, uuids

    def model_input(self, image, budget: int, **kwargs):
        from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor
        from vllm.multimodal.hasher import MultiModalHasher

        processor = self.processors.setdefault(budget, Gemma4UnifiedImageProcessor(max_soft_tokens=budget))
        MultiModalHasher.hash_kwargs("blake3", model_id="bench", image=image, max_soft_tokens=budget, **kwargs)
        media = getattr(image, "media", image)  # vLLM unwraps MediaWithBytes before the processor
        return processor(images=[media], return_tensors="pt", **kwargs)["pixel_values"]


def _through_stages(row: dict, engine: Engine) -> tuple[dict, int]:
    """The processor's row from preprocess to the engine: parse, then the stage boundaries.
    Returns (row at the engine, largest pickled row)."""
    largest = len(pickle.dumps(row, protocol=5))
    conversation, mm_data, uuids = engine.parse(row["messages"])
    row = {k: v for k, v in row.items() if k != "messages"}
    row.update(multimodal_data=mm_data, messages=conversation, multimodal_uuids=uuids)
    for step in range(BOUNDARIES):
        blob = pickle.dumps(row, protocol=5)
        largest = max(largest, len(blob))
        row = pickle.loads(blob)
        if step == 0:
            row["prompt"] = "<bos><start_of_turn>user\n<image_soft_token>Read the document.<end_of_turn>\n"
        elif step == 1:
            row["tokenized_prompt"] = list(range(64))
    return row, largest


def run_today(data: bytes, name: str, budget: int, engine: Engine):
    from model.inputs import media, prompts

    page = old_pdf_render(data) if name.endswith(".pdf") else media.decode_images(data)[0]
    row = {"source_id": "x", "segment_index": 0,
           "messages_json": json.dumps(prompts.build_messages("Read the document.", images=[page]))}
    first = len(pickle.dumps(row, protocol=5))
    # The old preprocess parsed the JSON and left `messages_json` in the row (carried to the end).
    row = {**row, "messages": json.loads(row["messages_json"]),
           "sampling_params": {"temperature": 0.0, "max_tokens": 16}}
    row, largest = _through_stages(row, engine)
    (image,) = row["multimodal_data"]["image"]
    return engine.model_input(image, budget), max(first, largest)


def old_pdf_render(data: bytes):
    """The first page rendered at 144 dpi, the size the old path gave the engine (no target size)."""
    from model.inputs import media, pages

    limits = media.MediaLimits(pdf_dpi=144.0)
    doc, _ = media.open_pdf(data, limits)
    page = doc[0]
    try:
        cap, _, _ = pages.pdf_render_size(*page.get_size(), pages.PageGeometry(), limits)
        return pages.render_pdf_page(page, *cap)
    finally:
        page.close()
        doc.close()


def run_pages(data: bytes, name: str, budget: int, engine: Engine):
    from connectors.sources import ParquetColumns
    from connectors.storage import StorageConfig
    from jobs import stages
    from model.inputs import audio_chunks, media, pages

    ctx = stages.StageContext(run_id="b", attempt="b", task="document", storage=StorageConfig(),
                              limits=media.MediaLimits(pdf_dpi=300.0), parquet=ParquetColumns(),
                              segmentation=audio_chunks.Segmentation(), max_new_tokens=16,
                              geometry=pages.PageGeometry(budget))
    source = {"source_id": "x", "source_uri": name, "source_row": None, "name": name, "data": data}
    (row,) = stages.decode_source(source, ctx)
    assert not row["error"], row["error"]
    first = len(pickle.dumps(row, protocol=5))
    request = stages.to_llm_request(row, 16)
    at_engine, largest = _through_stages({**row, **request}, engine)
    (image,) = at_engine["multimodal_data"]["image"]
    kwargs = {k: v for k, v in at_engine["mm_processor_kwargs"].items() if k != "max_soft_tokens"}
    return engine.model_input(image, budget, **kwargs), max(first, largest), row


def run_minimum(data: bytes, name: str, budget: int, engine: Engine):
    from PIL import Image

    from model.inputs import media, pages

    if name.endswith(".pdf"):
        doc, _ = media.open_pdf(data, media.MediaLimits())
        page = doc[0]
        geometry = pages.PageGeometry(budget)
        _, size, _ = pages.pdf_render_size(*page.get_size(), geometry, media.MediaLimits(pdf_dpi=300.0))
        image = pages.render_pdf_page(page, *size)
        page.close()
        doc.close()
        return engine.model_input(image, budget, do_resize=False)
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode not in ("RGB", "L"):
        image = media.to_rgb(image)
    return engine.model_input(image, budget)


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        started = time.process_time()
        result = fn()
        times.append(time.process_time() - started)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".cache/tiny-gemma4-unified")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--budgets", type=int, nargs="+", default=[280, 1120])
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from jobs.demo import ensure_model
    from model.inputs import media, pages

    model = str(ensure_model(pathlib.Path(args.model)).resolve())
    engine = Engine(model)
    cases = make_cases()
    results = []
    print("\n== bench.pages (CPU-seconds per page, one thread; bytes = largest row at a stage boundary) ==")
    print(f"{'case':24s} {'tok':>4s} {'file MB':>8s} | {'today s':>8s} {'pages s':>8s} {'min s':>7s} | "
          f"{'today/pages':>11s} {'pages/min':>9s} | {'today MB':>8s} {'pages MB':>8s} {'target PNG MB':>13s} {'ratio':>5s}")
    for label, (data, name) in cases.items():
        for budget in args.budgets:
            t_today, (today_input, today_bytes) = timed(lambda: run_today(data, name, budget, engine), args.repeat)
            t_pages, (pages_input, pages_bytes, row) = timed(lambda: run_pages(data, name, budget, engine), args.repeat)
            t_min, min_input = timed(lambda: run_minimum(data, name, budget, engine), args.repeat)
            target = pages.encoded_page(row["page_data"], row["page_codec"], row["page_mode"],
                                        (int(row["page_width"]), int(row["page_height"])))
            target_png = len(media.image_to_png_bytes(target))
            identical = bool(torch.equal(pages_input, min_input))
            entry = dict(case=label, budget=budget, file_bytes=len(data), form="resized" if row["page_resized"]
                         else row["page_codec"], page_size=[int(row["page_width"]), int(row["page_height"])],
                         today_cpu_s=t_today, pages_cpu_s=t_pages, minimum_cpu_s=t_min,
                         today_vs_pages=t_today / t_pages, pages_vs_minimum=t_pages / t_min,
                         today_row_bytes=today_bytes, pages_row_bytes=pages_bytes, target_png_bytes=target_png,
                         pages_bytes_vs_target=pages_bytes / target_png, input_equals_minimum=identical)
            results.append(entry)
            print(f"{label:24s} {budget:4d} {len(data) / 1e6:8.2f} | {t_today:8.3f} {t_pages:8.3f} {t_min:7.3f} | "
                  f"{entry['today_vs_pages']:10.1f}x {entry['pages_vs_minimum']:8.2f}x | {today_bytes / 1e6:8.2f} "
                  f"{pages_bytes / 1e6:8.2f} {target_png / 1e6:13.2f} {entry['pages_bytes_vs_target']:5.2f}"
                  f"{'' if identical else '  INPUT DIFFERS'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
