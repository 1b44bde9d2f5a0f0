"""Top-down (two-level) K-means for a large k, on local arrays or on rows sharded over Ray.

A Lloyd pass with k = 100,000 centroids compares every row with every centroid: 2M x 64
rows cost 2.6e13 flops a pass, and the per-cluster sums alone are 51 MB per shard. The
two-level scheme of FAISS (``faiss.contrib.clustering.two_level_clustering``, its way to
train IVF indexes with very many lists) makes it tractable:

1. K-means with ``k1 = sqrt(k)`` coarse clusters over all rows (:class:`KMeans`).
2. Each coarse cluster gets its share of the k fine clusters in proportion to its size (at
   least one, at most its rows; FAISS's "rebalance"), so the fine clusters are about equally
   full, as large-scale data curation wants (Vo et al. 2024 balance clusters of web-scale
   image sets bottom-up with :class:`HierarchicalKMeans`; top-down reaches a given large k
   directly).
3. Each coarse cluster's fine centres are seeded by k-means++ on a sample of its rows
   (``sample_per_cluster`` rows per fine cluster), then all groups run full-data Lloyd
   passes together, every row compared only with its own group's centres:
   about ``k1 + k / k1 = 2 sqrt(k)`` distances per row instead of k (632 instead of 100,000).
   Unlike FAISS, which fits each group on its subsample only, the passes see every row.

On :class:`~rayclust.cluster.distributed.ShardedData` step 1 is the sharded KMeans and every
pass of step 3 runs on the shard actors (:mod:`rayclust.cluster._grouped`, the same code as a
local fit): the driver holds the coarse and fine centres, per-cluster sums and counts, and
the seeding sample (``sample_per_cluster * k`` rows); each row's label comes from its shard
at the end. The seeding sample is drawn by a hash of the global row index, so a sharded fit
sees the local fit's sample and ends at the local result up to float summation order.

The price of the hierarchy: a row whose nearest fine centre lies in another coarse cluster
is assigned within its own (measured in benchmarks/RESULTS.md against a flat K-means).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import KW_ONLY
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backend import FeatureData, HostData, parallel_map
from ._grouped import GroupedPart
from ._lloyd import kmeans_plusplus, lloyd
from ._params import Int, Real, check_params, estimator_parameters
from ._validation import check_features, check_n_clusters, check_n_features, to_numpy
from .kmeans import KMeans

logger = logging.getLogger("rayclust")

_PARAMETER_RULES = {
    "n_coarse": (Int(1), None),
    "max_iter": Int(1),
    "inertia_tol": Real(0, 1),
    "sample_per_cluster": Int(2),
    "sample_iter": Int(0),
}
# Candidate rows per group and part for re-seeding empty fine clusters.
_FAR_CANDIDATES = 4
# Greedy k-means++ candidates per centre in the seeding. With k = 10,000 on 200k x 64 (a
# mixture of 2,000 Gaussians) 2 instead of 2 + ln(k_g) = 7 halved the seeding (5.8 -> 2.8 s)
# at the same final inertia (1.1669e7 / 1.1667e7); the seeding was 64% of the fit at 1M rows.
_SEEDING_TRIALS = 2


def allocate_clusters(sizes: np.ndarray, n_clusters: int) -> np.ndarray:
    """Split ``n_clusters`` among groups in proportion to ``sizes`` (largest remainders),
    each non-empty group at least 1 and at most its size; sums to ``n_clusters``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if n_clusters > sizes.sum() or n_clusters < np.count_nonzero(sizes):
        raise ValueError(
            f"n_clusters={n_clusters} cannot be split among {np.count_nonzero(sizes)} groups of "
            f"{int(sizes.sum())} rows"
        )
    share = n_clusters * sizes / sizes.sum()
    allocation = np.minimum(np.maximum(np.floor(share), sizes > 0), sizes).astype(np.int64)
    while (missing := n_clusters - int(allocation.sum())) != 0:
        gap = share - allocation
        if missing > 0:
            room = np.flatnonzero(allocation < sizes)
            chosen = room[np.argsort(-gap[room], kind="stable")][:missing]
            allocation[chosen] += 1
        else:
            room = np.flatnonzero(allocation > 1)
            chosen = room[np.argsort(gap[room], kind="stable")][:-missing]
            allocation[chosen] -= 1
    return allocation


class _Parts:
    """The grouped passes over a local array (one part) or over the shards of a
    :class:`~rayclust.cluster.distributed.ShardedData` (one part per shard)."""

    def __init__(self, X: Any) -> None:
        self.local = None if hasattr(X, "grouped") else GroupedPart(X)
        self.X = X

    def __call__(self, name: str, *args: Any) -> list[Any]:
        if self.local is not None:
            return [self.local.call(name, *args)]
        return self.X.grouped(name, *args)


