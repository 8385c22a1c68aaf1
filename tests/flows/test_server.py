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
