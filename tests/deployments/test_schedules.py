"""The ops path: a schedule on the server creates a run of the distill deployment, a process worker
runs it to Completed, with a shard that fails once and is retried inside that run.

On a plain ``prefect server start`` (SQLite) and on PostgreSQL (deployments/local_postgres.py).
Nothing is faked on the Prefect side: the deployment is made with ``prefect deploy`` from
deployments/prefect.yaml's ``distill-cpu`` (its parameters pointed at tiny local sets), the run is
created by the server's scheduler service, and ``prefect worker start`` runs it in a process of its
own. The only fault injected is the storage's: one unlabeled image fails to read once with a
connection error (a flaky bucket), in the flow run's process, through the ``sitecustomize`` below.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from dd_core.storage import read_json
from deployments.local_postgres import PostgresUnavailable, find_server_binaries, postgres_server
from flows.server import local_prefect_server
from tests.flows.conftest import local_config, make_sets

ROOT = Path(__file__).resolve().parents[2]

# The server's scheduler looks at recently changed deployments every second (default 5) and at all
# of them every 2 s (default 60); the worker asks every second (default 10) for runs due within 1 s
# (default 10).
SERVER_LOOPS = {"PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3"}  # not 100 (an hour of runs every 10 s)
WORKER_SETTINGS = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
POOL = "cpu"
EVERY = 10  # seconds between the schedule's runs: the first comes at most this long after the deploy
FAILS_ONCE = "001003.png"  # the first image of shard-00001 (4 unlabeled images, shards of 2)

# Loaded by every Python process the worker starts (PYTHONPATH): ``flaky://`` is the local disk,
# except that the image named in OMNIDISTILL_TEST_FAIL_ONCE fails once per process with a
# ConnectionError; each failure is appended to OMNIDISTILL_TEST_FAILURES. The flaky bucket of
# tests/flows/test_interruptions.py, for a flow run in another process.
SITECUSTOMIZE = '''
import os, threading
import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

class FlakyFileSystem(DirFileSystem):
    protocol = ("flaky",)
    fail_once = set(filter(None, os.environ.get("OMNIDISTILL_TEST_FAIL_ONCE", "").split(",")))
    _lock = threading.Lock()

    def __init__(self, *args, **kwargs):  # flaky://tmp/x is /tmp/x
        super().__init__(*args, path="/", fs=LocalFileSystem(), **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        name = os.path.basename(path)
        with self._lock:
            if name in self.fail_once:
                self.fail_once.discard(name)
                with open(os.environ["OMNIDISTILL_TEST_FAILURES"], "a") as out:
                    out.write(name + "\\n")
                raise ConnectionError(f"flaky://{path}: connection reset by peer")
        return super().cat_file(path, start, end, **kwargs)

fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
'''


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def scheduling_server(request, tmp_path_factory):
    """(UI address, server log, database) of a ``prefect server start`` whose scheduler loops every few seconds."""
    home = tmp_path_factory.mktemp(f"server-{request.param}")
    with pytest.MonkeyPatch.context() as env:
        for key, value in SERVER_LOOPS.items():
            env.setenv(key, value)
        if request.param == "sqlite":
            with local_prefect_server(home) as ui:
                yield ui, home / "server.log", request.param
            return
        try:
            find_server_binaries()
        except PostgresUnavailable as e:
            pytest.skip(str(e))
        folder = Path(tempfile.mkdtemp(prefix="omnidistill-schedule-pg-"))  # reachable by the postgres account
        os.chmod(folder, 0o755)
        try:
            with postgres_server(folder) as url, local_prefect_server(home, database_url=url) as ui:
                yield ui, home / "server.log", request.param
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _deployment_file(folder: Path, config: dict) -> Path:
    """deployments/prefect.yaml with only ``distill-cpu``, its config replaced, on an interval schedule
    and with one run at a time (as the README advises for a scheduled deployment)."""
    project = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    [deployment] = [d for d in project["deployments"] if d["name"] == "distill-cpu"]
    deployment["parameters"] = {"config": config}
    deployment["schedules"] = [{"interval": EVERY}]
    deployment["concurrency_limit"] = 1
    project["deployments"] = [deployment]
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


def _prefect(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-3000:]}"


def _runs(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return sorted(runs, key=lambda r: r.expected_start_time)


def _wait(client, deployment_id, until, worker: subprocess.Popen, worker_log: Path, what: str, timeout: float):
    """The deployment's flow runs once ``until(runs)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs(client, deployment_id)
        if until(runs):
            return runs
        assert worker.poll() is None, f"the worker exited ({worker.returncode}): {worker_log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s; the deployment's runs: "
                       f"{[(r.name, r.state_name, str(r.expected_start_time)) for r in runs]}")


def _delete_untaken(client, runs) -> None:
    """Deletes the runs that no worker has taken (Scheduled, Late, AwaitingConcurrencySlot: type SCHEDULED)."""
    from prefect.client.schemas.objects import StateType

    for run in runs:
        if run.state_type == StateType.SCHEDULED:
            client.delete_flow_run(run.id)


