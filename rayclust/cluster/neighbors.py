"""Exact and approximate k-nearest-neighbour search and kNN graphs.

:class:`NearestNeighbors` follows ``sklearn.neighbors.NearestNeighbors``: ``fit(X)`` builds the
index, ``kneighbors(X=None)`` returns (distances, indices) and ``kneighbors_graph`` a sparse
(n_queries, n_samples_fit) CSR matrix. With ``X=None`` the training points are the queries
and no point is its own neighbour. ``method`` picks the search:

- ``"exact"``: brute force (FAISS flat index, torch matmul, scikit-learn or cuML);
- ``"hnsw"``: FAISS HNSW graph (approximate, fast queries, no training);
- ``"ivf"``: FAISS inverted file with ``n_probe`` probed lists (approximate);
- ``"auto"``: exact up to ``exact_max_samples`` fitted points, IVF beyond (needs FAISS). IVF
  beat HNSW on both benchmark sets (benchmarks/knn.py): cheaper to build, faster at the same
  recall.

Distances are Euclidean (not squared) for ``metric="euclidean"`` and ``1 - cosine
similarity`` for ``metric="cosine"``, as in scikit-learn.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._backend import _worker_count, backend_device, parallel_map, resolve_backend
from ._params import Int, OneOf, check_params, estimator_parameters
from ._validation import check_features, check_n_features, to_numpy

logger = logging.getLogger("rayclust")

METHODS = ("auto", "exact", "hnsw", "ivf")
METRICS = ("euclidean", "cosine")
_PARAMETER_RULES = {"n_neighbors": Int(1), "method": OneOf(METHODS), "metric": OneOf(METRICS)}

# Rows of queries per exact search block: bounds the (block x n_fit) score matrix.
_QUERY_BLOCK = 4096


def _normalize_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    # A zero row has no direction; leaving it at zero gives it cosine distance 1 to everything.
    norms[norms == 0] = 1.0
    return (X / norms).astype(np.float32, copy=False)


def neighbor_recall(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Recall@k: mean fraction of the exact k neighbours that the approximate search found."""
    approx_indices = np.asarray(approx_indices)
    exact_indices = np.asarray(exact_indices)
    if approx_indices.shape != exact_indices.shape:
        raise ValueError(
            f"approx_indices shape {approx_indices.shape} should equal exact_indices shape "
            f"{exact_indices.shape}"
        )
    hits = sum(
        np.intersect1d(a, e, assume_unique=False).size
        for a, e in zip(approx_indices, exact_indices, strict=True)
    )
    return hits / exact_indices.size


