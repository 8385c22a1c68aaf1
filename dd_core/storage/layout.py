"""Where a run keeps its outputs: ``<storage.root>/runs/<run_id>/...``.

These names are a contract (README.md lists them; docs/ARCHITECTURE.md, "Contracts kept for
compatibility"): a run written by an earlier version resumes only if they stay as they are."""

from __future__ import annotations

import datetime as _dt
import secrets
from dataclasses import dataclass

from dd_core.storage.fs import join


def new_run_id() -> str:
    """A sortable, unique default run id, e.g. ``20261125-153300-a1b2``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass(frozen=True)
class RunLayout:
    """URLs of one run's outputs. Round 1 sits at the run root; later rounds under ``rounds/<n>/``."""

    root: str
    run_id: str
    round: int = 1

    @property
    def run_dir(self) -> str:
        return join(self.root, "runs", self.run_id)

    @property
    def round_dir(self) -> str:
        return self.run_dir if self.round == 1 else join(self.run_dir, "rounds", str(self.round))

    def for_round(self, n: int) -> "RunLayout":
        return RunLayout(self.root, self.run_id, n)

    @property
    def teacher(self) -> str:
        return join(self.round_dir, "teacher")

    @property
    def inference(self) -> str:
        return join(self.round_dir, "inference")

    # Names starting with "_" are skipped by pyarrow.dataset, so the inference folder reads as one
    # Parquet dataset of shards.
    @property
    def manifest(self) -> str:
        return join(self.inference, "_manifest.json")

    @property
    def plan(self) -> str:
        return join(self.inference, "_plan.json")

    @property
    def rejected(self) -> str:
        return join(self.inference, "_rejected.parquet")

    @property
    def thresholds(self) -> str:
        return join(self.round_dir, "thresholds.json")

    @property
    def pseudo_annotations(self) -> str:
        return join(self.round_dir, "pseudo", "annotations.json")

    @property
    def student(self) -> str:
        return join(self.round_dir, "student")

    @property
    def upper_bound(self) -> str:
        return join(self.run_dir, "upper_bound")

    @property
    def settings(self) -> str:
        """The settings the run was started with (:mod:`dd_core.config.resume`)."""
        return join(self.run_dir, "_settings.json")

    @property
    def lock(self) -> str:
        return join(self.run_dir, "_lock.json")

    @property
    def metrics(self) -> str:
        return join(self.run_dir, "metrics.json")

    @property
    def report(self) -> str:
        return join(self.run_dir, "report.md")

    def figure(self, name: str) -> str:
        return join(self.run_dir, name)
