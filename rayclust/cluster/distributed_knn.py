"""IVF k-nearest-neighbour search across the shards of a ShardedData (``clustering.engine: ray``).

How it runs:

- A coarse quantizer of ``n_lists`` centroids is trained by K-means on a sample of the rows
  (64 per list, gathered from the shards); the driver holds only these centroids.
- Each shard actor indexes its own rows over these centroids (FAISS ``IndexIVFFlat``; without
  FAISS, inverted lists in numpy), on its first search, and keeps the index: a second copy
  of its rows, for as long as the actor lives.
- A batch of queries goes to every shard; each answers its top k from the ``n_probe`` lists
  nearest each query; the driver merges the per-shard top k into the global top k.
- :meth:`ShardedIVF.self_kneighbors` finds the neighbours of every row itself: the rows of one
  shard are handed to all shards as a Ray object ref, block by block, so they never pass
  through the driver; what comes back is (n, k) distances and indices.

Where the pipeline uses it on ``engine=ray`` (for ``rayclust.clustering`` / the report):

- near-duplicates and outliers: ``distances, indices = ShardedIVF.train(data,
  metric="cosine").self_kneighbors(k)`` gives what ``NearestNeighbors(metric="cosine")
  .fit(X).kneighbors()`` gives locally (cosine distances, each row left out of its own list,
  -1 / inf where fewer were found), the input of the near-duplicate threshold and of the
  outlier scores in :mod:`rayclust.report.neighbours`;
- landmark spectral clustering (``SpectralClustering(method="landmark").fit(data)``, what
  ``clustering.algorithm=spectral`` runs on this engine): landmarks from ``data.get_subset``
  of the seeded sample the local fit draws, then ``data.nearest_points(landmarks, r)`` (every
  shard row's r nearest landmarks, brute force on the shards, not this IVF search) in place
  of :func:`~rayclust.cluster._spectral_landmarks.nearest_landmarks`. A kNN-graph spectral
  fit over ``self_kneighbors`` is not offered: its eigensolve is n x n on the driver.

Recall: ``n_probe`` defaults to ``max(16, n_lists // 25)``. On overlapping blobs (30,000 x 32,
346 lists, tests/cluster/test_distributed_knn.py) recall@10 against exact search was 0.37 at
n_probe 1, 0.91 at 8 (:class:`NearestNeighbors`' ``max(8, n_lists // 50)``), 0.986 at 16 and
0.995 at 32: twice NearestNeighbors' probes, as a search that crosses the network is
better rerun rarely than cheaply.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import nearest_centroids_blas
from .kmeans import KMeans
from .neighbors import _drop_self, _normalize_rows

logger = logging.getLogger("rayclust")

METRICS = ("euclidean", "cosine")
# Rows of one shard sent to all shards per self-search call.
_SELF_BLOCK_ROWS = 16_384


class ShardIndex:
    """An inverted-file index of one part's rows over given coarse ``centroids``.

    Scores are squared L2 distances (on unit rows for ``metric="cosine"``). FAISS
    ``IndexIVFFlat`` when FAISS is installed (``use_faiss``), else numpy inverted lists."""

    def __init__(
        self,
        X: np.ndarray,
        centroids: np.ndarray,
        *,
        metric: str = "euclidean",
        use_faiss: bool | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} should be one of {METRICS}")
        self.metric = metric
        X = np.ascontiguousarray(X, dtype=np.float32)
        if metric == "cosine":
            X = _normalize_rows(X)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.n = X.shape[0]
        if use_faiss is None:
            use_faiss = importlib.util.find_spec("faiss") is not None
        self.use_faiss = use_faiss
        if use_faiss:
            import faiss

            d = X.shape[1]
            self._quantizer = faiss.IndexFlatL2(d)  # kept: the index does not own it
            self._quantizer.add(self.centroids)
            self.index = faiss.IndexIVFFlat(self._quantizer, d, len(self.centroids))
            self.index.is_trained = True  # the lists are the shared centroids: no training
            self.index.add(X)
        else:
            labels, _ = nearest_centroids_blas(X, self.centroids)
            self.order = np.argsort(labels, kind="stable")
            self.rows = X[self.order]
            self.bounds = np.searchsorted(labels[self.order], np.arange(len(self.centroids) + 1))

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, local indices), each (q, k), nearest first; -1 and inf where
        the probed lists held fewer than k rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.metric == "cosine":
            queries = _normalize_rows(queries)
        nprobe = min(int(nprobe), len(self.centroids))
        if self.use_faiss:
            self.index.nprobe = nprobe
            scores, indices = self.index.search(queries, k)
            scores[indices < 0] = np.inf
            return scores, indices.astype(np.int64)
        return self._search_numpy(queries, k, nprobe)

    def _search_numpy(self, queries, k, nprobe):
        q = len(queries)
        best_sq = np.full((q, k), np.inf, dtype=np.float32)
        best_idx = np.full((q, k), -1, dtype=np.int64)
        c_scores = (self.centroids**2).sum(1)[None, :] - 2.0 * queries @ self.centroids.T
        probes = np.argpartition(c_scores, nprobe - 1, axis=1)[:, :nprobe]
        q_sq = (queries**2).sum(1)
        # List by list: every query probing list l meets its rows in one product.
        for lst in np.unique(probes):
            who = np.flatnonzero((probes == lst).any(axis=1))
            start, stop = self.bounds[lst], self.bounds[lst + 1]
            if stop == start:
                continue
            rows = self.rows[start:stop]
            sq = q_sq[who, None] - 2.0 * queries[who] @ rows.T + (rows**2).sum(1)[None, :]
            np.maximum(sq, 0.0, out=sq)
            merged_sq = np.concatenate([best_sq[who], sq], axis=1)
            local = np.broadcast_to(self.order[start:stop], sq.shape)
            merged_idx = np.concatenate([best_idx[who], local], axis=1)
            top = np.argsort(merged_sq, axis=1, kind="stable")[:, :k]
            best_sq[who] = np.take_along_axis(merged_sq, top, axis=1)
            best_idx[who] = np.take_along_axis(merged_idx, top, axis=1)
        return best_sq, best_idx


def merge_top_k(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest scores per row across per-shard ``(scores, indices)`` lists."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    indices = np.concatenate([p[1] for p in parts], axis=1)
    top = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), np.take_along_axis(indices, top, axis=1)


def _distances(sq: np.ndarray, metric: str) -> np.ndarray:
    """Squared L2 scores as the distances NearestNeighbors reports (unit rows for cosine:
    ``1 - cos = ||a - b||^2 / 2``)."""
    out = sq / 2.0 if metric == "cosine" else np.sqrt(np.maximum(sq, 0.0))
    return out.astype(np.float32, copy=False)


@dataclass
class ShardedIVF:
    """An IVF search over the rows of a ShardedData; the driver holds only ``centroids``."""

    data: Any  # ShardedData
    centroids: np.ndarray
    metric: str = "euclidean"
    n_probe: int | None = None

    @classmethod
    def train(
        cls,
        data: Any,
        *,
        n_lists: int | None = None,
        n_probe: int | None = None,
        metric: str = "euclidean",
        sample_per_list: int = 64,
        random_state: int = 0,
    ) -> ShardedIVF:
        """Train the coarse quantizer on ``sample_per_list`` rows per list, drawn from the
        shards. ``n_lists`` None: about ``2 sqrt(n)`` (as :class:`NearestNeighbors`)."""
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} should be one of {METRICS}")
        n = data.count()
        n_lists = n_lists or max(1, min(n // 39, int(2 * np.sqrt(n))))
        if not 1 <= n_lists <= n:
            raise ValueError(f"n_lists={n_lists} should be between 1 and the {n} rows")
        rng = np.random.RandomState(random_state)
        size = min(n, sample_per_list * n_lists)
        sample = data.get_subset(np.sort(rng.choice(n, size=size, replace=False)))
        if metric == "cosine":
            sample = _normalize_rows(sample)
        quantizer = KMeans(n_lists, n_init=1, max_iter=10, random_state=random_state)
        centroids = quantizer.fit(sample).cluster_centers_
        return cls(data, np.ascontiguousarray(centroids, dtype=np.float32), metric, n_probe)

    def _n_probe(self, n_probe: int | None) -> int:
        value = n_probe if n_probe is not None else self.n_probe
        if value is None:
            value = max(16, len(self.centroids) // 25)
        if int(value) < 1:
            raise ValueError(f"n_probe={value} should be >= 1")
        return min(int(value), len(self.centroids))

    def _search(self, queries: Any, k: int, n_probe: int) -> tuple[np.ndarray, np.ndarray]:
        import ray

        centroids = ray.put(self.centroids)  # once per call, not once per shard
        parts = self.data.ivf_search(centroids, queries, k, n_probe, self.metric)
        return merge_top_k(parts, k)

    def kneighbors(
        self, queries: np.ndarray, k: int = 10, n_probe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, global row indices), each (q, k), nearest first, of driver-held
        ``queries``; distances as :class:`NearestNeighbors` reports them for the metric."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"queries of shape {queries.shape} should be (n, {self.centroids.shape[1]})"
            )
        _check_k(k, self.data.count())
        sq, indices = self._search(queries, k, self._n_probe(n_probe))
        return _distances(sq, self.metric), indices

    def self_kneighbors(
        self, k: int = 10, n_probe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest other rows of every row (n, k), in row order; the rows travel from
        shard to shards as object refs, never through the driver."""
        blocks = list(self.self_kneighbor_blocks(k, n_probe))
        return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])

    def self_kneighbor_blocks(
        self, k: int = 10, n_probe: int | None = None, rows: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`self_kneighbors` of ``rows`` (sorted global indices; None: all) block by
        block: (rows, distances, indices) of at most one block of one shard at a time, so a
        caller that keeps a summary per row never holds the whole (n, k) graph."""
        _check_k(k, self.data.count() - 1)
        n_probe = self._n_probe(n_probe)
        offsets = self.data.offsets
        for shard in range(len(offsets) - 1):
            lo, hi = int(offsets[shard]), int(offsets[shard + 1])
            if rows is None:
                local_rows = np.arange(hi - lo)
            else:
                local_rows = rows[(rows >= lo) & (rows < hi)] - lo
            for start in range(0, len(local_rows), _SELF_BLOCK_ROWS):
                local = local_rows[start : start + _SELF_BLOCK_ROWS]
                ref = self.data.rows_ref(shard, local)
                sq, indices = self._search(ref, k + 1, n_probe)
                sq, indices = _drop_own(sq, indices, lo + local)
                yield lo + local, _distances(sq, self.metric), indices


def _check_k(k: int, available: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r} should be an int >= 1")
    if k > available:
        raise ValueError(f"k={k} should be <= {available} (the rows that can be neighbours)")


def _drop_own(
    sq: np.ndarray, indices: np.ndarray, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's own index removed from its k+1 results, by ``neighbors._drop_self``
    (which expects row i's own index to be i): a per-row shift maps ``own`` onto ``i``."""
    shift = (own - np.arange(len(own)))[:, None]
    kept_sq, kept = _drop_self(sq, indices - shift)
    return kept_sq, kept + shift  # a missing neighbour's -1 comes back as -1


def sharded_knn(
    data: Any,
    queries: np.ndarray | None,
    k: int = 10,
    nprobe: int | None = None,
    *,
    metric: str = "euclidean",
    n_lists: int | None = None,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN of ``queries`` among all rows of ``data`` (a ShardedData) by a sharded IVF search:
    ``(distances, global indices)``. ``queries=None``: every row's neighbours, itself left
    out (the :meth:`NearestNeighbors.kneighbors` ``X=None`` convention). To search several
    times, keep a :class:`ShardedIVF` (each shard builds its index once)."""
    search = ShardedIVF.train(
        data, n_lists=n_lists, n_probe=nprobe, metric=metric, random_state=random_state
    )
    if queries is None:
        return search.self_kneighbors(k)
    return search.kneighbors(queries, k)
