"""URLs in, bytes out: every read and write in omnidistill goes through these functions.

A URL is a local path, ``file://...`` or ``s3://bucket/key``. ``options`` are passed to fsspec
(``endpoint_url``, ``key``, ``secret``, ...) and are never logged. Writes are atomic so that a
retried or resumed stage never leaves (or reads) half a file: locally a temporary file in the same
folder is renamed over the target; on S3 a single PUT is atomic by itself.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

Options = Mapping[str, Any] | None


class StorageError(OSError):
    """The storage behind a URL cannot be reached (endpoint down, network gone)."""


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # s3fs not installed: only local storage
        return ()
    return (BotoConnectionError,)


_UNREACHABLE = _unreachable_errors()


def reachable(func):
    """Re-raise "cannot connect" errors of remote storage as :class:`StorageError` naming the URL."""

    @functools.wraps(func)
    def wrapper(url: str, *args: Any, **kwargs: Any):
        try:
            return func(url, *args, **kwargs)
        except _UNREACHABLE as exc:
            raise StorageError(f"{url}: storage unreachable ({exc})") from exc

    return wrapper


def filesystem(url: str, options: Options = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url, **dict(options or {}))
    return fs, path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def parent(url: str) -> str:
    """The folder (or prefix) holding ``url``: ``s3://b/x/a.json`` -> ``s3://b/x``; ``a.json`` -> ``.``."""
    base = url.rstrip("/")
    head, sep, _ = base.rpartition("/")
    return head if sep and not head.endswith(":/") else "."


def join(url: str, *parts: str) -> str:
    """Join URL path segments with ``/`` (also for local paths, which Python accepts on POSIX)."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@reachable
def exists(url: str, options: Options = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


@reachable
def read_bytes(url: str, options: Options = None) -> bytes:
    """The whole object at ``url``; ``FileNotFoundError`` names the URL when it is missing."""
    fs, path = filesystem(url, options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: no such file") from exc


def read_json(url: str, options: Options = None) -> Any:
    data = read_bytes(url, options)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{url}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


@reachable
def write_bytes_atomic(url: str, data: bytes, options: Options = None) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one."""
    fs, path = filesystem(url, options)
    if _is_local(fs):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        # One PUT: S3 makes the object visible only once it is complete.
        fs.pipe_file(path, data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(url: str, obj: Any, options: Options = None, indent: int | None = None) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=indent).encode("utf-8"), options)


@reachable
def remove(url: str, options: Options = None) -> None:
    fs, path = filesystem(url, options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@reachable
def list_files(url: str, suffixes: tuple[str, ...] | None = None, options: Options = None) -> list[str]:
    """Names of every file below ``url`` (recursively), relative to it, sorted: ``a.png``, ``sub/b.png``."""
    fs, path = filesystem(url, options)
    base = fs._strip_protocol(path).rstrip("/") + "/"
    names = [p[len(base):] for p in fs.find(path) if p.startswith(base)]
    if suffixes:
        names = [n for n in names if n.lower().endswith(suffixes)]
    return sorted(names)
