"""The clustering stage on the Ray engine (``clustering.engine=ray``): K-means or landmark
spectral clustering over shard actors that read their rows from the feature store; the driver
holds one label per row and a bounded sample of rows (``clustering.driver_sample``). Same
estimator, seeds and result type as the local engine in :mod:`rayclust.clustering`.

K-means runs every pass on the shards. Spectral clustering is the landmark method
(``SpectralClustering(method="landmark")``, whatever the size): landmarks from a seeded sample
of rows fetched from the shards, each row's r nearest landmarks found on the shards, then the
p x p eigenproblem, the n x k embedding and its K-means on the driver, which holds a few
numbers per row for it (see :class:`rayclust.cluster.SpectralClustering`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import metrics
from rayclust.clustering import (
    ClusteringResult,
    ClusterJob,
    Features,
    encode_labels,
    make_estimator,
    sample_rows,
    score_partitions,
)

if TYPE_CHECKING:
    from rayclust.config import RunConfig

__all__ = ["ShardedPCA", "cluster_on_ray", "cluster_sharded"]


def cluster_on_ray(features: Features, config: RunConfig, n_clusters: int) -> ClusteringResult:
    """``clustering.engine=ray`` on features a caller already holds (their ids and cache key
    are what the shards use): :func:`cluster_sharded`'s result."""
    labels = (
        None
        if features.labels_true is None
        else [features.label_names[i] for i in features.labels_true]
    )
    return cluster_sharded(config, features.ids, features.view_keys, labels, n_clusters)[0]


@dataclass(frozen=True)
class ShardedPCA:
    """The PCA the shards applied, as the predict model reads a fitted PCA."""

    mean_: np.ndarray
    components_: np.ndarray  # (n_components, dim), as scikit-learn's


def cluster_sharded(
    config: RunConfig,
    ids: Sequence[str],
    view_keys: Mapping[str, str],
    labels: Sequence[str | None] | None,
    n_clusters: int,
) -> tuple[ClusteringResult, Features]:
    """``clustering.engine=ray``: K-means for every seed over shard actors that read the view's
    stored features themselves (``rayclust.cluster.distributed``), the same estimator and seeds
    as the local engine.

    The driver holds one label per row and no more than ``clustering.driver_sample`` rows of
    features: a seeded uniform sample fetched from the shards (after their PCA), on which every
    seed is scored (silhouette, Calinski-Harabasz, Davies-Bouldin; external scores use every
    row's label). Returns the result and that sample as ``Features`` (``rows`` set): what the
    report and the predict model are drawn from.
    """
    from rayclust.cluster.distributed import default_shards, fit_pca, start_shards
    from rayclust.ray_session import ensure_ray
    from rayclust.views.store import default_cache_dir

    ensure_ray(config.ray.address, config.ray.num_cpus)
    settings = config.clustering
    ((view, key),) = view_keys.items()
    labels_true, label_names = encode_labels(labels)
    job = ClusterJob.from_config(config, n_clusters)
    data = start_shards(
        config.extraction.cache_dir or default_cache_dir(),
        key,
        ids,
        settings.shards or default_shards(),
        normalize=settings.normalize,
        backend=settings.backend,
        storage_options=config.input.storage_options,
    )
    pca = {}
    try:
        if settings.pca_dim is not None and settings.pca_dim < min(len(ids), data.dim()):
            fit_pca(data, settings.pca_dim)
            _, mean, components = data.projection
            pca[view] = ShardedPCA(mean.astype(np.float32), components.T.astype(np.float32))
        partitions, seconds = [], 0.0
        for seed in range(job.seeds):
            start = time.perf_counter()
            estimator = make_estimator(job, seed).fit(data)
            partitions.append(np.asarray(estimator.labels_))
            seconds += time.perf_counter() - start
        rows = sample_rows(len(ids), settings.driver_sample)
        sample = data.get_subset(rows)
        shards = data.info()
        neighbours, neighbours_s = None, 0.0
        if config.report.enabled and len(ids) > 1:
            from rayclust.report.neighbours import sharded_neighbour_lists

            start = time.perf_counter()
            neighbours = sharded_neighbour_lists(data, ids)
            neighbours_s = time.perf_counter() - start
    finally:
        data.close()
    internal = [
        metrics.internal_scores(
            sample, partition[rows], sample_size=job.silhouette_sample, random_state=seed
        )
        for seed, partition in enumerate(partitions)
    ]
    row = score_partitions(partitions, internal, labels_true)
    primary = f"view:{view}"
    held = ", ".join(f"{s['rows']} rows / {s['bytes']} bytes on {s['device']}" for s in shards)
    ran = _algorithm_note(job, estimator, settings.kmeans_levels)
    scored = f"scored on {len(rows):,} of {len(ids):,} rows (clustering.driver_sample)"
    result = ClusteringResult(
        rows={primary: row},
        primary=primary,
        labels=row["labels"],
        algorithm=job.algorithm,
        backend=f"ray:{data.backend}",
        notes={
            "engine": f"ray, {len(shards)} shards ({held}); {ran}; {scored}; "
            + (
                f"near-duplicates and outliers of all {len(ids):,} rows by a sharded IVF kNN "
                f"on the shards ({neighbours_s:.1f} s); "
                if neighbours is not None
                else ""
            )
            + "no label-free selection"
        },
        timings={"view_fit_s": {view: seconds}, "shards": shards, "neighbours_s": neighbours_s},
        neighbours=neighbours,
    )
    features = Features(
        ids=[ids[r] for r in rows],
        per_view={view: sample},
        combined=sample,
        view_keys=dict(view_keys),
        labels_true=None if labels_true is None else labels_true[rows],
        label_names=label_names,
        pca=pca,
        rows=rows,
    )
    return result, features


def _algorithm_note(job: ClusterJob, estimator: Any, levels_setting: Any) -> str:
    """What ran on the shards, for metrics.json's engine note (the last seed's fit)."""
    if job.algorithm == "spectral":
        return (
            f"landmark spectral clustering on the shards ({estimator.n_landmarks_} landmarks, "
            f"each row's {estimator.landmark_neighbors} nearest found on the shards; the "
            "landmark graph's eigenproblem and the embedding's K-means on the driver)"
        )
    return f"{job.levels_note()} (clustering.kmeans_levels={levels_setting})"