# clustering.kmeans_levels=auto fits two levels from this k on. benchmarks/RESULTS.md
# (TopDownKMeans): at k = 2,000 top-down ends 0.57% above a flat K-means' inertia while a
# row meets 2 sqrt(k) = 89 centres instead of 2,000; at k = 300 it is 6.1% above, at k = 60
# 4-177% (a blob cut by a coarse boundary is never repaired): below a few thousand the flat
# fit is affordable and better.
TWO_LEVELS_FROM = 2_000


def default_coarse(n_clusters: int) -> int:
    """Coarse clusters when ``n_coarse`` is None: sqrt(k), which balances the two levels."""
    return max(1, round(math.sqrt(n_clusters)))


def kmeans_levels(setting: str | int, n_clusters: int | str) -> int:
    """1 (flat K-means) or 2 (:class:`TopDownKMeans`) for ``clustering.kmeans_levels``."""
    if setting != "auto":
        return int(setting)
    return 2 if isinstance(n_clusters, int) and n_clusters >= TWO_LEVELS_FROM else 1


@estimator_parameters
class TopDownKMeans(ClusterMixin, BaseEstimator):
    """Two-level (top-down) K-means for k up to 100,000 and more; see the module docstring.

    Parameters
    ----------
    n_clusters : int, default=1000
        Fine clusters in all.
    n_coarse : int or None, default=None
        Coarse clusters (level 1); None: ``round(sqrt(n_clusters))``. Must be <= n_clusters.
    max_iter : int, default=20
        Full-data Lloyd passes of the fine level at most.
    inertia_tol : float, default=1e-3
        Stop the fine passes when one lowers the inertia by less than this fraction.
    sample_per_cluster : int, default=4
        Rows per fine cluster in the sample the fine centres are seeded on.
    sample_iter : int, default=0
        Lloyd iterations of each group on its seeding sample before the full-data passes.
        Worth it only where the sample is far smaller than the data: with 20 rows per
        cluster (k = 10,000 on 200k rows) 10 of them cost as much as the passes they saved.
    backend : {"auto", "faiss", "torch"}, default="auto"
        Backend of the coarse :class:`KMeans`.
    random_state : int, RandomState or None, default=None

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features) float32
        Fine centres, grouped by coarse cluster (``fine_offsets_``).
    labels_ : ndarray (n_samples,) int64
    inertia_ : float
    coarse_centers_ : ndarray (n_coarse, n_features)
    coarse_inertia_ : float
        Inertia of the coarse level alone (a flat K-means with ``n_coarse`` clusters).
    fine_per_coarse_ : ndarray (n_coarse,)
        Fine clusters under each coarse cluster.
    fine_offsets_ : ndarray (n_coarse + 1,)
        Fine clusters of coarse cluster c: ``fine_offsets_[c]:fine_offsets_[c + 1]``.
    n_iter_ : int
        Full-data passes of the fine level.
    timings_ : dict
        Wall seconds of the coarse K-means, the seeding and the fine passes (with labels).
    n_features_in_ : int
    """

    n_clusters: int = 1000
    _: KW_ONLY
    n_coarse: int | None = None
    max_iter: int = 20
    inertia_tol: float = 1e-3
    sample_per_cluster: int = 4
    sample_iter: int = 0
    backend: str = "auto"
    random_state: Any = None

    def _check(self, n_samples: int) -> tuple[int, int]:
        check_params(self, _PARAMETER_RULES)
        k = check_n_clusters(self.n_clusters, n_samples)
        k1 = self.n_coarse if self.n_coarse is not None else default_coarse(k)
        if k1 > k:
            raise ValueError(f"n_coarse={k1} should be <= n_clusters={k}")
        return k, int(k1)

    def fit(self, X: Any, y: Any = None) -> TopDownKMeans:
        """Fit on ``X``: an (n_samples, n_features) array or a ShardedData."""
        if not isinstance(X, FeatureData):
            X = to_numpy(check_features(X))
        n_samples = X.count() if isinstance(X, FeatureData) else X.shape[0]
        n_features = X.dim() if isinstance(X, FeatureData) else X.shape[1]
        k, k1 = self._check(n_samples)
        rng = check_random_state(self.random_state)
        started = time.perf_counter()

        coarse_model = KMeans(
            k1, backend=self.backend, random_state=rng.randint(np.iinfo(np.int32).max)
        ).fit(X)
        coarse = coarse_model.cluster_centers_
        parts = _Parts(X)
        sizes = np.sum(parts("coarse_counts", coarse), axis=0)
        allocation = allocate_clusters(sizes, k)
        offsets = np.concatenate([[0], np.cumsum(allocation)]).astype(np.int64)
        coarse_seconds = time.perf_counter() - started

        fine = self._seed(parts, coarse, sizes, allocation, offsets, n_features, rng)
        seeded_seconds = time.perf_counter() - started

        previous = np.inf
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            results = parts("grouped_pass", coarse, fine, offsets, _FAR_CANDIDATES)
            inertia = sum(r["inertia"] for r in results)
            if previous - inertia < self.inertia_tol * inertia:
                break  # these centres' pass gained almost nothing: keep them
            previous = inertia
            fine = self._update(fine, results, offsets)
        assigned = parts("grouped_labels", coarse, fine, offsets)
        labels = np.concatenate([p[0] for p in assigned])
        inertia = float(sum(p[1].sum(dtype=np.float64) for p in assigned))
        parts("release")
        self.coarse_centers_ = coarse
        self.coarse_inertia_ = coarse_model.inertia_
        self.cluster_centers_ = fine.astype(np.float32)
        self.fine_per_coarse_ = allocation
        self.fine_offsets_ = offsets
        self.labels_ = labels
        self.n_iter_ = n_iter
        self.n_features_in_ = n_features
        self.inertia_ = inertia
        self.timings_ = {
            "coarse": coarse_seconds,
            "seeding": seeded_seconds - coarse_seconds,
            "passes": time.perf_counter() - started - seeded_seconds,
        }
        logger.debug(
            "TopDownKMeans: k=%d (%d coarse) on %d x %d: coarse %.1f s, seeding %.1f s, "
            "%d passes, %.1f s in all, inertia %.6g",
            k, k1, n_samples, n_features, coarse_seconds, seeded_seconds - coarse_seconds,
            n_iter, time.perf_counter() - started, self.inertia_,
        )  # fmt: skip
        return self

    def _seed(self, parts, coarse, sizes, allocation, offsets, n_features, rng) -> np.ndarray:
        """Fine centres: per group, k-means++ and Lloyd on its share of the seeding sample."""
        rates = np.minimum(1.0, self.sample_per_cluster * allocation / np.maximum(sizes, 1))
        sampled = parts("sample", coarse, rates, int(rng.randint(np.iinfo(np.int32).max)))
        groups = np.concatenate([s[0] for s in sampled])
        global_rows = np.concatenate([s[1] for s in sampled])
        rows = np.concatenate([s[2] for s in sampled])
        order = np.lexsort((global_rows, groups))  # the same order however rows are sharded
        groups, rows = groups[order], rows[order]
        bounds = np.searchsorted(groups, np.arange(len(coarse) + 1))
        seeds = rng.randint(np.iinfo(np.int32).max, size=len(coarse))
        fine = np.empty((int(offsets[-1]), n_features), dtype=np.float32)

        def seed_group(g: int) -> None:
            k_g = int(allocation[g])
            if k_g == 0:
                return
            pool = rows[bounds[g] : bounds[g + 1]]
            if len(pool) <= k_g:  # a sample short of rows: the passes re-seed the duplicates
                fine[offsets[g] : offsets[g + 1]] = np.resize(pool, (k_g, n_features))
                return
            centers, _ = kmeans_plusplus(
                pool, k_g, random_state=int(seeds[g]), n_local_trials=_SEEDING_TRIALS
            )
            if self.sample_iter:
                centers = lloyd(
                    HostData(pool, kernel="blas"),
                    centers,
                    max_iter=self.sample_iter,
                    tol=0.0,
                    inertia_tol=self.inertia_tol,
                )[0]
            fine[offsets[g] : offsets[g + 1]] = centers

        parallel_map(seed_group, list(range(len(coarse))))
        return fine

    @staticmethod
    def _update(fine: np.ndarray, results: list[dict], offsets: np.ndarray) -> np.ndarray:
        """Lloyd's means; an empty fine cluster moves to the row of its group farthest from
        its centre (among every part's candidates) not taken by another."""
        sums = np.sum([r["sums"] for r in results], axis=0)
        counts = np.sum([r["counts"] for r in results], axis=0)
        new = fine.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            far_groups = np.concatenate([r["far_groups"] for r in results])
            far_sq = np.concatenate([r["far_sq"] for r in results])
            far_rows = np.concatenate([r["far_rows"] for r in results])
            group_of = np.searchsorted(offsets, empty, side="right") - 1
            for g in np.unique(group_of):
                candidates = np.flatnonzero(far_groups == g)
                candidates = candidates[
                    np.lexsort((np.arange(candidates.size), -far_sq[candidates]))
                ]
                targets = empty[group_of == g][: candidates.size]
                new[targets] = far_rows[candidates[: targets.size]]
        return new

    def predict(self, X: Any) -> np.ndarray:
        """Fine cluster of each row: nearest fine centre within its nearest coarse cluster."""
        check_is_fitted(self, "cluster_centers_")
        X = to_numpy(check_features(X))
        check_n_features(X, self.n_features_in_, type(self).__name__)
        part = GroupedPart(X)
        return part.grouped_labels(self.coarse_centers_, self.cluster_centers_, self.fine_offsets_)[
            0
        ]

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_
