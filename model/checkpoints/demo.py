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
# A long recording for the main job's demo (jobs.samples.write_demo_inputs): these digit strings, spoken by
# espeak-ng in the training voices, one after the other with pauses of RECORDING_PAUSE_S between them
# (over 70 s), so the job shows cutting at pauses and stitching on real words. `write_recording` makes
# it; shipped as 8-bit FLAC (about 290 KB) with recording.json (where each string lies and what it says).
# The strings were drawn with demo_data.random_digits / random_voice (seed 2026) and kept where the
# shipped checkpoint reads them exactly, alone and cut from the recording with 0.1 s of pause on each
# side (21 of 26; the held-out WER is in docs/demo-model.md).
RECORDING = "recording"
RECORDING_PAUSE_S = (1.0, 2.4)
RECORDING_SPEECH = [
    ("1 0 6 3 4 0 3 6", dict(voice="en-gb-scotland+f4", speed=183, pitch=60)),
    ("7 1 8 6 0 2 1 9", dict(voice="en-gb-x-rp+klatt", speed=142, pitch=57)),
    ("1 2 8 5", dict(voice="en-us+m7", speed=141, pitch=58)),
    ("0 4 4 9 3 1 1", dict(voice="en-gb-scotland+f2", speed=146, pitch=47)),
    ("2 9 2 9 8 9", dict(voice="en-gb-x-rp+m7", speed=168, pitch=35)),
    ("4 9 7 5 5", dict(voice="en-gb-scotland+m3", speed=192, pitch=25)),
    ("4 6 4 3", dict(voice="en-us+m1", speed=128, pitch=60)),
    ("7 5 9 4 7 0 0", dict(voice="en-gb-x-rp+klatt", speed=161, pitch=63)),
    ("7 4 3 0", dict(voice="en+klatt", speed=155, pitch=75)),
    ("0 2 3 7 7", dict(voice="en-gb-x-rp+m3", speed=150, pitch=53)),
    ("4 1 7 5 9 9", dict(voice="en-gb-x-gbclan+klatt", speed=169, pitch=40)),
    ("1 9 2", dict(voice="en-us", speed=143, pitch=74)),
    ("1 6 0 4", dict(voice="en-us", speed=148, pitch=25)),
    ("6 9 4 5 6 4 5 5", dict(voice="en-gb-x-gbclan+m3", speed=193, pitch=33)),
    ("2 9 2 7", dict(voice="en-029+f2", speed=126, pitch=58)),
    ("5 7 9", dict(voice="en-gb-x-gbclan+m1", speed=181, pitch=55)),
    ("8 4 1 7 6 1 4", dict(voice="en-us+f4", speed=146, pitch=28)),
    ("6 5 8 3", dict(voice="en-029+klatt", speed=145, pitch=26)),
    ("6 3 5 6 8 1", dict(voice="en-gb-scotland+m1", speed=146, pitch=26)),
    ("0 9 5 4 2", dict(voice="en-gb-x-gbclan+m7", speed=198, pitch=58)),
    ("0 2 4 6 7 7 9 8", dict(voice="en-gb-x-gbclan+m3", speed=175, pitch=60)),
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


def recording() -> tuple[dict, bytes]:
    """(index, FLAC bytes) of the shipped long recording. The index: `text` (what it says, the strings
    joined by spaces), `seconds`, and `utterances`, each string's `start_s`/`end_s`/`text`."""
    return json.loads((ASSETS / f"{RECORDING}.json").read_text()), (ASSETS / f"{RECORDING}.flac").read_bytes()


def write_assets(out: pathlib.Path = ASSETS, *, seed: int = 0) -> None:
    """Re-synthesize the shipped speech clips and the long recording (needs espeak-ng)."""
    import soundfile as sf

    from model.checkpoints import demo_data

    out.mkdir(parents=True, exist_ok=True)
    for stem, text, voice in SAMPLE_SPEECH:
        sf.write(out / f"{stem}.flac", demo_data.synthesize(text, **voice), demo_data.SAMPLE_RATE, subtype="PCM_16")
    write_recording(out, seed=seed)


def write_recording(out: pathlib.Path = ASSETS, *, seed: int = 0) -> None:
    """Synthesize the long recording (RECORDING_SPEECH) and its index (needs espeak-ng)."""
    import soundfile as sf

    from model.checkpoints import demo_data

    rate = demo_data.SAMPLE_RATE
    rng = np.random.default_rng(seed)
    pieces, utterances, at = [np.zeros(rate // 2, np.float32)], [], rate // 2
    for text, voice in RECORDING_SPEECH:
        speech = demo_data.trim_silence(demo_data.synthesize(text, **voice))
        pause = np.zeros(int(rng.uniform(*RECORDING_PAUSE_S) * rate), np.float32)
        utterances.append(dict(start_s=round(at / rate, 4), end_s=round((at + speech.size) / rate, 4), text=text))
        pieces += [speech, pause]
        at += speech.size + pause.size
    # 8 bits: a third of the 16-bit size; the quantization noise (about -58 dB) is far below the noise
    # the checkpoint was trained with, and it reads every string the same as from float32.
    sf.write(out / f"{RECORDING}.flac", np.concatenate(pieces), rate, subtype="PCM_S8")
    index = dict(text=" ".join(u["text"] for u in utterances), seconds=round(at / rate, 4), utterances=utterances)
    (out / f"{RECORDING}.json").write_text(json.dumps(index, indent=1) + "\n")


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
    group.add_argument("--write-recording", action="store_true",
                       help=f"re-synthesize demo_assets/{RECORDING}.flac and .json (needs espeak-ng)")
    parser.add_argument("--eval-bank", help="speech bank from `python -m model.checkpoints.demo_data bank` (else espeak-ng)")
    parser.add_argument("--lines", type=int, default=200, help="held-out rendered lines to score")
    args = parser.parse_args(argv)
    if args.path:
        print(path())
    elif args.write_recording:
        write_recording()
        print(ASSETS / f"{RECORDING}.flac")
    elif args.evaluate:
        scores = evaluate(path(), args.eval_bank, args.lines)
        print(json.dumps(scores, indent=2))
    else:
        for name, text in write_samples(pathlib.Path(args.samples)).items():
            print(f"{name}\t{text}")


if __name__ == "__main__":
    main()
