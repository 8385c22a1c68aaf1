"""How often a Prefect server refuses a worker's heartbeat while a flow run writes: SQLite vs PostgreSQL.

A ``prefect server start`` as omnidistill starts it (flows/server.py), a process worker polling a
``cpu`` pool and sending a heartbeat every ``--every`` seconds, and ``--writers`` clients sending
batches of 50 log records as fast as the server takes them (a flow run's logs and events). At the end
it counts the heartbeats the server logged as failed ("Worker channel heartbeat persistence failed";
about ``seconds / every`` were due), by the first exception in each record's traceback, and reads the
worker's status and last heartbeat as the server has them (a worker that misses a few heartbeats is
OFFLINE: under this load a SQLite server also records them late, or not for a while).

On SQLite, Prefect 3.9 records a channel heartbeat in a transaction that reads the work pool and then
writes the worker; a write committed in between makes SQLite refuse it at once ("database is locked":
its busy timeout does not apply to a read that turns into a write). tests/deployments/test_schedules.py
tolerates at most 3 such records, on SQLite only.

    python bench/sqlite_heartbeats.py --seconds 60 [--database postgres] [--every 1] [--writers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAILED = "Worker channel heartbeat persistence failed"


async def _write_logs(until: float, writers: int) -> int:
    """Batches of 50 log records from ``writers`` clients at once until ``until``; the batches sent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate

    sent = 0
    async with get_client() as client:
        while time.monotonic() < until:
            batch = [LogCreate(name="bench", level=20, message="m" * 100, timestamp=datetime.now(timezone.utc))] * 50
            await asyncio.gather(*[client.create_logs(batch) for _ in range(writers)])
            sent += writers
    return sent


def _failures(log: str) -> Counter[str]:
    """The failed heartbeats of a server log, by the first exception line of each record's traceback."""
    ends: Counter[str] = Counter()
    records = re.split(r"(?m)^(?=\d\d:\d\d:\d\d\.\d+ \| )", re.sub(r"\x1b\[[0-9;]*m", "", log))
    for record in records:
        if FAILED in record.split("\n", 1)[0]:
            exceptions = [line for line in record.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
            ends[exceptions[0] if exceptions else "(no exception line)"] += 1
    return ends


def measure(home: Path, seconds: float, every: int, writers: int, database_url: str | None) -> dict:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from flows.server import _ends_with_parent, local_prefect_server

    with local_prefect_server(home, database_url=database_url) as ui:
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="cpu", type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()),
                                    overwrite=True)
        env = {**os.environ, "PREFECT_API_URL": f"{ui}/api", "PREFECT_HOME": str(home / "worker-home"),
               "PREFECT_WORKER_HEARTBEAT_SECONDS": str(every), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        with open(home / "worker.log", "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu",
                                       "--type", "process"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_ends_with_parent)
        try:
            batches = asyncio.run(_write_logs(time.monotonic() + seconds, writers))
            with get_client(sync_client=True) as client:
                workers = client.read_workers_for_work_pool("cpu")
            ended = datetime.now(timezone.utc)
        finally:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=30)
            if worker.poll() is None:
                worker.kill()
    failures = _failures((home / "server.log").read_text(errors="replace"))
    return {"database": "postgres" if database_url else "sqlite", "seconds": seconds, "heartbeat_every_s": every,
            "heartbeats_due": int(seconds // every), "writers": writers, "log_batches": batches,
            "heartbeats_failed": sum(failures.values()), "failed_with": dict(failures),
            "workers_at_end": [{"status": str(getattr(w.status, "value", w.status)),
                                "last_heartbeat_s_ago": round((ended - w.last_heartbeat_time).total_seconds(), 1)}
                               for w in workers]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writers write (default 60)")
    parser.add_argument("--every", type=int, default=1, help="the worker's heartbeat period, s (default 1; Prefect's 30)")
    parser.add_argument("--writers", type=int, default=4, help="clients writing logs at once (default 4)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the server's and the worker's logs (printed)")
    args = parser.parse_args(argv)
    if args.every < 1 or not (math.isfinite(args.seconds) and args.seconds > 0) or args.writers < 1:
        parser.error("--every and --writers must be at least 1, --seconds a number above 0")
    folder = Path(tempfile.mkdtemp(prefix="omnidistill-heartbeats-"))
    os.chmod(folder, 0o755)  # reachable by the postgres account
    try:
        if args.database == "postgres":
            from deployments.local_postgres import postgres_server

            with postgres_server(folder / "pg") as url:
                result = measure(folder / "home", args.seconds, args.every, args.writers, url)
        else:
            result = measure(folder / "home", args.seconds, args.every, args.writers, None)
    except BaseException:
        print(f"stopped; the server's and the worker's logs are in {folder / 'home'}", file=sys.stderr)
        raise
    if args.keep:
        print(f"the server's and the worker's logs: {folder / 'home'}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
