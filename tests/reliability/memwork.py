"""Work units measured by `memprobe` in a fresh process (each returns a small JSON-able summary)."""

from __future__ import annotations

import pathlib


def decode_file(path: str, name: str) -> dict:
    """model.inputs.media.decode on the file's bytes, as the pipeline and the endpoint call it."""
    from model.inputs import media

    data = pathlib.Path(path).read_bytes()
    try:
        decoded = media.decode(data, name)
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


def prompt_file(path: str, name: str) -> dict:
    """What the batch decode stage does per page: decode, build the chat request, serialise it."""
    import json

    from model.inputs import media, prompts

    data = pathlib.Path(path).read_bytes()
    decoded = media.decode(data, name)
    size = 0
    for page in decoded.pages:
        size += len(json.dumps(prompts.messages_for_item("auto", "document", image=page)))
    return {"pages": len(decoded.pages), "request_mib": size / 2**20,
            "page_size": list(decoded.pages[0].size) if decoded.pages else None}
