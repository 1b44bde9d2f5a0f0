"""Step hooks for the fault tests: record every step, kill a worker or the driver once.

Ray workers cannot import this test package, so tests register it to be pickled by value
(``cloudpickle.register_pickle_by_value``) before handing a hook to ``fit``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StepLog:
    """Append ``epoch step rank`` to ``path`` at every micro-step of every worker.

    ``exit_at=(epoch, step, rank)``: that worker process ends abruptly with ``os._exit``
    (no exception, no clean-up), once per log file.
    ``kill_pid_at=(epoch, step, rank)``: that worker SIGKILLs process ``kill_pid`` (the
    driver), once per log file.
    """

    path: str
    exit_at: tuple[int, int, int] | None = None
    kill_pid_at: tuple[int, int, int] | None = None
    kill_pid: int | None = None

    def __call__(self, epoch: int, step: int, rank: int) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{epoch} {step} {rank}\n")
        here = (epoch, step, rank)
        if here == self.exit_at and self._first_time("exited"):
            _wait_for_checkpoints()
            os._exit(1)
        if here == self.kill_pid_at and self.kill_pid and self._first_time("killed"):
            _wait_for_checkpoints()
            os.kill(self.kill_pid, signal.SIGKILL)

    def _first_time(self, what: str) -> bool:
        marker = Path(f"{self.path}.{what}")
        if marker.exists():
            return False
        marker.touch()
        return True


def _wait_for_checkpoints() -> None:
    """Let Ray Train register every checkpoint reported so far, so the kill is deterministic.

    Without this the controller may not yet have collected the last report when the
    process dies, and the run would restart from the checkpoint before it.
    """
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )


def read_steps(path: str | Path) -> list[tuple[int, int, int]]:
    lines = Path(path).read_text().split("\n") if Path(path).exists() else []
    return [tuple(int(x) for x in line.split()) for line in lines if line.strip()]
