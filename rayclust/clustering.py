"""The clustering stage, one for every caller (``rayclust cluster``, tune trials, the report):
stored features -> L2 / PCA (``rayclust.reduce``) -> cluster every seed -> multi-view
consensus -> scores.

Usable alone from Python::

    features = load_features(config, ids, {"efficientnet_lite0": spec_key}, labels)
    result = cluster_features(features, config)
    result.labels, result.table(), result.markdown()

Rows of the result, all scored the same way, AVG(SD) over ``clustering.seeds`` seeds:

- ``view:<name>``          each view alone (the only row of a single-view run)
- ``concat``               the views concatenated, each scaled to unit average row norm
- ``leader``               the view with the best label-free score (silhouette), as MVEC's
                           leading-network strategy but chosen without labels
- ``consensus:<method>``   the views' partitions combined (``rayclust.ensemble``), each view
                           weighted by its label-free quality so weak views do not drag the
                           ensemble down (``ensemble.mode=paper``: equal weights and
                           scikit-learn's default agglomerative per view, as MVEC's paper)

Estimators come from the algorithm registry (``rayclust.cluster.registry``), so every
registered algorithm works for one view, for each view of a multi-view run and in tune.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import metrics
from rayclust.config import ConfigError
from rayclust.reduce import (  # the reduce stage; exported here as the stage's front door
    Features,
    assemble_features,
    combine_views,
    encode_labels,
    fit_pca,
    l2_normalize,
    load_features,
    prepare_features,
    prepare_view,
    read_features,
    reduce_dim,
    sample_rows,
    view_scale,
)

if TYPE_CHECKING:
    from rayclust.config import RunConfig

__all__ = [
    "ClusterJob",
    "ClusteringResult",
    "Features",
    "TABLE_METRICS",
    "ViewClustering",
    "assemble_features",
    "cluster_features",
    "cluster_seeds",
    "cluster_view",
    "clusters_each_view",
    "combine_views",
    "encode_labels",
    "fit_pca",
    "l2_normalize",
    "load_features",
    "make_estimator",
    "prepare_features",
    "prepare_view",
    "read_features",
    "reduce_dim",
    "resolve_n_clusters",
    "sample_rows",
    "score_partitions",
    "seed_stability",
    "table_markdown",
    "view_scale",
    "view_weights",
]

log = logging.getLogger("rayclust")

# The Ray engine lives in rayclust.clustering_ray (it needs this module's pieces); its entry
# points are reachable from here too, loaded on first use.
_RAY_ENGINE = ("cluster_on_ray", "cluster_sharded", "ShardedPCA")


def __getattr__(name: str) -> Any:
    if name in _RAY_ENGINE:
        from rayclust import clustering_ray

        return getattr(clustering_ray, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Columns of results.md, in this order, where the primary row has them.
TABLE_METRICS = ["acc", "nmi", "ami", "ari", "pur", "fmi", "silhouette"]


def resolve_n_clusters(config: RunConfig, n_images: int, label_names: list[str]) -> int | str:
    """``clustering.n_clusters``, or the number of label classes when it is not set."""
    n_clusters = config.clustering.n_clusters
    if n_clusters is None:
        if not label_names:
            raise ConfigError(
                "clustering.n_clusters is not set and there are no labels to count: "
                "give --clusters K (or --clusters auto)"
            )
        n_clusters = len(label_names)
    if isinstance(n_clusters, int) and n_clusters > n_images:
        raise ConfigError(
            f"n_clusters={n_clusters} should be <= the number of usable images={n_images}"
        )
    return n_clusters


# -- clustering every seed -----------------------------------------------------------------


@dataclass(frozen=True)
class ClusterJob:
    """How each partition is made: one fit of ``algorithm`` per seed ``0 .. seeds-1``."""

    algorithm: str
    n_clusters: int | str
    seeds: int
    backend: str = "auto"
    n_neighbors: int = 10
    silhouette_sample: int = 10_000
    kmeans_levels: int = 1  # 2: K-means runs as TopDownKMeans (clustering.kmeans_levels)
    engine: str = "local"  # clustering.engine; "ray": spectral takes the landmark method
    spectral_method: str = "auto"  # clustering.spectral_method

    @classmethod
    def from_config(cls, config: RunConfig, n_clusters: int | str) -> ClusterJob:
        from rayclust.cluster.topdown_kmeans import kmeans_levels

        algorithm = config.ensemble.view_algorithm or config.clustering.algorithm
        if config.ensemble.mode == "paper" and config.ensemble.view_algorithm is None:
            from rayclust.ensemble import PAPER_VIEW_ALGORITHM

            algorithm = PAPER_VIEW_ALGORITHM  # scikit-learn's default agglomerative per view
        return cls(
            algorithm=algorithm,
            n_clusters=n_clusters,
            seeds=config.clustering.seeds,
            backend=config.clustering.backend,
            n_neighbors=config.clustering.n_neighbors,
            silhouette_sample=config.evaluation.silhouette_sample,
            kmeans_levels=kmeans_levels(config.clustering.kmeans_levels, n_clusters),
            engine=config.clustering.engine,
            spectral_method=config.clustering.spectral_method,
        )

    def levels_note(self) -> str:
        """How K-means ran (clustering.kmeans_levels), for metrics.json's notes."""
        if self.kmeans_levels == 2:
            from rayclust.cluster.topdown_kmeans import default_coarse

            coarse = default_coarse(int(self.n_clusters))
            return f"two-level K-means (TopDownKMeans, {self.n_clusters} under {coarse} coarse)"
        return "flat K-means"


