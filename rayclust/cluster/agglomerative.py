"""Agglomerative clustering on a kNN connectivity graph, fast enough for 10^5 - 10^6 points.

scikit-learn's ``AgglomerativeClustering(connectivity=...)`` is the reference: ward or average
linkage, merges allowed only along graph edges, the same merge heights (ward:
``sqrt(2 n_a n_b / (n_a + n_b)) * ||c_a - c_b||``; average: size-weighted means of the edge
distances). What differs is how the merges are found. scikit-learn pops one merge at a time
from a heap in a Python loop; here every round merges *all* reciprocal nearest-neighbour pairs
at once (two clusters that are each other's cheapest edge), with numpy over the whole edge list.
For reducible linkages, merging reciprocal nearest neighbours gives the same dendrogram as the
one-at-a-time greedy order (Murtagh's RNN argument); a connectivity constraint can create height
inversions, where the two orders may differ. Heights are made monotone up the tree (a parent is
never below its children) and the tree is cut at the ``n_clusters`` - 1 highest merges, so
labels are always consistent with the tree.

Measured agreement (tests): ward gives scikit-learn's labels and merge heights exactly on a
connected graph. Graph-average linkage is order-dependent in scikit-learn itself (an edge that
exists on one side of a merge keeps its distance unaveraged), so rounds and the global heap
order can reach different heights; labels agree closely on separated data (ARI >= 0.98), less
where average linkage chains. Chaining itself is the linkage's, not this implementation's: on
overlapping blobs both leave one giant cluster (see the class docstring); use ward there. On a complete graph both are plain UPGMA (equal to scipy).

A graph with several connected components is merged inside each component first; components
are merged with each other (exact ward from centroids, average distance estimated on a sample
of each component) only when fewer clusters than components are asked for, or a
``distance_threshold`` needs the full tree. (scikit-learn instead adds the closest pair of
points between every two components to the graph, an O(n^2) pass, and may merge across
components earlier.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from ._backend import resolve_backend
from ._params import Int, OneOf, Real, check_params, estimator_parameters
from ._validation import check_features, to_numpy
from .neighbors import knn_edges

logger = logging.getLogger("rayclust")

LINKAGES = ("ward", "average")
SUPPORTED_BACKENDS = ("faiss", "torch", "sklearn")
_PARAMETER_RULES = {
    "linkage": OneOf(LINKAGES),
    "n_neighbors": Int(1),
    "distance_threshold": (Real(0), None),
}

# Seconds between progress lines of a long merge.
_PROGRESS_SECONDS = 10.0

# Points sampled per component to estimate average-linkage distances between components.
_COMPONENT_SAMPLE = 128


class _RoundMerger:
    """Merges reciprocal-nearest-neighbour pairs of clusters, round after round.

    Live clusters occupy slots 0..m-1, renumbered after every round so that each round costs
    O(live clusters + live edges), however long the tail of a chaining linkage is. Each slot
    knows the tree node it holds, numbered as scikit-learn numbers them (leaves 0..n-1, merge
    j creates node n + j), and one of its points (``representative``).
    """

    def __init__(self, X: np.ndarray, linkage: str) -> None:
        n = X.shape[0]
        self.linkage = linkage
        self.n_leaves = n
        self.sizes = np.ones(n, dtype=np.float64)
        # Ward needs centroids; float64 keeps them exact through many merges.
        self.centroids = np.array(X, dtype=np.float64) if linkage == "ward" else None
        self.node_of_slot = np.arange(n, dtype=np.int64)
        self.representative = np.arange(n, dtype=np.int64)
        # At most n - 1 merges: node n + j is made by merge j.
        self.children = np.zeros((max(n - 1, 0), 2), dtype=np.int64)
        self.heights = np.zeros(max(n - 1, 0))
        self.monotone = np.zeros(max(n - 1, 0))
        self.n_merges = 0
        self.n_rounds = 0

    @property
    def n_live(self) -> int:
        return int(self.sizes.size)

    def ward_heights(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``sqrt(2 n_u n_v / (n_u + n_v)) * ||c_u - c_v||`` per edge (scikit-learn's scale)."""
        nu, nv = self.sizes[u], self.sizes[v]
        return np.sqrt(2.0 * nu * nv / (nu + nv)) * _row_distances(self.centroids, u, v)

    def run(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        """Merge along the edges (u < v, unique, weight w) until no edge is left."""
        last_report = time.monotonic()
        while u.size:
            if time.monotonic() - last_report > _PROGRESS_SECONDS:
                last_report = time.monotonic()
                logger.debug(
                    "agglomerative: %d of at most %d merges, %d rounds, %d edges left",
                    self.n_merges,
                    self.n_leaves - 1,
                    self.n_rounds,
                    u.size,
                )
            m = self.n_live
            # Each slot's cheapest edge; ties go to the smaller neighbour, which orders edges
            # totally, so the globally cheapest edge is always reciprocal: every round merges.
            best_w = np.full(m, np.inf)
            np.minimum.at(best_w, u, w)
            np.minimum.at(best_w, v, w)
            best_nb = np.full(m, m, dtype=np.int64)
            at_u = w == best_w[u]
            at_v = w == best_w[v]
            np.minimum.at(best_nb, u[at_u], v[at_u])
            np.minimum.at(best_nb, v[at_v], u[at_v])
            mutual = (best_nb[u] == v) & (best_nb[v] == u)
            order = np.argsort(w[mutual], kind="stable")
            a, b, height = u[mutual][order], v[mutual][order], w[mutual][order]
            self._record(a, b, height)
            u, v, w = self._contract(u, v, w, a, b)
            self.n_rounds += 1

    def _height_of(self, nodes: np.ndarray) -> np.ndarray:
        internal = nodes >= self.n_leaves
        return np.where(internal, self.monotone[np.where(internal, nodes - self.n_leaves, 0)], 0.0)

    def _record(self, a: np.ndarray, b: np.ndarray, height: np.ndarray) -> None:
        left, right = self.node_of_slot[a], self.node_of_slot[b]
        merges = slice(self.n_merges, self.n_merges + a.size)
        self.children[merges, 0] = left
        self.children[merges, 1] = right
        self.heights[merges] = height
        # A parent is never drawn below its children (inversions only move it up).
        self.monotone[merges] = np.maximum(
            height, np.maximum(self._height_of(left), self._height_of(right))
        )
        self.node_of_slot[a] = self.n_leaves + np.arange(merges.start, merges.stop)
        self.n_merges += a.size

    def _contract(
        self, u: np.ndarray, v: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold slot b into slot a for every merged pair (a, b sorted by height), rebuild the
        touched edges, and renumber the live slots."""
        m = self.n_live
        remap = np.arange(m, dtype=np.int64)
        remap[b] = a
        alive = np.ones(m, dtype=bool)
        alive[b] = False
        compact = np.cumsum(alive) - 1  # old slot -> new slot, for live slots
        touched = np.zeros(m, dtype=bool)
        touched[a] = True
        touched[b] = True
        changed = touched[u] | touched[v]
        cu, cv, cw = u[changed], v[changed], w[changed]
        keep = ~changed
        kept_u, kept_v, kept_w = compact[u[keep]], compact[v[keep]], w[keep]

        old_sizes = self.sizes
        sizes = old_sizes.copy()
        sizes[a] += old_sizes[b]
        if self.linkage == "ward":
            share = (old_sizes[b] / sizes[a])[:, None]
            self.centroids[a] += share * (self.centroids[b] - self.centroids[a])
            self.centroids = self.centroids[alive]
        self.sizes = sizes[alive]
        self.node_of_slot = self.node_of_slot[alive]
        self.representative = self.representative[alive]

        if self.linkage == "ward":
            new_u, new_v = _unique_pairs(compact[remap[cu]], compact[remap[cv]], self.n_live)
            new_w = self.ward_heights(new_u, new_v)
        else:
            rank = np.full(m, m, dtype=np.int64)
            rank[a] = rank[b] = np.arange(a.size)
            new_u, new_v, new_w = _average_merge(cu, cv, cw, remap, rank, old_sizes, m)
            new_u, new_v = compact[new_u], compact[new_v]
        return (
            np.concatenate([kept_u, new_u]),
            np.concatenate([kept_v, new_v]),
            np.concatenate([kept_w, new_w]),
        )

    def tree(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(children (j, 2), heights (j,), monotone heights (j,)) in creation order."""
        j = self.n_merges
        return self.children[:j], self.heights[:j], self.monotone[:j]


def _row_distances(points: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Euclidean distance between rows u[i] and v[i], in float64, in cache-sized blocks."""
    out = np.empty(u.size)
    step = 16_384
    for start in range(0, u.size, step):
        stop = start + step
        diff = points[u[start:stop]].astype(np.float64, copy=False) - points[v[start:stop]]
        out[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _average_merge(
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    remap: np.ndarray,
    rank: np.ndarray,
    sizes: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average-linkage distances of the edges touched by one round, as scikit-learn's
    ``average_merge`` would give them merging the round's pairs one after another.

    Merging P = p1 + p2 turns the edges p1-y, p2-y into one P-y edge: the size-weighted mean
    of the distances present (a single edge keeps its distance). When both ends of an edge
    merged in this round, the earlier merge (lower height, smaller ``rank``) is folded first.
    """
    u_first = rank[u] <= rank[v]
    first = np.where(u_first, u, v)
    second = np.where(u_first, v, u)
    keys, inverse = np.unique(remap[first] * n + second, return_inverse=True)
    weights = sizes[first]
    distance = np.bincount(inverse, weights * w, keys.size) / np.bincount(
        inverse, weights, keys.size
    )
    folded, second = keys // n, keys % n

    other = remap[second]
    not_loop = folded != other
    folded, second, other, distance = (
        folded[not_loop],
        second[not_loop],
        other[not_loop],
        distance[not_loop],
    )
    lo, hi = np.minimum(folded, other), np.maximum(folded, other)
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    weights = sizes[second]
    distance = np.bincount(inverse, weights * distance, keys.size) / np.bincount(
        inverse, weights, keys.size
    )
    return keys // n, keys % n, distance


def _knn_edges(
    X: np.ndarray, n_neighbors: int, knn_method: str, backend: str, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected kNN edges (u < v)."""
    rows, cols = knn_edges(
        X, n_neighbors, method=knn_method, backend=backend, random_state=random_state
    )
    return _unique_pairs(rows, cols, X.shape[0])


def _unique_pairs(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    not_loop = rows != cols
    lo = np.minimum(rows[not_loop], cols[not_loop])
    hi = np.maximum(rows[not_loop], cols[not_loop])
    keys = np.unique(lo * n + hi)
    return keys // n, keys % n


def _edges_from_connectivity(connectivity: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    matrix = sp.coo_matrix(connectivity)
    if matrix.shape != (n, n):
        raise ValueError(
            f"connectivity has shape {matrix.shape}; it should be (n_samples, n_samples) = "
            f"({n}, {n})"
        )
    nonzero = matrix.data != 0
    return _unique_pairs(
        matrix.row[nonzero].astype(np.int64), matrix.col[nonzero].astype(np.int64), n
    )


def _component_average_distances(
    X: np.ndarray, owner: np.ndarray, n_groups: int, rng: np.random.RandomState
) -> np.ndarray:
    """(n_groups, n_groups) mean Euclidean distance between groups of points (``owner`` gives
    each point's group), estimated from a random sample of each group."""
    per_group = max(8, min(_COMPONENT_SAMPLE, 40_000 // max(n_groups, 1)))
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_groups + 1))
    samples = []
    for g in range(n_groups):
        members = order[bounds[g] : bounds[g + 1]]
        if members.size > per_group:
            members = rng.choice(members, per_group, replace=False)
        samples.append(members)
    counts = np.array([members.size for members in samples], dtype=np.float64)
    points = X[np.concatenate(samples)].astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
    sample_owner = np.repeat(np.arange(n_groups), counts.astype(np.int64))
    sq = np.einsum("ij,ij->i", points, points)
    sums = np.zeros((n_groups, n_groups))
    block = 2048
    for start in range(0, points.shape[0], block):
        part = points[start : start + block]
        d2 = sq[start : start + block, None] - 2.0 * part @ points.T + sq[None, :]
        distances = np.sqrt(np.maximum(d2, 0.0))
        per_group_sums = np.add.reduceat(distances, starts, axis=1)  # (block, n_groups)
        np.add.at(sums, sample_owner[start : start + part.shape[0]], per_group_sums)
    return sums / np.outer(counts, counts)


def _cut_tree(children: np.ndarray, monotone: np.ndarray, n_leaves: int, n_clusters: int):
    """Labels after applying the ``n_leaves - n_clusters`` lowest merges (by monotone height,
    then creation order, which applies every child before its parent)."""
    n_merges = children.shape[0]
    order = np.lexsort((np.arange(n_merges), monotone))
    applied = order[: n_leaves - n_clusters]
    parent = np.arange(n_leaves + n_merges, dtype=np.int64)
    parent[children[applied, 0]] = n_leaves + applied
    parent[children[applied, 1]] = n_leaves + applied
    roots = parent.copy()
    while True:  # pointer jumping: O(log depth) passes
        jumped = roots[roots]
        if np.array_equal(jumped, roots):
            break
        roots = jumped
    # Number clusters in order of first appearance: sample 0 is always in cluster 0.
    _, first, inverse = np.unique(roots[:n_leaves], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def _sklearn_order(
    children: np.ndarray, heights: np.ndarray, monotone: np.ndarray, n_leaves: int
) -> tuple[np.ndarray, np.ndarray]:
    """Children renumbered in increasing monotone height, as ``sklearn``'s ``children_``."""
    n_merges = children.shape[0]
    order = np.lexsort((np.arange(n_merges), monotone))
    new_id = np.arange(n_leaves + n_merges, dtype=np.int64)
    new_id[n_leaves + order] = n_leaves + np.arange(n_merges)
    return new_id[children[order]], monotone[order]


@estimator_parameters
class AgglomerativeClustering(ClusterMixin, BaseEstimator):
    """Ward or average linkage constrained to a kNN graph (or a given connectivity matrix).

    Prefer ``linkage="ward"`` (the default) for grouping points into clusters. Average
    linkage on a kNN graph *chains*: where clusters overlap, the average distance of the
    growing cluster to its graph neighbours stays below that of two fresh groups, so one
    cluster absorbs the others along graph edges and the cut leaves it plus a few outliers.
    scikit-learn does the same on the same graph (overlapping blobs, 64-d, 50 centres,
    10-NN: largest cluster 99.8% of n=20,000 for both, ARI 0.00 against the truth, ward
    0.9965); average linkage suits separated groups or building a dendrogram to inspect.

    Parameters
    ----------
    n_clusters : int or None, default=2
        Clusters to form; None together with ``distance_threshold``.
    linkage : {"ward", "average"}, default="ward"
    n_neighbors : int, default=10
        Neighbours per point in the kNN connectivity graph (the point itself excluded).
    connectivity : sparse matrix or None, default=None
        Precomputed (n_samples, n_samples) connectivity; replaces the kNN graph.
    knn_method : {"auto", "exact", "hnsw", "ivf"}, default="auto"
        kNN search (see :class:`rayclust.cluster.NearestNeighbors`).
    distance_threshold : float or None, default=None
        Merge height above which clusters are not merged (then ``n_clusters=None``).
    backend : {"auto", "faiss", "torch", "sklearn"}, default="auto"
        Library for the kNN graph. The merging itself runs on the host with numpy.
    random_state : int, RandomState or None, default=None
        Seeds approximate kNN search and the samples that estimate average-linkage distances
        between graph components.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
    children_ : ndarray of shape (n_merges, 2)
        Merges in increasing height; node ``n_samples + i`` is made by row i (as scikit-learn).
    distances_ : ndarray of shape (n_merges,)
        Merge heights, made monotone up the tree.
    n_leaves_ : int
    n_connected_components_ : int
        Components of the connectivity graph.
    n_iter_ : int
        Merge rounds (each merges every reciprocal-nearest-neighbour pair at once).
    timings_ : dict of str to float
        Seconds for "graph" (kNN graph and its components) and "merge" (the tree).
    backend_ : str
    n_features_in_ : int
    """

    n_clusters: int | None = 2
    _: KW_ONLY
    linkage: str = "ward"
    n_neighbors: int = 10
    connectivity: Any = None
    knn_method: str = "auto"
    distance_threshold: float | None = None
    backend: str = "auto"
    random_state: Any = None

    def _check_params(self) -> None:
        check_params(self, _PARAMETER_RULES)
        if (self.n_clusters is None) == (self.distance_threshold is None):
            raise ValueError(
                f"exactly one of n_clusters={self.n_clusters!r} and distance_threshold="
                f"{self.distance_threshold!r} should be None"
            )

    def fit(self, X: Any, y: Any = None) -> AgglomerativeClustering:
        """Build the merge tree of ``X`` (n_samples, n_features) and cut it."""
        self._check_params()
        features = np.asarray(
            to_numpy(check_features(X, min_samples=2, n_clusters=self.n_clusters))
        )
        n = features.shape[0]
        self.n_features_in_ = int(features.shape[1])
        rng = check_random_state(self.random_state)
        self.backend_ = resolve_backend(
            self.backend, features, supported=SUPPORTED_BACKENDS, purpose="agglomerative kNN graph"
        )
        started = time.perf_counter()
        self.timings_: dict[str, float] = {}
        if self.connectivity is not None:
            u, v = _edges_from_connectivity(self.connectivity, n)
        else:
            u, v = _knn_edges(
                features,
                min(int(self.n_neighbors), n - 1),
                self.knn_method,
                self.backend_,
                int(rng.randint(2**31 - 1)),
            )
        graph = sp.coo_matrix((np.ones(u.size), (u, v)), shape=(n, n))
        n_components, component_of = connected_components(graph, directed=False)
        self.n_connected_components_ = int(n_components)
        self.timings_["graph"] = time.perf_counter() - started

        started = time.perf_counter()
        merger = _RoundMerger(features, self.linkage)
        merger.run(u, v, _row_distances(features, u, v))

        needs_full_tree = self.distance_threshold is not None or self.n_clusters < n_components
        if n_components > 1 and needs_full_tree:
            self._merge_components(features, merger, component_of, rng)

        self.timings_["merge"] = time.perf_counter() - started
        children, heights, monotone = merger.tree()
        if self.distance_threshold is not None:
            k = n - int(np.count_nonzero(monotone < self.distance_threshold))
        else:
            k = int(self.n_clusters)
        self.labels_ = _cut_tree(children, monotone, n, k)
        self.n_clusters_ = k
        self.children_, self.distances_ = _sklearn_order(children, heights, monotone, n)
        self.n_leaves_ = n
        self.n_iter_ = merger.n_rounds
        logger.debug(
            "AgglomerativeClustering: n=%d, %s linkage, %d merges in %d rounds, "
            "%d graph component(s), k=%d, graph %.2f s, merging %.2f s",
            n,
            self.linkage,
            children.shape[0],
            merger.n_rounds,
            n_components,
            k,
            self.timings_["graph"],
            self.timings_["merge"],
        )
        return self

    def _merge_components(
        self,
        X: np.ndarray,
        merger: _RoundMerger,
        component_of: np.ndarray,
        rng: np.random.RandomState,
    ) -> None:
        """Continue merging across components over the complete graph of their clusters.

        After the graph rounds every component is one live slot.
        """
        c = merger.n_live
        u, v = np.triu_indices(c, k=1)
        u, v = u.astype(np.int64), v.astype(np.int64)
        if self.linkage == "ward":
            w = merger.ward_heights(u, v)
        else:
            slot_of_component = np.empty(component_of.max() + 1, dtype=np.int64)
            slot_of_component[component_of[merger.representative]] = np.arange(c)
            owner = slot_of_component[component_of]
            w = _component_average_distances(X, owner, c, rng)[u, v]
        merger.run(u, v, w)
