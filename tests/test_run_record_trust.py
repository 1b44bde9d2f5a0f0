"""Issue 18 items 3 and 4: MLflow gets only the run's own files, and an mlflow.json is trusted
only when this run wrote it for the files the folder holds now."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from rayclust import run_mlflow, runs
from rayclust.cli import main
from rayclust.tracking import default_tracking_uri


@dataclass
class Tracking:
    uri: str | None = None
    experiment: str = "trust"
    enabled: bool = True


def _run_folder(folder: Path, seed: str = "1") -> Path:
    """A finished cluster run's files, as the pipeline writes them."""
    runs.write_config(folder, {"name": f"run-{seed}", "seed": seed})
    runs.write_assignments(folder, ["a.png", "b.png"], ["ia", "ib"], [0, 1], ["x", "y"])
    runs.write_manifest(folder, [])
    runs.write_skipped(folder, [])
    runs.write_metrics(folder, {"n_images": 2, "seed": seed})
    runs.write_results(folder, "| k | 2 |\n")
    (folder / "report.html").write_text(f"<html>report of run {seed}</html>")
    return folder


def _artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    client = MlflowClient(tracking_uri=uri)
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(uri, run_id, item.path) if item.is_dir else {item.path}
    return found


# --- item 3: only the run's own files are uploaded ------------------------------------------


def test_only_the_runs_own_files_go_to_mlflow(tmp_path):
    folder = _run_folder(tmp_path / "runs" / "r1")
    (folder / "id_rsa").write_text("PRIVATE KEY")  # a foreign file dropped in the folder
    (folder / "other_run").mkdir()  # a foreign sub-folder
    (folder / "other_run" / "assignments.csv").write_text("path\n")
    (folder / "mlflow.json").write_text("{}")  # an earlier run's pointer
    (tmp_path / "secret.txt").write_text("outside")
    (folder / runs.RESULTS_FILE).unlink()
    os.symlink(tmp_path / "secret.txt", folder / runs.RESULTS_FILE)  # a schema name, a link
    uri = default_tracking_uri(tmp_path / "runs")
    run_id = run_mlflow.record_in_mlflow(folder, {"a": 1}, {"m": 1.0}, Tracking(), "r1")
    assert _artifacts(uri, run_id) == {
        "config.yaml",
        "assignments.csv",
        "manifest.csv",
        "skipped.csv",
        "metrics.json",
        "report.html",
    }


# --- item 4: a leftover or hand-written pointer is not trusted ------------------------------


def test_second_run_in_the_folder_does_not_overwrite_the_first_runs_artifacts(tmp_path, caplog):
    folder = _run_folder(tmp_path / "runs" / "r")
    uri = default_tracking_uri(tmp_path / "runs")
    first = run_mlflow.record_in_mlflow(folder, {"a": 1}, {}, Tracking(), "first")
    assert runs.read_mlflow_pointer(folder)["run_id"] == first
    # A second run, --no-mlflow, into the same folder: its files, the old pointer left over.
    pointer = (folder / runs.MLFLOW_FILE).read_text()
    _run_folder(folder, seed="2")
    (folder / runs.MLFLOW_FILE).write_text(pointer)  # even if write_config had not removed it
    assert runs.read_mlflow_pointer(folder) == {}
    assert "the run files changed since" in caplog.text
    # Its report is attached to no run: the first run's report stays the first run's.
    assert run_mlflow.attach_to_mlflow_run(runs.read_run(folder), [folder / "report.html"]) is False
    local = MlflowClient(tracking_uri=uri).download_artifacts(first, "report.html", str(tmp_path))
    assert Path(local).read_text() == "<html>report of run 1</html>"


def test_a_new_run_record_removes_the_previous_pointer(tmp_path):
    folder = _run_folder(tmp_path / "runs" / "r")
    run_mlflow.record_in_mlflow(folder, {"a": 1}, {}, Tracking(), "first")
    runs.write_config(folder, {"name": "second"})  # the next run starts its record
    assert not (folder / runs.MLFLOW_FILE).exists()


def test_hand_written_pointer_creates_no_database_and_attaches_nothing(tmp_path):
    folder = _run_folder(tmp_path / "r")
    target = tmp_path / "elsewhere" / "evil.db"
    digests = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("config.yaml", "metrics.json", "assignments.csv")
    }
    pointers = [
        {"tracking_uri": f"sqlite:///{target}", "run_id": "0" * 32},  # no files: old or forged
        {"tracking_uri": f"sqlite:///{target}", "run_id": "0" * 32, "files": {"config.yaml": "0"}},
        {"tracking_uri": "/etc/passwd", "run_id": "0" * 32, "files": digests},
        {"tracking_uri": f"sqlite:///{target}", "run_id": "../../x'; drop", "files": digests},
        ["not", "an", "object"],
    ]
    for pointer in pointers:
        (folder / runs.MLFLOW_FILE).write_text(json.dumps(pointer))
        assert runs.read_mlflow_pointer(folder) == {}, pointer
    (folder / runs.MLFLOW_FILE).write_bytes(b"\xff\xfe garbage")
    assert runs.read_mlflow_pointer(folder) == {}
    assert run_mlflow.attach_to_mlflow_run(runs.read_run(folder), [folder / "report.html"]) is False
    # A well-formed pointer tied to these very files (a copied folder): attaching still never
    # creates a store that is not there.
    (folder / runs.MLFLOW_FILE).write_text(
        json.dumps({"tracking_uri": f"sqlite:///{target}", "run_id": "0" * 32, "files": digests})
    )
    assert runs.read_mlflow_pointer(folder)["run_id"] == "0" * 32
    assert run_mlflow.attach_to_mlflow_run(runs.read_run(folder), [folder / "report.html"]) is False
    assert not target.exists() and not target.parent.exists()


def test_report_with_no_mlflow_never_touches_the_pointers_store(tmp_path, monkeypatch):
    folder = _run_folder(tmp_path / "r")
    target = tmp_path / "elsewhere" / "evil.db"
    (folder / runs.MLFLOW_FILE).write_text(
        json.dumps({"tracking_uri": f"sqlite:///{target}", "run_id": "0" * 32})
    )

    def never(run_dir):
        raise AssertionError("--no-mlflow read mlflow.json")

    with monkeypatch.context() as patch:
        patch.setattr(runs, "read_mlflow_pointer", never)
        assert main(["report", str(folder), "--no-mlflow"]) == 0
    assert main(["report", str(folder)]) == 0
    assert not target.exists() and not target.parent.exists()
