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
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from dd_core.storage.fs import filesystem, reachable, read_bytes, write_bytes_atomic

SCHEMA_VERSION = 1

PREDICTIONS_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("category_id", pa.int32(), nullable=False),
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


def predictions_table(rows: Mapping[str, list[Any]], meta: Mapping[str, Any]) -> pa.Table:
    """A table in :data:`PREDICTIONS_SCHEMA` with ``meta`` (images, fingerprint, ...) attached."""
    table = pa.Table.from_pydict(dict(rows), schema=PREDICTIONS_SCHEMA)
    info = {"schema_version": SCHEMA_VERSION, **dict(meta)}
    return table.replace_schema_metadata({_META: json.dumps(info).encode()})


def write_shard(url: str, table: pa.Table, options: Mapping[str, Any] | None = None) -> None:
    """Write a shard atomically (one PUT on S3, temp + rename locally)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes_atomic(url, buffer.getvalue(), options)


def shard_meta(table: pa.Table) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(_META)
    return json.loads(raw) if raw else {}


def check_schema(schema: pa.Schema, url: str) -> None:
    """Refuse a shard whose columns or types drifted from :data:`PREDICTIONS_SCHEMA`."""
    if not schema.remove_metadata().equals(PREDICTIONS_SCHEMA):
        got = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise ShardError(f"{url}: schema does not match predictions schema v{SCHEMA_VERSION} (got {got})")


@reachable
def read_shard_footer(url: str, options: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """(metadata, row count) of a shard from its footer alone: a cheap "is this shard done?" check.

    Raises FileNotFoundError when absent and :class:`ShardError` when unreadable, drifted or of
    another schema version.
    """
    fs, path = filesystem(url, options)
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema, num_rows = parquet.schema_arrow, parquet.metadata.num_rows
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{url}: not a readable Parquet file ({exc})") from exc
    check_schema(schema, url)
    raw = (schema.metadata or {}).get(_META)
    meta = json.loads(raw) if raw else {}
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{url}: predictions schema version {meta.get('schema_version')}, expected {SCHEMA_VERSION}")
    return meta, num_rows


def read_shard(url: str, options: Mapping[str, Any] | None = None) -> pa.Table:
    """Read one shard, checking its footer, schema and version."""
    try:
        table = pq.read_table(io.BytesIO(read_bytes(url, options)))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{url}: not a readable Parquet file ({exc})") from exc
    check_schema(table.schema, url)
    version = shard_meta(table).get("schema_version")
    if version != SCHEMA_VERSION:
        raise ShardError(f"{url}: predictions schema version {version}, expected {SCHEMA_VERSION}")
    return table


def write_rejected(url: str, rejected: list[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> None:
    """The rejected-images table (image id, file name, reason), written atomically."""
    rows = {name: [r[name] for r in rejected] for name in REJECTED_SCHEMA.names}
    write_shard(url, pa.Table.from_pydict(rows, schema=REJECTED_SCHEMA), options)
