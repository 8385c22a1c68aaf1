"""Thin Prefect tasks around dd_core: retries, tags, names and artifacts. No math here."""

from __future__ import annotations

from typing import Any

from dd_core.ops.stop import StopRequested

# Errors that say the input or the settings are wrong (trying again cannot help), and a run asked to stop.
NOT_RETRYABLE = (ValueError, FloatingPointError, TypeError, KeyError, IndexError, StopRequested)


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry flaky failures (I/O, S3, a lost worker), not bad input nor a stop."""
    return not isinstance(state.data, NOT_RETRYABLE)


def _task_defaults() -> dict[str, Any]:
    from prefect.cache_policies import NONE

    # No input hashing or result caching: a stage's idempotency lives in its outputs (checkpoints,
    # shards with fingerprints), which survive across flow runs and machines.
    return {"cache_policy": NONE, "retry_condition_fn": retry_unless_bad_input}


TASK_DEFAULTS = _task_defaults()
