"""``omnidistill demo``: the whole method on synthetic people, local storage, the CPU, a local Prefect UI."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dd_core.config import parse_config
from dd_core.tta.settings import DEFAULT_SCALES

# (labeled, unlabeled, val) images and (teacher, student) iterations. The full demo fits in about
# 30 minutes on 2 CPU cores; --quick is a smoke run of a few minutes.
FULL = {"labeled": 150, "unlabeled": 600, "val": 100, "teacher": 600, "student": 1200}
QUICK = {"labeled": 16, "unlabeled": 24, "val": 8, "teacher": 20, "student": 30}


def _synth(folder: Path, num_images: int, seed: int, start_id: int, style: str = "coco") -> None:
    from dd_core.data.synthetic import make_keypoints_dataset

    ann = folder / "annotations.json"
    if ann.exists() and len(json.loads(ann.read_text())["images"]) == num_images:
        return  # deterministic: the same arguments already produced these files
    make_keypoints_dataset(folder, num_images, seed=seed, style=style, start_id=start_id)


def demo_config(out: Path, quick: bool) -> dict[str, Any]:
    """Write the demo's data sets and return its run config (also saved as ``<out>/demo.yaml``)."""
    sizes = QUICK if quick else FULL
    data = out / ("data-quick" if quick else "data")  # the unlabeled folder is listed whole: keep them apart
    _synth(data / "labeled", sizes["labeled"], seed=1, start_id=1)
    _synth(data / "unlabeled", sizes["unlabeled"], seed=2, start_id=100_001)
    _synth(data / "val", sizes["val"], seed=3, start_id=200_001)
    config = {
        "task": "keypoints",
        "storage": {"root": str(out)},
        "labeled": {"annotations": str(data / "labeled/annotations.json"), "images": str(data / "labeled/images")},
        "unlabeled": {"images": str(data / "unlabeled/images")},
        "val": {"annotations": str(data / "val/annotations.json"), "images": str(data / "val/images")},
        "model": {"preset": "slim"},
        "teacher": {"iterations": sizes["teacher"], "batch_size": 8, "lr": 0.02,
                    "warmup_iters": min(100, sizes["teacher"] // 5), "checkpoint_every": 200},
        "student": {"iterations": sizes["student"], "batch_size": 8, "lr": 0.02, "labeled_ratio": 0.6,
                    "warmup_iters": min(100, sizes["student"] // 5), "checkpoint_every": 200},
        "tta": {"scales": list(DEFAULT_SCALES), "flip": True},
        "shards": {"size": 8 if quick else 32},
    }
    (out / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def run_demo(out: str | Path = "./demo-runs", quick: bool = False, keep_server: bool = False,
             verbose: bool = False) -> int:
    from flows.run import run_and_report, with_run_id

    out = Path(out).resolve()
    t0 = time.perf_counter()
    config = with_run_id(parse_config(demo_config(out, quick), str(out / "demo.yaml")))
    print(f"demo: data in {out}, run {config.run_id} in {out / 'runs' / config.run_id}", file=sys.stderr)
    code = run_and_report(config, str(out / "demo.yaml"), server_home=out / "prefect", keep_server=keep_server,
                          on_ui=lambda ui: print(f"demo: watch it in the Prefect UI at {ui}", file=sys.stderr),
                          verbose=verbose)
    if code:
        return code
    minutes = (time.perf_counter() - t0) / 60
    print(f"demo finished in {minutes:.1f} min. Re-run it with: omnidistill run {out / 'demo.yaml'}")
    if not keep_server:
        print(f"(the UI was stopped; see the run again with PREFECT_HOME={out / 'prefect'} prefect server start)")
    return 0
