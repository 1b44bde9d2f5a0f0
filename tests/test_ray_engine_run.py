"""``rayclust cluster DIR clustering.engine=ray extraction.engine=stream`` on the shipped sample.

The same command with the local engine gives the same clusters (same k, seeds, K-means), and
the Ray run's driver never reads a feature from the FeatureStore (its ``FeatureStore.get`` is
made to fail: only the stream workers write features and only the shard actors read them);
its scores, report and predict model come from ``clustering.driver_sample`` rows fetched from
the shards, and its run folder is complete.

In-process on the suite's Ray session (the shard actors and stream workers are Ray worker
processes, so the patch holds for the driver alone). Both runs share one cache: the Ray run
extracts with the stream engine, the local run then reads those features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from rayclust import runs
from rayclust.cli import main
from rayclust.views.store import FeatureStore

# The default view (efficientnet_lite0): on 2 loaded cores the stream engine's start costs
# as much as extracting with it, and its clusters mean something (ARI 0.85 to the folders).
VIEW = "efficientnet_lite0"
SEEDS = 2
DRIVER_SAMPLE = 60  # of the sample's 120 images: the report and scores see half


def _cluster(sample_dir, run_dir, cache, *overrides: str) -> int:
    return main(
        [
            "cluster", str(sample_dir), "--labels-from-folders", "--algorithm", "kmeans",
            "--view", VIEW, "--seeds", str(SEEDS), "--output", str(run_dir), "--cache-dir", str(cache),
            "--no-mlflow", "--quiet", *overrides,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(ray_session, sample_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("ray-engine")
    cache = work / "cache"
    driver_reads = []

    def no_reads_in_the_driver(self, ids, *args, **kwargs):
        driver_reads.append(len(ids))
        raise AssertionError("the driver read features from the FeatureStore")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureStore, "get", no_reads_in_the_driver)
        ray_rc = _cluster(
            sample_dir, work / "ray", cache,
            "clustering.engine=ray", "extraction.engine=stream", "clustering.shards=2",
            f"clustering.driver_sample={DRIVER_SAMPLE}",
        )  # fmt: skip
    assert driver_reads == []
    local_rc = _cluster(
        sample_dir, work / "local", cache, "extraction.engine=local", "report.enabled=false"
    )
    assert (ray_rc, local_rc) == (0, 0)
    return {name: runs.read_run(work / name) for name in ("ray", "local")}


def test_the_ray_engine_with_stream_extraction_gives_the_local_result(two_runs):
    ray_run, local = two_runs["ray"], two_runs["local"]
    assert ray_run.image_ids == local.image_ids and len(local.image_ids) == 120
    assert ray_run.metrics["backend"].startswith("ray:")
    assert ray_run.metrics["n_clusters"] == local.metrics["n_clusters"] == 5
    assert adjusted_rand_score(local.clusters, ray_run.clusters) >= 0.98
    for seed in range(SEEDS):  # each seed's fit, scored against the folder labels
        ari = (run.metrics["per_seed"][seed]["ari"] for run in (ray_run, local))
        assert abs(next(ari) - next(ari)) <= 0.02


def test_the_driver_holds_a_sample_and_the_run_folder_is_complete(two_runs):
    run = two_runs["ray"]
    assert run.metrics["driver_sample"] | {"used_for": ""} == {
        "rows": DRIVER_SAMPLE, "of": 120, "setting": DRIVER_SAMPLE, "used_for": "",
    }  # fmt: skip
    assert np.isfinite(run.metrics["summary"]["silhouette"]["mean"])
    assert "scored on 60 of 120 rows" in run.metrics["notes"]["engine"]
    for name in (
        runs.CONFIG_FILE, runs.MANIFEST_FILE, runs.SKIPPED_FILE, runs.ASSIGNMENTS_FILE,
        runs.METRICS_FILE, runs.RESULTS_FILE, runs.MODEL_FILE, "report.html",
        "near_duplicates.csv", "outliers.csv", "mislabelled.csv",
    ):  # fmt: skip
        assert (run.run_dir / name).is_file(), name
    page = (run.run_dir / "report.html").read_text()
    assert f"{DRIVER_SAMPLE} of 120 images" in page  # the map is drawn from the sample
    # ... but the duplicates and outliers cover every row, searched on the shards.
    assert "Whole collection: all 120 images searched on the shards" in page
    assert "outliers of all 120 rows by a sharded IVF kNN" in run.metrics["notes"]["engine"]
    outliers = (run.run_dir / "outliers.csv").read_text().splitlines()
    assert outliers[0] == "path,score" and len(outliers) == 1 + 120
    assert {line.rsplit(",", 1)[0] for line in outliers[1:]} == set(run.paths)
    assert page.count("data:image/jpeg;base64,") >= 5  # thumbnails of every cluster
    info = json.loads((run.run_dir / runs.MODEL_INFO_FILE).read_text())
    assert (info["n_clusters"], info["n_images"]) == (5, DRIVER_SAMPLE)  # built on the sample


def test_the_report_rendered_again_reads_the_sample_rows_only(two_runs, monkeypatch):
    from rayclust.report import write_report

    read, get = [], FeatureStore.get

    def counting(self, ids, *args, **kwargs):
        read.append(len(ids))
        return get(self, ids, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "get", counting)
    run_dir = two_runs["ray"].run_dir
    before = (run_dir / "outliers.csv").read_text()
    page = write_report(run_dir, log_to_mlflow=False)
    assert read == [DRIVER_SAMPLE]
    text = page.read_text()
    assert f"{DRIVER_SAMPLE} of 120 images" in text
    # The whole collection's lists, searched on the shards during the run, are kept: not
    # replaced by lists of the sample the report reads now.
    assert "Whole collection: all 120 images searched on the shards" in text
    assert (run_dir / "outliers.csv").read_text() == before
