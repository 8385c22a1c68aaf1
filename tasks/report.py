"""Report task: metrics.json, report.md, its figures, and the same table as a Prefect artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from dd_core.data.coco import load_coco
from dd_core.pseudo.pipeline import SelectionSummary
from dd_core.report import ap_bar_chart, metrics_table, pseudo_label_grid, render_report
from dd_core.storage import join, write_bytes_atomic, write_json_atomic
from dd_core.storage.layout import RunLayout
from tasks import TASK_DEFAULTS


@task(name="write report", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def write_report(layout: RunLayout, task: str, metrics: dict[str, dict[str, float]],
                 selections: list[SelectionSummary], pseudo_images: str, counts: dict[str, Any],
                 options: dict[str, Any]) -> str:
    """Write ``metrics.json``, the figures and ``report.md``; returns the report's URL."""
    write_json_atomic(layout.metrics, metrics, options, indent=1)
    write_bytes_atomic(layout.figure("ap.png"), ap_bar_chart(metrics, f"{task} AP"), options)
    figures = {"AP of teacher and student, with and without test-time augmentation": "ap.png"}
    pseudo = load_coco(selections[-1].pseudo_annotations, pseudo_images, options)
    if pseudo.images:
        write_bytes_atomic(layout.figure("pseudo_labels.png"),
                           pseudo_label_grid(pseudo.to_dict(), pseudo_images, options), options)
        figures["Random unlabeled images with their generated annotations (paper, Figure 3)"] = "pseudo_labels.png"
    names = {c["id"]: c["name"] for c in pseudo.categories}
    report = render_report(layout.run_id, task, metrics, [s.to_dict() for s in selections], names, figures, counts)
    write_bytes_atomic(layout.report, report.encode(), options)
    links = "\n".join(f"- {caption}: `{join(layout.run_dir, path)}`" for caption, path in figures.items())
    create_markdown_artifact(f"## Data distillation `{layout.run_id}`\n\n{metrics_table(metrics)}\n\n"
                             f"Report: `{layout.report}`\n\nFigures:\n{links}", key="distillation-metrics",
                             description="Teacher vs student, COCO AP")
    return layout.report
