import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from dd_core.ops.stop import PROCESS, StopRequested
from dd_core.storage import (
    exists,
    join,
    list_files,
    parent,
    read_bytes,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from dd_core.storage import lock as lock_module
from dd_core.storage.host import pid_runs, process_space
from dd_core.storage.lock import RunLock, RunLockedError, RunLockLost, lock_is_live

HERE = process_space()  # host, boot id and PID namespace of this process: where its pids mean something


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_run_refuses_a_second_one_and_releases_at_the_end(tmp_path):
    url = str(tmp_path / "runs/r1/_lock.json")
    with RunLock(url, holder="first"):
        held = read_json(url)
        assert held["pid"] == os.getpid() and held["holder"] == "first"
        with pytest.raises(RunLockedError, match=r"_lock.json: this run id is live in another process \(first on"):
            with RunLock(url, holder="second"):
                pass
        assert read_json(url)["owner"] == held["owner"]  # the refused run did not take it
    assert not exists(url)


def test_a_lock_left_by_a_killed_process_or_a_silent_host_is_taken_over(tmp_path):
    url = str(tmp_path / "_lock.json")
    now = time.time()
    dead = {"owner": "x", **HERE, "pid": _dead_pid(), "heartbeat": now, "started": now}
    assert not lock_is_live(dead, stale_after=300)
    silent = {"owner": "y", "host": "elsewhere", "pid": 1, "heartbeat": now - 600, "started": now - 900}
    assert not lock_is_live(silent, stale_after=300) and lock_is_live({**silent, "heartbeat": now}, 300)
    for record in (dead, silent):
        write_json_atomic(url, record)
        os.utime(url, (record["heartbeat"], record["heartbeat"]))  # as the storage's clock saw its last beat
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
        with pytest.raises(RunLockedError, match=r"runs/a/_lock.json: this run id is live in another process"):
            RunLock(url, options).__enter__()
    assert not exists(url, options)


# --- Races: of many starts at the same moment exactly one takes the lock ---------------------------


def _context():
    """Processes forked from a fork server that has imported the lock and s3fs once (forking pytest,
    which runs moto's and fsspec's threads, could deadlock; spawn would import everything 16 times)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.storage.lock_racers", "s3fs"])
    return context


def _race(url: str, options, racers: int, stale_after: float = 300.0, heartbeat: float = 60.0) -> None:
    """Start ``racers`` processes at once; exactly one holds the lock, every other is refused."""
    from tests.storage.lock_racers import race_for_lock

    context = _context()
    start, finish, results = context.Barrier(racers), context.Event(), context.Queue()
    processes = [context.Process(target=race_for_lock, args=(url, options, start, finish, results, stale_after,
                                                             heartbeat))
                 for _ in range(racers)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=60) for _ in processes]
        winners = [pid for outcome, pid in outcomes if outcome == "won"]
        assert sorted(outcome for outcome, _ in outcomes) == ["locked"] * (racers - 1) + ["won"], outcomes
        assert read_json(url, options)["pid"] == winners[0]  # the lock on storage is the winner's
    finally:
        finish.set()
        for process in processes:
            process.join(timeout=60)
    assert not exists(url, options)  # the winner released it
    assert [n for n in list_files(parent(url), options=options) if ".takeover-" in n] == []  # no markers left


def test_of_sixteen_local_starts_at_once_exactly_one_takes_the_lock(tmp_path):
    for trial in range(3):
        _race(str(tmp_path / f"runs/r{trial}/_lock.json"), None, racers=16)


def test_of_twelve_s3_starts_at_once_exactly_one_takes_the_lock(s3):
    bucket, options = s3
    for trial in range(2):
        _race(join(bucket, f"runs/r{trial}/_lock.json"), options, racers=12)


def test_of_many_starts_over_a_dead_runs_lock_exactly_one_takes_it_over(tmp_path):
    url = str(tmp_path / "runs/r/_lock.json")
    for trial in range(2):
        now = time.time()
        write_json_atomic(url, {"owner": f"dead{trial}", **HERE, "pid": _dead_pid(), "heartbeat": now, "started": now})
        _race(url, None, racers=12)


def test_of_many_s3_starts_over_a_silent_runs_lock_exactly_one_takes_it_over(s3):
    bucket, options = s3
    url = join(bucket, "runs/r/_lock.json")
    now = time.time()
    write_json_atomic(url, {"owner": "silent", "host": "elsewhere", "pid": 1, "heartbeat": now,
                            "started": now - 1000}, options)
    time.sleep(4.5)  # S3 cannot backdate an object: its LastModified (whole seconds) goes stale instead
    _race(url, options, racers=12, stale_after=3.0, heartbeat=0.3)


def test_a_takeover_marker_left_by_a_dead_start_does_not_block_the_next(tmp_path):
    from dd_core.storage.lock import _owner_key

    url = str(tmp_path / "_lock.json")
    now = time.time()
    stale = {"owner": "x", **HERE, "pid": _dead_pid(), "heartbeat": now, "started": now}
    write_json_atomic(url, stale)
    marker = f"{url}.takeover-{_owner_key(stale)}-0"
    write_json_atomic(marker, {**stale, "owner": "a start that died mid-takeover"})
    with RunLock(url):
        assert read_json(url)["pid"] == os.getpid()
        assert sorted(os.listdir(tmp_path)) == ["_lock.json"]  # both markers are gone


def test_a_live_takeover_marker_makes_the_next_start_wait_then_give_up(tmp_path, monkeypatch):
    import dd_core.storage.lock as lock_module

    monkeypatch.setattr(lock_module, "TAKEOVER_PATIENCE", 0.2)
    url = str(tmp_path / "_lock.json")
    now = time.time()
    stale = {"owner": "x", "host": "elsewhere", "pid": 1, "heartbeat": now - 900, "started": now - 900}
    write_json_atomic(url, stale)
    os.utime(url, (now - 900, now - 900))
    busy = {"owner": "y", **HERE, "pid": os.getpid(), "heartbeat": now, "started": now}
    write_json_atomic(f"{url}.takeover-{lock_module._owner_key(stale)}-0", busy)
    with pytest.raises(RunLockedError, match=r"_lock.json: could not take the run lock within 0.2 s"):
        RunLock(url).__enter__()
    assert read_json(url) == stale  # untouched: the other start is deleting it


def test_a_run_whose_lock_was_taken_stops_at_once_and_never_ends_as_a_success(tmp_path, caplog):
    url = str(tmp_path / "_lock.json")
    now = time.time()
    other = {"owner": "other", "holder": "flow run 42", "host": "elsewhere", "pid": 7, "heartbeat": now,
             "started": now}
    PROCESS.clear()
    with caplog.at_level(logging.ERROR, logger="dd_core.storage.lock"):
        with pytest.raises(RunLockLost, match=r"^the run lock .*_lock.json was taken by flow run 42 on elsewhere, "
                                              r"pid 7; this run stops$"):
            with RunLock(url, heartbeat=0.02, stop=PROCESS) as lock:
                PROCESS.check()  # nothing to stop yet
                write_json_atomic(url, other)  # as if our heartbeat had stalled and another start took over
                lock._thread.join(timeout=2)
                assert not lock._thread.is_alive() and read_json(url) == other  # not overwritten
                PROCESS.clear()  # what a labeling does as it starts: the lost lock still stops every loop
                with pytest.raises(StopRequested, match=r"^stopped: the run lock .* was taken by flow run 42"):
                    PROCESS.check()
    PROCESS.check()  # outside the block the condition is gone
    assert read_json(url) == other  # and leaving the block did not remove the other run's lock
    assert "_lock.json was taken by flow run 42 on elsewhere, pid 7; this run stops" in caplog.text


def test_a_signal_that_ends_a_run_whose_lock_was_taken_stays_a_signal(tmp_path):
    url = str(tmp_path / "_lock.json")
    with pytest.raises(KeyboardInterrupt):
        with RunLock(url, heartbeat=0.02) as lock:
            remove_lock = tmp_path / "_lock.json"
            remove_lock.unlink()
            lock._thread.join(timeout=2)
            assert lock.lost == f"the run lock {url} was removed by someone else; this run stops"
            raise KeyboardInterrupt


def test_an_unreadable_lock_is_refused_not_overwritten(tmp_path):
    url = str(tmp_path / "_lock.json")
    write_bytes_atomic(url, b"{half")
    with pytest.raises(RunLockedError, match=r"_lock.json: not a run lock record .*delete that file"):
        RunLock(url).__enter__()
    assert read_bytes(url) == b"{half"


def test_a_lost_s3_race_raises_file_exists_and_so_does_a_conflict(s3):
    """moto (like S3) answers a second If-None-Match PUT with 412 PreconditionFailed, which s3fs raises
    as FileExistsError; S3's 409 ConditionalRequestConflict (a conditional write in flight) is one too."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from dd_core.storage.fs import _error_code, write_bytes_exclusive

    bucket, options = s3
    write_bytes_exclusive(join(bucket, "k"), b"1", options)
    with pytest.raises(FileExistsError, match="/k: already exists") as caught:
        write_bytes_exclusive(join(bucket, "k"), b"2", options)
    assert _error_code(caught.value.__cause__) == "PreconditionFailed"
    assert read_bytes(join(bucket, "k"), options) == b"1"
    conflict = ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "retry"},
                            "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
    assert _error_code(translate_boto_error(conflict)) == "ConditionalRequestConflict"


