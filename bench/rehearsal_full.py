"""Production rehearsal at scale (issue 18): 100,000 unlabeled images on moto's S3, 2,000 shards,
Prefect servers on PostgreSQL and on SQLite, and the plain ``omnidistill label`` as the baseline.

    python bench/rehearsal_full.py --images 100000 --shards 2000 --small-shards 200 --out /tmp/reh100k
                                   [--scenarios baseline postgres postgres-small postgres-kill sqlite-kill ...]

Every scenario labels the same images with the same teacher, one labeling per child process (its
memory is its own, and it can be killed), one after another in this one call:

- ``baseline``: ``omnidistill label`` (``flows.cli.main``, no Prefect), calibrated on the labeled set,
  in shards of its default size (256 images);
- ``baseline-shards``: the same in shards of the flow's size (``--images`` / ``--shards``): what
  Prefect costs, apart from what labeling in smaller shards costs;
- ``postgres`` / ``sqlite``: the real ``label-unlabeled`` subflow with ``--shards`` shards (one
  ``infer shard`` task each, threads runner, ``--workers`` at once), then its selection, against a fresh Prefect
  server this process starts: on PostgreSQL (``deployments/local_postgres.py``) or on SQLite (as
  ``omnidistill run`` starts it, ``flows.server.local_prefect_server``);
- ``postgres-small`` / ``sqlite-small``: the same with ``--small-shards`` shards (memory against the
  number of shards);
- ``postgres-kill`` / ``sqlite-kill``: the subflow SIGKILLed once half of its shards are in the bucket,
  then the same run id again, timed from that second start to labeling done.
- ``pair-postgres`` / ``pair-sqlite``: the subflow and ``baseline`` at the same time, side by side:
  the flow, its server and its database on one core, ``omnidistill label`` on the other, each with
  one torch thread (``OMP_NUM_THREADS=1``); moto, in this process, serves both from either core.
  Sequential runs of this machine drift in speed (the same flow used 1,249 and 1,348 CPU s, 16
  minutes apart), and whatever slows one core slows both runs of a pair alike; ``--swap`` puts the
  flow on the second core instead.

The images are ``--size`` px noise PNGs, made here once and put in a bucket of a moto S3 server that
this process runs on loopback (through moto's backend: see :func:`seed`); every scenario reads them
over HTTP, from the list ``unlabeled.txt`` (listing a folder of 100,000 keys takes moto a minute:
``--list-folder`` times it). Shards, plan, manifest and pseudo-labels go to the same bucket
(``storage.options``: the endpoint, as a user's config names MinIO's). The teacher is the slim Faster
R-CNN, random weights at ``--size`` px, one transform, class 1 biased up so that it detects ten boxes
per image (``box_detections_per_img``); its RPN keeps ``--proposals`` proposals per image (the slim
preset keeps 150) in every scenario alike, so that the model costs little and the orchestration shows.

Measured per scenario: wall time (the child process's start to its exit, and the labeling call in
it), the plan and the selection, per-shard orchestration (``bench/rehearsal.py``'s probe), and peak
memory sampled every 2 s: peak RSS and PSS of the flow process, of the Prefect server's processes and of
PostgreSQL's. One JSON line per scenario is appended to ``<out>/rehearsal-full.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUCKET = "rehearsal"
SCENARIOS = ("baseline", "baseline-shards", "postgres", "postgres-small", "postgres-kill", "sqlite", "sqlite-small",
             "sqlite-kill", "pair-postgres", "pair-sqlite")
BATCH = 8
# The pool as a list of its files (the plan reads it instead of listing the folder: see list_folder_seconds).
UNLABELED = f"s3://{BUCKET}/unlabeled.txt"
DETECTIONS = 10


# ---------------------------------------------------------------- inputs


def make_teacher(url: str, coco: dict[str, Any], size: int) -> str:
    """A random-weight slim Faster R-CNN at ``size`` px with :data:`DETECTIONS` boxes per image."""
    import torch

    from dd_core.data.coco import coco_from_dict
    from dd_core.models import ModelConfig, build_model
    from dd_core.models.checkpoint import save_checkpoint
    from dd_core.train.detector import checkpoint_meta, spec_for

    torch.manual_seed(0)
    data = coco_from_dict(coco, "labeled", "")
    spec = spec_for("detection", data, ModelConfig(test_size=size, min_size=(size,), max_size=size))
    spec = dataclasses.replace(spec, box_detections_per_img=DETECTIONS)
    model = build_model(spec)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    save_checkpoint(url, {"model": model.state_dict(), "iteration": 0, **checkpoint_meta(spec, data)})
    return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_bucket() -> Iterator[dict[str, Any]]:
    """A moto S3 server on loopback with an empty bucket :data:`BUCKET`; yields the fsspec options."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "rehearsal", "secret": "rehearsal"}
        s3fs.S3FileSystem(**options).mkdir(BUCKET)
        yield options
    finally:
        server.stop()


