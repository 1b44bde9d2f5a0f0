"""The clustering-algorithm registry: one list of names that config, CLI, multi-view and tune
check against, and one factory, as ``rayclust.views`` does for backbones.

``create_estimator("spectral", n_clusters=10, random_state=0)`` returns a scikit-learn style
estimator; ``list_algorithms()`` names them all; an unknown name fails with the close matches.
Importing this module is cheap (the estimators are imported when one is created), so config
validation can use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    summary: str
    factory: Callable[..., Any]
    supports_auto_k: bool  # accepts n_clusters="auto"
    uses_neighbors: bool  # n_neighbors shapes its kNN graph


def _kmeans(n_clusters, *, random_state=None, backend="auto", n_neighbors=10):
    from rayclust.cluster.kmeans import KMeans

    return KMeans(n_clusters=n_clusters, random_state=random_state, backend=backend)


def _spectral(n_clusters, *, random_state=None, backend="auto", n_neighbors=10):
    from rayclust.cluster.spectral import SpectralClustering

    return SpectralClustering(
        n_clusters=n_clusters, n_neighbors=n_neighbors, random_state=random_state, backend=backend
    )


def _agglomerative(n_clusters, *, random_state=None, backend="auto", n_neighbors=10):
    from rayclust.cluster.agglomerative import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=n_clusters, n_neighbors=n_neighbors, backend=backend)


def hierarchical_levels(n_clusters: int, n_samples: int | None = None) -> tuple[int, ...]:
    """Levels for a k-cluster hierarchical K-means: a finer level of ~10k clusters (capped so
    every fine cluster keeps a few points) under the requested k; one level when too small."""
    fine = 10 * n_clusters
    if n_samples is not None:
        fine = min(fine, n_samples // 4)
    return (fine, n_clusters) if fine > n_clusters else (n_clusters,)


class _HierarchicalFactory:
    """Builds a HierarchicalKMeans whose top level has n_clusters clusters; the finer level is
    sized from the data at fit time, so the estimator wraps the choice."""

    def __call__(self, n_clusters, *, random_state=None, backend="auto", n_neighbors=10):
        from rayclust.cluster.hierarchical_kmeans import HierarchicalKMeans

        if not isinstance(n_clusters, int):
            raise ValueError(
                f"n_clusters={n_clusters!r}: hierarchical_kmeans needs an integer number of"
                " clusters ('auto' is not supported)"
            )
        return _SizedHierarchicalKMeans(
            HierarchicalKMeans, n_clusters, random_state=random_state, backend=backend
        )


class _SizedHierarchicalKMeans:
    """Chooses the levels from n_samples at fit time (see ``hierarchical_levels``)."""

    def __init__(self, cls, n_clusters: int, *, random_state=None, backend="auto") -> None:
        self.cls = cls
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.backend = backend

    def fit(self, X, y=None):
        levels = hierarchical_levels(self.n_clusters, len(X))
        self.estimator_ = self.cls(
            n_clusters=levels, random_state=self.random_state, backend=self.backend
        ).fit(X)
        self.labels_ = self.estimator_.labels_
        self.backend_ = getattr(self.estimator_, "backend_", self.backend)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


_REGISTRY: dict[str, AlgorithmInfo] = {
    info.name: info
    for info in (
        AlgorithmInfo("kmeans", "K-means (k-means++ init, Lloyd)", _kmeans, True, False),
        AlgorithmInfo("spectral", "spectral clustering on a kNN graph", _spectral, True, True),
        AlgorithmInfo(
            "agglomerative",
            "ward agglomerative clustering on a kNN connectivity graph",
            _agglomerative,
            False,
            True,
        ),
        AlgorithmInfo(
            "hierarchical_kmeans",
            "K-means of K-means centroids (balanced clusters, Vo et al. 2024)",
            _HierarchicalFactory(),
            False,
            False,
        ),
    )
}

ALGORITHMS: tuple[str, ...] = tuple(_REGISTRY)


class UnknownAlgorithmError(ValueError):
    """A clustering algorithm name that is not registered."""


def list_algorithms() -> list[str]:
    return list(ALGORITHMS)


def algorithm_info(name: str) -> AlgorithmInfo:
    check_algorithm(name)
    return _REGISTRY[name]


def check_algorithm(name: Any, key: str = "algorithm") -> str:
    """Return name when registered, else raise naming the key and the closest names."""
    if name in _REGISTRY:
        return name
    close = difflib.get_close_matches(str(name), ALGORITHMS, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UnknownAlgorithmError(
        f"{key}={name!r} is not a clustering algorithm; choose from {', '.join(ALGORITHMS)}{hint}"
    )


def create_estimator(
    name: str,
    n_clusters: int | str,
    *,
    random_state: int | None = None,
    backend: str = "auto",
    n_neighbors: int = 10,
) -> Any:
    """A fresh, unfitted estimator of the named algorithm (scikit-learn API: fit, labels_)."""
    info = algorithm_info(name)
    if n_clusters == "auto" and not info.supports_auto_k:
        raise ValueError(f"n_clusters='auto' is not supported by {name}; give an integer")
    return info.factory(
        n_clusters, random_state=random_state, backend=backend, n_neighbors=n_neighbors
    )
