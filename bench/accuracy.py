"""Accuracy experiments on the synthetic benchmark (results go to BENCHMARKS.md).

    python bench/accuracy.py teacher-tta --out bench-runs/teacher-tta [--iterations 1000] [--seed 0]

``teacher-tta``: train a slim keypoint teacher on 150 labeled synthetic people images, evaluate
it on 100 validation images without and with multi-transform inference (the paper's Table 3
setting, applied to the teacher). Resumable: data is deterministic and reused, training resumes
from its checkpoints, and results are appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dd_core.data.coco import load_coco
from dd_core.data.synthetic import make_keypoints_dataset
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.train import TrainConfig
from dd_core.train.detector import spec_for, train_detector


def _data(folder: Path, n: int, seed: int, start_id: int, style: str = "coco"):
    if not (folder / "annotations.json").exists():
        make_keypoints_dataset(folder, n, seed=seed, style=style, start_id=start_id)
    return load_coco(str(folder / "annotations.json"), str(folder / "images"))


def teacher_tta(out: Path, iterations: int, seed: int, scales: list[int], labeled: int, val: int) -> dict:
    lab = _data(out / "data" / "labeled", labeled, seed=1, start_id=1)
    val_set = _data(out / "data" / "val", val, seed=3, start_id=200_001)
    cfg = TrainConfig(iterations=iterations, batch_size=8, lr=0.02, warmup_iters=100, checkpoint_every=200, seed=seed)
    t0 = time.perf_counter()
    result = train_detector(spec_for("keypoints", lab), lab, cfg, str(out / f"teacher-{iterations}-s{seed}"))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = evaluate_checkpoint(result.checkpoint, val_set)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tta = evaluate_checkpoint(result.checkpoint, val_set, tta={"scales": scales, "flip": True})
    tta_s = time.perf_counter() - t0
    return {"experiment": "teacher-tta", "iterations": iterations, "seed": seed, "labeled": labeled, "val": val,
            "transforms": f"scales {scales} x flip", "teacher": plain, "teacher_tta": tta,
            "train_seconds_this_call": round(train_s, 1), "eval_seconds": round(plain_s, 1),
            "eval_tta_seconds": round(tta_s, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["teacher-tta"])
    p.add_argument("--out", type=Path, default=Path("bench-runs/teacher-tta"))
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scales", type=int, nargs="+", default=[96, 128, 160])
    p.add_argument("--labeled", type=int, default=150)
    p.add_argument("--val", type=int, default=100)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    row = teacher_tta(args.out, args.iterations, args.seed, args.scales, args.labeled, args.val)
    row.update(machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
