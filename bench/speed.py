"""Speed measurements (results go to BENCHMARKS.md as measured, with the machine and date).

    python bench/speed.py synth        [--images 1000] [--size 128]      # synthetic data generation
    python bench/speed.py train-step   [--steps 20] [--batch 8]          # slim training step, loader stall
    python bench/speed.py tta          [--checkpoint CKPT] [--scales ...] # 18 transforms: ours vs bounds
    python bench/speed.py tta --precision float32 bfloat16 [--channels-last] # the layers' float types, alternated
    python bench/speed.py post         [--checkpoint CKPT] [--images 256] # after inference vs inference
    python bench/speed.py calibrate    [--predictions 10000000]           # per-category thresholds
    python bench/speed.py memory       [--images 1000 10000]              # peak RSS of an inference worker
    python bench/speed.py overhead                                        # Prefect flow vs a plain loop
    python bench/speed.py gpu-train    [--preset r50-fpn]                 # ours vs torchvision reference loop
    python bench/speed.py gpu-train --amp-dtype float16 bfloat16          # ours, by AMP dtype, alternated

Each prints one JSON line per measurement. ``--device cuda`` runs the model parts on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dd_core.data.coco import load_coco  # noqa: E402
from dd_core.data.dataset import CocoDataset, collate  # noqa: E402
from dd_core.data.synthetic import make_keypoints_dataset  # noqa: E402
from dd_core.models import ModelSpec, build_model  # noqa: E402
from dd_core.train.detector import spec_for, training_transforms  # noqa: E402

# The paper's 9 scales (400..1200 around a test scale of 800), relative to the slim preset's 128.
SLIM_SCALES = [64, 80, 96, 112, 128, 144, 160, 176, 192]
PAPER_SCALES = [400, 500, 600, 700, 800, 900, 1000, 1100, 1200]


def _keypoint_images(folder: Path, n: int, size: int, seed: int = 0):
    if not (folder / "annotations.json").exists():
        make_keypoints_dataset(folder, n, seed=seed, size=size)
    return load_coco(str(folder / "annotations.json"), str(folder / "images"))


def synth(images: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_keypoints_dataset(Path(tmp) / "kp", images, seed=0, size=size)
        seconds = time.perf_counter() - t0
    return {"benchmark": "synth keypoints", "images": images, "size": size, "seconds": round(seconds, 2)}


def train_step(steps: int, batch: int, workers: int) -> dict:
    """The slim model's training step, and the share of it spent waiting for the data loader."""
    with tempfile.TemporaryDirectory() as tmp:
        coco = _keypoint_images(Path(tmp) / "kp", 160, 128)
        torch.manual_seed(0)
        model = build_model(spec_for("keypoints", coco)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = DataLoader(CocoDataset(coco, training_transforms(coco)), batch_size=batch, shuffle=True,
                            collate_fn=collate, num_workers=workers, drop_last=True)
        waits, computes = [], []
        it = iter(loader)
        for _ in range(steps + 3):
            t0 = time.perf_counter()
            try:
                images, targets = next(it)
            except StopIteration:
                it = iter(loader)
                images, targets = next(it)
            t1 = time.perf_counter()
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            waits.append(t1 - t0)
            computes.append(time.perf_counter() - t1)
    waits, computes = waits[3:], computes[3:]  # warm-up steps excluded
    step = (sum(waits) + sum(computes)) / steps
    return {"benchmark": "slim keypoint train step", "batch": batch, "steps": steps, "workers": workers,
            "seconds_per_step": round(step, 3),
            "loader_stall_share": round(sum(waits) / (sum(waits) + sum(computes)), 4)}


def _model_for_speed(checkpoint: str | None, preset: str, detections: int, device: torch.device):
    """A trained checkpoint as is, or a random-weight model made to keep ``detections`` boxes per image."""
    if checkpoint:
        from dd_core.models.loading import load_detector

        model = load_detector(checkpoint).model
    else:
        torch.manual_seed(0)
        model = build_model(ModelSpec(task="keypoints", preset=preset))
        # Random weights score boxes at random: keep a fixed number so the keypoint head's work is known.
        model.roi_heads.score_thresh = 0.0
        model.roi_heads.detections_per_img = detections
    return model.to(device).eval()


def _images(folder: Path, n: int, size: int, device: torch.device) -> list[torch.Tensor]:
    from dd_core.data.images import read_image

    coco = _keypoint_images(folder, n, size)
    return [read_image(str(Path(coco.images_root) / im["file_name"])).to(device).float().div_(255.0)
            for im in coco.images[:n]]


def tta(checkpoint: str | None, preset: str, scales: list[int], images: int, batch: int, size: int, repeats: int,
        detections: int, device: torch.device) -> dict:
    """18-transform keypoint inference: ours against the backbone-only lower bound and the naive way."""
    from bench.tta_speed import compare

    model = _model_for_speed(checkpoint, preset, detections, device)
    with tempfile.TemporaryDirectory() as tmp:
        pics = _images(Path(tmp) / "kp", images, size, device)
    rows = [compare(model, pics[i:i + batch], scales, repeats, device) for i in range(0, len(pics), batch)]
    total = {k: sum(r[k] for r in rows) for k in ("backbone_only_s", "ours_s", "naive_s")}
    return {"benchmark": "multi-transform keypoint inference", "preset": preset,
            "checkpoint": checkpoint or f"random weights, {detections} boxes per image", "scales": scales,
            "transforms": rows[0]["transforms"], "images": len(pics), "batch": batch, "image_size": size,
            "boxes_per_image": round(sum(r["boxes"] for r in rows) / len(pics), 2),
            **{k: round(v, 3) for k, v in total.items()},
            "images_per_s_ours": round(len(pics) / total["ours_s"], 2),
            "ours_over_backbone_only": round(total["ours_s"] / total["backbone_only_s"], 3),
            "naive_over_ours": round(total["naive_s"] / total["ours_s"], 3)}


def tta_precisions(checkpoint: str | None, preset: str, scales: list[int], images: int, batch: int, size: int,
                   repeats: int, detections: int, device: torch.device, precisions: list[str],
                   channels_last: bool) -> dict:
    """18-transform keypoint inference with the model's layers in each of ``precisions``, alternated
    (float32, bfloat16, float32, ...: ``repeats`` rounds after one warm-up round), and how far each
    one's predictions are from float32's (:func:`dd_core.tta.precision.agreement`)."""
    from bench.tta_speed import sync
    from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES
    from dd_core.tta import LayerSettings, transform_set
    from dd_core.tta.model import MultiTransformModel
    from dd_core.tta.precision import agreement

    model = _model_for_speed(checkpoint, preset, detections, device)
    with tempfile.TemporaryDirectory() as tmp:
        pics = _images(Path(tmp) / "kp", images, size, device)
    batches = [pics[i:i + batch] for i in range(0, len(pics), batch)]
    transforms, flips = transform_set(scales, flip=True), list(COCO_PERSON_FLIP_INDICES)
    teachers = {p: MultiTransformModel(model, transforms, flip_indices=flips,
                                       layers=LayerSettings(p, channels_last and p != "float32")) for p in precisions}

    def label(p: str) -> list[dict]:
        return [o for b in batches for o in teachers[p](b)]

    times: dict[str, list[float]] = {p: [] for p in precisions}
    outputs = {p: label(p) for p in precisions}  # the warm-up round
    for _ in range(repeats):
        for p in precisions:
            sync(device)
            t0 = time.perf_counter()
            label(p)
            sync(device)
            times[p].append(time.perf_counter() - t0)
    seconds = {p: statistics.median(t) for p, t in times.items()}
    host = {p: [{k: v.cpu() for k, v in o.items() if torch.is_tensor(v)} for o in out] for p, out in outputs.items()}
    base = precisions[0]
    return {"benchmark": "multi-transform keypoint inference by precision", "preset": preset,
            "checkpoint": checkpoint or f"random weights, {detections} boxes per image", "scales": scales,
            "transforms": len(transforms), "images": len(pics), "batch": batch, "image_size": size,
            "channels_last": channels_last, "rounds": repeats, "order": precisions,
            "seconds": {p: round(v, 3) for p, v in seconds.items()},
            "images_per_s": {p: round(len(pics) / v, 2) for p, v in seconds.items()},
            f"speedup_over_{base}": {p: round(seconds[base] / v, 3) for p, v in seconds.items()},
            # Random weights score boxes at random (scores near each other): agreement means most for a checkpoint.
            "agreement_with_float32": ({p: {k: round(v, 4) for k, v in agreement(host["float32"], host[p]).items()}
                                        for p in precisions if p != "float32"} if "float32" in host else None)}


def post_inference(checkpoint: str, scales: list[int], images: int, batch: int, device: torch.device) -> dict:
    """Time inference (the model calls) against everything after it, on one labeled shard.

    After inference: the outputs to the host and into Arrow columns, writing the Parquet shard, reading it back,
    calibrating thresholds on the labeled set, selecting and writing the pseudo-label json.
    """
    from bench.tta_speed import sync
    from dd_core.data.unlabeled import list_unlabeled, plan_shards
    from dd_core.ops.clock import StageClock
    from dd_core.ops.labeling import LabelingOps
    from dd_core.pseudo.infer import ShardRun, pseudo_label_shard
    from dd_core.pseudo.select import read_predictions, select_pseudo_labels
    from dd_core.pseudo.teacher import teacher_from_checkpoint
    from dd_core.storage import write_json_atomic
    from dd_core.tta.settings import MultiTransformSettings

    tta = MultiTransformSettings(scales=scales, flip=True)
    with tempfile.TemporaryDirectory() as tmp:
        labeled = _keypoint_images(Path(tmp) / "labeled", 100, 128, seed=1)
        make_keypoints_dataset(Path(tmp) / "unlabeled", images, seed=2)
        unlabeled = list_unlabeled(f"{tmp}/unlabeled/images")
        load_s = 0.0

        def load_teacher():
            nonlocal load_s
            t0 = time.perf_counter()
            teacher = teacher_from_checkpoint(checkpoint, tta)
            teacher.model.to(device)  # on a GPU this starts CUDA: loading, not output
            sync(device)
            load_s = time.perf_counter() - t0
            return teacher

        # Reading (image decoding and the copy to the device) is input, not output: the shard loop's
        # clock times it where it happens, and it is left out of both sides.
        clock = StageClock(sync=lambda: sync(device))
        shard = plan_shards(unlabeled.images, len(unlabeled.images))[0]
        t0 = time.perf_counter()
        summary = pseudo_label_shard(shard, unlabeled.root, f"{tmp}/shards", "bench",
                                     ShardRun(load_teacher, device=str(device), batch_size=batch),
                                     ops=LabelingOps(clock=clock))
        shard_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictions = read_predictions([summary.url])
        coco, _ = select_pseudo_labels(predictions, labeled.to_dict(), "keypoints")
        write_json_atomic(f"{tmp}/pseudo.json", coco)
        select_s = time.perf_counter() - t0
    timings = {"inference": clock.seconds["infer"], "decode": clock.seconds["read"], "load": load_s}
    rows_s = shard_s - timings["inference"] - timings["decode"] - timings["load"]
    after = rows_s + select_s
    return {"benchmark": "after inference vs inference", "transforms": 2 * len(scales), "images": images,
            "inference_s": round(timings["inference"], 3), "decode_and_to_device_s": round(timings["decode"], 3),
            "model_load_s": round(timings["load"], 3),
            "rows_and_parquet_s": round(rows_s, 3), "read_calibrate_select_json_s": round(select_s, 3),
            "after_share_of_inference": round(after / timings["inference"], 4),
            "predictions": summary.num_rows, "pseudo_labels": len(coco["annotations"])}


def calibrate(predictions: int, categories: int, repeats: int = 3) -> dict:
    """Per-category thresholds for ``predictions`` random scores over ``categories`` categories."""
    from dd_core.calibrate import per_category_thresholds

    rng = np.random.default_rng(0)
    scores = rng.random(predictions, dtype=np.float32)
    cats = rng.integers(1, categories + 1, predictions)
    targets = {c: 0.5 + 0.1 * (c % 7) for c in range(1, categories + 1)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        per_category_thresholds(scores, cats, predictions // 10, targets)
        times.append(time.perf_counter() - t0)
    return {"benchmark": "calibrate thresholds", "predictions": predictions, "categories": categories,
            "seconds_median": round(statistics.median(times), 3), "seconds_max": round(max(times), 3)}


def _worker_peak(root: Path, images: int, shard_size: int, checkpoint: str, scales: list[int], device: str) -> dict:
    """Run one inference worker (a child process) over ``images`` images; its peak RSS."""
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
import torch
from dd_core.data.unlabeled import list_unlabeled, write_plan
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.ops.caches import TeacherCache
from dd_core.ops.labeling import LabelingOps
from dd_core.pseudo.infer import ShardJob, pseudo_label_planned_shard
from dd_core.tta.settings import MultiTransformSettings
tta = MultiTransformSettings(scales={tuple(scales)!r}, flip=True)
images = list_unlabeled({str(root / f"list-{images}.txt")!r}, {str(root / "pool")!r})
plan = {str(root / f"plan-{images}.json")!r}
n = write_plan(images, {shard_size}, plan).num_shards
job = ShardJob({checkpoint!r}, plan, {str(root / f"out-{images}")!r}, tta, checkpoint_fingerprint({checkpoint!r}, tta),
               {device!r}, 8)
ops = LabelingOps(teachers=TeacherCache())
t0 = time.perf_counter()
for i in range(n):
    pseudo_label_planned_shard(job, i, device={device!r}, ops=ops)
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print(json.dumps({{"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "peak_gpu_mib": gpu / 2**20, "seconds": time.perf_counter() - t0, "shards": n}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(counts: list[int], pool: int, shard_size: int, checkpoint: str, scales: list[int], device: str,
           root: Path) -> dict:
    """Peak memory of a worker labeling ``counts`` images (a pool of distinct files, listed repeatedly)."""
    root = root.resolve()  # links point to absolute paths
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "pool-data").exists():
        make_keypoints_dataset(root / "pool-data", pool, seed=5)
    (root / "pool").mkdir(exist_ok=True)
    files = sorted(p.name for p in (root / "pool-data" / "images").iterdir())
    for n in counts:
        names = []
        for i in range(n):  # distinct names (ids), the pool's pixels: each a link to a pool file
            name = f"{i:06d}.png"
            link = root / "pool" / name
            if not link.is_symlink():
                link.symlink_to(root / "pool-data" / "images" / files[i % len(files)])
            names.append(name)
        (root / f"list-{n}.txt").write_text("\n".join(names) + "\n")
    rows = {n: _worker_peak(root, n, shard_size, checkpoint, scales, device) for n in counts}
    lo, hi = rows[min(counts)], rows[max(counts)]
    return {"benchmark": "inference worker peak memory", "transforms": 2 * len(scales), "shard_size": shard_size,
            "device": device, **{f"images_{n}": {k: round(v, 1) for k, v in r.items()} for n, r in rows.items()},
            "rss_growth": round(hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=["synth", "train-step", "tta", "post", "calibrate", "memory", "overhead",
                                         "gpu-train"])
    p.add_argument("--images", type=int, nargs="+", default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="a trained keypoint checkpoint (default: random weights)")
    p.add_argument("--preset", default="slim")
    p.add_argument("--scales", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--detections", type=int, default=10, help="boxes per image kept by a random-weight model")
    p.add_argument("--predictions", type=int, default=10_000_000)
    p.add_argument("--categories", type=int, default=80)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("bench-runs/speed"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="tta: the model's layers in each of these, alternated (default: float32 alone, the "
                        "row against the lower bounds)")
    p.add_argument("--amp-dtype", nargs="+", default=None, choices=["float16", "bfloat16"],
                   help="gpu-train: our loop with AMP in each of these, alternated (instead of the reference)")
    p.add_argument("--channels-last", action="store_true", help="tta with --precision: channels-last input "
                   "for the non-float32 runs (CUDA only; ignored on the CPU)")
    p.add_argument("--quick", action="store_true", help="overhead: the quick demo's data (a smoke run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    scales = args.scales or (SLIM_SCALES if args.preset == "slim" else PAPER_SCALES)
    if args.benchmark == "synth":
        row = synth((args.images or [1000])[0], args.size)
    elif args.benchmark == "train-step":
        row = train_step(args.steps, args.batch or 8, args.workers)
    elif args.benchmark == "tta" and args.precision != ["float32"]:
        row = tta_precisions(args.checkpoint, args.preset, scales, (args.images or [16])[0], args.batch or 4,
                             args.size, args.repeats, args.detections, device, args.precision, args.channels_last)
    elif args.benchmark == "tta":
        row = tta(args.checkpoint, args.preset, scales, (args.images or [16])[0], args.batch or 4, args.size,
                  args.repeats, args.detections, device)
    elif args.benchmark == "post":
        if not args.checkpoint:
            p.error("post needs --checkpoint (a trained teacher, so predictions are realistic)")
        row = post_inference(args.checkpoint, scales, (args.images or [256])[0], args.batch or 8, device)
    elif args.benchmark == "calibrate":
        row = calibrate(args.predictions, args.categories)
    elif args.benchmark == "memory":
        if not args.checkpoint:
            p.error("memory needs --checkpoint")
        row = memory(args.images or [1000, 10000], 500, args.shard_size, args.checkpoint, scales, args.device,
                     args.out / "memory")
    elif args.benchmark == "overhead":
        from bench.overhead import overhead

        row = overhead(args.out / "overhead", quick=args.quick)
    elif args.amp_dtype:
        from bench.train_speed import compare_amp_dtypes

        row = compare_amp_dtypes(args.preset, args.size, args.batch or 2, args.steps, device, args.amp_dtype)
    else:
        from bench.train_speed import compare_training

        row = compare_training(args.preset, args.size, args.batch or 2, args.steps, device)
    row.update(machine=f"{platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads"
               + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
               date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