def make_estimator(job: ClusterJob, seed: int) -> Any:
    from rayclust.cluster.registry import create_estimator
    from rayclust.ensemble import PAPER_VIEW_ALGORITHM, paper_view_estimator

    if job.algorithm == PAPER_VIEW_ALGORITHM:
        return paper_view_estimator(job.n_clusters)
    if job.algorithm == "kmeans" and job.kmeans_levels == 2:
        from rayclust.cluster.topdown_kmeans import TopDownKMeans

        return TopDownKMeans(job.n_clusters, random_state=seed, backend=job.backend)

    estimator = create_estimator(
        job.algorithm,
        job.n_clusters,
        random_state=seed,
        backend=job.backend,
        n_neighbors=job.n_neighbors,
    )
    if job.algorithm == "spectral":
        # Sharded rows only fit the landmark graph; saying so here keeps the estimator's
        # parameters (metrics.json, a refit) true to what ran.
        estimator.set_params(method="landmark" if job.engine == "ray" else job.spectral_method)
    return estimator


def cluster_seeds(features: np.ndarray, job: ClusterJob) -> dict[str, Any]:
    """One partition per seed, with its label-free scores; the backend that ran is recorded,
    and the seconds the fits took (MVEC's ``t2``)."""
    partitions, internal, backend = [], [], job.backend
    seconds = 0.0
    for seed in range(job.seeds):
        estimator = make_estimator(job, seed)
        start = time.perf_counter()
        labels = np.asarray(estimator.fit_predict(features))
        seconds += time.perf_counter() - start
        backend = getattr(estimator, "backend_", backend)
        partitions.append(labels)
        internal.append(
            metrics.internal_scores(
                features, labels, sample_size=job.silhouette_sample, random_state=seed
            )
        )
    return {"partitions": partitions, "internal": internal, "backend": backend, "seconds": seconds}


@dataclass
class ViewClustering:
    """One view of a multi-view run clustered alone (:func:`cluster_view`), the clustering
    stage's per-view step, usable as soon as that view's features are stored."""

    view: str
    ids: list[str]  # the rows, in this order
    feats: np.ndarray  # prepared (L2, PCA) as the stage prepares them
    pca: Any
    job: ClusterJob
    clustered: dict[str, Any]  # cluster_seeds' output
    started: float  # time.perf_counter() at the start and end (read, prepare, fits)
    ended: float


