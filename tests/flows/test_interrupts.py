"""Ctrl-C, SIGTERM and a cancel from the Prefect UI stop a real `omnidistill run` cleanly, and it resumes.

Each test starts the CLI in a process of its own, as a user would, and stops it mid-stage.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from pydantic import BaseModel, model_serializer
from pydantic_core import PydanticSerializationError

from dd_core.ops.stop import PROCESS
from flows.cli import EXIT_GRACE
from flows.interrupts import Interrupted, ctrl_c_noted, interruption, resume_command, stop_on_signals
from tests.flows.conftest import local_config, make_sets

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, run_id: str, **extra) -> str:
    config = local_config(tmp_path, run_id=run_id, **extra).model_dump(mode="json")
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _start(args: list[str], tmp_path: Path, api_url: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Stopped(NamedTuple):
    code: int  # the exit code
    took: float  # seconds from the signal to the exit
    err: str  # stderr
    left: set[int]  # the process's children still alive after it
    sent_ns: int  # when the signal was sent (time.time_ns(), as files' modification times)


def _stop(process: subprocess.Popen, signum: int) -> Stopped:
    """Send ``signum`` and wait for the process to end."""
    children = _descendants(process.pid)
    sent, sent_ns = time.monotonic(), time.time_ns()
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the run and what it started (it leads its own session)
        _, err = process.communicate()
        raise AssertionError(f"still running 60 s after the signal: {err[-2000:]}") from None
    took = time.monotonic() - sent
    time.sleep(0.5)
    return Stopped(process.returncode, took, err, _alive(children), sent_ns)


# How long after the signal a stopped run must have exited: a stop that hung on a thread or an exit
# hook would be ended only by the console script's grace, which starts once the command returns.
# How soon the prompt comes back is measured by bench/stop_latency.py (BENCHMARKS.md), not here:
# on CI's 2 loaded cores it took twice as long as alone.
STOP_GUARD = EXIT_GRACE


def _resume(err: str, tmp_path: Path, api_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the command the last line of ``err`` says resumes the run."""
    command = shlex.split(err.strip().splitlines()[-1].split("resume it with: ", 1)[1])
    assert command[:2] == ["omnidistill", "run"]
    process = _start(command[1:], tmp_path, api_url)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_the_resume_command_repeats_the_overrides_with_this_run_id():
    assert resume_command("my run.yaml", ["teacher.iterations=5", "run_id=old"], "20261130-1") == \
        "omnidistill run 'my run.yaml' --set teacher.iterations=5 --set run_id=20261130-1"


def test_the_resume_command_hides_storage_options_which_may_hold_credentials():
    overrides = ["storage.root=s3://b/r", "storage.options.key=AKIA123", " storage.options={'secret': 's'}",
                 "storage.optionsx=1"]
    assert resume_command("c.yaml", overrides, "r") == (
        "omnidistill run c.yaml --set storage.root=s3://b/r --set 'storage.options.key=<hidden>' "
        "--set 'storage.options=<hidden>' --set storage.optionsx=1 --set run_id=r")


