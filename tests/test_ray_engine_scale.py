"""``clustering.engine=ray`` at scale, on small real data: the two-level K-means
(``clustering.kmeans_levels``) and the whole collection's near-duplicates and outliers from
the shards' IVF kNN, checked against the exact lists the report computes locally."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rayclust.cluster import KMeans, TopDownKMeans
from rayclust.clustering import ClusterJob, make_estimator
from rayclust.clustering_ray import cluster_sharded
from rayclust.config import load_config
from rayclust.images import decode_image
from rayclust.report import find_neighbour_lists
from rayclust.report.neighbours import near_duplicate_threshold
from rayclust.views import ViewEncoder
from rayclust.views.store import FeatureStore

VIEW = "pixels16"


@pytest.fixture(scope="module")
def planted(sample_dir, tmp_path_factory):
    """The shipped sample under pixels16 with planted near-duplicates (a 90% resize and a
    JPEG re-save of every 25th drawing), stored in a FeatureStore; the last row repeats the
    first one's content id (an exact duplicate)."""
    images = [decode_image(p) for p in sorted(sample_dir.rglob("*.png"))]
    for img in images[::25]:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        images += [img.resize((img.width * 9 // 10, img.height * 9 // 10)),
                   Image.open(io.BytesIO(buf.getvalue())).convert("RGB")]  # fmt: skip
    features = ViewEncoder(VIEW).encode(images).astype(np.float32)
    cache = tmp_path_factory.mktemp("scale-cache")
    ids = [f"img{i:04d}" for i in range(len(features))]
    FeatureStore(cache, "pixels16-key").write(ids, features)
    return cache, ids + [ids[0]], np.vstack([features, features[:1]])


@pytest.fixture(scope="module")
def result(ray_session, planted):
    """One sharded run (starting shard actors is most of its time) with two levels."""
    cache, ids, _ = planted
    config = load_config(
        overrides=[
            f"extraction.cache_dir={cache}", "clustering.engine=ray", "clustering.seeds=1",
            "clustering.shards=2", "clustering.n_clusters=12", "clustering.kmeans_levels=2",
            "evaluation.silhouette_sample=1000",
        ]
    )  # fmt: skip
    return cluster_sharded(config, ids, {VIEW: "pixels16-key"}, None, 12)[0]


@pytest.mark.parametrize(
    "levels, k, expected",
    [("auto", 12, KMeans), ("auto", 2_000, TopDownKMeans), (2, 12, TopDownKMeans),
     (1, 5_000, KMeans)],
)  # fmt: skip
def test_kmeans_levels_choose_the_estimator(levels, k, expected):
    config = load_config(overrides=[f"clustering.kmeans_levels={levels}"])
    job = ClusterJob.from_config(config, k)
    assert type(make_estimator(job, 0)) is expected
    assert job.levels_note().startswith("two-level" if expected is TopDownKMeans else "flat")


def test_the_ray_engine_fits_two_levels_and_says_so(result, planted):
    assert "two-level K-means (TopDownKMeans, 12 under 3 coarse)" in result.notes["engine"]
    assert "(clustering.kmeans_levels=2)" in result.notes["engine"]
    assert len(np.unique(result.labels)) == 12 and len(result.labels) == len(planted[1])


def test_duplicates_and_outliers_of_every_row_come_from_the_shards(result, planted):
    _, ids, features = planted
    lists = result.neighbours
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    exact = find_neighbour_lists(unit, ids)  # the report's local lists, exact kNN
    n = len(ids)
    assert lists.n_searched == n and f"all {n:,} images searched on the shards" in lists.scope
    assert [(g.kind, g.rows.tolist()) for g in lists.groups] == [
        (g.kind, g.rows.tolist()) for g in exact.groups
    ]
    assert [g.rows.tolist() for g in lists.groups if g.kind == "exact"] == [[0, n - 1]]
    assert sum(g.kind == "near" for g in lists.groups) >= 5  # the planted copies
    # Both thresholds are the brute-force float64 one (the local one was 4.6% off when it left
    # out distances <= 0: its float32 search put two distinct images 1.4e-6 apart at <= 0).
    brute = 1.0 - unit[:-1].astype(np.float64) @ unit[:-1].T.astype(np.float64)
    np.fill_diagonal(brute, np.inf)
    truth, _ = near_duplicate_threshold(brute.min(axis=1))
    assert lists.threshold == pytest.approx(truth, rel=1e-4)
    assert exact.threshold == pytest.approx(truth, rel=1e-3)  # float32 1 - cos: ~1e-6 off
    # Every unique row is listed by score; a few lists probed of few: the same ranking.
    assert len(lists.outlier_rows) == n - 1
    np.testing.assert_array_equal(lists.outlier_rows[:10], exact.outlier_rows[:10])
    np.testing.assert_allclose(lists.outlier_scores, exact.outlier_scores, atol=1e-4)
