"""Spectra of a graph's connected components, and the labels they give (spectral clustering).

Both formulations of :class:`~rayclust.cluster.SpectralClustering` (the kNN graph in
``_spectral_knn``, the landmark graph in ``_spectral_landmarks``) produce one
:class:`ComponentSpectrum` per connected component; this module shares out the k clusters among
them (the spectrum of a block-diagonal graph is the union of its blocks' spectra) and runs
K-means on each component's embedding, or groups whole components when there are more
components than clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validation import DEFAULT_CHUNK_ROWS, to_numpy


@dataclass
class ComponentSpectrum:
    """Smallest normalised-Laplacian eigenvalues of one connected component.

    ``embed(m)`` returns the component's points in the space of its first ``m`` eigenvectors
    (rows in the order of ``rows``), computed only when asked for so that a million-point
    component never holds more than the columns it needs.
    """

    rows: np.ndarray
    eigenvalues: np.ndarray
    embed: Callable[[int], np.ndarray]


def allocate_clusters(spectra: Sequence[ComponentSpectrum], k: int) -> np.ndarray:
    """Clusters per component: how many of the k smallest eigenvalues overall each one owns."""
    values = np.concatenate([s.eigenvalues for s in spectra])
    owner = np.concatenate([np.full(s.eigenvalues.size, i) for i, s in enumerate(spectra)])
    # Exact ties between components go to the larger one: its extra cluster splits more points.
    sizes = np.array([s.rows.size for s in spectra])
    order = np.lexsort((-sizes[owner], values))
    return np.bincount(owner[order[:k]], minlength=len(spectra))


def merged_eigenvalues(spectra: Sequence[ComponentSpectrum], count: int) -> np.ndarray:
    values = np.sort(np.concatenate([s.eigenvalues for s in spectra]))
    return values[:count]


def eigenvalues_per_component(n_components: int, n_eigenvalues: int) -> int:
    """Eigenvalues any one component can contribute to the ``n_eigenvalues`` smallest overall.

    Every component owns an exact zero eigenvalue, so one component can own at most
    ``n_eigenvalues - (n_components - 1)`` of them.
    """
    return max(1, n_eigenvalues - n_components + 1)


def row_normalize(U: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return U / norms


def kmeans_labels(
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


def labels_from_spectra(
    spectra: Sequence[ComponentSpectrum],
    k: int,
    n_samples: int,
    *,
    n_init: int,
    rng: np.random.RandomState,
    backend: str,
) -> tuple[np.ndarray, int]:
    allocation = allocate_clusters(spectra, k)
    labels = np.empty(n_samples, dtype=np.int64)
    next_label, n_iter = 0, 0
    for spectrum, k_c in zip(spectra, allocation, strict=True):
        if k_c <= 1:
            labels[spectrum.rows] = next_label
        else:
            U = row_normalize(spectrum.embed(int(k_c)))
            local, iterations = kmeans_labels(
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
