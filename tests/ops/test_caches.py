"""The teacher cache of a process running shard tasks: one teacher at a time, none sent to another process."""

import torch

from dd_core.ops.caches import TeacherCache
from dd_core.pseudo.teacher import Teacher


def test_the_cache_loads_a_teacher_once_per_fingerprint_and_keeps_only_the_latest() -> None:
    made: list[str] = []

    def maker(name: str):
        def make() -> Teacher:
            made.append(name)
            return Teacher(torch.nn.Identity(), {1: 1})
        return make

    cache = TeacherCache()
    first = cache.get("fp-a", maker("a"))
    assert cache.get("fp-a", maker("a-again")) is first
    second = cache.get("fp-b", maker("b"))
    assert second is not first and cache.fingerprints() == ["fp-b"]
    cache.get("fp-a", maker("a-reloaded"))
    assert made == ["a", "b", "a-reloaded"]
    assert cache.clear() == 1 and cache.clear() == 0 and cache.fingerprints() == []
    cache.get("fp-a", maker("a-after-clear"))
    assert made[-1] == "a-after-clear"


def test_a_cache_sent_to_another_process_arrives_empty():
    import pickle

    cache = TeacherCache()
    cache.get("fp", lambda: Teacher(torch.nn.Identity(), {1: 1}))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.fingerprints() == [] and cache.fingerprints() == ["fp"]
    copy.get("fp2", lambda: Teacher(torch.nn.Identity(), {1: 1}))
    assert copy.fingerprints() == ["fp2"]
