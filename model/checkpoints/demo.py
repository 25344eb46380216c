"""The demo checkpoint: a small Gemma 4 Unified, trained by the project (model/checkpoints/train_demo.py), that
reads rendered text lines and transcribes spoken digit strings.

    python -m model.checkpoints.demo --path                 # print the checkpoint directory (trains it if missing)
    python -m model.checkpoints.demo --evaluate [--eval-bank DIR] [--lines 200]   # held-out CER/WER (transformers)
    python -m model.checkpoints.demo --samples DIR          # readable sample inputs: line PNGs + spoken digit FLACs

The checkpoint ships in model/checkpoints/demo_checkpoint/ (17 MB, bfloat16 weights). Without it (a trimmed
copy of the repository), `--path` trains one into $DEMO_CHECKPOINT_CACHE (default
~/.cache/gemma4-unified-demo) with the recipe's defaults and reuses it afterwards. That takes about
an hour on 2 CPU cores and reads less well than the shipped checkpoint (docs/demo-model.md).

What it can read (its training distribution): one line of up to ~42 characters of printed text
laid out as `demo_data.render_text` does (a wide canvas, at least 22:1, which the checkpoint's
70-token image budget turns into one row of patches), and English speech from espeak-ng, best on
digit strings. Whole pages, paragraphs and natural speech are outside what it learned.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys

import numpy as np

SHIPPED = pathlib.Path(__file__).resolve().parent / "demo_checkpoint"
ASSETS = pathlib.Path(__file__).resolve().parent / "demo_assets"

# Lines for sample inputs and tests; freshly written text, not drawn from the training generator.
SAMPLE_LINES = [
    "Invoice 4521 total due 1250.00 EUR",
    "Order #88213 shipped today",
    "Meeting moved to 14 Mar 2027",
]
# Spoken digit strings shipped as FLAC in model/checkpoints/demo_assets/ (synthesized with espeak-ng by
# `write_assets`), so tests and samples need no espeak-ng. (file stem, text, espeak voice settings)
SAMPLE_SPEECH = [
    ("digits_a", "4 7 1 9 2 0 6", dict(voice="en-us", speed=160, pitch=50)),
    ("digits_b", "8 3 5 0 2", dict(voice="en-gb-x-rp+f2", speed=140, pitch=60)),
]


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DEMO_CHECKPOINT_CACHE", "~/.cache/gemma4-unified-demo")).expanduser()


def path(train_if_missing: bool = True) -> pathlib.Path:
    """Directory of the demo checkpoint: the shipped one, else a cached one, else train it."""
    if (SHIPPED / "config.json").is_file():
        return SHIPPED
    cached = cache_dir() / "checkpoint"
    if (cached / "config.json").is_file():
        return cached
    if not train_if_missing:
        raise FileNotFoundError(f"no demo checkpoint in {SHIPPED} or {cached}")
    from model.checkpoints import train_demo

    # Training logs go to stderr: stdout of `--path` is the path alone, for scripts.
    with contextlib.redirect_stdout(sys.stderr):
        train_demo.train(train_demo.TrainConfig(out_dir=str(cache_dir())))
    return cached


def line_image(text: str, font_index: int = 0, size: int = 28):
    """`text` rendered clean (black on white) the way the demo model reads it."""
    from model.checkpoints import demo_data

    return demo_data.render_text(text, np.random.default_rng(0), font_index=font_index, size=size, clean=True)


def speech_clip(stem: str) -> tuple[str, bytes]:
    """(text, FLAC bytes) of a shipped spoken digit string."""
    texts = {s: t for s, t, _ in SAMPLE_SPEECH}
    return texts[stem], (ASSETS / f"{stem}.flac").read_bytes()


def write_assets(out: pathlib.Path = ASSETS) -> None:
    """Re-synthesize the shipped speech clips (needs espeak-ng)."""
    import soundfile as sf

    from model.checkpoints import demo_data

    out.mkdir(parents=True, exist_ok=True)
    for stem, text, voice in SAMPLE_SPEECH:
        sf.write(out / f"{stem}.flac", demo_data.synthesize(text, **voice), demo_data.SAMPLE_RATE, subtype="PCM_16")


def write_samples(out: pathlib.Path) -> dict[str, str]:
    """Sample inputs the demo model reads: PNG lines and FLAC digit strings. Returns name -> text."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    from model.checkpoints.demo_data import BUILTIN_FONT

    for i, text in enumerate(SAMPLE_LINES):
        name = f"line_{i}.png"
        try:
            image = line_image(text, font_index=i % 3)  # DejaVu fonts (Debian fonts-dejavu-core)
        except FileNotFoundError:
            image = line_image(text, font_index=BUILTIN_FONT)  # Pillow's own font: always there
        image.save(out / name)
        written[name] = text
    for stem, _, _ in SAMPLE_SPEECH:
        text, flac = speech_clip(stem)
        (out / f"{stem}.flac").write_bytes(flac)
        written[f"{stem}.flac"] = text
    return written


def evaluate(checkpoint: pathlib.Path, eval_bank: str | None, lines: int, seed: int = 0) -> dict:
    """Held-out CER/WER with transformers on this machine (float32 on CPU)."""
    import tempfile

    import torch
    from transformers import AutoProcessor, Gemma4UnifiedForConditionalGeneration

    from model.checkpoints import demo_data, train_demo

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Gemma4UnifiedForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).to(device)
    processor = AutoProcessor.from_pretrained(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if eval_bank is None:
            # The held-out bank of the shipped checkpoint's report (same seed, same generator).
            eval_bank = demo_data.write_audio_bank(tmp, seed=train_demo.EVAL_BANK_SEED, n_digits=200, n_phrases=0)
        clips = [c for c in demo_data.read_audio_bank(eval_bank) if c["kind"] == "digits"]
        images = train_demo.eval_image_set(lines, seed)
        return train_demo.evaluate(model, processor, device, images, clips, batch=16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.checkpoints.demo", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--path", action="store_true", help="print the checkpoint directory")
    group.add_argument("--evaluate", action="store_true", help="held-out CER/WER of the checkpoint")
    group.add_argument("--samples", metavar="DIR", help="write sample inputs to DIR")
    parser.add_argument("--eval-bank", help="speech bank from `python -m model.checkpoints.demo_data bank` (else espeak-ng)")
    parser.add_argument("--lines", type=int, default=200, help="held-out rendered lines to score")
    args = parser.parse_args(argv)
    if args.path:
        print(path())
    elif args.evaluate:
        scores = evaluate(path(), args.eval_bank, args.lines)
        print(json.dumps(scores, indent=2))
    else:
        for name, text in write_samples(pathlib.Path(args.samples)).items():
            print(f"{name}\t{text}")


if __name__ == "__main__":
    main()
