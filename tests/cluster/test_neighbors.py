"""NearestNeighbors: exact backends agree with scikit-learn, approximate ones reach recall."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors as SkNearestNeighbors

from rayclust.cluster import NearestNeighbors, kneighbors_graph, neighbor_recall

CPU_BACKENDS = ["faiss", "torch", "sklearn"]


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=2000, n_features=16, centers=6, random_state=42)
    return X.astype(np.float32)


def numpy_knn(X, Q, k, exclude_self):
    """Plain-numpy reference: full distance matrix, argsort."""
    d2 = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, axis=1)), order


def test_hand_built_line():
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    nn = NearestNeighbors(n_neighbors=2, backend="faiss", method="exact").fit(X)
    distances, indices = nn.kneighbors()
    np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [1, 0], [2, 1]])
    np.testing.assert_allclose(distances, [[1, 3], [1, 2], [2, 3], [4, 6]])
    distances, indices = nn.kneighbors([[2.9]], n_neighbors=1)
    assert indices.tolist() == [[2]] and distances[0, 0] == pytest.approx(0.1, abs=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exact_backends_match_numpy_reference(blobs, backend):
    X = blobs[:500]
    ref_dist, ref_ind = numpy_knn(X, X, 7, exclude_self=True)
    nn = NearestNeighbors(n_neighbors=7, method="exact", backend=backend).fit(X)
    distances, indices = nn.kneighbors()
    assert nn.backend_ == backend and nn.method_ == "exact"
    assert (indices == ref_ind).mean() > 0.999  # ties may swap, nothing else
    np.testing.assert_allclose(distances, ref_dist, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cosine_matches_sklearn(blobs, backend):
    X, Q = blobs[:400], blobs[400:450]
    ref_dist, ref_ind = SkNearestNeighbors(n_neighbors=5, metric="cosine").fit(X).kneighbors(Q)
    distances, indices = (
        NearestNeighbors(n_neighbors=5, metric="cosine", backend=backend).fit(X).kneighbors(Q)
    )
    assert (indices == ref_ind).mean() > 0.99
    np.testing.assert_allclose(distances, ref_dist, atol=1e-5)


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_recall(blobs, method):
    _, exact = NearestNeighbors(10, method="exact").fit(blobs).kneighbors()
    nn = NearestNeighbors(10, method=method, random_state=0).fit(blobs)
    _, approx = nn.kneighbors()
    assert nn.method_ == method and nn.backend_ == "faiss"
    assert neighbor_recall(approx, exact) >= 0.95


def test_auto_method_switches_to_ivf_above_threshold(blobs):
    assert NearestNeighbors(5).fit(blobs).method_ == "exact"
    approx = NearestNeighbors(5, exact_max_samples=1000, random_state=0).fit(blobs)
    assert approx.method_ == "ivf" and approx.n_probe is None
    _, exact = NearestNeighbors(5, method="exact").fit(blobs).kneighbors()
    assert neighbor_recall(approx.kneighbors(return_distance=False), exact) >= 0.95


def test_duplicates_never_list_self():
    X = np.repeat(np.arange(5.0)[:, None], 3, axis=0)  # every point three times
    _, indices = NearestNeighbors(2, method="exact").fit(X).kneighbors()
    assert not (indices == np.arange(15)[:, None]).any()
    np.testing.assert_array_equal(X[indices][:, :, 0], np.repeat(X, 2, axis=1))


def test_graph_matches_sklearn(blobs):
    X = blobs[:300]
    ours = kneighbors_graph(X, 6, mode="distance")
    ref = SkNearestNeighbors(n_neighbors=6).fit(X).kneighbors_graph(mode="distance")
    assert ours.shape == (300, 300) and ours.nnz == 300 * 6 and ours.diagonal().sum() == 0
    assert abs(ours - ref).max() < 1e-3
    connectivity = kneighbors_graph(X, 6)
    np.testing.assert_array_equal(connectivity.data, 1.0)


def test_errors():
    X = np.random.default_rng(0).normal(size=(10, 3))
    nn = NearestNeighbors(3).fit(X)
    with pytest.raises(ValueError, match=r"n_neighbors=10 should be <= n_samples_fit=10 - 1"):
        nn.kneighbors(n_neighbors=10)
    with pytest.raises(ValueError, match="X has 2 features, but NearestNeighbors is expecting 3"):
        nn.kneighbors(X[:, :2])
    with pytest.raises(ValueError, match=r"method='annoy' should be one of"):
        NearestNeighbors(method="annoy").fit(X)
    with pytest.raises(ValueError, match=r"backend='sklearn' is not supported for hnsw"):
        NearestNeighbors(method="hnsw", backend="sklearn").fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 10 rows"):
        NearestNeighbors(3).fit(bad)


def test_neighbor_recall():
    assert neighbor_recall([[1, 2], [3, 4]], [[2, 1], [3, 5]]) == 0.75
    with pytest.raises(ValueError, match="should equal exact_indices shape"):
        neighbor_recall([[1, 2]], [[1, 2, 3]])


def test_search_knobs_apply_without_refit(blobs):
    _, exact = NearestNeighbors(10, method="exact").fit(blobs).kneighbors()
    nn = NearestNeighbors(10, method="ivf", n_lists=64, n_probe=1, random_state=0).fit(blobs)
    index = nn.index_
    low = neighbor_recall(nn.kneighbors(return_distance=False), exact)
    nn.set_params(n_probe=64)  # every list: IVF becomes exhaustive
    full = neighbor_recall(nn.kneighbors(return_distance=False), exact)
    assert nn.index_ is index and nn.n_probe_ == 64
    assert low < full and full > 0.999
