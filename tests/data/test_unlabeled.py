import pytest

from dd_core.data.coco import CocoFormatError
from dd_core.data.unlabeled import (
    list_unlabeled,
    plan_shards,
    read_plan,
    write_plan,
)
from dd_core.storage import join, write_bytes_atomic, write_json_atomic


def _touch_images(folder, names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folder_listing_is_sorted_recursive_and_skips_non_images(tmp_path):
    _touch_images(tmp_path, ["b.png", "a.jpg", "sub/c.JPEG", "notes.txt"])
    found = list_unlabeled(str(tmp_path))
    assert [(im.id, im.file_name) for im in found.images] == [(1, "a.jpg"), (2, "b.png"), (3, "sub/c.JPEG")]
    assert found.url(found.images[2]) == f"{tmp_path}/sub/c.JPEG"
    assert [im.file_name for im in list_unlabeled(str(tmp_path), limit=2).images] == ["a.jpg", "b.png"]


def test_txt_list_relative_to_its_folder_or_root(tmp_path):
    (tmp_path / "list.txt").write_text("# frames\nz.png\n\nx/y.png\n")
    found = list_unlabeled(str(tmp_path / "list.txt"))
    assert found.root == str(tmp_path) and [im.file_name for im in found.images] == ["x/y.png", "z.png"]
    assert list_unlabeled(str(tmp_path / "list.txt"), root="s3://b/frames").root == "s3://b/frames"


def test_txt_list_refuses_escapes_and_duplicates(tmp_path):
    (tmp_path / "bad.txt").write_text("a.png\n../../etc/passwd\n")
    with pytest.raises(CocoFormatError, match=r"bad.txt: line 2: image path escapes the image root"):
        list_unlabeled(str(tmp_path / "bad.txt"))
    (tmp_path / "dup.txt").write_text("a.png\na.png\n")
    with pytest.raises(ValueError, match="listed more than once"):
        list_unlabeled(str(tmp_path / "dup.txt"))


def test_image_only_json_keeps_its_ids(tmp_path):
    write_json_atomic(str(tmp_path / "image_info_unlabeled2017.json"),
                      {"images": [{"id": 9, "file_name": "9.jpg", "width": 4, "height": 3},
                                  {"id": 2, "file_name": "2.jpg", "width": 4, "height": 3}]})
    found = list_unlabeled(str(tmp_path / "image_info_unlabeled2017.json"), root=str(tmp_path / "unlabeled2017"))
    assert [(im.id, im.file_name, im.width) for im in found.images] == [(2, "2.jpg", 4), (9, "9.jpg", 4)]
    assert found.root == str(tmp_path / "unlabeled2017")


def test_empty_source_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no unlabeled images found"):
        list_unlabeled(str(tmp_path))


def test_shards_cover_every_image_exactly_once(tmp_path):
    _touch_images(tmp_path, [f"{i}.png" for i in range(10)])
    images = list_unlabeled(str(tmp_path)).images
    shards = plan_shards(images, 4)
    assert [len(s.images) for s in shards] == [4, 4, 2]
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sorted(im.id for s in shards for im in s.images) == [im.id for im in images]
    with pytest.raises(ValueError, match="shard size"):
        plan_shards(images, 0)


def test_plan_roundtrip_on_s3(s3):
    bucket, options = s3
    for name in ("a.png", "b.png", "c.png"):
        write_bytes_atomic(join(bucket, "pile", name), b"x", options)
    found = list_unlabeled(join(bucket, "pile"), options=options)
    assert found.root == join(bucket, "pile") and len(found.images) == 3
    assert write_plan(found, 2, join(bucket, "plan.json"), options).num_shards == 2
    root, shards = read_plan(join(bucket, "plan.json"), options)
    assert root == found.root and [im.file_name for im in shards[1].images] == ["c.png"]


# --- property: any list entry is refused naming its line, or stays inside the image root ---------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ENTRY = st.one_of(st.text(max_size=40), st.text(alphabet="ab./\\:*?[]~\x00\t ", max_size=12),
                  st.sampled_from(["http://x/a.png", "s3://b/k.png", "../a.png", "a/../../b.png", "/etc/passwd",
                                   "C:\\x.png", "a::b.png", "~/a.png", "x" * 2000]))


