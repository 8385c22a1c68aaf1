"""Training on several processes: torchrun starts the ranks, each runs the same :class:`TrainJob`.

One node, N GPUs (or N CPU processes), what :func:`launch_distributed` runs::

    python -m torch.distributed.run --standalone --nproc_per_node N -m dd_core.train.launch JOB.json RESULT.json

Several nodes: run on every node, with the same endpoint (a host:port of the first node)::

    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id RUN_ID -m dd_core.train.launch JOB.json RESULT.json

Every rank must read the job's data and the checkpoint folder at the same URLs (``s3://`` or a
shared file system). Rank 0 writes the checkpoints and ``RESULT.json`` (the :class:`TrainResult`);
a rank that fails writes ``RESULT.json.rank<R>.error`` (its error type, the input error it is
one of if any, and its message).
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextvars
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from dd_core.ops.stop import PROCESS
from dd_core.train.distributed import BACKENDS, cleanup, init_distributed
from dd_core.train.job import TrainJob, run_job
from dd_core.train.loop import TrainHooks, TrainResult
from dd_core.train.progress import Progress, ProgressHook, ReportPacing

# Errors that say the job's input or settings are wrong, raised again as themselves in the
# launching process (a caller that does not retry bad input can still tell).
INPUT_ERRORS = {e.__name__: e for e in (ValueError, FloatingPointError, TypeError, KeyError, IndexError)}
TAIL_CHARS = 4000


OPTIONS_ENV = "OMNIDISTILL_STORAGE_OPTIONS"  # the job's storage options, for the ranks only


def _error_path(result: Path, rank: int) -> Path:
    return result.with_name(f"{result.name}.rank{rank}.error")


def main(argv: Sequence[str] | None = None) -> None:
    """One rank: join the group, train, and (rank 0) write the result; a failing rank writes its error."""
    parser = argparse.ArgumentParser(prog="python -m dd_core.train.launch", description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="TrainJob as JSON")
    parser.add_argument("result", type=Path, help="where rank 0 writes the TrainResult as JSON")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: nccl on CUDA, gloo on CPU")
    parser.add_argument("--progress", type=Path, help="where rank 0 appends its progress reports (JSON lines)")
    args = parser.parse_args(argv)
    # Storage options (credentials) come through the environment, never through a file.
    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    job = dataclasses.replace(TrainJob.from_dict(json.loads(args.job.read_text())), options=options)
    rank = int(os.environ.get("RANK", "0") or 0)
    try:
        world = init_distributed(args.backend, job.device)
        result = run_job(job, world=world, hooks=TrainHooks(on_progress=_progress_writer(args.progress)), stop=PROCESS)
        if world.is_main:
            args.result.write_text(json.dumps(dataclasses.asdict(result)))
    except Exception as exc:
        kind = next((name for name, base in INPUT_ERRORS.items() if isinstance(exc, base)), None)
        _error_path(args.result, rank).write_text(json.dumps({"type": type(exc).__name__, "input_error": kind,
                                                              "message": str(exc)}))
        raise
    finally:
        cleanup()


def _progress_writer(path: Path | None) -> ProgressHook | None:
    """Rank 0's progress, appended to ``path`` once a second and at the last step (the launching
    process reads it back: :func:`_watch_progress`)."""
    if path is None:
        return None
    pacing = ReportPacing(update_every=1.0)

    def write(progress: Progress) -> None:
        if pacing.update(progress):
            with path.open("a") as f:
                f.write(json.dumps(dataclasses.asdict(progress)) + "\n")

    return write


class _ProgressWatch(threading.Thread):
    """Reads the ranks' progress file as it grows and hands each report to ``on_progress``."""

    def __init__(self, path: Path, on_progress: ProgressHook) -> None:
        super().__init__(name="omnidistill-train-progress", daemon=True)
        self.path, self.on_progress, self.done, self._offset = path, on_progress, threading.Event(), 0
        # The hook runs in the launching thread's context (a Prefect task run's: its artifacts and
        # logs belong to that run), which a new thread does not inherit.
        self._context = contextvars.copy_context()

    def read_new(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self._offset)
            lines = f.readlines()
        for line in lines:
            if not line.endswith("\n"):
                break  # half written: read again next time
            self._offset += len(line.encode())
            self.on_progress(Progress(**json.loads(line)))

    def run(self) -> None:
        self._context.run(self._watch)

    def _watch(self) -> None:
        while not self.done.wait(1.0):
            self.read_new()
        self.read_new()


