"""Backends: one place decides (and logs), and every backend computes the same clustering."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from rayclust.cluster import BackendUnavailableError, KMeans, NearestNeighbors, resolve_backend
from rayclust.cluster._backend import (
    HostData,
    TorchData,
    _worker_count,
    backend_device,
    cuda_available,
    library_installed,
    make_feature_data,
)

CPU_BACKENDS = ["faiss", "torch", "sklearn"]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=4000, n_features=16, centers=10, random_state=42)
    return X.astype(np.float32), y


# -- resolve_backend ------------------------------------------------------------------------


@pytest.mark.skipif(cuda_available(), reason="checks the CPU-only choice")
def test_auto_takes_faiss_on_cpu_and_logs_why(caplog):
    with caplog.at_level(logging.DEBUG, logger="rayclust"):
        assert resolve_backend("auto", np.zeros((3, 2)), purpose="KMeans") == "faiss"
    assert "auto -> faiss (no CUDA GPU; FAISS is the fast CPU path)" in caplog.text


def test_auto_respects_what_the_estimator_supports():
    assert resolve_backend("auto", supported=("sklearn",)) == "sklearn"


def test_unknown_backend_suggests_close_name():
    with pytest.raises(ValueError, match=r"backend='fiass' is not one of .*did you mean 'faiss'"):
        resolve_backend("fiass")


def test_unsupported_backend_for_purpose():
    with pytest.raises(ValueError, match=r"backend='torch' is not supported for hnsw search"):
        resolve_backend("torch", supported=("faiss",), purpose="hnsw search")


@pytest.mark.skipif(library_installed("cuml"), reason="cuML is installed here")
def test_cuml_without_cuml_names_what_to_install():
    with pytest.raises(BackendUnavailableError, match=r"pip install cuml-cu12"):
        resolve_backend("cuml")
    with pytest.raises(BackendUnavailableError, match=r"pip install cuml-cu12"):
        KMeans(2, backend="cuml").fit(np.zeros((4, 2)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fitted_estimators_record_their_backend(backend):
    X = np.random.default_rng(0).normal(size=(50, 3))
    km = KMeans(2, backend=backend, random_state=0).fit(X)
    assert km.backend_ == backend and km.device_ == backend_device(backend, X)
    nn = NearestNeighbors(3, backend=backend).fit(X)
    assert nn.backend_ == backend


# -- the device interface -------------------------------------------------------------------


def reference_assignment(X, centers):
    d2 = ((X[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
    labels = d2.argmin(1)
    sums = np.zeros(centers.shape)
    np.add.at(sums, labels, X)
    return labels, d2.min(1), sums, np.bincount(labels, minlength=len(centers))


@pytest.mark.parametrize(
    "make",
    [
        lambda X: HostData(X, kernel="faiss", chunk_rows=700),
        lambda X: HostData(X, kernel="blas", chunk_rows=700),
        lambda X: TorchData(X, chunk_rows=700),
    ],
    ids=["faiss", "blas", "torch"],
)
def test_feature_data_assign_matches_numpy(make, blobs):
    X, _ = blobs
    centers = X[::400].copy()  # 10 centres
    labels, sq, sums, counts = reference_assignment(X, centers)
    data = make(X)
    assert data.count() == len(X) and data.dim() == X.shape[1]
    np.testing.assert_array_equal(data.get_subset(np.array([5, 1, 3])), X[[5, 1, 3]])
    got = data.assign(centers)
    assert (got.labels == labels).mean() > 0.999  # float32 ties may differ, nothing else
    np.testing.assert_allclose(got.sq_distances, sq, rtol=1e-4, atol=1e-2)
    if (got.labels == labels).all():
        np.testing.assert_allclose(got.sums, sums, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(got.counts, counts)
    assert got.inertia == pytest.approx(sq.sum(), rel=1e-5)


def test_memmap_host_data_equals_in_memory(tmp_path, blobs):
    X, _ = blobs
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    centers = X[:10].copy()
    a = HostData(mm, chunk_rows=333).assign(centers)
    b = HostData(X, chunk_rows=4000).assign(centers)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5)
    np.testing.assert_array_equal(mm_rows := HostData(mm).get_subset(np.array([9, 2])), X[[9, 2]])
    assert mm_rows.dtype == np.float32


def test_chunk_threads_follow_threadpoolctl_limits(blobs):
    """rayclust runs on as many threads as scikit-learn is allowed: a threadpoolctl limit
    caps the chunk workers too, and the chunks of a host array then run in one thread."""
    from threadpoolctl import threadpool_limits

    X, _ = blobs
    big = np.repeat(X, 3, axis=0)  # 12,000 rows: enough to be split across workers
    reference = HostData(big).assign(X[:10])
    with threadpool_limits(1):
        assert _worker_count() == 1
        limited = HostData(big, chunk_rows=5000)
        assert len(limited.chunk_bounds()) == 3  # chunk_rows, not one chunk per worker
        result = limited.assign(X[:10])
    np.testing.assert_array_equal(result.labels, reference.labels)
    np.testing.assert_allclose(result.sums, reference.sums, rtol=1e-5, atol=1e-3)


def test_make_feature_data_picks_the_backend_class(blobs):
    X, _ = blobs
    assert isinstance(make_feature_data(X, "faiss"), HostData)
    assert isinstance(make_feature_data(X, "torch"), TorchData)
    with pytest.raises(ValueError, match=r"backend='sklearn' has no FeatureData"):
        make_feature_data(X, "sklearn")


# -- backends agree (as lloyd and elkan do in scikit-learn) ----------------------------------


def test_backends_agree_from_the_same_init(blobs):
    X, _ = blobs
    init = X[::400].copy()
    fits = {
        b: KMeans(10, init=init, n_init=1, inertia_tol=0.0, relaxation=1.0, backend=b).fit(X)
        for b in CPU_BACKENDS
    }
    reference = fits["sklearn"]
    for backend, km in fits.items():
        np.testing.assert_array_equal(km.labels_, reference.labels_, err_msg=backend)
        assert km.inertia_ == pytest.approx(reference.inertia_, rel=1e-5), backend
        np.testing.assert_allclose(km.cluster_centers_, reference.cluster_centers_, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_recover_blobs_with_default_init(backend, blobs):
    X, y = blobs
    km = KMeans(10, backend=backend, random_state=0).fit(X)
    assert adjusted_rand_score(y, km.labels_) > 0.99
    best = KMeans(10, backend="faiss", random_state=0).fit(X).inertia_
    assert km.inertia_ == pytest.approx(best, rel=1e-3)


def test_torch_backend_with_tensor_input_matches_faiss(blobs):
    X, _ = blobs
    init = X[::400].copy()
    on_torch = KMeans(10, init=init, backend="torch").fit(torch.from_numpy(X))
    on_faiss = KMeans(10, init=init, backend="faiss").fit(X)
    np.testing.assert_array_equal(on_torch.labels_, on_faiss.labels_)


# -- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_torch_cuda_backend_keeps_data_on_gpu_and_agrees(blobs):
    X, y = blobs
    X_gpu = torch.from_numpy(X).cuda()
    init = X[::400].copy()
    km = KMeans(10, init=init, backend="torch").fit(X_gpu)
    assert km.device_ == "cuda"
    reference = KMeans(10, init=init, backend="faiss").fit(X)
    np.testing.assert_array_equal(km.labels_, reference.labels_)
    assert km.inertia_ == pytest.approx(reference.inertia_, rel=1e-5)
    np.testing.assert_array_equal(km.predict(X_gpu[:20]), reference.labels_[:20])


@pytest.mark.gpu
def test_auto_prefers_a_gpu_backend(blobs):
    X, _ = blobs
    km = KMeans(10, random_state=0).fit(X)
    assert km.backend_ in ("cuml", "faiss", "torch") and km.device_ == "cuda"


@pytest.mark.gpu
def test_cupy_input_on_gpu_backends(blobs):
    cupy = pytest.importorskip("cupy")
    X, y = blobs
    km = KMeans(10, backend="torch", random_state=0).fit(cupy.asarray(X))
    assert km.device_ == "cuda" and adjusted_rand_score(y, km.labels_) > 0.99
