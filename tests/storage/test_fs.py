import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dd_core.storage import (
    exists,
    filesystem,
    join,
    list_files,
    parent,
    read_bytes,
    read_json,
    remove,
    write_bytes_atomic,
    write_json_atomic,
)


def test_join_handles_slashes():
    assert join("s3://b/prefix/", "/runs/", "x.json") == "s3://b/prefix/runs/x.json"
    assert join("/tmp/a", "b") == "/tmp/a/b"


def test_local_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    url = str(tmp_path / "sub" / "f.bin")
    write_bytes_atomic(url, b"one")
    write_bytes_atomic(url, b"two")
    assert read_bytes(url) == b"two"
    assert sorted(os.listdir(tmp_path / "sub")) == ["f.bin"]


def test_failed_local_write_keeps_old_content(tmp_path):
    url = str(tmp_path / "f.json")
    write_json_atomic(url, {"a": 1})
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        write_json_atomic(url, {"a": object()})  # not serialisable: fails before anything is written
    assert read_json(url) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_file_url_and_missing_file_error(tmp_path):
    url = f"file://{tmp_path}/x.json"
    write_json_atomic(url, [1, 2])
    assert read_json(str(tmp_path / "x.json")) == [1, 2]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_bytes(str(tmp_path / "nope.json"))


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(str(tmp_path / "bad.json"))


def test_s3_roundtrip_list_and_remove(s3):
    bucket, options = s3
    write_json_atomic(join(bucket, "a/b.json"), {"k": [1]}, options)
    write_bytes_atomic(join(bucket, "a/c/d.png"), b"\x89PNG", options)
    assert read_json(join(bucket, "a/b.json"), options) == {"k": [1]}
    assert list_files(join(bucket, "a"), options=options) == ["b.json", "c/d.png"]
    assert list_files(join(bucket, "a"), suffixes=(".png",), options=options) == ["c/d.png"]
    remove(join(bucket, "a/b.json"), options)
    assert not exists(join(bucket, "a/b.json"), options)


def test_local_list_files_returns_paths(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.png").write_bytes(b"")
    (tmp_path / "2.txt").write_text("")
    assert list_files(str(tmp_path), suffixes=(".png",)) == ["x/1.png"]
    assert list_files(f"file://{tmp_path}/") == ["2.txt", "x/1.png"]
    assert list_files(str(tmp_path / "missing")) == []


def test_atomic_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    write_bytes_atomic(str(tmp_path / "m.json"), b"{}")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / "m.json").st_mode & 0o777 == 0o666 & ~mask


def test_parent_of_urls():
    assert parent("s3://b/x/a.json") == "s3://b/x"
    assert parent("/tmp/a/b/") == "/tmp/a"
    assert parent("a.json") == "."
    assert parent("file:///tmp/a.json") == "file:///tmp"


# --- Paths built from user input are taken literally: no glob, no "::" chaining -------------------

RUNS = ("victim", "exp1", "exp2", "exp10")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """(root URL, options) on the local disk or on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    return request.getfixturevalue("s3")


def _everything(root: str, options) -> dict[str, bytes]:
    """Every file below ``root`` and its bytes, read straight from the disk or the bucket (not through ours)."""
    if not root.startswith("s3://"):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, files in os.walk(root) for f in files}
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    base = root.removeprefix("s3://")
    return {name[len(base) + 1:]: fs.cat_file(name) for name in fs.find(base)}


def _runs(root: str, options, extra: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Runs with a checkpoint and a lock each; every file's bytes are its own."""
    files = {}
    for run in RUNS + extra:
        for name in ("teacher/model_0000001.pth", "_lock.json"):
            rel = f"runs/{run}/{name}"
            files[rel] = f"{rel} {os.urandom(4).hex()}".encode()
            write_bytes_atomic(join(root, rel), files[rel], options)
    assert _everything(root, options) == files
    return files


@pytest.mark.parametrize("target", [
    "runs/*/teacher/model_0000001.pth",      # a run id "*" deleted another run's checkpoints
    "runs/exp[12]/teacher/model_0000001.pth",  # pruning run "exp[12]" deleted exp1's and exp2's
    "runs/*/_lock.json",                     # removing run "*"'s lock removed every run's lock
    "runs/exp?/_lock.json",
    "runs/x::y/_lock.json",
    "runs/**/_lock.json",
])
def test_remove_deletes_only_the_one_file_it_names(store, target):
    root, options = store
    run = target.split("/")[1]
    files = _runs(root, options, extra=(run,))
    remove(join(root, target), options)
    assert not exists(join(root, target), options)
    del files[target]
    assert _everything(root, options) == files  # every other file is there, byte for byte
    remove(join(root, target), options)  # absent now: nothing happens
    assert _everything(root, options) == files


