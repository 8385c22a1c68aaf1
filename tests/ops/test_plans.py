"""Shard plans read once per process, and a labeling stopped when its plan is written again."""

import time

import pytest

from dd_core.data.unlabeled import UnlabeledImage, UnlabeledSet, WrittenPlan, read_plan, write_plan
from dd_core.ops import plans as plans_module
from dd_core.ops.plans import PlanCache, PlanChanged
from dd_core.storage import join


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_plan_cache_reads_a_plan_once_and_a_rewritten_plan_again(where, tmp_path, request, monkeypatch):
    root, options = request.getfixturevalue("s3") if where == "s3" else (str(tmp_path), None)
    reads = []
    monkeypatch.setattr(plans_module, "read_plan", lambda url, opts=None: reads.append(url) or read_plan(url, opts))
    images = UnlabeledSet(join(root, "pile"), [UnlabeledImage(i, f"{i}.png") for i in range(1, 6)])
    url, cache = join(root, "inference", "_plan.json"), PlanCache()
    write_plan(images, 2, url, options)
    plans = [cache.read(url, options) for _ in range(10)]  # ten shard tasks
    assert len(reads) == 1 and all(p is plans[0] for p in plans)
    assert [len(s.images) for s in plans[0][1]] == [2, 2, 1]
    write_plan(images, 4, url, options)  # a re-plan rewrites the same URL
    root_again, shards = cache.read(url, options)
    assert len(reads) == 2 and root_again == images.root and [len(s.images) for s in shards] == [4, 1]
    assert cache.read(url, options)[1] == shards and len(reads) == 2
    with pytest.raises(FileNotFoundError, match="nothing.json: no such file"):
        cache.read(join(root, "nothing.json"), options)


def _read_until_changed(cache, url, options, digest, seconds=10.0):
    """Shard tasks reading their plan until one is told it changed (a look runs between two calls)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cache.read(url, options, digest)
        time.sleep(0.01)
    raise AssertionError(f"no PlanChanged within {seconds} s")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_plan_held_at_its_digest_is_read_once_and_a_straggler_is_stopped_by_a_new_plan(
        where, tmp_path, request, monkeypatch):
    import dd_core.storage as storage

    root, options = request.getfixturevalue("s3") if where == "s3" else (str(tmp_path), None)
    reads = []
    real_read_json = storage.read_json
    monkeypatch.setattr(storage, "read_json", lambda url, opts=None: reads.append(url) or real_read_json(url, opts))
    images = UnlabeledSet(join(root, "pile"), [UnlabeledImage(i, f"{i}.png") for i in range(1, 6)])
    url, cache = join(root, "inference", "_plan.json"), PlanCache()
    written = write_plan(images, 2, url, options)
    assert written == WrittenPlan(3, real_read_json(url, options)["digest"])
    plans = [cache.read(url, options, written.digest) for _ in range(10)]  # ten shard tasks of one labeling
    assert reads == [url] and all(p is plans[0] for p in plans)
    assert [len(s.images) for s in plans[0][1]] == [2, 2, 1]
    assert write_plan(images, 2, url, options) == written  # a resume plans the same shards: the same digest
    for _ in range(20):
        assert cache.read(url, options, written.digest) is plans[0]
        time.sleep(0.01)
    again = write_plan(images, 4, url, options)  # the same run planned anew with other shards
    assert again.digest != written.digest
    with pytest.raises(PlanChanged, match=r"_plan.json: the shard plan changed since this labeling planned it"):
        _read_until_changed(cache, url, options, written.digest)  # the old labeling's straggler stops
    with pytest.raises(PlanChanged, match=r"_plan.json: the shard plan changed"):
        PlanCache().read(url, options, written.digest)  # a process that had not read it yet: at once
    assert [len(s.images) for s in cache.read(url, options, again.digest)[1]] == [4, 1]  # the new labeling reads on
    cache.clear()
