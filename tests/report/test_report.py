import io

import numpy as np
from PIL import Image

from dd_core.report import ap_bar_chart, metrics_table, pseudo_label_grid, render_report
from tests.conftest import write_tiny_coco

METRICS = {"student": {"AP": 0.5, "AP50": 0.8, "AP75": 0.4}, "teacher": {"AP": 0.4, "AP50": 0.7, "AP75": 0.3}}


def test_metrics_table_orders_models_as_the_paper():
    table = metrics_table(METRICS).splitlines()
    assert table[0] == "| model | AP | AP50 | AP75 |"
    assert table[2].startswith("| teacher | 0.400") and table[3].startswith("| student (data distillation) | 0.500")


def test_ap_bar_chart_is_a_png():
    image = Image.open(io.BytesIO(ap_bar_chart(METRICS)))
    assert image.format == "PNG" and image.width > 100


def test_pseudo_label_grid_draws_images_with_keypoints(tmp_path):
    coco = write_tiny_coco(tmp_path / "pile", num_images=5)
    png = pseudo_label_grid(coco, str(tmp_path / "pile" / "images"), num_images=4, columns=2)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    # Left keypoints are drawn red and right ones blue somewhere on the figure.
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    r, g, b = pixels.T
    assert ((r > 180) & (g < 80) & (b < 80)).any()
    assert ((b > 150) & (r < 60)).any()


def test_render_report_has_metrics_selection_and_figures():
    selection = {"num_images": 10, "thresholds": {"1": 0.7}, "target_per_image": {"1": 1.5},
                 "predicted_per_category": {"1": 40}, "kept_per_category": {"1": 15}, "keypoint_thresholds": {"1": 0.2},
                 "kept_keypoints_per_instance": {"1": 11.9}, "target_keypoints_per_instance": {"1": 12.0}}
    text = render_report("r1", "keypoints", METRICS, [selection], {1: "person"}, {"AP chart": "ap.png"},
                         {"labeled": 5, "unlabeled": 10, "rejected": 1, "shards": 2})
    assert "# Data distillation run `r1`" in text and "unlabeled images: 10 (1 rejected)" in text
    assert "| person | 0.700 | 1.50 | 40 | 15 | 1.50 |" in text
    assert "person: keypoint score threshold 0.200, 11.90 keypoints per pseudo-labeled instance (labeled set: 12.00)." \
        in text
    assert "APm and APl of keypoints size each detection by its box" in text
    assert "![AP chart](ap.png)" in text
