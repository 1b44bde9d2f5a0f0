"""Landmark spectral clustering of rows sharded in Ray actors (``clustering.engine: ray``).

The sharded fit draws the landmarks from the same seeded sample as the local fit (rows read
from the shards), finds each row's nearest landmarks on the shards, and runs the rest on the
driver with the local code: on the same rows it should give the local landmark fit's labels.
Three shard actors on the suite's one Ray session stand in for three nodes, as in
tests/cluster/test_distributed.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from rayclust.cluster import SpectralClustering
from rayclust.cluster.distributed import start_shards
from rayclust.views.store import FeatureStore

SPEC_KEY = "blobs"
N_CLUSTERS = 6
# Fewer landmarks than "auto" would take (500) keep the test fast; the local fit uses the same.
LANDMARKS = {"n_landmarks": 200, "landmark_neighbors": 5}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    X, y = make_blobs(3000, n_features=16, centers=N_CLUSTERS, cluster_std=6.0, random_state=7)
    X = X.astype(np.float32)  # overlapping: the local landmark fit's ARI to y is 0.84
    ids = [f"img{i:05d}" for i in range(len(X))]
    cache = tmp_path_factory.mktemp("features")
    FeatureStore(cache, SPEC_KEY).write(ids, X)
    return X, y, ids, cache


@pytest.fixture(scope="module")
def sharded(ray_session, blobs):
    _, _, ids, cache = blobs
    # No CPUs reserved: the pipeline test's stream extraction needs both of the session's
    # (a forward actor and a decode task) and waits for ever while these actors live.
    data = start_shards(cache, SPEC_KEY, ids, 3, normalize=False, num_cpus=0)
    yield data
    data.close()


def _fit(X, seed):
    return SpectralClustering(N_CLUSTERS, method="landmark", random_state=seed, **LANDMARKS).fit(X)


@pytest.mark.parametrize("selection", ["kmeans", "random"])
def test_sharded_landmark_spectral_gives_the_local_landmark_fit(blobs, sharded, selection):
    X, y, _, _ = blobs
    make = lambda: SpectralClustering(  # noqa: E731
        N_CLUSTERS, method="landmark", landmark_selection=selection, random_state=0, **LANDMARKS
    )
    local, distributed = make().fit(X), make().fit(sharded)
    assert distributed.method_ == "landmark" and distributed.n_landmarks_ == 200
    # The same sample, so the same landmarks (K-means on it runs here, as locally).
    np.testing.assert_allclose(distributed.landmarks_, local.landmarks_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distributed.eigenvalues_, local.eigenvalues_, atol=1e-5)
    assert adjusted_rand_score(local.labels_, distributed.labels_) >= 0.99
    truth = [adjusted_rand_score(y, model.labels_) for model in (local, distributed)]
    print(f"{selection}: ARI to the blobs, local {truth[0]:.4f}, sharded {truth[1]:.4f}")
    assert truth[1] >= 0.75 and abs(truth[0] - truth[1]) <= 0.01


def test_sharded_spectral_is_deterministic_and_always_landmark(sharded):
    first, again = _fit(sharded, 3), _fit(sharded, 3)
    np.testing.assert_array_equal(first.labels_, again.labels_)
    np.testing.assert_array_equal(first.landmarks_, again.landmarks_)
    auto = SpectralClustering(N_CLUSTERS, random_state=3, **LANDMARKS).fit(sharded)
    assert auto.method_ == "landmark"  # "auto" would take the kNN graph locally at this size
    np.testing.assert_array_equal(auto.labels_, first.labels_)
    with pytest.raises(ValueError, match="method='landmark'"):
        SpectralClustering(N_CLUSTERS, method="knn").fit(sharded)


def test_the_ray_engine_builds_a_landmark_spectral_estimator():
    from rayclust.clustering import ClusterJob, make_estimator
    from rayclust.config import load_config

    for engine, method, expected in (("ray", "auto", "landmark"), ("local", "auto", "auto"),
                                     ("local", "knn", "knn")):  # fmt: skip
        overrides = [f"clustering.engine={engine}", "clustering.algorithm=spectral",
                     f"clustering.spectral_method={method}"]  # fmt: skip
        estimator = make_estimator(ClusterJob.from_config(load_config(overrides=overrides), 7), 4)
        assert isinstance(estimator, SpectralClustering)
        assert (estimator.method, estimator.n_clusters, estimator.random_state) == (expected, 7, 4)


def test_a_run_with_spectral_on_the_ray_engine_matches_the_local_engine(
    ray_session, sample_dir, tmp_path
):
    from rayclust.config import load_config
    from rayclust.pipeline import run

    cache = tmp_path / "cache"
    results = {}
    # The Ray run first: its stream workers write the features the local run then reads. At
    # 120 images the local engine's "auto" takes the kNN graph: landmarks are forced there.
    for engine, extraction, method in (("ray", "stream", "auto"), ("local", "local", "landmark")):
        config = load_config(
            None,
            {
                "input": {"source": str(sample_dir), "labels_from_folders": True},
                "views": ["pixels16"],
                "output": str(tmp_path / engine),
                "extraction": {"engine": extraction, "cache_dir": str(cache)},
                "clustering": {"algorithm": "spectral", "engine": engine, "select": "off",
                               "spectral_method": method, "seeds": 2, "shards": 3},
                "report": {"enabled": False},
                "tracking": {"enabled": False},
            },
        )  # fmt: skip
        results[engine] = run(config, progress=False)
    ray_run, local = results["ray"], results["local"]
    assert ray_run.metrics["backend"].startswith("ray:")
    assert "landmark spectral clustering on the shards" in ray_run.metrics["notes"]["engine"]
    assert ray_run.n_clusters == local.n_clusters == 5
    assert adjusted_rand_score(local.labels, ray_run.labels) >= 0.98
    for seed in range(2):
        aris = [r.metrics["per_seed"][seed]["ari"] for r in (ray_run, local)]
        print(f"seed {seed}: ARI to the folders, ray {aris[0]:.4f}, local {aris[1]:.4f}")
        assert abs(aris[0] - aris[1]) <= 0.02
