"""One clustering run, end to end: images -> views -> features -> clustering -> scores -> record.

This is the only module that knows the whole flow; every stage it calls works alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.config import ConfigError, RunConfig
from rayclust.images import ImageRecord, ImageSet, SkippedImage

log = logging.getLogger("rayclust")


@dataclass
class RunResult:
    run_dir: Path
    n_images: int
    n_skipped: int
    n_clusters: int
    labels: np.ndarray  # cluster per usable image, in `records` order
    records: list[ImageRecord]
    metrics: dict[str, Any]
    mlflow_run_id: str | None = None
    extraction: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    env = os.environ.get("RAYCLUST_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rayclust" / "features"


def resolve_run_paths(config: RunConfig) -> RunConfig:
    """Fill in the run name, run folder and cache folder so the written config is complete."""
    name = config.name
    if name is None:
        stem = Path(config.input.source or "run").name or "run"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "run"
        name = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    output = config.output or str(Path("runs") / name)
    cache_dir = config.extraction.cache_dir or str(default_cache_dir())
    return replace(
        config, name=name, output=output, extraction=replace(config.extraction, cache_dir=cache_dir)
    )


def _ensure_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=config.ray.address,
        num_cpus=config.ray.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def _feature_matrix(
    stores: dict[str, Any], ids: list[str], normalize: bool
) -> dict[str, np.ndarray]:
    per_view = {}
    for view, store in stores.items():
        feats = np.asarray(store.get(ids), dtype=np.float32)
        if normalize:
            feats = _l2_normalize(feats)
        per_view[view] = feats
    return per_view


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _reduce(x: np.ndarray, pca_dim: int | None, seed: int = 0) -> np.ndarray:
    if pca_dim is None or pca_dim >= min(x.shape):
        return x
    from sklearn.decomposition import PCA

    return PCA(n_components=pca_dim, random_state=seed).fit_transform(x).astype(np.float32)


def _combine_views(per_view: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate views, each scaled to unit average row norm so no view dominates by size."""
    if len(per_view) == 1:
        return next(iter(per_view.values()))
    parts = []
    for feats in per_view.values():
        scale = np.sqrt(np.mean(np.sum(feats.astype(np.float64) ** 2, axis=1))) or 1.0
        parts.append(feats / scale)
    return np.concatenate(parts, axis=1).astype(np.float32)


def make_estimator(algorithm: str, n_clusters: int | str, seed: int, config: RunConfig):
    from rayclust import cluster

    clustering = config.clustering
    if algorithm == "kmeans":
        return cluster.KMeans(n_clusters=n_clusters, random_state=seed, backend=clustering.backend)
    if algorithm == "spectral":
        return cluster.SpectralClustering(
            n_clusters=n_clusters,
            n_neighbors=clustering.n_neighbors,
            random_state=seed,
            backend=clustering.backend,
        )
    raise ConfigError(f"clustering.algorithm={algorithm!r} is not one of 'kmeans', 'spectral'")


def cluster_and_score(
    features: np.ndarray,
    labels_true: np.ndarray | None,
    n_clusters: int | str,
    config: RunConfig,
) -> dict[str, Any]:
    """Cluster once per seed; score each; pick the label-free best seed for the assignments."""
    from rayclust import metrics

    per_seed, partitions = [], []
    backend = None
    for seed in range(config.clustering.seeds):
        estimator = make_estimator(config.clustering.algorithm, n_clusters, seed, config)
        labels = np.asarray(estimator.fit_predict(features))
        backend = getattr(estimator, "backend_", config.clustering.backend)
        scores = metrics.internal_scores(
            features, labels, sample_size=config.evaluation.silhouette_sample, random_state=seed
        )
        if labels_true is not None:
            scores |= metrics.external_scores(labels_true, labels)
        per_seed.append({"seed": seed, **scores})
        partitions.append(labels)
    silhouettes = [s.get("silhouette", float("nan")) for s in per_seed]
    best = int(np.nanargmax(silhouettes)) if not np.all(np.isnan(silhouettes)) else 0
    summary = metrics.summarize([{k: v for k, v in s.items() if k != "seed"} for s in per_seed])
    return {
        "summary": summary,
        "per_seed": per_seed,
        "chosen_seed": best,
        "labels": partitions[best],
        "backend": backend,
    }


