"""The run record (rayclust.runs): one folder schema written and read back, MLflow recording,
and the report rendering every kind of folder: a deep run's and a sweep's."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from rayclust import run_mlflow, runs
from rayclust.images import SkippedImage
from rayclust.tracking import default_tracking_uri

AWKWARD = 'a folder, with "quotes"\nand a newline/img.png'


@dataclass
class Tracking:
    uri: str | None = None
    experiment: str = "runs-test"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_assignments_are_quoted_and_read_back_with_extra_columns(tmp_path):
    runs.write_assignments(
        tmp_path,
        [AWKWARD, "b.png", "c.png"],
        ["id-a", "id-b", "id-c"],
        np.array([2, 0, 2], dtype=np.int64),
        ["cat, grey", None, "dog"],
        extra_columns={"split": ["train", "holdout", "train"]},
    )
    header = (tmp_path / runs.ASSIGNMENTS_FILE).read_text().splitlines()[0]
    assert header == "path,image_id,cluster,label,split"
    run = runs.read_run(tmp_path)
    assert run.paths == [AWKWARD, "b.png", "c.png"]
    assert run.labels == ["cat, grey", "", "dog"] and not run.has_labels
    np.testing.assert_array_equal(run.clusters, [2, 0, 2])
    assert run.clusters.dtype == np.int64
    assert run.extra_columns == {"split": ["train", "holdout", "train"]}


def test_assignment_errors_state_both_values(tmp_path):
    with pytest.raises(ValueError, match="clusters has 2 values but paths has 3"):
        runs.write_assignments(tmp_path, ["a", "b", "c"], ["1", "2", "3"], [0, 1])
    with pytest.raises(ValueError, match=r"extra_columns \['label'\] repeat"):
        runs.write_assignments(tmp_path, ["a"], ["1"], [0], extra_columns={"label": ["x"]})
    runs.write_csv(tmp_path / runs.ASSIGNMENTS_FILE, ["image", "cluster"], [["a", 0]])
    with pytest.raises(runs.RunFolderError, match=r"lacks the columns \['path', 'image_id'"):
        runs.read_run(tmp_path)


def test_skipped_metrics_and_a_folder_without_assignments(tmp_path):
    runs.write_skipped(
        tmp_path, [SkippedImage("x.png", "truncated", "decode"), ("y, z.png", "not an image")]
    )
    assert _rows(tmp_path / runs.SKIPPED_FILE) == [
        {"path": "x.png", "reason": "truncated", "stage": "decode"},
        {"path": "y, z.png", "reason": "not an image", "stage": ""},
    ]
    metrics = {"n": np.int64(3), "acc": np.float32(0.5), "m": np.eye(2), "where": tmp_path}
    runs.write_metrics(tmp_path, metrics)
    written = json.loads((tmp_path / runs.METRICS_FILE).read_text())
    assert written == {"n": 3, "acc": 0.5, "m": [[1.0, 0.0], [0.0, 1.0]], "where": str(tmp_path)}
    runs.write_config(tmp_path, {"name": "x", "views": ["pixels16"]})

    run = runs.read_run(tmp_path)  # no assignments.csv: a sweep or training folder
    assert not run.has_assignments and run.paths == [] and len(run.clusters) == 0
    assert run.name == "x" and run.metrics["n"] == 3 and len(run.skipped) == 2
    with pytest.raises(runs.RunFolderError, match="assignments.csv is missing"):
        runs.read_run(tmp_path, require_assignments=True)
    with pytest.raises(runs.RunFolderError, match="assignments.csv is missing"):
        runs.read_run(tmp_path / "nowhere")


def test_record_in_mlflow_logs_history_metrics_artifacts_and_the_pointer(tmp_path):
    run_dir = tmp_path / "runs" / "one"
    runs.write_config(run_dir, {"name": "one", "lr": 0.1})
    runs.write_metrics(run_dir, {"acc": 0.5})
    (run_dir / "checkpoint.pt").write_bytes(b"weights")
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "note": "text"} for e in range(3)]
    run_id = run_mlflow.record_in_mlflow(
        run_dir,
        {"name": "one", "lr": 0.1},
        {"acc": np.float64(0.5), "scores": {"nmi": 0.25, "label": "x"}, "bad": None},
        Tracking(),
        "one",
        tags={"rayclust.stage": "test"},
        history=history,
        artifacts={"config.yaml": None, "checkpoint.pt": "checkpoint", "missing.txt": None},
    )
    pointer = runs.read_mlflow_pointer(run_dir)
    uri = default_tracking_uri(tmp_path / "runs")  # beside the run folder by default
    assert pointer == {"tracking_uri": uri, "run_id": run_id}
    client = MlflowClient(uri)
    record = client.get_run(run_id)
    assert record.data.metrics == {"acc": 0.5, "scores.nmi": 0.25, "loss": pytest.approx(1 / 3)}
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]
    assert record.data.params["lr"] == "0.1" and record.data.tags["rayclust.stage"] == "test"
    assert record.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "checkpoint"}

    # A report written later attaches itself to the same run.
    (run_dir / "report.html").write_text("<html></html>")
    assert run_mlflow.attach_to_mlflow_run(runs.read_run(run_dir), [run_dir / "report.html"])
    assert "report.html" in {a.path for a in client.list_artifacts(run_id)}


def test_record_in_mlflow_without_a_folder_logs_dicts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    run_id = run_mlflow.record_in_mlflow(
        None, {"a": 1}, {"x": 1}, Tracking(uri=uri), "no-folder", dicts={"r.json": {"k": [1]}}
    )
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(run_id)} == {"r.json"}
    assert not list(tmp_path.glob("*.json"))


def test_a_deep_run_folder_renders_with_rayclust_report(tmp_path):
    """The real deep API on 300 digits (DivClust, 2 epochs), then `rayclust report`."""
    from rayclust.cli import main
    from rayclust.deep import fit_deep, load_deep_config

    out = tmp_path / "deep-run"
    config = load_deep_config(
        None,
        [
            "method=divclust",
            "divclust.n_heads=2",
            "divclust.consensus_heads=2",
            "data.source=digits",
            "data.max_images=300",
            "data.holdout_fraction=0.2",
            "features.view=pixels",
            "features.image_size=8",
            "features.grayscale=true",
            f"features.cache_dir={tmp_path / 'cache'}",
            "trainer.backend=local",
            "trainer.epochs=2",
            "trainer.batch_size=64",
            "trainer.hidden_dim=32",
            "tracking.enabled=false",
            f"output={out}",
        ],
    )
    result = fit_deep(config)
    run = runs.read_run(out, require_assignments=True)
    assert run.paths[:2] == [_digits_path(n) for n in result.names[:2]]
    assert run.image_ids == result.names
    assert run.labels == [str(c) for c in result.truth] and run.has_labels
    np.testing.assert_array_equal(run.clusters, result.labels)
    assert sorted(set(run.extra_columns["split"])) == ["holdout", "train"]

    assert main(["report", str(out), "--no-mlflow"]) == 0
    page = (out / "report.html").read_text()
    for section in ("summary", "map-section", "confusion", "clusters"):
        assert f'id="{section}"' in page
    assert "No map: metrics.json names no view_keys" in page
    assert "inter_head_nmi_train" in page  # reports.json matrices shown
    assert ">divclust<" in page and "ACC (all)" in page


def _digits_path(name: str) -> str:
    return name.replace("digits:", "digits/")


def test_a_sweep_folder_renders_its_trials_and_plots(tmp_path):
    from rayclust.report import write_report

    sweep_dir = tmp_path / "sweep"
    rows = [
        ["t1", "TERMINATED", 8, 0.91],
        ["t2", "ERROR", 16, "nan"],
        ["t<3>", "TERMINATED", 4, 0.5],
    ]
    runs.write_csv(
        sweep_dir / "trials.csv", ["trial_id", "status", "clustering.n_clusters", "objective"], rows
    )
    (sweep_dir / "sweep.yaml").write_text(
        "name: s\nstage: cluster\nobjective: {metric: ari, mode: max}\n"
    )
    (sweep_dir / "plots").mkdir()
    Image.new("RGB", (40, 30), "red").save(sweep_dir / "plots" / "clustering.n_clusters.png")

    page = write_report(sweep_dir, log_to_mlflow=False).read_text()
    assert 'id="sweep"' in page and 'id="clusters"' not in page
    assert "t&lt;3&gt;" in page and "t<3>" not in page  # values are escaped
    assert re.search(r"<b>3</b><span>trials</span>", page)
    assert re.search(r"<b>1</b><span>errored</span>", page)
    assert 'src="data:image/png;base64,' in page
    assert not (sweep_dir / "outliers.csv").exists()


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_a_run_that_fails_is_marked_failed_or_killed(tmp_path, error, status):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recording = run_mlflow.open_mlflow_run(tmp_path / "run", {"a": 1}, Tracking(uri=uri), "r")
    assert recording is not None
    recording.fail(error)
    assert MlflowClient(uri).get_run(recording.run.run_id).info.status == status
