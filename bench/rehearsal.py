"""Production rehearsal, the orchestration part (issue 18): what each shard task costs around its work.

    python bench/rehearsal.py --images 2000 --shards 400 --out /tmp/rehearsal [--server sqlite|postgres]
                              [--gpu-limit N] [--workers 1]

Tiny noise images (``--size`` px, real PNG files read by the shard code) and a random-weight slim
teacher at that input size (one transform), so the model costs little and the orchestration shows.
The real ``label-unlabeled`` subflow (plan, one ``infer shard`` task per shard on the threads runner,
manifest, selection) runs against a Prefect server started here: the local SQLite one as
``omnidistill run`` starts it (``flows.server.local_prefect_server``) or the PostgreSQL-backed one of
``deployments/local_postgres.py`` (as root it runs PostgreSQL as the ``postgres`` user). With
``--gpu-limit N`` the server gets the tag concurrency limit ``gpu`` = N first, as the README asks users
to create. The flow runs twice: labeling every shard, then the same run again (a resume: every shard done).

Measured in this process, per thread of the task runner (a worker's view), each shard task as:
- ``to_first_image``: the task function's start to its first images asked for (plan, finished-shard check,
  teacher, a ``gpu`` slot);
- ``engine_gap``: the task function's return to the next one's start on that thread (the task engine
  finishing one task run and starting the next);
- ``shard_tasks_s``: the first shard task's start to the last one's end (the rest of ``wall_s`` is the
  plan, the teacher's fingerprint, the manifest and the selection);
- ``finished_check``: reading the footer of the shard's output, if any (is it done?);
- ``slot``: taking the ``gpu`` concurrency slot (a request to the server where it has a ``gpu`` limit;
  without one, the answer ``tasks.cache.GPU_LIMIT`` remembers, asked every 10 s);
- ``per_shard``: a shard's output written to the next shard's first image read (both of the above:
  what a GPU worker waits between shards). The resume starts no shard task (the flow finds the done
  shards in one listing): its ``wall_s`` is what a resume costs.
Medians and 90th percentiles in ms, with the plan reads and progress artifact calls counted. With
``--count-calls``, also what does not depend on the machine's speed (which on a shared 2-core machine
moves the times above by a third between runs): the Python function calls made per shard task on
the threads that ran shard tasks (task engine, task function, shard loop), and the garbage
collections in the whole process (counted calls make every call slower, so times are not comparable
with a run without the option). The
default scale is the issue's (100,000 images, 2,000 shards); ``--images 2000 --shards 400`` takes
a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` noise PNGs of ``size`` px with a red rectangle each (a real decode per image)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = folder / f"{i:07d}.png"
        if not path.exists():
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[size // 4:size // 2, size // 4:3 * size // 4] = (220, 40, 40)
            Image.fromarray(pixels).save(path)
    return folder


def make_labeled(folder: Path, size: int, count: int = 4) -> dict[str, Any]:
    """A tiny labeled detection set (the selection's calibration target and the teacher's classes)."""
    make_images(folder / "images", count, size, seed=1)
    images = [{"id": i + 1, "file_name": f"{i:07d}.png", "width": size, "height": size} for i in range(count)]
    box = [size / 4, size / 4, size / 2, size / 4]
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i in range(count)]
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return coco


def make_teacher(url: str, coco: dict[str, Any], size: int) -> str:
    """A random-weight slim Faster R-CNN checkpoint at ``size`` px that detects plenty (class 1 biased up)."""
    import torch

    from dd_core.data.coco import coco_from_dict
    from dd_core.models import ModelConfig, build_model
    from dd_core.models.checkpoint import save_checkpoint
    from dd_core.train.detector import checkpoint_meta, spec_for

    torch.manual_seed(0)
    data = coco_from_dict(coco, "labeled", "")
    spec = spec_for("detection", data, ModelConfig(test_size=size, min_size=(size,), max_size=size))
    model = build_model(spec)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    save_checkpoint(url, {"model": model.state_dict(), "iteration": 0, **checkpoint_meta(spec, data)})
    return url


class ShardProbe:
    """Timestamps of every shard task, from wrappers around the task function and the shard loop's
    image reads and writes (shard tasks run in this process's threads), plus API calls counted."""

    def __init__(self) -> None:
        self.shards: list[dict[str, Any]] = []
        self.plan_reads = 0
        self.progress_calls = 0
        self._current = threading.local()
        self._lock = threading.Lock()

    def wrap_task(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            record = self._current.record = {"thread": threading.get_ident(), "start": time.perf_counter()}
            try:
                result = fn(*args, **kwargs)
                record["skipped"] = result.skipped
                return result
            finally:
                record["end"] = time.perf_counter()
                with self._lock:
                    self.shards.append(record)
        return timed

    def wrap_mark(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``fn`` that stamps ``name`` (its first call's start, or its last return) on the shard of this thread."""
        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            record = getattr(self._current, "record", None)
            if record is not None and name == "first_image":
                record.setdefault(name, time.perf_counter())
            result = fn(*args, **kwargs)
            if record is not None and name == "written":
                record[name] = time.perf_counter()
            return result
        return marked

    def _add(self, name: str, seconds: float) -> None:
        record = getattr(self._current, "record", None)
        if record is not None:
            record[name] = record.get(name, 0.0) + seconds

    def wrap_duration(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``fn`` whose seconds are added to ``name`` of the shard of this thread."""
        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(name, time.perf_counter() - start)
        return measured

    def wrap_slot(self, make_slot: Callable[[], Any]) -> Callable[[], Any]:
        """``gpu_slot`` whose taking of the slot (entering its context: a request to the server) is
        timed as ``slot``."""
        @contextlib.contextmanager
        def slot() -> Iterator[Any]:
            start = time.perf_counter()
            with make_slot() as held:
                self._add("slot", time.perf_counter() - start)
                yield held
        return slot

    def wrap_count(self, fn: Callable[..., Any], attribute: str,
                   when: Callable[..., bool] = lambda *a: True) -> Callable[..., Any]:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if when(*args):
                with self._lock:
                    setattr(self, attribute, getattr(self, attribute) + 1)
            return fn(*args, **kwargs)
        return counted


@contextlib.contextmanager
def probed() -> Iterator[ShardProbe]:
    """A :class:`ShardProbe` wired into the task function, the shard loop and the API calls it counts."""
    import dd_core.pseudo.infer as infer
    import dd_core.storage as storage
    import tasks.infer
    import tasks.progress as progress

    probe = ShardProbe()
    patches = [(tasks.infer.infer_shard, "fn", probe.wrap_task(tasks.infer.infer_shard.fn)),
               (infer, "read_batches", probe.wrap_mark(infer.read_batches, "first_image")),
               (infer, "write_shard", probe.wrap_mark(infer.write_shard, "written")),
               (infer, "existing_output", probe.wrap_duration(infer.existing_output, "check")),
               (tasks.infer, "gpu_slot", probe.wrap_slot(tasks.infer.gpu_slot)),
               (storage, "read_json", probe.wrap_count(storage.read_json, "plan_reads",
                                                       lambda url, *a: str(url).endswith("_plan.json"))),
               (progress, "create_progress_artifact", probe.wrap_count(progress.create_progress_artifact,
                                                                       "progress_calls")),
               (progress, "update_progress_artifact", probe.wrap_count(progress.update_progress_artifact,
                                                                       "progress_calls"))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield probe
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class CallCounter:
    """Python function calls by thread (``sys.setprofile`` here and in every thread started meanwhile)
    and the garbage collector's runs and seconds, while it is entered. It replaces any profiler
    running (cProfile, yappi) for that time; threads it hooked count nothing once it is left."""

    def __init__(self) -> None:
        self.active = False
        self.calls: collections.Counter[int] = collections.Counter()
        self.collections = [0, 0, 0]  # by generation
        self.gc_seconds = [0.0, 0.0, 0.0]
        self._gc_start = 0.0

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and self.active:
            self.calls[threading.get_ident()] += 1

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.gc_seconds[info["generation"]] += time.perf_counter() - self._gc_start

    def __enter__(self) -> "CallCounter":
        self.active = True
        gc.callbacks.append(self._gc)
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.active = False
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        gc.callbacks.remove(self._gc)

    def per_shard(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        threads = {r["thread"] for r in shards}
        per_task = round(sum(self.calls[t] for t in threads) / len(shards)) if shards else None
        return {"calls_per_shard_task": per_task, "gc_runs_by_generation": self.collections,
                "gc_ms_by_generation": [round(1000 * s, 1) for s in self.gc_seconds]}


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": round(1000 * statistics.median(ordered), 1),
            "p90": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1), "n": len(ordered)}


def per_shard_costs(shards: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians (ms) of the costs named in the module docstring, over consecutive tasks of each thread."""
    to_first, gaps, between, wall = [], [], [], []
    check = [r["check"] for r in shards if "check" in r]
    slot = [r["slot"] for r in shards if "slot" in r]
    by_thread: dict[int, list[dict[str, Any]]] = {}
    for record in shards:
        by_thread.setdefault(record["thread"], []).append(record)
        wall.append(record["end"] - record["start"])
        if "first_image" in record:
            to_first.append(record["first_image"] - record["start"])
    for records in by_thread.values():
        records.sort(key=lambda r: r["start"])
        for before, after in zip(records, records[1:]):
            gaps.append(after["start"] - before["end"])
            if "written" in before and "first_image" in after:
                between.append(after["first_image"] - before["written"])
    return {"to_first_image": _ms(to_first), "engine_gap": _ms(gaps), "per_shard": _ms(between),
            "task_wall": _ms(wall), "finished_check": _ms(check), "slot": _ms(slot)}


def label_once(config: Any, checkpoint: str, count_calls: bool = False) -> dict[str, Any]:
    """The real ``label-unlabeled`` subflow on this run, timed and probed (and its calls counted)."""
    from dd_core.storage.layout import RunLayout
    from flows.distill import label_unlabeled
    from flows.runners import shard_task_runner

    layout = RunLayout(config.storage.root, config.run_id).for_round(1)
    counter = CallCounter()
    with probed() as probe, counter if count_calls else contextlib.nullcontext():
        start = time.perf_counter()
        labeled = label_unlabeled.with_options(task_runner=shard_task_runner(config.shards))(
            config, checkpoint, layout)
        wall = time.perf_counter() - start
    shard_s = max(r["end"] for r in probe.shards) - min(r["start"] for r in probe.shards) if probe.shards else 0.0
    return {"wall_s": round(wall, 1), "shard_tasks_s": round(shard_s, 1), "num_shards": labeled.plan.num_shards,
            "plan_reads": probe.plan_reads, "progress_calls": probe.progress_calls,
            "skipped": sum(bool(r.get("skipped")) for r in probe.shards), **per_shard_costs(probe.shards),
            **(counter.per_shard(probe.shards) if count_calls else {})}


def _config(out: Path, images: int, shards: int, size: int, workers: int) -> Any:
    from dd_core.config import parse_config

    labeled = {"annotations": str(out / "labeled" / "annotations.json"), "images": str(out / "labeled" / "images")}
    return parse_config({
        "task": "detection", "run_id": "rehearsal", "storage": {"root": str(out / "store")},
        "labeled": labeled, "val": labeled, "unlabeled": {"images": str(out / "unlabeled")},
        "model": {"test_size": size, "min_size": [size], "max_size": size},
        "tta": {"scales": [size], "flip": False},
        "shards": {"size": max(1, images // shards), "workers": workers, "batch_size": 8},
    })


@contextlib.contextmanager
def prefect_server(kind: str, out: Path) -> Iterator[str]:
    if kind == "postgres":
        from deployments.local_postgres import prefect_server_on_postgres

        with prefect_server_on_postgres(out / f"postgres-{time.time_ns()}") as ui:
            yield ui
    else:
        from flows.server import local_prefect_server

        with local_prefect_server(out / f"prefect-{time.time_ns()}") as ui:
            yield ui


def rehearse(out: Path, images: int, shards: int, size: int, server: str, gpu_limit: int | None,
             workers: int, count_calls: bool = False) -> dict[str, Any]:
    """Labeling from scratch, then the same run again (every shard done), on a fresh server."""
    import shutil

    coco = make_labeled(out / "labeled", size)
    make_images(out / "unlabeled", images, size)
    checkpoint = make_teacher(str(out / "teacher.pth"), coco, size)
    shutil.rmtree(out / "store", ignore_errors=True)
    config = _config(out, images, shards, size, workers)
    result: dict[str, Any] = {"images": images, "shards": shards, "size": size, "server": server,
                              "gpu_limit": gpu_limit, "workers": workers}
    with prefect_server(server, out):
        if gpu_limit:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.create_concurrency_limit(tag="gpu", concurrency_limit=gpu_limit)
        result["label"] = label_once(config, checkpoint, count_calls)
        result["resume"] = label_once(config, checkpoint, count_calls)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=32, help="image side and the teacher's input size (px)")
    parser.add_argument("--server", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--gpu-limit", type=int, default=None, help="create the tag concurrency limit gpu=N first")
    parser.add_argument("--workers", type=int, default=1, help="shard tasks at once (threads runner)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/omnidistill-rehearsal"))
    parser.add_argument("--count-calls", action="store_true",
                        help="also count Python calls per shard task and garbage collections (slows every call)")
    parser.add_argument("--label", default="", help="a name for this measurement in the output")
    args = parser.parse_args(argv)
    result = rehearse(args.out, args.images, args.shards, args.size, args.server, args.gpu_limit, args.workers,
                      args.count_calls)
    result["label_name"] = args.label
    print(json.dumps(result))
    with open(args.out / "rehearsal.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
