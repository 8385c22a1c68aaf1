"""The distillation flow against a Prefect server on PostgreSQL, the database docker-compose.yml runs.

The server and the database are started by the test (deployments/local_postgres.py) from the
system's PostgreSQL binaries; the module is skipped, saying why, only where there are none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from deployments.local_postgres import (
    DATABASE,
    PASSWORD,
    USER,
    PostgresUnavailable,
    database_url,
    find_server_binaries,
    postgres_server,
)
from flows.server import SERVER_COMMAND, SERVER_SETTINGS, local_prefect_server
from tests.flows.conftest import local_config, make_sets

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres_prefect():
    """(UI address, database URL) of a Prefect server on a PostgreSQL server of its own."""
    try:
        find_server_binaries()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    folder = Path(tempfile.mkdtemp(prefix="omnidistill-pg-test-"))
    os.chmod(folder, 0o755)
    try:
        with postgres_server(folder) as url, local_prefect_server(folder / "prefect", database_url=url) as ui:
            yield ui, url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _query(url: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` read straight from the PostgreSQL database (not through Prefect)."""
    import asyncpg

    async def fetch() -> list[tuple]:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_the_distillation_flow_runs_on_a_postgres_backed_server(tmp_path, postgres_prefect):
    ui, url = postgres_prefect
    make_sets(tmp_path, (4, 6, 2))
    config = tmp_path / "pg.yaml"
    config.write_text(yaml.safe_dump(local_config(tmp_path, run_id="on-postgres").model_dump(mode="json")))
    env = {**os.environ, "PREFECT_API_URL": f"{ui}/api", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PREFECT_HOME": str(tmp_path / "client-home")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "store/runs/on-postgres/metrics.json").exists()
    # What the UI shows comes from PostgreSQL: the run, its labeling subflow and every shard task.
    runs = dict(_query(url, "SELECT name, state_type::text FROM flow_run"))
    assert runs["on-postgres"] == "COMPLETED"
    flows = _query(url, "SELECT f.name, r.state_type::text FROM flow_run r JOIN flow f ON f.id = r.flow_id")
    assert ("label-unlabeled", "COMPLETED") in flows
    expected = [("infer shard-00000", "COMPLETED"), ("infer shard-00001", "COMPLETED"),
                ("infer shard-00002", "COMPLETED")]
    shards, written = [], time.monotonic() + 15  # the server writes task runs' states in batches, every 5 s
    while shards != expected and time.monotonic() < written:
        time.sleep(0.5)
        shards = _query(url, "SELECT name, state_type::text FROM task_run WHERE name LIKE 'infer shard-%' ORDER BY name")
    assert shards == expected  # 6 unlabeled images, shards of 2


def test_docker_compose_runs_what_the_tests_run():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    server = compose["prefect-server"]
    assert server["command"].split()[:3] == list(SERVER_COMMAND)
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == database_url("postgres", 5432)
    assert {key: server["environment"].get(key) for key in SERVER_SETTINGS} == SERVER_SETTINGS
    db = compose["postgres"]
    assert (db["environment"]["POSTGRES_USER"], db["environment"]["POSTGRES_PASSWORD"],
            db["environment"]["POSTGRES_DB"]) == (USER, PASSWORD, DATABASE)
    try:
        version = find_server_binaries().parent.name  # /usr/lib/postgresql/<version>/bin
    except PostgresUnavailable:
        version = None
    if version and version.isdigit():  # the image runs the major version the tests ran
        assert db["image"].split(":")[1].split("-")[0] == version


def _servers_on(data: Path) -> list[int]:
    """Pids of processes whose command line names the PostgreSQL data folder ``data``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(data) in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_sigterm_stops_both_servers_and_a_folder_that_exists_keeps_its_permissions():
    try:
        find_server_binaries()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    top = Path(tempfile.mkdtemp(prefix="omnidistill-pg-test-"))  # pytest's tmp_path is not searchable by others
    os.chmod(top, 0o755)
    folder = top / "shared like tmp"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "deployments.local_postgres", str(folder)], env=env,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = process.stderr.readline()
        assert "Prefect UI and API on PostgreSQL: http://127.0.0.1:" in line, line
        assert _servers_on(folder / "postgres" / "data")
        process.terminate()
        assert process.wait(timeout=60) == 0
        assert _servers_on(folder / "postgres" / "data") == []  # PostgreSQL, a daemon, was stopped too
        assert oct(folder.stat().st_mode & 0o7777) == oct(0o1777)
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(top, ignore_errors=True)


def test_a_folder_pg_ctl_would_expand_in_its_shell_is_refused(tmp_path):
    with pytest.raises(PostgresUnavailable, match=r"may hold letters, digits, spaces and ._\+,:@%=- only"):
        with postgres_server(tmp_path / "inj$(id>PWNED)"):
            pass
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "inj$(id>PWNED)").exists()
