"""What the report reads off one kNN graph over the clustered features: exact and near
duplicates, outliers (images far from their nearest neighbours) and possibly mislabelled
images (their label disagrees with their cluster and with most of their neighbours).

Terms, one meaning each across the page and its CSV files:

- exact duplicates: rows with the same content id (byte-identical files);
- near-duplicates: distinct files whose features lie far closer together than images of
  this collection usually do (see :func:`near_duplicate_threshold`);
- outlier: an image far from its nearest neighbours (``outliers.csv``); an image far from
  its own cluster's centre is called just that, "far from the centre";
- possibly mislabelled: see :func:`possibly_mislabelled`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("rayclust")

# A near-duplicate pair lies within this fraction of the collection's median
# nearest-neighbour distance. Measured on data/sample (120 distinct drawings) under every
# shipped view: a 90% resize or a JPEG (q80) re-save lies at 0.1-2.4% of the median from its
# original under the pixel views, the closest distinct drawings at 3.3% (pixels16) to 8.8%
# (efficientnet_lite0). Under efficientnet a re-save can lie 5-30% away, as far as distinct
# drawings: no threshold on those features alone finds it without grouping distinct images.
NEAR_DUPLICATE_RATIO = 0.025


@dataclass
class Group:
    """Rows that are copies of one another, each with its distance to the group's nearest
    other member (0 for exact duplicates)."""

    rows: np.ndarray
    distances: np.ndarray
    kind: str  # "exact" or "near"


@dataclass
class NeighbourLists:
    """Duplicates, outliers and possibly mislabelled images from one kNN graph."""

    groups: list[Group]  # exact groups first, then near ones; largest first within each
    outlier_rows: np.ndarray  # rows sorted by score, highest first
    outlier_scores: np.ndarray  # mean cosine distance to the k nearest neighbours
    threshold: float = 0.0  # cosine distance under which distinct files are near-duplicates
    threshold_why: str = ""
    n_searched: int = 0  # rows the kNN graph covered (a sample on large runs)
    mislabelled: list[dict] = field(default_factory=list)  # see possibly_mislabelled
    scope: str = ""  # what was searched, when the report should say it (engine=ray)

    def mapped(self, rows: np.ndarray) -> NeighbourLists:
        """The same lists with row numbers of a sample mapped back to the full run."""
        return NeighbourLists(
            [Group(rows[g.rows], g.distances, g.kind) for g in self.groups],
            rows[self.outlier_rows],
            self.outlier_scores,
            self.threshold,
            self.threshold_why,
            len(rows),
            [{**m, "row": int(rows[m["row"]])} for m in self.mislabelled],
            self.scope,
        )


def save_lists(lists: NeighbourLists, path: Path) -> None:
    """Keep lists searched over the whole collection (``clustering.engine=ray``) beside the run,
    so a report rendered again later shows them instead of lists of the driver's sample."""
    sizes = np.array([len(g.rows) for g in lists.groups], dtype=np.int64)
    np.savez(
        path,
        group_rows=np.concatenate([g.rows for g in lists.groups] or [np.zeros(0, np.int64)]),
        group_distances=np.concatenate(
            [g.distances for g in lists.groups] or [np.zeros(0, np.float64)]
        ),
        group_sizes=sizes,
        group_kinds=np.array([g.kind for g in lists.groups], dtype=str),
        outlier_rows=lists.outlier_rows,
        outlier_scores=lists.outlier_scores,
        text=np.array([lists.threshold_why, lists.scope], dtype=str),
        numbers=np.array([lists.threshold, lists.n_searched], dtype=np.float64),
    )


def load_lists(path: Path) -> NeighbourLists:
    """What :func:`save_lists` kept (mislabelled images are not kept: they come from labels)."""
    with np.load(path, allow_pickle=False) as saved:
        bounds = np.cumsum(saved["group_sizes"])[:-1]
        groups = [
            Group(rows.astype(np.int64), distances, str(kind))
            for rows, distances, kind in zip(
                np.split(saved["group_rows"], bounds),
                np.split(saved["group_distances"], bounds),
                saved["group_kinds"],
                strict=True,
            )
        ] if len(saved["group_sizes"]) else []  # fmt: skip
        threshold_why, scope = (str(t) for t in saved["text"])
        threshold, n_searched = saved["numbers"]
        return NeighbourLists(
            groups,
            saved["outlier_rows"].astype(np.int64),
            saved["outlier_scores"],
            float(threshold),
            threshold_why,
            int(n_searched),
            scope=scope,
        )


