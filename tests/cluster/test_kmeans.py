"""KMeans and HierarchicalKMeans: exact tiny cases, a numpy reference, scikit-learn parity,
streaming over memmaps, automatic k, and every kind of bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from rayclust.cluster import (
    FewDistinctPointsWarning,
    HierarchicalKMeans,
    KMeans,
    NearestNeighbors,
    balanced_allocation,
    kmeans_plusplus,
)
from rayclust.cluster._backend import HostData
from rayclust.cluster.kmeans import lloyd


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=3000, n_features=8, centers=6, random_state=42)
    return X.astype(np.float32), y


def numpy_lloyd(X, centers, max_iter=300):
    """Plain-numpy reference: assign, average, until the labels stop changing."""
    X = X.astype(np.float64)
    centers = centers.astype(np.float64)
    labels = None
    for _ in range(max_iter):
        d2 = ((X[:, None, :] - centers[None]) ** 2).sum(-1)
        new_labels = d2.argmin(1)
        if labels is not None and (new_labels == labels).all():
            break
        labels = new_labels
        centers = np.stack([X[labels == j].mean(0) for j in range(len(centers))])
    inertia = ((X - centers[labels]) ** 2).sum()
    return centers, labels, inertia


# -- scikit-learn compatibility -------------------------------------------------------------


@parametrize_with_checks(
    [
        KMeans(n_clusters=3, random_state=0),
        NearestNeighbors(n_neighbors=3),
        HierarchicalKMeans(n_clusters=(6, 3), random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# -- exact small cases ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faiss", "torch", "sklearn"])
def test_hand_built_two_clusters(backend):
    X = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 2.0]])
    km = KMeans(2, init=np.array([[0.0, 0.0], [10.0, 0.0]]), backend=backend).fit(X)
    np.testing.assert_array_equal(km.labels_, [0, 0, 1, 1])
    np.testing.assert_allclose(km.cluster_centers_, [[0.0, 0.5], [10.0, 1.0]])
    assert km.inertia_ == pytest.approx(0.25 * 2 + 1.0 * 2)
    np.testing.assert_array_equal(km.predict([[1.0, 1.0], [9.0, 9.0]]), [0, 1])
    distances = km.transform([[0.0, 0.5]])
    np.testing.assert_allclose(distances, [[0.0, np.hypot(10.0, 0.5)]], rtol=1e-6)
    assert km.score(X) == pytest.approx(-km.inertia_)


def test_single_sample_single_cluster():
    km = KMeans(1).fit([[3.0, 4.0]])
    np.testing.assert_array_equal(km.labels_, [0])
    np.testing.assert_array_equal(km.cluster_centers_, [[3.0, 4.0]])
    assert km.inertia_ == 0.0


def test_matches_numpy_reference_from_same_init(blobs):
    X, _ = blobs
    X = X[:600]
    init = X[[0, 100, 200, 300, 400, 500]]
    ref_centers, ref_labels, ref_inertia = numpy_lloyd(X, init)
    km = KMeans(6, init=init, n_init=1, tol=0.0, inertia_tol=0.0).fit(X)
    np.testing.assert_array_equal(km.labels_, ref_labels)
    np.testing.assert_allclose(km.cluster_centers_, ref_centers, rtol=1e-5, atol=1e-4)
    assert km.inertia_ == pytest.approx(ref_inertia, rel=1e-5)


def test_matches_sklearn_from_same_init():
    X, _ = make_blobs(n_samples=2000, n_features=5, centers=8, cluster_std=3.0, random_state=0)
    init = X[:8]
    ours = KMeans(8, init=init, n_init=1, tol=0.0, inertia_tol=0.0, relaxation=1.0).fit(X)
    ref = SkKMeans(8, init=init, n_init=1, tol=0.0).fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)


def test_kmeans_plusplus_spreads_seeds_over_blobs(blobs):
    X, y = blobs
    centers, indices = kmeans_plusplus(X, 6, random_state=0)
    np.testing.assert_array_equal(centers, X[indices])
    assert len(set(y[indices])) == 6  # one seed per well-separated blob


# -- quality on blobs -------------------------------------------------------------------------


def test_blobs_recovered_with_sklearn_inertia(blobs):
    X, y = blobs
    km = KMeans(6, random_state=0).fit(X)
    ref = SkKMeans(6, random_state=0).fit(X)
    assert adjusted_rand_score(y, km.labels_) == pytest.approx(1.0)
    assert km.inertia_ <= ref.inertia_ * 1.01
    assert km.backend_ == "faiss" and km.device_ == "cpu"


def test_sample_then_full_data_refinement(blobs):
    """A seeding sample smaller than the data still ends on the full-data optimum."""
    X, y = blobs
    full = KMeans(6, random_state=0).fit(X)
    sampled = KMeans(6, sample_size=300, random_state=0).fit(X)
    assert adjusted_rand_score(full.labels_, sampled.labels_) == pytest.approx(1.0)
    assert sampled.inertia_ == pytest.approx(full.inertia_, rel=1e-5)


def test_over_relaxed_lloyd_needs_fewer_passes_for_as_low_an_inertia():
    """Overlapping blobs (Lloyd's long tail): from the same five inits, over-relaxed steps
    reach at least plain Lloyd's inertia (on average) with fewer passes over the data, and a
    tried step never raises the inertia."""
    X, _ = make_blobs(n_samples=6000, n_features=8, centers=30, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)

    class CountingData(HostData):
        def assign(self, centroids, *, accumulate=True):
            result = super().assign(centroids, accumulate=accumulate)
            self.inertias.append(result.inertia)
            return result

    totals = {}
    for relaxation in (1.0, 1.8):
        passes, inertias = 0, []
        for seed in range(5):
            init = X[np.random.RandomState(seed).choice(len(X), 30, replace=False)]
            data = CountingData(X)
            data.inertias = []
            _, assignment, steps, converged = lloyd(
                data, init, max_iter=300, tol=0.0, inertia_tol=1e-4, relaxation=relaxation
            )
            assert converged and steps >= 1
            passes += len(data.inertias)
            inertias.append(assignment.inertia)
            assert assignment.inertia <= data.inertias[0]
        totals[relaxation] = passes, np.mean(inertias)
    assert totals[1.8][0] < 0.85 * totals[1.0][0]  # measured 131 against 179 passes
    assert totals[1.8][1] <= totals[1.0][1] * 1.002  # measured 0.99x


def test_relaxation_stops_at_once_on_separated_blobs(blobs):
    """Where the labels are already right a longer step only overshoots: it is tried once,
    then plain steps finish, giving the plain Lloyd fixed point."""
    X, _ = blobs
    init = X[::500].copy()
    relaxed = KMeans(6, init=init, n_init=1, tol=0.0, inertia_tol=0.0).fit(X)
    plain = KMeans(6, init=init, n_init=1, tol=0.0, inertia_tol=0.0, relaxation=1.0).fit(X)
    assert adjusted_rand_score(plain.labels_, relaxed.labels_) == 1.0
    assert relaxed.inertia_ == pytest.approx(plain.inertia_, rel=1e-5)


def test_auto_restarts_on_small_data_never_lose():
    """n_init="auto" on small data (digits, 1,797 rows) adds two restarts after the first run,
    which is the n_init=1 fit itself: the kept result is never worse, and better for some."""
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32)
    auto = [KMeans(10, random_state=seed).fit(X).inertia_ for seed in range(4)]
    single = [KMeans(10, n_init=1, random_state=seed).fit(X).inertia_ for seed in range(4)]
    assert all(a <= s * (1 + 1e-6) for a, s in zip(auto, single, strict=True))
    assert any(a < s * (1 - 1e-4) for a, s in zip(auto, single, strict=True))


def test_auto_restarts_on_small_data_are_scikit_learns_ten():
    """Issue 17: on small data n_init="auto" runs 10 restarts, as scikit-learn's n_init=10,
    and keeps the lowest inertia: never above 3 restarts' (the old default), and level with
    scikit-learn's own best of ten."""
    from sklearn.datasets import load_digits

    X = load_digits().data[:600].astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    for seed in range(3):
        auto = KMeans(10, random_state=seed).fit(X).inertia_
        assert auto == pytest.approx(KMeans(10, n_init=10, random_state=seed).fit(X).inertia_)
        assert auto <= KMeans(10, n_init=3, random_state=seed).fit(X).inertia_ * (1 + 1e-6)
        sklearn = SkKMeans(10, n_init=10, random_state=seed).fit(X).inertia_
        assert auto <= sklearn * 1.005


def test_random_init_and_restarts(blobs):
    X, y = blobs
    km = KMeans(6, init="random", n_init=5, random_state=1).fit(X)
    assert adjusted_rand_score(y, km.labels_) > 0.95


def test_same_seed_same_result(blobs):
    X, _ = blobs
    a = KMeans(6, random_state=3, sample_size=500).fit(X)
    b = KMeans(6, random_state=3, sample_size=500).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


# -- streaming over memory-mapped input -------------------------------------------------------


@pytest.fixture
def blobs_memmap(tmp_path, blobs):
    X, y = blobs
    path = tmp_path / "features.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    return np.memmap(path, dtype=np.float32, mode="r", shape=X.shape), y


def test_memmap_lloyd_equals_in_memory(blobs_memmap, blobs):
    mm, y = blobs_memmap
    X, _ = blobs
    kwargs = dict(sample_size=500, chunk_rows=256, random_state=0)
    streamed = KMeans(6, **kwargs).fit(mm)
    in_memory = KMeans(6, **kwargs).fit(np.array(X))
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    assert streamed.inertia_ == pytest.approx(in_memory.inertia_, rel=1e-6)
    np.testing.assert_array_equal(streamed.predict(mm[:50]), streamed.labels_[:50])


def test_memmap_minibatch_close_to_lloyd(blobs_memmap):
    mm, y = blobs_memmap
    lloyd = KMeans(6, sample_size=500, chunk_rows=256, random_state=0).fit(mm)
    minibatch = KMeans(
        6, algorithm="minibatch", max_iter=3, sample_size=500, chunk_rows=256, random_state=0
    ).fit(mm)
    assert adjusted_rand_score(y, minibatch.labels_) == pytest.approx(1.0)
    assert minibatch.inertia_ <= lloyd.inertia_ * 1.001


# -- input types and awkward data -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int64])
def test_dtypes_give_float32_model(dtype):
    X = np.array([[0, 0], [0, 2], [20, 0], [20, 2]], dtype=dtype)
    km = KMeans(2, init=np.array([[0, 0], [20, 0]]), n_init=1).fit(X)
    assert km.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(km.cluster_centers_, [[0, 1], [20, 1]])
    assert km.inertia_ == pytest.approx(4.0)


def test_torch_tensor_input_matches_numpy(blobs):
    X, _ = blobs
    from_numpy = KMeans(6, random_state=0).fit(X)
    from_torch = KMeans(6, random_state=0).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(from_numpy.labels_, from_torch.labels_)
    np.testing.assert_array_equal(
        from_torch.predict(torch.from_numpy(X[:10])), from_numpy.labels_[:10]
    )


def test_duplicate_points_found_exactly():
    X = np.repeat([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]], 10, axis=0)
    km = KMeans(3, random_state=0).fit(X)
    assert km.inertia_ == 0.0
    assert adjusted_rand_score(np.repeat([0, 1, 2], 10), km.labels_) == 1.0


