"""Task prompts -> OpenAI-style chat messages: the one source the batch pipeline and the endpoint use.

A *task* is `auto` (pick by modality), `document`, `transcribe`, or any other string, which is used
verbatim as a custom instruction. Media go in as OpenAI content parts that vLLM's chat layer parses
(`chat_template_content_format="openai"`):

* images: `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (lossless PNG)
* audio:  `{"type": "input_audio", "input_audio": {"data": <base64 WAV>, "format": "wav"}}`
  (float32 WAV at 16 kHz: lossless for the waveform `model.inputs.media.decode_audio` returns, so vLLM's
  loader hands the model exactly those samples)

Media parts come before the instruction text, as in Gemma's own prompting examples.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Literal

Modality = Literal["document", "audio"]

DOCUMENT_PROMPT = "Read the document and return its text."
TRANSCRIBE_PROMPT = "Transcribe the audio."
TASKS: dict[str, str] = {"document": DOCUMENT_PROMPT, "transcribe": TRANSCRIBE_PROMPT}
BUILTIN_TASKS = ("auto", "document", "transcribe")


def resolve_prompt(task: str | None, modality: Modality) -> str:
    """Instruction text for a task on an item of `modality`."""
    task = (task or "auto").strip()
    if not task:
        raise ValueError("empty prompt: use auto, document, transcribe or a custom instruction")
    if task == "auto":
        return DOCUMENT_PROMPT if modality == "document" else TRANSCRIBE_PROMPT
    return TASKS.get(task, task)


def data_url(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image_part(image) -> dict:
    """Content part for a PIL image or already-encoded PNG bytes."""
    from model.inputs.media import image_to_png_bytes

    png = image if isinstance(image, (bytes, bytearray)) else image_to_png_bytes(image)
    return {"type": "image_url", "image_url": {"url": data_url(bytes(png), "image/png")}}


def audio_part(waveform) -> dict:
    """Content part for a float32 16 kHz mono waveform or already-encoded WAV bytes."""
    from model.inputs.media import audio_to_wav_bytes

    wav = waveform if isinstance(waveform, (bytes, bytearray)) else audio_to_wav_bytes(waveform)
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(bytes(wav)).decode("ascii"), "format": "wav"}}


def build_messages(
    text: str,
    *,
    images: Iterable = (),
    audios: Iterable = (),
    system: str | None = None,
) -> list[dict]:
    """One user turn: media parts first, then the instruction text."""
    content: list[dict] = [image_part(i) for i in images]
    content += [audio_part(a) for a in audios]
    content.append({"type": "text", "text": text})
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def messages_for_item(
    task: str | None,
    modality: Modality,
    *,
    image=None,
    audio=None,
    system: str | None = None,
) -> list[dict]:
    """Messages for one inference item: a document page (image) or an audio clip/chunk."""
    if (image is None) == (audio is None):
        raise ValueError("exactly one of image or audio is required")
    return build_messages(
        resolve_prompt(task, modality),
        images=[image] if image is not None else [],
        audios=[audio] if audio is not None else [],
        system=system,
    )


def count_media(messages: Sequence[dict]) -> tuple[int, int]:
    """(images, audios) in a message list, for per-request limits."""
    images = audios = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("image_url", "image", "input_image", "image_pil"):
                    images += 1
                elif kind in ("input_audio", "audio_url", "audio"):
                    audios += 1
    return images, audios
