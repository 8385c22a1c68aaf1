"""URLs in, bytes out: every read and write in omnidistill goes through these functions.

A URL is a local path, ``file://...`` or ``s3://bucket/key``. ``options`` are passed to fsspec
(``endpoint_url``, ``key``, ``secret``, ...) and are never logged. Writes are atomic so that a
retried or resumed stage never leaves (or reads) half a file: locally a temporary file in the same
folder is renamed over the target; on S3 a single PUT is atomic by itself. A writer killed between
the two (SIGKILL during a checkpoint write) leaves its temporary file behind: the first write of each
process into a folder removes the ones whose writer is gone (see :func:`remove_stale_temps`).

Paths are taken literally. Run ids and image names end up in URLs, and fsspec reads some
characters as instructions: ``*``, ``?`` and ``[`` are glob patterns to ``rm`` and ``expand_path``
(on S3, removing run ``*``'s checkpoint removed every run's), and ``a::b`` chains filesystems in
``url_to_fs``. So the protocol is read from the ``scheme://`` prefix alone, and only calls that
name one object (``cat_file``, ``pipe_file``, ``rm_file``) or list one literal prefix (``find``)
are made.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import stat
import tempfile
import time
from typing import Any, Iterator, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dd_core.storage.host import boot_id, pid_namespace, pid_runs

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


def _split_url(url: str) -> tuple[str, str]:
    """(protocol, the rest) of ``url``: ``s3://b/k`` -> ``("s3", "b/k")``; a plain path is ``"file"``.

    Unlike ``fsspec.core.split_protocol`` a local path starting with ``data:`` stays a path.
    """
    protocol, sep, rest = url.partition("://")
    if sep and len(protocol) > 1:  # a one-letter "protocol" is a Windows drive
        return protocol, rest
    return "file", url


OBJECT_STORES = ("s3", "s3a", "gs", "gcs")  # bucket/key URLs, where a key is any string
_SAME_STORE = {"s3a": "s3", "gcs": "gs"}  # two protocols of one store


def canonical_url(url: str) -> str:
    """An object-store URL in its one written form (``s3://b//x/./y/`` -> ``s3://b/x/y``); anything else
    as it is.

    s3fs writes ``s3://b//y/k`` under the key ``/y/k`` but lists it as ``y/k``, and ``.``/``..``
    segments name keys other than the folder meant: a URL is written this way or refused
    (:data:`dd_core.config.schema.Location`)."""
    protocol, sep, rest = url.partition("://")
    if protocol not in OBJECT_STORES or not sep:
        return url
    return f"{protocol}://{posixpath.normpath('/' + rest).lstrip('/')}"


def canonical_location(url: str) -> tuple[str, str]:
    """(protocol, path) of what ``url`` names, the same for every spelling of one object or folder.

    A local path (plain or ``file://``) is its real absolute path (``./x`` and ``x``, symlinks and
    ``..`` resolved); another URL's path has no empty, ``.`` or ``..`` segments (``s3://b//k/`` is
    ``("s3", "b/k")``) and ``s3a``/``gcs`` are ``s3``/``gs``. Keys stay case-sensitive."""
    protocol, rest = _split_url(url)
    if protocol in ("file", "local"):
        return "file", os.path.realpath(rest)
    return _SAME_STORE.get(protocol, protocol), posixpath.normpath("/" + rest).strip("/")


def below(url: str, folder: str) -> str | None:
    """``url``'s path below ``folder`` ("" for the folder itself), or None when it does not lie inside it
    (both compared as :func:`canonical_location`)."""
    (protocol, inner), (folder_protocol, outer) = canonical_location(url), canonical_location(folder)
    outer = outer.rstrip("/")
    if protocol != folder_protocol:
        return None
    if inner == outer:
        return ""
    return inner[len(outer) + 1:] if inner.startswith(outer + "/") else None
def filesystem(url: str, options: Options = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it, taken literally.

    The filesystem is picked from the protocol prefix alone: ``fsspec.core.url_to_fs`` would read
    ``runs/x::y/...`` as a chain of two filesystems (and ``run_id=x::y`` sent every output to one
    file). Local paths are made absolute, as fsspec's own local paths are.
    """
    protocol, rest = _split_url(url)
    settings = dict(options or {})
    if protocol in ("s3", "s3a"):
        # No cached listings: shards are written by other processes and machines, and a listing
        # cached in this one (remove_unplanned_shards lists the inference folder) made s3fs answer
        # "no such file" for shards written after it.
        settings.setdefault("use_listings_cache", False)
    try:
        fs = fsspec.filesystem(protocol, **settings)
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise ValueError(f"{url}: unknown storage protocol {protocol!r}") from exc
    if _is_local(fs):
        return fs, _local_path(rest)
    if protocol in ("s3", "s3a") and "?versionId=" in rest:
        raise ValueError(f"{url}: s3fs would read '?versionId=' as an object version, not as part of the key")
    return fs, rest.rstrip("/")