@pytest.mark.parametrize("target", ["runs/*/_lock.json", "runs/exp[12]/teacher/model_0000001.pth", "runs/*"])
def test_removing_a_pattern_that_names_no_file_touches_nothing(store, target):
    root, options = store
    files = _runs(root, options)
    remove(join(root, target), options)
    assert _everything(root, options) == files


def test_list_files_takes_the_prefix_literally_and_skips_sibling_prefixes(store):
    root, options = store
    files = _runs(root, options, extra=("*", "exp[12]", "exp?"))
    mine = ["_lock.json", "teacher/model_0000001.pth"]
    for run in ("*", "exp[12]", "exp?", "exp1"):  # exp1 must not list exp10's files
        assert list_files(join(root, "runs", run), options=options) == mine, run
    pth = list_files(join(root, "runs", "exp[12]"), suffixes=(".pth",), options=options)
    assert pth == ["teacher/model_0000001.pth"]
    assert list_files(join(root, "runs", "exp"), options=options) == []
    assert list_files(join(root, "runs", "ex*"), options=options) == []
    assert _everything(root, options) == files


def test_a_double_colon_is_part_of_the_name_not_a_chain_of_filesystems(store):
    root, options = store
    files = _runs(root, options)
    outputs = {f"runs/x::y/{name}": name.encode() * 3 for name in ("metrics.json", "report.md", "teacher/a::b.pth")}
    for rel, data in outputs.items():
        write_bytes_atomic(join(root, rel), data, options)
    for rel, data in outputs.items():
        assert read_bytes(join(root, rel), options) == data and exists(join(root, rel), options)
    assert list_files(join(root, "runs/x::y"), options=options) == ["metrics.json", "report.md", "teacher/a::b.pth"]
    assert _everything(root, options) == {**files, **outputs}
    remove(join(root, "runs/x::y/report.md"), options)
    del outputs["runs/x::y/report.md"]
    assert _everything(root, options) == {**files, **outputs}


def test_local_files_with_colons_and_glob_characters_in_their_names(tmp_path):
    names = ["a::b.png", "x[1]*.png", "?.png", "[!a].png", "file:c.png", "s3:d.png"]
    for name in names:
        write_bytes_atomic(str(tmp_path / "img" / name), name.encode())
    (tmp_path / "img" / "x1.png").write_bytes(b"x1")  # what "x[1]*.png" would match as a pattern
    for name in names:
        assert read_bytes(str(tmp_path / "img" / name)) == name.encode()
        assert read_bytes(f"file://{tmp_path}/img/{name}") == name.encode()
    assert list_files(str(tmp_path / "img"), suffixes=(".png",)) == sorted(names + ["x1.png"])
    for name in names:
        remove(str(tmp_path / "img" / name))
    assert os.listdir(tmp_path / "img") == ["x1.png"]


def test_remove_refuses_a_folder_and_names_it(tmp_path):
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "model_0000001.pth").write_bytes(b"w")
    with pytest.raises(IsADirectoryError, match="run/teacher"):
        remove(str(tmp_path / "run" / "teacher"))
    assert (tmp_path / "run" / "teacher" / "model_0000001.pth").read_bytes() == b"w"


def test_filesystem_takes_the_protocol_from_the_prefix_only(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    fs, path = filesystem(f"file://{tmp_path}/a::b/c.json")
    assert isinstance(fs, LocalFileSystem) and path == f"{tmp_path}/a::b/c.json"
    fs, path = filesystem("relative/x::y/")
    assert isinstance(fs, LocalFileSystem) and path == os.path.join(os.getcwd(), "relative/x::y")
    with pytest.raises(ValueError, match="simplecache::s3://b/k: unknown storage protocol 'simplecache::s3'"):
        filesystem("simplecache::s3://b/k")


# --- Any name is itself: a property over random names ---------------------------------------------

# Half of the characters are ones that fsspec or a shell would read as instructions, so that names
# like "*", "[!a]", "x::y" or " ~." come up often. "." and ".." are not names but steps through
# folders (on the disk, and in the URLs botocore sends). A lone surrogate ("\ud800") is no text a
# file name can be written from (not UTF-8).
_META = st.sampled_from(list("*?[]!^-:{},.~ \\$#%&+=@'\""))
_NAMES = st.text(st.one_of(_META, st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))),
                 min_size=1, max_size=24).filter(lambda n: n not in (".", ".."))
