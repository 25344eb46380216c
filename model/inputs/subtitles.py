"""Transcript segments -> SubRip (.srt) and WebVTT (.vtt) text, one cue per segment with text.

Used by the endpoint (`response_format=srt|vtt`) and the batch job (`--subtitles srt|vtt`). Both
formats are a few lines of text per cue, so they are written here rather than pulling two packages
into the endpoint's ingress; the tests read them back with the `srt` and `webvtt-py` parsers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Literal, Protocol

Format = Literal["srt", "vtt"]
FORMATS: tuple[Format, ...] = ("srt", "vtt")
LINE_CHARS = 42  # the usual subtitle line length


class Timed(Protocol):
    start_s: float
    end_s: float
    text: str


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cues(segments: Iterable[Timed]) -> list[tuple[float, float, list[str]]]:
    cues = []
    for seg in segments:
        words = " ".join((seg.text or "").split())  # a blank line would end the cue early
        if not words:
            continue
        end = max(seg.end_s, seg.start_s + 0.001)
        cues.append((seg.start_s, end, textwrap.wrap(words, LINE_CHARS, break_long_words=False)))
    return cues


def to_srt(segments: Iterable[Timed]) -> str:
    blocks = [
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n" + "\n".join(lines)
        for i, (start, end, lines) in enumerate(_cues(segments), 1)
    ]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Iterable[Timed]) -> str:
    blocks = ["WEBVTT"] + [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n" + "\n".join(_vtt_escape(line) for line in lines)
        for start, end, lines in _cues(segments)
    ]
    return "\n\n".join(blocks) + "\n"


def render(segments: Iterable[Timed], fmt: Format) -> str:
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    raise ValueError(f"subtitle format must be srt or vtt, not {fmt!r}")
