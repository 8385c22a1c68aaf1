"""Starting the distillation flow from a config: run id, task runner, and what to print at the end."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dd_core.config import RunConfig
from dd_core.storage.layout import new_run_id


def with_run_id(config: RunConfig) -> RunConfig:
    """The config with a generated run id when none was given (same id again = resume)."""
    return config if config.run_id else config.model_copy(update={"run_id": new_run_id()})


def run_distillation(config: RunConfig) -> dict[str, Any]:
    """Run the whole flow in this process; shard tasks run where ``config.shards.runner`` says (flows/runners.py)."""
    from flows.distill import distill

    return distill(with_run_id(config))


def print_summary(result: dict[str, Any], ui: str | None) -> None:
    """The end of a run, for a person: the metrics table, where the report is, where to watch."""
    import sys

    from dd_core.report import metrics_table
    from dd_core.report.markdown import KEYPOINT_AREAS

    print(metrics_table(result["metrics"]))
    if "APs" not in next(iter(result["metrics"].values()), {}):  # keypoint stats have no APs
        print(f"\n{KEYPOINT_AREAS}")
    print(f"\nreport: {result['report']}")
    if ui:
        print(f"Prefect UI: {ui} (flow run of run id {result['run_dir'].rstrip('/').rsplit('/', 1)[-1]})")
    sys.stdout.flush()


def run_and_report(config: RunConfig, config_path: str, overrides: Sequence[str] = (), *,
                   server_home: str | Path | None = None, keep_server: bool = False,
                   on_ui: Callable[[str], None] | None = None, verbose: bool = False) -> int:
    """Run the flow against the user's Prefect API (or a local server), print its summary; the exit code.

    Ctrl-C or SIGTERM stops the run within seconds (its children too: torchrun's ranks, a local
    Dask cluster, the local server) and a cancel in the Prefect UI stops it as well; either way the
    last line says how to resume it, and the exit code is 130 / 143 (a signal) or 1 (cancelled).
    A run whose lock another run took (:class:`~dd_core.storage.lock.RunLockLost`) stops with one
    line saying so, exit code 1.
    """
    from prefect.exceptions import CancelledRun

    from dd_core.storage.lock import RunLockLost
    from flows.interrupts import interruption, quiet_resource_tracker, resume_command, stop_on_signals
    from flows.server import prefect_api

    resume = resume_command(config_path, overrides, config.run_id)
    quiet_resource_tracker()
    if not verbose:
        console_without_tracebacks()
    try:
        with stop_on_signals(), prefect_api(server_home, keep=keep_server) as ui:
            if on_ui is not None:
                on_ui(ui)
            result = run_distillation(config)
    except CancelledRun as exc:
        found = interruption(exc)  # Ctrl-C: the flow run ended Cancelled (a stop the user asked for), not Crashed
        if found is not None:
            print(f"omnidistill: run {config.run_id} stopped ({found[1]}); resume it with: {resume}", file=sys.stderr)
            return found[0]
        print(f"omnidistill: run {config.run_id} was cancelled; resume it with: {resume}", file=sys.stderr)
        return 1
    except RunLockLost as exc:  # another run took this run id over: it writes the run's folder now
        print(f"omnidistill: run {config.run_id}: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        found = interruption(exc)
        if found is None:
            raise
        print(f"omnidistill: run {config.run_id} stopped ({found[1]}); resume it with: {resume}", file=sys.stderr)
        return found[0]
    print_summary(result, ui)
    return 0


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves out tracebacks (the Prefect API and UI still get them)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:  # other handlers (the API's) format the same record afterwards
            record.exc_info, record.exc_text, record.stack_info = saved


def console_without_tracebacks() -> None:
    """Prefect prints each failing task's traceback on the console; this leaves the log lines alone,
    so that a failed run ends with one error line (``--verbose`` keeps them)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, PrefectConsoleHandler) and formatter and not isinstance(formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(formatter))
