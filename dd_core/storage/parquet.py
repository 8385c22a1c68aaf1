"""Parquet shards of ensembled predictions: an explicit, versioned schema, checked on every read.

One row per predicted instance on an unlabeled image. Each shard file also carries, in its schema
metadata, the images it covers (so images with no prediction are still accounted for) and the
fingerprint of the model and transform set that produced it (so a finished shard is not redone).
pyarrow casts or null-fills a drifted schema silently when reading a dataset: :func:`read_shard`
compares each file's schema with ours first.
"""

from __future__ import annotations

import io
import json
import operator
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dd_core.storage.fs import _is_local, _regular_file_size, filesystem, reachable, read_bytes, write_bytes_atomic

# v2: category_id is int64 (v1's int32 wrapped ids >= 2**31 around); shards of another version are redone.
SCHEMA_VERSION = 2

PREDICTIONS_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("category_id", pa.int64(), nullable=False),
    pa.field("box", pa.list_(pa.float32(), 4), nullable=False),       # xyxy, original image pixels
    pa.field("score", pa.float32(), nullable=False),
    pa.field("keypoints", pa.list_(pa.float32()), nullable=False),    # x0, y0, x1, y1, ... (empty for boxes)
    pa.field("keypoint_scores", pa.list_(pa.float32()), nullable=False),
    pa.field("num_transforms", pa.int16(), nullable=False),
])

_META = b"omnidistill"

# Unlabeled images that could not be decoded (empty, truncated, not an image, too large).
REJECTED_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])


class ShardError(ValueError):
    """A shard that cannot be trusted: unreadable, wrong schema, or made by another model."""


def predictions_table(rows: Mapping[str, Sequence[Any] | np.ndarray], meta: Mapping[str, Any]) -> pa.Table:
    """A table in :data:`PREDICTIONS_SCHEMA` with ``meta`` (images, fingerprint, ...) attached.

    A column is a Python list or a NumPy array; a list column (box, keypoints, keypoint_scores)
    may be a 2-D array of rows x width. Arrays go straight into Arrow buffers: no Python object
    per value, and no ``pa.array``, whose first call imports pandas where it is installed (slow,
    and paid by every process that labels a shard).
    """
    arrays = [_column(rows[field.name], field) for field in PREDICTIONS_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=PREDICTIONS_SCHEMA)
    info = {"schema_version": SCHEMA_VERSION, **dict(meta)}
    return table.replace_schema_metadata({_META: json.dumps(info).encode()})


_NUMPY = {pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64, pa.float32(): np.float32}


def _column(values: Sequence[Any] | np.ndarray, field: pa.Field) -> pa.Array:
    if not isinstance(values, np.ndarray):
        return pa.array(values, type=field.type)
    kind = field.type
    if not pa.types.is_list(kind) and not pa.types.is_fixed_size_list(kind):
        if values.ndim != 1:
            raise ValueError(f"column {field.name}: expected one value per row, got an array of shape {values.shape}")
        return arrow_array(values, kind, f"column {field.name}")
    if values.ndim != 2:
        raise ValueError(f"column {field.name}: expected rows x width, got an array of shape {values.shape}")
    rows, width = values.shape
    flat = arrow_array(values.reshape(-1), kind.value_type, f"column {field.name}")
    if pa.types.is_fixed_size_list(kind):
        if width != kind.list_size:
            raise ValueError(f"column {field.name}: rows of {width} values, expected {kind.list_size}")
        return pa.FixedSizeListArray.from_arrays(flat, width)
    offsets = arrow_array(np.arange(rows + 1, dtype=np.int64) * width, pa.int32(),
                          f"column {field.name} (list offsets)")
    return pa.ListArray.from_arrays(offsets, flat)


def arrow_array(values: np.ndarray, kind: pa.DataType, name: str = "values") -> pa.Array:
    """A 1-D array as an Arrow array of ``kind`` (numbers or strings), built from its buffers
    (``pa.array`` would import pandas on its first call where pandas is installed).

    Refuses, naming the column ``name``, a value the cast to ``kind`` would change: NumPy's casts
    wrap integers around silently (a category id of 2**31 became -2**31 in an int32 column).
    """
    if pa.types.is_string(kind):
        data = [str(v).encode() for v in values]
        offsets = np.zeros(len(data) + 1, np.int32)
        np.cumsum([len(d) for d in data], out=offsets[1:])
        return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    array = np.ascontiguousarray(exact_cast(values, np.dtype(_NUMPY[kind]), name))
    return pa.Array.from_buffers(kind, len(array), [None, pa.py_buffer(array)])


def exact_cast(values: np.ndarray, dtype: np.dtype, name: str = "values") -> np.ndarray:
    """``values`` as ``dtype``; integers must fit and stay integers (floats may round to float32)."""
    if values.dtype == dtype:
        return values
    if dtype.kind == "f":
        return values.astype(dtype)
    if values.dtype.kind == "O":
        try:
            values = np.array([operator.index(v) for v in values], dtype=object)
        except TypeError as exc:
            raise ValueError(f"{name}: expected integers for {dtype} ({exc})") from exc
    elif values.dtype.kind not in "biu":
        raise ValueError(f"{name}: expected integers for {dtype}, got {values.dtype} values")
    if len(values) and not np.can_cast(values.dtype, dtype):
        info = np.iinfo(dtype)
        outside = [int(v) for v in (values.min(), values.max()) if not info.min <= int(v) <= info.max]
        if outside:
            raise ValueError(f"{name}: {outside[0]} is outside the range of {dtype} ({info.min}..{info.max})")
    return values.astype(dtype)