def _inside(root: str, name: str) -> bool:
    import os

    path = os.path.normpath(os.path.join(root, name.replace("\\", "/")))
    return path.startswith(root + os.sep)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ENTRY, max_size=6))
def test_any_list_entry_is_refused_naming_its_line_or_stays_inside_the_root(tmp_path, entries):
    import os

    root = str(tmp_path / "root")
    list_url = str(tmp_path / "list.txt")
    write_bytes_atomic(list_url, "\n".join(e.replace("\n", "").replace("\r", "") for e in entries).encode("utf-8",
                                                                                                         "surrogatepass"))
    try:
        found = list_unlabeled(list_url, root=root)
    except CocoFormatError as exc:
        assert str(exc).startswith(f"{list_url}: line ") and len(str(exc)) < 400
        return
    except ValueError as exc:
        assert "listed more than once" in str(exc) or "no unlabeled images" in str(exc) or "UTF-8" in str(exc)
        return
    for image in found.images:
        assert _inside(os.path.normpath(root), image.file_name), image.file_name
        assert not any(ord(c) < 32 for c in image.file_name) and len(image.file_name.encode()) <= 1024


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=-2**70, max_value=2**70), min_size=1, max_size=5, unique=True))
def test_any_image_id_of_an_image_only_json_fits_int64_or_is_refused(tmp_path, ids):
    url = str(tmp_path / "info.json")
    write_json_atomic(url, {"images": [{"id": i, "file_name": f"{n}.jpg"} for n, i in enumerate(ids)]})
    try:
        found = list_unlabeled(url, root=str(tmp_path))
    except CocoFormatError as exc:
        assert "must be an integer from 0 to 2**63 - 1" in str(exc)
        assert any(not 0 <= i < 2**63 for i in ids)
        return
    assert sorted(ids) == [im.id for im in found.images] and all(0 <= i < 2**63 for i in ids)


def test_a_folder_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path, caplog):
    import os

    _touch_images(tmp_path, ["a.png"])
    os.close(os.open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), os.O_CREAT | os.O_WRONLY))
    with caplog.at_level("WARNING", logger="dd_core"):
        found = list_unlabeled(str(tmp_path))
    assert [im.file_name for im in found.images] == ["a.png"]
    assert "skipping 'caf\\udce9.png': its name is not valid UTF-8" in caplog.text


