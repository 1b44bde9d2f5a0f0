"""Clustering estimators (scikit-learn API) and their backends.

Import from here, not from the private modules: ``from rayclust.cluster import KMeans``.
"""

from ._backend import BACKENDS, BackendUnavailableError, resolve_backend
from ._validation import (
    FewDistinctPointsWarning,
    check_features,
    check_k_range,
)
from .agglomerative import AgglomerativeClustering
from .choose_k import KSelection, eigengap_selection, select_best
from .hierarchical_kmeans import HierarchicalKMeans, KMeansLevel, balanced_allocation
from .kmeans import KMeans, kmeans_plusplus
from .neighbors import NearestNeighbors, kneighbors_graph, neighbor_recall
from .spectral import DisconnectedGraphWarning, SpectralClustering

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FewDistinctPointsWarning",
    "HierarchicalKMeans",
    "KMeans",
    "KMeansLevel",
    "NearestNeighbors",
    "check_features",
    "balanced_allocation",
    "check_k_range",
    "kmeans_plusplus",
    "kneighbors_graph",
    "neighbor_recall",
    "resolve_backend",
    "AgglomerativeClustering",
    "DisconnectedGraphWarning",
    "KSelection",
    "SpectralClustering",
    "eigengap_selection",
    "select_best",
]
