"""Work units measured by `memprobe` in a fresh process (each returns a small JSON-able summary)."""

from __future__ import annotations

import pathlib


def decode_file(path: str, name: str) -> dict:
    """The file's bytes through the decoders the pipeline and the endpoint use (`corpus.decode`)."""
    from model.inputs import media
    from tests.reliability import corpus

    data = pathlib.Path(path).read_bytes()
    try:
        decoded = corpus.decode(data, name)
    except media.MediaError as exc:
        return {"error": str(exc), "input_mib": len(data) / 2**20}
    out = {"kind": decoded.kind, "input_mib": len(data) / 2**20}
    if decoded.audio is not None:
        out.update(duration_s=decoded.duration_s, output_mib=decoded.audio.nbytes / 2**20)
    return out


def stream_audio_file(path: str, block_s: str = "30") -> dict:
    """model.inputs.media.iter_audio over a file on disk: 16 kHz mono blocks, never the whole waveform."""
    import numpy as np

    from model.inputs import media

    samples = 0
    peak = 0.0
    with open(path, "rb") as handle:
        for block in media.iter_audio(handle, block_s=float(block_s)):
            samples += block.size
            peak = max(peak, float(np.abs(block).max()))
    return {"duration_s": samples / media.TARGET_SAMPLE_RATE, "peak_amplitude": peak}