@pytest.mark.parametrize("fields", [
    {"pid": "abc"}, {"pid": 2**70}, {"pid": None}, {"pid": 0}, {"pid": -1}, {"heartbeat": None},
    {"heartbeat": "soon"}, {"heartbeat": float("nan")},
])
def test_a_lock_with_fields_that_make_no_sense_is_stale_not_a_crash(tmp_path, fields):
    now = time.time()
    record = {"owner": "other", **HERE, "pid": 1, "heartbeat": now, "started": now, **fields}
    url = str(tmp_path / "_lock.json")
    write_json_atomic(url, record)
    with RunLock(url, holder="new"):
        assert read_json(url)["holder"] == "new"


@pytest.mark.parametrize("fields", [{"heartbeat": 1e300}, {"started": 1e300, "heartbeat": 0}, {"started": "x"}])
def test_a_fresh_lock_with_odd_times_is_live_by_the_storage_clock_not_a_crash(tmp_path, fields):
    now = time.time()
    record = {"owner": "other", "holder": "h", "host": "elsewhere", "pid": 1, "heartbeat": now, "started": now,
              **fields}
    url = str(tmp_path / "_lock.json")
    write_json_atomic(url, record)
    since = r"(\?|[-0-9]+ [:0-9]+)"  # "?" for a start time that is not a time
    with pytest.raises(RunLockedError, match=rf"live in another process \(h on elsewhere, pid 1, since {since} UTC\)"):
        RunLock(url).__enter__()


