"""Clustering estimators (scikit-learn API) and their backends.

Import from here, not from the private modules: ``from rayclust.cluster import KMeans``.
"""

from ._backend import BACKENDS, BackendUnavailableError, resolve_backend
from ._lloyd import kmeans_plusplus
from ._params import CheckedInFit, Int, Interval, OneOf, Real, check_params, estimator_parameters
from ._validation import (
    FewDistinctPointsWarning,
    UnusableFeaturesError,
    check_features,
    check_k_range,
)
from .agglomerative import AgglomerativeClustering
from .choose_k import (
    KSelection,
    eigengap_selection,
    graph_modularity,
    parsimonious_selection,
    select_best,
)
from .hierarchical_kmeans import HierarchicalKMeans, KMeansLevel, balanced_allocation
from .kmeans import KMeans
from .neighbors import NearestNeighbors, kneighbors_graph, neighbor_recall
from .registry import (
    ALGORITHMS,
    UnknownAlgorithmError,
    algorithm_info,
    check_algorithm,
    create_estimator,
    list_algorithms,
)
from .spectral import DisconnectedGraphWarning, SpectralClustering
from .topdown_kmeans import TopDownKMeans

__all__ = [
    "ALGORITHMS",
    "UnknownAlgorithmError",
    "algorithm_info",
    "check_algorithm",
    "create_estimator",
    "list_algorithms",
    "BACKENDS",
    "BackendUnavailableError",
    "CheckedInFit",
    "Int",
    "Interval",
    "OneOf",
    "Real",
    "check_params",
    "estimator_parameters",
    "FewDistinctPointsWarning",
    "UnusableFeaturesError",
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
    "graph_modularity",
    "parsimonious_selection",
    "SpectralClustering",
    "TopDownKMeans",
    "eigengap_selection",
    "select_best",
]