def cluster_view(
    config: RunConfig, view: str, spec_key: str, ids: Sequence[str], n_clusters: int | str
) -> ViewClustering:
    """Read one view's stored features of ``ids``, prepare them and cluster every seed,
    exactly as :func:`cluster_features` does for each view of a multi-view run (which
    takes the result as ``clustered=``)."""
    from rayclust.views.store import default_cache_dir

    started = time.perf_counter()
    cache_dir = config.extraction.cache_dir or default_cache_dir()
    raw = read_features(cache_dir, ids, {view: spec_key}, config.input.storage_options)[view]
    feats, pca = prepare_view(raw, config.clustering)
    job = ClusterJob.from_config(config, n_clusters)
    clustered = cluster_seeds(feats, job)
    return ViewClustering(view, list(ids), feats, pca, job, clustered, started, time.perf_counter())


def clusters_each_view(config: RunConfig, n_views: int) -> bool:
    """Whether :func:`cluster_features` clusters every view alone (a multi-view run, not
    the Ray engine nor the label-free selection), so :func:`cluster_view` can run early."""
    from rayclust.selection import selection_applies

    return n_views > 1 and config.clustering.engine != "ray" and not selection_applies(config)


def score_partitions(
    partitions: list[np.ndarray],
    internal: list[dict[str, float]],
    labels_true: np.ndarray | None,
) -> dict[str, Any]:
    """A result row: every seed's scores, their AVG(SD), and the labels of the seed with the
    best silhouette (label-free, so the written clustering never depends on the labels)."""
    per_seed = []
    for seed, (labels, scores) in enumerate(zip(partitions, internal, strict=True)):
        row = dict(scores)
        if labels_true is not None:
            row |= metrics.external_scores(labels_true, labels)
        per_seed.append({"seed": seed, **row})
    silhouettes = np.array([s.get("silhouette", np.nan) for s in per_seed], dtype=float)
    chosen = 0 if np.all(np.isnan(silhouettes)) else int(np.nanargmax(silhouettes))
    summary = metrics.summarize([{k: v for k, v in s.items() if k != "seed"} for s in per_seed])
    return {
        "summary": summary,
        "per_seed": per_seed,
        "chosen_seed": chosen,
        "labels": partitions[chosen],
        "partitions": partitions,
    }


def seed_stability(partitions: Sequence[np.ndarray]) -> float:
    """Mean pairwise ARI between the seeds' partitions (1: every seed finds the same groups)."""
    from sklearn.metrics import adjusted_rand_score

    if len(partitions) < 2:
        return float("nan")
    pairs = [
        adjusted_rand_score(partitions[i], partitions[j])
        for i in range(len(partitions))
        for j in range(i + 1, len(partitions))
    ]
    return float(np.mean(pairs))


# -- several views -------------------------------------------------------------------------


def view_weights(
    quality: Mapping[str, float], min_relative: float, weighting: str = "silhouette"
) -> dict[str, float]:
    """Weight each view by its label-free quality relative to the best view.

    Views scoring below ``min_relative`` of the best get weight 0: on collections where
    ImageNet features are poor (e.g. digits), weak views would otherwise outvote a good one.
    ``weighting="equal"``: every view weighs 1, as in the MVEC paper.
    """
    if weighting == "equal":
        return {view: 1.0 for view in quality}
    best = max(quality.values())
    if not np.isfinite(best) or best <= 0:
        return {view: 1.0 for view in quality}
    weights = {}
    for view, q in quality.items():
        relative = max(q, 0.0) / best if np.isfinite(q) else 0.0
        weights[view] = relative if relative >= min_relative else 0.0
    return weights


def _cluster_each_view(
    per_view: Mapping[str, np.ndarray], job: ClusterJob, parallel: bool
) -> dict[str, dict[str, Any]]:
    """Every view's seeds; with ``parallel`` each view in its own Ray task, side by side."""
    if not parallel:
        return {view: cluster_seeds(feats, job) for view, feats in per_view.items()}
    import ray

    remote = ray.remote(num_cpus=1)(cluster_seeds)
    refs = {view: remote.remote(ray.put(feats), job) for view, feats in per_view.items()}
    return {view: ray.get(ref) for view, ref in refs.items()}


