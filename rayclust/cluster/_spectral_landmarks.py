"""The landmark formulation of spectral clustering (Cai & Chen 2015, LSC).

Each point is linked to its ``landmark_neighbors`` nearest of p landmarks with Gaussian
weights (rows summing to 1): a sparse n x p matrix Z. With ``Zh = Z D^-1/2`` (D: landmark
degrees) the point graph ``W = Zh Zh^T`` is already normalised, and its leading eigenvectors
are the left singular vectors of Zh, from the p x p matrix ``Zh^T Zh``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.utils import check_random_state

from ._spectral_components import ComponentSpectrum, eigenvalues_per_component
from ._validation import DEFAULT_CHUNK_ROWS, to_numpy

LANDMARK_SELECTIONS = ("kmeans", "random")


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


def landmark_spectra(
    indices: np.ndarray,
    weights: np.ndarray,
    n_landmarks: int,
    n_eigenvalues: int,
) -> tuple[list[ComponentSpectrum], np.ndarray, int]:
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

    per_component = eigenvalues_per_component(n_components, n_eigenvalues)
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
            ComponentSpectrum(
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
