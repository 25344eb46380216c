"""Where the speech is: Silero VAD over a 16 kHz waveform, streamed block by block.

The detector is Silero VAD's *sequence* ONNX model, shipped inside the `silero-vad` wheel (nothing is
downloaded at run time), run with onnxruntime on one thread. It scores every 512-sample (32 ms) frame
with a speech probability; `speech_regions` turns the probabilities into speech regions.

Why Silero (measured on the bench's digit-string recordings with beeps and noise bursts in some long
pauses, `python -m bench.audio --compare-vad 0,0.003,0.01 --minutes 2,3 --sounds 0.6`,
docs/benchmarks.md "Long recordings"; every detector through the same `speech_regions` and
`confirm_pauses`): Silero sent none of the 10 non-speech sounds and missed 0.07-0.15 s of about 2
minutes of speech; WebRTC's VAD (levels 1-3) sent 7-10 of the sounds and missed up to 1.8 s at the
higher noise, an energy detector sent 9-10 and missed up to 2.5 s. None cut inside an utterance.
Silero costs about 6 CPU-seconds per audio hour on one core (WebRTC about 0.5, energy about 0.2),
small next to decoding the file and to the model's own cost.

Why not `silero_vad`'s Python helpers: importing the package imports torch and sets torch's global
thread count to 1 as a side effect, which would slow any process that also runs torch (tests, a
driver holding a reference model). So the model file is located without importing the package, and
the probabilities-to-regions state machine (`speech_regions`, the same rules as silero's
`get_speech_timestamps_from_probs`: enter at `threshold`, leave below `threshold - 0.15` after
`min_silence_s`, drop regions shorter than `min_speech_s`) is written here in a few lines.

Cost: about 6 CPU-seconds per audio hour (one core); memory: one float per 32 ms frame (450 k floats
for 4 h) plus one block of audio, whatever the recording's length.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 512  # samples per probability (32 ms), fixed by the 16 kHz model
CONTEXT = 64  # trailing samples of the previous frame the model sees with each frame
BATCH_FRAMES = 512  # frames per ONNX call (16 s): amortizes the call, bounds its memory
MODEL_FILE = "silero_vad_16k_sequence.onnx"


def model_path() -> pathlib.Path:
    spec = importlib.util.find_spec("silero_vad")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed (pip install silero-vad)")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"silero-vad is installed but {path} is missing; reinstall silero-vad>=6.2")
    return path


@functools.lru_cache(maxsize=1)
def _session():
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread: decode tasks and the endpoint's ingress run many of these side by side.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])


class SpeechDetector:
    """Streaming speech probabilities: `feed` blocks of any size, then `finish`; `probabilities()`
    has one value per 512-sample frame (the last frame zero-padded), exactly as scoring the whole
    waveform at once would give (the recurrent state and frame context carry across blocks)."""

    def __init__(self) -> None:
        self._session = _session()
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._probs: list[np.ndarray] = []
        self.num_samples = 0

    def feed(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32).reshape(-1)
        self.num_samples += block.size
        self._pending = np.concatenate([self._pending, block]) if self._pending.size else block
        whole = self._pending.size // FRAME * FRAME
        for start in range(0, whole, BATCH_FRAMES * FRAME):
            self._run(self._pending[start:min(start + BATCH_FRAMES * FRAME, whole)])
        self._pending = self._pending[whole:].copy()

    def finish(self) -> np.ndarray:
        if self._pending.size:
            last = np.zeros(FRAME, np.float32)
            last[: self._pending.size] = self._pending
            self._run(last)
            self._pending = np.zeros(0, np.float32)
        return self.probabilities()

    def probabilities(self) -> np.ndarray:
        return np.concatenate(self._probs) if self._probs else np.zeros(0, np.float32)

    def _run(self, samples: np.ndarray) -> None:
        frames = samples.reshape(-1, FRAME)
        contexts = np.empty((len(frames), CONTEXT), np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -CONTEXT:]
        self._context = frames[-1, -CONTEXT:].copy()
        probs, h, c = self._session.run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate([contexts, frames], axis=1), "h": self._state[0], "c": self._state[1]},
        )
        self._state = (h, c)
        self._probs.append(np.asarray(probs, np.float32).reshape(-1))


@dataclasses.dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5  # speech starts at this probability (silero's default)
    # A pause this long ends a region; shorter ones (between words) stay inside it. Silero's
    # probability decays for about 0.1 s after speech stops, so 0.2 s here splits at true pauses of
    # about 0.35 s and more (pauses of exactly 0.30 s often stay joined: audio_chunks' docstring);
    # min_silence_s = 0.3 s merged strings 0.35-0.4 s apart (bench.audio).
    min_silence_s: float = 0.2
    min_speech_s: float = 0.2  # shorter regions are clicks, not words
    # Onsets (fricatives: "six", "zero") score late and tails fade under the threshold. These pads
    # missed 0.08 s of 2 minutes of speech and sent 9 % more than the speech (bench.audio --compare-vad,
    # noise 0.003).
    pad_start_s: float = 0.08
    pad_end_s: float = 0.08

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError("vad threshold must be in (0, 1)")
        if self.min_silence_s < 0.064 or self.min_speech_s < 0 or self.pad_start_s < 0 or self.pad_end_s < 0:
            raise ValueError("vad durations must be >= 0 (min_silence_s >= 0.064)")
        if self.pad_start_s + self.pad_end_s > self.min_silence_s:
            raise ValueError("pad_start_s + pad_end_s must not exceed min_silence_s (pads would overlap)")


def _floats(values: np.ndarray, block: int = 65536):
    """(index, Python float) pairs, converted a block at a time (a 4 h recording has 450 k frames)."""
    for start in range(0, len(values), block):
        yield from enumerate(values[start:start + block].tolist(), start)


def speech_regions(probs: np.ndarray, num_samples: int, settings: VadSettings = VadSettings()) -> list[tuple[int, int]]:
    """Speech regions as (start, end) sample ranges, padded, sorted, separated by at least
    `min_silence_s - pad_start_s - pad_end_s` of silence, inside [0, num_samples]."""
    neg = max(settings.threshold - 0.15, 0.01)
    min_silence = settings.min_silence_s * SAMPLE_RATE
    min_speech = settings.min_speech_s * SAMPLE_RATE
    raw: list[tuple[int, int]] = []
    start = None  # first sample of the open region
    quiet_from = None  # first sample of the current run of quiet frames inside the open region
    probs = np.asarray(probs, np.float32)
    for i, p in _floats(probs):
        at = i * FRAME
        if start is None:
            if p >= settings.threshold:
                start, quiet_from = at, None
            continue
        if p >= settings.threshold:
            quiet_from = None
        elif p < neg:
            if quiet_from is None:
                quiet_from = at
            if at - quiet_from >= min_silence:
                if quiet_from - start > min_speech:
                    raw.append((start, quiet_from))
                start = quiet_from = None
    if start is not None:
        end = quiet_from if quiet_from is not None else num_samples
        if end - start > min_speech:
            raw.append((start, end))
    pad_start = round(settings.pad_start_s * SAMPLE_RATE)
    pad_end = round(settings.pad_end_s * SAMPLE_RATE)
    regions: list[tuple[int, int]] = []
    for s, e in raw:
        s, e = max(0, s - pad_start), min(num_samples, e + pad_end)
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], e))
        elif e > s:
            regions.append((s, e))
    return regions