def seed(local: Path, prefix: str) -> float:
    """Every file under ``local`` into ``s3://BUCKET/prefix/`` of the moto server in this process,
    through moto's backend (100,000 PUTs over HTTP take about 20 min on 2 cores; the labeling reads
    them over HTTP as from any S3); seconds taken."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    start = time.perf_counter()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        backend.put_object(BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return time.perf_counter() - start


def list_folder_seconds(options: dict[str, Any]) -> float:
    """Seconds to list the unlabeled folder as a plan from a folder does (moto's listing is slow:
    each page of 1,000 keys walks every key in the bucket)."""
    from dd_core.data.unlabeled import list_unlabeled

    start = time.perf_counter()
    list_unlabeled(f"s3://{BUCKET}/unlabeled", options=options)
    return time.perf_counter() - start


def flow_config(run_id: str, shards: int, images: int, size: int, options: dict[str, Any],
                workers: int) -> dict[str, Any]:
    labeled = {"annotations": f"s3://{BUCKET}/labeled/annotations.json", "images": f"s3://{BUCKET}/labeled/images"}
    return {"task": "detection", "run_id": run_id, "storage": {"root": f"s3://{BUCKET}/store", "options": options},
            "labeled": labeled, "val": labeled, "unlabeled": {"images": UNLABELED},
            "model": {"test_size": size, "min_size": [size], "max_size": size},
            "tta": {"scales": [size], "flip": False},
            "shards": {"size": -(-images // shards), "workers": workers, "batch_size": BATCH}}


# ---------------------------------------------------------------- the child processes


def cheap_proposals(proposals: int) -> None:
    """The slim preset's RPN keeps ``proposals`` per test image (this process only)."""
    from dd_core.models.presets import PRESETS

    PRESETS["slim"] = dataclasses.replace(PRESETS["slim"], rpn_top_n_test=(proposals, proposals))


@contextlib.contextmanager
def timed(owner: Any, name: str, seconds: dict[str, float], key: str) -> Iterator[None]:
    """``owner.name`` (a function, or a Prefect task's ``fn``) adds its call's seconds to ``seconds[key]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - start, 2)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def child_flow(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``label-unlabeled`` subflow once, probed, against the server of ``PREFECT_API_URL``."""
    from bench.rehearsal import label_once
    from dd_core.config import parse_config
    from tasks.infer import find_done_shards, plan_shards, write_inference_manifest
    from tasks.select import select_pseudo

    config = parse_config(spec["config"])
    seconds: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        for task, key in ((plan_shards, "plan_s"), (find_done_shards, "find_done_s"), (select_pseudo, "select_s"),
                          (write_inference_manifest, "manifest_s")):
            stack.enter_context(timed(task, "fn", seconds, key))
        result = label_once(config, spec["checkpoint"])
    return {**result, **seconds}


def child_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """``omnidistill label`` on the same images, model, batch size and calibration (S3 from the environment)."""
    import dd_core.method as method
    import dd_core.pseudo.pipeline as pipeline
    from flows.cli import main

    seconds: dict[str, float] = {}
    with timed(method, "plan", seconds, "plan_s"), timed(pipeline, "select", seconds, "select_s"):
        start = time.perf_counter()
        code = main(["label", "--checkpoint", spec["checkpoint"], "--images", UNLABELED,
                     "--out", f"s3://{BUCKET}/{spec['name']}/annotations.json", "--labeled",
                     f"s3://{BUCKET}/labeled/annotations.json", "--scales", str(spec["size"]), "--no-flip",
                     "--batch-size", str(BATCH), "--device", "cpu", "--quiet",
                     *(["--shard-size", str(spec["shard_size"])] if spec.get("shard_size") else [])])
        wall = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    return {"wall_s": round(wall, 1), **seconds}


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("cpus"):  # before torch starts its threads: they inherit it
        os.sched_setaffinity(0, spec["cpus"])
    cheap_proposals(spec["proposals"])
    result = (child_baseline if spec["mode"] == "baseline" else child_flow)(spec)
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork and exec.
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    result["max_rss_mb"] = round(peak_kb / 1024, 1)
    result["process_cpu_s"] = round(time.process_time(), 1)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- memory


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _peak_rss(pid: int) -> int:
    """The kernel's record of ``pid``'s peak RSS (VmHWM), bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _cpu_seconds(processes: list[Any]) -> float:
    """User + system CPU seconds of ``processes`` (those still there) and of the children they reaped
    (PostgreSQL's backends that exited)."""
    import psutil

    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += sum(p.cpu_times()[:4])
    return total


def _pin(processes: list[Any], core: int) -> None:
    """Every thread of ``processes`` on ``core`` (threads they start later inherit it)."""
    import psutil

    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            for thread in p.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, {core})


