"""Synthetic training and evaluation data for the demo model (see model/checkpoints/train_demo.py).

Two generators, both deterministic given a `numpy.random.Generator`:

* text images: lines and short paragraphs of random text (common words, numbers, dates, amounts,
  random codes) rendered with Pillow in the DejaVu fonts (Debian `fonts-dejavu-core`) and Pillow's
  built-in font, at several sizes, ink/paper shades, slight rotation, blur and pixel noise;
* speech: spoken digit strings ("4 7 1 9") and short phrases synthesized with espeak-ng (Debian
  `espeak-ng`) at several voices, speeds and pitches, resampled to 16 kHz mono float32 with soxr.

Speech synthesis needs the `espeak-ng` program, so speech is synthesized once into an "audio bank"
(`write_audio_bank`: one FLAC holding every clip + a JSON index) that training reads back; the
training machine then needs no espeak-ng. Images are rendered on the fly (cheap).

    python -m model.checkpoints.demo_data bank OUT_DIR --seed N --digits 1500 --phrases 300 --words 1
    python -m model.checkpoints.demo_data sample OUT_DIR --seed N      # a few PNG/FLAC examples to look at
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np

from model.inputs.prompts import TEXT_PROMPT, TRANSCRIBE_PROMPT

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050  # espeak-ng's native output rate

# The pipeline's task prompts (model/inputs/prompts.py, imported above): the demo model is trained on
# them, plus a few paraphrases and no prompt at all, so that a reworded instruction still works.
# Documents: the plain-text task (`text`), which is what the checkpoint declares `auto` to mean for
# it (DEFAULT_TASKS, written as default_tasks.json beside its config); the markdown task is for
# models that can lay a page out.
DOCUMENT_PROMPT = TEXT_PROMPT
DEFAULT_TASKS = {"document": "text", "audio": "transcribe"}
DOCUMENT_PROMPT_VARIANTS = [
    DOCUMENT_PROMPT,
    "Read the text in this image.",
    "What is written on the page?",
    "Return the text of this document.",
    "",
]
TRANSCRIBE_PROMPT_VARIANTS = [
    TRANSCRIBE_PROMPT,
    "Transcribe this audio clip.",
    "What is said in the recording?",
    "Write down what you hear.",
    "",
]

# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
WORDS = """
the of and to in is was for on are with as at be this have from or one had by word but not what all
were we when your can said there use an each which she do how their if will up other about out many
then them these so some her would make like him into time has look two more write go see number no
way could people my than first water been call who oil its now find long down day did get come made
may part over new sound take only little work know place year live me back give most very after thing
our just name good sentence man think say great where help through much before line right too mean old
any same tell boy follow came want show also around form three small set put end does another well
large must big even such because turn here why ask went men read need land different home us move try
kind hand picture again change off play spell air away animal house point page letter mother answer
found study still learn should world high every near add food between own below country plant last
school father keep tree never start city earth eye light thought head under story saw left few while
along might close something seem next hard open example begin life always those both paper together
got group often run important until children side feet car mile night walk white sea began grow took
river four carry state once book hear stop without second later miss idea enough eat face watch far
invoice total due order report revenue quarter customer account payment amount date shipped balance
receipt tax price item quantity delivery address phone email office meeting project budget contract
""".split()

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PHRASE_WORDS = """
open close the door window light turn left right stop go start call home please thank you yes no
next previous play pause up down red green blue small large today tomorrow morning evening
""".split()

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_CURRENCIES = ["EUR", "USD", "GBP", "CHF"]
_PUNCT = [",", ".", ";", ":", "!", "?"]
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def _token(rng: np.random.Generator) -> str:
    """One word-like token: mostly dictionary words, often numbers, dates, amounts or codes, so the
    model must really read characters rather than guess from a language model."""
    r = rng.random()
    if r < 0.62:
        w = WORDS[rng.integers(len(WORDS))]
        s = rng.random()
        if s < 0.15:
            w = w.capitalize()
        elif s < 0.18:
            w = w.upper()
        return w
    if r < 0.74:
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
    if r < 0.80:
        cur = _CURRENCIES[rng.integers(len(_CURRENCIES))]
        return f"{rng.integers(1, 10000)}.{rng.integers(0, 100):02d} {cur}"
    if r < 0.86:
        if rng.random() < 0.5:
            return f"{rng.integers(2000, 2040)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
        return f"{rng.integers(1, 29)} {_MONTHS[rng.integers(12)]} {rng.integers(1990, 2040)}"
    if r < 0.93:
        n = int(rng.integers(3, 8))
        code = "".join(_CODE_ALPHABET[i] for i in rng.integers(0, len(_CODE_ALPHABET), n))
        return ("#" if rng.random() < 0.3 else "") + code
    # random lower-case letters: no dictionary to lean on
    n = int(rng.integers(2, 8))
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, n))


def random_line(rng: np.random.Generator, min_chars: int = 8, max_chars: int = 42) -> str:
    target = int(rng.integers(min_chars, max_chars + 1))
    parts: list[str] = []
    length = 0
    while length < target:
        tok = _token(rng)
        if parts and length + 1 + len(tok) > max_chars:
            break
        if len(tok) > max_chars:
            tok = tok[:max_chars]
        parts.append(tok)
        length += len(tok) + (1 if len(parts) > 1 else 0)
        if rng.random() < 0.12 and length < max_chars - 1:
            parts[-1] += _PUNCT[rng.integers(len(_PUNCT))]
            length += 1
    line = " ".join(parts)
    return line[0].upper() + line[1:] if rng.random() < 0.5 else line


def random_text(rng: np.random.Generator, paragraph_prob: float = 0.25) -> str:
    """A single line, or (with `paragraph_prob`) a short paragraph of 2-3 lines joined by newlines."""
    if rng.random() < paragraph_prob:
        return "\n".join(random_line(rng, 10, 34) for _ in range(int(rng.integers(2, 4))))
    return random_line(rng)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
# Fonts of Debian's fonts-dejavu-core, plus Pillow's own built-in font (None). DEMO_FONT_DIR points
# elsewhere (the GPU machine gets a copy of these files).
FONT_FILES = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
]
FONT_DIRS = ["/usr/share/fonts/truetype/dejavu"]
BUILTIN_FONT = len(FONT_FILES)  # font_index of Pillow's own font: needs no system font


@functools.cache
def font_paths() -> tuple[str | None, ...]:
    dirs = [os.environ["DEMO_FONT_DIR"]] if os.environ.get("DEMO_FONT_DIR") else FONT_DIRS
    found: list[str | None] = []
    for name in FONT_FILES:
        for d in dirs:
            p = pathlib.Path(d) / name
            if p.is_file():
                found.append(str(p))
                break
        else:
            raise FileNotFoundError(
                f"font {name} not found in {dirs}: install the Debian package fonts-dejavu-core "
                "(apt-get install fonts-dejavu-core) or set DEMO_FONT_DIR"
            )
    return tuple(found) + (None,)


@functools.cache
def _font(path: str | None, size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


# Lines are laid out on a canvas at least this wide for its height, so that at the demo
# checkpoint's image budget (70 soft tokens) a line becomes ONE row of about 37-44 48-px patches,
# about one character per patch: a 1-D sequence the small model learns to read quickly (like audio).
LINE_ASPECT = (22.0, 28.0)


def render_text(
    text: str,
    rng: np.random.Generator,
    *,
    font_index: int | None = None,
    size: int | None = None,
    clean: bool = False,
):
    """Render `text` (newlines = line breaks) into an RGB PIL image. `clean=True` renders black on
    white without rotation/noise (used for fixtures and sample inputs)."""
    from PIL import Image, ImageDraw, ImageFilter

    if font_index is None:
        font_index = int(rng.integers(BUILTIN_FONT + 1))
    size = int(rng.integers(18, 41)) if size is None else size
    font = _font(None if font_index == BUILTIN_FONT else font_paths()[font_index], size)
    if clean:
        paper, ink = 255, 0
    else:
        paper = int(rng.integers(200, 256))
        ink = int(rng.integers(0, 90))
    tint = rng.integers(-12, 13, 3) if not clean else np.zeros(3, int)
    paper_rgb = tuple(int(np.clip(paper + t, 0, 255)) for t in tint)
    ink_rgb = tuple(int(np.clip(ink + t, 0, 255)) for t in tint)

    probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    spacing = max(2, size // 4)
    # Vertical extent from the font's full ascent/descent, not this text's ink: every line of a
    # font gets the same height, so glyphs land at the same place in the patch row.
    ascent, descent = font.getmetrics()
    n_lines = text.count("\n") + 1
    left, _, right, _ = probe.multiline_textbbox((0, 0), text, font=font, spacing=spacing)
    text_h = n_lines * (ascent + descent) + (n_lines - 1) * spacing
    my = int(rng.integers(size // 8, size // 4 + 1)) if not clean else size // 6
    mx = int(rng.integers(size // 4, size + 1)) if not clean else size // 2
    h = text_h + 2 * my
    aspect = float(rng.uniform(*LINE_ASPECT)) if not clean else 25.0
    w = max(right - left + 2 * mx, int(aspect * h))
    img = Image.new("RGB", (w, h), paper_rgb)
    ImageDraw.Draw(img).multiline_text((mx - left, my), text, font=font, fill=ink_rgb, spacing=spacing)
    if clean:
        return img
    angle = float(rng.normal(0, 0.25))
    if abs(angle) > 0.05:  # slight skew; same canvas size, so the patch grid stays one row
        img = img.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=paper_rgb)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    sigma = float(rng.choice([0.0, 3.0, 8.0, 14.0]))
    if sigma:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0, sigma, arr.shape[:2])[..., None]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


# ---------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------
VOICES = ["en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan"]
VARIANTS = ["", "+m1", "+m3", "+m7", "+f2", "+f4", "+klatt"]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def random_digits(rng: np.random.Generator, min_len: int = 3, max_len: int = 8) -> str:
    return " ".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(min_len, max_len + 1))))


def random_phrase(rng: np.random.Generator) -> str:
    return " ".join(PHRASE_WORDS[i] for i in rng.integers(0, len(PHRASE_WORDS), int(rng.integers(2, 6))))


def random_voice(rng: np.random.Generator) -> dict:
    return dict(
        voice=VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))],
        speed=int(rng.integers(120, 200)),
        pitch=int(rng.integers(25, 76)),
    )


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; 16 kHz mono float32 in [-1, 1]."""
    import soundfile as sf
    import soxr

    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def write_audio_bank(
    out_dir: str | pathlib.Path,
    *,
    seed: int,
    n_digits: int,
    n_phrases: int,
    words: bool = False,
    exclude: set[str] | frozenset[str] = frozenset(),
    threads: int = 1,
) -> pathlib.Path:
    """Synthesize clips into OUT_DIR/bank.flac (all clips back to back, 16-bit) + bank.json
    (text, voice, offset, length per clip). `words=True` adds every digit/phrase word alone in
    every voice (material for concatenation augmentation). Texts in `exclude` are not used.
    The clips depend on `seed` alone; `threads` runs that many espeak-ng processes at a time."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(seed)
    items: list[tuple[str, str, dict]] = []
    while len(items) < n_digits:
        text = random_digits(rng)
        if text not in exclude:
            items.append(("digits", text, random_voice(rng)))
    for _ in range(n_phrases):
        items.append(("phrase", random_phrase(rng), random_voice(rng)))
    if words:
        for voice in VOICES:
            for variant in VARIANTS:
                for speed in (130, 160, 190):
                    for d in range(10):
                        items.append(("word", str(d), dict(voice=voice + variant, speed=speed, pitch=50)))
    with ThreadPoolExecutor(max(1, threads)) as pool:  # espeak-ng runs as a subprocess: threads suffice
        audio = list(pool.map(lambda item: synthesize(item[1], **item[2]), items))
    return save_audio_bank(out_dir, [dict(kind=kind, text=text, audio=a, **v) for (kind, text, v), a in zip(items, audio)])


def save_audio_bank(out_dir: str | pathlib.Path, clips: list[dict]) -> pathlib.Path:
    """Write clips (dicts with `audio`, 16 kHz float32, plus `kind`, `text` and any voice fields)
    as a bank: OUT_DIR/bank.flac (back to back, 16-bit) + bank.json (fields, offset, length)."""
    import soundfile as sf

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    for clip in clips:
        fields = {k: v for k, v in clip.items() if k != "audio"}
        index.append(dict(fields, offset=offset, length=len(clip["audio"])))
        offset += len(clip["audio"])
    sf.write(out / "bank.flac", np.concatenate([c["audio"] for c in clips]), SAMPLE_RATE, subtype="PCM_16")
    (out / "bank.json").write_text(json.dumps(index))
    return out


def read_audio_bank(bank_dir: str | pathlib.Path) -> list[dict]:
    """Clips of a bank as dicts with `audio` (float32, 16 kHz) and `text`, `kind`, `voice`..."""
    import soundfile as sf

    bank = pathlib.Path(bank_dir)
    audio, rate = sf.read(bank / "bank.flac", dtype="float32")
    assert rate == SAMPLE_RATE, rate
    index = json.loads((bank / "bank.json").read_text())
    return [dict(item, audio=audio[item["offset"] : item["offset"] + item["length"]]) for item in index]


def trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


def augment_audio(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random lead/tail silence (shifts the 40 ms frame grid), gain, speed (resampling) and noise."""
    if rng.random() < 0.5:
        import soxr

        factor = float(rng.uniform(0.9, 1.1))
        audio = soxr.resample(audio, SAMPLE_RATE, int(SAMPLE_RATE * factor)).astype(np.float32)
    lead = np.zeros(int(rng.integers(0, 4000)), np.float32)
    tail = np.zeros(int(rng.integers(0, 4000)), np.float32)
    audio = np.concatenate([lead, audio * float(rng.uniform(0.3, 1.2)), tail])
    noise = float(rng.choice([0.0, 0.0, 0.002, 0.006, 0.015]))
    if noise:
        audio = audio + rng.normal(0, noise, audio.shape).astype(np.float32)
    return np.clip(audio, -1, 1).astype(np.float32)