def test_fewer_distinct_points_than_clusters_warns():
    X = np.repeat([[0.0, 0.0], [5.0, 5.0]], 5, axis=0)
    with pytest.warns(FewDistinctPointsWarning, match=r"distinct clusters \(2\).*n_clusters \(3\)"):
        km = KMeans(3, random_state=0).fit(X)
    assert km.inertia_ == 0.0


def test_empty_cluster_is_reseeded():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    far_away = np.array([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]])  # the third attracts nobody
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a re-seeded cluster is not a "few distinct" warning
        km = KMeans(3, init=far_away, n_init=1).fit(X)
    assert np.bincount(km.labels_, minlength=3).min() > 0
    assert np.abs(km.cluster_centers_).max() < 10


# -- bad input ------------------------------------------------------------------------------


def test_errors_name_the_problem():
    X = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(ValueError, match=r"n_samples=12 should be >= n_clusters=20"):
        KMeans(20).fit(X)
    with pytest.raises(ValueError, match=r"n_clusters=0 should be >= 1"):
        KMeans(0).fit(X)
    bad = X.copy()
    bad[[2, 5], 0] = [np.nan, np.inf]
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 12 rows \(first at row 2\)"):
        KMeans(2).fit(bad)
    with pytest.raises(ValueError, match="got a 1-D array"):
        KMeans(2).fit(X[:, 0])
    with pytest.raises(ValueError, match="got a 3-D array"):
        KMeans(2).fit(X.reshape(2, 6, 3))
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        KMeans(2).fit(np.empty((0, 3)))
    km = KMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3 features"):
        km.predict(X[:, :2])
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 5 rows"):
        km.predict(bad[:5])
    with pytest.raises(ValueError, match=r"init has shape \(3, 3\); it should be .* \(2, 3\)"):
        KMeans(2, init=X[:3]).fit(X)
    with pytest.raises(ValueError, match=r"algorithm='elkan' should be one of"):
        KMeans(2, algorithm="elkan").fit(X)
    with pytest.raises(ValueError, match=r"n_clusters='many' should be an int >= 1 or 'auto'"):
        KMeans("many").fit(X)
    with pytest.raises(ValueError, match=r"relaxation=2.5 should be a number in \[1, 2\)"):
        KMeans(2, relaxation=2.5).fit(X)


