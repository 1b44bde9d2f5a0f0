"""Clustering estimators (scikit-learn API) and their backends.

Import from here, not from the private modules: ``from rayclust.cluster import KMeans``.
"""

from ._backend import BACKENDS, BackendUnavailableError, resolve_backend
from ._validation import FewDistinctPointsWarning, check_features, check_k_range
from .agglomerative import AgglomerativeClustering
from .choose_k import KSelection, eigengap_selection, select_best
from .neighbors import NearestNeighbors, kneighbors_graph, neighbor_recall
from .spectral import DisconnectedGraphWarning, SpectralClustering

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FewDistinctPointsWarning",
    "NearestNeighbors",
    "check_features",
    "check_k_range",
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
