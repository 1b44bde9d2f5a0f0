import math
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayclust import tracking
from rayclust.tracking import (
    MAX_PARAM_VALUE_LENGTH,
    default_tracking_uri,
    flatten_dict,
    prepare_store,
    start_run,
)


def test_default_tracking_uri_is_an_absolute_sqlite_file_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("runs")
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert not (tmp_path / "runs").exists()


def test_prepare_store_creates_the_schema(tmp_path):
    uri = default_tracking_uri(tmp_path / "store")
    assert prepare_store(uri) == uri
    connection = sqlite3.connect(tmp_path / "store" / "mlflow.db")
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert {"experiments", "runs", "params", "metrics"} <= tables


def test_flatten_dict_uses_dotted_keys_and_keeps_lists():
    nested = {"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}
    assert flatten_dict(nested) == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f": {}}


def test_run_logs_params_metrics_artifacts_readable_with_client(tmp_path, monkeypatch):
    # Run from another folder: nothing may land in the current directory.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    uri = default_tracking_uri(tmp_path / "runs")
    run_folder = tmp_path / "run_folder"
    (run_folder / "sub").mkdir(parents=True)
    (run_folder / "metrics.json").write_text('{"acc": 0.5}')
    (run_folder / "sub" / "assignments.csv").write_text("path,cluster\na.png,0\n")
    config = {
        "name": "demo",
        "views": ["efficientnet_lite0", "efficientnet_lite1"],
        "clustering": {"n_clusters": 16, "seeds": 5, "pca_dim": None, "normalize": True},
        "long": "x" * (MAX_PARAM_VALUE_LENGTH + 100),
    }
    summary = {"acc": {"mean": 0.8, "std": 0.01, "n": 5}, "silhouette": {"mean": math.nan}}

    with start_run(config, uri=uri, experiment="tests", run_name="demo", tags={"kind": "t"}) as run:
        logged = run.log_metrics({"summary": summary, "n_images": 796})
        run.log_metrics({"loss": 0.3}, step=2)
        run.log_artifacts(run_folder)
        run.log_artifact(run_folder / "metrics.json", artifact_path="copy")
        run.log_dict({"k": 3}, "extra/config.json")
        run_id = run.run_id

    assert "summary.silhouette.mean" not in logged  # NaN skipped
    client = MlflowClient(tracking_uri=uri)
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED"
    assert record.info.run_name == "demo"
    assert record.data.tags["kind"] == "t"
    params = record.data.params
    assert params["clustering.n_clusters"] == "16"
    # As the config file writes them, never Python's reprs (None, ['a'], True).
    assert params["clustering.pca_dim"] == "null"
    assert params["views"] == '["efficientnet_lite0", "efficientnet_lite1"]'
    assert params["clustering.normalize"] == "true"
    assert len(params["long"]) == MAX_PARAM_VALUE_LENGTH
    assert params["long"].endswith("[truncated]")
    metrics = record.data.metrics
    assert metrics == {
        "summary.acc.mean": 0.8,
        "summary.acc.std": 0.01,
        "summary.acc.n": 5.0,
        "n_images": 796.0,
        "loss": 0.3,
    }
    assert client.get_metric_history(run_id, "loss")[0].step == 2
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"metrics.json", "sub", "copy", "extra"}
    assert [a.path for a in client.list_artifacts(run_id, "sub")] == ["sub/assignments.csv"]
    local = Path(client.download_artifacts(run_id, "sub/assignments.csv", str(tmp_path)))
    assert local.read_text() == "path,cluster\na.png,0\n"
    # Artifacts live beside the database, not in ./mlruns of the current directory.
    assert (tmp_path / "runs" / "mlartifacts").is_dir()
    assert list(workdir.iterdir()) == []


def test_failed_body_marks_run_failed_and_reraises(tmp_path):
    uri = default_tracking_uri(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with start_run({"a": 1}, uri=uri, experiment="tests") as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FAILED"


def test_nested_run_points_at_its_parent(tmp_path):
    uri = default_tracking_uri(tmp_path)
    with start_run(uri=uri, experiment="sweep") as parent:
        with start_run({"lr": 0.1}, uri=uri, experiment="sweep", parent_run_id=parent.run_id) as c:
            child_id = c.run_id
    tags = MlflowClient(tracking_uri=uri).get_run(child_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id


def test_log_metrics_rejects_non_numbers_naming_the_key(tmp_path):
    with start_run(uri=default_tracking_uri(tmp_path), experiment="tests") as run:
        with pytest.raises(TypeError, match=r"metric 'acc.cell'='0.8 \(0.1\)' should be a number"):
            run.log_metrics({"acc": {"cell": "0.8 (0.1)"}})
        with pytest.raises(FileNotFoundError, match="does not exist"):
            run.log_artifact(tmp_path / "missing.txt")


def test_fresh_store_is_quiet_and_uses_wal(tmp_path, capfd):
    uri = default_tracking_uri(tmp_path / "quiet")
    with start_run({"a": 1}, uri=uri, experiment="tests", run_name="q") as run:
        run.log_metrics({"m": 1.0})
    out, err = capfd.readouterr()
    assert "Creating initial MLflow database tables" not in err
    assert "INFO" not in err
    assert "View run" not in out
    connection = sqlite3.connect(tmp_path / "quiet" / "mlflow.db")
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_retry_covers_locked_database_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert tracking.with_retry(flaky, base_delay=0.001) == "ok"
    assert len(calls) == 3

    def broken():
        calls.append(1)
        raise ValueError("not transient")

    calls.clear()
    with pytest.raises(ValueError, match="not transient"):
        tracking.with_retry(broken, base_delay=0.001)
    assert len(calls) == 1


def _log_from_worker(uri: str, worker: int) -> str:
    with start_run({"worker": worker}, uri=uri, experiment="parallel") as run:
        for step in range(15):
            run.log_metrics({"loss": 1.0 / (step + 1), "worker": worker}, step=step)
        return run.run_id


def test_parallel_processes_share_one_sqlite_store(tmp_path):
    # Tune trials write to one store at the same time; none may fail with "database is locked",
    # not even when they all find the store missing and race to create its schema.
    uri = default_tracking_uri(tmp_path)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        run_ids = pool.starmap(_log_from_worker, [(uri, w) for w in range(3)])
    client = MlflowClient(tracking_uri=uri)
    for worker, run_id in enumerate(run_ids):
        record = client.get_run(run_id)
        assert record.info.status == "FINISHED"
        assert record.data.params["worker"] == str(worker)
        assert len(client.get_metric_history(run_id, "loss")) == 15
