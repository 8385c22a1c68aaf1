"""CPU a Prefect server on PostgreSQL uses while nothing runs (issue 18: the server shares the cores
the shards label on; see BENCHMARKS.md, "Round 4").

    python bench/server_idle.py [--seconds 60]

Starts PostgreSQL and a Prefect server as the rehearsal does (``deployments.local_postgres``), waits
10 s after it is healthy, then reports the CPU seconds per 100 s of the server's processes and of
PostgreSQL's over ``--seconds``. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rehearsal_full import _cpu_seconds, _tree  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    from deployments.local_postgres import prefect_server_on_postgres

    folder = Path(tempfile.mkdtemp(prefix="omnidistill-idle-", dir="/tmp"))
    folder.chmod(0o755)  # PostgreSQL's account must reach it
    try:
        with prefect_server_on_postgres(folder / "pg") as ui:
            database_pid = int((folder / "pg" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
            time.sleep(10)

            def sample() -> tuple[float, float]:
                database = _tree(database_pid)
                server = [p for p in _tree(os.getpid())[1:] if p.pid not in {d.pid for d in database}]
                return _cpu_seconds(server), _cpu_seconds(database)

            before = sample()
            time.sleep(args.seconds)
            after = sample()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_100 = 100.0 / args.seconds
    print(json.dumps({"server": ui, "seconds": args.seconds,
                      "server_cpu_s_per_100_s": round((after[0] - before[0]) * per_100, 2),
                      "database_cpu_s_per_100_s": round((after[1] - before[1]) * per_100, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
