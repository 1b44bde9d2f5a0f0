"""Choosing the number of clusters, and the one record every selector leaves behind.

Every estimator that accepts ``n_clusters="auto"`` stores a :class:`KSelection` as its fitted
``k_selection_``: which criterion was used, the candidate ks, the score of each, and the k it
chose. Spectral clustering uses the eigengap (:func:`eigengap_selection`); K-means uses
silhouette or stability scores and builds the same record with :func:`select_best`. Plain data,
so the pipeline can log it, plot it, and write it to the run folder with :meth:`KSelection.to_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._validation import check_k_range

# Added to the denominator of relative eigengaps (see eigengap_scores).
RELATIVE_GAP_FLOOR = 0.05


@dataclass(frozen=True)
class KSelection:
    """The curve a number of clusters was chosen from.

    Attributes
    ----------
    method : str
        Criterion name, e.g. ``"eigengap"``, ``"silhouette"``, ``"stability"``.
    ks : list of int
        Candidate numbers of clusters, ascending.
    scores : list of float
        Score of each candidate (same order as ``ks``); higher is better.
    chosen : int
        The selected k (a member of ``ks``).
    details : dict
        Criterion-specific extras (e.g. the eigenvalues the eigengaps came from).
    """

    method: str
    ks: list[int]
    scores: list[float]
    chosen: int
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.ks) != len(self.scores):
            raise ValueError(f"len(ks)={len(self.ks)} should equal len(scores)={len(self.scores)}")
        if self.chosen not in self.ks:
            raise ValueError(f"chosen={self.chosen} should be one of ks={self.ks}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (what MLflow and the run folder receive)."""
        return asdict(self)


def select_best(
    method: str,
    ks: Sequence[int],
    scores: Sequence[float],
    *,
    details: dict[str, Any] | None = None,
) -> KSelection:
    """The k with the highest score; ties go to the smaller k (the simpler model)."""
    ks = [int(k) for k in ks]
    scores = [float(s) for s in scores]
    if not ks:
        raise ValueError("ks is empty; give at least one candidate number of clusters")
    if len(ks) != len(scores):
        raise ValueError(f"len(ks)={len(ks)} should equal len(scores)={len(scores)}")
    values = np.asarray(scores, dtype=np.float64)
    if np.isnan(values).all():
        raise ValueError(f"every {method} score is NaN; cannot choose among ks={ks}")
    best = int(np.nanargmax(values))  # first maximum: the smallest k among ties
    return KSelection(method=method, ks=ks, scores=scores, chosen=ks[best], details=details or {})


