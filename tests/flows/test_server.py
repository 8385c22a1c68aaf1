import sqlite3

from flows.server import local_prefect_server


def test_a_local_server_records_this_process_s_flow_and_task_runs_under_its_home(tmp_path):
    """The UI address printed to the user is the API the flows talk to, and its history stays in ``home``."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    @task(name="server-probe-task")
    def double(x: int) -> int:
        return 2 * x

    @flow(name="server-probe")
    def probe() -> int:
        return double.submit(21).result()

    home = tmp_path / "home"
    with local_prefect_server(home) as ui:
        state = probe(return_state=True)
        with get_client(sync_client=True) as client:
            assert str(client.api_url).startswith(ui)
            run = client.read_flow_run(state.state_details.flow_run_id)
    assert state.result() == 42 and run.state.is_completed()
    with sqlite3.connect(home / "prefect.db") as db:
        flows = db.execute("select name from flow_run where id = ?", (str(run.id),)).fetchall()
        tasks = db.execute("select name from task_run where flow_run_id = ?", (str(run.id),)).fetchall()
    assert flows == [(run.name,)]
    assert len(tasks) == 1 and tasks[0][0].startswith("server-probe-task")


def test_a_local_server_does_not_outlive_the_process_that_started_it_even_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, time; from flows.server import local_prefect_server\n"
            f"with local_prefect_server({str(tmp_path / 'home')!r}) as ui:\n"
            "    print(ui, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert parent.stdout.readline().startswith("http://127.0.0.1:")  # the server is up
        servers = [int(p.name) for p in Path("/proc").glob("[0-9]*")
                   if _parent_of(p) == parent.pid and b"server" in _cmdline(p)]
        assert len(servers) == 1
        parent.send_signal(signal.SIGKILL)  # no cleanup runs: a kill -9, a crash, the OOM killer
        parent.wait()
        deadline = time.monotonic() + 20
        while _running(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(servers[0])
    finally:
        parent.kill()


def _parent_of(proc) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cmdline(proc) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