def _local_path(path: str) -> str:
    """``path`` made absolute (and ``~`` expanded, as fsspec did), otherwise unchanged."""
    path = os.path.expanduser(path) if path.startswith("~") else path
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    return path.rstrip("/") or "/"


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
def read_bytes(url: str, options: Options = None, max_bytes: int | None = None) -> bytes:
    """The whole object at ``url``; ``FileNotFoundError`` names the URL when it is missing.

    A local path must be a regular file: a FIFO would block forever and ``/dev/zero`` never end.
    With ``max_bytes``, a larger object is refused (``ValueError``) before it is read.
    """
    fs, path = filesystem(url, options)
    try:
        if _is_local(fs):
            size = _regular_file_size(url, path)
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"{url}: larger than {max_bytes:,} bytes ({size:,})")
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: no such file") from exc


@reachable
def version(url: str, options: Options = None) -> tuple[Any, ...] | None:
    """What changes whenever the object at ``url`` is rewritten, from its metadata alone (a stat, an S3
    HEAD): locally (size, mtime in ns, inode), since an atomic write renames a new file over the old
    one; on S3 (size, ETag, last modified). None when the storage tells nothing that would change.
    ``FileNotFoundError`` names the URL when it is missing."""
    fs, path = filesystem(url, options)
    try:
        if _is_local(fs):
            info = os.stat(path)
            return ("file", info.st_size, info.st_mtime_ns, info.st_ino)
        meta = fs.info(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: no such file") from exc
    tag = meta.get("ETag") or meta.get("etag")
    modified = meta.get("LastModified") or meta.get("mtime")
    if tag is None and modified is None:
        return None
    return (fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0], meta.get("size"), tag, str(modified))


def _regular_file_size(url: str, path: str) -> int:
    info = os.stat(path)  # follows symlinks: a link to /dev/zero is not a regular file
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "a folder, not a file", url)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{url}: not a regular file (a FIFO, socket or device)")
    return info.st_size


def read_json(url: str, options: Options = None) -> Any:
    data = read_bytes(url, options)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{url}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, an integer of 5,000 digits, nesting too deep
        raise ValueError(f"{url}: not readable JSON ({exc})") from exc


@reachable
def write_bytes_atomic(url: str, data: bytes, options: Options = None) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one."""
    fs, path = filesystem(url, options)
    if _is_local(fs):
        try:
            _replace_local(path, data)
        except OSError as exc:  # a full disk, a read-only folder: name the file
            if exc.errno is None:
                raise
            raise type(exc)(exc.errno, f"{url}: could not write ({exc.strerror})") from exc
    else:
        # One PUT: S3 makes the object visible only once it is complete.
        fs.pipe_file(path, data)


TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600.0
"""A temporary file untouched for this long is abandoned, whoever wrote it (a write in progress
changes its modification time as it goes, and a rename follows the last byte at once)."""

# ".tmp-<boot id, 8 hex>.<PID namespace inode>.<pid>.<mkstemp's random part>": who wrote it. Only
# names that match in full are ours: a user's ".tmp-notes.txt" in an --out folder is never touched.
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's names: 8 of "a-z0-9_"
_TEMP_NAME = re.compile(rf"\.tmp-([0-9a-f]{{8}})\.(\d+)\.(\d+)\.{_RANDOM}")
_OLD_TEMP_NAME = re.compile(rf"\.tmp-{_RANDOM}")  # written before the writer was named: by age only
_swept: set[tuple[int, str]] = set()  # (pid, folder): folders this process has cleaned already


def _writer() -> str:
    """This process as a temporary file's name holds it: boot, PID namespace, pid."""
    namespace = re.sub(r"\D", "", pid_namespace() or "") or "0"
    return f"{(boot_id() or '0' * 8)[:8]}.{namespace}.{os.getpid()}"


def _writer_gone(name: str) -> bool:
    """Whether the process that wrote temporary file ``name`` is known not to run: it named this
    boot and PID namespace (where its pid can be trusted) and is not this process."""
    found = _TEMP_NAME.fullmatch(name)
    if found is None or boot_id() is None:
        return False
    boot, namespace, pid = found.group(1), found.group(2), int(found.group(3))
    ours = _writer().split(".")
    return [boot, namespace] == ours[:2] and pid != os.getpid() and pid > 0 and not pid_runs(pid)