def _consensus_rows(
    methods: Sequence[str],
    clustered: Mapping[str, dict[str, Any]],
    weights: Mapping[str, float],
    leader: str,
    combined: np.ndarray,
    labels_true: np.ndarray | None,
    job: ClusterJob,
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, float]]:
    """One row per consensus method; a method that cannot run at this size is noted instead.
    Also returns each method's seconds of consensus fits (MVEC's ``t3``)."""
    from rayclust.ensemble import ConsensusTooLargeError, create_consensus

    views = list(clustered)
    # With n_clusters="auto" each view may choose its own k: the consensus takes the leader's.
    leader_k = [len(np.unique(p)) for p in clustered[leader]["partitions"]]
    rows: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    seconds: dict[str, float] = {}  # MVEC's t3: the consensus fits of each method
    for method in methods:
        partitions, internal = [], []
        seconds[method] = 0.0
        try:
            for seed in range(job.seeds):
                k = job.n_clusters if isinstance(job.n_clusters, int) else leader_k[seed]
                estimator = create_consensus(method, n_clusters=k)
                if hasattr(estimator, "random_state"):
                    estimator.set_params(random_state=seed)
                start = time.perf_counter()
                labels = np.asarray(
                    estimator.fit_predict(
                        [clustered[v]["partitions"][seed] for v in views],
                        weights=[weights[v] for v in views],
                    )
                )
                seconds[method] += time.perf_counter() - start
                partitions.append(labels)
                internal.append(
                    metrics.internal_scores(
                        combined, labels, sample_size=job.silhouette_sample, random_state=seed
                    )
                )
        except ConsensusTooLargeError as exc:
            notes[f"consensus:{method}"] = str(exc)
            log.warning("consensus %s skipped: %s", method, exc)
            continue
        rows[f"consensus:{method}"] = score_partitions(partitions, internal, labels_true)
    return rows, notes, seconds


# -- the stage -----------------------------------------------------------------------------


@dataclass
class ClusteringResult:
    """Every row of a clustering (see the module docstring) and which one is the answer."""

    rows: dict[str, dict[str, Any]]  # row -> {labels, summary, per_seed, chosen_seed, partitions}
    primary: str
    labels: np.ndarray  # the primary row's labels
    algorithm: str
    backend: str
    leader: str | None = None
    weights: dict[str, float] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    view_quality: dict[str, float] | None = None  # label-free score per view (multi-view)
    # multi-view: seconds of each view's fits (t2), of the per-view stage, of each consensus (t3)
    timings: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None  # rayclust.selection's record, when it chose
    # engine=ray: duplicates and outliers of every row (rayclust.report.neighbours'
    # NeighbourLists from the shards), which the report writes in place of the sample's
    neighbours: Any = None

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return self.rows[self.primary]["summary"]

    def table(self) -> dict[str, dict[str, Any]]:
        """Row name -> its summary (metric -> mean, std)."""
        return {name: row["summary"] for name, row in self.rows.items()}

    def stability(self, row: str | None = None) -> float:
        """Mean pairwise ARI between the seeds' partitions of ``row`` (default: the primary)."""
        return seed_stability(self.rows[row or self.primary]["partitions"])

    def markdown(self, metric_names: Sequence[str] | None = None) -> str:
        """The results.md table; default columns: TABLE_METRICS the primary row has."""
        if metric_names is None:
            metric_names = [m for m in TABLE_METRICS if m in self.summary]
        return table_markdown(self.rows, metric_names)


