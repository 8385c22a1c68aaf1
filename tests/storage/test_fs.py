import os

import pytest

from dd_core.storage import (
    exists,
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
    with pytest.raises(TypeError):
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
