"""SpectralClustering: agreement with scikit-learn, both formulations, disconnected graphs,
automatic k, input types and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import SpectralClustering as SkSpectralClustering
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from rayclust.cluster.spectral import (
    DisconnectedGraphWarning,
    SpectralClustering,
    knn_affinity,
    landmark_weights,
    nearest_landmarks,
    select_landmarks,
    smallest_laplacian_eigenpairs,
)


@pytest.fixture(scope="module")
def touching_blobs():
    """Three blobs close enough that the 10-NN graph is one connected component."""
    X, y = make_blobs(n_samples=300, n_features=2, centers=3, cluster_std=2.0, random_state=42)
    return X, y


@pytest.fixture(scope="module")
def sklearn_labels(touching_blobs):
    X, _ = touching_blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SkSpectralClustering(
            n_clusters=3, affinity="nearest_neighbors", n_neighbors=10, random_state=0
        ).fit_predict(X)


def _separated_groups(sizes, centers, std, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(c, std, size=(n, len(c))) for n, c in zip(sizes, centers, strict=True)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.vstack(parts), labels


# -- agreement with scikit-learn -------------------------------------------------------------


def test_knn_method_matches_sklearn_on_connected_graph(touching_blobs, sklearn_labels):
    X, y = touching_blobs
    model = SpectralClustering(3, method="knn", n_neighbors=10, random_state=0).fit(X)
    assert model.n_components_ == 1  # the eigensolver path, not the component shortcut
    assert model.method_ == "knn"
    assert adjusted_rand_score(sklearn_labels, model.labels_) >= 0.98
    assert adjusted_rand_score(y, model.labels_) >= 0.95
    assert model.labels_.shape == (300,)
    assert model.n_clusters_ == 3
    assert set(np.unique(model.labels_)) == {0, 1, 2}


def test_landmark_method_matches_sklearn(touching_blobs, sklearn_labels):
    X, _ = touching_blobs
    model = SpectralClustering(3, method="landmark", n_landmarks=40, random_state=0).fit(X)
    assert model.method_ == "landmark"
    assert model.n_landmarks_ == 40
    assert model.landmarks_.shape == (40, 2)
    assert model.n_components_ == 1
    assert adjusted_rand_score(sklearn_labels, model.labels_) >= 0.95


def test_method_auto_picks_by_size(touching_blobs):
    X, _ = touching_blobs
    assert SpectralClustering(3, random_state=0).fit(X).method_ == "knn"
    model = SpectralClustering(3, knn_max_samples=100, random_state=0).fit(X)
    assert model.method_ == "landmark"
    assert model.n_landmarks_ == 30  # auto: n_samples / 10 on small data


# -- the pieces against plain numpy references ------------------------------------------------


@pytest.mark.parametrize("solver", ["dense", "arpack", "lobpcg", "amg"])
def test_eigensolvers_agree_with_dense_reference(touching_blobs, solver):
    if solver == "amg":
        pytest.importorskip("pyamg")
    X, _ = touching_blobs
    affinity = knn_affinity(X.astype(np.float32), 10)
    degrees = np.asarray(affinity.sum(axis=1)).ravel()
    normalized = affinity.toarray() / np.sqrt(np.outer(degrees, degrees))
    reference = np.sort(1.0 - np.linalg.eigvalsh(normalized))[:4]

    values, vectors = smallest_laplacian_eigenpairs(
        affinity, 4, eigen_solver=solver, random_state=0
    )
    np.testing.assert_allclose(values, reference, atol=1e-4)
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    # Each vector really is an eigenvector of the normalised affinity.
    residual = normalized @ vectors - vectors * (1.0 - values)
    assert np.abs(residual).max() < 1e-3


def test_knn_affinity_is_symmetric_and_counts_the_point_itself():
    X = np.array([[0.0], [1.0], [3.0], [7.0]], dtype=np.float32)
    affinity = knn_affinity(X, 2).toarray()  # self + 1 nearest neighbour, as sklearn
    # Nearest neighbours: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2; W = (C + C^T) / 2 with C[i, i] = 1.
    expected = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],  # 0 <-> 1 are each other's nearest: 0.5 + 0.5
            [1.0, 1.0, 0.5, 0.0],  # 2 -> 1 is one-way
            [0.0, 0.5, 1.0, 0.5],  # 3 -> 2 is one-way
            [0.0, 0.0, 0.5, 1.0],
        ]
    )
    np.testing.assert_array_equal(affinity, expected)


def test_landmark_spectrum_equals_dense_point_graph(touching_blobs):
    """The p x p route gives the eigenvalues of W = Zh Zh^T built densely (n x n)."""
    X, _ = touching_blobs
    X = X.astype(np.float32)
    model = SpectralClustering(3, method="landmark", n_landmarks=40, random_state=0).fit(X)
    sq_distances, indices = nearest_landmarks(X, model.landmarks_, 5)
    Z = np.zeros((X.shape[0], 40))
    np.put_along_axis(Z, indices, landmark_weights(sq_distances), axis=1)
    np.testing.assert_allclose(Z.sum(axis=1), 1.0, rtol=1e-6)
    Zh = Z / np.sqrt(Z.sum(axis=0))
    point_graph = Zh @ Zh.T
    np.testing.assert_allclose(point_graph.sum(axis=1), 1.0, rtol=1e-6)  # normalised: D = I
    reference = np.sort(1.0 - np.linalg.eigvalsh(point_graph))[:3]
    np.testing.assert_allclose(model.eigenvalues_, reference, atol=1e-6)


def test_landmark_weights_rows_sum_to_one_and_decrease_with_distance():
    sq = np.array([[0.0, 1.0, 4.0], [1e6, 1e6 + 1.0, 1e6 + 4.0]], dtype=np.float32)
    weights = landmark_weights(sq)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert np.all(np.diff(weights, axis=1) < 0)
    assert np.isfinite(weights).all()  # far rows do not underflow to 0 / 0


def test_select_landmarks_shapes_and_determinism(touching_blobs):
    X, _ = touching_blobs
    for selection in ("kmeans", "random"):
        first = select_landmarks(X, 20, selection=selection, random_state=3)
        again = select_landmarks(X, 20, selection=selection, random_state=3)
        assert first.shape == (20, 2) and first.dtype == np.float32
        np.testing.assert_array_equal(first, again)
    random_rows = select_landmarks(X, 20, selection="random", random_state=3)
    assert all(np.any(np.all(np.isclose(X, row, atol=1e-5), axis=1)) for row in random_rows)


# -- graphs that are not connected ------------------------------------------------------------


def test_disconnected_graph_gives_each_component_its_share_of_clusters():
    # Component A (x ~ 0) holds two sub-blobs close together, component B (x ~ 100) one blob:
    # with k=3 the spectrum of the block-diagonal graph gives A two clusters, B one.
    X, truth = _separated_groups(
        [60, 60, 60], [(0.0, 0.0), (0.0, 6.0), (100.0, 0.0)], std=1.0, seed=1
    )
    for method, extra in (("knn", {}), ("landmark", {"n_landmarks": 30})):
        model = SpectralClustering(3, method=method, n_neighbors=8, random_state=0, **extra)
        labels = model.fit_predict(X)
        assert model.n_components_ == 2, method
        assert adjusted_rand_score(truth, labels) == 1.0, method
        # Two zero eigenvalues (one per component), then the within-component one.
        assert model.eigenvalues_[:2] == pytest.approx([0.0, 0.0], abs=1e-8)
        assert model.eigenvalues_[2] > 1e-4


def test_as_many_components_as_clusters_gives_the_components():
    X, truth = _separated_groups(
        [40, 50, 60, 70], [(0, 0), (50, 0), (0, 50), (50, 50)], std=1.0, seed=2
    )
    model = SpectralClustering(4, method="knn", random_state=0).fit(X)
    assert model.n_components_ == 4
    assert adjusted_rand_score(truth, model.labels_) == 1.0


def test_more_components_than_clusters_warns_and_groups_whole_components():
    # Four tight groups: two near x=0, two near x=100. k=2 should pair the near ones.
    X, truth = _separated_groups(
        [30, 30, 30, 30], [(0, 0), (0, 20), (100, 0), (100, 20)], std=0.5, seed=3
    )
    with pytest.warns(DisconnectedGraphWarning, match="n_components=4 > n_clusters=2"):
        model = SpectralClustering(2, method="knn", n_neighbors=5, random_state=0).fit(X)
    assert model.n_components_ == 4
    expected = truth // 2
    assert adjusted_rand_score(expected, model.labels_) == 1.0


# -- automatic k -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["knn", "landmark"])
def test_auto_k_by_eigengap_records_the_curve(method):
    X, y = make_blobs(n_samples=400, n_features=5, centers=4, cluster_std=1.5, random_state=42)
    model = SpectralClustering("auto", method=method, k_range=range(2, 9), random_state=0).fit(X)
    selection = model.k_selection_
    assert selection.method == "eigengap"
    assert selection.ks == list(range(2, 9))
    assert len(selection.scores) == 7
    assert selection.chosen == 4 == model.n_clusters_
    assert selection.scores[selection.ks.index(4)] == max(selection.scores)
    assert adjusted_rand_score(y, model.labels_) == 1.0
    assert selection.to_dict()["chosen"] == 4


def test_auto_k_on_a_connected_graph_finds_the_blobs(touching_blobs):
    X, y = touching_blobs
    model = SpectralClustering("auto", method="knn", random_state=0).fit(X)
    assert model.n_components_ == 1
    assert model.k_selection_.chosen == 3
    assert len(model.eigenvalues_) == 21  # k_range 2..20 needs 21 eigenvalues
    assert adjusted_rand_score(y, model.labels_) >= 0.95


# -- inputs, backends, reproducibility --------------------------------------------------------


def test_numpy_memmap_and_torch_inputs_give_the_same_labels(touching_blobs, tmp_path):
    torch = pytest.importorskip("torch")
    X, _ = touching_blobs
    X32 = X.astype(np.float32)
    memmap = np.memmap(tmp_path / "X.f32", dtype=np.float32, mode="w+", shape=X32.shape)
    memmap[:] = X32
    memmap.flush()
    reference = SpectralClustering(3, random_state=0).fit_predict(X32)
    for data in (X, memmap, torch.from_numpy(X32)):
        labels = SpectralClustering(3, random_state=0).fit_predict(data)
        assert adjusted_rand_score(reference, labels) == 1.0


@pytest.mark.parametrize("method", ["knn", "landmark"])
def test_backends_agree(touching_blobs, method):
    pytest.importorskip("torch")
    X, _ = touching_blobs
    extra = {"n_landmarks": 40} if method == "landmark" else {}
    results = {}
    for backend in ("faiss", "sklearn", "torch"):
        model = SpectralClustering(3, method=method, backend=backend, random_state=0, **extra)
        results[backend] = model.fit_predict(X)
        assert model.backend_ == backend
    assert adjusted_rand_score(results["faiss"], results["sklearn"]) >= 0.98
    assert adjusted_rand_score(results["faiss"], results["torch"]) >= 0.98


def test_backend_auto_is_recorded(touching_blobs):
    X, _ = touching_blobs
    model = SpectralClustering(3, random_state=0).fit(X)
    assert model.backend_ in ("faiss", "torch", "sklearn")
    assert model.eigen_solver_ in ("dense", "arpack")
    assert model.n_neighbors_ == 10
    assert model.n_features_in_ == 2
    assert set(model.timings_) == {"graph", "eigensolve", "kmeans"}
    assert all(seconds >= 0 for seconds in model.timings_.values())
    landmark = SpectralClustering(3, method="landmark", n_landmarks=30, random_state=0).fit(X)
    assert set(landmark.timings_) == {"landmarks", "graph", "eigensolve", "kmeans"}


def test_same_seed_same_labels(touching_blobs):
    X, _ = touching_blobs
    for method in ("knn", "landmark"):
        first = SpectralClustering(3, method=method, random_state=7).fit_predict(X)
        again = SpectralClustering(3, method=method, random_state=7).fit_predict(X)
        np.testing.assert_array_equal(first, again)


def test_tiny_input_caps_neighbours():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
    model = SpectralClustering(2, n_neighbors=3, random_state=0).fit(X)
    assert model.n_components_ == 2
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], model.labels_) == 1.0
    capped = SpectralClustering(2, n_neighbors=50, random_state=0).fit(X)
    assert capped.n_neighbors_ == 6
    assert capped.labels_.shape == (6,)


@pytest.mark.gpu
def test_torch_backend_on_gpu_matches_cpu(touching_blobs):
    torch = pytest.importorskip("torch")
    X, _ = touching_blobs
    X_gpu = torch.from_numpy(X.astype(np.float32)).cuda()
    cpu = SpectralClustering(3, method="landmark", n_landmarks=40, random_state=0)
    gpu = SpectralClustering(3, method="landmark", n_landmarks=40, backend="torch", random_state=0)
    assert adjusted_rand_score(cpu.fit_predict(X), gpu.fit_predict(X_gpu)) >= 0.98
    assert gpu.backend_ == "torch"


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_refused_with_both_values():
    X, _ = make_blobs(n_samples=12, n_features=3, random_state=42)
    with pytest.raises(ValueError, match="n_samples=12 should be >= n_clusters=20"):
        SpectralClustering(20).fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input contains NaN or inf in 1 of 12 rows"):
        SpectralClustering(2).fit(bad)
    with pytest.raises(ValueError, match="Expected a 2-D array"):
        SpectralClustering(2).fit(X[:, 0])
    with pytest.raises(ValueError, match="0 sample"):
        SpectralClustering(2).fit(np.empty((0, 3)))
    with pytest.raises(ValueError, match="method='spectral' should be one of auto, knn, landmark"):
        SpectralClustering(2, method="spectral").fit(X)
    with pytest.raises(ValueError, match="n_clusters='many' should be an int or 'auto'"):
        SpectralClustering("many").fit(X)
    with pytest.raises(ValueError, match="n_neighbors=0 should be an int >= 1"):
        SpectralClustering(2, n_neighbors=0).fit(X)
    with pytest.raises(ValueError, match="n_landmarks=3 should be > n_clusters=3"):
        SpectralClustering(3, method="landmark", n_landmarks=3).fit(X)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        SpectralClustering(2, backend="cuda").fit(X)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        SpectralClustering(2).fit(sp.csr_matrix(X))


@parametrize_with_checks(
    [
        SpectralClustering(n_clusters=3, n_neighbors=5, random_state=0),
        SpectralClustering(n_clusters=3, method="landmark", n_landmarks=10, random_state=0),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
