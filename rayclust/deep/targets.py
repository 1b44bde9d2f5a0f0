"""Fixed training targets: PEDCC centroids (ICBPL) and one-hot GMM means with Hungarian
batch assignment (MMDC)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def pedcc(n_classes: int, dim: int) -> np.ndarray:
    """Predefined evenly-distributed class centroids: ``n_classes`` unit vectors in ``dim``
    dimensions with every pairwise cosine equal to ``-1 / (n_classes - 1)`` (a regular simplex).

    Built as in ICBPL Eq. 1: start from the two basic points (+1) and (-1) in one dimension;
    each step lifts the j + 1 existing points into one more dimension, scaled by
    ``sqrt(j(j+2))/(j+1)`` and shifted by ``-1/(j+1)`` along the new axis, and adds the new
    basic point (0, ..., 0, 1). The simplex spans ``n_classes - 1`` dimensions; the rest are 0.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes={n_classes} should be >= 2")
    if dim < n_classes - 1:
        raise ValueError(
            f"dim={dim} should be >= n_classes - 1 = {n_classes - 1}: "
            f"{n_classes} evenly spread centroids need {n_classes - 1} dimensions"
        )
    points = np.array([[1.0], [-1.0]])
    for j in range(1, n_classes - 1):
        scale = np.sqrt(j * (j + 2)) / (j + 1)
        lifted = np.hstack([points * scale, np.full((points.shape[0], 1), -1.0 / (j + 1))])
        new_point = np.zeros((1, j + 1))
        new_point[0, -1] = 1.0
        points = np.vstack([lifted, new_point])
    centroids = np.zeros((n_classes, dim))
    centroids[:, : points.shape[1]] = points
    return centroids.astype(np.float32)


def one_hot_targets(n_clusters: int) -> np.ndarray:
    """MMDC's target means: the K one-hot vectors of R^K (GMM components with zero variance)."""
    if n_clusters < 2:
        raise ValueError(f"n_clusters={n_clusters} should be >= 2")
    return np.eye(n_clusters, dtype=np.float32)


def hungarian_assign(embeddings: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Permutation ``perm`` minimising ``sum_i ||embeddings[i] - targets[perm[i]]||``.

    MMDC re-solves this on every batch over the targets the batch currently holds, so the
    number of samples per target never changes (no cluster can collapse).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if embeddings.shape != targets.shape:
        raise ValueError(
            f"embeddings.shape={embeddings.shape} should equal targets.shape={targets.shape}: "
            "one target per embedding"
        )
    sq = (embeddings**2).sum(1)[:, None] + (targets**2).sum(1)[None, :] - 2 * embeddings @ targets.T
    cost = np.sqrt(np.clip(sq, 0.0, None))
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return perm


def match_clusters_to_targets(centroids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Map each K-means cluster to a distinct target, maximising total centroid-target cosine.

    Used by MMDC's refinement stage so that a K-means relabelling keeps each cluster on the
    target it was already closest to instead of an arbitrary one.
    """
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    t = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    rows, cols = linear_sum_assignment(-(c @ t.T))
    mapping = np.empty(len(rows), dtype=np.int64)
    mapping[rows] = cols
    return mapping