@estimator_parameters
class NearestNeighbors(BaseEstimator):
    """k-nearest-neighbour search, exact or approximate, on CPU or GPU.

    Parameters
    ----------
    n_neighbors : int, default=10
        Neighbours per query when ``kneighbors`` is not told otherwise.
    method : {"auto", "exact", "hnsw", "ivf"}, default="auto"
    metric : {"euclidean", "cosine"}, default="euclidean"
    backend : {"auto", "sklearn", "faiss", "cuml", "torch"}, default="auto"
        Approximate methods need ``"faiss"`` (or ``"auto"``).
    exact_max_samples : int, default=50_000
        With ``method="auto"``, fitted sets up to this size are searched exactly, larger ones
        with IVF.
    hnsw_m : int, default=32
        Links per node of the HNSW graph (more: better recall, more memory).
    ef_construction : int, default=80
        HNSW build-time beam width.
    ef_search : int or None, default=None
        HNSW query beam width; None: ``max(64, 4 * n_neighbors)``. Read at query time.
    n_lists : int or None, default=None
        IVF lists; None: about ``2 * sqrt(n_samples)`` (trained on 64 points per list).
    n_probe : int or None, default=None
        IVF lists probed per query; None: ``max(8, n_lists // 50)`` (recall@10 0.97-1.0 in
        benchmarks/knn.py). Read at query time.
    random_state : int or None, default=None
        Seeds IVF training (k-means) and HNSW level draws.

    Attributes
    ----------
    backend_ : str
        The backend that was used ('faiss', 'torch', 'sklearn', 'cuml').
    method_ : str
        The search that was built ('exact', 'hnsw', 'ivf').
    n_features_in_ : int
    n_samples_fit_ : int
    index_ : object
        The FAISS index (or the scikit-learn / cuML estimator; None for torch).
    n_lists_ : int
        IVF only: number of inverted lists.
    ef_search_, n_probe_ : int
        HNSW / IVF: the beam width or probed lists of the last search.
    """

    n_neighbors: int = 10
    _: KW_ONLY
    method: str = "auto"
    metric: str = "euclidean"
    backend: str = "auto"
    exact_max_samples: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int | None = None
    n_lists: int | None = None
    n_probe: int | None = None
    random_state: int | None = None

    # -- fitting --------------------------------------------------------------------------

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        return _normalize_rows(X) if self.metric == "cosine" else X

    def fit(self, X: Any, y: Any = None) -> NearestNeighbors:
        """Index ``X`` (n_samples, n_features)."""
        check_params(self, _PARAMETER_RULES)
        X = to_numpy(check_features(X))
        n, d = X.shape
        method = self.method
        if method == "auto":
            method = "exact" if n <= self.exact_max_samples else "ivf"
        approximate = method != "exact"
        supported = ("faiss",) if approximate else ("faiss", "torch", "sklearn", "cuml")
        self.backend_ = resolve_backend(
            self.backend, X, supported=supported, purpose=f"{method} nearest neighbours"
        )
        self.method_ = method
        self.device_ = backend_device(self.backend_, X)
        self.n_features_in_ = d
        self.n_samples_fit_ = n
        self._fit_X = self._prepare(X)
        self.index_ = None
        if self.backend_ == "faiss":
            self.index_ = self._build_faiss_index(self._fit_X, method)
        elif self.backend_ == "sklearn":
            from sklearn.neighbors import NearestNeighbors as SkNearestNeighbors

            self.index_ = SkNearestNeighbors(algorithm="brute").fit(self._fit_X)
        elif self.backend_ == "cuml":
            from cuml.neighbors import NearestNeighbors as CuNearestNeighbors

            self.index_ = CuNearestNeighbors(algorithm="brute").fit(self._fit_X)
        logger.debug(
            "NearestNeighbors: %s search over %d points (d=%d) with backend %s",
            method,
            n,
            d,
            self.backend_,
        )
        return self

    def _build_faiss_index(self, X: np.ndarray, method: str):
        import faiss

        n, d = X.shape
        inner = self.metric == "cosine"
        metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        if method == "exact":
            index = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
        elif method == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(self.hnsw_m), metric)
            index.hnsw.efConstruction = int(self.ef_construction)
        else:  # ivf
            n_lists = self.n_lists or max(1, min(n // 39, int(2 * np.sqrt(n))))
            if n_lists > n:
                raise ValueError(f"n_lists={n_lists} should be <= n_samples={n}")
            quantizer = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, n_lists, metric)
            index.cp.seed = int(self.random_state or 1234)
            # Coarse centroids only route queries: 64 training points each are plenty and
            # keep training at a fraction of the cost of FAISS's default 256.
            index.cp.max_points_per_centroid = 64
            index.train(X)
            self.n_lists_ = n_lists
        index.add(X)
        return index

    # -- queries --------------------------------------------------------------------------

    def _apply_search_params(self, k: int) -> None:
        """Search-time knobs are read at every query, so ``set_params(ef_search=...)`` or
        ``set_params(n_probe=...)`` takes effect without rebuilding the index."""
        if self.method_ == "hnsw":
            ef = self.ef_search if self.ef_search is not None else max(64, 4 * k)
            self.ef_search_ = max(int(ef), k)  # HNSW cannot return more than its beam holds
            self.index_.hnsw.efSearch = self.ef_search_
        elif self.method_ == "ivf":
            n_probe = self.n_probe if self.n_probe is not None else max(8, self.n_lists_ // 50)
            self.n_probe_ = min(int(n_probe), self.n_lists_)
            self.index_.nprobe = self.n_probe_

    def _search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices): squared L2 distances, or inner products for cosine."""
        if self.backend_ == "faiss":
            self._apply_search_params(k)
            # Query blocks as single-threaded searches on a thread pool (FAISS indexes are
            # safe to search concurrently): no OpenMP spin barriers on a shared machine.
            block = max(256, -(-Q.shape[0] // (4 * _worker_count())))
            starts = list(range(0, Q.shape[0], block))
            parts = parallel_map(lambda s: self.index_.search(Q[s : s + block], k), starts)
            scores = np.concatenate([p[0] for p in parts])
            indices = np.concatenate([p[1] for p in parts])
            return scores, indices.astype(np.int64, copy=False)
        if self.backend_ in ("sklearn", "cuml"):
            distances, indices = self.index_.kneighbors(Q, n_neighbors=k)
            distances = to_numpy(distances)
            indices = to_numpy(indices).astype(np.int64, copy=False)
            if self.metric == "cosine":  # rows are unit length: ||a-b||^2 = 2 - 2 cos
                return (1.0 - 0.5 * distances**2).astype(np.float32), indices
            return (distances**2).astype(np.float32), indices
        return self._search_torch(Q, k)

    def _search_torch(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        device = self.device_
        base = torch.as_tensor(self._fit_X, device=device)
        base_sq = (base * base).sum(dim=1)
        scores_out, indices_out = [], []
        for start in range(0, Q.shape[0], _QUERY_BLOCK):
            q = torch.as_tensor(Q[start : start + _QUERY_BLOCK], device=device)
            if self.metric == "cosine":
                scores, idx = (q @ base.T).topk(k, dim=1, largest=True)
            else:
                dist = torch.addmm(base_sq, q, base.T, alpha=-2.0) + (q * q).sum(1, keepdim=True)
                scores, idx = dist.topk(k, dim=1, largest=False)
            scores_out.append(scores.cpu().numpy())
            indices_out.append(idx.cpu().numpy())
        return np.concatenate(scores_out), np.concatenate(indices_out).astype(np.int64)

    def kneighbors(
        self, X: Any = None, n_neighbors: int | None = None, return_distance: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Neighbours of each query row, nearest first.

        ``X=None`` queries the fitted points themselves, each one excluded from its own list.
        Returns ``(distances, indices)`` of shape (n_queries, n_neighbors), or only the
        indices when ``return_distance=False``. Approximate methods may return -1 indices
        (with infinite distance) when they find fewer neighbours than asked.
        """
        check_is_fitted(self, "index_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"n_neighbors={k!r} should be an int >= 1")
        query_is_fit = X is None
        available = self.n_samples_fit_ - 1 if query_is_fit else self.n_samples_fit_
        if k > available:
            raise ValueError(
                f"n_neighbors={k} should be <= n_samples_fit={self.n_samples_fit_}"
                + (" - 1 (each point is excluded from its own neighbours)" if query_is_fit else "")
            )
        if query_is_fit:
            Q = self._fit_X
        else:
            Q = to_numpy(check_features(X))
            check_n_features(Q, self.n_features_in_, type(self).__name__)
            Q = self._prepare(Q)

        scores, indices = self._search(Q, k + 1 if query_is_fit else k)
        if query_is_fit:
            scores, indices = _drop_self(scores, indices)

        if not return_distance:
            return indices
        missing = indices < 0
        if self.metric == "cosine":
            distances = np.clip(1.0 - scores, 0.0, 2.0)
        else:
            distances = np.sqrt(np.maximum(scores, 0.0))
        distances = distances.astype(np.float32, copy=False)
        distances[missing] = np.inf
        return distances, indices

    def kneighbors_graph(
        self, X: Any = None, n_neighbors: int | None = None, mode: str = "connectivity"
    ) -> sp.csr_matrix:
        """Sparse (n_queries, n_samples_fit) kNN graph: 1 per edge, or the distance with
        ``mode="distance"``. Not symmetrised: row i lists the neighbours of query i."""
        if mode not in ("connectivity", "distance"):
            raise ValueError(f"mode={mode!r} should be 'connectivity' or 'distance'")
        distances, indices = self.kneighbors(X, n_neighbors, return_distance=True)
        n_queries, k = indices.shape
        valid = indices >= 0
        rows = np.repeat(np.arange(n_queries), k).reshape(n_queries, k)[valid]
        values = np.ones(rows.size) if mode == "connectivity" else distances[valid]
        return sp.csr_matrix(
            (values, (rows, indices[valid])), shape=(n_queries, self.n_samples_fit_)
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.requires_fit = True
        return tags


def _drop_self(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own index from its k+1 results (the last one if it is absent,
    e.g. among exact duplicates or an approximate search that missed it)."""
    n, k1 = indices.shape
    own = indices == np.arange(n)[:, None]
    absent = ~own.any(axis=1)
    own[absent, k1 - 1] = True
    # Exactly one True per row when the index appears once; keep the first occurrence only.
    first = own & (np.cumsum(own, axis=1) == 1)
    keep = ~first
    return scores[keep].reshape(n, k1 - 1), indices[keep].reshape(n, k1 - 1)


def kneighbors_graph(
    X: Any,
    n_neighbors: int = 10,
    *,
    mode: str = "connectivity",
    method: str = "auto",
    metric: str = "euclidean",
    backend: str = "auto",
    random_state: int | None = None,
) -> sp.csr_matrix:
    """kNN graph of ``X`` on itself (no self loops), as ``sklearn.neighbors.kneighbors_graph``."""
    nn = NearestNeighbors(
        n_neighbors, method=method, metric=metric, backend=backend, random_state=random_state
    )
    return nn.fit(X).kneighbors_graph(mode=mode)


def knn_edges(
    X: Any,
    n_neighbors: int,
    *,
    method: str = "auto",
    backend: str = "auto",
    random_state: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed kNN edges ``(rows[e], cols[e])``: ``cols[e]`` is among the ``n_neighbors``
    nearest points of ``rows[e]`` (never itself), row by row; neighbours an approximate search
    did not find are left out. The graphs of spectral and agglomerative clustering start here."""
    search = NearestNeighbors(
        n_neighbors, method=method, backend=backend, random_state=random_state
    )
    indices = search.fit(X).kneighbors(return_distance=False)
    rows = np.repeat(np.arange(indices.shape[0], dtype=np.int64), indices.shape[1])
    cols = indices.ravel()
    found = cols >= 0
    return rows[found], cols[found]
