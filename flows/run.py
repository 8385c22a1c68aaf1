"""Starting the distillation flow from a config: run id, task runner, and what to print at the end."""

from __future__ import annotations

from typing import Any

from dd_core.config import RunConfig
from dd_core.storage.layout import new_run_id


def with_run_id(config: RunConfig) -> RunConfig:
    """The config with a generated run id when none was given (same id again = resume)."""
    return config if config.run_id else config.model_copy(update={"run_id": new_run_id()})


def run_distillation(config: RunConfig) -> dict[str, Any]:
    """Run the whole flow in this process; shard tasks run where ``config.shards.runner`` says (flows/runners.py)."""
    from flows.distill import distill

    return distill(with_run_id(config))


def print_summary(result: dict[str, Any], ui: str | None) -> None:
    """The end of a run, for a person: the metrics table, where the report is, where to watch."""
    import sys

    from dd_core.report import metrics_table

    print(metrics_table(result["metrics"]))
    print(f"\nreport: {result['report']}")
    if ui:
        print(f"Prefect UI: {ui} (flow run of run id {result['run_dir'].rstrip('/').rsplit('/', 1)[-1]})")
    sys.stdout.flush()
