import os
import socket
import subprocess
import sys
import time

import pytest

from dd_core.storage import exists, join, read_json, write_json_atomic
from dd_core.storage.lock import RunLock, RunLockedError, lock_is_live


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_run_refuses_a_second_one_and_releases_at_the_end(tmp_path):
    url = str(tmp_path / "runs/r1/_lock.json")
    with RunLock(url, label="first"):
        held = read_json(url)
        assert held["pid"] == os.getpid() and held["label"] == "first"
        with pytest.raises(RunLockedError, match=r"_lock.json: this run id is live in another process \(first on"):
            with RunLock(url, label="second"):
                pass
        assert read_json(url)["owner"] == held["owner"]  # the refused run did not take it
    assert not exists(url)


def test_a_lock_left_by_a_killed_process_or_a_silent_host_is_taken_over(tmp_path):
    url = str(tmp_path / "_lock.json")
    now = time.time()
    dead = {"owner": "x", "host": socket.gethostname(), "pid": _dead_pid(), "heartbeat": now, "started": now}
    assert not lock_is_live(dead, stale_after=300)
    silent = {"owner": "y", "host": "elsewhere", "pid": 1, "heartbeat": now - 600, "started": now - 900}
    assert not lock_is_live(silent, stale_after=300) and lock_is_live({**silent, "heartbeat": now}, 300)
    for record in (dead, silent):
        write_json_atomic(url, record)
        with RunLock(url):
            assert read_json(url)["pid"] == os.getpid()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    url = str(tmp_path / "_lock.json")
    with RunLock(url, heartbeat=0.05):
        first = read_json(url)["heartbeat"]
        time.sleep(0.3)
        assert read_json(url)["heartbeat"] > first


def test_locks_on_s3(s3):
    bucket, options = s3
    url = join(bucket, "runs/a/_lock.json")
    with RunLock(url, options):
        with pytest.raises(RunLockedError):
            RunLock(url, options).__enter__()
    assert not exists(url, options)
