"""check_features and friends: every bad input fails with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rayclust.cluster import check_features, check_k_range
from rayclust.cluster._validation import check_n_features, count_non_finite_rows


def test_float64_list_and_int_inputs_become_c_ordered_float32():
    rng = np.random.default_rng(0)
    X64 = rng.normal(size=(20, 3))
    for given in (X64, X64.tolist(), np.asfortranarray(X64), X64.astype(np.float16)):
        out = check_features(given)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, np.asarray(given, dtype=np.float64), rtol=1e-3)
    assert check_features(np.arange(6).reshape(3, 2)).dtype == np.float32


def test_float32_memmap_is_returned_without_copy(tmp_path):
    path = tmp_path / "features.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(1000, 4))
    mm[:] = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    mm.flush()
    readonly = np.memmap(path, dtype=np.float32, mode="r", shape=(1000, 4))
    out = check_features(readonly, chunk_rows=64)
    assert isinstance(out, np.memmap) and np.shares_memory(out, readonly)


def test_cpu_torch_tensor_becomes_numpy():
    tensor = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    out = check_features(tensor, keep_on_device=True)  # CPU tensors always come to numpy
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, tensor.numpy())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_counted_and_located(bad):
    X = np.ones((50, 3), dtype=np.float32)
    X[[7, 20, 21], 1] = bad
    X[20, 2] = bad  # two bad values in one row still count as one row
    with pytest.raises(ValueError, match=r"NaN or inf in 3 of 50 rows \(first at row 7\)"):
        check_features(X, chunk_rows=8)  # chunked scan across chunk borders


def test_float64_overflowing_float32_is_reported_not_hidden():
    X = np.ones((4, 2))
    X[2, 0] = 1e300
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 4 rows \(first at row 2\)"):
        check_features(X)


def test_torch_non_finite_rows_counted():
    X = torch.zeros(5, 2)
    X[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"in 1 of 5 rows \(first at row 4\)"):
        check_features(X)


def test_count_non_finite_rows_matches_numpy_reference():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    X[rng.integers(0, 300, 40), rng.integers(0, 5, 40)] = np.nan
    expected_bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    assert count_non_finite_rows(X, chunk_rows=17) == (expected_bad.size, expected_bad[0])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((5,), r"got a 1-D array of shape \(5,\); Reshape your data"),
        ((2, 3, 4), r"got a 3-D array"),
    ],
)
def test_wrong_dimensionality(shape, match):
    with pytest.raises(ValueError, match=match):
        check_features(np.zeros(shape))


def test_empty_inputs():
    with pytest.raises(ValueError, match=r"0 sample\(s\).*the input is empty"):
        check_features(np.empty((0, 3)))
    with pytest.raises(ValueError, match=r"0 feature\(s\) \(shape=\(12, 0\)\)"):
        check_features(np.empty((12, 0)))


def test_n_clusters_against_n_samples():
    X = np.zeros((12, 2))
    with pytest.raises(ValueError, match=r"n_samples=12 should be >= n_clusters=20"):
        check_features(X, n_clusters=20)
    with pytest.raises(ValueError, match=r"n_clusters=0 should be >= 1"):
        check_features(X, n_clusters=0)
    with pytest.raises(TypeError, match=r"n_clusters=2.5 should be an int"):
        check_features(X, n_clusters=2.5)
    assert check_features(X[:1], n_clusters=1).shape == (1, 2)  # n=1, k=1 is valid
    with pytest.raises(ValueError, match=r"n_samples=3 should be >= 4"):
        check_features(X[:3], min_samples=4)


def test_sparse_complex_and_non_numeric_are_refused():
    with pytest.raises(TypeError, match="sparse input is not supported"):
        check_features(sp.random(5, 3, density=0.5, format="csr"))
    with pytest.raises(ValueError, match="Complex data not supported"):
        check_features(np.ones((3, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match="could not convert string to float"):
        check_features(np.array([["a", "b"], ["c", "d"]]))


def test_predict_time_feature_count():
    with pytest.raises(ValueError, match="X has 3 features, but KMeans is expecting 4 features"):
        check_n_features(np.zeros((2, 3)), 4, "KMeans")


def test_k_range():
    assert check_k_range(None, 10) == list(range(2, 10))
    assert check_k_range(None, 100, max_k=5) == [2, 3, 4, 5]
    assert check_k_range([5, 3, 3], 10) == [3, 5]
    with pytest.raises(ValueError, match=r"k=1; every candidate should be >= 2"):
        check_k_range([1, 4], 10)
    with pytest.raises(ValueError, match=r"k=10; every candidate should be <= n_samples - 1 = 9"):
        check_k_range([2, 10], 10)
    with pytest.raises(ValueError, match=r"n_samples=2 should be >= 3"):
        check_k_range(None, 2)


# --- issue 18 item 1: values whose squared distances overflow float32 ----------------------

_FIT_AFTER_HUGE = """
import numpy as np
from rayclust.cluster import KMeans
rng = np.random.default_rng(0)
for value in (2e19, 3e38):
    X = rng.normal(size=(200, 8)).astype(np.float32)
    X[3, 2] = value
    try:
        KMeans(3, backend="faiss", random_state=0, n_init=1).fit(X)
        print("fit: no error")
    except ValueError as exc:
        print("fit:", exc)
KMeans(3, backend="faiss", random_state=0, n_init=1).fit(rng.normal(size=(200, 8)))
print("last fit: ok")
"""


def test_huge_features_are_refused_and_the_next_fit_survives():
    """A feature >= ~2e19 once made FAISS return label -1, which wrote past the cluster sums
    and corrupted memory: a later fit in the process aborted (exit 134/139). One fresh
    process fits 2e19 and 3e38 (each refused, naming the row), then sound data."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FIT_AFTER_HUGE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rows too large to cluster (first at row 3") == 2, done.stdout
    assert "last fit: ok" in done.stdout


def test_oversized_rows_are_counted_and_located_across_chunks():
    from rayclust.cluster._validation import MAX_ROW_NORM

    X = np.ones((50, 4), dtype=np.float32)
    X[[9, 30], 0] = 1e19
    X[31] = np.float32(MAX_ROW_NORM)  # one value at the limit: norm just above it
    X[40] = MAX_ROW_NORM / 4  # norm MAX_ROW_NORM / 2: allowed
    with pytest.raises(ValueError, match=r"3 of 50 rows too large to cluster \(first at row 9"):
        check_features(X, chunk_rows=8)
    with pytest.raises(ValueError, match=r"1 of 2 rows too large"):
        check_features(torch.tensor([[1.0, 1.0], [1e19, 0.0]]), keep_on_device=True)
    ok = np.full((5, 4), MAX_ROW_NORM / 4, dtype=np.float32)  # norm exactly MAX_ROW_NORM / 2
    assert check_features(ok) is ok


def test_negative_faiss_labels_never_reach_the_cluster_sums():
    from rayclust.cluster._backend import cluster_sums

    X = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels should lie in \[0, 2\)"):
        cluster_sums(X, np.array([0, 1, -1, 0]), 2)
