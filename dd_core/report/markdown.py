"""``report.md``: what a run did and how well, readable on its own and as a Prefect artifact."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dd_core.report.figures import MODEL_ORDER

LABELS = {"teacher": "teacher", "teacher_tta": "teacher + TTA", "student": "student (data distillation)",
          "student_tta": "student + TTA", "upper_bound": "upper bound (all labels)"}


def metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, one row per model, one column per COCO stat."""
    models = [m for m in MODEL_ORDER if m in metrics] + [m for m in metrics if m not in MODEL_ORDER]
    if not models:
        return "(no models evaluated)"
    stats = list(next(iter(metrics.values())))
    lines = ["| model | " + " | ".join(stats) + " |", "|---|" + "---:|" * len(stats)]
    for m in models:
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(f"{metrics[m].get(s, 0.0):.3f}" for s in stats) + " |")
    return "\n".join(lines)


def selection_table(selection: Mapping[str, Any], category_names: Mapping[int, str]) -> str:
    """Per category: the chosen score threshold, the labeled target and what was kept."""
    lines = ["| category | threshold | labeled / image | predicted | kept | kept / image |", "|---|---:|---:|---:|---:|---:|"]
    n = max(selection["num_images"], 1)
    for cat, thr in selection["thresholds"].items():
        kept = selection["kept_per_category"][cat]
        lines.append(f"| {category_names.get(int(cat), cat)} | {thr:.3f} | {selection['target_per_image'][cat]:.2f} | "
                     f"{selection['predicted_per_category'][cat]} | {kept} | {kept / n:.2f} |")
    return "\n".join(lines)


def render_report(run_id: str, task: str, metrics: Mapping[str, Mapping[str, float]],
                  selections: Sequence[Mapping[str, Any]], category_names: Mapping[int, str],
                  figures: Mapping[str, str], counts: Mapping[str, Any]) -> str:
    """The whole report as markdown; ``figures`` maps a caption to a path relative to the report."""
    out = [f"# Data distillation run `{run_id}`", "",
           f"Task: **{task}**. Labeled images: {counts.get('labeled', '?')}; unlabeled images: "
           f"{counts.get('unlabeled', '?')} ({counts.get('rejected', 0)} rejected); shards: {counts.get('shards', '?')}.",
           "", "## Metrics (COCO AP on the validation set)", "", metrics_table(metrics), ""]
    for r, sel in enumerate(selections, start=1):
        title = "## Pseudo-label selection" + (f" (round {r})" if len(selections) > 1 else "")
        out += [title, "", f"Unlabeled images labeled: {sel['num_images']}.", "", selection_table(sel, category_names), ""]
        if sel.get("keypoint_threshold") is not None:
            out += [f"Keypoint score threshold {sel['keypoint_threshold']:.3f}: "
                    f"{sel['kept_keypoints_per_instance']:.2f} keypoints per pseudo-labeled instance "
                    f"(labeled set: {sel['target_keypoints_per_instance']:.2f}).", ""]
    if figures:
        out += ["## Figures", ""]
        for caption, path in figures.items():
            out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(out)