def _stream(cmd: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, echoing its output as it comes; (exit code, the last few thousand characters).

    Interrupted (Ctrl-C, SIGTERM, a stop request), it stops the ranks first: torchrun passes the
    SIGTERM on to them, and any left after 10 s are killed.
    """
    tail: collections.deque[str] = collections.deque()
    size, decoder = 0, codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span chunks
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            for chunk in iter(lambda: proc.stdout.read1(8192), b""):
                text = decoder.decode(chunk)
                sys.stdout.write(text)
                sys.stdout.flush()
                tail.append(text)
                size += len(text)
                while size - len(tail[0]) >= TAIL_CHARS:
                    size -= len(tail.popleft())
        except BaseException:
            _stop_process(proc)
            raise
    return proc.returncode, "".join(tail)[-TAIL_CHARS:]


def _stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rank_error(result: Path, nproc: int) -> Exception | None:
    """The error the ranks reported: an input error (raised as its own type) before the others.

    When one rank fails, the others often fail too, on the lost connection: that is not the cause.
    """
    errors = [(rank, json.loads(_error_path(result, rank).read_text())) for rank in range(nproc)
              if _error_path(result, rank).exists()]
    errors.sort(key=lambda item: item[1].get("input_error") is None)
    if not errors:
        return None
    rank, error = errors[0]
    kind = INPUT_ERRORS.get(error.get("input_error") or "", RuntimeError)
    return kind(f"training rank {rank} failed: {error['type']}: {error['message']}")


def torchrun_command(nproc_per_node: int, job_path: Path, result_path: Path, backend: str,
                     progress_path: Path | None = None, log_dir: Path | None = None) -> list[str]:
    """torchrun (of this interpreter's environment) on one node, rendezvous on a free local port.

    torchrun makes a folder per run and rank under ``log_dir`` even when it writes no log there; without
    one it makes them in a new ``torchelastic_*`` folder of the system's temp folder and leaves it behind.
    """
    progress = [f"--progress={progress_path}"] if progress_path is not None else []
    logs = [f"--log-dir={log_dir}"] if log_dir is not None else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            *logs, "-m", "dd_core.train.launch", str(job_path), str(result_path), f"--backend={backend}", *progress]


def _rank_environment(job: TrainJob, nproc_per_node: int) -> dict[str, str]:
    """This process's environment for the ranks: its code, a share of the CPU cores, the job's storage options."""
    env = dict(os.environ)
    # The ranks run the code of this process, and share the CPU cores instead of each taking all.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    env[OPTIONS_ENV] = json.dumps(job.options)
    return env


def launch_distributed(job: TrainJob, nproc_per_node: int, *, backend: str = "auto",
                       on_progress: ProgressHook | None = None) -> TrainResult:
    """Train ``job`` with ``nproc_per_node`` processes on this node (torchrun, DistributedDataParallel).

    The output of the ranks is echoed as it comes, and rank 0's progress handed to ``on_progress``
    in this process. A rank that fails on bad input raises its error here as the same type
    (``ValueError``, ...); any other failure raises ``RuntimeError`` with torchrun's exit code and
    the tail of the output. For several nodes, see this module's docstring.
    """
    if nproc_per_node <= 0:
        raise ValueError(f"nproc_per_node must be positive, got {nproc_per_node}")
    if job.train.batch_size % nproc_per_node:
        raise ValueError(f"batch_size {job.train.batch_size} is the global batch (images per step over all "
                         f"processes): it must be a multiple of nproc_per_node {nproc_per_node}")
    env = _rank_environment(job, nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="omnidistill-train-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job.to_dict(), "options": {}}))
        progress_path = Path(tmp) / "progress.jsonl" if on_progress is not None else None
        watch = _ProgressWatch(progress_path, on_progress) if progress_path is not None else None
        if watch is not None:
            watch.start()
        try:
            code, tail = _stream(torchrun_command(nproc_per_node, job_path, result_path, backend, progress_path,
                                                     Path(tmp) / "torchrun"), env)
        finally:
            if watch is not None:
                watch.done.set()
                watch.join(timeout=5)
        error = _rank_error(result_path, nproc_per_node)
        if code != 0 or not result_path.exists():
            if error is not None:
                raise error
            raise RuntimeError(f"torchrun with {nproc_per_node} training processes exited with code {code}; "
                               f"last output:\n{tail}")
        return TrainResult(**json.loads(result_path.read_text()))


if __name__ == "__main__":
    main()