def _encode_labels(labels: list[str | None]) -> tuple[np.ndarray | None, list[str]]:
    if not labels or any(label is None for label in labels):
        return None, []
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels]), names


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run one clustering job as configured and write its run folder and MLflow run."""
    from rayclust import tracking
    from rayclust.views import FeatureStore, extract_views

    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    config = resolve_run_paths(config)
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    image_set = ImageSet.from_source(
        config.input.source,
        labels_from_folders=config.input.labels_from_folders,
        max_pixels=config.input.max_pixels,
    )
    timings["scan_s"] = time.perf_counter() - start
    log.info("found %d images, skipped %d", len(image_set.records), len(image_set.skipped))

    _ensure_ray(config)
    start = time.perf_counter()
    results = extract_views(
        image_set.records,
        config.views,
        Path(config.extraction.cache_dir),
        config.extraction,
        max_pixels=config.input.max_pixels,
        progress=progress,
    )
    timings["extract_s"] = time.perf_counter() - start

    failed_ids: dict[str, str] = {}
    for result in results.values():
        for failure in result.failed:
            failed_ids.setdefault(failure.path, failure.reason)
    skipped = list(image_set.skipped)
    records = []
    for record in image_set.records:
        if record.path in failed_ids:
            skipped.append(SkippedImage(record.path, failed_ids[record.path], stage="decode"))
        else:
            records.append(record)
    if not records:
        raise ConfigError(f"no usable images in {config.input.source}: all were skipped")

    labels_true, label_names = _encode_labels([r.label for r in records])
    n_clusters = config.clustering.n_clusters
    if n_clusters is None:
        if labels_true is None:
            raise ConfigError(
                "clustering.n_clusters is not set and there are no labels to count: "
                "give --clusters K (or --clusters auto)"
            )
        n_clusters = len(label_names)
    if isinstance(n_clusters, int) and n_clusters > len(records):
        raise ConfigError(
            f"n_clusters={n_clusters} should be <= the number of usable images={len(records)}"
        )

    start = time.perf_counter()
    ids = [r.image_id for r in records]
    stores = {
        view: FeatureStore(Path(config.extraction.cache_dir), result.spec_key)
        for view, result in results.items()
    }
    per_view = _feature_matrix(stores, ids, config.clustering.normalize)
    features = _reduce(_combine_views(per_view), config.clustering.pca_dim)
    outcome = cluster_and_score(features, labels_true, n_clusters, config)
    view_tables = {}
    if len(per_view) > 1:
        for view, feats in per_view.items():
            one = cluster_and_score(
                _reduce(feats, config.clustering.pca_dim), labels_true, n_clusters, config
            )
            view_tables[view] = one["summary"]
    timings["cluster_s"] = time.perf_counter() - start

    labels = outcome["labels"]
    n_found = int(len(np.unique(labels)))
    metrics = {
        "n_images": len(records),
        "n_skipped": len(skipped),
        "n_clusters": n_found,
        "algorithm": config.clustering.algorithm,
        "backend": outcome["backend"],
        "views": list(per_view),
        "summary": outcome["summary"],
        "per_seed": outcome["per_seed"],
        "chosen_seed": outcome["chosen_seed"],
        "per_view": view_tables,
        "extraction": {
            view: {"n_extracted": r.n_extracted, "n_cached": r.n_cached, "seconds": r.seconds}
            for view, r in results.items()
        },
        "timings": timings,
    }

    config.to_yaml(run_dir / "config.yaml")
    image_set_usable = ImageSet(records=records, skipped=skipped)
    image_set_usable.write_manifest(run_dir / "manifest.csv")
    image_set_usable.write_skipped(run_dir / "skipped.csv")
    _write_csv(
        run_dir / "assignments.csv",
        ["path", "image_id", "cluster", "label"],
        [[r.path, r.image_id, int(c), r.label or ""] for r, c in zip(records, labels)],
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))

    run_id = None
    if config.tracking.enabled:
        uri = config.tracking.uri or tracking.default_tracking_uri(run_dir.parent)
        with tracking.start_run(
            config.to_dict(), uri=uri, experiment=config.tracking.experiment, run_name=config.name
        ) as mlrun:
            mlrun.log_metrics(
                {
                    "n_images": len(records),
                    "n_skipped": len(skipped),
                    "n_clusters": n_found,
                    **{f"{m}_mean": s["mean"] for m, s in outcome["summary"].items()},
                    **{f"{m}_std": s["std"] for m, s in outcome["summary"].items()},
                }
            )
            mlrun.log_artifacts(run_dir)
            run_id = mlrun.run_id
        (run_dir / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))

    return RunResult(
        run_dir=run_dir,
        n_images=len(records),
        n_skipped=len(skipped),
        n_clusters=n_found,
        labels=labels,
        records=records,
        metrics=metrics,
        mlflow_run_id=run_id,
        extraction=metrics["extraction"],
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