def remove_stale_temps(folder: str, older_than: float = STALE_TEMP_SECONDS) -> list[str]:
    """Delete the temporary files of atomic writes in ``folder`` left by writers that are gone: one
    of this machine's PID namespace whose process does not run, or any untouched for
    ``older_than`` seconds (a writer on another host or container). Only names that match the
    temporary files' pattern in full count; other files starting ``.tmp-`` are a user's and stay.
    Returns the names removed."""
    removed: list[str] = []
    try:
        entries = os.scandir(folder)
    except OSError:
        return removed
    now = time.time()
    with entries:
        for entry in entries:
            if not (_TEMP_NAME.fullmatch(entry.name) or _OLD_TEMP_NAME.fullmatch(entry.name)):
                continue  # not a temporary file of ours, whatever its name starts with
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if _writer_gone(entry.name) or now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except OSError:  # removed by another writer meanwhile, or not ours to remove: leave it
                continue
    return removed


def _complete_temp_file(folder: str, data: bytes) -> str:
    """A temporary file in ``folder`` holding all of ``data`` (on disk, with the usual mode); its path.
    The first in each folder of each process removes the stale ones first (:func:`remove_stale_temps`)."""
    os.makedirs(folder, exist_ok=True)
    if (os.getpid(), folder) not in _swept:
        _swept.add((os.getpid(), folder))
        remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{_writer()}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _replace_local(path: str, data: bytes) -> None:
    tmp = _complete_temp_file(os.path.dirname(os.path.abspath(path)), data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(url: str, obj: Any, options: Options = None, indent: int | None = None) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=indent).encode("utf-8"), options)


@reachable
def write_bytes_exclusive(url: str, data: bytes, options: Options = None) -> None:
    """Create ``url`` holding ``data`` only if nothing is there yet, else ``FileExistsError``.

    Of many writers racing for one URL exactly one succeeds, and readers never see half of it:
    locally a complete temporary file is hard-linked to the name (``link`` fails if the name
    exists); on S3 the PUT carries ``If-None-Match: *`` (the loser gets 412 PreconditionFailed,
    which s3fs raises as ``FileExistsError``). S3 answers 409 ConditionalRequestConflict while
    another conditional write of the key is in flight; that is reported as ``FileExistsError``
    too, since the key is being created by someone else (who may still fail: look again).
    """
    fs, path = filesystem(url, options)
    try:
        if _is_local(fs):
            _link_new_file(path, data)
        else:
            fs.pipe_file(path, data, mode="create")
    except FileExistsError as exc:
        raise FileExistsError(f"{url}: already exists") from exc
    except OSError as exc:
        if _error_code(exc) == "ConditionalRequestConflict":
            raise FileExistsError(f"{url}: being created by another writer") from exc
        raise


def _link_new_file(path: str, data: bytes) -> None:
    tmp = _complete_temp_file(os.path.dirname(path), data)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an error that s3fs translated (``exc.__cause__`` is botocore's)."""
    response = getattr(exc.__cause__, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


@reachable
def remove(url: str, options: Options = None) -> None:
    """Delete the one file at ``url``; nothing happens when it is absent.

    Never a pattern and never a folder: s3fs's ``rm(path, recursive=True)`` expands globs, so removing
    run ``exp[12]``'s checkpoint removed ``exp1``'s and ``exp2``'s. A local folder raises
    ``IsADirectoryError``; on S3 only the object with exactly this key is deleted.
    """
    fs, path = filesystem(url, options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError as exc:
        raise IsADirectoryError(f"{url}: is a folder; remove() deletes single files") from exc


@reachable
def list_files(url: str, suffixes: tuple[str, ...] | None = None, options: Options = None) -> list[str]:
    """Names of every file below ``url`` (recursively), relative to it, sorted: ``a.png``, ``sub/b.png``.

    The prefix is literal (``runs/exp[12]`` lists that folder, not ``exp1`` and ``exp2``), and only
    names below ``url/`` count: S3 lists by key prefix, which would also match ``runs/exp10``.
    """
    fs, path = filesystem(url, options)
    # Compared without leading "/": some filesystems (fsspec's memory://) answer with one that the
    # path inside the URL lacks.
    base = path.strip("/")
    base = f"{base}/" if base else ""
    names = [p.lstrip("/")[len(base):] for p in fs.find(path) if p.lstrip("/").startswith(base)]
    if suffixes:
        names = [n for n in names if n.lower().endswith(suffixes)]
    return sorted(names)


def iter_files(url: str, suffixes: tuple[str, ...] | None = None, options: Options = None) -> Iterator[str]:
    """Paths of the files below ``url`` (a literal prefix), found folder by folder: for looking
    until the first, where :func:`list_files` lists everything first."""
    fs, path = filesystem(url, options)
    try:
        for root, _, files in fs.walk(path):
            for name in files:
                if not suffixes or name.lower().endswith(suffixes):
                    yield f"{root.rstrip('/')}/{name}"
    except _UNREACHABLE as exc:
        raise StorageError(f"{url}: storage unreachable ({exc})") from exc