def _stop(worker: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stops the worker and every process under it: its process group (started with
    ``start_new_session``) and the flow run's process, which Prefect starts in a session of its own."""
    try:
        children = psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=timeout)
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)


def _shard_task_runs(flow_run_id, expected: int, timeout: float = 20.0):
    """The ``infer shard-*`` task runs under the labeling subflow of ``flow_run_id``, once ``expected``
    of them are Completed (the server writes task-run states in batches, every 5 s)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [r.id for r in subflows] or [flow_run_id]
            runs = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}))
                    if t.name.startswith("infer shard-")]
            if sum(t.state_type == "COMPLETED" for t in runs) == expected or time.monotonic() > deadline:
                return sorted(runs, key=lambda t: t.name)
            time.sleep(0.5)


RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")  # a Prefect log record's first line: "08:18:18.812 | ERROR   | ..."
COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # FORCE_COLOR in the environment colours the level names

# Prefect 3.9's worker channel records a heartbeat in a transaction that reads the work pool, then
# writes the worker: on SQLite, a write committed in between (the flow run's logs and events) makes
# SQLite refuse it at once ("database is locked"; its busy timeout does not apply to a read turned
# write). The server logs the record below and closes the worker's channel; the worker reconnects and
# its next heartbeat is recorded. PostgreSQL (docker-compose.yml) does not do this
# (bench/sqlite_heartbeats.py). Tolerated on SQLite only, in exactly this shape, at most 3 times.
HEARTBEAT_REFUSED = re.compile(r"^\S+ \| ERROR +\| prefect\.server\.utilities\.worker_channel - "
                               r"Worker channel heartbeat persistence failed: ")
SQLITE_LOCKED = ["sqlite3.OperationalError: database is locked",
                 "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked"]
CHAINED = {"", "Traceback (most recent call last):",
           "The above exception was the direct cause of the following exception:"}
SQLALCHEMY_TAIL = ("[SQL: ", "[parameters: ", "(Background on this error at: ")
MOST_REFUSED = 3


def _heartbeat_refused_by_sqlite(record: list[str]) -> bool:
    """Whether a log record is the heartbeat SQLite refused: its header, a traceback whose exceptions are
    exactly SQLite's lock and SQLAlchemy's around it, and SQLAlchemy's statement lines; nothing else."""
    if not HEARTBEAT_REFUSED.match(record[0]):
        return False
    unindented = [line for line in record[1:] if not line.startswith(" ")]
    exceptions = [line for line in unindented if line not in CHAINED and not line.startswith(SQLALCHEMY_TAIL)]
    return exceptions == SQLITE_LOCKED


def _problems_in(log: str, database: str) -> list[str]:
    """The records of a server log that say something went wrong (an ERROR or CRITICAL, or a traceback),
    each as its first line and last line; on SQLite, up to :data:`MOST_REFUSED` refused heartbeats
    (:func:`_heartbeat_refused_by_sqlite`) are not."""
    records: list[list[str]] = [[]]
    for line in COLOUR.sub("", log).splitlines():
        if RECORD.match(line):
            records.append([])
        records[-1].append(line)
    problems, refused = [], []
    for record in filter(None, records):
        text = "\n".join(record)
        if "Traceback (most recent call last)" not in text and not re.search(r"\b(ERROR|CRITICAL)\b", text):
            continue
        summary = f"{record[0]} [...] {record[-1]}" if len(record) > 1 else record[0]
        (refused if database == "sqlite" and _heartbeat_refused_by_sqlite(record) else problems).append(summary)
    return problems + (refused if len(refused) > MOST_REFUSED else [])


def test_only_a_few_heartbeats_sqlite_refused_are_tolerated_in_a_server_log():
    refused = (Path(__file__).parent / "heartbeat_refused_on_sqlite.log").read_text()  # a real record
    header, last = refused.splitlines()[0], refused.splitlines()[-1]
    info = "08:18:19.001 | INFO    | prefect.server - ok\n"
    assert _problems_in(info + refused + info, "sqlite") == []
    assert _problems_in(info + refused * MOST_REFUSED, "sqlite") == []
    assert _problems_in(refused * (MOST_REFUSED + 1), "sqlite") == [f"{header} [...] {last}"] * (MOST_REFUSED + 1)
    assert _problems_in(info + refused, "postgres") == [f"{header} [...] {last}"]
    # The same header with another exception in the chain, or after it; or the locked error elsewhere.
    other = refused.replace("sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked",
                            "RuntimeError: Worker channel work pool no longer exists")
    after = refused + "Exception in thread Thread-3:\nTraceback (most recent call last):\nZeroDivisionError: x\n"
    elsewhere = refused.replace("worker_channel - Worker channel heartbeat persistence failed",
                                "scheduler - Unexpected error in: Scheduler")
    stdlib = refused + "ERROR:asyncio:Task exception was never retrieved\n"
    assert [len(_problems_in(log, "sqlite")) for log in (other, after, elsewhere, stdlib)] == [1, 1, 1, 1]
    # Lines that do not look like a record are problems too: coloured, CRITICAL, before the first record.
    assert _problems_in("08:18:20.000 | \x1b[31mERROR\x1b[0m   | prefect.server - lost\n", "sqlite") == [
        "08:18:20.000 | ERROR   | prefect.server - lost"]
    assert _problems_in("08:18:20.000 | CRITICAL | prefect.server - gone\n", "sqlite") != []
    assert _problems_in("Traceback (most recent call last):\nValueError: at start-up\n" + info, "sqlite") == [
        "Traceback (most recent call last): [...] ValueError: at start-up"]


