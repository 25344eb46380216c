"""`--subtitles srt|vtt`: one subtitle file per transcribed recording, beside the run's tables.

    <output>/subtitles/run_date=YYYY-MM-DD/<run_id>/<name>.<source_id>.srt

`<name>` is the recording's file name without its extension (made file-system safe); the source id
keeps names unique and joins the file to its `sources/` row. Every recording whose source row is ok
gets a file, one cue per chunk with the chunk's true start and end in the recording (a recording
without speech gets an empty one). A re-run of the same run rewrites the same files.

A separate step after finalize: it reads the run's work area with Ray Data, groups it by source and
assembles each group with `jobs.stages.assemble_source` (so a file always agrees with the source's
row and stitched text), renders it (`model.inputs.subtitles`) and writes it from the worker. The
driver holds nothing per source; cost per recording is one pass over its chunk rows and one small
write.
"""

from __future__ import annotations

import re

import pyarrow as pa

from connectors.storage import resolve
from jobs import stages
from jobs.workarea import work_dataset
from model.inputs import audio_chunks, subtitles

RESULT_SCHEMA = pa.schema([("source_id", pa.string()), ("uri", pa.string()), ("cues", pa.int32())])
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def directory(spec, layout) -> str:
    return f"{layout.root}/subtitles/run_date={spec.run.run_date}/{spec.run.run_id}"


def file_name(source_uri: str, source_id: str, fmt: str) -> str:
    name = source_uri.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name and "#" not in name else name
    stem = _UNSAFE.sub("_", stem).strip("._")[:80] or "recording"
    return f"{stem}.{source_id}.{fmt}"


def render_source(rows: list[dict], fmt: str, *, strict: bool = False) -> tuple[dict, str] | None:
    """Work rows of one source -> (source row, subtitle text), or None when it gets no file."""
    source, segments = stages.assemble_source(rows, strict=strict)
    if source["status"] != "ok" or source["modality"] != "audio":
        return None
    chunks = [audio_chunks.Chunk(s["segment_index"], ((round(s["start_s"] * 16000), round(s["end_s"] * 16000)),))
              for s in segments]
    _, pieces = audio_chunks.stitch(chunks, [s["text"] or "" for s in segments])
    return source, subtitles.render(pieces, fmt)


def write(spec, layout) -> dict:
    """Write the run's subtitle files; returns {"format", "directory", "files"}."""
    fmt, storage, target, strict = spec.output.subtitles, spec.storage, directory(spec, layout), spec.output.strict

    def write_group(group: pa.Table) -> pa.Table:
        rendered = render_source(group.to_pylist(), fmt, strict=strict)
        if rendered is None:
            return RESULT_SCHEMA.empty_table()
        source, text = rendered
        uri = f"{target}/{file_name(source['source_uri'], source['source_id'], fmt)}"
        fs, path = resolve(uri, storage)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(text.encode("utf-8"))
        cues = text.count(" --> ")
        return pa.Table.from_pylist([{"source_id": source["source_id"], "uri": uri, "cues": cues}],
                                    schema=RESULT_SCHEMA)

    work = work_dataset(spec, layout)
    written = work.groupby("source_id").map_groups(write_group, batch_format="pyarrow")
    return {"format": fmt, "directory": target, "files": written.count()}
