"""The disk a full test run takes: its peak, when, and what it leaves behind.

Runs ``make test``'s pytest command (or pytest with the arguments given after ``--``, from the
repository's root) with ``TMPDIR`` set to a new, empty folder, so that pytest's ``tmp_path`` folders,
``tempfile``'s folders and the Prefect test servers' databases all land there. Every ``--every``
seconds it adds up the disk blocks of that folder (as ``du`` does) and reads the used space of the
file system under it, and at the end prints the peak of each, when it came, and what the run left in
the folder. Run it alone: the file system's used space counts every other process's writes too, and
Prefect's own folder (``~/.prefect``) is not in TMPDIR. A terminal's Ctrl-C stops pytest as usual
(it tears down and reports); the bench then reports what it measured so far and removes the folder.

    .venv/bin/python bench/test_footprint.py [--every 2] [--keep] [-- pytest arguments...]

CI's run at b6541c3 failed on a full disk (``No space left on device``): pytest keeps every test's
``tmp_path`` until the session ends (and the last 3 sessions' after), and the test checkpoints add up
to 10.7 GB. pyproject.toml now removes a passed test's folder when it ends (BENCHMARKS.md, "The
disk a test run takes").
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_TEST = ["-m", "pytest", "-q", "-n", "2", "--dist", "loadfile"]  # the Makefile's test target
MB = 1 << 20


def folder_bytes(folder: Path) -> int:
    """Disk blocks under ``folder`` in bytes, as ``du`` counts them; files that vanish mid-walk count 0."""
    total, stack = 0, [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed while we walked it
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def used_bytes(folder: Path) -> int:
    """The used space of the file system that holds ``folder``."""
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


class Sampler(threading.Thread):
    """Samples the folder and the file system every ``every`` seconds until ``done`` is set."""

    def __init__(self, folder: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.folder, self.every, self.done = folder, every, threading.Event()
        self.start_time, self.base_used = time.monotonic(), used_bytes(folder)
        self.peak_folder = self.peak_used = (0, 0.0)  # (bytes, seconds from the start)

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic() - self.start_time
        size, used = folder_bytes(self.folder), used_bytes(self.folder) - self.base_used
        self.peak_folder = max(self.peak_folder, (size, now))
        self.peak_used = max(self.peak_used, (used, now))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (default: removed at the end)")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: make test's)")
    args = parser.parse_args()
    if not (math.isfinite(args.every) and args.every >= 0.1):
        parser.error(f"--every must be a number of seconds, 0.1 or more, got {args.every}")
    folder = Path(tempfile.mkdtemp(prefix="omnidistill-footprint-"))
    folder.chmod(0o755)  # as /tmp is to the 'postgres' account: the PostgreSQL tests' folders live here
    env = {**os.environ, "TMPDIR": str(folder), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *(["-m", "pytest", *args.pytest_args] if args.pytest_args else MAKE_TEST)]
    print(f"{' '.join(command)}\nTMPDIR={folder}, sampled every {args.every:g} s", flush=True)
    sampler = Sampler(folder, args.every)
    sampler.start()
    try:
        code = run_to_the_end(command, env)
        sampler.done.set()
        sampler.join()
        sampler.sample()
        report(sampler, code)
    finally:
        sampler.done.set()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return code


def run_to_the_end(command: list[str], env: dict[str, str]) -> int:
    """The command's exit code. Ctrl-C reaches it from the terminal too: wait while it tears down."""
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # pytest got the same SIGINT; a second Ctrl-C here waits again
            print("\ninterrupted: waiting for pytest to tear down", flush=True)


def report(sampler: Sampler, code: int) -> None:
    """The peaks and what the command left in its TMPDIR."""
    took = time.monotonic() - sampler.start_time
    left = folder_bytes(sampler.folder)
    leftovers = sorted(p.name for p in sampler.folder.iterdir())
    print(f"\nexit code {code}, {took / 60:.1f} min")
    print(f"peak in TMPDIR:            {sampler.peak_folder[0] / MB:8.0f} MB at {sampler.peak_folder[1] / 60:5.1f} min")
    print(f"peak used on its disk:     {sampler.peak_used[0] / MB:8.0f} MB at {sampler.peak_used[1] / 60:5.1f} min"
          " (over the used space at the start)")
    print(f"left in TMPDIR at the end: {left / MB:8.0f} MB in {len(leftovers)} entries: {', '.join(leftovers[:10])}")


if __name__ == "__main__":
    sys.exit(main())
