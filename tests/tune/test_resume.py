"""A sweep whose driver is killed midway resumes with ``rayclust tune --resume``: trials Tune
had recorded as finished are not rerun, the rest finish, MLflow holds one child per trial.

The sweep runs in subprocesses (the real CLI) with their own local Ray, as a user's would.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rayclust import tracking
from rayclust.tune.objective import TRIAL_DELAY_ENV, TRIAL_LOG_ENV
from tests.processes import descendants, end_tree

N_TRIALS = 8


def _terminated_in_tune_state(experiment_dir: Path) -> set[str]:
    """Trials Tune's own saved experiment state holds as finished."""
    files = sorted(glob.glob(str(experiment_dir / "experiment_state-*.json")))
    if not files:
        return set()
    try:
        state = json.loads(Path(files[-1]).read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten right now
        return set()
    done = set()
    for trial_json, _ in state["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        if trial["status"] == "TERMINATED":
            done.add(trial["trial_id"])
    return done


def _events(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


# Both phases together stay inside the test's own timeout (pytest-timeout would otherwise
# kill the test first and leave the subprocesses' Ray running).
PHASE_BUDGET_S = 240
TEST_TIMEOUT_S = 2 * PHASE_BUDGET_S + 90


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_killed_sweep_resumes_without_rerunning_finished_trials(sample_dir, tmp_path):
    sweep_dir = tmp_path / "runs" / "resume"
    uri = tracking.default_tracking_uri(tmp_path / "runs")
    sweep_file = tmp_path / "resume.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "stage": "cluster",
                "output": str(sweep_dir),
                "config": {
                    "input": {"source": str(sample_dir), "labels_from_folders": True},
                    "views": ["pixels"],
                    "extraction": {"cache_dir": str(tmp_path / "features")},
                    "clustering": {"seeds": 1},
                },
                "search": {"clustering.n_clusters": {"grid": list(range(2, 2 + N_TRIALS))}},
                "num_samples": 1,
                "max_concurrent_trials": 1,
                "objective": {"metric": "nmi", "mode": "max"},
                "tracking": {"uri": uri},
                "ray": {"num_cpus": 2},  # its own local Ray, never the test session's
            }
        )
    )
    log = tmp_path / "trials.log"
    env = {
        **os.environ,
        TRIAL_LOG_ENV: str(log),
        TRIAL_DELAY_ENV: "2",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "rayclust", "tune", str(sweep_file), "--quiet"]
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # its Ray processes form one group we can end by its id
    )  # fmt: skip
    known = []  # the driver's process tree, recorded while it lives (see tests/processes.py)
    try:
        deadline = time.monotonic() + PHASE_BUDGET_S
        while len(_terminated_in_tune_state(sweep_dir / "tune")) < 2:
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the sweep never finished two trials"
            known = descendants(driver.pid) or known
            time.sleep(0.5)
        known = descendants(driver.pid) or known
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep, no cleanup
    finally:
        end_tree(driver, known)  # and its Ray processes, by their ids
    finished_before = _terminated_in_tune_state(sweep_dir / "tune")
    events_before = _events(log)
    assert 2 <= len(finished_before) < N_TRIALS

    resumed = subprocess.Popen(
        [*command, "--resume"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = resumed.communicate(timeout=PHASE_BUDGET_S)
    finally:
        end_tree(resumed)  # a timed-out resume leaves no Ray processes behind either
    assert resumed.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert f"sweep resume: {N_TRIALS} trials (0 errored)" in stdout

    events_after = _events(log)[len(events_before) :]
    rerun = {trial for event, trial in events_after if event == "start"}
    assert not rerun & finished_before  # finished trials kept, not run again
    done = Counter(trial for event, trial in _events(log) if event == "done")
    assert len(done) == N_TRIALS  # every trial finished, in one run or the other
    assert all(done[trial] == 1 for trial in finished_before)

    rows = (sweep_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + N_TRIALS
    record = json.loads((sweep_dir / "mlflow.json").read_text())
    children = tracking.child_runs(record["tracking_uri"], record["run_id"])
    trial_ids = [c.data.tags["rayclust.trial_id"] for c in children]
    assert sorted(trial_ids) == sorted(done)  # exactly one child run per trial
    assert {c.info.status for c in children} == {"FINISHED"}
    from mlflow import MlflowClient

    parent = MlflowClient(tracking_uri=uri).get_run(record["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == N_TRIALS
