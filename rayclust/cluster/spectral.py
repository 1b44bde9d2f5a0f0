"""Spectral clustering that scales: a kNN graph for small sets, landmarks for large ones.

Two formulations of the same idea (cluster the leading eigenvectors of a normalised affinity):

- ``method="knn"``: symmetric kNN graph (FAISS, exact for small n, approximate beyond), the
  symmetric normalised affinity ``D^-1/2 W D^-1/2``, a sparse eigensolver (ARPACK, LOBPCG,
  LOBPCG with an algebraic-multigrid preconditioner), row-normalised embedding, K-means
  (Ng, Jordan & Weiss). Cost grows with the eigensolve on an n x n graph.
- ``method="landmark"``: Landmark-based Spectral Clustering (Cai & Chen, 2015). Each point is
  linked to its ``landmark_neighbors`` nearest of p landmarks with Gaussian weights (rows
  summing to 1), giving a sparse n x p matrix Z. With ``Zh = Z D^-1/2`` (D: landmark degrees)
  the point graph ``W = Zh Zh^T`` is already normalised, and its leading eigenvectors are the
  left singular vectors of Zh: an eigendecomposition of the p x p matrix ``Zh^T Zh`` gives
  them for O(n p d) (the landmark search) plus O(n r^2) work, and memory stays O(n r + p^2).

Graphs that are not connected are handled exactly: the spectrum of a block-diagonal graph is
the union of its blocks' spectra, so each connected component is solved on its own and gets as
many clusters as it has eigenvalues among the k smallest overall. When there are more
components than clusters, whole components are grouped (size-weighted K-means on their
centroids) and a :class:`DisconnectedGraphWarning` says so.

``n_clusters="auto"`` picks k by the largest relative eigengap
``(lambda_{k+1} - lambda_k) / (lambda_{k+1} + 0.05)`` and records the curve in ``k_selection_``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import KW_ONLY
from typing import Any

import numpy as np
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from ._backend import FeatureData, resolve_backend
from ._params import CheckedInFit, Int, OneOf, check_params, estimator_parameters
from ._spectral_components import (
    ComponentSpectrum,
    group_components,
    labels_from_spectra,
    merged_eigenvalues,
)
from ._spectral_knn import (
    DENSE_MAX_NODES,
    EIGEN_SOLVERS,
    default_sparse_solver,
    knn_affinity,
    knn_spectra,
    smallest_laplacian_eigenpairs,
)
from ._spectral_landmarks import (
    LANDMARK_SELECTIONS,
    landmark_spectra,
    landmark_weights,
    nearest_landmarks,
    select_landmarks,
)
from ._spectral_sharded import ShardedRows, check_sharded
from ._validation import check_features, check_k_range, to_numpy
from .choose_k import KSelection, eigengap_selection

# The building blocks of both formulations, public here as before the split into modules.
__all__ = [
    "DisconnectedGraphWarning",
    "SpectralClustering",
    "knn_affinity",
    "landmark_weights",
    "nearest_landmarks",
    "select_landmarks",
    "smallest_laplacian_eigenpairs",
]

logger = logging.getLogger("rayclust")

METHODS = ("auto", "knn", "landmark")
SUPPORTED_BACKENDS = ("faiss", "torch", "sklearn")
_PARAMETER_RULES = {
    "n_clusters": (CheckedInFit("an int"), "auto"),
    "method": OneOf(METHODS),
    "eigen_solver": OneOf(EIGEN_SOLVERS),
    "landmark_selection": OneOf(LANDMARK_SELECTIONS),
    "n_neighbors": Int(1),
    "landmark_neighbors": Int(1),
    "n_init": Int(1),
    "knn_max_samples": Int(1),
    "n_landmarks": ("auto", Int(2)),
}


class DisconnectedGraphWarning(UserWarning):
    """The affinity graph has more connected components than requested clusters."""


# ---------------------------------------------------------------------------------------------
# The estimator.
# ---------------------------------------------------------------------------------------------


@estimator_parameters
class SpectralClustering(ClusterMixin, BaseEstimator):
    """Spectral clustering on a kNN graph or on a landmark (bipartite) graph.

    Parameters
    ----------
    n_clusters : int or "auto", default=8
        Number of clusters; ``"auto"`` picks it by the largest relative eigengap over
        ``k_range`` (see :func:`rayclust.cluster.choose_k.eigengap_scores`).
    method : {"auto", "knn", "landmark"}, default="auto"
        ``"auto"``: ``"knn"`` up to ``knn_max_samples`` samples, ``"landmark"`` beyond;
        always ``"landmark"`` for sharded data (a FeatureData).
    n_neighbors : int, default=10
        Neighbours per point in the kNN graph, the point itself included (as scikit-learn).
    knn_method : {"auto", "exact", "hnsw", "ivf"}, default="auto"
        kNN search for ``method="knn"`` (see :class:`rayclust.cluster.NearestNeighbors`):
        exact for small sets, approximate (HNSW) beyond 50,000 points.
    eigen_solver : {"auto", "dense", "arpack", "lobpcg", "amg"}, default="auto"
        For ``method="knn"``. ``"auto"``: dense up to 1,500 nodes per component, beyond that
        ``"amg"`` (LOBPCG preconditioned with pyamg's smoothed aggregation) when pyamg is
        installed, else ARPACK. On a connected 8,000-node 10-NN graph, 50 eigenpairs: amg
        36 s, ARPACK 75 s, plain LOBPCG 110 s (shared 2-core machine, same run).
    n_landmarks : int or "auto", default="auto"
        Landmarks for ``method="landmark"``; ``"auto"``: ``max(500, 10 * k)`` capped at 5,000
        and at ``n_samples / 10`` (but at least k + 1).
    landmark_neighbors : int, default=5
        Nearest landmarks linked to each point (LSC's r).
    landmark_selection : {"kmeans", "random"}, default="kmeans"
        K-means centres of a sample (LSC-K) or random rows (LSC-R).
    k_range : sequence of int or None, default=None
        Candidate k for ``n_clusters="auto"``; None: 2..20 (bounded by n_samples - 1).
    n_init : int, default=10
        K-means restarts on the embedding.
    knn_max_samples : int, default=20_000
        Largest n that ``method="auto"`` solves with the kNN graph.
    backend : {"auto", "faiss", "torch", "sklearn"}, default="auto"
        Library for the neighbour searches and K-means (torch keeps tensors on their device).
    random_state : int, RandomState or None, default=None

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
        Number of clusters found (the chosen k when ``n_clusters="auto"``).
    eigenvalues_ : ndarray
        Smallest normalised-Laplacian eigenvalues, ascending, over all components.
    n_components_ : int
        Connected components of the affinity graph.
    method_, backend_, eigen_solver_ : str
        What actually ran.
    n_neighbors_ : int
        Neighbours actually used (``n_neighbors`` capped at n_samples).
    n_landmarks_ : int
        Landmarks used (landmark method only); ``landmarks_`` holds them.
    n_iter_ : int
        Lloyd iterations of the embedding K-means (the largest over components).
    k_selection_ : KSelection
        Only with ``n_clusters="auto"``: the eigengap curve k was chosen from.
    timings_ : dict of str to float
        Seconds per stage: "landmarks" (landmark method), "graph", "eigensolve", "kmeans"
        (the embedding and its K-means, or the grouping of components).
    n_features_in_ : int
    """

    n_clusters: int | str = 8
    _: KW_ONLY
    method: str = "auto"
    n_neighbors: int = 10
    knn_method: str = "auto"
    eigen_solver: str = "auto"
    n_landmarks: int | str = "auto"
    landmark_neighbors: int = 5
    landmark_selection: str = "kmeans"
    k_range: Sequence[int] | None = None
    n_init: int = 10
    knn_max_samples: int = 20_000
    backend: str = "auto"
    random_state: Any = None

    def _resolve_n_landmarks(self, n_samples: int, k_max: int) -> int:
        if self.n_landmarks == "auto":
            # LSC needs many points per landmark: with too few, small cliques of points that
            # share their landmarks split off as near-disconnected pieces of the graph.
            wanted = min(5000, max(500, 10 * k_max), max(n_samples // 10, k_max + 1))
        else:
            wanted = int(self.n_landmarks)
            if wanted <= k_max:
                raise ValueError(
                    f"n_landmarks={wanted} should be > n_clusters={k_max}: the embedding has "
                    "at most one dimension per landmark"
                )
        return min(wanted, n_samples)

    # -- fitting --------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> SpectralClustering:
        """Cluster ``X`` (n_samples, n_features); numpy, memmap, torch or CuPy, or a
        :class:`~rayclust.cluster._backend.FeatureData` such as the rows of shard actors
        (:class:`~rayclust.cluster.distributed.ShardedData`), which is always fitted with the
        landmark method (see :mod:`rayclust.cluster._spectral_sharded`)."""
        check_params(self, _PARAMETER_RULES)
        auto_k = self.n_clusters == "auto"
        sharded = isinstance(X, FeatureData)
        self.backend_ = resolve_backend(
            self.backend,
            None if sharded else X,
            supported=SUPPORTED_BACKENDS,
            purpose="spectral clustering",
        )
        if sharded:
            features = check_sharded(X, self.n_clusters)
        else:
            features = check_features(
                X,
                min_samples=2,
                n_clusters=None if auto_k else self.n_clusters,
                keep_on_device=self.backend_ == "torch",
            )
        n_samples = features.shape[0]
        self.n_features_in_ = int(features.shape[1])
        rng = check_random_state(self.random_state)
        if auto_k:
            ks = check_k_range(self.k_range, n_samples)
            k_max = max(ks)
        else:
            ks, k_max = [], int(self.n_clusters)
        n_eigenvalues = k_max + 1 if auto_k else k_max
        self.timings_: dict[str, float] = {}

        method = self.method
        if sharded:
            # A kNN graph of sharded rows would need an n x n eigensolve on the driver.
            if method == "knn":
                raise ValueError(
                    "method='knn' needs the rows in this process; sharded data is clustered "
                    "with method='landmark' (or 'auto')"
                )
            method = "landmark"
        if method == "auto":
            method = "knn" if n_samples <= self.knn_max_samples else "landmark"
        self.method_ = method
        if method == "knn":
            spectra, component_of, n_components = self._fit_knn(features, n_eigenvalues, rng)
        else:
            spectra, component_of, n_components = self._fit_landmark(
                features, n_samples, k_max, n_eigenvalues, rng
            )
        self.n_components_ = n_components
        self.eigenvalues_ = merged_eigenvalues(spectra, n_eigenvalues)

        if auto_k:
            self.k_selection_ = self._select_k(ks, n_samples)
            k = self.k_selection_.chosen
        else:
            k = k_max

        seed = int(rng.randint(2**31 - 1))
        started = time.perf_counter()
        if n_components > k:
            warnings.warn(
                f"the affinity graph has n_components={n_components} > n_clusters={k}; whole "
                "components are grouped by their centroids. Raise n_neighbors (or "
                "landmark_neighbors) to connect the graph.",
                DisconnectedGraphWarning,
                stacklevel=2,
            )
            self.labels_ = group_components(features, component_of, n_components, k, seed)
            self.n_iter_ = 0
        else:
            self.labels_, self.n_iter_ = labels_from_spectra(
                spectra, k, n_samples, n_init=self.n_init, rng=rng, backend=self.backend_
            )
        self.n_clusters_ = int(k)
        self.timings_["kmeans"] = time.perf_counter() - started
        logger.debug(
            "SpectralClustering: n=%d, k=%d, method=%s, backend=%s, %d graph component(s), "
            "seconds: %s",
            n_samples,
            k,
            method,
            self.backend_,
            n_components,
            ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.timings_.items()),
        )
        return self

    def _select_k(self, ks: list[int], n_samples: int) -> KSelection:
        values = self.eigenvalues_
        usable = [k for k in ks if k < values.size]
        if not usable:
            raise ValueError(
                f"only {values.size} eigenvalues are available; k_range={ks} needs {max(ks) + 1}"
            )
        return eigengap_selection(values, usable, n_samples=n_samples, relative=True)

    def _fit_knn(
        self, X: Any, n_eigenvalues: int, rng: np.random.RandomState
    ) -> tuple[list[ComponentSpectrum], np.ndarray, int]:
        started = time.perf_counter()
        host = np.asarray(to_numpy(X))
        n_samples = host.shape[0]
        self.n_neighbors_ = min(int(self.n_neighbors), n_samples)
        affinity = knn_affinity(
            host,
            self.n_neighbors_,
            knn_method=self.knn_method,
            backend=self.backend_,
            random_state=int(rng.randint(2**31 - 1)),
        )
        n_components, component_of = connected_components(affinity, directed=False)
        self.timings_["graph"] = time.perf_counter() - started
        started = time.perf_counter()
        self.eigen_solver_ = self.eigen_solver
        if self.eigen_solver == "auto":
            self.eigen_solver_ = (
                "dense" if n_samples <= DENSE_MAX_NODES else default_sparse_solver()
            )
        spectra = knn_spectra(
            affinity, component_of, n_components, n_eigenvalues, self.eigen_solver_, rng
        )
        self.timings_["eigensolve"] = time.perf_counter() - started
        return spectra, component_of, int(n_components)

    def _fit_landmark(
        self,
        X: Any,
        n_samples: int,
        k_max: int,
        n_eigenvalues: int,
        rng: np.random.RandomState,
    ) -> tuple[list[ComponentSpectrum], np.ndarray, int]:
        self.n_landmarks_ = self._resolve_n_landmarks(n_samples, k_max)
        self.eigen_solver_ = "dense"  # p x p eigendecomposition
        started = time.perf_counter()
        self.landmarks_ = select_landmarks(
            X,
            self.n_landmarks_,
            selection=self.landmark_selection,
            backend=self.backend_,
            random_state=rng,
        )
        self.timings_["landmarks"] = time.perf_counter() - started
        started = time.perf_counter()
        r = min(int(self.landmark_neighbors), self.n_landmarks_)
        if isinstance(X, ShardedRows):
            sq_distances, indices = X.nearest(self.landmarks_, r)
        else:
            sq_distances, indices = nearest_landmarks(X, self.landmarks_, r, backend=self.backend_)
        weights = landmark_weights(sq_distances)
        del sq_distances
        self.timings_["graph"] = time.perf_counter() - started
        started = time.perf_counter()
        result = landmark_spectra(indices, weights, self.n_landmarks_, n_eigenvalues)
        self.timings_["eigensolve"] = time.perf_counter() - started
        return result
