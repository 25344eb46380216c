"""Cut long audio into overlapping chunks that fit the model's window, and stitch transcripts back.

The model takes at most `audio_seq_length` = 750 soft tokens per clip, one per started 640-sample
(40 ms) frame at 16 kHz: 30 s (`model.gemma4_unified.check_audio_window` refuses anything longer).
Shared by the batch pipeline and the endpoint's /v1/audio/transcriptions, so both chunk and stitch
identically.

Chunking: fixed-length windows (default 30 s) advancing by `chunk_s - overlap_s` (default 2 s of
overlap so a word cut at a boundary is heard whole in one of the two chunks). Boundaries are whole
frames, so every chunk's soft-token count is exact. A tail that the previous chunk already covers is
not emitted; a short tail is kept as its own chunk (never padded: padding would add silence tokens).

Stitching: the overlap is transcribed twice. For each pair of neighbours we look for the longest
run of words (2 or more, compared case- and punctuation-insensitively) that ends the left text and
starts the right one, and drop it from the right text. Exact word-run matching never removes a word
that was not repeated; when the model words the overlap differently nothing is removed (a repeated
word or two is the visible failure mode, not a lost one). Timestamp-based alignment would need word
timings, which the model does not produce.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = 640  # 40 ms per soft token
MAX_FRAMES = 750  # the checkpoint's audio_seq_length (30 s)


@dataclasses.dataclass(frozen=True)
class Chunk:
    index: int
    start_sample: int
    end_sample: int
    sample_rate: int = SAMPLE_RATE

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end_sample / self.sample_rate

    @property
    def num_samples(self) -> int:
        return self.end_sample - self.start_sample


def window_seconds(max_frames: int = MAX_FRAMES, samples_per_frame: int = SAMPLES_PER_FRAME,
                   sample_rate: int = SAMPLE_RATE) -> float:
    return max_frames * samples_per_frame / sample_rate


def plan_chunks(
    num_samples: int,
    *,
    chunk_s: float | None = None,
    overlap_s: float = 2.0,
    max_frames: int = MAX_FRAMES,
    samples_per_frame: int = SAMPLES_PER_FRAME,
    sample_rate: int = SAMPLE_RATE,
) -> list[Chunk]:
    """Chunk boundaries covering `num_samples`; each chunk fits `max_frames` frames."""
    if num_samples <= 0:
        raise ValueError("audio has no samples")
    window = window_seconds(max_frames, samples_per_frame, sample_rate)
    chunk_s = window if chunk_s is None else chunk_s
    if not 0 < chunk_s <= window:
        raise ValueError(f"chunk_s must be in (0, {window:g}] s (the model's audio window)")
    if not 0 <= overlap_s < chunk_s / 2:
        raise ValueError("overlap_s must be >= 0 and less than half of chunk_s")
    chunk_frames = int(chunk_s * sample_rate) // samples_per_frame
    step_frames = chunk_frames - math.ceil(overlap_s * sample_rate / samples_per_frame)
    chunk_len, step = chunk_frames * samples_per_frame, step_frames * samples_per_frame
    if num_samples <= chunk_len:
        return [Chunk(0, 0, num_samples, sample_rate)]
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + chunk_len, num_samples)
        chunks.append(Chunk(len(chunks), start, end, sample_rate))
        if end >= num_samples:
            return chunks
        start += step


def split_audio(audio: np.ndarray, **plan_kwargs) -> list[tuple[Chunk, np.ndarray]]:
    """(chunk, samples) pairs; the samples are views into `audio` (no copy)."""
    return [(c, audio[c.start_sample:c.end_sample]) for c in plan_chunks(len(audio), **plan_kwargs)]


_WORD = re.compile(r"[^\w]+", re.UNICODE)


def _norm(word: str) -> str:
    return _WORD.sub("", word).lower()


def overlap_words(left: str, right: str, *, min_words: int = 2, max_words: int = 40) -> int:
    """Number of leading words of `right` that repeat the trailing words of `left`."""
    a, b = left.split(), right.split()
    na, nb = [_norm(w) for w in a], [_norm(w) for w in b]
    for k in range(min(len(na), len(nb), max_words), min_words - 1, -1):
        if na[-k:] == nb[:k] and any(na[-k:]):
            return k
    return 0


@dataclasses.dataclass(frozen=True)
class StitchedChunk:
    index: int
    start_s: float
    end_s: float
    text: str  # this chunk's words after removing the overlap with the previous chunk


def stitch(chunks: Sequence[Chunk], texts: Sequence[str]) -> tuple[str, list[StitchedChunk]]:
    """One transcript from per-chunk transcripts (in chunk order) plus per-chunk pieces."""
    if len(chunks) != len(texts):
        raise ValueError("one text per chunk is required")
    pieces: list[StitchedChunk] = []
    previous = ""
    for chunk, text in zip(chunks, texts):
        text = (text or "").strip()
        drop = overlap_words(previous, text) if previous else 0
        kept = " ".join(text.split()[drop:]) if drop else text
        pieces.append(StitchedChunk(chunk.index, chunk.start_s, chunk.end_s, kept))
        if text:
            previous = text
    return " ".join(p.text for p in pieces if p.text), pieces