def eigengap_scores(
    eigenvalues: np.ndarray, ks: Sequence[int], *, relative: bool = False
) -> np.ndarray:
    """Gap ``lambda_{k+1} - lambda_k`` (1-based) of ascending Laplacian eigenvalues, per k.

    A graph with k well separated groups has k eigenvalues near 0 and a jump after them,
    so the largest gap points at k. With ``relative``, the gap is divided by
    ``lambda_{k+1} + 0.05``: data on low-dimensional manifolds has a dense, steadily growing
    spectrum whose absolute steps beyond the true k can exceed the jump at k, while a gap
    measured against the size of the eigenvalues still singles it out. The 0.05 (eigenvalues of
    a normalised Laplacian lie in [0, 2]) makes gaps that leave the near-zero band count most,
    without letting numerical zeros (eigensolvers leave ~1e-7) or one weak bridge
    (lambda_k = 0.04) look like jumps. Needs ``max(ks) + 1`` eigenvalues.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    needed = max(ks) + 1
    if eigenvalues.ndim != 1 or eigenvalues.size < needed:
        raise ValueError(
            f"eigengap for k up to {max(ks)} needs {needed} eigenvalues, got {eigenvalues.size}"
        )
    if np.any(np.diff(eigenvalues) < -1e-8):
        raise ValueError("eigenvalues should be sorted in ascending order")
    ks_array = np.asarray(ks, dtype=np.int64)
    after, before = eigenvalues[ks_array], eigenvalues[ks_array - 1]
    gaps = after - before
    if not relative:
        return gaps
    return gaps / (np.maximum(after, 0.0) + RELATIVE_GAP_FLOOR)


def eigengap_selection(
    eigenvalues: np.ndarray,
    ks: Sequence[int] | None = None,
    *,
    n_samples: int | None = None,
    relative: bool = False,
) -> KSelection:
    """Pick k by the largest (optionally relative) eigengap of ascending normalised-Laplacian
    eigenvalues.

    ``ks=None`` tries 2 .. ``len(eigenvalues) - 1``. ``n_samples`` (when given) bounds the
    candidates the same way as every other selector (``2 <= k <= n_samples - 1``).
    """
    eigenvalues = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if ks is None:
        ks = range(2, eigenvalues.size)
    if n_samples is not None:
        ks = check_k_range(ks, n_samples, max_k=eigenvalues.size - 1)
    ks = sorted(int(k) for k in ks)
    if not ks:
        raise ValueError(
            f"no candidate k: {eigenvalues.size} eigenvalues allow k from 2 to "
            f"{eigenvalues.size - 1}"
        )
    scores = eigengap_scores(eigenvalues, ks, relative=relative)
    return select_best(
        "eigengap",
        ks,
        scores.tolist(),
        details={
            "gap": "relative" if relative else "absolute",
            "eigenvalues": eigenvalues[: max(ks) + 1].tolist(),
        },
    )


def graph_modularity(graph: Any, labels: np.ndarray) -> float:
    """Newman's modularity of a partition on a symmetric weighted graph (scipy sparse or dense).

    ``Q = sum_c [ w_in(c) / w - (deg(c) / w)^2 ]`` with ``w`` the total edge weight counted
    both ways: the share of edge weight inside clusters minus what a random graph with the
    same degrees would put there. Unlike the raw share of kNN edges kept inside clusters, it
    is not raised by merging everything into a few giant clusters, so it compares partitions
    with different algorithms, cluster sizes and numbers of clusters on the same graph.
    """
    import scipy.sparse as sp

    labels = np.asarray(labels)
    graph = sp.csr_matrix(graph, dtype=np.float64)
    if graph.shape != (labels.size, labels.size):
        raise ValueError(
            f"graph has shape {graph.shape}; it should be ({labels.size}, {labels.size})"
        )
    total = graph.sum()
    if total <= 0:
        return float("nan")
    _, codes = np.unique(labels, return_inverse=True)
    members = sp.csr_matrix(
        (np.ones(labels.size), (np.arange(labels.size), codes)),
        shape=(labels.size, codes.max() + 1),
    )
    inside = members.T @ graph @ members  # cluster x cluster edge weight
    degrees = np.asarray(graph.sum(axis=1)).ravel() @ members.toarray()
    return float(inside.diagonal().sum() / total - np.sum((degrees / total) ** 2))


def parsimonious_selection(
    method: str,
    ks: Sequence[int],
    scores: Sequence[float],
    *,
    tolerance: float,
    details: dict[str, Any] | None = None,
) -> KSelection:
    """The smallest k whose score is within ``tolerance`` of the best (a parsimony rule).

    Curves of cluster quality over k are often flat near their maximum (a class split in two
    costs little); the best score alone then drifts to a larger k from noise. Taking the
    smallest k that is as good within ``tolerance`` prefers the simpler model, as the
    one-standard-error rule does for cross-validation.
    """
    best = select_best(method, ks, scores)
    values = np.asarray(best.scores, dtype=np.float64)
    good = np.flatnonzero(values >= np.nanmax(values) - tolerance)
    chosen = best.ks[int(good[0])]
    extra = {"tolerance": tolerance, "best_k": best.chosen, **(details or {})}
    return KSelection(method=method, ks=best.ks, scores=best.scores, chosen=chosen, details=extra)
