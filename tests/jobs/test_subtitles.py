"""model.inputs.subtitles: SRT and VTT read back with real parsers (`srt`, `webvtt-py`)."""

from __future__ import annotations

import datetime as dt
import html
import io

import srt
import webvtt

from model.inputs.audio_chunks import Segment
from model.inputs.subtitles import render, to_srt, to_vtt

SEGMENTS = [
    Segment(0, 0.88, 3.52, "4 7 1 9 2 0 6"),
    Segment(1, 4.0, 4.0, ""),  # a chunk that came back empty gives no cue
    Segment(2, 3725.0407, 3731.5, "a <b> & c --> d " + "word " * 12 + "\n\n8 3 5 0 2"),
]


def test_srt_parses_with_srt_package():
    subs = list(srt.parse(to_srt(SEGMENTS)))
    assert [s.index for s in subs] == [1, 2]
    assert subs[0].start == dt.timedelta(seconds=0.88) and subs[0].end == dt.timedelta(seconds=3.52)
    assert subs[1].start == dt.timedelta(hours=1, minutes=2, seconds=5, milliseconds=41)
    assert subs[0].content == "4 7 1 9 2 0 6"
    lines = subs[1].content.split("\n")
    assert all(len(line) <= 42 for line in lines) and " ".join(lines).endswith("word 8 3 5 0 2")
    assert to_srt([]) == ""


def test_vtt_parses_with_webvtt_py():
    captions = webvtt.from_buffer(io.StringIO(to_vtt(SEGMENTS))).captions
    assert [(c.start, c.end) for c in captions] == [("00:00:00.880", "00:00:03.520"), ("01:02:05.041", "01:02:11.500")]
    assert captions[0].text == "4 7 1 9 2 0 6"
    # Markup characters are escaped in the file (a cue's text is HTML-like in WebVTT).
    assert html.unescape(captions[1].text).replace("\n", " ").startswith("a <b> & c --> d word")
    assert "&lt;b&gt; &amp; c --&gt; d" in to_vtt(SEGMENTS)
    assert render([], "vtt") == "WEBVTT\n"
