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

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
        )


def near_duplicate_threshold(nearest: np.ndarray) -> tuple[float, str]:
    """The cosine distance below which two distinct files count as near-duplicates, from the
    distribution of each image's distance to its nearest neighbour (never a fixed number:
    pixel features of drawings on white lie 0.02 apart, network features 0.35)."""
    nearest = nearest[np.isfinite(nearest)]
    positive = nearest[nearest > 0]
    if positive.size == 0:
        return 0.0, "no two distinct images to compare"
    median = float(np.median(positive))
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
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
    first_of: dict[str, int] = {}
    for row, image_id in enumerate(ids):
        first_of.setdefault(image_id, row)
    unique = np.array(sorted(first_of.values()), dtype=np.int64)
    groups: list[Group] = []
    members: dict[str, list[int]] = {}
    for row, image_id in enumerate(ids):
        members.setdefault(image_id, []).append(row)
    exact = [np.array(rows) for rows in members.values() if len(rows) > 1]
    exact.sort(key=lambda g: (-len(g), int(g[0])))
    groups += [Group(g, np.zeros(len(g)), "exact") for g in exact]
    if len(unique) < 2:
        return NeighbourLists(groups, np.zeros(0, np.int64), np.zeros(0), n_searched=n)

    k = min(n_neighbors, len(unique) - 1)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", method="exact", random_state=random_state)
    distances, indices = nn.fit(features[unique]).kneighbors()
    valid = np.isfinite(distances) & (indices >= 0)
    if duplicate_distance is None:
        threshold, why = near_duplicate_threshold(np.where(valid, distances, np.inf).min(axis=1))
    else:
        threshold, why = duplicate_distance, f"cosine distance <= {duplicate_distance:g} (given)"
    close = valid & (distances <= threshold)
    pairs = [(int(i), int(indices[i, j])) for i, j in zip(*np.nonzero(close), strict=True)]
    if pairs:
        component = _components(len(unique), pairs)
        nearest = np.full(len(unique), np.inf)
        for (a, b), d in zip(pairs, distances[close], strict=True):
            nearest[a], nearest[b] = min(nearest[a], d), min(nearest[b], d)
        near = []
        for c in np.flatnonzero(np.bincount(component) > 1):
            local = np.flatnonzero(component == c)
            near.append(Group(unique[local], np.maximum(nearest[local], 0.0), "near"))
        near.sort(key=lambda g: (-len(g.rows), int(g.rows[0])))
        groups += near

    scores = np.nan_to_num(np.nanmean(np.where(valid, distances, np.nan), axis=1), nan=0.0)
    order = np.argsort(-scores, kind="stable")[: min(max_outliers, len(unique))]
    mislabelled = []
    if labels is not None and clusters is not None and all(labels):
        mislabelled = possibly_mislabelled(
            [labels[r] for r in unique], clusters[unique], indices, valid
        )
        for m in mislabelled:
            m["row"] = int(unique[m["row"]])
    return NeighbourLists(groups, unique[order], scores[order], threshold, why, n, mislabelled)


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
