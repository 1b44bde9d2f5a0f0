"""MLflow logging of a deep-clustering run, read back from the store; ``--no-mlflow``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from rayclust import runs
from rayclust.deep import fit_deep
from rayclust.deep.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_divclust_run_is_in_mlflow(digits_config, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    config = digits_config(
        "divclust",
        "divclust.n_heads=3",
        "divclust.consensus_heads=2",
        "trainer.epochs=4",
        "tracking.enabled=true",
        f"tracking.uri={store}",
        "tracking.experiment=deep-test",
        f"output={out}",
    )
    import rayclust.deep.api as deep_api

    training_started: list[float] = []
    real_training = deep_api.run_training

    def timed_training(*args, **kwargs):
        training_started.append(time.time() * 1000)
        return real_training(*args, **kwargs)

    monkeypatch.setattr(deep_api, "run_training", timed_training)
    started = time.time() * 1000
    result = fit_deep(config)
    ended = time.time() * 1000
    pointer = json.loads((out / "mlflow.json").read_text())
    assert (pointer["tracking_uri"], pointer["run_id"]) == (store, result.mlflow_run_id)
    assert runs.read_mlflow_pointer(out) == {"tracking_uri": store, "run_id": result.mlflow_run_id}

    client = MlflowClient(store)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "deep-test"
    # Opened when the work started, not once it was done: before the training began (an
    # order of events, not a share of the wall time, which a loaded machine would shift).
    assert started <= run.info.start_time and run.info.end_time <= ended
    assert training_started and run.info.start_time <= training_started[0]
    assert run.data.tags["rayclust.version"] and run.data.tags["rayclust.method"] == "divclust"
    # params: the resolved config, flattened
    params = run.data.params
    assert params["method"] == "divclust"
    assert params["divclust.n_heads"] == "3"
    assert params["trainer.epochs"] == "4"
    assert params["features.mode"] == "frozen"
    # per-epoch objective and its parts as step metrics
    history = client.get_metric_history(run.info.run_id, "objective")
    assert [m.step for m in history] == [0, 1, 2, 3]
    np.testing.assert_allclose([m.value for m in history], result.objective, rtol=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "diversity")) == 4
    # final scores, diversity and the K-means baseline
    metrics = run.data.metrics
    assert metrics["holdout.acc"] == result.metrics["holdout"]["acc"]
    assert metrics["diversity_reached"] == result.reports["diversity_reached"]
    assert (
        metrics["kmeans_baseline.holdout.acc"]
        == (result.reports["kmeans_baseline"]["holdout"]["acc"])
    )
    # artifacts: the run folder's reports (inter-head NMI matrix) and the checkpoint
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "reports.json", "inter_head_nmi.csv"} <= names
    checkpoint = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert checkpoint == {"checkpoint/checkpoint.pt"}
    local = Path(client.download_artifacts(run.info.run_id, "inter_head_nmi.csv", str(tmp_path)))
    rows = local.read_text().splitlines()
    assert rows[0] == "head,0,1,2" and len(rows) == 4
    nmi = np.array([[float(v) for v in row.split(",")[1:]] for row in rows[1:]])
    np.testing.assert_allclose(np.diag(nmi), 1.0)
    np.testing.assert_allclose(nmi, result.reports["inter_head_nmi_train"], atol=1e-4)


def test_cli_no_mlflow_writes_no_run(tmp_path, deep_cache):
    out = tmp_path / "run"
    args = [
        str(EXPERIMENTS / "mmdc.yaml"),
        "trainer.backend=local",
        "trainer.epochs=1",
        "mmdc.refine_epochs=0",
        "data.max_images=600",
        "trainer.hidden_dim=64",
        f"features.cache_dir={deep_cache}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"output={out}",
        "--no-mlflow",
    ]
    assert main(args) == 0
    assert (out / "metrics.json").is_file()
    assert not (out / "mlflow.json").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_stops_a_deep_run_before_any_work(digits_config, tmp_path):
    """Issue 18 item 5, for `rayclust deep`: the same check as `rayclust cluster`."""
    import socket

    from rayclust.config import ConfigError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = digits_config(
        "divclust",
        "tracking.enabled=true",
        f"tracking.uri=http://bob:hunter2@127.0.0.1:{port}",
        f"output={tmp_path / 'run'}",
    )
    with pytest.raises(ConfigError, match=r"bob:\*\*\*@127\.0\.0\.1.* is unreachable") as caught:
        fit_deep(config)
    assert "hunter2" not in str(caught.value)
    assert not (tmp_path / "run").exists()
