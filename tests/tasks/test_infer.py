"""The shard task under a real "gpu" tag concurrency limit: a finished shard returns without a slot,
a shard to label waits for one."""

import os
import threading
from typing import Any, Callable

from prefect.client.orchestration import get_client

from dd_core.data.unlabeled import write_plan
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob
from flows.shards import label_shards
from tests.pseudo.helpers import TTA, planned, setup_pile
from tests.tasks.gpu_limit import gpu_limit


class _Run(threading.Thread):
    """``call()`` in a thread, its result (or exception) kept: a run that may wait for a slot."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call, self.result, self.error = call, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_a_finished_shard_takes_no_gpu_slot_and_a_shard_to_label_waits_for_one(prefect_harness, tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=2)
    plan, out, fp = str(tmp_path / "inf" / "_plan.json"), str(tmp_path / "inf"), checkpoint_fingerprint(ckpt, TTA)
    write_plan(unlabeled, 1, plan)
    planned(ckpt, plan, out, fp, 0)  # shard 0 was labeled by an earlier run
    job = ShardJob(ckpt, plan, out, TTA, fp, device="cpu").parameters()
    with gpu_limit(1), get_client(sync_client=True) as client:
        # Another holder (a shard of another run, say) takes the only slot.
        lease = client.increment_concurrency_slots_with_lease(names=["tag:gpu"], slots=1, mode="concurrency",
                                                              lease_duration=300).json()["lease_id"]
        to_label = None
        try:
            finished = _Run(lambda: label_shards(job, [0]))
            finished.join(timeout=60)
            assert not finished.is_alive() and finished.error is None
            assert [s.skipped for s in finished.result] == [True]
            to_label = _Run(lambda: label_shards(job, [1]))
            to_label.join(timeout=5)
            assert to_label.is_alive() and not os.path.exists(f"{out}/shard-00001.parquet")  # waits for the slot
        finally:
            client.release_concurrency_slots_with_lease(lease_id=lease)
            if to_label is not None:
                to_label.join(timeout=120)
    assert to_label.error is None and [s.skipped for s in to_label.result] == [False]
