"""Broken copies of a checkpoint for the reliability tests."""

from __future__ import annotations

import json
import pathlib
import shutil
import struct

WRONG_SHAPE_TENSOR = "model.language_model.embed_tokens.weight"


def wrong_weight_shape(src: pathlib.Path, dst: pathlib.Path, tensor: str = WRONG_SHAPE_TENSOR) -> pathlib.Path:
    """A copy of `src` whose safetensors header declares `tensor` transposed: the file is whole and
    its header valid (preflight passes), but the weight no longer fits the model, so the engine
    fails while loading -- the way a checkpoint of the wrong model size fails."""
    shutil.copytree(src, dst)
    for path in sorted(dst.glob("*.safetensors")):
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + length])
        if tensor not in header:
            continue
        header[tensor]["shape"] = list(reversed(header[tensor]["shape"]))
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8 bytes
        path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])
        return dst
    raise ValueError(f"{tensor} is in no weight file of {src}")
