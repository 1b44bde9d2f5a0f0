"""Clustering estimators (scikit-learn API) and their backends.

Import from here, not from the private modules: ``from rayclust.cluster import KMeans``.
"""

from ._backend import BACKENDS, BackendUnavailableError, resolve_backend
from ._validation import FewDistinctPointsWarning, check_features, check_k_range
from .neighbors import NearestNeighbors, kneighbors_graph, neighbor_recall

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
]
