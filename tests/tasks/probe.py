"""A step hook for the training-task tests: what the Prefect API shows of the run while it trains."""

from __future__ import annotations

READINGS: list[tuple[int, float]] = []


def read_progress_artifact(iteration, model, targets) -> None:
    """At step 8, the teacher's progress artifact as the UI would read it (through the API)."""
    if iteration != 8:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["teacher-training"])))
    READINGS.extend((iteration, float(a.data)) for a in artifacts)
