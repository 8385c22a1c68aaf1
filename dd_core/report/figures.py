"""Figures: the paper's Figure 3 (generated annotations drawn on unlabeled images) and an AP bar chart."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dd_core.data.images import read_image
from dd_core.storage import join

MODEL_ORDER = ("teacher", "teacher_tta", "student", "student_tta", "upper_bound")


def _png(fig: Figure) -> bytes:
    """PNG bytes of a figure. Figures are made with ``Figure`` itself, not pyplot: no backend is
    chosen for the whole process, nothing needs a display, and nothing is kept after rendering."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def ap_bar_chart(metrics: Mapping[str, Mapping[str, float]], title: str = "AP") -> bytes:
    """PNG bytes: AP, AP50 and AP75 of each evaluated model side by side."""
    models = [m for m in MODEL_ORDER if m in metrics] + [m for m in metrics if m not in MODEL_ORDER]
    stats = ("AP", "AP50", "AP75")
    fig = Figure(figsize=(1.6 + 1.4 * len(models), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(stats)
    for j, stat in enumerate(stats):
        values = [metrics[m].get(stat, 0.0) for m in models]
        bars = ax.bar(np.arange(len(models)) + (j - 1) * width, values, width, label=stat)
        if stat == "AP":
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(models)), [m.replace("_", "+") for m in models])
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncols=3, loc="upper left")
    return _png(fig)


# Left side red, right side blue, centre green: flips that went wrong are easy to spot.
def _side_color(name: str) -> str:
    return "tab:red" if name.startswith("left") else "tab:blue" if name.startswith("right") else "tab:green"


def _draw_instance(ax: Axes, ann: Mapping[str, Any], keypoint_names: Sequence[str],
                   skeleton: Sequence[Sequence[int]], name: str) -> None:
    x, y, w, h = ann["bbox"]
    ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=0.8, color="yellow"))
    ax.text(x, y, f"{name} {ann.get('score', 1.0):.2f}", fontsize=5, color="yellow", va="bottom")
    kps = ann.get("keypoints")
    if not kps:
        return
    xyv = np.asarray(kps, dtype=float).reshape(-1, 3)
    for a, b in skeleton:
        if xyv[a - 1, 2] > 0 and xyv[b - 1, 2] > 0:
            ax.plot(xyv[[a - 1, b - 1], 0], xyv[[a - 1, b - 1], 1], lw=0.8, color=_side_color(keypoint_names[b - 1]))
    for k, (px, py, v) in enumerate(xyv):
        if v > 0:
            ax.plot(px, py, "o", ms=1.5, color=_side_color(keypoint_names[k]))


def pseudo_label_grid(coco: Mapping[str, Any], images_root: str, options: Mapping[str, Any] | None = None,
                      num_images: int = 16, columns: int = 4, seed: int = 0) -> bytes:
    """PNG bytes: a grid of random unlabeled images with their pseudo-labels (paper, Figure 3)."""
    rng = np.random.default_rng(seed)
    images = list(coco["images"])
    chosen = [images[i] for i in sorted(rng.choice(len(images), min(num_images, len(images)), replace=False))]
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    cats = {c["id"]: c for c in coco["categories"]}
    rows = max(1, -(-len(chosen) // columns))
    fig = Figure(figsize=(2.2 * columns, 2.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, info in zip(axes.ravel(), chosen):
        ax.imshow(read_image(join(images_root, info["file_name"]), options).permute(1, 2, 0).numpy())
        for ann in by_image.get(info["id"], []):
            cat = cats[ann["category_id"]]
            _draw_instance(ax, ann, cat.get("keypoints") or [], cat.get("skeleton") or [], cat["name"])
    has_keypoints = any(c.get("keypoints") for c in coco["categories"])
    legend = " (left: red, right: blue)" if has_keypoints else ""  # the limb colours of _draw_instance
    fig.suptitle(f"pseudo-labels on unlabeled images{legend}", fontsize=8)
    return _png(fig)