def near_duplicate_threshold(nearest: np.ndarray) -> tuple[float, str]:
    """The cosine distance below which two distinct files count as near-duplicates, from the
    distribution of each image's distance to its nearest neighbour (never a fixed number:
    pixel features of drawings on white lie 0.02 apart, network features 0.35).

    ``nearest`` holds one distance per distinct content id (exact copies are grouped before
    the search), so a distance of 0 is two different files that look alike, and counts: a
    float32 search rounds two near-identical images to <= 0 where float64 finds 1e-6."""
    nearest = np.maximum(nearest[np.isfinite(nearest)], 0.0)
    if nearest.size == 0:
        return 0.0, "no two distinct images to compare"
    median = float(np.median(nearest))
    threshold = NEAR_DUPLICATE_RATIO * median
    why = (
        f"cosine distance <= {threshold:.3g}, {NEAR_DUPLICATE_RATIO:.1%} of the median "
        f"nearest-neighbour distance {median:.3g} of these features"
    )
    return threshold, why


def _components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    graph = sp.csr_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_neighbour_lists(
    features: np.ndarray,
    image_ids: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    clusters: np.ndarray | None = None,
    *,
    n_neighbors: int = 10,
    duplicate_distance: float | None = None,
    max_outliers: int = 1000,
    random_state: int = 0,
) -> NeighbourLists:
    """The lists of one feature matrix (L2-normalised rows, cosine distance).

    image_ids: content ids of the rows; rows sharing one are exact duplicates and enter the
    kNN graph once. duplicate_distance: None sets it from the features
    (:func:`near_duplicate_threshold`). labels and clusters: for possibly mislabelled
    images (all labels non-empty).
    """
    from rayclust.cluster import NearestNeighbors

    n = len(features)
    unique, groups = exact_groups(image_ids if image_ids is not None else range(n))
    if len(unique) < 2:
        return NeighbourLists(groups, np.zeros(0, np.int64), np.zeros(0), n_searched=n)

    k = min(n_neighbors, len(unique) - 1)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", method="exact", random_state=random_state)
    distances, indices = nn.fit(features[unique]).kneighbors()
    valid = np.isfinite(distances) & (indices >= 0)
    nearest, scores = knn_summary(distances, valid)
    if duplicate_distance is None:
        threshold, why = near_duplicate_threshold(nearest)
    else:
        threshold, why = duplicate_distance, f"cosine distance <= {duplicate_distance:g} (given)"
    close = valid & (distances <= threshold)
    rows, cols = np.nonzero(close)
    groups += near_groups(unique[rows], unique[indices[rows, cols]], distances[close])
    order = np.argsort(-scores, kind="stable")[: min(max_outliers, len(unique))]
    mislabelled = []
    if labels is not None and clusters is not None and all(labels):
        mislabelled = possibly_mislabelled(
            [labels[r] for r in unique], clusters[unique], indices, valid
        )
        for m in mislabelled:
            m["row"] = int(unique[m["row"]])
    return NeighbourLists(groups, unique[order], scores[order], threshold, why, n, mislabelled)


def exact_groups(image_ids: Iterable[Any]) -> tuple[np.ndarray, list[Group]]:
    """The first row of every content id (what enters a kNN graph) and the groups of rows
    sharing one (exact duplicates, largest first). Sorted arrays, not a dict of every id:
    at a million rows this runs in the driver of a ``clustering.engine=ray`` run."""
    from rayclust.images import StringColumn

    if isinstance(image_ids, StringColumn):
        keys = image_ids.as_array()
    else:
        keys = np.asarray(image_ids if isinstance(image_ids, np.ndarray) else list(image_ids))
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64), []
    _, first, inverse, counts = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    unique = np.sort(first).astype(np.int64)
    repeated = np.flatnonzero(counts[inverse] > 1)
    if not len(repeated):
        return unique, []
    repeated = repeated[np.argsort(inverse[repeated], kind="stable")]  # by id, rows ascending
    starts = np.flatnonzero(np.diff(inverse[repeated], prepend=-1))
    exact = [g.astype(np.int64) for g in np.split(repeated, starts[1:])]
    exact.sort(key=lambda g: (-len(g), int(g[0])))
    return unique, [Group(g, np.zeros(len(g)), "exact") for g in exact]


