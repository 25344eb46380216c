"""Cut a recording into model calls at its pauses, and put the transcript back together.

Shared by the batch job (`jobs.stages`) and the endpoint's /v1/audio/transcriptions
(`serving.transcribe`), so both cut and stitch a file identically.

**The window.** The model takes at most `audio_seq_length` soft tokens per clip, one per started
640-sample (40 ms) frame at 16 kHz: 750 frames = 30 s for the real checkpoint. `checkpoint_audio(model)`
reads it from the checkpoint's processor config; `model.gemma4_unified.check_audio_window` refuses
anything longer. `Segmentation.max_chunk_s` can lower it, never raise it.

**VAD segmentation (default).** `model.inputs.vad` finds the speech regions (Silero VAD: a region
ends once the probability stays under its exit threshold for `VadSettings.min_silence_s`, 0.2 s;
regions are padded by 0.08 s on each side), and `confirm_pauses` joins two regions again when their
gap is not quiet in the signal. Silence between regions is never sent. Regions are packed into chunks:

* `pack="window"`: consecutive regions go into one chunk while their total length fits the window
  (what WhisperX and faster-whisper's batched pipeline do with 30 s). Each chunk's audio is its
  regions back to back, so a chunk holds at most a window of speech and no long silence.
* `pack="utterance"`: every region is its own chunk (one model call per utterance).

The default is what the checkpoint declares (`audio_chunking` in its processor config), else
"window": the real model is trained on clips up to 30 s, and a full window gives it the most context
per call and the fewest calls. The demo checkpoint, trained on single utterances of 3-8 digits of at
most 6.5 s, declares a 7 s window and "utterance" (packed, it stops after about 8 digits).

A region longer than the window (no pause the detector and `confirm_pauses` accepted) is cut at its
quietest 100 ms (10 ms energies) between half a window and a window from the piece's start (as vLLM's
own transcription endpoint does near its limit): the quietest point there, not necessarily a pause,
and a pause earlier in the piece is not looked at. Every other cut lies in a gap between two regions.
How long a pause must be to become such a gap was probed on `jobs.samples.speech_recording(120,
seed=s, pauses=(p, p), noise=0.003)` through `plan_audio(..., checkpoint=CheckpointAudio(175,
"utterance"))`, seeds 1-3: p = 0.35 s gave 48/47/47 chunks for 48/48/47 strings, 0.32 s 48/48/46 for
49/49/48, 0.30 s 41/44/42 for 49/49/48 (10-16 % fewer chunks than strings: neighbours sharing a
chunk, no string split). Chunks never overlap, so the transcript is the chunks' texts in order with
no text-level de-duplication.

**Fixed windows (`mode="fixed"`).** The previous behaviour: windows of the full length with
`overlap_s` of overlap, every sample sent, seams merged by dropping the longest repeated word run.
Kept for audio that is not speech (sound descriptions with a custom task, music): the VAD would
send none of it.

**Timestamps.** A chunk's `start_s`/`end_s` are its first and last sent samples in the original
recording; `Chunk.spans` are the exact sample ranges sent, in order.

**Streaming.** `plan_recording` consumes the waveform as blocks (`model.inputs.media.iter_audio`)
and keeps one probability per 32 ms and one energy value per 10 ms: about 7 MB for a 4 h recording,
whose waveform would be 920 MB. `iter_chunk_audio` then streams the blocks a second time and yields
each chunk's samples, holding at most one chunk plus one block. The plan must be known before the
first chunk is sent, because the batch job's resume state counts a source's chunks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np

from model.inputs.vad import SAMPLE_RATE, SpeechDetector, VadSettings, speech_regions

SAMPLES_PER_FRAME = 640  # 40 ms per soft token
MAX_FRAMES = 750  # audio_seq_length of the real checkpoint (30 s); the fallback when none is declared
ENERGY_HOP = 160  # 10 ms: resolution of the quietest-point search
QUIET_WINDOW = 10  # hops (100 ms) averaged when looking for the quietest point

Mode = Literal["vad", "fixed"]
Pack = Literal["window", "utterance"]


@dataclasses.dataclass(frozen=True)
class CheckpointAudio:
    """What a checkpoint declares about long audio, in its processor config (processor_config.json):
    `audio_seq_length`, its window in 40 ms frames (HF's own key), and `audio_chunking`, the packing
    it was trained for (a project key that transformers ignores; absent: "window")."""

    frames: int = MAX_FRAMES
    pack: Pack = "window"

    @property
    def window_s(self) -> float:
        return window_seconds(self.frames)


def checkpoint_audio(model: str | pathlib.Path | None) -> CheckpointAudio:
    """The checkpoint's declarations; the real model's (30 s, window packing) when it is not a local
    directory or declares nothing."""
    if model is None:
        return CheckpointAudio()
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = pathlib.Path(model) / name
        if path.is_file():
            config = json.loads(path.read_text())
            pack = config.get("audio_chunking", "window")
            if pack not in ("window", "utterance"):
                raise ValueError(f"{path}: audio_chunking must be window or utterance, not {pack!r}")
            return CheckpointAudio(int(config.get("audio_seq_length") or MAX_FRAMES), pack)
    return CheckpointAudio()


def window_seconds(max_frames: int = MAX_FRAMES, samples_per_frame: int = SAMPLES_PER_FRAME,
                   sample_rate: int = SAMPLE_RATE) -> float:
    return max_frames * samples_per_frame / sample_rate


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """How a recording becomes model calls (the batch spec and the endpoint config each hold one)."""

    mode: Mode = "vad"
    pack: Pack | None = None  # None: what the checkpoint declares (CheckpointAudio.pack)
    max_chunk_s: float | None = None  # None: the checkpoint's window
    overlap_s: float = 2.0  # fixed windows only
    vad: VadSettings = VadSettings()

    def __post_init__(self) -> None:
        if self.mode not in ("vad", "fixed"):
            raise ValueError(f"segmentation must be vad or fixed, not {self.mode!r}")
        if self.pack not in (None, "window", "utterance"):
            raise ValueError(f"pack must be window or utterance, not {self.pack!r}")
        if self.max_chunk_s is not None and self.max_chunk_s < 1.0:
            raise ValueError("max_chunk_s must be at least 1 s")
        if isinstance(self.vad, dict):
            object.__setattr__(self, "vad", VadSettings(**self.vad))

    def max_samples(self, frames: int = MAX_FRAMES) -> int:
        """Longest chunk in samples: whole frames, never more than the model's window."""
        window = window_seconds(frames)
        if self.max_chunk_s is not None and self.max_chunk_s > window + 1e-9:
            raise ValueError(f"max_chunk_s {self.max_chunk_s:g} s exceeds the model's audio window of {window:g} s")
        seconds = window if self.max_chunk_s is None else self.max_chunk_s
        return int(seconds * SAMPLE_RATE) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One model call: the sample ranges of the recording in `spans`, sent back to back."""

    index: int
    spans: tuple[tuple[int, int], ...]
    sample_rate: int = SAMPLE_RATE

    @property
    def start_sample(self) -> int:
        return self.spans[0][0]

    @property
    def end_sample(self) -> int:
        return self.spans[-1][1]

    @property
    def num_samples(self) -> int:
        """Samples sent to the model (silence between spans excluded)."""
        return sum(e - s for s, e in self.spans)

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end_sample / self.sample_rate


@dataclasses.dataclass(frozen=True)
class Plan:
    chunks: list[Chunk]
    num_samples: int  # the whole recording
    speech_samples: int  # inside speech regions (VAD, padded); the whole recording for fixed windows
    mode: Mode

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def sent_s(self) -> float:
        return sum(c.num_samples for c in self.chunks) / SAMPLE_RATE


# -- planning -------------------------------------------------------------------------------------


def fixed_chunks(num_samples: int, *, max_samples: int, overlap_s: float = 2.0) -> list[Chunk]:
    """Windows of `max_samples` advancing by `max_samples - overlap` (frame-aligned), covering all."""
    if num_samples <= 0:
        raise ValueError("audio has no samples")
    if not 0 <= overlap_s < max_samples / SAMPLE_RATE / 2:
        raise ValueError("overlap_s must be >= 0 and less than half of the chunk length")
    step = max_samples - math.ceil(overlap_s * SAMPLE_RATE / SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + max_samples, num_samples)
        chunks.append(Chunk(len(chunks), ((start, end),)))
        if end >= num_samples:
            return chunks
        start += step


def _quietest_cut(energy: np.ndarray, lo: int, hi: int) -> int:
    """Sample index at the centre of the quietest 100 ms between samples lo and hi."""
    a, b = lo // ENERGY_HOP, max(lo // ENERGY_HOP + 1, hi // ENERGY_HOP - QUIET_WINDOW)
    window = energy[a:b + QUIET_WINDOW]
    if window.size < QUIET_WINDOW:
        return hi
    mean = np.convolve(window, np.ones(QUIET_WINDOW, np.float32) / QUIET_WINDOW, mode="valid")
    return (a + int(np.argmin(mean)) + QUIET_WINDOW // 2) * ENERGY_HOP


def _split_long(region: tuple[int, int], energy: np.ndarray, max_samples: int) -> list[tuple[int, int]]:
    start, end = region
    pieces = []
    while end - start > max_samples:
        cut = _quietest_cut(energy, start + max_samples // 2, start + max_samples)
        cut = min(max(cut, start + SAMPLES_PER_FRAME), start + max_samples)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


# Silero's probability can dip under its exit threshold for 0.3 s inside a run of words (measured on
# the shipped demo recording: "4 6 4 3" scored 0.01-0.49 for 10 frames between "6" and "4", while the
# signal's quietest 100 ms there stayed 22 dB under the speech beside it), and a pause there would cut
# the string in two. A real pause falls to the recording's noise floor. So a gap between two regions
# is a pause only when its quietest 100 ms is within PAUSE_FLOOR_DB of the floor (the 10th percentile
# of the 10 ms energies) or PAUSE_BELOW_SPEECH_DB under the speech beside it; otherwise the regions
# are joined. Joining costs at most sending the short gap (window packing packs them together anyway).
PAUSE_FLOOR_DB = 6.0
PAUSE_BELOW_SPEECH_DB = 30.0


def confirm_pauses(regions: Sequence[tuple[int, int]], energy: np.ndarray,
                   pad_s: float = 0.08) -> list[tuple[int, int]]:
    """Regions with every gap that is not quiet in the signal itself joined (see PAUSE_FLOOR_DB).
    `energy`: RMS per ENERGY_HOP samples of the whole recording; `pad_s`: the regions' padding,
    searched too (the pads reach into the pause)."""
    if len(regions) < 2 or energy.size == 0:
        return list(regions)
    floor = float(np.percentile(energy, 10))
    pad = round(pad_s * SAMPLE_RATE)
    out = [tuple(regions[0])]
    for s, e in regions[1:]:
        ps, pe = out[-1]
        lo, hi = max(0, (pe - pad) // ENERGY_HOP), min(energy.size, -(-(s + pad) // ENERGY_HOP))
        gap = energy[lo:hi]
        quiet = (float(np.convolve(gap, np.ones(QUIET_WINDOW) / QUIET_WINDOW, mode="valid").min())
                 if gap.size >= QUIET_WINDOW else float(gap.mean()) if gap.size else 0.0)
        near = 300  # hops (3 s) of speech on each side: the level there, bounded work per gap
        beside = np.concatenate([energy[max(ps // ENERGY_HOP, pe // ENERGY_HOP - near):pe // ENERGY_HOP],
                                 energy[s // ENERGY_HOP:min(e // ENERGY_HOP, s // ENERGY_HOP + near)]])
        speech = float(np.median(beside)) if beside.size else 0.0
        at_floor = quiet <= floor * 10 ** (PAUSE_FLOOR_DB / 20)
        under_speech = quiet <= speech * 10 ** (-PAUSE_BELOW_SPEECH_DB / 20)
        if at_floor or under_speech:
            out.append((s, e))
        else:
            out[-1] = (ps, e)
    return out


def pack_regions(regions: Sequence[tuple[int, int]], energy: np.ndarray, *, max_samples: int,
                 pack: Pack = "window") -> list[Chunk]:
    """Speech regions -> chunks of at most `max_samples` sent samples, cut only between regions
    (or at a long region's quietest points)."""
    pieces = [p for r in regions for p in _split_long(r, energy, max_samples)]
    chunks: list[Chunk] = []
    spans: list[tuple[int, int]] = []
    size = 0
    for s, e in pieces:
        if spans and (pack == "utterance" or size + (e - s) > max_samples):
            chunks.append(Chunk(len(chunks), tuple(spans)))
            spans, size = [], 0
        spans.append((s, e))
        size += e - s
    if spans:
        chunks.append(Chunk(len(chunks), tuple(spans)))
    return chunks


def plan_recording(blocks: Iterable[np.ndarray], segmentation: Segmentation = Segmentation(), *,
                   checkpoint: CheckpointAudio = CheckpointAudio()) -> Plan:
    """One streaming pass over a 16 kHz mono waveform (any block sizes) -> the chunk plan."""
    max_samples = segmentation.max_samples(checkpoint.frames)
    if segmentation.mode == "fixed":
        n = sum(int(np.asarray(b).size) for b in blocks)
        return Plan(fixed_chunks(n, max_samples=max_samples, overlap_s=segmentation.overlap_s), n, n, "fixed")
    detector = SpeechDetector()
    energy: list[np.ndarray] = []
    carry = np.zeros(0, np.float32)
    for block in blocks:
        block = np.asarray(block, np.float32).reshape(-1)
        detector.feed(block)
        carry = np.concatenate([carry, block]) if carry.size else block
        whole = carry.size // ENERGY_HOP * ENERGY_HOP
        if whole:
            energy.append(np.sqrt(np.mean(np.square(carry[:whole].reshape(-1, ENERGY_HOP)), axis=1)))
        carry = carry[whole:].copy()
    n = detector.num_samples
    if n == 0:
        raise ValueError("audio has no samples")
    if carry.size:
        energy.append(np.sqrt(np.mean(np.square(carry), keepdims=True)))
    probs = detector.finish()
    energy_all = np.concatenate(energy).astype(np.float32) if energy else np.zeros(0, np.float32)
    regions = confirm_pauses(speech_regions(probs, n, segmentation.vad), energy_all,
                             max(segmentation.vad.pad_start_s, segmentation.vad.pad_end_s))
    chunks = pack_regions(regions, energy_all, max_samples=max_samples, pack=segmentation.pack or checkpoint.pack)
    return Plan(chunks, n, sum(e - s for s, e in regions), "vad")


def plan_audio(audio: np.ndarray, segmentation: Segmentation = Segmentation(), *,
               checkpoint: CheckpointAudio = CheckpointAudio()) -> Plan:
    """`plan_recording` for a waveform already in memory (the endpoint's uploads)."""
    step = 30 * SAMPLE_RATE
    return plan_recording((audio[i:i + step] for i in range(0, len(audio), step)), segmentation,
                          checkpoint=checkpoint)


# -- chunk audio ----------------------------------------------------------------------------------


def chunk_samples(audio: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The samples of one chunk from the whole waveform (a view when it has a single span)."""
    if len(chunk.spans) == 1:
        s, e = chunk.spans[0]
        return audio[s:e]
    return np.concatenate([audio[s:e] for s, e in chunk.spans])


def split_audio(audio: np.ndarray, plan: Plan) -> list[tuple[Chunk, np.ndarray]]:
    return [(c, chunk_samples(audio, c)) for c in plan.chunks]


def iter_chunk_audio(blocks: Iterable[np.ndarray], chunks: Sequence[Chunk]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Second streaming pass: (chunk, samples) in plan order. Only samples inside a span are kept
    (the silence between a chunk's regions is dropped as it is read), so memory is the chunks
    being filled (one; two where fixed windows overlap) plus one block. Chunks must be in order
    of start."""
    blocks = iter(blocks)
    pending = list(chunks)
    parts: dict[int, list[np.ndarray]] = {}  # chunk position in `pending` order -> collected slices
    first = 0  # index into `pending` of the oldest chunk not yet yielded
    read = 0  # samples read so far
    while first < len(pending):
        block = next(blocks, None)
        if block is None:
            raise ValueError(f"the recording ended at {read / SAMPLE_RATE:.2f} s, before chunk "
                             f"{pending[first].index} ({pending[first].end_s:.2f} s): it decoded differently twice")
        block = np.asarray(block, np.float32).reshape(-1)
        lo, hi = read, read + block.size
        read = hi
        i = first
        while i < len(pending) and pending[i].start_sample < hi:
            for s, e in pending[i].spans:
                if s < hi and e > lo:
                    parts.setdefault(i, []).append(block[max(s, lo) - lo:min(e, hi) - lo].copy())
            i += 1
        while first < len(pending) and pending[first].end_sample <= read:
            chunk = pending[first]
            pieces = parts.pop(first, [])
            yield chunk, (np.concatenate(pieces) if len(pieces) != 1 else pieces[0])
            first += 1


# -- stitching ------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\w]+", re.UNICODE)


def _norm(word: str) -> str:
    return _WORD.sub("", word).lower()


def overlap_words(left: str, right: str, *, min_words: int = 2, max_words: int = 40) -> int:
    """Number of leading words of `right` that repeat the trailing words of `left` (fixed windows)."""
    a, b = left.split(), right.split()
    na, nb = [_norm(w) for w in a], [_norm(w) for w in b]
    for k in range(min(len(na), len(nb), max_words), min_words - 1, -1):
        if na[-k:] == nb[:k] and any(na[-k:]):
            return k
    return 0


@dataclasses.dataclass(frozen=True)
class Segment:
    index: int
    start_s: float
    end_s: float
    text: str  # the chunk's transcript (for overlapping fixed windows: minus the repeated words)


def stitch(chunks: Sequence[Chunk], texts: Sequence[str]) -> tuple[str, list[Segment]]:
    """The transcript (chunk texts in order) and one segment per chunk.

    Chunks that do not overlap (VAD) are joined as they are. Only where a chunk starts before the
    previous one ends (fixed windows) is the overlap's repeated word run dropped, because only
    there was the same audio transcribed twice."""
    if len(chunks) != len(texts):
        raise ValueError("one text per chunk is required")
    segments: list[Segment] = []
    previous, previous_end = "", -1
    for chunk, text in zip(chunks, texts):
        text = " ".join((text or "").split())
        overlaps = chunk.start_sample < previous_end
        drop = overlap_words(previous, text) if previous and overlaps else 0
        kept = " ".join(text.split()[drop:]) if drop else text
        segments.append(Segment(chunk.index, chunk.start_s, chunk.end_s, kept))
        if text:
            previous = text
        previous_end = max(previous_end, chunk.end_sample)
    return " ".join(s.text for s in segments if s.text), segments
