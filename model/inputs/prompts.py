"""Task prompts -> OpenAI-style chat messages: the one source the batch pipeline and the endpoint use.

A *task* names an instruction:

* `markdown` (alias `document`): the page as markdown (headings, lists, tables, LaTeX equations,
  natural reading order, no commentary), what bulk document parsers (olmOCR, Marker, MinerU) produce;
* `text`: the page's plain text;
* `transcribe`: the audio's words;
* `auto`: pick by modality, from the checkpoint's declared defaults (`default_tasks`) or else
  `DEFAULT_TASKS` (documents -> markdown, audio -> transcribe);
* any other string: used verbatim as a custom instruction.

A checkpoint declares which task `auto` means for it in `default_tasks.json` beside its config (the
shipped demo checkpoint was trained on the plain-text instruction and declares `{"document": "text"}`,
so every path that asks it with `auto` - the demo job, the tests, the bench - uses the text it learned).

Media go in as OpenAI content parts that vLLM's chat layer parses (`chat_template_content_format="openai"`):

* images: `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (lossless PNG)
* audio:  `{"type": "input_audio", "input_audio": {"data": <base64 WAV>, "format": "wav"}}`
  (float32 WAV at 16 kHz: lossless for the waveform `model.inputs.media.decode_audio` returns, so vLLM's
  loader hands the model exactly those samples)

Media parts come before the instruction text, as in Gemma's own prompting examples.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Literal

Modality = Literal["document", "audio"]

MARKDOWN_PROMPT = (
    "Convert this page to markdown. Follow the page's natural reading order. Use markdown headings, "
    "lists and emphasis where the page has them; write tables as markdown tables, or as HTML tables "
    "when cells span rows or columns; write equations as LaTeX ($...$ inline, $$...$$ on their own "
    "line). Return only the page's content, with no commentary; return nothing for a blank page."
)
TEXT_PROMPT = "Read the document and return its text."
TRANSCRIBE_PROMPT = "Transcribe the audio."
# The document task's default instruction (markdown). `TEXT_PROMPT` was the default before markdown.
DOCUMENT_PROMPT = MARKDOWN_PROMPT
TASKS: dict[str, str] = {
    "markdown": MARKDOWN_PROMPT,
    "document": MARKDOWN_PROMPT,
    "text": TEXT_PROMPT,
    "transcribe": TRANSCRIBE_PROMPT,
}
BUILTIN_TASKS = ("auto", *TASKS)
DEFAULT_TASKS: dict[str, str] = {"document": "markdown", "audio": "transcribe"}
DEFAULT_TASKS_FILE = "default_tasks.json"

# Structured extraction: the instruction when a JSON schema is given and the task is `auto`.
JSON_PROMPT = (
    "Extract the information this JSON schema describes from the page and return it as one JSON "
    "object that conforms to the schema. Use only what the page shows.\nSchema: {schema}"
)
# A PDF page's embedded text given to the model as context (`--pdf-text anchor`), olmOCR style.
ANCHOR_PROMPT = (
    "The page's embedded PDF text layer follows between the markers; it may be incomplete, out of "
    "order or wrong. Use it to get spellings and numbers right, but read the page image.\n"
    "TEXT_LAYER_START\n{text}\nTEXT_LAYER_END\n{instruction}"
)
ANCHOR_MAX_CHARS = 4000  # about 1000-1500 tokens: the layer must leave room for the image and the output


def default_tasks(model: str | pathlib.Path | None) -> dict[str, str]:
    """What `auto` means for a checkpoint: its `default_tasks.json` over `DEFAULT_TASKS`."""
    defaults = dict(DEFAULT_TASKS)
    if model is None:
        return defaults
    path = pathlib.Path(model) / DEFAULT_TASKS_FILE
    if path.is_file():
        declared = json.loads(path.read_text())
        for modality, task in declared.items():
            if modality in DEFAULT_TASKS and isinstance(task, str):
                if task not in TASKS:
                    raise ValueError(f"{path}: unknown task {task!r} for {modality} (known: {sorted(TASKS)})")
                defaults[modality] = task
    return defaults


def resolve_prompt(task: str | None, modality: Modality, defaults: Mapping[str, str] | None = None) -> str:
    """Instruction text for a task on an item of `modality` (`defaults`: what `auto` means)."""
    task = (task or "auto").strip()
    if not task:
        raise ValueError("empty prompt: use auto, markdown, text, transcribe or a custom instruction")
    if task == "auto":
        return TASKS[(defaults or DEFAULT_TASKS)[modality]]
    return TASKS.get(task, task)


def json_instruction(task: str | None, schema: str | Mapping) -> str:
    """Instruction for structured extraction: a custom instruction stays; a built-in task becomes
    the extraction instruction with the schema (compact JSON) appended."""
    text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
    task = (task or "auto").strip()
    if task in BUILTIN_TASKS:
        return JSON_PROMPT.format(schema=text)
    return f"{task}\nSchema: {text}"


def anchored(instruction: str, layer_text: str, max_chars: int = ANCHOR_MAX_CHARS) -> str:
    """`instruction` preceded by a page's text layer (cut at `max_chars`, on a line break if one is near)."""
    text = layer_text.strip()
    if len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars]
    return ANCHOR_PROMPT.format(text=text, instruction=instruction)


def data_url(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image_part(image) -> dict:
    """Content part for a PIL image or already-encoded PNG bytes. A page prepared by
    `model.inputs.pages` (an EncodedImage) becomes vLLM's `image_pil` part: it stays encoded until
    the engine's image processor reads it, with no PNG re-encode."""
    from model.inputs.media import image_to_png_bytes
    from model.inputs.pages import is_encoded_image

    if is_encoded_image(image):
        return {"type": "image_pil", "image_pil": image}

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
    defaults: Mapping[str, str] | None = None,
    json_schema: str | Mapping | None = None,
    anchor_text: str | None = None,
) -> list[dict]:
    """Messages for one inference item: a document page (image) or an audio clip/chunk.

    `defaults`: what `auto` means (`default_tasks(checkpoint)`); `json_schema`: ask for one JSON
    object of that schema; `anchor_text`: a PDF page's text layer given as context."""
    if (image is None) == (audio is None):
        raise ValueError("exactly one of image or audio is required")
    instruction = (json_instruction(task, json_schema) if json_schema is not None
                   else resolve_prompt(task, modality, defaults))
    if anchor_text:
        instruction = anchored(instruction, anchor_text)
    return build_messages(
        instruction,
        images=[image] if image is not None else [],
        audios=[audio] if audio is not None else [],
        system=system,
    )
