"""The shipped alerts: the automations install on a Prefect server, and the events they trigger on
are the ones a failed distillation and a shard out of retries really emit."""

import datetime
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.server.events.schemas.automations import EventTrigger as ServerTrigger
from prefect.server.events.schemas.events import ReceivedEvent

from deployments.alerts import RUN_FAILED, SHARD_GAVE_UP, install
from tests.flows.conftest import local_config, make_sets


def _events(client, name: str, since, wanted: int = 1):
    """Events called ``name`` since ``since``, once ``wanted`` of them have reached the server."""
    deadline = time.monotonic() + 30
    while True:
        page = client.read_events(filter=EventFilter(event=EventNameFilter(name=[name]),
                                                      occurred=EventOccurredFilter(since=since)), limit=50)
        if len(page.events) >= wanted or time.monotonic() > deadline:
            return page.events
        time.sleep(0.5)


def _covers(trigger, event) -> bool:
    """Whether the Prefect server's own matching would fire ``trigger`` on ``event``."""
    return ServerTrigger.model_validate(trigger.model_dump()).covers(ReceivedEvent.model_validate(event.model_dump()))


def test_the_automations_install_and_replace_themselves(prefect_harness):
    from prefect.blocks.notifications import SlackWebhook

    SlackWebhook(url="https://hooks.slack.invalid/services/T/B/X").save("omnidistill-alerts", overwrite=True)
    assert install("slack-webhook/omnidistill-alerts") == ["omnidistill: distillation run failed",
                                                            "omnidistill: shard out of retries"]
    install("slack-webhook/omnidistill-alerts")  # again: replaced, not doubled
    with get_client(sync_client=True) as client:
        ours = [a for a in client.read_automations() if a.name.startswith("omnidistill: ")]
    assert sorted(a.name for a in ours) == ["omnidistill: distillation run failed", "omnidistill: shard out of retries"]
    assert all(a.actions[0].type == "send-notification" for a in ours)
    with pytest.raises(ValueError, match="expected <block type slug>/<block name>"):
        install("omnidistill-alerts")


def test_a_failed_distillation_and_a_shard_out_of_retries_emit_what_the_alerts_wait_for(tmp_path, prefect_harness):
    from dd_core.storage.layout import RunLayout
    from flows.distill import label_unlabeled
    from flows.run import run_distillation

    since = datetime.datetime.now(datetime.timezone.utc)
    d = make_sets(tmp_path, (2, 2, 1))
    with pytest.raises(FloatingPointError):  # the teacher diverges: the flow run fails
        run_distillation(local_config(d, run_id="alert", teacher={"iterations": 3, "batch_size": 2, "lr": 1e12,
                                                                   "warmup_iters": 0}))
    (tmp_path / "teacher.pth").write_bytes(b"not a checkpoint")  # every shard fails for good (not retried)
    with pytest.raises(ValueError, match="not a readable omnidistill checkpoint"):
        label_unlabeled(local_config(d, run_id="alert-shards"), str(tmp_path / "teacher.pth"),
                        RunLayout(str(d / "store"), "alert-shards"))
    from dd_core.ops.stop import PROCESS

    assert PROCESS.reason() is None  # the failed labeling stopped its own shards, not what runs next
    with get_client(sync_client=True) as client:
        failed_runs = _events(client, "prefect.flow-run.Failed", since, wanted=2)
        failed_tasks = _events(client, "prefect.task-run.Failed", since, wanted=2)
    distill_failed = [e for e in failed_runs if _covers(RUN_FAILED, e)]
    assert len(distill_failed) == 1 and distill_failed[0].resource["prefect.resource.name"] == "alert"
    assert not any(_covers(RUN_FAILED, e) for e in failed_runs if e not in distill_failed)  # label-unlabeled's own
    shards = [e for e in failed_tasks if _covers(SHARD_GAVE_UP, e)]
    assert {e.resource["prefect.resource.name"] for e in shards} == {"infer shard-00000"}
    assert not any(_covers(SHARD_GAVE_UP, e) for e in failed_tasks if e not in shards)  # "train teacher"