def sharded_neighbour_lists(
    data: Any,
    image_ids: Sequence[str],
    *,
    n_neighbors: int = 10,
    max_outliers: int = 1000,
    max_candidates: int = 100_000,
    random_state: int = 0,
) -> NeighbourLists:
    """The duplicate and outlier lists of every row of ``data`` (a ShardedData, rows in
    ``image_ids`` order, ``clustering.engine=ray``), from a sharded IVF self-kNN
    (:class:`~rayclust.cluster.distributed_knn.ShardedIVF`, approximate) instead of an exact
    graph over a sample; the same threshold and scores as :func:`find_neighbour_lists`.

    The shards search; the driver takes the kNN graph one block at a time and keeps two
    floats per row (nearest distance, outlier score). Once the threshold is known, a second
    search covers only the rows whose nearest neighbour lies within it (at most
    ``max_candidates``, the closest), for their pairs. Rows sharing a content id are
    searched but left out of each other's neighbours, as the local lists leave them out."""
    from rayclust.cluster.distributed_knn import ShardedIVF

    n = data.count()
    unique, groups = exact_groups(image_ids)
    scope = f" Whole collection: all {n:,} images searched on the shards (sharded IVF kNN)."
    if len(unique) < 2:
        return NeighbourLists(groups, np.zeros(0, np.int64), np.zeros(0), n_searched=n, scope=scope)
    searched = np.zeros(n, dtype=bool)
    searched[unique] = True
    k = min(n_neighbors + (n - len(unique)), n - 1)  # room for a row's own copies
    search = ShardedIVF.train(data, metric="cosine", random_state=random_state)

    def graph(rows: np.ndarray | None):
        for block, distances, indices in search.self_kneighbor_blocks(k, rows=rows):
            valid = np.isfinite(distances) & (indices >= 0)
            valid &= searched[np.maximum(indices, 0)]
            valid &= np.cumsum(valid, axis=1) <= n_neighbors  # the first n_neighbors kept
            yield block, distances, indices, valid

    nearest = np.full(n, np.inf, dtype=np.float32)
    scores = np.zeros(n, dtype=np.float32)
    for block, distances, _, valid in graph(unique):
        nearest[block], scores[block] = knn_summary(distances, valid)
    threshold, why = near_duplicate_threshold(nearest[unique])
    candidates = unique[nearest[unique] <= threshold]
    if len(candidates) > max_candidates:
        log.warning("near-duplicates: %d candidate rows, kept the closest %d",
                    len(candidates), max_candidates)  # fmt: skip
        closest = np.argsort(nearest[candidates], kind="stable")[:max_candidates]
        candidates = np.sort(candidates[closest])
    a, b, d = [], [], []
    if len(candidates):
        for block, distances, indices, valid in graph(candidates):
            rows, cols = np.nonzero(valid & (distances <= threshold))
            a.append(block[rows])
            b.append(indices[rows, cols])
            d.append(distances[rows, cols])
    if a:
        groups += near_groups(np.concatenate(a), np.concatenate(b), np.concatenate(d))
    order = np.argsort(-scores[unique], kind="stable")[: min(max_outliers, len(unique))]
    outliers = unique[order]
    return NeighbourLists(
        groups, outliers, scores[outliers].astype(float), threshold, why, n, scope=scope
    )


def knn_summary(distances: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a kNN graph: the distance to its nearest neighbour (inf: none) and its
    outlier score, the mean distance to its neighbours (0: none)."""
    nearest = np.where(valid, distances, np.inf).min(axis=1)
    with np.errstate(invalid="ignore"):
        scores = np.nanmean(np.where(valid, distances, np.nan), axis=1)
    return nearest, np.nan_to_num(scores, nan=0.0)


def near_groups(a: np.ndarray, b: np.ndarray, distances: np.ndarray) -> list[Group]:
    """Near-duplicate groups from close pairs (rows ``a[i]``, ``b[i]`` lie ``distances[i]``
    apart): the connected components, each row with its distance to its closest partner;
    largest group first."""
    if len(a) == 0:
        return []
    rows, compact = np.unique(np.concatenate([a, b]), return_inverse=True)
    pairs = list(zip(compact[: len(a)].tolist(), compact[len(a) :].tolist(), strict=True))
    component = _components(len(rows), pairs)
    nearest = np.full(len(rows), np.inf)
    both = np.concatenate([distances, distances])
    np.minimum.at(nearest, compact, both)
    found = [
        Group(rows[local], np.maximum(nearest[local], 0.0), "near")
        for local in (np.flatnonzero(component == c) for c in range(component.max() + 1))
        if len(local) > 1
    ]
    found.sort(key=lambda g: (-len(g.rows), int(g.rows[0])))
    return found


def possibly_mislabelled(
    labels: Sequence[str], clusters: np.ndarray, indices: np.ndarray, valid: np.ndarray
) -> list[dict]:
    """Rows whose label differs from their cluster's most common label and from the label
    of most of their k nearest neighbours (fewer than half share it, and another label is
    the most common among them), most doubtful first: each a dict with row, label,
    cluster_label (the cluster's majority), neighbour_label (the neighbours' majority) and
    agree (the fraction of neighbours sharing the row's label)."""
    majority = {}
    for c in np.unique(clusters):
        majority[int(c)] = Counter(labels[r] for r in np.flatnonzero(clusters == c)).most_common(1)[
            0
        ][0]
    found = []
    for row, label in enumerate(labels):
        near = [labels[j] for j, ok in zip(indices[row], valid[row], strict=True) if ok]
        if not near:
            continue
        agree = sum(1 for x in near if x == label) / len(near)
        cluster_label = majority[int(clusters[row])]
        neighbour_label = Counter(near).most_common(1)[0][0]
        # Fewer than half agree, and another label leads among them: a small class whose
        # image has only a few same-label neighbours within k is not doubted for that.
        if label != cluster_label and agree < 0.5 and neighbour_label != label:
            found.append(
                {
                    "row": row,
                    "label": label,
                    "cluster_label": cluster_label,
                    "neighbour_label": neighbour_label,
                    "agree": agree,
                }
            )
    found.sort(key=lambda m: (m["agree"], m["row"]))
    return found
