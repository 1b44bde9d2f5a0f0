"""Hierarchical K-means: K-means of K-means centroids, with resampling and balanced sampling.

The curation recipe of Vo et al. 2024 ("Automatic data curation for self-supervised learning:
a clustering-based approach", used for DINOv2-style data sets): level 1 clusters the data
into ``n_clusters[0]`` clusters, level 2 clusters the level-1 centroids into ``n_clusters[1]``
clusters, and so on. Because higher levels see one point per lower-level cluster, dense
regions of the data no longer dominate: top-level clusters spread evenly over the concepts in
the data. Optional *resampling* steps make each level more even still: draw at most
``resample_size`` points per cluster (the closest to its centroid, or random), re-run K-means
on that balanced pool and reassign every point.

:meth:`HierarchicalKMeans.balanced_sample` then draws a subset that is balanced down the
tree (equal shares per top-level cluster, then per child, ... as far as sizes allow).

Level 1 runs :class:`~rayclust.cluster.KMeans`, so it streams over memory-mapped arrays and uses
the same backends; the higher levels are small.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backend import make_feature_data
from ._params import OneOf, check_params, estimator_parameters
from ._validation import check_features, check_n_features, to_numpy
from .kmeans import KMeans

logger = logging.getLogger("rayclust")

SAMPLING = ("closest", "random")
# Passed on to the KMeans of every level.
_KMEANS_PARAMETERS = (
    "max_iter",
    "tol",
    "n_init",
    "algorithm",
    "sample_size",
    "chunk_rows",
    "backend",
)


@dataclass
class KMeansLevel:
    """One level of the hierarchy: ``labels[i]`` is the cluster of input i of this level
    (a data point at level 1, a level-(t-1) centroid above)."""

    centers: np.ndarray  # (k_t, d) float32
    labels: np.ndarray  # (n_inputs,) int64
    sizes: np.ndarray  # (k_t,) number of *data points* under each cluster


def balanced_allocation(sizes: np.ndarray, target: int) -> np.ndarray:
    """Split ``target`` draws among groups as evenly as their ``sizes`` allow.

    Water-filling: every group gets ``min(size, t)`` with the largest integer t that keeps the
    total <= target, then the remainder goes one by one to the groups that still have room
    (largest first). Returns an int array summing to ``min(target, sizes.sum())``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if target < 0:
        raise ValueError(f"target={target} should be >= 0")
    target = min(int(target), int(sizes.sum()))
    if target == 0:
        return np.zeros_like(sizes)
    # The largest level t with sum(min(sizes, t)) <= target, by bisection on t.
    low, high = 0, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= target:
            low = mid
        else:
            high = mid - 1
    allocation = np.minimum(sizes, low)
    remainder = target - int(allocation.sum())
    if remainder:
        room = np.flatnonzero(sizes > allocation)
        room = room[np.argsort(-sizes[room], kind="stable")][:remainder]
        allocation[room] += 1
    return allocation


