"""IVF kNN search across Ray shard actors (``rayclust.cluster.distributed_knn``): recall
against exact search, and the report's near-duplicate pairs on real features."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import make_blobs

from rayclust.cluster import NearestNeighbors, neighbor_recall
from rayclust.cluster.distributed import start_shards
from rayclust.cluster.distributed_knn import ShardedIVF, ShardIndex, sharded_knn
from rayclust.images import decode_image
from rayclust.report import near_duplicate_threshold
from rayclust.views import ViewEncoder
from rayclust.views.store import FeatureStore


def _shards(cache, key, X, shards):
    ids = [f"{key}{i:06d}" for i in range(len(X))]
    FeatureStore(cache, key).write(ids, X)
    return start_shards(cache, key, ids, shards, normalize=False, num_cpus=0.1, backend="faiss")


@pytest.fixture(scope="module")
def blobs():
    # Overlapping blobs: neighbours spread over several IVF lists, so probing matters.
    X, _ = make_blobs(30_000, n_features=32, centers=30, cluster_std=6.0, random_state=1)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def sharded_blobs(ray_session, blobs, tmp_path_factory):
    data = _shards(tmp_path_factory.mktemp("features"), "blobs", blobs, 2)
    yield data
    data.close()


def test_recall_at_10_against_exact_search(blobs, sharded_blobs):
    queries = blobs[::30]
    exact = NearestNeighbors(10, method="exact").fit(blobs).kneighbors(queries)[1]
    ivf = ShardedIVF.train(sharded_blobs, random_state=0)
    n_lists = len(ivf.centroids)  # 2 sqrt(30,000) = 346 lists; default n_probe = 16
    recalls = {
        n_probe: neighbor_recall(ivf.kneighbors(queries, 10, n_probe)[1], exact)
        for n_probe in (1, 8, 32)
    }
    recalls["default"] = neighbor_recall(ivf.kneighbors(queries, 10)[1], exact)
    print(f"{n_lists} lists, recall@10 by n_probe: {recalls}")
    assert n_lists == 346
    assert recalls["default"] >= 0.95
    assert recalls[1] < 0.5  # probing one list misses most neighbours: the test can fail
    distances, indices = ivf.kneighbors(queries[:5], 10)
    assert (indices[:, 0] == np.arange(0, 150, 30)).all() and np.allclose(distances[:, 0], 0)


def test_every_rows_neighbours_without_itself(blobs, sharded_blobs):
    distances, indices = sharded_knn(sharded_blobs, None, 5)
    assert indices.shape == (len(blobs), 5)
    assert not (indices == np.arange(len(blobs))[:, None]).any()
    exact = NearestNeighbors(5, method="exact").fit(blobs).kneighbors(return_distance=False)
    assert neighbor_recall(indices, exact) >= 0.95
    assert (np.diff(distances, axis=1) >= 0).all()


def test_numpy_lists_give_faiss_results(blobs):
    centroids = blobs[:: len(blobs) // 40][:40]
    queries = blobs[::500]
    faiss_sq, faiss_idx = ShardIndex(blobs, centroids, use_faiss=True).search(queries, 10, 4)
    numpy_sq, numpy_idx = ShardIndex(blobs, centroids, use_faiss=False).search(queries, 10, 4)
    assert (faiss_idx == numpy_idx).mean() >= 0.99
    np.testing.assert_allclose(faiss_sq, numpy_sq, rtol=1e-3, atol=1e-2)


def _near_pairs(distances: np.ndarray, indices: np.ndarray) -> set[tuple[int, int]]:
    """Pairs within the report's near-duplicate threshold (as find_neighbour_lists reads
    them off a kNN graph)."""
    threshold, _ = near_duplicate_threshold(distances.min(axis=1))
    rows, cols = np.nonzero(distances <= threshold)
    return {tuple(sorted((int(r), int(indices[r, c])))) for r, c in zip(rows, cols, strict=True)}


def test_near_duplicate_pairs_equal_the_local_ones_on_the_sample(ray_session, sample_dir,
                                                                 tmp_path):  # fmt: skip
    paths = sorted(sample_dir.rglob("*.png"))
    images = [decode_image(p) for p in paths]
    for img in images[::25]:  # planted copies: a 90% resize and a JPEG re-save
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        images += [img.resize((img.width * 9 // 10, img.height * 9 // 10)),
                   Image.open(io.BytesIO(buf.getvalue())).convert("RGB")]  # fmt: skip
    features = ViewEncoder("pixels16").encode(images).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    local = NearestNeighbors(10, metric="cosine", method="exact").fit(features).kneighbors()
    data = _shards(tmp_path, "pixels16", features, 2)
    try:
        # 10 lists probed 3 at a time: not an exhaustive search.
        sharded = sharded_knn(data, None, 10, 3, metric="cosine", n_lists=10)
    finally:
        data.close()
    local_pairs, sharded_pairs = _near_pairs(*local), _near_pairs(*sharded)
    print(f"{len(features)} images, near-duplicate pairs: {sorted(local_pairs)}")
    assert len(local_pairs) >= 10  # the planted copies at least
    assert sharded_pairs == local_pairs
    # Elsewhere the search is approximate: a few rows' nearest lies in an unprobed list.
    same = np.isclose(sharded[0][:, 0], local[0][:, 0], atol=1e-4)
    assert same.mean() >= 0.9 and (sharded[0][:, 0] >= local[0][:, 0] - 1e-4).all()


def test_bad_searches_are_one_line_errors(sharded_blobs):
    ivf = ShardedIVF.train(sharded_blobs, n_lists=20, random_state=0)
    for call, message in [
        (lambda: ivf.kneighbors(np.zeros((2, 5)), 10), r"should be \(n, 32\)"),
        (lambda: ivf.kneighbors(np.zeros((2, 32)), 0), "k=0 should be an int >= 1"),
        (lambda: ivf.kneighbors(np.zeros((2, 32)), 10, 0), "n_probe=0 should be >= 1"),
        (lambda: ShardedIVF.train(sharded_blobs, metric="manhattan"), "metric='manhattan'"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_nearest_landmarks_of_every_row_come_from_the_shards(blobs, sharded_blobs):
    from rayclust.cluster._spectral_landmarks import nearest_landmarks

    landmarks = blobs[::600]
    sq, indices = sharded_blobs.nearest_points(landmarks, 3)
    local_sq, local_indices = nearest_landmarks(blobs, landmarks, 3)
    assert (indices == local_indices).mean() >= 0.999  # float ties aside
    np.testing.assert_allclose(sq, local_sq, rtol=1e-4, atol=1e-3)
