"""One layer over fsspec for local paths, ``file://`` and ``s3://`` URLs, with atomic writes."""

from dd_core.storage.fs import (
    StorageError,
    exists,
    filesystem,
    iter_files,
    join,
    list_files,
    parent,
    read_bytes,
    read_json,
    remove,
    version,
    write_bytes_atomic,
    write_bytes_exclusive,
    write_json_atomic,
)

__all__ = [
    "StorageError",
    "exists",
    "filesystem",
    "iter_files",
    "join",
    "list_files",
    "parent",
    "read_bytes",
    "read_json",
    "remove",
    "version",
    "write_bytes_atomic",
    "write_bytes_exclusive",
    "write_json_atomic",
]