def test_list_names_end_at_newlines_only_and_upper_case_suffixes_are_lists(tmp_path):
    (tmp_path / "LIST.TXT").write_text("a\u2028b.png\nc\x85d.png\r\n# a comment\n")
    found = list_unlabeled(str(tmp_path / "LIST.TXT"))
    assert [im.file_name for im in found.images] == ["a\u2028b.png", "c\x85d.png"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_storage_root_inside_the_unlabeled_folder_is_never_listed_as_unlabeled_images(where, tmp_path, request):
    root, options = request.getfixturevalue("s3") if where == "s3" else (str(tmp_path), None)
    names = ["a.png", "runs.png", "sub/b.png", "runs/old/ap.png", "runs/old/pseudo_labels.png", "out/runs/x/ap.png"]
    for name in names:
        write_bytes_atomic(join(root, "pool", name), b"x", options)
    pool = join(root, "pool")
    # storage.root = the unlabeled folder, written another way: the runs folder is left out, nothing else.
    spelled = f"file://{tmp_path}/./pool/" if where == "local" else pool.replace("s3://", "s3a://")
    found = list_unlabeled(pool, options=options, exclude=[join(spelled, "runs")])
    assert [im.file_name for im in found.images] == ["a.png", "out/runs/x/ap.png", "runs.png", "sub/b.png"]
    # storage.root below it: only that root's runs folder is left out.
    found = list_unlabeled(pool, options=options, exclude=[join(pool, "out", "runs")])
    assert [im.file_name for im in found.images] == ["a.png", "runs.png", "runs/old/ap.png",
                                                    "runs/old/pseudo_labels.png", "sub/b.png"]
    # An unlabeled source inside a storage root's runs folder is refused.
    with pytest.raises(ValueError, match=r"/pool/runs/old: the unlabeled images lie inside .*/pool/runs, where runs "
                                         r"write their outputs: a run's own files are never unlabeled input"):
        list_unlabeled(join(pool, "runs", "old"), options=options, exclude=[join(pool, "runs")])


def test_a_local_unlabeled_folder_reached_through_a_link_still_leaves_the_runs_folder_out(tmp_path):
    _touch_images(tmp_path / "pool", ["a.png", "runs/r/ap.png"])
    (tmp_path / "link").symlink_to(tmp_path / "pool")
    found = list_unlabeled(str(tmp_path / "link"), exclude=[str(tmp_path / "pool" / "runs")])
    assert [im.file_name for im in found.images] == ["a.png"]


def _planned(tmp_path, names):
    _touch_images(tmp_path / "pool", names)
    unlabeled = list_unlabeled(str(tmp_path / "pool"))
    write_plan(unlabeled, 2, str(tmp_path / "_plan.json"))
    return unlabeled


def test_a_run_planned_on_one_pool_refuses_another_naming_what_changed(tmp_path):
    from dd_core.data.unlabeled import PoolChanged, check_planned_pool

    plan = str(tmp_path / "_plan.json")
    check_planned_pool(_planned(tmp_path, ["a.png", "b.png", "c.png"]), 2, str(tmp_path / "none.json"), "x")
    before = (tmp_path / "_plan.json").read_bytes()
    check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")  # the same pool: resumes
    _touch_images(tmp_path / "pool", ["d.png"])
    with pytest.raises(PoolChanged, match=r"^run x was planned on 3 unlabeled images \(plan digest [0-9a-f]{12}, "
                                          rf".*_plan.json\); the pool now lists 4 \('d.png' is new\): its pseudo-labels, "
                                          r"student and report are of the planned pool. Restore that pool to resume it, "
                                          r"or start a new run id for this one$"):
        check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")
    (tmp_path / "pool" / "d.png").unlink()
    (tmp_path / "pool" / "a.png").unlink()
    _touch_images(tmp_path / "pool", ["e.png"])
    with pytest.raises(PoolChanged, match=r"the pool now lists 3 \('e.png' is new\)"):
        check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")
    (tmp_path / "pool" / "e.png").unlink()
    with pytest.raises(PoolChanged, match=r"the pool now lists 2 \('a.png' is gone\)"):
        check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")
    assert (tmp_path / "_plan.json").read_bytes() == before  # nothing written


def test_a_run_planned_before_gifs_were_images_resumes_on_its_folder_holding_gifs(tmp_path):
    """.gif joined the image suffixes on 2026-12-06: a folder planned before was listed without its
    GIFs, and nothing changed when the listing now finds them."""
    from dd_core.data.unlabeled import PoolChanged, check_planned_pool, planned_pool

    plan = str(tmp_path / "_plan.json")
    planned = _planned(tmp_path, ["a.png", "c.png", "d.png"])
    _touch_images(tmp_path / "pool", ["b.gif", "e.GIF"])  # there before; listed only now
    now = list_unlabeled(str(tmp_path / "pool"))
    assert [im.file_name for im in now.images] == ["a.png", "b.gif", "c.png", "d.png", "e.GIF"]
    check_planned_pool(now, 2, plan, "x")
    assert planned_pool(now, 2, plan) == planned  # the plan's images, with the plan's ids
    _touch_images(tmp_path / "pool", ["f.png"])  # a new image besides: changed
    with pytest.raises(PoolChanged, match=r"the pool now lists 6 \('b.gif' is new\)"):
        check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")
    # A plan that names a GIF was listed with them: another GIF is a new image.
    write_plan(list_unlabeled(str(tmp_path / "pool")), 2, plan)
    _touch_images(tmp_path / "pool", ["g.gif"])
    with pytest.raises(PoolChanged, match=r"the pool now lists 7 \('g.gif' is new\)"):
        check_planned_pool(list_unlabeled(str(tmp_path / "pool")), 2, plan, "x")