# S3 listings are XML, which cannot carry most control characters.
_S3_NAMES = st.text(st.one_of(_META, st.characters(blacklist_characters="/", blacklist_categories=("Cc", "Cs"))),
                    min_size=1, max_size=16).filter(lambda n: n not in (".", "..") and "?versionId=" not in n)


def _round_trip(root: str, name: str, options=None) -> None:
    """``name`` as a folder and as a file next to a sentinel folder and a sibling ``name + "0"``."""
    base = join(root, os.urandom(6).hex())
    sentinel = {join(base, "sentinel", "keep.bin"): b"sentinel", join(base, f"{name}0", "k"): b"sibling"}
    for url, data in sentinel.items():
        write_bytes_atomic(url, data, options)
    folder, data = join(base, name), name.encode("utf-8") + os.urandom(8)
    write_bytes_atomic(join(folder, name), data, options)
    assert read_bytes(join(folder, name), options) == data
    assert exists(join(folder, name), options)
    assert list_files(folder, options=options) == [name]
    assert list_files(base, options=options) == sorted([f"{name}/{name}", "sentinel/keep.bin", f"{name}0/k"])
    remove(join(folder, name), options)
    assert not exists(join(folder, name), options)
    assert list_files(folder, options=options) == []
    if root.startswith("s3://"):
        remove(folder, options)  # the "folder" is no key: nothing happens (locally: IsADirectoryError)
    for url, data in sentinel.items():
        assert read_bytes(url, options) == data
    assert list_files(base, options=options) == sorted(["sentinel/keep.bin", f"{name}0/k"])


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_NAMES)
@example(name="*").via("the run id that deleted every run's checkpoints")
@example(name="x::y").via("the run id that sent every output to one file")
@example(name="exp[12]").via("the run id whose pruning deleted exp1's and exp2's checkpoints")
def test_any_local_name_round_trips_and_leaves_its_neighbours_alone(tmp_path, name):
    if len(name.encode("utf-8")) + 1 > 255:  # a file name on the disk is at most 255 bytes
        return
    _round_trip(str(tmp_path), name)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_S3_NAMES)
@example(name="*").via("the run id that deleted every run's checkpoints")
@example(name="x::y").via("the run id that sent every output to one file")
@example(name="exp[12]").via("the run id whose pruning deleted exp1's and exp2's checkpoints")
def test_any_s3_name_round_trips_and_leaves_its_neighbours_alone(s3, name):
    bucket, options = s3
    _round_trip(bucket, name, options)


def test_s3_listings_are_never_cached_so_objects_written_elsewhere_are_seen(s3):
    import s3fs

    from dd_core.storage import exists, list_files, read_bytes

    bucket, options = s3
    folder = join(bucket, "runs/r/inference")
    write_bytes_atomic(join(folder, "_plan.json"), b"{}", options)
    assert list_files(folder, options=options) == ["_plan.json"]  # a listing, as remove_unplanned_shards makes
    # Another process (a worker labeling a shard) writes through a client of its own.
    other = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    other.pipe_file(f"{folder.removeprefix('s3://')}/shard-00000.parquet", b"shard")
    assert exists(join(folder, "shard-00000.parquet"), options)
    assert read_bytes(join(folder, "shard-00000.parquet"), options) == b"shard"
    assert list_files(folder, options=options) == ["_plan.json", "shard-00000.parquet"]


def test_only_regular_local_files_are_read(tmp_path):
    import os

    from dd_core.storage import read_bytes

    os.mkfifo(tmp_path / "fifo.png")  # reading it would block forever
    with pytest.raises(OSError, match=r"fifo.png: not a regular file \(a FIFO, socket or device\)"):
        read_bytes(str(tmp_path / "fifo.png"))
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(OSError, match=r"zero.png: not a regular file"):
        read_bytes(str(tmp_path / "zero.png"))
    (tmp_path / "big.png").write_bytes(b"x" * 2000)
    with pytest.raises(ValueError, match=r"big.png: larger than 1,000 bytes \(2,000\)"):
        read_bytes(str(tmp_path / "big.png"), max_bytes=1000)
    assert read_bytes(str(tmp_path / "big.png"), max_bytes=2000) == b"x" * 2000


