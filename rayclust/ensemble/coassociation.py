"""Co-association consensus (evidence accumulation), the consensus step of MVEC.

The co-association of samples i and j is the (weighted) share of partitions that put them in
the same cluster, counting only partitions that label both. ``1 - co-association`` is a
distance; average-linkage agglomerative clustering cut at ``n_clusters`` gives the consensus,
as in Guérin et al.'s MVEC_agg (paper 001, section "MVEC").

It is quadratic in memory: the condensed distances take n*(n-1)/2 float64 and SciPy's linkage
works on a copy, about ``8 * n * n`` bytes at the peak (n=20,000: 3.2 GB). Beyond that use
:class:`~rayclust.ensemble.BipartiteConsensus`, which is linear in n.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.base import BaseEstimator, ClusterMixin

from ._partitions import check_n_clusters, check_partitions, check_weights, covered_samples

LINKAGES = ("average", "complete", "single", "weighted")
_ROW_BLOCK_BYTES = 64 * 1024 * 1024


class ConsensusTooLargeError(MemoryError):
    """The method would need more memory than allowed for this many samples."""


def available_memory_bytes() -> int:
    """Memory the OS can hand out now (MemAvailable), or total physical memory as a fallback."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def coassociation_memory_bytes(n_samples: int) -> int:
    """Peak bytes of :class:`CoAssociationConsensus` on n samples (distances + linkage copy)."""
    # Plus the row slabs of co-association being built (a few times _ROW_BLOCK_BYTES).
    return 8 * n_samples * n_samples + 2 * _ROW_BLOCK_BYTES


def co_association_matrix(
    partitions: Sequence[np.ndarray] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    rows: slice | None = None,
) -> np.ndarray:
    """Dense co-association matrix (float32, ``rows`` x n_samples, 1 on the diagonal).

    Entry (i, j) is ``sum_p w_p [p puts i and j together] / sum_p w_p [p labels i and j]``, 0
    when no partition labels both. ``rows`` computes a horizontal slab only, to bound memory.
    """
    labels = check_partitions(partitions)
    weights = check_weights(weights, labels.shape[0])
    return _co_association_rows(labels, weights, rows or slice(0, labels.shape[1]))


def _co_association_rows(labels: np.ndarray, weights: np.ndarray, rows: slice) -> np.ndarray:
    n_samples = labels.shape[1]
    block = labels[:, rows]
    together = np.zeros((block.shape[1], n_samples), dtype=np.float32)
    shared = np.zeros_like(together)
    has_missing = bool(np.any(labels < 0))
    for partition, row_labels, weight in zip(labels, block, weights, strict=True):
        if weight == 0:
            continue
        same = row_labels[:, None] == partition[None, :]
        if has_missing:
            both = (row_labels >= 0)[:, None] & (partition >= 0)[None, :]
            same &= both
            shared += np.float32(weight) * both
        together += np.float32(weight) * same
    if has_missing:
        np.divide(together, shared, out=together, where=shared > 0)
    else:
        together /= np.float32(weights.sum())
    return together


def _condensed_distances(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``1 - co-association`` in SciPy's condensed (upper-triangle) order, float64."""
    n = labels.shape[1]
    condensed = np.empty(n * (n - 1) // 2, dtype=np.float64)
    block_rows = max(1, _ROW_BLOCK_BYTES // (8 * max(n, 1)))
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        slab = _co_association_rows(labels, weights, slice(start, stop))
        for offset, i in enumerate(range(start, stop)):
            # Row i of the upper triangle starts at this index of the condensed vector.
            first = i * n - i * (i + 1) // 2
            condensed[first : first + n - i - 1] = 1.0 - slab[offset, i + 1 :]
    np.clip(condensed, 0.0, 1.0, out=condensed)
    return condensed


def _cut_tree(merges: np.ndarray, n_samples: int, n_clusters: int) -> np.ndarray:
    """Labels after the first ``n_samples - n_clusters`` merges: exactly n_clusters clusters.

    SciPy's ``fcluster(criterion="maxclust")`` cuts by height and returns fewer clusters when
    merge heights tie, which co-association distances (multiples of 1/m) nearly always do.
    """
    parent = np.arange(2 * n_samples - 1)
    for step in range(n_samples - n_clusters):
        left, right = int(merges[step, 0]), int(merges[step, 1])
        parent[left] = parent[right] = n_samples + step
    # Follow each leaf up to the last merge it took part in (parents are numbered upwards).
    root = parent.copy()
    for node in range(2 * n_samples - 2, -1, -1):
        root[node] = root[parent[node]] if parent[node] != node else node
    _, labels = np.unique(root[:n_samples], return_inverse=True)
    return labels


class CoAssociationConsensus(ClusterMixin, BaseEstimator):
    """Consensus of several partitions by agglomerative clustering of their co-association.

    Parameters
    ----------
    n_clusters : number of consensus clusters.
    linkage : ``"average"`` (MVEC's choice), ``"complete"``, ``"single"`` or ``"weighted"``.
    max_memory_bytes : refuse inputs whose peak (:func:`coassociation_memory_bytes`) exceeds
        this; None allows half the memory available when ``fit`` starts.

    Attributes
    ----------
    labels_ : consensus label per sample, ``-1`` for samples no partition labels.
    n_partitions_ : number of partitions combined.
    """

    def __init__(
        self, n_clusters: int = 8, linkage: str = "average", max_memory_bytes: int | None = None
    ) -> None:
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.max_memory_bytes = max_memory_bytes

    def fit(self, partitions, y=None, weights=None) -> CoAssociationConsensus:
        """Combine ``partitions`` (label arrays of equal length, -1 = missing); returns self."""
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage={self.linkage!r} is not one of {', '.join(LINKAGES)}")
        labels = check_partitions(partitions)
        weights = check_weights(weights, labels.shape[0])
        covered = covered_samples(labels, weights)
        n_covered = int(covered.sum())
        check_n_clusters(self.n_clusters, n_covered)
        self._check_memory(n_covered)

        consensus = np.full(labels.shape[1], -1, dtype=np.int64)
        if n_covered == 1:
            consensus[covered] = 0
        else:
            distances = _condensed_distances(labels[:, covered], weights)
            merges = scipy_linkage(distances, method=self.linkage)
            del distances
            consensus[covered] = _cut_tree(merges, n_covered, self.n_clusters)
        self.labels_ = consensus
        self.n_partitions_ = labels.shape[0]
        return self

    def fit_predict(self, partitions, y=None, weights=None) -> np.ndarray:
        return self.fit(partitions, weights=weights).labels_

    def _check_memory(self, n_samples: int) -> None:
        needed = coassociation_memory_bytes(n_samples)
        if self.max_memory_bytes is not None:
            cap, source = int(self.max_memory_bytes), "max_memory_bytes"
        else:
            cap, source = available_memory_bytes() // 2, "half the available memory"
        if needed > cap:
            raise ConsensusTooLargeError(
                f"co-association consensus of n_samples={n_samples} needs about "
                f"{needed / 1e9:.1f} GB (8*n*n bytes + workspace) but the cap is {cap / 1e9:.1f} GB "
                f"({source}); use BipartiteConsensus (create_consensus('bipartite')), which "
                "is linear in n_samples, or raise max_memory_bytes"
            )
