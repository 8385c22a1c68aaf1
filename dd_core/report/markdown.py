"""``report.md``: what a run did and how well, readable on its own and as a Prefect artifact."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dd_core.report.figures import MODEL_ORDER

LABELS = {"teacher": "teacher", "teacher_tta": "teacher + TTA", "student": "student (data distillation)",
          "student_tta": "student + TTA", "upper_bound": "upper bound (all labels)"}


KEYPOINT_AREAS = ("APm and APl of keypoints size each detection by its box, as detectron2 does; Detectron (the "
                  "paper's code) sizes it by the extent of its keypoints. AP over all sizes is the same either way.")


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


def training_images_table(trained_on: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """Per training and set: images, left out of training, trained on."""
    lines = ["| training | set | images | left out | trained on |", "|---|---|---:|---:|---:|"]
    for role, sets in trained_on.items():
        for name, c in sets.items():
            lines.append(f"| {role} | {name} | {c['images']} | {c['left_out']} | {c['trained_on']} |")
    return "\n".join(lines)


def render_report(run_id: str, task: str, metrics: Mapping[str, Mapping[str, float]],
                  selections: Sequence[Mapping[str, Any]], category_names: Mapping[int, str],
                  figures: Mapping[str, str], counts: Mapping[str, Any]) -> str:
    """The whole report as markdown; ``figures`` maps a caption to a path relative to the report."""
    out = [f"# Data distillation run `{run_id}`", "",
           f"Task: **{task}**. Labeled images: {counts.get('labeled', '?')}; unlabeled images: "
           f"{counts.get('unlabeled', '?')} ({counts.get('rejected', 0)} rejected); shards: {counts.get('shards', '?')}.",
           "", "## Metrics (COCO AP on the validation set)", "", metrics_table(metrics), ""]
    if task == "keypoints":
        out += [KEYPOINT_AREAS, ""]
    for r, sel in enumerate(selections, start=1):
        title = "## Pseudo-label selection" + (f" (round {r})" if len(selections) > 1 else "")
        out += [title, "", f"Unlabeled images labeled: {sel['num_images']}.", "", selection_table(sel, category_names), ""]
        for cat, threshold in (sel.get("keypoint_thresholds") or {}).items():
            kept, target = sel["kept_keypoints_per_instance"].get(cat), sel["target_keypoints_per_instance"].get(cat)
            line = f"{category_names.get(int(cat), cat)}: keypoint score threshold {threshold:.3f}"
            if kept is not None:
                line += f", {kept:.2f} keypoints per pseudo-labeled instance"
            if target is not None:
                line += f" (labeled set: {target:.2f})"
            out += [line + ".", ""]
    if counts.get("trained_on"):
        out += ["## Images trained on", "", training_images_table(counts["trained_on"]), "",
                "Images with nothing to learn from (no instance; for keypoints, no visible keypoint) are left "
                "out of training, labeled and pseudo-labeled alike (`training_images` in the config).", ""]
    if figures:
        out += ["## Figures", ""]
        for caption, path in figures.items():
            out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(out)