def _memory(processes: list[Any]) -> tuple[float, float]:
    """(RSS, PSS) of ``processes`` together, MiB: the sum of their peak RSS so far, and of their PSS now."""
    import psutil

    rss = pss = 0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            info = p.memory_full_info()
            rss, pss = rss + max(info.rss, _peak_rss(p.pid)), pss + info.pss
    return rss / 2**20, pss / 2**20


class MemorySampler:
    """Peak RSS (the kernel's VmHWM) and PSS (MiB), sampled every ``every`` s, of the flow child, of
    this process's other children (the Prefect server), and of the process tree of ``database_pid`` (PostgreSQL); and the
    CPU seconds each group and this process (moto's S3 server, the sampler itself) used meanwhile.
    Each sample costs CPU the labeling shares (every 0.5 s, 6.6 s of 100 at 200 shards on PostgreSQL's
    15 processes, against 3.7 s for the baseline's one): hence every 2 s, the peak RSS being the kernel's."""

    def __init__(self, flow_pid: int, database_pid: int | None, every: float = 2.0):
        self.flow_pid, self.database_pid, self.every = flow_pid, database_pid, every
        self.peak: dict[str, list[float]] = {"flow": [0.0, 0.0], "server": [0.0, 0.0], "database": [0.0, 0.0]}
        self._cpu: dict[str, dict[int, float]] = {"flow": {}, "server": {}, "database": {}}
        self._cpu_start: dict[str, dict[int, float]] = {"flow": {}, "server": {}, "database": {}}
        self._own_start = sum(os.times()[:2])
        self.sampler_cpu_s = 0.0
        self._started = False  # processes found by the first sample count from then, later ones from their start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        flow = _tree(self.flow_pid)
        mine = {p.pid for p in flow} | {os.getpid()}
        groups = {"flow": flow, "server": [p for p in _tree(os.getpid()) if p.pid not in mine],
                  "database": _tree(self.database_pid) if self.database_pid else []}
        for name, processes in groups.items():
            rss, pss = _memory(processes)
            self.peak[name] = [max(self.peak[name][0], rss), max(self.peak[name][1], pss)]
            for p in processes:
                with contextlib.suppress(Exception):
                    seconds = sum(p.cpu_times()[:2])
                    self._cpu_start[name].setdefault(p.pid, 0.0 if self._started or name == "flow" else seconds)
                    self._cpu[name][p.pid] = seconds
        self._started = True

    def _run(self) -> None:
        self._sample()  # the processes already running: their CPU before this child starts is not counted
        while not self._stop.wait(self.every):
            self._sample()
        self.sampler_cpu_s = time.thread_time()

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, dict[str, float]]:
        return {name: {"rss_mb": round(rss, 1), "pss_mb": round(pss, 1)} for name, (rss, pss) in self.peak.items()}

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) while sampled: each group, this process, and the sampler thread."""
        used = {name: round(sum(seconds - self._cpu_start[name].get(pid, 0.0) for pid, seconds in pids.items()), 1)
                for name, pids in self._cpu.items()}
        return {**used, "bench_process": round(sum(os.times()[:2]) - self._own_start, 1),
                "sampler": round(self.sampler_cpu_s, 1)}


# ---------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Rehearsal:
    out: Path
    images: int
    size: int
    proposals: int
    workers: int
    options: dict[str, Any]
    checkpoint: str
    database_pid: int | None = None
    api_url: str | None = None

    def spawn(self, spec: dict[str, Any], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        name = f"{spec['name']}-{time.time_ns()}"
        spec_path, result = self.out / f"{name}.spec.json", self.out / f"{name}.result.json"
        spec_path.write_text(json.dumps({**spec, "result": str(result), "proposals": self.proposals,
                                         "size": self.size, "checkpoint": self.checkpoint}))
        env = {**os.environ, **(env or {}), "AWS_ENDPOINT_URL_S3": self.options["endpoint_url"],
               "AWS_ACCESS_KEY_ID": self.options["key"], "AWS_SECRET_ACCESS_KEY": self.options["secret"]}
        if self.api_url:
            env["PREFECT_API_URL"] = f"{self.api_url}/api"
        else:  # the baseline: no Prefect API, even one this process started for a flow beside it
            env.pop("PREFECT_API_URL", None)
        log = open(self.out / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        return process, result

    def measure(self, spec: dict[str, Any], until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One child, its wall time and peak memory; SIGKILLed once ``until()`` holds, if given."""
        start = time.perf_counter()
        process, result_path = self.spawn(spec)
        with MemorySampler(process.pid, self.database_pid) as sampler:
            while process.poll() is None:
                if until is not None and until():
                    process.kill()
                    process.wait()
                    return {"killed_after_s": round(time.perf_counter() - start, 1)}
                time.sleep(5.0 if until is not None else 0.2)  # a listing costs moto ~0.5 s of CPU
        wall = time.perf_counter() - start
        if process.returncode:
            raise RuntimeError(f"{spec['name']}: the child exited {process.returncode} (see {self.out})")
        return {"process_wall_s": round(wall, 1), "memory_mb": sampler.result(), "cpu_s": sampler.cpu(),
                **json.loads(result_path.read_text())}

    def shards_written(self, run_id: str) -> int:
        import s3fs

        from dd_core.storage.layout import RunLayout

        inference = RunLayout(f"s3://{BUCKET}/store", run_id).for_round(1).inference.removeprefix("s3://")
        fs = s3fs.S3FileSystem(**self.options)
        try:
            names = fs.ls(inference, detail=False, refresh=True)
        except FileNotFoundError:
            return 0
        return sum(Path(n).name.startswith("shard-") and n.endswith(".parquet") for n in names)

    def flow(self, run_id: str, shards: int, kill: bool = False) -> dict[str, Any]:
        spec = {"name": run_id, "mode": "flow",
                "config": flow_config(run_id, shards, self.images, self.size, self.options, self.workers)}
        if not kill:
            return self.measure(spec)
        killed = self.measure(spec, until=lambda: self.shards_written(run_id) >= shards // 2)
        done_before = self.shards_written(run_id)
        resumed = self.measure(spec)
        return {"killed": {**killed, "shards_done": done_before}, "resume": resumed}

    def pair(self, run_id: str, shards: int, flow_core: int, base_core: int) -> dict[str, Any]:
        """The flow on ``flow_core`` (with the server and the database: pinned here) and ``omnidistill
        label`` on ``base_core``, started together, one torch thread each; their walls and CPU seconds."""
        database = _tree(self.database_pid) if self.database_pid else []
        server = [p for p in _tree(os.getpid())[1:] if p.pid not in {d.pid for d in database}]
        _pin(server + database, flow_core)  # PostgreSQL's later backends are forked by its pinned postmaster
        before = {"server": _cpu_seconds(server), "database": _cpu_seconds(database[:1])}
        own = sum(os.times()[:2])
        one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        api_url, self.api_url = self.api_url, None
        base, base_result = self.spawn({"name": f"{run_id}-baseline", "mode": "baseline", "shard_size": None,
                                        "cpus": [base_core]}, one_thread)
        self.api_url = api_url
        flow, flow_result = self.spawn({"name": run_id, "mode": "flow", "cpus": [flow_core],
                                        "config": flow_config(run_id, shards, self.images, self.size, self.options,
                                                              self.workers)}, one_thread)
        start, walls = time.perf_counter(), {}
        try:
            while len(walls) < 2:
                for name, process in (("flow", flow), ("baseline", base)):
                    if name not in walls and process.poll() is not None:
                        walls[name] = round(time.perf_counter() - start, 1)
                        if process.returncode:
                            raise RuntimeError(f"{run_id} {name}: the child exited {process.returncode} "
                                               f"(see {self.out})")
                time.sleep(0.2)
        finally:  # a failed child, or Ctrl-C here: the other one does not run on
            for process in (flow, base):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        # The postmaster's own CPU and its reaped backends', plus the backends still there.
        database = _tree(self.database_pid) if self.database_pid else []
        used = {"server": round(_cpu_seconds(server) - before["server"], 1),
                "database": round(_cpu_seconds(database[:1]) - before["database"]
                                  + sum(_cpu_seconds([p]) for p in database[1:]), 1)}
        flow_run, baseline = json.loads(flow_result.read_text()), json.loads(base_result.read_text())
        return {"flow_core": flow_core, "baseline_core": base_core,
                "flow": {"process_wall_s": walls["flow"], **flow_run},
                "baseline": {"process_wall_s": walls["baseline"], **baseline},
                "ratio": round(flow_run["wall_s"] / baseline["wall_s"], 3),
                "cpu_s": {"flow": flow_run["process_cpu_s"], "baseline": baseline["process_cpu_s"], **used,
                          "bench_process": round(sum(os.times()[:2]) - own, 1)}}


@contextlib.contextmanager
def prefect_server(kind: str, folder: Path) -> Iterator[tuple[str, int | None]]:
    """(UI address, PostgreSQL's postmaster pid or None) of a fresh server of ``kind``."""
    if kind == "postgres":
        from deployments.local_postgres import prefect_server_on_postgres

        with prefect_server_on_postgres(folder) as ui:
            pid_file = folder / "postgres" / "data" / "postmaster.pid"
            yield ui, int(pid_file.read_text().split()[0])
    else:
        from flows.server import local_prefect_server

        with local_prefect_server(folder) as ui:
            yield ui, None


def run_scenario(rehearsal: Rehearsal, name: str, shards: int, small_shards: int, swap: bool = False) -> dict[str, Any]:
    if name.startswith("baseline"):
        rehearsal.api_url = rehearsal.database_pid = None
        size = -(-rehearsal.images // shards) if name == "baseline-shards" else None
        return {"shard_size": size or 256, **rehearsal.measure({"name": f"{name}-{time.time_ns()}", "mode": "baseline",
                                                                 "shard_size": size})}
    pair = name.startswith("pair-")
    kind, _, variant = name.removeprefix("pair-").partition("-")
    count = small_shards if variant == "small" else shards
    folder = Path(f"/tmp/rehearsal-{kind}-{time.time_ns()}")  # PostgreSQL's account must reach it
    folder.mkdir(mode=0o755)
    try:
        with prefect_server(kind, folder) as (ui, database_pid):
            rehearsal.api_url, rehearsal.database_pid = ui, database_pid
            if pair:
                cores = sorted(os.sched_getaffinity(0))[:2]
                if len(cores) < 2:
                    raise RuntimeError(f"{name} needs two cores, this process may use {cores}")
                cores = cores[::-1] if swap else cores
                return {"shards": count, **rehearsal.pair(f"{name}-{time.time_ns()}", count, *cores)}
            return {"shards": count, **rehearsal.flow(f"{name}-{time.time_ns()}", count, kill=variant == "kill")}
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2_000)
    parser.add_argument("--small-shards", type=int, default=200)
    parser.add_argument("--size", type=int, default=32, help="image side and the teacher's input size (px)")
    parser.add_argument("--proposals", type=int, default=20, help="RPN proposals per test image")
    parser.add_argument("--workers", type=int, default=1, help="shard tasks at once in the flow (threads runner)")
    parser.add_argument("--list-folder", action="store_true", help="also time listing the unlabeled folder")
    parser.add_argument("--swap", action="store_true", help="pair-*: the flow on core 1, the baseline on core 0")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS,
                        default=[s for s in SCENARIOS if not s.startswith("pair-")])
    parser.add_argument("--out", type=Path, default=Path("/tmp/omnidistill-rehearsal-full"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    from bench.rehearsal import make_images, make_labeled

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    coco = make_labeled(args.out / "labeled", args.size)
    make_images(args.out / "unlabeled", args.images, args.size)
    made = time.perf_counter() - start
    make_teacher(str(args.out / "teacher.pth"), coco, args.size)
    with moto_bucket() as options:
        uploaded = seed(args.out / "labeled", "labeled") + seed(args.out / "unlabeled", "unlabeled")
        import s3fs

        fs = s3fs.S3FileSystem(**options)
        fs.put(str(args.out / "teacher.pth"), f"{BUCKET}/teacher.pth")
        names = sorted(p.name for p in (args.out / "unlabeled").glob("*.png"))
        fs.pipe(UNLABELED.removeprefix("s3://"), "".join(f"unlabeled/{name}\n" for name in names).encode())
        listing = list_folder_seconds(options) if args.list_folder else None
        print(f"{args.images} images made in {made:.0f} s, put in the bucket in {uploaded:.0f} s; "
              f"listing the folder: {listing} s", flush=True)
        rehearsal = Rehearsal(args.out, args.images, args.size, args.proposals, args.workers, options,
                              f"s3://{BUCKET}/teacher.pth")
        for name in args.scenarios:
            result = {"scenario": name, "images": args.images, "size": args.size, "proposals": args.proposals,
                      "workers": args.workers, "date": time.strftime("%Y-%m-%d %H:%M"), "list_folder_s": listing,
                      **run_scenario(rehearsal, name, args.shards, args.small_shards, args.swap)}
            print(json.dumps(result), flush=True)
            with open(args.out / "rehearsal-full.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
