"""The bad-input corpus through the decoders production uses (`model.inputs.pages` for documents,
`model.inputs.media` for recordings), no engine.

Every kind either decodes correctly (content checked) or raises `MediaError` with an actionable
message; nothing raises anything else. The two memory hazards are measured in fresh processes: the
decompression bomb is refused before any pixel is allocated, and a two-hour recording streams in
bounded memory (and decodes whole with input + output + a small constant).
"""

from __future__ import annotations

import os
import re

import pytest

from model.inputs import media
from tests.reliability import corpus, memprobe
from tests.reliability.figures import report

pytestmark = pytest.mark.reliability

LONG_AUDIO_S = float(os.environ.get("RELIABILITY_LONG_AUDIO_S", "7200"))  # two hours
BOUNDED_GROWTH_MIB = 64  # fixed bound for the bomb and for streaming, whatever the input size


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return {c.kind: c for c in corpus.file_cases(tmp_path_factory.mktemp("corpus"), LONG_AUDIO_S)}


def test_corpus_covers_at_least_twenty_kinds(cases):
    parquet = corpus.parquet_cases(b"x", "s3://b/missing.png")
    kinds = set(cases) | {"parquet_nulls", "parquet_wrong_types", "missing_object", "denied_object"}
    assert len(kinds) >= 20 and len(parquet) == 3
    report("corpus_kinds", file_kinds=len(cases), total_kinds=len(kinds))




@pytest.mark.parametrize("kind", [
    "good_png", "truncated_png", "truncated_jpeg", "zero_byte", "image_1x1", "image_100000x10", "cmyk_jpeg",
    "png_16bit", "palette_png", "alpha_png", "encrypted_pdf", "corrupt_pdf", "zero_page_pdf", "poster_pdf",
    "wav_zero_samples", "wav_nan_inf", "truncated_wav", "wav_8k_stereo", "wav_96k_24bit", "text_as_wav",
    "text_as_jpg", "random_bytes_mp3", "unsupported_type",
])
def test_each_kind_decodes_correctly_or_fails_clearly(cases, kind):
    case = cases[kind]
    if case.expect == "ok":
        decoded = corpus.decode(case.payload(), case.filename)
        case.check(decoded)
    else:
        with pytest.raises(media.MediaError) as info:
            corpus.decode(case.payload(), case.filename)
        assert re.search(case.message, str(info.value)), str(info.value)


def test_decompression_bomb_is_refused_without_allocating(cases, tmp_path):
    case = cases["decompression_bomb"]
    path = tmp_path / case.filename
    path.write_bytes(case.payload())
    out = memprobe.measure("tests.reliability.memwork:decode_file", path, case.filename)
    assert re.search(case.message, out["result"]["error"])
    # 40000 x 40000 would be 4.8 GB as RGB; refused from the header.
    assert out["growth_mib"] < BOUNDED_GROWTH_MIB, out
    report("bomb_peak_memory", input_kib=len(case.payload()) // 1024, decoded_would_be_gib=4.8,
           growth_mib=out["growth_mib"])


def test_two_hour_recording_streams_with_bounded_memory(cases):
    path = cases["long_recording"].path
    streamed = memprobe.measure("tests.reliability.memwork:stream_audio_file", path)
    assert streamed["result"]["duration_s"] == pytest.approx(LONG_AUDIO_S, abs=0.01)
    assert 0.29 < streamed["result"]["peak_amplitude"] < 0.31  # the 0.3 tone survives resampling
    assert streamed["growth_mib"] < BOUNDED_GROWTH_MIB, streamed

    whole = memprobe.measure("tests.reliability.memwork:decode_file", path, "long.wav")
    result = whole["result"]
    assert result["duration_s"] == pytest.approx(LONG_AUDIO_S, abs=0.01)
    # Decoding whole: the input bytes + the 16 kHz float32 output + a constant; no second copy.
    assert whole["growth_mib"] < result["input_mib"] + result["output_mib"] + BOUNDED_GROWTH_MIB, whole
    report("long_recording_memory", hours=LONG_AUDIO_S / 3600, input_mib=round(result["input_mib"], 1),
           output_mib=round(result["output_mib"], 1), streamed_growth_mib=streamed["growth_mib"],
           whole_decode_growth_mib=whole["growth_mib"])
