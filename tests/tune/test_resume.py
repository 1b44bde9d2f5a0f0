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

import yaml

from rayclust import tracking
from rayclust.tune.objective import TRIAL_DELAY_ENV, TRIAL_LOG_ENV

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
    try:
        deadline = time.monotonic() + 240
        while len(_terminated_in_tune_state(sweep_dir / "tune")) < 2:
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the sweep never finished two trials"
            time.sleep(0.5)
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep, no cleanup
        driver.wait(timeout=60)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # leftover Ray processes of that driver
        except ProcessLookupError:
            pass
    time.sleep(1.0)
    finished_before = _terminated_in_tune_state(sweep_dir / "tune")
    events_before = _events(log)
    assert 2 <= len(finished_before) < N_TRIALS

    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=400,
        start_new_session=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"sweep resume: {N_TRIALS} trials (0 errored)" in resumed.stdout

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
