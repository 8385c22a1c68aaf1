"""Progress artifacts paced: one API call per update, so 2,000 shards must not make 2,000 of them."""

from tasks import progress as progress_module
from tasks.progress import ProgressArtifact


def test_a_paced_progress_artifact_updates_at_most_every_few_seconds_and_always_at_100(monkeypatch):
    calls = []
    monkeypatch.setattr(progress_module, "create_progress_artifact",
                        lambda percent, key, description: calls.append(("create", percent)) or "artifact-id")
    monkeypatch.setattr(progress_module, "update_progress_artifact",
                        lambda artifact, percent: calls.append(("update", percent)))
    now = [0.0]
    artifact = ProgressArtifact("inference-progress", "Unlabeled shards labeled", every=5.0, clock=lambda: now[0])
    artifact.show(0.0)
    for done in range(1, 2001):  # 2,000 shards, one every 10 ms: 20 s in all
        now[0] = done / 100
        artifact.show(100.0 * done / 2000)
    assert calls == [("create", 0.0), ("update", 25.0), ("update", 50.0), ("update", 75.0), ("update", 100.0)]
    now[0] += 1.0
    artifact.show(100.0)  # the last one is never left out
    assert calls[-1] == ("update", 100.0) and len(calls) == 6


def test_an_unpaced_progress_artifact_shows_every_update(monkeypatch):
    calls = []
    monkeypatch.setattr(progress_module, "create_progress_artifact", lambda percent, key, description: "id")
    monkeypatch.setattr(progress_module, "update_progress_artifact", lambda artifact, percent: calls.append(percent))
    artifact = ProgressArtifact("teacher-training", "Iterations of teacher training done", clock=lambda: 0.0)
    for percent in (0.0, 10.0, 20.0):
        artifact.show(percent)
    assert calls == [10.0, 20.0]  # training paces itself (ReportPacing)
