"""The flow's shard labelers (:class:`dd_core.method.ShardLabeler`): shard tasks on the subflow's task
runner, or groups of shards as flow runs of a deployment (``shards.runner``, see :mod:`flows.runners`).

Both show a progress artifact while they wait, and a failed shard (or Ctrl-C) asks the other shard
tasks to stop at their next batch instead of waiting for each to finish its shard.
"""

from __future__ import annotations

import functools
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed, wait

from dd_core.config import RunConfig
from dd_core.method import ShardLabeler
from dd_core.ops.stop import PROCESS, StopRequested
from dd_core.pseudo.infer import ShardJob, ShardSummary
from flows.runners import labeled_next, shard_groups, shard_resources
from tasks import cache
from tasks.fanout import label_shard_group
from tasks.infer import collect_shards, find_done_shards, infer_shard
from tasks.progress import ProgressArtifact

PROGRESS_EVERY = 5.0  # seconds between updates of the labeling progress artifact (one API call each)


def shard_labeler(config: RunConfig) -> ShardLabeler:
    """The run's shard labeler: shard tasks, or flow runs of ``shards.deployment``."""
    return functools.partial(_label_shards, config)


def _label_shards(config: RunConfig, job: ShardJob, num_shards: int) -> list[ShardSummary]:
    label = label_by_deployment if config.shards.runner == "deployment" else label_on_task_runner
    try:
        return label(config, job, num_shards)
    finally:  # shard tasks in this process cached the teacher (the student trains next), the plan, images read ahead
        cache.TEACHERS.clear()
        cache.PLANS.clear()
        cache.READ_AHEAD.clear()


def label_on_task_runner(config: RunConfig, job: ShardJob, num_shards: int) -> list[ShardSummary]:
    """One ``infer_shard`` task per shard not done yet on this flow's task runner (threads or Dask).

    The shards done already (a resumed run) are found at once, without a task run each, which a
    resume of thousands of shards would otherwise spend its time on. The others were just found not
    done, so their tasks do not look again (another worker writing one meanwhile would only be redone).
    """
    done = {i: s for i, s in find_done_shards(job, config.storage.options).items() if i < num_shards}
    to_label = [i for i in range(num_shards) if i not in done]
    following = labeled_next(to_label, config.shards)
    with shard_resources(config.shards):
        futures = [infer_shard.submit(job, i, config.storage.options, check_done=False, next_index=after)
                   for i, after in zip(to_label, following)]
    shards = [*done.values(), *wait_with_progress(futures, [1] * len(to_label), done=len(done))]
    get_run_logger().info("shards: %d (%d already done)", len(shards), sum(s.skipped for s in shards))
    return shards


def label_by_deployment(config: RunConfig, job: ShardJob, num_shards: int) -> list[ShardSummary]:
    """Groups of shards as flow runs of ``shards.deployment``; their output is read back from storage."""
    groups = shard_groups(num_shards, config.shards.per_flow_run)
    futures = [label_shard_group.submit(config.shards.deployment, job, group) for group in groups]
    runs = wait_with_progress(futures, [len(group) for group in groups])
    get_run_logger().info("shards: %d, labeled by %d flow run(s) of %s", num_shards, len(runs),
                          config.shards.deployment)
    return collect_shards(job.plan_url, job.out_dir, job.fingerprint, config.storage.options)


def wait_with_progress(futures: list[PrefectFuture], shards_per_future: list[int], done: int = 0) -> list[Any]:
    """Results in completion order, with a progress artifact counting labeled shards (``done`` of
    them were labeled before).

    Leaving early (a failed shard, Ctrl-C, SIGTERM) asks the other shard threads to stop, so
    the task runner does not wait for each to finish its shard.
    """
    progress = ProgressArtifact("inference-progress", "Unlabeled shards labeled", every=PROGRESS_EVERY)
    weight = {future.task_run_id: n for future, n in zip(futures, shards_per_future)}
    total, results = done + sum(shards_per_future), []
    progress.show(100.0 * done / total if total else 100.0)
    try:
        for future in as_completed(futures):
            results.append(future.result())
            done += weight[future.task_run_id]
            progress.show(100.0 * done / total)
    except BaseException as exc:
        stop_the_others(futures, exc)
        raise
    return results


def stop_the_others(futures: list[PrefectFuture], exc: BaseException) -> None:
    """One shard failed (or the run was interrupted): the other shard tasks stop at their next batch.

    A shard's failure stops this labeling only: once its tasks have wound down (a batch each) the
    request is withdrawn, so that whatever runs next in this process is not stopped too. A signal or
    a cancel stops the whole run, and its request stays.
    """
    PROCESS.request(f"labeling stopped ({type(exc).__name__})")
    if isinstance(exc, Exception) and not isinstance(exc, StopRequested):
        wait(futures)
        PROCESS.clear()
