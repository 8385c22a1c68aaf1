"""Alerts for runs of hours or days: Prefect automations that notify when something gives up.

Two automations, each a trigger on an event Prefect emits anyway and a notification through a
notification block of yours (Slack, Teams, e-mail, a webhook, ...):

- a distillation flow run failed or crashed (``prefect.flow-run.Failed`` / ``Crashed`` of the
  ``data-distillation`` flow);
- a shard task failed for good, its retries spent (``prefect.task-run.Failed`` of an
  ``infer shard-*`` task run: retried attempts emit ``Retrying``, not ``Failed``).

Create a block once, then the automations (idempotent: they are replaced by name)::

    prefect block create slack-webhook          # or any notification block; name it e.g. omnidistill-alerts
    python -m deployments.alerts --block slack-webhook/omnidistill-alerts
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

FLOW = "data-distillation"

RUN_FAILED = EventTrigger(
    expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
    match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
    posture=Posture.Reactive, threshold=1,
)
SHARD_GAVE_UP = EventTrigger(
    expect={"prefect.task-run.Failed"},
    match={"prefect.resource.name": "infer shard-*"},
    posture=Posture.Reactive, threshold=1,
)


def automations(block_document_id: str) -> list[AutomationCore]:
    """The two automations, notifying through the notification block ``block_document_id``."""
    run = SendNotification(
        block_document_id=block_document_id, subject="omnidistill: run {{ flow_run.name }} {{ flow_run.state.name }}",
        body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
             "{{ flow_run.state.message }}\nRun the same run id again to resume it.")
    shard = SendNotification(
        block_document_id=block_document_id, subject="omnidistill: {{ event.resource.name }} gave up",
        body="Task run {{ event.resource.name }} failed after its retries; the distillation run fails when it "
             "has waited for its other shards. Event: {{ event.event }} at {{ event.occurred }}.")
    return [
        AutomationCore(name="omnidistill: distillation run failed", trigger=RUN_FAILED, actions=[run],
                       description="A data-distillation flow run failed or crashed."),
        AutomationCore(name="omnidistill: shard out of retries", trigger=SHARD_GAVE_UP, actions=[shard],
                       description="An inference shard task failed after all its retries."),
    ]


def install(block: str) -> list[str]:
    """Create (or replace, by name) the automations on the current Prefect API; their names.

    ``block`` is a notification block as ``<block type slug>/<block name>``.
    """
    from prefect.client.orchestration import get_client

    slug, _, name = block.partition("/")
    if not slug or not name:
        raise ValueError(f"--block: expected <block type slug>/<block name>, e.g. slack-webhook/alerts, got {block!r}")
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name=name, block_type_slug=slug)
        wanted = automations(str(document.id))
        names = {a.name for a in wanted}
        for existing in client.read_automations():
            if existing.name in names:
                client.delete_automation(existing.id)
        for automation in wanted:
            client.create_automation(automation)
    return sorted(names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--block", required=True, help="notification block as <type slug>/<name>, "
                        "e.g. slack-webhook/omnidistill-alerts (create it first: prefect block create slack-webhook)")
    args = parser.parse_args(argv)
    for name in install(args.block):
        print(f"automation ready: {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
