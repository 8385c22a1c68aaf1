"""Accuracy experiments: the paper's tables on the synthetic benchmark (results go to BENCHMARKS.md).

    python bench/accuracy.py run semi [--seeds 0 1] [--out bench-runs/accuracy] [--device cpu]
    python bench/accuracy.py run all  [--seeds 0 1]
    python bench/accuracy.py summarize [--out bench-runs/accuracy]     # tables + accuracy.png
    python bench/accuracy.py teacher-tta [--iterations 1000]          # teacher with and without TTA

Experiments (slim preset, 128-px synthetic images; ``--scale tiny`` is a smoke run):

* ``semi`` (paper Table 1a): labeled = 1/8 of a pool of people images, unlabeled = the other 7/8;
  teacher, data-distillation student, and the fully supervised upper bound on the whole pool.
* ``omni-same`` (Table 1b): labeled = the whole pool, unlabeled = as many new images of the same style.
* ``omni-dissimilar`` (Table 1c): the same, with unlabeled images of another style (``sports``).
* ``schedule`` (Table 2): the ``semi`` student trained 1x and 3x the teacher's iterations (2x is ``semi``).
* ``detection`` (Table 4a): ``semi`` for boxes on multi-class shapes, per-category thresholds (no upper
  bound, as in the paper's table). Its labeled share is the paper's (co-35 of co-115, 35/115) of a pool
  of 2,400: with 1/8 of 1,200 (150 images) the teacher learned its training set (box AP 57) and
  little else (2.5 on validation).
* ``semi-coco`` and ``detection-coco``: ``semi`` and ``detection`` on COCO-like pools, where about half
  of every set's images (labeled, unlabeled, validation) hold no person / shape
  (``--empty-fraction``), each run twice: ``-filtered`` with the default training-image filter
  (dd_core/data/filtering.py) and ``-unfiltered`` with ``training_images.keep_empty`` (every image
  trained on, as before the filter).
* Table 3 (test-time augmentation) is read off every run: each model is also evaluated with TTA.

Each run goes through :func:`bench.pipeline.plain_distill` (the flow's dd_core calls, no Prefect)
and is resumable: data are deterministic and reused, training resumes from its checkpoints and
labeling from its finished shards; a run whose row is in ``results.jsonl`` is not repeated.
Runs that share a teacher (``omni-*``, ``schedule``) reuse it, and its pseudo-labels, by copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dd_core.config import parse_config  # noqa: E402
from dd_core.data.coco import load_coco  # noqa: E402
from dd_core.tta.settings import DEFAULT_SCALES, MultiTransformSettings  # noqa: E402

EXPERIMENTS = ("semi", "omni-same", "omni-dissimilar", "schedule", "detection", "semi-coco", "detection-coco")
COCO_LIKE_EMPTY_FRACTION = 0.5  # about half of COCO's train2017 images hold no person


@dataclass(frozen=True)
class Scale:
    """Data sizes and schedules of one scale of the benchmark."""

    pool: int = 1200         # the labeled pool (semi: 1/8 of it labeled)
    detection_pool: int = 2400  # detection's pool (35/115 of it labeled, as co-35 of co-115)
    extra: int = 1200        # new unlabeled images for omni-*
    val: int = 200
    teacher: int = 1000      # semi teacher iterations; omni teachers train 2x on 8x the data
    warmup: int = 100
    shard: int = 64


SCALES = {"cpu": Scale(),
          "tiny": Scale(pool=48, detection_pool=48, extra=24, val=16, teacher=10, warmup=2, shard=16)}
LABELED_SHARE = {"keypoints": (1, 8), "detection": (35, 115)}  # labeled = numerator/denominator of the pool


# --- data ----------------------------------------------------------------------------------------

def _make(folder: Path, task: str, n: int, seed: int, start_id: int, style: str = "coco",
          empty_fraction: float = 0.0) -> Path:
    from dd_core.data.synthetic import make_detection_dataset, make_keypoints_dataset

    ann = folder / "annotations.json"
    if not ann.exists() or len(json.loads(ann.read_text())["images"]) != n:
        maker = make_keypoints_dataset if task == "keypoints" else make_detection_dataset
        maker(folder, n, seed=seed, style=style, start_id=start_id, empty_fraction=empty_fraction)
    return folder


def _subset(src: Path, dst_json: Path, keep: set[int]) -> Path:
    """A COCO json with only the images ``keep`` of ``src`` (same images folder)."""
    coco = json.loads((src / "annotations.json").read_text())
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    if not dst_json.exists():
        tmp = dst_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(coco))
        tmp.replace(dst_json)
    return dst_json


def _names(src: Path, dst_txt: Path, keep: set[int]) -> Path:
    """The file names of images ``keep`` of ``src`` as an unlabeled list (``.txt``)."""
    coco = json.loads((src / "annotations.json").read_text())
    dst_txt.write_text("".join(f"{im['file_name']}\n" for im in coco["images"] if im["id"] in keep))
    return dst_txt


def _labeled(annotations: Path, images: Path) -> dict[str, str]:
    return {"annotations": str(annotations), "images": str(images)}


def datasets(out: Path, task: str, scale: Scale, empty_fraction: float = 0.0) -> dict[str, Any]:
    """Pool, its labeled split (:data:`LABELED_SHARE`) and unlabeled rest, extra sets, validation set.

    ``empty_fraction`` > 0: COCO-like sets (a folder of their own) with that share of empty images.
    """
    data = out / "data" / (task if not empty_fraction else f"{task}-empty{empty_fraction:g}")
    pool = _make(data / "pool", task, scale.pool if task == "keypoints" else scale.detection_pool, seed=11,
                 start_id=1, empty_fraction=empty_fraction)
    val = _make(data / "val", task, scale.val, seed=13, start_id=500_001, empty_fraction=empty_fraction)
    ids = sorted(im["id"] for im in json.loads((pool / "annotations.json").read_text())["images"])
    num, den = LABELED_SHARE[task]
    labeled_ids = set(ids[: len(ids) * num // den])
    rest = len(ids) - len(labeled_ids)
    sets = {
        "pool": _labeled(pool / "annotations.json", pool / "images"),
        "labeled": _labeled(_subset(pool, data / f"labeled-{len(labeled_ids)}of{len(ids)}.json", labeled_ids),
                            pool / "images"),
        "unlabeled": {"images": str(_names(pool, data / f"unlabeled-{rest}of{len(ids)}.txt", set(ids) - labeled_ids)),
                      "root": str(pool / "images")},
        "val": _labeled(val / "annotations.json", val / "images"),
    }
    if task == "keypoints" and not empty_fraction:
        for style, seed in (("coco", 12), ("sports", 14)):
            extra = _make(data / f"extra-{style}", task, scale.extra, seed=seed, start_id=100_001, style=style)
            sets[f"extra-{style}"] = {"images": str(extra / "images")}
    return sets


# --- runs ----------------------------------------------------------------------------------------

def run_config(out: Path, name: str, seed: int, task: str, labeled: dict, unlabeled: dict, val: dict,
               teacher_its: int, student_factor: float, scale: Scale, device: str,
               upper_bound: dict | None = None) -> dict[str, Any]:
    stage = {"iterations": teacher_its, "batch_size": 8, "lr": 0.02, "warmup_iters": scale.warmup,
             "checkpoint_every": 100, "num_workers": int(os.environ.get("BENCH_LOADER_WORKERS", "0"))}
    return {
        "task": task, "run_id": f"{name}-s{seed}", "seed": seed, "device": device,
        "storage": {"root": str(out / "runs")},
        "labeled": labeled, "unlabeled": unlabeled, "val": val, "upper_bound": upper_bound,
        "model": {"preset": "slim"},
        "teacher": stage,
        "student": {**stage, "schedule_factor": student_factor, "labeled_ratio": 0.6},
        "tta": {"scales": list(DEFAULT_SCALES), "flip": True},
        "shards": {"size": scale.shard, "batch_size": 8},
    }


def _run_dir(out: Path, run_id: str) -> Path:
    return out / "runs" / "runs" / run_id  # storage root <out>/runs, then the run layout's runs/<id>


def _share(out: Path, src_run: str, dst_run: str, parts: tuple[str, ...], teacher_its: int) -> None:
    """Copy a finished run's teacher (and its pseudo-labels) into another run: trained once, used twice.

    Waits for the teacher's last checkpoint when another process is still training it (experiments
    sharing a teacher may run side by side).
    """
    final = _run_dir(out, src_run) / "teacher" / f"model_{teacher_its:07d}.pth"
    while (_run_dir(out, src_run) / "teacher").exists() and not final.exists():
        print(f"waiting for {src_run}'s teacher to finish ({final.name})", flush=True)
        time.sleep(60)
    if "inference" in parts and not (_run_dir(out, src_run) / "pseudo").exists():
        parts = ("teacher",)  # its pseudo-labels are not selected yet: label again rather than copy half
    for part in parts:
        src, dst = _run_dir(out, src_run) / part, _run_dir(out, dst_run) / part
        if src.exists() and not dst.exists():
            shutil.copytree(src, dst)


def plans(out: Path, experiment: str, seed: int, scale: Scale, device: str) -> list[tuple[str, dict, list[str]]]:
    """(run name, config, runs to borrow the teacher from) for one experiment and seed."""
    task = "detection" if experiment.startswith("detection") else "keypoints"
    coco_like = experiment.endswith("-coco")
    sets = datasets(out, task, scale, COCO_LIKE_EMPTY_FRACTION if coco_like else 0.0)
    semi = lambda name, factor: run_config(  # noqa: E731
        out, name, seed, task, sets["labeled"], sets["unlabeled"], sets["val"], scale.teacher, factor, scale, device,
        upper_bound=sets["pool"] if factor == 2 and task == "keypoints" and not coco_like else None)  # 4a: none
    if experiment in ("semi", "detection"):
        return [(experiment, semi(experiment, 2), [])]
    if coco_like:  # the same run with the training-image filter (the default) and without it
        return [(f"{experiment}-filtered", semi(f"{experiment}-filtered", 2), []),
                (f"{experiment}-unfiltered", {**semi(f"{experiment}-unfiltered", 2),
                                              "training_images": {"keep_empty": True}}, [])]
    if experiment == "schedule":  # 2x is the semi run itself; 1x and 3x borrow its teacher and pseudo-labels
        return [(f"schedule-{f}x", semi(f"schedule-{f}x", f), ["semi"]) for f in (1, 3)]
    style = "coco" if experiment == "omni-same" else "sports"
    omni = run_config(out, experiment, seed, task, sets["pool"], sets[f"extra-{style}"], sets["val"],
                      2 * scale.teacher, 2, scale, device)
    return [(experiment, omni, ["omni-same"] if experiment == "omni-dissimilar" else [])]


def _done(results: Path) -> dict[tuple[str, int], dict]:
    if not results.exists():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["run"], r["seed"]): r for r in rows}


def run(out: Path, experiments: list[str], seeds: list[int], scale_name: str, device: str,
        only: Sequence[str] | None = None) -> None:
    from bench.pipeline import plain_distill

    scale = SCALES[scale_name]
    results = out / "results.jsonl"
    for experiment in experiments:
        for seed in seeds:
            for name, config, borrow in plans(out, experiment, seed, scale, device):
                if only and name not in only:
                    continue
                if (name, seed) in _done(results):
                    print(f"{name} seed {seed}: done already", flush=True)
                    continue
                for src in borrow:  # a teacher, its inference and pseudo-labels: trained and labeled once
                    parts = ("teacher",) if experiment == "omni-dissimilar" else ("teacher", "inference", "pseudo")
                    _share(out, f"{src}-s{seed}", config["run_id"], parts, config["teacher"]["iterations"])
                print(f"{name} seed {seed}: running", flush=True)
                t0 = time.perf_counter()
                result = plain_distill(parse_config(config, name))
                row = {"experiment": experiment, "run": name, "seed": seed, "scale": scale_name,
                       "metrics": result["metrics"], "seconds": result["seconds"],
                       "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
                       "selection": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                                     for k, v in result["selection"].items()},
                       "trained_on": result["trained_on"],
                       "teacher_iterations": config["teacher"]["iterations"],
                       "student_iterations": round(config["teacher"]["iterations"]
                                                   * config["student"]["schedule_factor"]),
                       "machine": _machine(device), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("run", "seed", "seconds")}), flush=True)
                print(_row_line(row), flush=True)


def _machine(device: str) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads{gpu}"


# --- summary -------------------------------------------------------------------------------------

def _ap(row: dict, model: str) -> float | None:
    m = row["metrics"].get(model)
    return None if m is None else 100 * m["AP"]


def _row_line(row: dict) -> str:
    parts = [f"{m} {_ap(row, m):.1f}" for m in ("teacher", "teacher_tta", "student", "student_tta", "upper_bound")
             if _ap(row, m) is not None]
    return f"{row['run']} s{row['seed']}: " + ", ".join(parts)


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {(max(values) - min(values)) / 2:.1f}"


def summarize(out: Path) -> str:
    """Markdown tables (mean ± half-range over seeds, AP x 100) and ``accuracy.png``."""
    rows = list(_done(out / "results.jsonl").values())
    if not rows:
        raise SystemExit(f"{out / 'results.jsonl'}: no finished runs yet; run `bench/accuracy.py run ...` first")
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    models = ("teacher", "teacher_tta", "student", "student_tta", "upper_bound")
    lines = ["| run | seeds | teacher | teacher+TTA | student | student+TTA | upper bound | student - teacher "
             "| gap recovered |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rs in by_run.items():
        cells = [_mean_spread([_ap(r, m) for r in rs if _ap(r, m) is not None]) for m in models]
        gains = [_ap(r, "student") - _ap(r, "teacher") for r in rs]
        recovered = [(_ap(r, "student") - _ap(r, "teacher")) / (_ap(r, "upper_bound") - _ap(r, "teacher"))
                     for r in rs if _ap(r, "upper_bound") is not None and _ap(r, "upper_bound") > _ap(r, "teacher")]
        rec = f"{100 * statistics.mean(recovered):.0f}%" if recovered else "-"
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells)
                     + f" | {_mean_spread(gains)} | {rec} |")
    table = "\n".join(lines)
    _plot(by_run, out / "accuracy.png")
    (out / "summary.md").write_text(table + "\n")
    return table


def _plot(by_run: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [("teacher", "teacher"), ("teacher_tta", "teacher+TTA"), ("student", "student"),
              ("student_tta", "student+TTA"), ("upper_bound", "upper bound")]
    names = list(by_run)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 3.8))
    width = 0.8 / len(models)
    for k, (key, label) in enumerate(models):
        means, errs, xs = [], [], []
        for i, name in enumerate(names):
            values = [_ap(r, key) for r in by_run[name] if _ap(r, key) is not None]
            if values:
                xs.append(i + (k - 2) * width)
                means.append(statistics.mean(values))
                errs.append((max(values) - min(values)) / 2)
        ax.bar(xs, means, width, yerr=errs, label=label, capsize=2)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("AP x 100 (keypoints; boxes for detection)", fontsize=8)
    ax.set_title("Data distillation on the synthetic benchmark (bars: mean; whiskers: half-range over seeds)",
                 fontsize=8)
    ax.legend(fontsize=7, ncols=3, loc="upper left")
    ax.set_ylim(0, 1.3 * max(bar.get_height() for bar in ax.patches))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the teacher-only TTA check kept from the first benchmark -----------------------------------

def teacher_tta(out: Path, iterations: int, seed: int, scales: list[int], labeled: int, val: int) -> dict:
    from dd_core.data.synthetic import make_keypoints_dataset
    from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
    from dd_core.train import TrainConfig
    from dd_core.train.detector import TrainingInputs, spec_for, train_detector

    def data(folder: Path, n: int, data_seed: int, start_id: int):
        if not (folder / "annotations.json").exists():
            make_keypoints_dataset(folder, n, seed=data_seed, start_id=start_id)
        return load_coco(str(folder / "annotations.json"), str(folder / "images"))

    lab = data(out / "data" / "labeled", labeled, 1, 1)
    val_set = data(out / "data" / "val", val, 3, 200_001)
    cfg = TrainConfig(iterations=iterations, batch_size=8, lr=0.02, warmup_iters=100, checkpoint_every=200, seed=seed)
    result = train_detector(spec_for("keypoints", lab), TrainingInputs(lab), cfg,
                            str(out / f"teacher-{iterations}-s{seed}"))
    return {"experiment": "teacher-tta", "iterations": iterations, "seed": seed, "labeled": labeled, "val": val,
            "transforms": f"scales {scales} x flip", "teacher": evaluate_checkpoint(result.checkpoint, val_set),
            "teacher_tta": evaluate_checkpoint(result.checkpoint, val_set, MultiTransformSettings(scales=scales))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run experiments (resumable)")
    r.add_argument("experiments", nargs="+", choices=[*EXPERIMENTS, "all"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    r.add_argument("--device", default="cpu")
    r.add_argument("--only", nargs="+", metavar="RUN", help="only these runs of the experiments (e.g. "
                   "detection-coco-unfiltered), so that the runs of one experiment can go side by side")
    s = sub.add_parser("summarize", help="tables and a plot of the finished runs")
    t = sub.add_parser("teacher-tta", help="a teacher evaluated without and with TTA")
    t.add_argument("--iterations", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    for q in (r, s, t):
        q.add_argument("--out", type=Path, default=Path("bench-runs/accuracy"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        experiments = list(EXPERIMENTS) if "all" in args.experiments else args.experiments
        run(args.out, experiments, args.seeds, args.scale, args.device, only=args.only)
        print(summarize(args.out))
    elif args.command == "summarize":
        print(summarize(args.out))
    else:
        row = teacher_tta(args.out, args.iterations, args.seed, args.scales, 150, 100)
        row.update(machine=_machine("cpu"), date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
        with open(args.out / "results-teacher-tta.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
