"""K-means and PCA over features sharded in Ray actors (``clustering.engine: ray``).

Runs on the suite's one local Ray session: three shard actors with a fractional CPU each on
one node stand in for three nodes (a simulated multi-node cluster costs more to start than
these tests take; tests/cloud/test_multinode.py covers losing a whole node). The actors read
their rows from a FeatureStore themselves; the driver only passes ids.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from rayclust.cluster import KMeans
from rayclust.cluster.distributed import ShardLoadError, fit_pca, split_ids, start_shards
from rayclust.config import ConfigError, RunConfig, config_from_dict
from rayclust.views.store import FeatureStore

SPEC_KEY = "blobs"
N_CLUSTERS = 8


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    X, _ = make_blobs(3000, n_features=16, centers=N_CLUSTERS, cluster_std=2.5, random_state=3)
    X = X.astype(np.float32)
    ids = [f"img{i:05d}" for i in range(len(X))]
    cache = tmp_path_factory.mktemp("features")
    # Two store shards whose boundary is not a shard actor's: actors read by id, not by file.
    FeatureStore(cache, SPEC_KEY).write(ids[:1300], X[:1300])
    FeatureStore(cache, SPEC_KEY).write(ids[1300:], X[1300:])
    return X, ids, cache


@pytest.fixture(scope="module")
def sharded(ray_session, blobs):
    _, ids, cache = blobs
    data = start_shards(cache, SPEC_KEY, ids, 3, normalize=False, num_cpus=0.1)
    yield data
    data.close()


def test_split_ids_keeps_order_and_covers_everything():
    parts = split_ids([str(i) for i in range(10)], 3)
    assert [len(p) for p in parts] == [3, 4, 3]
    assert sum(parts, ()) == tuple(str(i) for i in range(10))
    with pytest.raises(ValueError, match="shards=4"):
        split_ids(["a", "b", "c"], 4)


def test_sharded_kmeans_equals_local_and_each_actor_holds_a_third(blobs, sharded):
    X, _, _ = blobs
    local = KMeans(N_CLUSTERS, random_state=0).fit(X)
    distributed = KMeans(N_CLUSTERS, random_state=0).fit(sharded)
    assert abs(distributed.inertia_ - local.inertia_) <= 0.005 * local.inertia_
    assert adjusted_rand_score(local.labels_, distributed.labels_) >= 0.99
    assert sharded.full_passes > 0  # the full-data passes ran on the shards

    held = [info["bytes"] for info in sharded.info()]
    print("bytes held per shard actor:", held, "of", X.nbytes)
    assert sum(held) == X.nbytes
    assert all(abs(b - X.nbytes / 3) <= 0.01 * X.nbytes for b in held)


def test_a_shard_actor_killed_mid_fit_is_reloaded_and_the_fit_is_unchanged(
    ray_session, blobs, sharded
):
    reference = KMeans(N_CLUSTERS, random_state=1).fit(sharded)
    assign = sharded.assign
    passes = {"n": 0}

    def assign_then_lose_a_shard(centroids, *, accumulate=True):
        passes["n"] += 1
        if passes["n"] == 3:  # between two Lloyd passes: the next call meets a fresh actor
            ray_session.kill(sharded.actors[1], no_restart=False)
        return assign(centroids, accumulate=accumulate)

    sharded.assign = assign_then_lose_a_shard
    try:
        again = KMeans(N_CLUSTERS, random_state=1).fit(sharded)
    finally:
        del sharded.assign
    assert passes["n"] > 3
    np.testing.assert_array_equal(again.labels_, reference.labels_)
    assert again.inertia_ == pytest.approx(reference.inertia_, rel=1e-6)


def test_pca_from_summed_moments_matches_sklearn(blobs, sharded):
    from sklearn.decomposition import PCA

    X, _, _ = blobs
    variances = fit_pca(sharded, 4)
    try:
        local = PCA(4).fit(X)
        np.testing.assert_allclose(variances, local.explained_variance_ * (len(X) - 1) / len(X),
                                   rtol=1e-4)  # fmt: skip
        rows = np.arange(0, len(X), 97)
        # Components agree up to sign: compare absolute coordinates.
        np.testing.assert_allclose(
            np.abs(sharded.get_subset(rows)), np.abs(local.transform(X[rows])), atol=1e-3
        )
    finally:
        sharded.projection = None  # the shards reload their stored rows on the next call


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clustering": {"engine": "ray", "algorithm": "agglomerative"}}, "or spectral with a"),
        ({"clustering": {"engine": "ray", "n_clusters": "auto"}}, "K-means or spectral with a"),
        (
            {"clustering": {"engine": "ray", "algorithm": "spectral", "n_clusters": "auto"}},
            "with a given k",
        ),
        (
            {"clustering": {"engine": "ray", "algorithm": "spectral", "spectral_method": "knn"}},
            "spectral_method=knn needs clustering.engine=local",
        ),
        ({"clustering": {"engine": "ray"}, "views": ["a", "b"]}, "clusters one view"),
        (
            {"clustering": {"engine": "ray"}, "ensemble": {"view_algorithm": "agglomerative"}},
            "ensemble.view_algorithm='agglomerative'",
        ),
        ({"clustering": {"engine": "ray"}, "ensemble": {"mode": "paper"}}, "mode='paper'"),
        ({"clustering": {"engine": "spark"}}, "clustering.engine"),
    ],
)
def test_ray_engine_config_mistakes_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config_from_dict(RunConfig, overrides)
    assert "\n" not in str(caught.value)


def test_a_shard_that_cannot_read_its_ids_stops_with_one_line(ray_session, blobs):
    _, ids, cache = blobs
    with pytest.raises(ShardLoadError, match="same path on every node") as caught:
        start_shards(cache, SPEC_KEY, [*ids[:5], "not-stored"], 1, normalize=False, num_cpus=0.1)
    assert "\n" not in str(caught.value)


def test_the_clustering_stage_on_the_ray_engine_gives_the_local_result(ray_session, blobs):
    from rayclust.clustering import cluster_features, load_features

    _, ids, cache = blobs
    results = {}
    for engine in ("local", "ray"):
        config = config_from_dict(
            RunConfig,
            {
                "views": ["blobs"],
                "extraction": {"cache_dir": str(cache)},
                # select stays at its default (auto) for ray: the engine does not apply it.
                "clustering": {"engine": engine, "shards": 3, "seeds": 2, "n_clusters": 8}
                | ({"select": "off"} if engine == "local" else {}),
            },
        )
        features = load_features(config, ids, {"blobs": SPEC_KEY})
        results[engine] = cluster_features(features, config)
    local, distributed = results["local"], results["ray"]
    assert distributed.backend.startswith("ray:") and "3 shards" in distributed.notes["engine"]
    assert distributed.selection is None and distributed.algorithm == "kmeans"
    local_seeds, ray_seeds = (r.rows["view:blobs"]["partitions"] for r in (local, distributed))
    aris = [adjusted_rand_score(a, b) for a, b in zip(local_seeds, ray_seeds, strict=True)]
    assert len(aris) == 2 and min(aris) >= 0.99
    assert adjusted_rand_score(local.labels, distributed.labels) >= 0.99


def test_a_shard_projects_its_rows_in_chunks_not_in_a_whole_shard_copy(tmp_path):
    """The PCA projection a shard applies allocates at most ~its own size more at the peak;
    projected whole (a copy, then float64, then centred) it took five times the shard, which
    put a 1M-image run's cluster stage past the machine's memory."""
    import tracemalloc

    from rayclust.cluster.distributed import FeatureShard, ShardSource

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8000, 256)).astype(np.float32)
    ids = [f"r{i:05d}" for i in range(len(X))]
    FeatureStore(tmp_path, SPEC_KEY).write(ids, X)
    shard = FeatureShard(ShardSource(str(tmp_path), SPEC_KEY, tuple(ids), False), "auto", 1000)
    mean = X.mean(axis=0).astype(np.float64)
    components = np.linalg.qr(rng.normal(size=(256, 16)))[0]
    tracemalloc.start()
    try:
        projected = shard.rows(np.arange(len(X)), ("pca-16", mean, components))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = ((X.astype(np.float64) - mean) @ components).astype(np.float32)
    np.testing.assert_allclose(projected, expected, rtol=1e-5, atol=1e-5)
    assert peak < 1.0 * X.nbytes, f"peak {peak / X.nbytes:.2f}x the shard"


@pytest.mark.parametrize(
    ("node_cpus", "shards", "each"),
    [
        ([0, 1, 1, 1], 3, 1.0),  # a head without CPUs takes no shard
        ([0, 1, 1, 1], 4, 0.5),  # 0.75 each (an equal share) would leave the fourth waiting
        ([2, 2, 2], 4, 1.0),
        ([0.5], 3, 0.5 / 3),
        ([0, 0], 2, 0.0),
    ],
)
def test_shard_cpus_always_fit_on_the_nodes(node_cpus, shards, each):
    from rayclust.cluster.distributed import shard_cpus

    got = shard_cpus(node_cpus, shards)
    assert got == pytest.approx(each)
    if got:
        assert sum(int(c / got + 1e-9) for c in node_cpus) >= shards
