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

import importlib.util
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from ._backend import resolve_backend
from ._validation import DEFAULT_CHUNK_ROWS, check_features, check_k_range, to_numpy
from .choose_k import KSelection, eigengap_selection

logger = logging.getLogger("rayclust")

METHODS = ("auto", "knn", "landmark")
EIGEN_SOLVERS = ("auto", "dense", "arpack", "lobpcg", "amg")
LANDMARK_SELECTIONS = ("kmeans", "random")
SUPPORTED_BACKENDS = ("faiss", "torch", "sklearn")

# Components up to this size are solved with a dense eigendecomposition (exact, fast enough).
_DENSE_MAX_NODES = 1500


class DisconnectedGraphWarning(UserWarning):
    """The affinity graph has more connected components than requested clusters."""


# ---------------------------------------------------------------------------------------------
# One component's spectrum, whichever formulation produced it.
# ---------------------------------------------------------------------------------------------


@dataclass
class _ComponentSpectrum:
    """Smallest normalised-Laplacian eigenvalues of one connected component.

    ``embed(m)`` returns the component's points in the space of its first ``m`` eigenvectors
    (rows in the order of ``rows``), computed only when asked for so that a million-point
    component never holds more than the columns it needs.
    """

    rows: np.ndarray
    eigenvalues: np.ndarray
    embed: Callable[[int], np.ndarray]


def _allocate_clusters(spectra: Sequence[_ComponentSpectrum], k: int) -> np.ndarray:
    """Clusters per component: how many of the k smallest eigenvalues overall each one owns."""
    values = np.concatenate([s.eigenvalues for s in spectra])
    owner = np.concatenate([np.full(s.eigenvalues.size, i) for i, s in enumerate(spectra)])
    # Exact ties between components go to the larger one: its extra cluster splits more points.
    sizes = np.array([s.rows.size for s in spectra])
    order = np.lexsort((-sizes[owner], values))
    return np.bincount(owner[order[:k]], minlength=len(spectra))


def _merged_eigenvalues(spectra: Sequence[_ComponentSpectrum], count: int) -> np.ndarray:
    values = np.sort(np.concatenate([s.eigenvalues for s in spectra]))
    return values[:count]


def _eigenvalues_per_component(n_components: int, n_eigenvalues: int) -> int:
    """Eigenvalues any one component can contribute to the ``n_eigenvalues`` smallest overall.

    Every component owns an exact zero eigenvalue, so one component can own at most
    ``n_eigenvalues - (n_components - 1)`` of them.
    """
    return max(1, n_eigenvalues - n_components + 1)


