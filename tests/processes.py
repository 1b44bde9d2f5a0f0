"""Ending a subprocess and everything it started, for tests that run the real CLI.

A driver killed with SIGKILL leaves its Ray processes (GCS, raylet, workers) running and
re-parented to init, where no process tree finds them any more. So the tree is recorded
while the driver is alive, and each recorded process is ended by its id afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """Every process ``pid`` started (recursively), as known right now."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def end_tree(process: subprocess.Popen, known: list[psutil.Process] = ()) -> None:
    """SIGKILL ``process``, its process group, and every process in ``known`` plus whatever
    it has started since; wait for them all to be gone (at most 30 s)."""
    known = [*known, *descendants(process.pid)]
    for target in known:
        try:
            known += target.children(recursive=True)
        except psutil.Error:
            pass
    if process.poll() is None:
        process.kill()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session=True
    except (ProcessLookupError, PermissionError):
        pass
    for target in known:
        try:
            target.kill()
        except psutil.Error:
            pass
    process.wait(timeout=30)
    psutil.wait_procs(known, timeout=30)