def empty_columns(schema: pa.Schema = PREDICTIONS_SCHEMA) -> dict[str, np.ndarray]:
    """A zero-row NumPy column per field of ``schema`` (list columns as 0 x width arrays)."""
    out = {}
    for f in schema:
        kind = f.type
        width = kind.list_size if pa.types.is_fixed_size_list(kind) else 0
        value = kind.value_type if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) else kind
        dtype = object if pa.types.is_string(value) else _NUMPY[value]
        out[f.name] = np.zeros((0, width) if value is not kind else 0, dtype)
    return out


def write_shard(url: str, table: pa.Table, options: Mapping[str, Any] | None = None) -> None:
    """Write a shard atomically (one PUT on S3, temp + rename locally).

    Only columns that repeat (ids, names, categories) are dictionary-encoded: coordinates and
    scores rarely do, and trying costs as much as the rest of the write.
    """
    buffer = io.BytesIO()
    repeating = [f.name for f in table.schema if not _is_float(f.type)]
    pq.write_table(table, buffer, compression="zstd", use_dictionary=repeating)
    write_bytes_atomic(url, buffer.getvalue(), options)


def _is_float(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return pa.types.is_floating(kind)


def shard_meta(table: pa.Table) -> dict[str, Any]:
    """The metadata of a shard already read by :func:`read_shard` (which checked it)."""
    return _schema_meta(table.schema, "<table>")


def _schema_meta(schema: pa.Schema, url: str) -> dict[str, Any]:
    """Our metadata in a shard's schema; unreadable metadata makes it a shard to redo."""
    raw = (schema.metadata or {}).get(_META)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise ShardError(f"{url}: unreadable shard metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ShardError(f"{url}: unreadable shard metadata (not a JSON object)")
    return meta


def check_schema(schema: pa.Schema, url: str) -> None:
    """Refuse a shard whose columns or types drifted from :data:`PREDICTIONS_SCHEMA`."""
    if not schema.remove_metadata().equals(PREDICTIONS_SCHEMA):
        got = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise ShardError(f"{url}: schema does not match predictions schema v{SCHEMA_VERSION} (got {got})")


def check_version(meta: Mapping[str, Any], url: str) -> None:
    """Refuse a shard written under another :data:`SCHEMA_VERSION` (checked before the columns, so
    that an old shard is named as old rather than as drifted)."""
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{url}: predictions schema version {meta.get('schema_version')}, expected {SCHEMA_VERSION}")


@reachable
def read_shard_footer(url: str, options: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """(metadata, row count) of a shard from its footer alone: a cheap "is this shard done?" check.

    Raises FileNotFoundError when absent and :class:`ShardError` when unreadable, drifted or of
    another schema version.
    """
    fs, path = filesystem(url, options)
    try:
        if _is_local(fs):  # a FIFO or device named like a shard would block the open
            _regular_file_size(url, path)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema, num_rows = parquet.schema_arrow, parquet.metadata.num_rows
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{url}: not a readable Parquet file ({exc})") from exc
    meta = _schema_meta(schema, url)
    check_version(meta, url)
    check_schema(schema, url)
    return meta, num_rows


def read_shard(url: str, options: Mapping[str, Any] | None = None) -> pa.Table:
    """Read one shard, checking its footer, schema and version."""
    try:
        table = pq.ParquetFile(io.BytesIO(read_bytes(url, options))).read()  # read_table imports pandas
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{url}: not a readable Parquet file ({exc})") from exc
    check_version(_schema_meta(table.schema, url), url)
    check_schema(table.schema, url)
    return table


def write_rejected(url: str, rejected: list[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> None:
    """The rejected-images table (image id, file name, reason), written atomically.

    Built from buffers like :func:`predictions_table` (``from_pydict`` would import pandas).
    """
    arrays = [arrow_array(np.array([r[f.name] for r in rejected], dtype=object), f.type, f"column {f.name}")
              for f in REJECTED_SCHEMA]
    write_shard(url, pa.Table.from_arrays(arrays, schema=REJECTED_SCHEMA), options)


def list_rows(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list column whose rows all have one width (keypoints, keypoint scores) as rows x width."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(lists):
        return np.zeros((0, 0), np.float32)
    widths = np.diff(numpy_view(lists.offsets))
    if (widths != widths[0]).any():
        raise ValueError(f"list rows of different widths ({sorted(set(widths.tolist()))}) do not form a matrix")
    return numpy_view(lists.flatten()).reshape(len(lists), int(widths[0]))


def column_values(table: pa.Table, name: str) -> np.ndarray:
    """One numeric column as a NumPy array."""
    return numpy_view(table.column(name).combine_chunks())


def numpy_view(array: pa.Array) -> np.ndarray:
    """A read-only NumPy view of a numeric Arrow array without nulls, from its data buffer
    (``to_numpy`` imports pandas on its first call where pandas is installed, even for a view)."""
    if array.null_count or array.type not in _NUMPY:
        raise TypeError(f"no NumPy view of an array of {array.type} with {array.null_count} nulls")
    dtype = np.dtype(_NUMPY[array.type])
    if not len(array):
        return np.zeros(0, dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