def concat_digit_words(
    word_clips: dict[str, list[np.ndarray]], rng: np.random.Generator, max_len: int = 8
) -> tuple[np.ndarray, str]:
    """A digit string built from single-word clips of one voice with short pauses between them:
    unlimited extra digit strings on top of the fully synthesized ones in the bank."""
    text = random_digits(rng, min(3, max_len), max_len)
    voice_idx = int(rng.integers(len(word_clips["0"])))
    pieces = []
    for d in text.split():
        pieces.append(trim_silence(word_clips[d][voice_idx]))
        pieces.append(np.zeros(int(rng.integers(400, 3200)), np.float32))
    return np.concatenate(pieces[:-1]), text


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def edit_distance(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(refs: list[str], hyps: list[str]) -> float:
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / max(1, sum(len(r) for r in refs))


def wer(refs: list[str], hyps: list[str]) -> float:
    return sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)) / max(
        1, sum(len(r.split()) for r in refs)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.checkpoints.demo_data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bank", help="synthesize an audio bank with espeak-ng")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--digits", type=int, default=1500)
    b.add_argument("--phrases", type=int, default=300)
    b.add_argument("--words", action="store_true", help="add single digit words in every voice")
    b.add_argument("--exclude-bank", help="a bank whose texts this one must not use (held-out data)")
    s = sub.add_parser("sample", help="write a few example images and clips")
    s.add_argument("out_dir")
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "bank":
        exclude = set()
        if args.exclude_bank:
            exclude = {c["text"] for c in json.loads((pathlib.Path(args.exclude_bank) / "bank.json").read_text())}
        out = write_audio_bank(
            args.out_dir, seed=args.seed, n_digits=args.digits, n_phrases=args.phrases, words=args.words, exclude=exclude
        )
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"wrote {out} ({size / 1e6:.1f} MB)")
    else:
        import soundfile as sf

        rng = np.random.default_rng(args.seed)
        out = pathlib.Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            text = random_text(rng)
            render_text(text, rng).save(out / f"text_{i}.png")
            (out / f"text_{i}.txt").write_text(text)
        if espeak_available():
            for i in range(3):
                text = random_digits(rng)
                sf.write(out / f"digits_{i}.flac", synthesize(text, **random_voice(rng)), SAMPLE_RATE)
                (out / f"digits_{i}.txt").write_text(text)
        print(f"wrote samples to {out}")


if __name__ == "__main__":
    main()
