"""End to end: `rayclust cluster` on the shipped sample with bad files mixed in."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rayclust.config import load_config
from tests.image_factory import (
    write_png_bomb,
    write_random_bytes,
    write_text_as_image,
    write_truncated,
)

# Measured on the shipped sample (5 openclipart categories) with efficientnet_lite0 + K-means
# (faiss backend), 3 seeds: ARI 0.843 / 0.843 / 0.862, mean 0.85; chance is 0. The floor
# leaves room for seed and platform noise only.
ARI_FLOOR = 0.70


@pytest.fixture(scope="module")
def messy_sample(tmp_path_factory, sample_dir) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("messy") / "sample"
    shutil.copytree(sample_dir, root, ignore=shutil.ignore_patterns("*.md"))
    category = sorted(p for p in root.iterdir() if p.is_dir())[0]
    bad = {
        "corrupt": write_random_bytes(category / "corrupt.jpg"),
        "truncated_png": write_truncated(category / "truncated.png", "PNG"),
        "text_named_jpg": write_text_as_image(category / "notes.jpg"),
        "over_limit": write_png_bomb(category / "huge.png"),
    }
    return root, bad


@pytest.fixture(scope="module")
def cli_run(messy_sample, tmp_path_factory):
    root, bad = messy_sample
    work = tmp_path_factory.mktemp("cli")
    run_dir, cache = work / "run", work / "cache"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "rayclust",
        "cluster",
        str(root),
        "--labels-from-folders",
        "--output",
        str(run_dir),
        "--seeds",
        "3",
        "--cache-dir",
        str(cache),
        "--tracking-uri",
        uri,
        "--quiet",
        "ray.num_cpus=2",
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return proc, run_dir, cache, uri, bad, root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_cli_run_skips_bad_files_and_scores_above_floor(cli_run):
    proc, run_dir, cache, _, bad, root = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = {Path(row["path"]).name: row["reason"] for row in _read_csv(run_dir / "skipped.csv")}
    assert set(skipped) == {p.name for p in bad.values()}, skipped
    assert all(reason for reason in skipped.values())
    assert "pixels" in skipped["huge.png"] or "bomb" in skipped["huge.png"]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    n_good = sum(1 for p in root.rglob("*.png") if p.name not in skipped)
    assert metrics["n_images"] == n_good
    assert metrics["n_skipped"] == 4
    assert metrics["summary"]["ari"]["mean"] >= ARI_FLOOR, metrics["summary"]["ari"]
    assert len(metrics["per_seed"]) == 3
    assert "4 skipped (see skipped.csv)" in proc.stdout
    assert proc.stderr == ""  # --quiet: the summary only, no library or Ray notices
    # Each view's cache key is recorded, so nothing resolves a view name a second time.
    assert list(metrics["view_keys"]) == metrics["views"]
    assert all((cache / key).is_dir() for key in metrics["view_keys"].values())

    assignments = _read_csv(run_dir / "assignments.csv")
    assert len(assignments) == n_good
    assert {row["label"] for row in assignments} == {p.name for p in root.iterdir() if p.is_dir()}
    assert len({row["cluster"] for row in assignments}) == metrics["n_clusters"]
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/") >= metrics["n_clusters"]  # thumbnails inline
    assert "Content-Security-Policy" in report
    resolved = load_config(run_dir / "config.yaml")  # the written config loads back as-is
    assert resolved.input.source == str(root) and resolved.clustering.seeds == 3


def test_cli_run_is_recorded_in_mlflow(cli_run):
    from mlflow.tracking import MlflowClient

    proc, run_dir, _, uri, _, _ = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "mlflow.json").read_text())
    run = MlflowClient(tracking_uri=uri).get_run(record["run_id"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["ari_mean"] == pytest.approx(metrics["summary"]["ari"]["mean"])
    assert run.data.metrics["n_skipped"] == 4
    assert run.data.params["clustering.seeds"] == "3"
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(record["run_id"])}
    assert {"config.yaml", "skipped.csv", "assignments.csv", "metrics.json", "model.npz",
            "model.json"} <= artifacts  # fmt: skip


def test_second_run_reuses_cached_features(cli_run, ray_session, tmp_path):
    from rayclust.pipeline import run

    proc, first_dir, cache, _, _, root = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = load_config(
        overrides={
            "input": {"source": str(root), "labels_from_folders": True},
            "output": str(tmp_path / "again"),
            "extraction": {"cache_dir": str(cache)},
            "clustering": {"seeds": 1},
            "tracking": {"enabled": False},
        }
    )
    result = run(config, progress=False)
    first = json.loads((first_dir / "metrics.json").read_text())
    for view, counts in result.extraction.items():
        assert counts["n_extracted"] == 0, f"{view} ran forward passes on a cached run"
        assert counts["n_cached"] >= 1
    assert result.n_images == first["n_images"]
    assert result.n_skipped == first["n_skipped"]


def test_missing_clusters_without_labels_is_a_clear_usage_error(messy_sample, tmp_path):
    root, _ = messy_sample
    proc = subprocess.run(
        [sys.executable, "-m", "rayclust", "cluster", str(tmp_path / "does-not-exist")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does-not-exist" in proc.stderr
    assert "Traceback" not in proc.stderr