def test_a_schedule_creates_a_run_that_a_process_worker_completes(scheduling_server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.workers.process import ProcessWorker

    ui, server_log, database = scheduling_server
    make_sets(tmp_path, (4, 4, 2))
    config = local_config(tmp_path, run_id=None, unlabeled={"images": f"flaky:/{tmp_path}/unlabeled/images"})
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    failures = tmp_path / "failures.txt"
    env = {**os.environ, "PREFECT_API_URL": f"{ui}/api", "PREFECT_HOME": str(tmp_path / "client-home"),
           "OMNIDISTILL_HOME": str(ROOT), "OMP_NUM_THREADS": "1"}
    # The worker's processes (the flow run's among them) load hooks/sitecustomize.py before anything else.
    path = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
    worker_env = {**env, **WORKER_SETTINGS, "PYTHONPATH": path,
                  "OMNIDISTILL_TEST_FAIL_ONCE": FAILS_ONCE, "OMNIDISTILL_TEST_FAILURES": str(failures)}

    with get_client(sync_client=True) as client:  # as `prefect work-pool create cpu --type process` (8 s under load)
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()),
                                overwrite=True)
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as out:  # --limit 1: runs that come due meanwhile wait (Late), untaken
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
                                   "process", "--limit", "1"], cwd=tmp_path, env=worker_env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        prefect_file = _deployment_file(tmp_path, config.model_dump(mode="json"))
        _prefect("--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", "distill-cpu", env=env)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("data-distillation/distill-cpu")
            assert deployment.global_concurrency_limit.limit == 1  # prefect.yaml's concurrency_limit
            [schedule] = deployment.schedules
            # The scheduler made the next runs; once the worker took the first (Pending or later; a
            # Late run is still of type SCHEDULED), the schedule is paused, as `prefect deployment
            # schedule pause` does. A scheduler pass that read the schedule before the pause may still
            # insert runs: every untaken run is deleted while the first one runs, and once more after
            # the worker is stopped, so none can start after it.
            taken = _wait(client, deployment.id, lambda runs: any(r.state_type != StateType.SCHEDULED for r in runs),
                          worker, worker_log, "the worker takes the schedule's first run", timeout=EVERY + 60)
            [first] = [r for r in taken if r.state_type != StateType.SCHEDULED]
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)

            def first_ended(runs):
                _delete_untaken(client, runs)
                return any(r.id == first.id and r.state.is_final() for r in runs)

            _wait(client, deployment.id, first_ended, worker, worker_log, "the first run ends", timeout=300)
    finally:
        _stop(worker)
    with get_client(sync_client=True) as client:
        _delete_untaken(client, _runs(client, deployment.id))
        runs = _runs(client, deployment.id)
        run = client.read_flow_run(first.id)

    assert run.state_name == "Completed", f"{run.state}: {worker_log.read_text()[-4000:]}"
    # Exactly one run of the schedule completed: the first (a run the worker might take between the
    # first's end and its own stop cannot have completed).
    assert [r.id for r in runs if r.state_type == StateType.COMPLETED] == [run.id], [
        (r.name, r.state_name) for r in runs]
    assert run.auto_scheduled  # made by the server's scheduler
    assert run.name == f"flow-{run.id}"
    outputs = tmp_path / "store/runs" / f"flow-{run.id}"
    assert set(read_json(str(outputs / "metrics.json"))) == {"teacher", "teacher_tta", "student", "student_tta"}
    assert (outputs / "report.md").exists() and not (outputs / "_lock.json").exists()
    manifest = read_json(str(outputs / "inference/_manifest.json"))
    assert (manifest["num_images"], len(manifest["shards"]), manifest["num_rejected"]) == (4, 2, 0)

    # One read failed, once, in the flow run's process; its shard's task ran twice, within this flow run.
    assert failures.read_text().split() == [FAILS_ONCE]
    shards = _shard_task_runs(run.id, expected=2)
    assert [(t.name, t.state_type.value) for t in shards] == [("infer shard-00000", "COMPLETED"),
                                                              ("infer shard-00001", "COMPLETED")]
    assert sorted(t.run_count for t in shards) == [1, 2]

    problems = _problems_in(server_log.read_text(errors="replace"), database)
    assert problems == [], f"{len(problems)} error records in {server_log}, the first: {problems[:3]}"
