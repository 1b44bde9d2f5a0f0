"""Multi-view consensus: combine several partitions of the same samples into one.

Each input partition is an integer label array of length n_samples (``-1``: this view has
no label for that sample); optional per-partition weights down-weight weak views.

- :class:`CoAssociationConsensus` (``"coassociation"``): MVEC's co-association matrix cut by
  average linkage; exact but quadratic in n (refuses sizes it cannot hold).
- :class:`BipartiteConsensus` (``"bipartite"``): spectral partition of the sample-cluster
  graph (HBGF); linear in n, for collections of millions.
- ``mvec``: MVEC as the paper ran it (scikit-learn's default agglomerative per view), its
  time model ``max_j (t1_j + t2_j) + t3`` and its scores (MIX, FM_Ck).
"""

from ._partitions import ConsensusWarning, check_partitions
from .bipartite import BipartiteConsensus, bipartite_incidence
from .coassociation import (
    CoAssociationConsensus,
    ConsensusTooLargeError,
    available_memory_bytes,
    co_association_matrix,
    coassociation_memory_bytes,
)
from .mvec import PAPER_VIEW_ALGORITHM, paper_scores, paper_view_estimator, time_model
from .registry import create_consensus, list_consensus, register_consensus

__all__ = [
    "PAPER_VIEW_ALGORITHM",
    "BipartiteConsensus",
    "CoAssociationConsensus",
    "ConsensusTooLargeError",
    "ConsensusWarning",
    "available_memory_bytes",
    "bipartite_incidence",
    "check_partitions",
    "co_association_matrix",
    "coassociation_memory_bytes",
    "create_consensus",
    "list_consensus",
    "paper_scores",
    "paper_view_estimator",
    "register_consensus",
    "time_model",
]