def _row_normalize(U: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return U / norms


# ---------------------------------------------------------------------------------------------
# kNN-graph formulation.
# ---------------------------------------------------------------------------------------------


def knn_affinity(
    X: np.ndarray,
    n_neighbors: int,
    *,
    knn_method: str = "auto",
    backend: str = "auto",
    random_state: int | None = None,
) -> sp.csr_matrix:
    """Symmetric kNN connectivity ``0.5 * (C + C^T)``, each point counted among its own
    ``n_neighbors`` (as scikit-learn's ``SpectralClustering(affinity="nearest_neighbors")``)."""
    from .neighbors import NearestNeighbors

    n = X.shape[0]
    if n_neighbors > 1:
        search = NearestNeighbors(
            n_neighbors - 1, method=knn_method, backend=backend, random_state=random_state
        )
        indices = search.fit(X).kneighbors(return_distance=False)
        valid = indices >= 0
        rows = np.repeat(np.arange(n), indices.shape[1]).reshape(indices.shape)[valid]
        cols = indices[valid]
    else:
        rows = cols = np.empty(0, dtype=np.int64)
    rows = np.concatenate([np.arange(n), rows])
    cols = np.concatenate([np.arange(n), cols])
    connectivity = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return ((connectivity + connectivity.T) * 0.5).tocsr()


def _default_sparse_solver() -> str:
    return "amg" if importlib.util.find_spec("pyamg") is not None else "arpack"


def _amg_preconditioner(laplacian: sp.csr_matrix) -> Any:
    try:
        from pyamg import smoothed_aggregation_solver
    except ImportError as error:
        raise ImportError(
            "eigen_solver='amg' needs pyamg: pip install pyamg (or use 'lobpcg' / 'arpack')"
        ) from error
    # A tiny shift makes the singular Laplacian positive definite for the multigrid setup.
    shifted = (laplacian + 1e-5 * sp.eye(laplacian.shape[0], format="csr")).tocsr()
    return smoothed_aggregation_solver(shifted).aspreconditioner()


def smallest_laplacian_eigenpairs(
    affinity: sp.csr_matrix,
    n_eigenpairs: int,
    *,
    eigen_solver: str = "auto",
    random_state: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenvalues (ascending) and eigenvectors of ``I - D^-1/2 W D^-1/2``.

    ``affinity`` must be symmetric, connected and free of isolated nodes. The eigenvectors are
    those of the normalised affinity, as Ng, Jordan & Weiss embed points.
    """
    rng = check_random_state(random_state)
    n = affinity.shape[0]
    m = min(n_eigenpairs, n)
    degrees = np.asarray(affinity.sum(axis=1)).ravel()
    sqrt_degrees = np.sqrt(degrees)
    if m == 1:
        # The first eigenvector of a connected graph is known: D^1/2 1, eigenvalue 0.
        return np.zeros(1), (sqrt_degrees / np.linalg.norm(sqrt_degrees))[:, None]
    inv_sqrt = sp.diags(1.0 / sqrt_degrees)
    normalized = (inv_sqrt @ affinity @ inv_sqrt).tocsr()

    solver = eigen_solver
    if solver == "auto":
        solver = "dense" if n <= _DENSE_MAX_NODES else _default_sparse_solver()
    if solver != "dense" and m >= n // 5:
        solver = "dense"  # iterative solvers need many fewer eigenpairs than nodes

    if solver == "dense":
        values, vectors = np.linalg.eigh(normalized.toarray())
        values, vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    elif solver == "arpack":
        from scipy.sparse.linalg import eigsh

        start = rng.uniform(-1.0, 1.0, n)
        values, vectors = eigsh(normalized, k=m, which="LA", v0=start, tol=1e-6)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
    elif solver in ("lobpcg", "amg"):
        from scipy.sparse.linalg import lobpcg

        laplacian = (sp.eye(n, format="csr") - normalized).tocsr()
        start = rng.standard_normal((n, m))
        start[:, 0] = sqrt_degrees  # the known first eigenvector speeds convergence
        preconditioner = _amg_preconditioner(laplacian) if solver == "amg" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lobpcg's own tolerance chatter
            laplacian_values, vectors = lobpcg(
                laplacian, start, M=preconditioner, tol=1e-5, maxiter=500, largest=False
            )
        order = np.argsort(laplacian_values)
        values, vectors = 1.0 - laplacian_values[order], vectors[:, order]
    else:
        raise ValueError(f"eigen_solver={eigen_solver!r} should be one of {EIGEN_SOLVERS}")
    laplacian_values = np.clip(1.0 - values, 0.0, 2.0)
    return laplacian_values, vectors


def _knn_spectra(
    affinity: sp.csr_matrix,
    component_of: np.ndarray,
    n_components: int,
    n_eigenvalues: int,
    eigen_solver: str,
    rng: np.random.RandomState,
) -> list[_ComponentSpectrum]:
    per_component = _eigenvalues_per_component(n_components, n_eigenvalues)
    order = np.argsort(component_of, kind="stable")
    bounds = np.searchsorted(component_of[order], np.arange(n_components + 1))
    # Permuted once so that every component is a contiguous diagonal block: slicing a block
    # then costs its own nonzeros, not the whole graph's.
    grouped = affinity[order][:, order].tocsr() if n_components > 1 else affinity
    spectra = []
    for c in range(n_components):
        rows = order[bounds[c] : bounds[c + 1]]
        block = grouped[bounds[c] : bounds[c + 1], bounds[c] : bounds[c + 1]]
        values, vectors = smallest_laplacian_eigenpairs(
            block, per_component, eigen_solver=eigen_solver, random_state=rng
        )
        spectra.append(_ComponentSpectrum(rows, values, lambda m, vectors=vectors: vectors[:, :m]))
    return spectra


# ---------------------------------------------------------------------------------------------
# Landmark (bipartite-graph) formulation.
# ---------------------------------------------------------------------------------------------


def _sample_rows(X: Any, size: int, rng: np.random.RandomState) -> np.ndarray:
    """``size`` distinct random rows as a host float32 array (sorted reads suit memmaps)."""
    n = X.shape[0]
    chosen = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    return np.ascontiguousarray(to_numpy(X[chosen]), dtype=np.float32)


def select_landmarks(
    X: Any,
    n_landmarks: int,
    *,
    selection: str = "kmeans",
    kmeans_iterations: int = 5,
    sample_per_landmark: int = 10,
    backend: str = "faiss",
    random_state: Any = None,
) -> np.ndarray:
    """(n_landmarks, d) float32 landmarks: random rows, or K-means centres of a random sample.

    K-means landmarks (LSC-K) summarise the data better than random rows (LSC-R); a sample of
    ``sample_per_landmark`` rows per landmark and a few Lloyd iterations are enough for that.
    """
    rng = check_random_state(random_state)
    n = X.shape[0]
    if selection == "random":
        return _sample_rows(X, n_landmarks, rng)
    if selection != "kmeans":
        raise ValueError(f"landmark_selection={selection!r} should be one of {LANDMARK_SELECTIONS}")
    sample = _sample_rows(X, min(n, sample_per_landmark * n_landmarks), rng)
    if sample.shape[0] == n_landmarks:
        return sample
    seed = int(rng.randint(2**31 - 1))
    if backend != "faiss":
        from sklearn.cluster import KMeans as SkKMeans

        model = SkKMeans(
            n_landmarks, init="random", n_init=1, max_iter=kmeans_iterations, random_state=seed
        ).fit(sample)
        return np.ascontiguousarray(model.cluster_centers_, dtype=np.float32)
    import faiss

    kmeans = faiss.Kmeans(
        sample.shape[1],
        n_landmarks,
        niter=kmeans_iterations,
        seed=seed,
        max_points_per_centroid=sample_per_landmark,
        min_points_per_centroid=1,
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def nearest_landmarks(
    X: Any,
    landmarks: np.ndarray,
    n_nearest: int,
    *,
    backend: str = "faiss",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances, indices), each (n, n_nearest), of every row's nearest landmarks.

    Reads ``X`` chunk by chunk so a memory-mapped feature file is never loaded whole; a torch
    tensor is searched on its own device.
    """
    n = X.shape[0]
    sq_distances = np.empty((n, n_nearest), dtype=np.float32)
    indices = np.empty((n, n_nearest), dtype=np.int64)
    if backend == "torch":
        import torch

        device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
        L = torch.as_tensor(landmarks, device=device)
        L_sq = (L * L).sum(dim=1)
        for start in range(0, n, chunk_rows):
            chunk = X[start : start + chunk_rows]
            if not isinstance(chunk, torch.Tensor):
                chunk = torch.as_tensor(np.asarray(chunk))
            chunk = chunk.to(device=device, dtype=torch.float32)
            scores = torch.addmm(L_sq, chunk, L.T, alpha=-2.0)
            best, idx = scores.topk(n_nearest, dim=1, largest=False)
            best += (chunk * chunk).sum(dim=1, keepdim=True)
            stop = start + chunk.shape[0]
            sq_distances[start:stop] = best.clamp_min_(0).cpu().numpy()
            indices[start:stop] = idx.cpu().numpy()
        return sq_distances, indices
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(landmarks.shape[1])
        index.add(landmarks)
        search = lambda chunk: index.search(chunk, n_nearest)  # noqa: E731
    else:
        from sklearn.neighbors import NearestNeighbors as SkNearestNeighbors

        index = SkNearestNeighbors(n_neighbors=n_nearest, algorithm="brute").fit(landmarks)

        def search(chunk):
            distances, idx = index.kneighbors(chunk)
            return distances**2, idx

    for start in range(0, n, chunk_rows):
        chunk = np.ascontiguousarray(np.asarray(X[start : start + chunk_rows]), dtype=np.float32)
        chunk_sq, chunk_idx = search(chunk)
        stop = start + chunk.shape[0]
        sq_distances[start:stop] = np.maximum(chunk_sq, 0.0)
        indices[start:stop] = chunk_idx
    return sq_distances, indices


def landmark_weights(sq_distances: np.ndarray) -> np.ndarray:
    """Gaussian weights of each point's nearest landmarks, rows summing to 1 (LSC's Z).

    The bandwidth is the mean distance to the selected landmarks, so it adapts to the data's
    scale; each row is shifted by its nearest distance before the exponential so that no row
    underflows to all zeros, which the row normalisation then cancels exactly.
    """
    distances = np.sqrt(sq_distances, dtype=np.float64)
    bandwidth = float(distances.mean())
    if not np.isfinite(bandwidth) or bandwidth <= 0:
        bandwidth = 1.0  # every point sits on its landmarks: all weights equal
    shifted = sq_distances - sq_distances[:, :1]
    weights = np.exp(-shifted / (2.0 * bandwidth**2))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights


def _landmark_gram(indices: np.ndarray, weights: np.ndarray, n_landmarks: int) -> sp.csr_matrix:
    """``Z^T Z`` (p x p, sparse) from the r nonzeros per row of Z, by O(n r^2) scatter-adds."""
    n, r = indices.shape
    gram = sp.csr_matrix((n_landmarks, n_landmarks))
    step = max(1, 4_000_000 // (r * r))  # bounds the temporaries to a few tens of MB
    for start in range(0, n, step):
        idx = indices[start : start + step]
        w = weights[start : start + step]
        rows = np.repeat(idx, r, axis=1).ravel()
        cols = np.tile(idx, (1, r)).ravel()
        values = (w[:, :, None] * w[:, None, :]).ravel()
        gram = gram + sp.csr_matrix((values, (rows, cols)), shape=(n_landmarks, n_landmarks))
    return gram.tocsr()


def _landmark_spectra(
    indices: np.ndarray,
    weights: np.ndarray,
    n_landmarks: int,
    n_eigenvalues: int,
) -> tuple[list[_ComponentSpectrum], np.ndarray, int]:
    """Per-component spectra of the landmark graph, plus each point's component and count."""
    degrees = np.bincount(indices.ravel(), weights=weights.ravel(), minlength=n_landmarks)
    gram = _landmark_gram(indices, weights, n_landmarks)
    used = degrees > 0  # a landmark no point chose carries no edge: leave it out
    inv_sqrt = np.zeros(n_landmarks)
    inv_sqrt[used] = 1.0 / np.sqrt(degrees[used])
    normalized = sp.diags(inv_sqrt) @ gram @ sp.diags(inv_sqrt)

    _, landmark_component = connected_components(gram, directed=False)
    # Renumber over used landmarks only; every point's r landmarks share one component.
    used_ids = np.flatnonzero(used)
    _, compact = np.unique(landmark_component[used_ids], return_inverse=True)
    component_of_landmark = np.full(n_landmarks, -1)
    component_of_landmark[used_ids] = compact
    n_components = int(compact.max()) + 1
    component_of = component_of_landmark[indices[:, 0]]

    per_component = _eigenvalues_per_component(n_components, n_eigenvalues)
    point_order = np.argsort(component_of, kind="stable")
    point_bounds = np.searchsorted(component_of[point_order], np.arange(n_components + 1))
    landmark_order = np.argsort(component_of_landmark, kind="stable")
    sorted_components = component_of_landmark[landmark_order]
    landmark_bounds = np.searchsorted(sorted_components, np.arange(n_components + 1))

    spectra = []
    for c in range(n_components):
        members = landmark_order[landmark_bounds[c] : landmark_bounds[c + 1]]
        block = normalized[members][:, members].toarray()
        values, vectors = np.linalg.eigh(block)  # ascending squared singular values of Zh
        m = min(per_component, members.size)
        squared_sigma = np.clip(values[::-1][:m], 0.0, 1.0)
        basis = vectors[:, ::-1][:, :m]
        rows = point_order[point_bounds[c] : point_bounds[c + 1]]
        spectra.append(
            _ComponentSpectrum(
                rows,
                1.0 - squared_sigma,
                _landmark_embedder(
                    indices[rows], weights[rows], inv_sqrt, members, basis, squared_sigma
                ),
            )
        )
    return spectra, component_of, n_components


def _landmark_embedder(
    indices: np.ndarray,
    weights: np.ndarray,
    inv_sqrt_degrees: np.ndarray,
    members: np.ndarray,
    basis: np.ndarray,
    squared_sigma: np.ndarray,
) -> Callable[[int], np.ndarray]:
    def embed(m: int) -> np.ndarray:
        # Left singular vectors U = Zh B S^-1, one gather per nonzero of Z (O(n r m)).
        sigma = np.sqrt(np.maximum(squared_sigma[:m], 1e-12))
        full_basis = np.zeros((inv_sqrt_degrees.size, m), dtype=np.float32)
        full_basis[members] = (basis[:, :m] / sigma).astype(np.float32)
        scaled = (weights * inv_sqrt_degrees[indices]).astype(np.float32)
        U = np.zeros((indices.shape[0], m), dtype=np.float32)
        for j in range(indices.shape[1]):
            U += scaled[:, j : j + 1] * full_basis[indices[:, j]]
        return U

    return embed


# ---------------------------------------------------------------------------------------------
# From spectra to labels.
# ---------------------------------------------------------------------------------------------


def _kmeans_labels(
    U: np.ndarray, k: int, *, n_init: int, random_state: int, backend: str
) -> tuple[np.ndarray, int]:
    """K-means on an embedding: (labels, Lloyd iterations on the full data)."""
    from .kmeans import KMeans

    model = KMeans(n_clusters=k, n_init=n_init, random_state=random_state, backend=backend)
    labels = model.fit_predict(U)
    return np.asarray(labels, dtype=np.int64), int(model.n_iter_)


def component_centroids(X: Any, component_of: np.ndarray, n_components: int) -> np.ndarray:
    """(n_components, d) float64 mean feature vector per component, read chunk by chunk."""
    sums = np.zeros((n_components, X.shape[1]))
    for start in range(0, X.shape[0], DEFAULT_CHUNK_ROWS):
        chunk = np.asarray(to_numpy(X[start : start + DEFAULT_CHUNK_ROWS]), dtype=np.float64)
        owner = component_of[start : start + chunk.shape[0]]
        membership = sp.csr_matrix(
            (np.ones(owner.size), (owner, np.arange(owner.size))),
            shape=(n_components, owner.size),
        )
        sums += membership @ chunk
    counts = np.bincount(component_of, minlength=n_components)
    return sums / counts[:, None]


def group_components(
    X: Any, component_of: np.ndarray, n_components: int, k: int, random_state: int
) -> np.ndarray:
    """Labels that put whole components into k groups (size-weighted K-means on centroids)."""
    from sklearn.cluster import KMeans as SkKMeans

    centroids = component_centroids(X, component_of, n_components)
    sizes = np.bincount(component_of, minlength=n_components)
    groups = SkKMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(
        centroids, sample_weight=sizes
    )
    return groups[component_of]


def _labels_from_spectra(
    spectra: Sequence[_ComponentSpectrum],
    k: int,
    n_samples: int,
    *,
    n_init: int,
    rng: np.random.RandomState,
    backend: str,
) -> tuple[np.ndarray, int]:
    allocation = _allocate_clusters(spectra, k)
    labels = np.empty(n_samples, dtype=np.int64)
    next_label, n_iter = 0, 0
    for spectrum, k_c in zip(spectra, allocation, strict=True):
        if k_c <= 1:
            labels[spectrum.rows] = next_label
        else:
            U = _row_normalize(spectrum.embed(int(k_c)))
            local, iterations = _kmeans_labels(
                U,
                int(k_c),
                n_init=n_init,
                random_state=int(rng.randint(2**31 - 1)),
                backend=backend,
            )
            labels[spectrum.rows] = next_label + local
            n_iter = max(n_iter, iterations)
        next_label += max(int(k_c), 1)
    return labels, n_iter


# ---------------------------------------------------------------------------------------------
# The estimator.
# ---------------------------------------------------------------------------------------------


class SpectralClustering(ClusterMixin, BaseEstimator):
    """Spectral clustering on a kNN graph or on a landmark (bipartite) graph.

    Parameters
    ----------
    n_clusters : int or "auto", default=8
        Number of clusters; ``"auto"`` picks it by the largest relative eigengap over
        ``k_range`` (see :func:`rayclust.cluster.choose_k.eigengap_scores`).
    method : {"auto", "knn", "landmark"}, default="auto"
        ``"auto"``: ``"knn"`` up to ``knn_max_samples`` samples, ``"landmark"`` beyond.
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

    def __init__(
        self,
        n_clusters: int | str = 8,
        *,
        method: str = "auto",
        n_neighbors: int = 10,
        knn_method: str = "auto",
        eigen_solver: str = "auto",
        n_landmarks: int | str = "auto",
        landmark_neighbors: int = 5,
        landmark_selection: str = "kmeans",
        k_range: Sequence[int] | None = None,
        n_init: int = 10,
        knn_max_samples: int = 20_000,
        backend: str = "auto",
        random_state: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.method = method
        self.n_neighbors = n_neighbors
        self.knn_method = knn_method
        self.eigen_solver = eigen_solver
        self.n_landmarks = n_landmarks
        self.landmark_neighbors = landmark_neighbors
        self.landmark_selection = landmark_selection
        self.k_range = k_range
        self.n_init = n_init
        self.knn_max_samples = knn_max_samples
        self.backend = backend
        self.random_state = random_state

    # -- parameter checks -----------------------------------------------------------------

    def _check_params(self) -> None:
        for name, value, allowed in (
            ("method", self.method, METHODS),
            ("eigen_solver", self.eigen_solver, EIGEN_SOLVERS),
            ("landmark_selection", self.landmark_selection, LANDMARK_SELECTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} should be one of {', '.join(allowed)}")
        for name in ("n_neighbors", "landmark_neighbors", "n_init", "knn_max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}={value!r} should be an int >= 1")
        if isinstance(self.n_clusters, str) and self.n_clusters != "auto":
            raise ValueError(f"n_clusters={self.n_clusters!r} should be an int or 'auto'")
        if self.n_landmarks != "auto" and (
            isinstance(self.n_landmarks, bool)
            or not isinstance(self.n_landmarks, int | np.integer)
            or self.n_landmarks < 2
        ):
            raise ValueError(f"n_landmarks={self.n_landmarks!r} should be 'auto' or an int >= 2")

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
        """Cluster ``X`` (n_samples, n_features); numpy, memmap, torch or CuPy."""
        self._check_params()
        auto_k = self.n_clusters == "auto"
        self.backend_ = resolve_backend(
            self.backend, X, supported=SUPPORTED_BACKENDS, purpose="spectral clustering"
        )
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
        self.eigenvalues_ = _merged_eigenvalues(spectra, n_eigenvalues)

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
            self.labels_, self.n_iter_ = _labels_from_spectra(
                spectra, k, n_samples, n_init=self.n_init, rng=rng, backend=self.backend_
            )
        self.n_clusters_ = int(k)
        self.timings_["kmeans"] = time.perf_counter() - started
        logger.info(
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
    ) -> tuple[list[_ComponentSpectrum], np.ndarray, int]:
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
                "dense" if n_samples <= _DENSE_MAX_NODES else _default_sparse_solver()
            )
        spectra = _knn_spectra(
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
    ) -> tuple[list[_ComponentSpectrum], np.ndarray, int]:
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
        sq_distances, indices = nearest_landmarks(X, self.landmarks_, r, backend=self.backend_)
        weights = landmark_weights(sq_distances)
        del sq_distances
        self.timings_["graph"] = time.perf_counter() - started
        started = time.perf_counter()
        result = _landmark_spectra(indices, weights, self.n_landmarks_, n_eigenvalues)
        self.timings_["eigensolve"] = time.perf_counter() - started
        return result

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).labels_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
