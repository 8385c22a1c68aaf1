"""Data-loader workers forked from a process that runs Prefect exit cleanly (dd_core.ops.workers)."""

import os
import subprocess
import sys
from pathlib import Path

AFTER_A_PREFECT_SERVICE = """
from prefect._internal.concurrency.services import QueueService

from dd_core.train import TrainConfig, train
from dd_core.train import loop
from dd_core.train.loop import Runtime
from tests.train.test_loop import _IMAGES, _Scale


class Idle(QueueService):  # what Prefect's log and event workers are: it registers a thread-exit hook
    async def _handle(self, item):
        pass


Idle.instance()  # started, as in a flow run, before the loader forks its worker
exit_codes = []
real_loader = loop._loader


def loader(*args, **kwargs):  # each worker's exit code, once the iterator has shut it down
    data = real_loader(*args, **kwargs)

    class Iterated:
        def __iter__(self):
            iterator = iter(data)
            try:
                yield from iterator
            finally:
                workers = list(iterator._workers)
                iterator._shutdown_workers()
                exit_codes.extend(w.exitcode for w in workers)
    return Iterated()


loop._loader = loader
cfg = TrainConfig(iterations=3, batch_size=2, lr=0.01, warmup_iters=0, num_workers=1)
assert train(_Scale(), _IMAGES, cfg, runtime=Runtime(progress=False)).iteration == 3
print("exit codes", exit_codes)
"""


def test_a_loader_worker_forked_from_a_prefect_process_exits_cleanly():
    """Prefect's thread-exit hooks, inherited by the forked worker, failed there: it exited with code 1
    and the loader's garbage collection reported it dead on stderr after every training."""
    done = subprocess.run([sys.executable, "-c", AFTER_A_PREFECT_SERVICE], cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exit codes [0]" in done.stdout, done.stdout + done.stderr  # 1 without the fix
    assert "exited unexpectedly" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
