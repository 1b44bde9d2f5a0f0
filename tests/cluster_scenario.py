"""Run a simulated-cluster scenario (a test module run as a script) in its own process.

``ray.cluster_utils.Cluster`` needs a driver of its own, apart from the shared test session,
so each multi-node test module runs itself as a script that writes ``result.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_scenario_process(
    script: str | Path, workdir: Path, batch_delay_s: float, timeout_s: float, what: str
) -> dict:
    """``python script workdir`` with test batch delays; its result.json, or the test fails
    with the scenario's output."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYCLUST_TEST_BATCH_DELAY_S"] = str(batch_delay_s)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    # Own process group, so a timeout can stop the raylets this cluster started as well.
    process = subprocess.Popen(
        [sys.executable, str(script), str(workdir)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{what} scenario ran over {timeout_s} s:\n{output[-4000:]}")
    result_file = workdir / "result.json"
    if process.returncode != 0 or not result_file.is_file():
        pytest.fail(f"{what} scenario failed (rc={process.returncode}):\n{output[-4000:]}")
    return json.loads(result_file.read_text())