def table_markdown(rows: Mapping[str, Mapping[str, Any]], metric_names: Sequence[str]) -> str:
    """A results table people can paste: one row per method, AVG(SD) per metric."""
    header = "| method | " + " | ".join(metric_names) + " |"
    lines = [header, "|" + "---|" * (len(metric_names) + 1)]
    for name, row in rows.items():
        cells = []
        for metric in metric_names:
            stats = row["summary"].get(metric)
            cells.append(metrics.format_avg_sd(stats["mean"], stats["std"]) if stats else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ray_is_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not running (and stays unimported)
    return ray is not None and ray.is_initialized()


def cluster_features(
    features: Features,
    config: RunConfig,
    n_clusters: int | str | None = None,
    *,
    parallel: bool | None = None,
    clustered: Mapping[str, dict[str, Any]] | None = None,
) -> ClusteringResult:
    """Cluster ``features`` as ``config`` says (clustering, ensemble, evaluation sections).

    n_clusters: None resolves it from the config and the labels (:func:`resolve_n_clusters`).
    parallel: cluster the views of a multi-view run in Ray tasks side by side; None does so
    when a Ray session is running. Tune trials pass False (they hold their CPU share).
    clustered: views already clustered (:func:`cluster_view`'s ``clustered`` on the same
    rows and job), not clustered again.
    """
    if n_clusters is None:
        n_clusters = resolve_n_clusters(config, len(features), features.label_names)
    if config.clustering.engine == "ray":
        from rayclust.clustering_ray import cluster_on_ray

        return cluster_on_ray(features, config, n_clusters)
    from rayclust.selection import cluster_selected, run_views, selection_applies

    # clustering.select=auto chooses representation x algorithm x k, over the views the run
    # extracted for it; features of other views (a caller's own multi-view set) get consensus.
    if selection_applies(config) and set(features.per_view) <= set(run_views(config)):
        return cluster_selected(features, config, n_clusters)
    job = ClusterJob.from_config(config, n_clusters)
    if len(features.per_view) == 1:
        (view,) = features.per_view
        single = cluster_seeds(features.combined, job)
        row = score_partitions(single["partitions"], single["internal"], features.labels_true)
        primary = f"view:{view}"
        return ClusteringResult(
            rows={primary: row},
            primary=primary,
            labels=row["labels"],
            algorithm=job.algorithm,
            backend=single["backend"],
            notes={"kmeans_levels": job.levels_note()} if job.kmeans_levels == 2 else {},
        )

    if parallel is None:
        parallel = _ray_is_running()
    labels_true = features.labels_true
    start = time.perf_counter()
    given = dict(clustered or {})
    todo = {view: feats for view, feats in features.per_view.items() if view not in given}
    clustered = given | _cluster_each_view(todo, job, parallel) if todo else given
    clustered = {view: clustered[view] for view in features.per_view}  # in the views' order
    views_wall = time.perf_counter() - start
    rows = {
        f"view:{view}": score_partitions(out["partitions"], out["internal"], labels_true)
        for view, out in clustered.items()
    }
    concat = cluster_seeds(features.combined, job)
    rows["concat"] = score_partitions(concat["partitions"], concat["internal"], labels_true)

    quality = {
        view: rows[f"view:{view}"]["summary"].get("silhouette", {}).get("mean", float("nan"))
        for view in features.per_view
    }
    leader = max(quality, key=lambda v: quality[v] if np.isfinite(quality[v]) else -np.inf)
    rows["leader"] = dict(rows[f"view:{leader}"])
    weights = view_weights(
        quality, config.ensemble.min_relative_quality, config.ensemble.resolved_weighting
    )
    log.info(
        "leader view: %s; consensus weights: %s",
        leader,
        ", ".join(f"{view} {weight:.2f}" for view, weight in weights.items()),
    )
    consensus, notes, consensus_seconds = _consensus_rows(
        config.ensemble.methods, clustered, weights, leader, features.combined, labels_true, job
    )
    rows |= consensus

    primary = config.ensemble.primary
    if primary not in rows:
        raise ConfigError(f"ensemble.primary={primary!r} was not computed; rows: {sorted(rows)}")
    return ClusteringResult(
        rows=rows,
        primary=primary,
        labels=rows[primary]["labels"],
        algorithm=job.algorithm,
        backend=concat["backend"],
        leader=leader,
        weights=weights,
        notes=notes,
        view_quality=quality,
        timings={
            "view_fit_s": {view: out["seconds"] for view, out in clustered.items()},
            "views_stage_s": views_wall,
            "consensus_s": consensus_seconds,
        },
    )
