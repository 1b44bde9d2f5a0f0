"""AgglomerativeClustering on a connectivity graph: scikit-learn agreement, hand-built trees,
disconnected graphs, thresholds, inputs and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.cluster import AgglomerativeClustering as SkAgglomerativeClustering
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph
from sklearn.utils.estimator_checks import parametrize_with_checks

from rayclust.cluster.agglomerative import AgglomerativeClustering


@pytest.fixture(scope="module")
def connected_blobs():
    """Overlapping blobs whose 10-NN graph is connected (no component special case)."""
    X, y = make_blobs(n_samples=400, n_features=3, centers=4, cluster_std=3.0, random_state=42)
    graph = kneighbors_graph(X, 10, include_self=False)
    return X, y, graph


def _sklearn(X, graph, n_clusters=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's "completing the graph"
        return SkAgglomerativeClustering(
            n_clusters, connectivity=graph, compute_distances=True, **kwargs
        ).fit(X)


def _ward_height(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = len(a), len(b)
    return float(np.sqrt(2 * na * nb / (na + nb)) * np.linalg.norm(a.mean(0) - b.mean(0)))


# -- agreement with scikit-learn -------------------------------------------------------------


@pytest.mark.parametrize("n_clusters", [2, 4, 9])
def test_ward_matches_sklearn_exactly_on_connected_graph(connected_blobs, n_clusters):
    X, _, graph = connected_blobs
    ours = AgglomerativeClustering(n_clusters, linkage="ward", connectivity=graph).fit(X)
    reference = _sklearn(X, graph, n_clusters, linkage="ward")
    assert ours.n_connected_components_ == 1
    assert adjusted_rand_score(reference.labels_, ours.labels_) == 1.0
    # Same tree: the same merge heights (sklearn computes them in float64, we from float32).
    np.testing.assert_allclose(ours.distances_, reference.distances_, rtol=1e-5)
    assert ours.children_.shape == (399, 2)
    assert ours.n_iter_ < 100  # rounds, far fewer than the 399 merges


def test_ward_distance_threshold_matches_sklearn(connected_blobs):
    X, _, graph = connected_blobs
    reference = _sklearn(X, graph, None, linkage="ward", distance_threshold=25.0)
    ours = AgglomerativeClustering(
        None, linkage="ward", connectivity=graph, distance_threshold=25.0
    ).fit(X)
    assert ours.n_clusters_ == reference.n_clusters_ > 1
    assert adjusted_rand_score(reference.labels_, ours.labels_) == 1.0


def test_average_linkage_agrees_with_sklearn_on_separated_blobs():
    X, y = make_blobs(n_samples=300, n_features=2, centers=3, cluster_std=1.0, random_state=42)
    graph = kneighbors_graph(X, 10, include_self=False)
    for n_clusters in (3, 8):
        ours = AgglomerativeClustering(n_clusters, linkage="average", connectivity=graph).fit(X)
        reference = _sklearn(X, graph, n_clusters, linkage="average")
        assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.98
    assert adjusted_rand_score(y, AgglomerativeClustering(3, linkage="average").fit(X).labels_) == 1


def test_average_linkage_chains_on_overlapping_blobs_as_sklearn_does():
    """The 100k benchmark's data (50 unit-variance blobs in 64-d, centres in [-1.5, 1.5]^64,
    10-NN graph) at n=3000: average linkage ends with one giant cluster and 49 outliers, in
    scikit-learn too (measured the same at n=20,000: largest cluster 99.8% for both), while
    ward recovers the blobs. ARI ~0 for average linkage there is chaining, not a bug."""
    rng = np.random.RandomState(0)
    centers = rng.uniform(-1.5, 1.5, size=(50, 64))
    truth = rng.randint(50, size=3000)
    X = (centers[truth] + rng.standard_normal((3000, 64))).astype(np.float32)
    graph = kneighbors_graph(X, 10, include_self=False)
    ours = AgglomerativeClustering(50, linkage="average", connectivity=graph).fit(X)
    reference = _sklearn(X, graph, 50, linkage="average")
    for labels in (ours.labels_, reference.labels_):
        sizes = np.sort(np.bincount(labels))[::-1]
        assert sizes[0] > 0.95 * len(X)  # one chain swallows almost everything
        assert adjusted_rand_score(truth, labels) < 0.01
    # The same outliers are left out (the chained partitions nearly coincide).
    assert adjusted_rand_score(reference.labels_, ours.labels_) > 0.8
    ward = AgglomerativeClustering(50, linkage="ward", connectivity=graph).fit(X)
    assert adjusted_rand_score(truth, ward.labels_) > 0.98


def test_average_linkage_on_complete_graph_is_upgma():
    """With every pair connected, graph average linkage is plain average linkage (scipy)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    complete = np.ones((40, 40)) - np.eye(40)
    ours = AgglomerativeClustering(2, linkage="average", connectivity=complete).fit(X)
    reference = scipy_linkage(X.astype(np.float32).astype(np.float64), method="average")
    np.testing.assert_allclose(np.sort(ours.distances_), np.sort(reference[:, 2]), rtol=1e-6)