LEAK_A_SEMAPHORE = """
import multiprocessing, os, sys
if sys.argv[1] == "quiet":
    from flows.interrupts import quiet_resource_tracker
    quiet_resource_tracker()
lock = multiprocessing.get_context("spawn").Lock()  # starts the resource tracker
os._exit(0)  # as a worker a signal ended: the lock is never released
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_the_resource_trackers_leak_report_stays_off_the_console(mode):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-c", LEAK_A_SEMAPHORE, mode], env=env, capture_output=True, text=True,
                          timeout=60)  # waits for the tracker too: it writes to the same stderr
    if mode == "quiet":
        assert done.stderr == ""
    else:  # what the run printed after its last line before
        assert "resource_tracker: There appear to be 1 leaked semaphore objects" in done.stderr


class _CtrlCInside(BaseModel):
    """A model whose serializer gets Ctrl-C: pydantic turns the KeyboardInterrupt into an error of its own."""

    x: int = 1

    @model_serializer(mode="wrap")
    def _ser_model(self, handler):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return handler(self)


def test_an_error_a_library_makes_of_a_ctrl_c_still_reads_as_the_interruption():
    try:
        with ctrl_c_noted(), pytest.raises(PydanticSerializationError, match="KeyboardInterrupt") as wrapped:
            _CtrlCInside().model_dump()
        assert interruption(wrapped.value) == (130, "interrupted by SIGINT")
    finally:
        PROCESS.clear()
    assert interruption(wrapped.value) is None  # the same error without a signal is an error
    assert interruption(Interrupted(signal.SIGTERM)) == (143, "interrupted by SIGTERM")


class _SignalInside(logging.Handler):
    """A log handler that is sent SIGTERM while it writes (as a fork inside a log call would be)."""

    finished = False

    def emit(self, record: logging.LogRecord) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        self.finished = True


def test_a_signal_inside_a_log_call_is_raised_after_it_and_logging_stays_usable():
    logger, handler = logging.getLogger("omnidistill.tests.signal"), _SignalInside()
    logger.addHandler(handler)
    logger.propagate = False
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted, match="interrupted by SIGTERM"), stop_on_signals():
            logger.warning("a line")
            assert PROCESS.reason() == "SIGTERM received"  # the loops are told at once; the raise waits
            time.sleep(10)  # the signal, delivered again, lands here
    finally:
        logger.removeHandler(handler)
        PROCESS.clear()
    assert handler.finished and time.monotonic() - started < 2
    other = threading.Thread(target=logging.getLogger("omnidistill.tests.other").warning, args=("after",))
    other.start()
    other.join(timeout=5)
    assert not other.is_alive()  # no lock of the logging module was left held


def test_ctrl_c_while_labeling_stops_at_the_next_batch_and_the_run_resumes(tmp_path):
    make_sets(tmp_path, (4, 60, 2))
    config = _config(tmp_path, "sigint", shards={"size": 2, "workers": 2},
                     tta={"scales": [64, 96], "flip": True})
    process = _start(["run", config, "--set", "teacher.iterations=2"], tmp_path)
    inference = tmp_path / "store/runs/sigint/inference"
    _wait_for(lambda: len(list(inference.glob("shard-*.parquet"))) >= 2 or process.poll() is not None, 240,
              "the first shards")
    code, took, err, left, sent_ns = _stop(process, signal.SIGINT)
    assert code == 130 and took < STOP_GUARD, (code, took, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("omnidistill: run sigint stopped (interrupted by SIGINT); resume it with: omnidistill run ")
    assert "Traceback" not in err and not left, left
    assert not (tmp_path / "store/runs/sigint/_lock.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in inference.glob("shard-*.parquet")}
    assert 2 <= len(finished) < 30
    # The stop is checked before each batch: only the shards in flight (one per worker) were written after it.
    assert len([name for name, at in finished.items() if at > sent_ns]) <= 2, (sorted(finished.items()), sent_ns)

    resumed = _resume(err, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "store/runs/sigint/metrics.json").exists()
    assert {name: (inference / name).stat().st_mtime_ns for name in finished} == finished  # kept, not redone
    assert len(list(inference.glob("shard-*.parquet"))) == 30


def _last_checkpoint(folder: Path) -> int:
    found = [int(p.stem.split("_")[1]) for p in folder.glob("model_*.pth")]
    assert found, f"no checkpoint in {folder}"
    return max(found)


def test_sigterm_while_training_stops_within_the_step_and_frees_the_run_id(tmp_path):
    make_sets(tmp_path, (4, 2, 2))
    config = _config(tmp_path, "sigterm")
    process = _start(["run", config, "--set", "teacher.iterations=5000", "--set", "teacher.checkpoint_every=5"],
                     tmp_path)
    teacher = tmp_path / "store/runs/sigterm/teacher"
    _wait_for(lambda: any(teacher.glob("model_*.pth")) or process.poll() is not None, 240, "a teacher checkpoint")
    assert process.poll() is None, process.communicate()[1][-2000:]
    reached = _last_checkpoint(teacher)
    code, took, err, left, _ = _stop(process, signal.SIGTERM)
    assert code == 143 and took < STOP_GUARD, (code, took, err[-2000:])
    # The stop is checked before each step: the step under way ends it, at most one checkpoint further
    # (two, if one was written between reading the folder and the signal).
    assert reached <= _last_checkpoint(teacher) <= reached + 2 * 5
    assert err.strip().splitlines()[-1].startswith("omnidistill: run sigterm stopped (interrupted by SIGTERM); "
                                                   "resume it with: ")
    assert "Traceback" not in err and not left, left
    assert not (tmp_path / "store/runs/sigterm/_lock.json").exists()


def test_a_run_cancelled_from_the_ui_stops_is_marked_cancelled_and_resumes(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    api = PREFECT_API_URL.value()
    make_sets(tmp_path, (4, 4, 2))
    # A teacher that still predicts people when it is done (at lr 0.005 it predicted none on these
    # images, and a run that keeps no pseudo-label fails).
    config = _config(tmp_path, "cancel", teacher={"iterations": 150, "batch_size": 2, "lr": 0.001,
                                                  "warmup_iters": 0, "checkpoint_every": 5})
    process = _start(["run", config], tmp_path, api)
    teacher = tmp_path / "store/runs/cancel/teacher"
    _wait_for(lambda: any(teacher.glob("model_*.pth")) or process.poll() is not None, 240, "a teacher checkpoint")
    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["cancel"])))[0]
        cancelled_at = time.monotonic()
        client.set_flow_run_state(run.id, Cancelling(message="cancelled in a test"), force=True)
        _, err = process.communicate(timeout=60)
        took = time.monotonic() - cancelled_at
        assert process.returncode == 1 and took < STOP_GUARD, (process.returncode, took, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("omnidistill: run cancel was cancelled; resume it with: ")
        assert client.read_flow_run(run.id).state.is_cancelled()
    assert not (tmp_path / "store/runs/cancel/_lock.json").exists()
    stopped_at = _last_checkpoint(teacher)
    assert 5 <= stopped_at < 150

    resumed = _resume(err, tmp_path, api)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "store/runs/cancel/metrics.json").exists()
    with get_client(sync_client=True) as client:  # the teacher went on from its checkpoint, as the UI shows
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["cancel"])))
        again = next(r for r in runs if r.id != run.id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[again.id])))
    assert again.state.is_completed()
    assert any(log.message.startswith(f"resumed from iteration {stopped_at} in ") for log in logs), sorted({log.message[:60] for log in logs})