# -- choosing k -----------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["silhouette", "stability"])
def test_auto_k_finds_the_blob_count(criterion):
    X, _ = make_blobs(n_samples=600, n_features=4, centers=4, random_state=7)
    km = KMeans("auto", k_range=[2, 3, 4, 5, 6], k_criterion=criterion, random_state=0).fit(X)
    assert km.n_clusters_ == 4 and km.cluster_centers_.shape == (4, 4)
    record = km.k_selection_.to_dict()
    assert record["method"] == criterion and record["ks"] == [2, 3, 4, 5, 6]
    assert record["chosen"] == 4 and len(record["scores"]) == 5
    assert record["scores"][2] == max(record["scores"])


def test_auto_k_range_errors():
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match=r"k=10; every candidate should be <= n_samples - 1 = 9"):
        KMeans("auto", k_range=[2, 10]).fit(X)


# -- hierarchical K-means -------------------------------------------------------------------


def test_balanced_allocation():
    np.testing.assert_array_equal(balanced_allocation(np.array([1, 5, 10, 2]), 10), [1, 3, 4, 2])
    np.testing.assert_array_equal(balanced_allocation(np.array([1, 5, 10, 2]), 99), [1, 5, 10, 2])
    np.testing.assert_array_equal(balanced_allocation(np.array([3, 3, 3]), 7), [3, 2, 2])
    assert balanced_allocation(np.array([4, 4]), 0).sum() == 0


