"""Turn `--input` URIs into source items: one per input file or per Parquet row.

Inputs are expanded on the driver into *units* (a file to process, or a Parquet file to explode into
rows); a Ray Data `flat_map` turns units into *source rows*. Every source row carries a stable
`source_id` derived from where it came from, which is what resume and idempotent re-runs key on:

* a file:                      source_uri = its URI;                source_id = hash(URI)
* a Parquet row with bytes:    source_uri = "<parquet URI>#<id>"   source_id = the id column, else
                                                                    hash(parquet URI, row number)
* a Parquet row with a URI:    source_uri = the referenced URI;     same source_id rule

Why Parquet rows are read here and not with `ray.data.read_parquet`: resume needs a position that
is stable across runs when no id column exists, and Ray Data's reader exposes no row numbers. Row
groups are streamed in small record batches (`iter_batches`), so memory stays bounded. Why files are
listed here and then fetched per row (not `ray.data.read_binary_files`): an unreadable object must
become one error row, while Ray's file reader fails the whole job on the first one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

from connectors.storage import StorageConfig, list_files, resolve

BYTES_COLUMNS = ("bytes", "data", "content", "image", "audio", "document", "file")
URI_COLUMNS = ("uri", "url", "path", "source_uri", "s3_uri")
ID_COLUMNS = ("id", "source_id", "doc_id", "document_id")
PROMPT_COLUMNS = ("prompt",)
SCHEMA_COLUMNS = ("json_schema",)
NAME_COLUMNS = ("filename", "file_name", "name")


class ParquetColumns(BaseModel):
    """parquet: columns of Parquet inputs (unset: detected from the usual names)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bytes_column: str | None = Field(None, description="file bytes")
    uri_column: str | None = Field(None, description="a URI to read")
    id_column: str | None = Field(None, description="the source id")
    prompt_column: str | None = Field(None, description="a per-row task, over the job's")
    schema_column: str | None = Field(None, description="a per-row JSON schema (structured extraction)")


def stable_id(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:24]


PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def expand_inputs(inputs: list[str], storage: StorageConfig):
    """Driver side: input URIs -> a pyarrow Table of units (unit: "file"|"parquet", uri), sorted, unique.

    The driver's one per-object structure: the listing itself (pyarrow's FileInfo per object, while
    a prefix is listed) and then an Arrow table of about the URI's length per object; measured in
    bench/finalize_scale.py. Ray Data's own file readers list in the driver the same way.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    uris = pa.chunked_array([pa.array(list_files(uri, storage), pa.string()) for uri in inputs], pa.string())
    uris = pc.unique(uris)
    uris = uris.take(pc.sort_indices(uris))
    lower = pc.utf8_lower(uris)
    parquet = functools.reduce(pc.or_, (pc.ends_with(lower, suffix) for suffix in PARQUET_SUFFIXES))
    return pa.table({"unit": pc.if_else(parquet, "parquet", "file"), "uri": uris})


def _pick(names: list[str], explicit: str | None, candidates: tuple[str, ...], what: str, uri: str) -> str | None:
    if explicit:
        if explicit not in names:
            raise ValueError(f"{uri}: the {what} column {explicit!r} does not exist (columns: {names})")
        return explicit
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def source_row(
    *, source_id: str, source_uri: str, source_row: str | None = None, name: str | None = None,
    data: bytes | None = None, prompt: str | None = None, error: str | None = None,
    json_schema: str | None = None,
) -> dict:
    return dict(source_id=source_id, source_uri=source_uri, source_row=source_row, name=name or source_uri,
                data=data, prompt=prompt, load_error=error, json_schema=json_schema)


def file_source(uri: str) -> dict:
    return source_row(source_id=stable_id(uri), source_uri=uri)


def iter_parquet_sources(uri: str, storage: StorageConfig, columns: ParquetColumns,
                         batch_rows: int = 64) -> Iterator[dict]:
    """Rows of one Parquet file as source rows. A table that cannot be used at all yields one
    error row for the file (never an exception), bad cells yield error rows for their rows."""
    import pyarrow.parquet as pq

    fs, path = resolve(uri, storage)
    try:
        handle = pq.ParquetFile(fs.open_input_file(path))
        names = handle.schema_arrow.names
        bytes_col = _pick(names, columns.bytes_column, BYTES_COLUMNS, "bytes", uri)
        uri_col = _pick(names, columns.uri_column, URI_COLUMNS, "URI", uri) if not bytes_col or columns.uri_column else None
        id_col = _pick(names, columns.id_column, ID_COLUMNS, "id", uri)
        prompt_col = _pick(names, columns.prompt_column, PROMPT_COLUMNS, "prompt", uri)
        name_col = _pick(names, None, NAME_COLUMNS, "name", uri)
        schema_col = _pick(names, columns.schema_column, SCHEMA_COLUMNS, "JSON schema", uri)
        if not bytes_col and not uri_col:
            raise ValueError(
                f"{uri}: no bytes column ({', '.join(BYTES_COLUMNS)}) and no URI column "
                f"({', '.join(URI_COLUMNS)}); name one with --bytes-column or --uri-column (columns: {names})")
    except Exception as exc:  # noqa: BLE001 - one error row for an unusable table
        yield source_row(source_id=stable_id(uri), source_uri=uri,
                         error=f"cannot read the Parquet table: {exc}")
        return
    wanted = [c for c in (bytes_col, uri_col, id_col, prompt_col, name_col, schema_col) if c]
    row_number = 0
    for batch in handle.iter_batches(batch_size=batch_rows, columns=wanted):
        for record in batch.to_pylist():
            n, row_number = row_number, row_number + 1
            ident = record.get(id_col) if id_col else None
            ref = f"{uri}#{id_col}={ident}" if ident is not None else f"{uri}#row={n}"
            sid = str(ident) if ident is not None else stable_id(uri, n)
            prompt = record.get(prompt_col) if prompt_col else None
            if prompt is not None and not isinstance(prompt, str):
                prompt = None
            name = record.get(name_col) if name_col else None
            schema = record.get(schema_col) if schema_col else None
            schema = schema if isinstance(schema, str) and schema.strip() else None
            if bytes_col:
                value = record.get(bytes_col)
                error = None
                if value is None:
                    error = f"row {n}: the {bytes_col!r} column is null (no file content)"
                elif not isinstance(value, (bytes, bytearray)):
                    error = (f"row {n}: the {bytes_col!r} column holds {type(value).__name__}, "
                             "expected binary file content")
                    value = None
                yield source_row(source_id=sid, source_uri=ref, source_row=ref,
                                 name=name if isinstance(name, str) else None, data=value, prompt=prompt, error=error,
                                 json_schema=schema)
            else:
                target = record.get(uri_col)
                if not isinstance(target, str) or not target.strip():
                    yield source_row(source_id=sid, source_uri=ref, source_row=ref, prompt=prompt,
                                     error=f"row {n}: the {uri_col!r} column is empty or not a string")
                else:
                    yield source_row(source_id=sid, source_uri=target.strip(), source_row=ref, prompt=prompt,
                                     json_schema=schema)


def parquet_source_ids(uri: str, storage: StorageConfig, columns: ParquetColumns) -> list[str] | None:
    """The source ids a Parquet input yields, reading only its id column (or just its metadata),
    so a resumed run can skip a finished table without starting any work. None when unknown."""
    import pyarrow.parquet as pq

    fs, path = resolve(uri, storage)
    try:
        handle = pq.ParquetFile(fs.open_input_file(path))
        id_col = _pick(handle.schema_arrow.names, columns.id_column, ID_COLUMNS, "id", uri)
        if id_col is None:
            return [stable_id(uri, n) for n in range(handle.metadata.num_rows)]
        ids = handle.read(columns=[id_col]).column(0).to_pylist()
    except Exception:  # noqa: BLE001 - let the workers produce the error row
        return None
    return [str(v) if v is not None else stable_id(uri, n) for n, v in enumerate(ids)]