@estimator_parameters
class HierarchicalKMeans(ClusterMixin, BaseEstimator):
    """Multi-level K-means (K-means of centroids) for balanced clusters on very large sets.

    Parameters
    ----------
    n_clusters : sequence of int, default=(100, 10)
        Clusters per level, bottom (data) first; must decrease strictly. An int is one level.
    n_resampling_steps : int or sequence of int, default=0
        Resampling steps per level (an int applies to every level above the first; the paper
        skips resampling on the expensive first level).
    resample_size : int or sequence of int, default=10
        Points drawn per cluster in each resampling step.
    sampling : {"closest", "random"}, default="closest"
        Which points of a cluster a resampling step draws.
    max_iter, tol, n_init, algorithm, sample_size, chunk_rows, backend :
        Passed to the :class:`~rayclust.cluster.KMeans` of every level.
    random_state : int, RandomState or None, default=None

    Attributes
    ----------
    levels_ : list of KMeansLevel
        Bottom level first.
    labels_ : ndarray (n_samples,)
        Top-level cluster of every data point.
    cluster_centers_ : ndarray (n_clusters[-1], n_features)
        Top-level centres (K-means centroids of the level below).
    inertia_ : float
        Sum of squared distances of the data points to their top-level centre.
    level1_labels_ : ndarray (n_samples,)
        Bottom-level cluster of every data point.
    n_iter_ : int
        Full-data iterations of the level-1 K-means.
    backend_ : str
    n_features_in_ : int
    """

    n_clusters: Sequence[int] = (100, 10)
    _: KW_ONLY
    n_resampling_steps: int | Sequence[int] = 0
    resample_size: int | Sequence[int] = 10
    sampling: str = "closest"
    max_iter: int = 300
    tol: float = 1e-4
    n_init: int | str = "auto"
    algorithm: str = "lloyd"
    sample_size: int | None = None
    chunk_rows: int = 65_536
    backend: str = "auto"
    random_state: Any = None

    def _per_level(
        self, value: int | Sequence[int], name: str, n_levels: int, first_level: int | None = None
    ) -> list[int]:
        """One value per level; an int repeats (on the first level: ``first_level`` if given)."""
        if isinstance(value, int | np.integer):
            first = int(value) if first_level is None else first_level
            return [first, *([int(value)] * (n_levels - 1))]
        values = [int(v) for v in value]
        if len(values) != n_levels:
            raise ValueError(
                f"{name} has {len(values)} entries; it should have one per level ({n_levels})"
            )
        return values

    def _check_params(self, n_samples: int) -> tuple[list[int], list[int], list[int]]:
        if isinstance(self.n_clusters, int | np.integer):
            ks = [int(self.n_clusters)]  # one level: plain K-means
        else:
            ks = [] if isinstance(self.n_clusters, str) else [int(k) for k in self.n_clusters]
        if not ks:
            raise ValueError(
                f"n_clusters={self.n_clusters!r} should be a sequence of cluster counts, one per "
                "level (bottom first), e.g. (1000, 100)"
            )
        if any(b >= a for a, b in zip(ks, ks[1:], strict=False)):
            raise ValueError(f"n_clusters={tuple(ks)} should decrease strictly from level to level")
        if ks[-1] < 1:
            raise ValueError(f"n_clusters={tuple(ks)}: every level needs >= 1 cluster")
        if n_samples < ks[0]:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={ks[0]} (level 1)")
        check_params(self, {"sampling": OneOf(SAMPLING)})
        steps = self._per_level(self.n_resampling_steps, "n_resampling_steps", len(ks), 0)
        sizes = self._per_level(self.resample_size, "resample_size", len(ks))
        if any(s < 0 for s in steps):
            raise ValueError(f"n_resampling_steps={steps} should all be >= 0")
        if any(s < 1 for s in sizes):
            raise ValueError(f"resample_size={sizes} should all be >= 1")
        return ks, steps, sizes

    def _kmeans(self, k: int, rng) -> KMeans:
        shared = {name: getattr(self, name) for name in _KMEANS_PARAMETERS}
        return KMeans(k, random_state=rng.randint(np.iinfo(np.int32).max), **shared)

    def _resample_pool(
        self, labels: np.ndarray, sq_distances: np.ndarray, k: int, size: int, rng
    ) -> np.ndarray:
        """Row indices of at most ``size`` points per cluster."""
        if self.sampling == "closest":
            order = np.lexsort((sq_distances, labels))  # by cluster, then closest first
        else:
            order = np.lexsort((rng.permutation(labels.size), labels))
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, np.arange(k))
        rank = np.arange(labels.size) - starts[sorted_labels]
        return np.sort(order[rank < size])

    def fit(self, X: Any, y: Any = None) -> HierarchicalKMeans:
        """Build the hierarchy on ``X`` (n_samples, n_features); ``y`` is ignored."""
        X = check_features(X, keep_on_device=True, chunk_rows=self.chunk_rows)
        n_samples, n_features = X.shape
        ks, steps, sizes = self._check_params(n_samples)
        rng = check_random_state(self.random_state)

        levels: list[KMeansLevel] = []
        points_per_input = np.ones(n_samples, dtype=np.int64)  # data points behind each input
        inputs: Any = X
        for depth, (k, n_steps, size) in enumerate(zip(ks, steps, sizes, strict=True)):
            model = self._kmeans(k, rng).fit(inputs)
            if depth == 0:
                self.backend_ = model.backend_
                self.n_iter_ = model.n_iter_
            centers, labels = model.cluster_centers_, model.labels_
            data = make_feature_data(
                inputs, model.backend_ if model.backend_ == "torch" else "faiss"
            )
            if n_steps:
                assignment = data.assign(centers, accumulate=False)
                for _ in range(n_steps):
                    pool = self._resample_pool(
                        assignment.labels, assignment.sq_distances, k, size, rng
                    )
                    if pool.size < k:
                        break  # fewer pooled points than clusters: nothing left to balance
                    centers = self._kmeans(k, rng).fit(data.get_subset(pool)).cluster_centers_
                    assignment = data.assign(centers, accumulate=False)
                labels = assignment.labels
            level_sizes = np.bincount(labels, weights=points_per_input, minlength=k)
            levels.append(KMeansLevel(centers, labels, level_sizes.astype(np.int64)))
            logger.debug(
                "HierarchicalKMeans level %d: %d inputs -> %d clusters (sizes %d..%d)",
                depth + 1,
                len(labels),
                k,
                level_sizes.min(),
                level_sizes.max(),
            )
            points_per_input = level_sizes.astype(np.int64)
            inputs = centers

        labels = levels[0].labels
        for level in levels[1:]:
            labels = level.labels[labels]
        self.levels_ = levels
        self.level1_labels_ = levels[0].labels
        self.labels_ = labels
        self.cluster_centers_ = levels[-1].centers
        self.inertia_ = self._inertia(X, labels)
        self.n_features_in_ = n_features
        return self

    def _inertia(self, X: Any, labels: np.ndarray) -> float:
        total = 0.0
        centers = self.cluster_centers_
        for start in range(0, X.shape[0], self.chunk_rows):
            chunk = np.asarray(to_numpy(X[start : start + self.chunk_rows]), dtype=np.float32)
            diff = chunk - centers[labels[start : start + chunk.shape[0]]]
            total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
        return total

    def predict(self, X: Any) -> np.ndarray:
        """Top-level cluster of each row: its nearest level-1 centre, mapped up the tree."""
        check_is_fitted(self, "levels_")
        X = check_features(X, keep_on_device=True, chunk_rows=self.chunk_rows)
        check_n_features(X, self.n_features_in_, type(self).__name__)
        backend = "torch" if self.backend_ == "torch" else "faiss"
        labels = make_feature_data(X, backend).assign(self.levels_[0].centers, accumulate=False)
        labels = labels.labels
        for level in self.levels_[1:]:
            labels = level.labels[labels]
        return labels

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_

    def balanced_sample(self, n_samples: int, *, random_state: Any = None) -> np.ndarray:
        """Indices of ``n_samples`` data points, balanced down the hierarchy.

        The draw is split evenly among top-level clusters (small ones give all they have),
        each share evenly among that cluster's children, and so on to level 1, where points are
        drawn uniformly. Returns sorted int64 indices (all points if ``n_samples`` exceeds them).
        """
        check_is_fitted(self, "levels_")
        if n_samples < 0:
            raise ValueError(f"n_samples={n_samples} should be >= 0")
        rng = check_random_state(random_state)
        # children[t][c]: indices of level-t inputs (level-(t-1) clusters) in cluster c of level t
        children = [
            np.split(np.argsort(level.labels, kind="stable"), np.cumsum(np.bincount(
                level.labels, minlength=len(level.sizes)))[:-1])
            for level in self.levels_
        ]  # fmt: skip
        chosen: list[np.ndarray] = []

        def draw(depth: int, cluster: int, quota: int) -> None:
            members = children[depth][cluster]
            if depth == 0:  # members are data points
                chosen.append(rng.choice(members, size=quota, replace=False))
                return
            member_sizes = self.levels_[depth - 1].sizes[members]
            for member, share in zip(
                members, balanced_allocation(member_sizes, quota), strict=True
            ):
                if share:
                    draw(depth - 1, int(member), int(share))

        top = len(self.levels_) - 1
        top_sizes = self.levels_[top].sizes
        for cluster, share in enumerate(balanced_allocation(top_sizes, n_samples)):
            if share:
                draw(top, cluster, int(share))
        if not chosen:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(chosen)).astype(np.int64)
