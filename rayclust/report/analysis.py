"""What the report computes from a run folder: its features, a kNN graph (near-duplicates,
outliers), cluster exemplars, a 2-D map, the confusion matrix and the score tables.

Plain numpy in, plain data out; nothing here writes HTML (see ``rayclust.report.html``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust.config import load_yaml_text
from rayclust.report.neighbours import NeighbourLists, find_neighbour_lists
from rayclust.runs import CONFIG_FILE, RunFolder, RunFolderError, read_csv

if TYPE_CHECKING:
    from rayclust.clustering import Features

log = logging.getLogger("rayclust")

# External scores first, in the order papers print them; internal scores after.
PREFERRED_METRICS = ("acc", "nmi", "ami", "ari", "pur", "fmi")


class ReportError(RunFolderError):
    """A run folder the report cannot be built from; the message says what is missing."""


# --------------------------------------------------------------------------- features


@dataclass
class RunFeatures:
    """The rows of assignments.csv as features, or why there are none."""

    matrix: np.ndarray | None
    why_missing: str = ""  # shown in the map section when matrix is None
    # The assignment row of each matrix row, when the matrix holds a sample of them (a
    # clustering.engine=ray run: the driver held a sample only); None: every row, in order.
    rows: np.ndarray | None = None



def covered_rows(feature_rows: np.ndarray | None, n_rows: int) -> np.ndarray:
    """The assignment rows a feature matrix has, in its row order (:attr:`RunFeatures.rows`;
    None: all ``n_rows``)."""
    return np.arange(n_rows) if feature_rows is None else feature_rows


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_features(run: RunFolder, features: Features | np.ndarray | None) -> RunFeatures:
    """The run's features in assignments.csv order.

    A ``Features`` (what the pipeline clustered) is used as it is, rows matched by image id;
    a sample of the run's rows (``Features.rows`` set) gives a matrix of those rows only;
    a plain array is taken as raw features of the rows and L2-normalised; None loads them
    with ``rayclust.clustering.load_features`` from config.yaml and metrics.json's
    ``view_keys`` (the cache keys the run used, so no view name is resolved again).
    """
    if features is None:
        return load_run_features(run)
    if isinstance(features, np.ndarray):
        if len(features) != len(run.paths):
            raise ReportError(
                f"features has {len(features)} rows but assignments.csv has {len(run.paths)}"
            )
        return RunFeatures(l2_normalize(np.asarray(features, dtype=np.float32)))
    matrix = np.asarray(features.combined, dtype=np.float32)
    if features.rows is not None:
        rows = np.asarray(features.rows, dtype=np.int64)
        if rows.size and (rows.max() >= len(run.image_ids) or [run.image_ids[r] for r in rows]
                          != list(features.ids)):  # fmt: skip
            raise ReportError("the sampled features' rows do not match assignments.csv")
        return RunFeatures(matrix, rows=rows)
    if list(features.ids) != run.image_ids:
        row_of = {image_id: row for row, image_id in enumerate(features.ids)}
        missing = [i for i in run.image_ids if i not in row_of]
        if missing:
            raise ReportError(
                f"features lack {len(missing)} image ids of assignments.csv (first: {missing[0]})"
            )
        matrix = matrix[[row_of[i] for i in run.image_ids]]
    return RunFeatures(matrix)


def load_run_features(run: RunFolder) -> RunFeatures:
    """The clustered features of a finished run from its FeatureStore, or why not; of a
    ``clustering.engine=ray`` run, only its ``clustering.driver_sample`` rows."""
    view_keys = run.metrics.get("view_keys")
    if not run.has_assignments:
        return RunFeatures(None, "the folder has no assignments.csv")
    if not view_keys:
        return RunFeatures(
            None,
            "metrics.json names no view_keys (the feature cache keys): this kind of run "
            "(deep, or an older cluster run) keeps no features in the FeatureStore",
        )
    if not (run.run_dir / CONFIG_FILE).is_file():
        return RunFeatures(None, f"{run.run_dir / CONFIG_FILE} is missing")
    from rayclust.clustering import load_features, sample_rows
    from rayclust.config import load_config

    try:
        config = load_config(run.run_dir / CONFIG_FILE)
        rows = None
        if config.clustering.engine == "ray":  # as the run's driver: a sample of the rows
            rows = sample_rows(len(run.image_ids), config.clustering.driver_sample)
        ids = run.image_ids if rows is None else [run.image_ids[r] for r in rows]
        loaded = load_features(config, ids, view_keys)
    except Exception as exc:  # a moved or pruned cache must not kill the report
        cache_dir = (run.config.get("extraction") or {}).get("cache_dir")
        log.warning("report: no features for %s (%s); map and kNN lists left out", view_keys, exc)
        return RunFeatures(
            None, f"the features of {', '.join(view_keys)} are not in {cache_dir} ({exc})"
        )
    return RunFeatures(np.asarray(loaded.combined, dtype=np.float32), rows=rows)


# --------------------------------------------------------------------------- sampling, map


def sample_per_cluster(clusters: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices, at most `limit`, drawn evenly across clusters (small ones kept whole)."""
    n = len(clusters)
    if n <= limit:
        return np.arange(n)
    ids, counts = np.unique(clusters, return_counts=True)
    # Water-filling: each cluster gets min(count, share) with the share raised until full.
    quota = np.zeros_like(counts)
    remaining = limit
    open_ = np.ones(len(ids), dtype=bool)
    while remaining > 0 and open_.any():
        share = max(remaining // int(open_.sum()), 1)
        for i in np.flatnonzero(open_):
            take = min(share, counts[i] - quota[i], remaining)
            quota[i] += take
            remaining -= take
            if quota[i] == counts[i]:
                open_[i] = False
            if remaining == 0:
                break
    chosen = []
    for cluster_id, q in zip(ids, quota, strict=True):
        members = np.flatnonzero(clusters == cluster_id)
        chosen.append(rng.choice(members, size=int(q), replace=False))
    return np.sort(np.concatenate(chosen))


MAP_METHODS = ("tsne", "pca")
TSNE_PCA_DIM = 50  # t-SNE runs on the first 50 principal components (faster, less noise)


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows and the method used.

    method: "tsne" (the default: keeps clusters apart where PCA overlaps them; PCA to 50
    dimensions first) or "pca" (fast, linear).
    """
    if method not in MAP_METHODS:
        raise ValueError(f"map method {method!r} should be one of {', '.join(MAP_METHODS)}")
    n = len(features)
    if n < 3 or features.shape[1] < 2:
        coords = np.zeros((n, 2))
        coords[:, 0] = features[:, 0] if features.shape[1] else 0
        return coords, "PCA"
    from sklearn.decomposition import PCA

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features), "PCA"
    from sklearn.manifold import TSNE

    dim = min(TSNE_PCA_DIM, n - 1, features.shape[1])
    reduced = PCA(n_components=dim, random_state=seed).fit_transform(features)
    perplexity = float(min(30, max(2, (n - 1) / 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1)
    return tsne.fit_transform(reduced), "t-SNE"


# --------------------------------------------------------------------------- kNN lists


def run_neighbour_lists(
    features: np.ndarray,
    run: RunFolder,
    *,
    n_neighbors: int,
    duplicate_distance: float | None,
    max_knn_rows: int,
    seed: int,
    feature_rows: np.ndarray | None = None,
) -> NeighbourLists:
    """The kNN lists of a run, over at most `max_knn_rows` rows spread over the clusters.

    An exact kNN graph is quadratic: past max_knn_rows it covers a sample (100k rows exact
    took minutes on 2 shared cores; HNSW or IVF too). feature_rows: the assignment row of
    each row of `features` (:attr:`RunFeatures.rows`); None: every row.
    """
    covered = covered_rows(feature_rows, len(run.paths))
    picked = sample_per_cluster(run.clusters[covered], max_knn_rows, np.random.default_rng(seed))
    rows = covered[picked]
    labels = [run.labels[r] for r in rows] if run.has_labels else None
    return find_neighbour_lists(
        features[picked],
        [run.image_ids[r] for r in rows],
        labels,
        run.clusters[rows],
        n_neighbors=n_neighbors,
        duplicate_distance=duplicate_distance,
        random_state=seed,
    ).mapped(rows)


def cluster_exemplars(
    features: np.ndarray, clusters: np.ndarray, cluster_id: int, n_central: int, n_outlying: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one cluster nearest its centre, and the farthest ones (not repeating those)."""
    members = np.flatnonzero(clusters == cluster_id)
    centre = features[members].mean(axis=0)
    dist = np.linalg.norm(features[members] - centre, axis=1)
    order = members[np.argsort(dist, kind="stable")]
    central = order[:n_central]
    rest = order[len(central) :]
    outlying = rest[::-1][:n_outlying]
    return central, outlying


# --------------------------------------------------------------------------- matrices


def confusion_counts(
    labels: Sequence[str], clusters: np.ndarray
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Counts[label, cluster] with the sorted label names and cluster ids they index."""
    label_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(label_names)}
    label_codes = np.fromiter((index[name] for name in labels), dtype=np.int64, count=len(labels))
    cluster_ids, cluster_codes = np.unique(clusters, return_inverse=True)
    counts = np.zeros((len(label_names), len(cluster_ids)), dtype=np.int64)
    np.add.at(counts, (label_codes, cluster_codes), 1)
    return counts, label_names, cluster_ids


def matched_order(counts: np.ndarray, max_side: int) -> tuple[list[int], list[int]]:
    """Rows (largest labels first) and columns ordered so each label's best-matching cluster
    (Hungarian) stands under it: a good clustering shows a diagonal. At most max_side each."""
    from scipy.optimize import linear_sum_assignment

    matched_rows, matched_cols = linear_sum_assignment(-counts)
    match = dict(zip(matched_rows.tolist(), matched_cols.tolist(), strict=True))
    row_order = np.argsort(-counts.sum(axis=1), kind="stable")[:max_side].tolist()
    col_order = [match[r] for r in row_order if r in match]
    taken = set(col_order)
    col_order += [
        c for c in np.argsort(-counts.sum(axis=0), kind="stable").tolist() if c not in taken
    ]
    return row_order, col_order[:max_side]


def find_matrices(data: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """Square numeric matrices anywhere in nested data (e.g. divclust.inter_head_nmi)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += find_matrices(value, f"{prefix}{key}.")
    elif (
        isinstance(data, list)
        and len(data) >= 2
        and all(isinstance(r, list) and len(r) == len(data) for r in data)
    ):
        try:
            matrix = np.asarray(data, dtype=float)
        except (TypeError, ValueError):
            return found
        found.append((prefix.rstrip("."), matrix))
    return found


# --------------------------------------------------------------------------- scores


@dataclass
class ScoreTable:
    """Rows of scores: each cell a ``{"mean", "std", "n"}`` summary or a plain number."""

    rows: dict[str, dict[str, Any]]
    primary: str | None
    detail: str  # "AVG(SD) over 5 seeds" or "scores"

    @property
    def columns(self) -> list[str]:
        names: list[str] = []
        for row in self.rows.values():
            names += [name for name in row if name not in names]
        rank = {name: i for i, name in enumerate(PREFERRED_METRICS)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


def score_table(metrics: dict[str, Any]) -> ScoreTable:
    """The score rows of metrics.json: a cluster run's ``table`` (AVG(SD) over seeds), or a
    deep run's ``metrics`` per split and its K-means baseline."""
    summary = metrics.get("summary") or {}
    if metrics.get("table") or summary:
        rows = metrics.get("table") or {metrics.get("primary", "run"): summary}
        seeds = (next(iter(summary.values()), {}) or {}).get("n") if summary else None
        detail = f"AVG(SD) over {seeds} seeds" if seeds else "scores"
        return ScoreTable(dict(rows), metrics.get("primary"), detail)
    rows = {split: dict(scores) for split, scores in (metrics.get("metrics") or {}).items()}
    for split, scores in (metrics.get("kmeans_baseline") or {}).items():
        if isinstance(scores, dict):
            rows[f"kmeans_baseline:{split}"] = dict(scores)
    return ScoreTable(rows, "all" if "all" in rows else None, "per split of the images")


def format_score(cell: Any) -> str:
    """``0.812 (0.013)`` for a summary, ``0.812`` for a number, ``-`` for nothing."""
    if isinstance(cell, dict):
        mean, std = cell.get("mean"), cell.get("std")
    else:
        mean, std = cell, None
    if not isinstance(mean, int | float) or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.3f} ({std:.3f})" if std is not None else f"{mean:.3f}"


def headline_scores(table: ScoreTable, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, name) cards for ACC, NMI and ARI of the primary row."""
    summary = metrics.get("summary")
    if summary:
        row, suffix = summary, " AVG(SD)"
    else:
        row, suffix = table.rows.get(table.primary or "", {}), f" ({table.primary})"
    return [
        (format_score(row[key]), f"{key.upper()}{suffix}")
        for key in ("acc", "nmi", "ari")
        if key in row
    ]


# --------------------------------------------------------------------------- sweeps

TRIALS_FILE = "trials.csv"
SWEEP_CONFIG_FILE = "sweep.yaml"


@dataclass
class SweepOverview:
    """What a sweep folder (``rayclust tune``) holds: its trials, settings and plots."""

    trials: list[dict[str, str]]  # trials.csv, best first
    settings: dict[str, Any]  # sweep.yaml
    plots: list[Any]  # plots/*.png paths

    @property
    def n_errored(self) -> int:
        return sum(1 for t in self.trials if t.get("status") == "ERROR")


def read_sweep(run: RunFolder) -> SweepOverview | None:
    """The sweep of a sweep folder, None for any other run folder."""
    trials_path = run.run_dir / TRIALS_FILE
    if not trials_path.is_file():
        return None
    settings_path = run.run_dir / SWEEP_CONFIG_FILE
    settings = (
        (load_yaml_text(settings_path.read_text(), str(settings_path)) or {})
        if settings_path.is_file()
        else {}
    )
    plots = sorted((run.run_dir / "plots").glob("*.png"))
    return SweepOverview(read_csv(trials_path), settings, plots)