def test_our_own_pid_in_a_lock_of_another_process_is_a_restarted_container_not_a_live_run(tmp_path):
    now = time.time()
    base = {"owner": "other", **HERE, "pid": os.getpid(), "heartbeat": now, "started": now}
    assert not lock_is_live({**base, "process": "a-process-that-had-our-pid"}, 300)
    assert lock_is_live({**base, "process": lock_module.PROCESS}, 300)  # another lock of this very process
    assert lock_is_live(base, 300)  # written before locks named their process: taken as live


def test_a_pid_is_only_trusted_in_this_boot_and_pid_namespace(tmp_path):
    now = time.time()
    dead = {"owner": "x", **HERE, "pid": _dead_pid(), "heartbeat": now, "started": now}
    assert not lock_is_live(dead, 300)
    for elsewhere in ({"pid_ns": "pid:[1]"}, {"boot": "another-boot"}, {"pid_ns": None}, {"host": "other-host"}):
        assert lock_is_live({**dead, **elsewhere}, 300), elsewhere  # alive until its heartbeat is stale
        assert not lock_is_live({**dead, **elsewhere}, 300, age=301.0)
    written = RunLock(str(tmp_path / "_lock.json")).record
    assert {k: written[k] for k in ("host", "boot", "pid_ns")} == HERE
    assert HERE["boot"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert HERE["pid_ns"] == os.readlink("/proc/self/ns/pid")


def test_a_lock_of_the_version_before_boot_and_pid_namespace_keeps_its_pid_check(tmp_path):
    """Records of that version name only the host: a killed run of it is taken over at once after an
    upgrade (not after stale_after), a live one is still refused."""
    url = str(tmp_path / "_lock.json")
    now = time.time()
    old = {"owner": "old", "host": socket.gethostname(), "process": "an-old-process", "holder": "before",
           "started": now, "heartbeat": now}
    write_json_atomic(url, {**old, "pid": _dead_pid()})
    with RunLock(url, holder="after"):
        assert read_json(url)["holder"] == "after"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json_atomic(url, {**old, "pid": sleeper.pid})
        with pytest.raises(RunLockedError, match=r"live in another process \(before on"):
            RunLock(url).__enter__()
        assert not lock_is_live({**old, "pid": sleeper.pid, "host": "other-host"}, 300, age=301.0)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lock_is_live({**old, "pid": sleeper.pid, "host": "other-host"}, 300)  # another host: its heartbeat decides
    assert lock_is_live({**old, "pid": sleeper.pid, "boot": None, "pid_ns": None}, 300)  # a new record, not trusted


# --- Hosts whose clocks are off: staleness is judged by the storage's clock ------------------------


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_a_holder_whose_clock_is_off_keeps_its_lock(tmp_path, skew):
    url = str(tmp_path / "_lock.json")
    with RunLock(url, holder="skewed", clock=lambda: time.time() + skew):
        assert abs(read_json(url)["heartbeat"] - (time.time() + skew)) < 60
        with pytest.raises(RunLockedError, match=r"live in another process \(skewed on"):
            RunLock(url).__enter__()  # this host's clock says the heartbeat is an hour off
        with pytest.raises(RunLockedError, match=r"live in another process \(skewed on"):
            RunLock(url, clock=lambda: time.time() - skew).__enter__()  # a contender off the other way


def test_a_lock_the_storage_has_not_seen_rewritten_for_stale_after_is_stale_whatever_it_says(tmp_path):
    url = str(tmp_path / "_lock.json")
    now = time.time()
    write_json_atomic(url, {"owner": "y", "host": "elsewhere", "pid": 1, "heartbeat": now, "started": now})
    os.utime(url, (now - 301, now - 301))  # last written 301 s ago by the storage's clock
    with RunLock(url, holder="new"):
        assert read_json(url)["holder"] == "new"
    assert sorted(os.listdir(tmp_path)) == []  # the clock probe is gone too


def test_on_s3_a_holder_whose_clock_is_off_keeps_its_lock_and_a_silent_one_goes_stale(s3):
    bucket, options = s3
    url = join(bucket, "runs/a/_lock.json")
    with RunLock(url, options, holder="skewed", heartbeat=0.2, clock=lambda: time.time() - 3600):
        with pytest.raises(RunLockedError, match=r"live in another process \(skewed on"):
            RunLock(url, options, stale_after=3.0).__enter__()
    now = time.time()
    write_json_atomic(url, {"owner": "silent", "host": "elsewhere", "pid": 1, "heartbeat": now + 3600,
                            "started": now}, options)
    time.sleep(4.5)  # by the storage's clock (LastModified), more than stale_after since the last write
    with RunLock(url, options, stale_after=3.0, holder="new"):
        assert read_json(url, options)["holder"] == "new"
    assert list_files(parent(url), options=options) == []


# --- Two containers on one host: a holder in another PID namespace ---------------------------------


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare --pid --fork --mount-proc` (root, Linux): "
                                                 "a second PID namespace, as a second container on this host")
def test_a_live_holder_in_another_pid_namespace_keeps_its_lock(tmp_path):
    url = str(tmp_path / "runs/x/_lock.json")
    free = _dead_pid()  # a pid nothing uses in this namespace: the holder gets it in its own
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m",
         "tests.storage.lock_racers", "hold-with-pid", url, "600", str(free)],
        stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert holder.stdout.readline() == b"held\n"
        held = read_json(url)
        assert held["host"] == socket.gethostname() and held["boot"] == HERE["boot"]
        assert held["pid_ns"] != HERE["pid_ns"]
        assert held["pid"] == free and not pid_runs(free)  # "no such process" here, yet it runs
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # heartbeats every 0.2 s: live throughout
            with pytest.raises(RunLockedError, match=r"live in another process \(a run in another PID namespace"):
                RunLock(url, stale_after=1.0).__enter__()
            time.sleep(0.2)
        assert read_json(url)["owner"] == held["owner"]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    time.sleep(1.5)  # the holder is gone: its lock goes stale once its heartbeat is
    with RunLock(url, stale_after=1.0, holder="next"):
        assert read_json(url)["holder"] == "next"