def test_ward_on_complete_graph_is_scipy_ward():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    complete = np.ones((30, 30)) - np.eye(30)
    ours = AgglomerativeClustering(2, linkage="ward", connectivity=complete).fit(X)
    reference = scipy_linkage(X.astype(np.float32).astype(np.float64), method="ward")
    np.testing.assert_allclose(ours.distances_, reference[:, 2], rtol=1e-6)


# -- hand-built trees ------------------------------------------------------------------------


def test_hand_built_chain_gives_the_expected_tree():
    # Points on a line, connected as a chain 0-1-2-3-4-5.
    X = np.array([[0.0], [1.0], [3.0], [10.0], [11.0], [14.0]])
    chain = sp.diags([np.ones(5)], [1], shape=(6, 6))
    model = AgglomerativeClustering(2, linkage="ward", connectivity=chain).fit(X)
    np.testing.assert_array_equal(model.labels_, [0, 0, 0, 1, 1, 1])
    expected_heights = [
        1.0,  # {0} + {1}
        1.0,  # {10} + {11}
        _ward_height(X[[0, 1]], X[[2]]),  # {0, 1} + {3}: sqrt(4/3) * 2.5
        _ward_height(X[[3, 4]], X[[5]]),  # {10, 11} + {14}: sqrt(4/3) * 3.5
        _ward_height(X[:3], X[3:]),
    ]
    np.testing.assert_allclose(model.distances_, expected_heights)
    np.testing.assert_array_equal(model.children_, [[0, 1], [3, 4], [6, 2], [7, 5], [8, 9]])
    assert model.n_leaves_ == 6
    three = AgglomerativeClustering(3, linkage="ward", connectivity=chain).fit(X)
    np.testing.assert_array_equal(three.labels_, [0, 0, 0, 1, 1, 2])


def test_hand_built_average_linkage_respects_the_graph():
    # 0 and 2 are close but not connected; the chain forces 0-1 and 1-2 merges instead.
    X = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 0.5], [20.0, 0.0]])
    graph = sp.coo_matrix(([1, 1, 1], ([0, 1, 2], [1, 2, 3])), shape=(4, 4))
    model = AgglomerativeClustering(2, linkage="average", connectivity=graph).fit(X)
    np.testing.assert_array_equal(model.labels_, [0, 0, 0, 1])
    d01, d12 = 5.0, float(np.hypot(5.0, 0.5))
    assert model.distances_[0] == pytest.approx(d01)
    # {0,1} - 2 through the single edge 1-2 keeps that edge's length (sklearn's rule).
    assert model.distances_[1] == pytest.approx(d12)


# -- graphs that are not connected ------------------------------------------------------------


def _four_groups():
    rng = np.random.default_rng(3)
    centers = np.array([[0, 0], [0, 30], [200, 0], [200, 30]], dtype=float)
    X = np.vstack([rng.normal(c, 1.0, size=(25, 2)) for c in centers])
    return X, np.repeat(np.arange(4), 25)