def test_a_failed_write_names_the_file(tmp_path):
    (tmp_path / "runs").write_text("a file where the run folder should be")
    with pytest.raises(OSError, match=r"runs/r/x.json: could not write \((File exists|Not a directory)\)"):
        write_json_atomic(str(tmp_path / "runs/r/x.json"), {"a": 1})


# --- Temporary files of writers killed mid-write ---------------------------------------------------

_KILLED_MID_WRITE = """
import os, signal, sys
from dd_core.storage.fs import _complete_temp_file
_complete_temp_file(sys.argv[1], b"x" * 1_000_000)  # the checkpoint is on disk, the rename never comes
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_write_into_the_folder_removes(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "teacher"
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(folder)])
    assert killed.returncode == -9
    (left,) = os.listdir(folder)
    assert left.startswith(".tmp-") and os.path.getsize(folder / left) == 1_000_000
    write_bytes_atomic(str(folder / "checkpoint.pth"), b"resumed")  # the resumed run's first write there
    assert sorted(os.listdir(folder)) == ["checkpoint.pth"]


def test_only_temps_of_gone_writers_are_removed(tmp_path):
    import subprocess
    import sys
    import time

    from dd_core.storage.fs import _writer, remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    boot, namespace, _ = _writer().split(".")
    names = {
        "dead": f".tmp-{boot}.{namespace}.{dead.pid}.a1b2c3d4",  # this namespace, its process gone
        "live": f".tmp-{boot}.{namespace}.{os.getppid()}.b2c3d4e5",  # this namespace, its process runs
        "ours": f".tmp-{_writer()}.c3d4e5f6",  # this very process (another thread writing)
        "other_namespace": f".tmp-{boot}.1.{dead.pid}.d4e5f6g7",  # a pid that means nothing here: kept while fresh
        "other_boot": f".tmp-ffffffff.{namespace}.{dead.pid}.e5f6g7h8",
        "old_style_fresh": ".tmp-k2j4h5g6",
        "old_style_stale": ".tmp-z9y8x7w6",  # untouched for longer than STALE_TEMP_SECONDS
        "stale_other_host": ".tmp-ffffffff.1.7.f6g7h8_9",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    hour_ago = time.time() - 3601
    for key in ("old_style_stale", "stale_other_host"):
        os.utime(tmp_path / names[key], (hour_ago, hour_ago))
    (tmp_path / "model.pth").write_bytes(b"done")
    (tmp_path / ".tmp-dir").mkdir()
    os.utime(tmp_path / ".tmp-dir", (hour_ago, hour_ago))
    removed = remove_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted(names[k] for k in ("dead", "old_style_stale", "stale_other_host"))
    kept = {"live", "ours", "other_namespace", "other_boot", "old_style_fresh"}
    assert sorted(os.listdir(tmp_path)) == sorted([*(names[k] for k in kept), "model.pth", ".tmp-dir"])


def test_files_that_only_start_like_a_temp_are_never_removed(tmp_path):
    import time

    from dd_core.storage.fs import _writer, remove_stale_temps

    users = [".tmp-notes.txt", ".tmp-12345678.1.2", ".tmp-12345678.1.2.abc", ".tmp-abcdefgh.bak"]
    ours = f".tmp-{_writer()}.q_3x9z0a"
    two_hours_ago = time.time() - 7200
    for name in [*users, ours]:
        (tmp_path / name).write_bytes(b"a user's notes")
        os.utime(tmp_path / name, (two_hours_ago, two_hours_ago))
    assert remove_stale_temps(str(tmp_path)) == [ours]
    assert sorted(os.listdir(tmp_path)) == sorted(users)


def test_the_temporary_files_of_writes_match_the_pattern_that_removal_trusts(tmp_path):
    from dd_core.storage.fs import _TEMP_NAME, _complete_temp_file

    tmp = _complete_temp_file(str(tmp_path), b"x")
    assert _TEMP_NAME.fullmatch(os.path.basename(tmp))
