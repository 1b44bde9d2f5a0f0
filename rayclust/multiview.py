"""Multi-view ensemble clustering (MVEC): every view clustered on its own, in parallel Ray
tasks, then combined by a consensus; scored next to its baselines in one table.

Rows of the table, all scored the same way, AVG(SD) over seeds:
- ``view:<name>``          each view alone
- ``concat``               per-view-normalised features concatenated
- ``leader``               the view with the best label-free score (silhouette), as the
                           paper's leading-network strategy but chosen without labels
- ``consensus:<method>``   the views' partitions combined (co-association, bipartite), each
                           view weighted by its label-free quality so weak views do not drag
                           the ensemble down
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayclust import metrics

log = logging.getLogger("rayclust")


@dataclass(frozen=True)
class ClusterJob:
    algorithm: str
    n_clusters: int | str
    seeds: int
    backend: str = "auto"
    n_neighbors: int = 10
    silhouette_sample: int = 10_000


def make_estimator(job: ClusterJob, seed: int):
    from rayclust import cluster

    if job.algorithm == "kmeans":
        return cluster.KMeans(n_clusters=job.n_clusters, random_state=seed, backend=job.backend)
    if job.algorithm == "spectral":
        return cluster.SpectralClustering(
            n_clusters=job.n_clusters,
            n_neighbors=job.n_neighbors,
            random_state=seed,
            backend=job.backend,
        )
    if job.algorithm == "agglomerative":
        return cluster.AgglomerativeClustering(
            n_clusters=job.n_clusters, n_neighbors=job.n_neighbors
        )
    raise ValueError(
        f"algorithm={job.algorithm!r} is not one of 'kmeans', 'spectral', 'agglomerative'"
    )


def cluster_seeds(features: np.ndarray, job: ClusterJob) -> dict[str, Any]:
    """One partition per seed, with its label-free scores; the backend that ran is recorded."""
    partitions, internal, backend = [], [], job.backend
    for seed in range(job.seeds):
        estimator = make_estimator(job, seed)
        labels = np.asarray(estimator.fit_predict(features))
        backend = getattr(estimator, "backend_", backend)
        partitions.append(labels)
        internal.append(
            metrics.internal_scores(
                features, labels, sample_size=job.silhouette_sample, random_state=seed
            )
        )
    return {"partitions": partitions, "internal": internal, "backend": backend}


def score_partitions(
    partitions: list[np.ndarray],
    internal: list[dict[str, float]],
    labels_true: np.ndarray | None,
) -> dict[str, Any]:
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
    }


def view_weights(quality: dict[str, float], min_relative: float) -> dict[str, float]:
    """Weight each view by its label-free quality relative to the best view.

    Views scoring below ``min_relative`` of the best get weight 0: on collections where
    ImageNet features are poor (e.g. digits), weak views would otherwise outvote a good one.
    """
    best = max(quality.values())
    if not np.isfinite(best) or best <= 0:
        return {view: 1.0 for view in quality}
    weights = {}
    for view, q in quality.items():
        relative = max(q, 0.0) / best if np.isfinite(q) else 0.0
        weights[view] = relative if relative >= min_relative else 0.0
    return weights


def _consensus_k(job: ClusterJob, leader_k: list[int], seed: int) -> int:
    """Clusters in the consensus: as asked, or with ``n_clusters="auto"`` as many as the
    leader found for that seed (each view may have chosen its own k)."""
    return job.n_clusters if isinstance(job.n_clusters, int) else leader_k[seed]


def _cluster_views_on_ray(per_view: dict[str, np.ndarray], job: ClusterJob) -> dict[str, Any]:
    """Cluster every view in its own Ray task so views run side by side."""
    import ray

    remote = ray.remote(num_cpus=1)(cluster_seeds)
    refs = {view: remote.remote(ray.put(feats), job) for view, feats in per_view.items()}
    return {view: ray.get(ref) for view, ref in refs.items()}


def evaluate_views(
    per_view: dict[str, np.ndarray],
    combined: np.ndarray,
    labels_true: np.ndarray | None,
    job: ClusterJob,
    consensus_methods: list[str],
    min_relative_quality: float = 0.5,
    use_ray: bool = True,
) -> dict[str, Any]:
    """The MVEC table: each view, the concatenation, the leader and the consensus rows."""
    from rayclust.ensemble import ConsensusTooLargeError, create_consensus

    if use_ray:
        clustered = _cluster_views_on_ray(per_view, job)
    else:
        clustered = {view: cluster_seeds(feats, job) for view, feats in per_view.items()}
    rows: dict[str, dict[str, Any]] = {}
    for view, out in clustered.items():
        rows[f"view:{view}"] = score_partitions(out["partitions"], out["internal"], labels_true)

    concat = cluster_seeds(combined, job)
    rows["concat"] = score_partitions(concat["partitions"], concat["internal"], labels_true)

    quality = {
        view: rows[f"view:{view}"]["summary"].get("silhouette", {}).get("mean", float("nan"))
        for view in per_view
    }
    leader = max(quality, key=lambda v: quality[v] if np.isfinite(quality[v]) else -np.inf)
    rows["leader"] = dict(rows[f"view:{leader}"])
    weights = view_weights(quality, min_relative_quality)
    log.info("leader view: %s; consensus weights: %s", leader, weights)

    notes: dict[str, str] = {}
    views = list(per_view)
    leader_k = [len(np.unique(p)) for p in clustered[leader]["partitions"]]
    for method in consensus_methods:
        partitions, internal = [], []
        try:
            for seed in range(job.seeds):
                estimator = create_consensus(method, n_clusters=_consensus_k(job, leader_k, seed))
                if hasattr(estimator, "random_state"):
                    estimator.set_params(random_state=seed)
                labels = estimator.fit_predict(
                    [clustered[v]["partitions"][seed] for v in views],
                    weights=[weights[v] for v in views],
                )
                partitions.append(np.asarray(labels))
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

    return {
        "rows": rows,
        "leader": leader,
        "view_quality": quality,
        "weights": weights,
        "backend": concat["backend"],
        "notes": notes,
    }


def table_markdown(rows: dict[str, dict[str, Any]], metric_names: list[str]) -> str:
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