@pytest.mark.parametrize("linkage", ["ward", "average"])
def test_components_stay_apart_and_merge_only_when_asked(linkage):
    X, truth = _four_groups()
    model = AgglomerativeClustering(4, linkage=linkage, n_neighbors=5).fit(X)
    assert model.n_connected_components_ == 4
    assert adjusted_rand_score(truth, model.labels_) == 1.0
    assert model.children_.shape == (96, 2)  # merges inside components only
    # Fewer clusters than components: whole components are merged, nearest first.
    two = AgglomerativeClustering(2, linkage=linkage, n_neighbors=5).fit(X)
    assert adjusted_rand_score(truth // 2, two.labels_) == 1.0
    assert two.children_.shape == (99, 2)  # the full tree
    assert np.all(np.diff(two.distances_) >= 0)
    one = AgglomerativeClustering(1, linkage=linkage, n_neighbors=5).fit(X)
    assert np.all(one.labels_ == 0)


def test_distance_threshold_on_disconnected_graph_builds_the_full_tree():
    X, truth = _four_groups()
    model = AgglomerativeClustering(None, n_neighbors=5, distance_threshold=100.0).fit(X)
    assert model.children_.shape == (99, 2)
    assert model.n_clusters_ == 4
    assert adjusted_rand_score(truth, model.labels_) == 1.0


# -- inputs and backends ----------------------------------------------------------------------


def test_builds_its_own_knn_graph_like_sklearn_connectivity(connected_blobs):
    X, _, graph = connected_blobs
    own = AgglomerativeClustering(4, n_neighbors=10).fit(X)
    given = AgglomerativeClustering(4, connectivity=graph).fit(X)
    assert own.backend_ in ("faiss", "torch", "sklearn")
    assert set(own.timings_) == {"graph", "merge"}
    assert adjusted_rand_score(given.labels_, own.labels_) == 1.0


def test_numpy_memmap_and_torch_inputs_agree(connected_blobs, tmp_path):
    torch = pytest.importorskip("torch")
    X, _, _ = connected_blobs
    X32 = X.astype(np.float32)
    memmap = np.memmap(tmp_path / "X.f32", dtype=np.float32, mode="w+", shape=X32.shape)
    memmap[:] = X32
    reference = AgglomerativeClustering(4).fit_predict(X32)
    for data in (X, memmap, torch.from_numpy(X32)):
        assert adjusted_rand_score(reference, AgglomerativeClustering(4).fit_predict(data)) == 1


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_backends_build_the_same_graph(connected_blobs, backend):
    pytest.importorskip("torch")
    X, _, _ = connected_blobs
    reference = AgglomerativeClustering(4, backend="faiss").fit_predict(X)
    model = AgglomerativeClustering(4, backend=backend).fit(X)
    assert model.backend_ == backend
    assert adjusted_rand_score(reference, model.labels_) == 1.0


def test_duplicate_points_merge_first_at_height_zero():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [4.0, 0.0], [9.0, 9.0]])
    model = AgglomerativeClustering(3, n_neighbors=2).fit(X)
    np.testing.assert_array_equal(model.distances_[:3], 0.0)
    assert adjusted_rand_score([0, 0, 0, 1, 1, 2], model.labels_) == 1.0


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_refused_with_both_values():
    X, _ = make_blobs(n_samples=12, n_features=3, random_state=42)
    with pytest.raises(ValueError, match="n_samples=12 should be >= n_clusters=20"):
        AgglomerativeClustering(20).fit(X)
    bad = X.copy()
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="Input contains NaN or inf in 1 of 12 rows"):
        AgglomerativeClustering(2).fit(bad)
    with pytest.raises(ValueError, match="linkage='single' should be one of ward, average"):
        AgglomerativeClustering(2, linkage="single").fit(X)
    with pytest.raises(ValueError, match="exactly one of n_clusters=None and distance_threshold"):
        AgglomerativeClustering(None).fit(X)
    with pytest.raises(ValueError, match="exactly one of n_clusters=2 and distance_threshold=1.0"):
        AgglomerativeClustering(2, distance_threshold=1.0).fit(X)
    with pytest.raises(ValueError, match=r"connectivity has shape \(5, 5\); it should be"):
        AgglomerativeClustering(2, connectivity=sp.eye(5)).fit(X)
    with pytest.raises(ValueError, match="n_neighbors=0 should be an int >= 1"):
        AgglomerativeClustering(2, n_neighbors=0).fit(X)
    with pytest.raises(ValueError, match="Expected a 2-D array"):
        AgglomerativeClustering(2).fit(X[:, 0])


@parametrize_with_checks([AgglomerativeClustering(n_clusters=3, n_neighbors=5)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
