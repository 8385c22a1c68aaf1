"""A Prefect API for a command: the user's (``PREFECT_API_URL``) or a local server we start and stop.

Prefect's ephemeral mode needs no set-up but its UI disappears with the process and it prints
"Error flushing events" tracebacks at exit; a local ``prefect server start`` (SQLite under
``PREFECT_HOME``) gives the user a UI address to watch the run and keeps its history.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from dd_core.ops.stop import PROCESS

SERVER_COMMAND = ("prefect", "server", "start")
"""How every Prefect server we run starts (here, in docker-compose.yml, in the rehearsal)."""

SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
                   "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200"}
"""The settings every Prefect server we run starts with (here, in docker-compose.yml, in the
rehearsal). Prefect's task run recorder writes each state of each task run in a transaction of its
own by default, which costs the server (and the database) CPU time on the cores the shards label
on. In batches (of 100 task-run states and 200 events, or whatever came in the last 5 s) it costs
much less. A task run's state reaches the UI up to 5 s later."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ends_with_parent() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the process that started it
    dies, even by SIGKILL or a crash, so that no server is left behind holding its port and memory."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_healthy(api_url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} was not ready after {timeout:.0f} s")


def _drain_to_server(timeout: float = 10.0) -> None:
    """Send queued logs and events while the server is still up, not at exit after it stopped
    (which prints "Error logging to API" after the run's last line)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)


def _stop_server(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the server's process group (it started one of its own), SIGKILL after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def local_prefect_server(home: str | Path, keep: bool = False, timeout: float = 120.0,
                         database_url: str | None = None) -> Iterator[str]:
    """Start ``prefect server start`` on a free loopback port; yields the UI address.

    Its database is SQLite under ``home`` unless ``database_url`` names another
    (``postgresql+asyncpg://...``, as docker-compose.yml runs it; see deployments/local_postgres.py).
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**SERVER_SETTINGS, **os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", *SERVER_COMMAND, "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, preexec_fn=None if keep else _ends_with_parent)
    api_url = f"http://127.0.0.1:{port}/api"
    previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    try:
        _wait_healthy(api_url, process, timeout)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # The variable for child processes (Dask workers, torchrun); the settings for this one:
        # Prefect reads the environment once, at import, and would otherwise go on talking to its
        # own ephemeral server (the user's ~/.prefect database), not to the UI printed for them.
        # Log and event workers started before keep their server: flush and stop them, so that
        # the next ones (task runs are recorded from events) start with this server's address.
        _drain_to_server()
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield f"http://127.0.0.1:{port}"
            finally:  # a failed run's last logs too, or they are sent at exit to a stopped server
                _drain_to_server(timeout=2.0 if PROCESS.reason() else 10.0)  # a stopped run must exit fast
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not keep:
            _stop_server(process, grace=3.0 if PROCESS.reason() else 20.0)
        log.close()


@contextlib.contextmanager
def prefect_api(home: str | Path | None = None, keep: bool = False) -> Iterator[str]:
    """Use ``PREFECT_API_URL`` when set; otherwise a local server under ``home`` (default: ``PREFECT_HOME``,
    else ~/.prefect)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url.removesuffix("/api")
        return
    home = home or os.environ.get("PREFECT_HOME") or Path.home() / ".prefect"
    with local_prefect_server(home, keep=keep) as ui:
        yield ui
