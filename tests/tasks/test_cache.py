"""What a process remembers between shard tasks: whether the server has a "gpu" limit, asked at most
every few seconds instead of one slot request per shard."""

import pytest
from prefect import flow, task

from tasks import cache
from tasks.cache import Recent
from tasks.infer import gpu_slot
from tests.tasks.gpu_limit import active_gpu_slots, gpu_limit, tagged_task


def test_a_recent_answer_is_asked_once_per_period_and_a_failed_ask_is_not_remembered():
    now, answers, asked = [0.0], iter([False, True, False]), []

    def ask() -> bool:
        asked.append(now[0])
        if now[0] == 25.0:
            raise ConnectionError("server gone")
        return next(answers)

    recent = Recent(ask, every=10.0, clock=lambda: now[0])
    assert [recent() for _ in range(5)] == [False] * 5 and asked == [0.0]
    now[0] = 9.9
    assert recent() is False and asked == [0.0]
    now[0] = 10.0  # the period is over: asked again
    assert recent() is True and asked == [0.0, 10.0]
    now[0] = 25.0
    with pytest.raises(ConnectionError, match="server gone"):
        recent()
    now[0] = 25.5  # nothing remembered from the failed ask: asked again at once
    assert recent() is False and asked == [0.0, 10.0, 25.0, 25.5]
    recent.forget()
    with pytest.raises(StopIteration):  # forgotten: asked again (and the answers are used up)
        recent()


@task
def _slotted(look: bool) -> int | None:
    with gpu_slot():
        return active_gpu_slots() if look else None


@flow
def _shards(n: int, look: bool) -> list[int | None]:
    return [_slotted(look) for _ in range(n)]


def test_shard_tasks_ask_for_a_gpu_slot_only_while_the_server_has_a_gpu_limit(prefect_harness, monkeypatch, request):
    asked = []
    real = cache.GPU_LIMIT.ask
    monkeypatch.setattr(cache.GPU_LIMIT, "ask", lambda: asked.append(1) or real())
    monkeypatch.setattr(cache.GPU_LIMIT, "every", 3600.0)  # asked again only when forgotten: counts exact
    request.addfinalizer(cache.GPU_LIMIT.forget)  # and no answer kept for an hour after the test
    cache.GPU_LIMIT.forget()

    assert _shards(5, look=False) == [None] * 5 and len(asked) == 1  # no limit: asked once, no slot taken
    # As in a run, a task tagged "gpu" (train, evaluate) finds no limit, which Prefect remembers for 5 s.
    assert tagged_task() == 0
    with gpu_limit(2):  # forgets our answer, as when LIMIT_LOOK_EVERY has passed, and waits out Prefect's
        assert len(asked) == 1
        assert _shards(3, look=True) == [1, 1, 1] and len(asked) == 2  # asked once; each held a slot as it ran
        assert active_gpu_slots() == 0  # and gave it back