def test_hierarchical_kmeans_on_imbalanced_blobs():
    sizes = [1200, 600, 300, 150, 80, 40, 20, 10]
    X, y = make_blobs(n_samples=sizes, n_features=8, random_state=0)
    hkm = HierarchicalKMeans((60, 8), n_resampling_steps=2, random_state=0).fit(X)
    assert adjusted_rand_score(y, hkm.labels_) == pytest.approx(1.0)
    assert [level.centers.shape[0] for level in hkm.levels_] == [60, 8]
    assert hkm.levels_[1].sizes.sum() == len(X)  # sizes count data points at every level
    np.testing.assert_array_equal(hkm.predict(X), hkm.labels_)
    reference = ((X - hkm.cluster_centers_[hkm.labels_]) ** 2).sum()
    assert hkm.inertia_ == pytest.approx(reference, rel=1e-5)

    picked = hkm.balanced_sample(80, random_state=0)
    assert picked.size == 80 and np.unique(picked).size == 80
    np.testing.assert_array_equal(np.bincount(y[picked], minlength=8), [10] * 8)
    # A uniform draw of the same size would be dominated by the biggest blob.
    assert hkm.balanced_sample(10**6).size == len(X)


def test_hierarchical_kmeans_errors():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match=r"should decrease strictly"):
        HierarchicalKMeans((5, 10)).fit(X)
    with pytest.raises(ValueError, match=r"n_samples=50 should be >= n_clusters=60 \(level 1\)"):
        HierarchicalKMeans((60, 10)).fit(X)
    with pytest.raises(ValueError, match=r"resample_size has 3 entries; it should have one per"):
        HierarchicalKMeans((10, 5), resample_size=[1, 2, 3]).fit(X)
