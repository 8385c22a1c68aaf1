import pytest

from dd_core.pseudo.infer import ShardSummary
from dd_core.pseudo.manifest import read_manifest, remove_unplanned_shards, write_manifest
from dd_core.storage import join, write_bytes_atomic


def _files(root, options=None):
    from dd_core.storage import list_files

    return list_files(root, options=options)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_only_shards_beyond_the_plan_are_removed(tmp_path, request, where):
    root, options = (str(tmp_path / "inference"), None) if where == "local" else request.getfixturevalue("s3")
    names = ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet", "shard-123456.parquet",
             "_manifest.json", "_plan.json", "_rejected.parquet", "notes.parquet", "shard-00003.parquet.bak",
             "sub/shard-00009.parquet"]
    for name in names:
        write_bytes_atomic(join(root, name), b"x", options)
    removed = remove_unplanned_shards(root, 2, options)
    assert removed == [join(root, "shard-00002.parquet"), join(root, "shard-123456.parquet")]
    assert _files(root, options) == sorted(set(names) - {"shard-00002.parquet", "shard-123456.parquet"})
    assert remove_unplanned_shards(root, 2, options) == []


def test_a_folder_not_written_yet_has_nothing_to_remove(tmp_path):
    assert remove_unplanned_shards(str(tmp_path / "nothing"), 0) == []


def test_manifest_lists_shards_in_order_and_refuses_a_missing_one(tmp_path):
    shards = [ShardSummary(n, str(tmp_path / f"{n}.parquet"), num_images=2, num_rows=r, num_rejected=1, skipped=False)
              for n, r in (("shard-00001", 5), ("shard-00000", 3))]
    for s in shards:
        write_bytes_atomic(s.url, b"x")
    manifest = write_manifest(str(tmp_path / "_manifest.json"), shards, "fp")
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001"]
    assert (manifest["num_images"], manifest["num_rows"], manifest["num_rejected"]) == (4, 8, 2)
    assert read_manifest(str(tmp_path / "_manifest.json")) == manifest
    (tmp_path / "shard-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"_manifest.json: lists 1 shard\(s\) that do not exist"):
        read_manifest(str(tmp_path / "_manifest.json"))
