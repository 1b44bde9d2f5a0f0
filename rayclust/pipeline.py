"""One clustering run, end to end: images -> views -> features -> clustering -> scores -> record.

This is the only module that knows the whole flow; every stage it calls works alone.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rayclust import multiview
from rayclust.config import ConfigError, RunConfig
from rayclust.images import ImageRecord, ImageSet, SkippedImage
from rayclust.ray_session import ensure_ray
from rayclust.views.store import default_cache_dir

log = logging.getLogger("rayclust")

TABLE_METRICS = ["acc", "nmi", "ami", "ari", "pur", "fmi", "silhouette"]


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
        storage_options=config.input.storage_options,
    )
    timings["scan_s"] = time.perf_counter() - start
    log.info("found %d images, skipped %d", len(image_set.records), len(image_set.skipped))

    ensure_ray(config.ray.address, config.ray.num_cpus)
    start = time.perf_counter()
    results = extract_views(
        image_set.records,
        config.views,
        Path(config.extraction.cache_dir),
        config.extraction,
        max_pixels=config.input.max_pixels,
        progress=progress,
        storage_options=config.input.storage_options,
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
    per_view = {
        view: _reduce(feats, config.clustering.pca_dim)
        for view, feats in _feature_matrix(stores, ids, config.clustering.normalize).items()
    }
    combined = _combine_views(per_view)
    job = multiview.ClusterJob(
        algorithm=config.ensemble.view_algorithm or config.clustering.algorithm,
        n_clusters=n_clusters,
        seeds=config.clustering.seeds,
        backend=config.clustering.backend,
        n_neighbors=config.clustering.n_neighbors,
        silhouette_sample=config.evaluation.silhouette_sample,
    )
    if len(per_view) == 1:
        (view,) = per_view
        single = multiview.cluster_seeds(combined, job)
        rows = {
            f"view:{view}": multiview.score_partitions(
                single["partitions"], single["internal"], labels_true
            )
        }
        table = {"rows": rows, "backend": single["backend"]}
        primary = f"view:{view}"
    else:
        table = multiview.evaluate_views(
            per_view,
            combined,
            labels_true,
            job,
            config.ensemble.methods,
            min_relative_quality=config.ensemble.min_relative_quality,
        )
        rows, primary = table["rows"], config.ensemble.primary
        if primary not in rows:
            raise ConfigError(
                f"ensemble.primary={primary!r} was not computed; rows: {sorted(rows)}"
            )
    outcome = rows[primary]
    timings["cluster_s"] = time.perf_counter() - start

    labels = outcome["labels"]
    n_found = int(len(np.unique(labels)))
    metrics = {
        "n_images": len(records),
        "n_skipped": len(skipped),
        "n_clusters": n_found,
        "algorithm": job.algorithm,
        "backend": table["backend"],
        "views": list(per_view),
        "primary": primary,
        "summary": outcome["summary"],
        "per_seed": outcome["per_seed"],
        "chosen_seed": outcome["chosen_seed"],
        "table": {name: row["summary"] for name, row in rows.items()},
        "leader": table.get("leader"),
        "view_weights": table.get("weights"),
        "notes": table.get("notes", {}),
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
        [[r.path, r.image_id, int(c), r.label or ""] for r, c in zip(records, labels, strict=True)],
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    metric_names = [m for m in TABLE_METRICS if m in outcome["summary"]]
    (run_dir / "results.md").write_text(multiview.table_markdown(rows, metric_names))

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
                    **{
                        f"{row.replace(':', '.')}.{m}_mean": s["mean"]
                        for row, summary in metrics["table"].items()
                        for m, s in summary.items()
                    },
                }
            )
            mlrun.log_artifacts(run_dir)
            run_id = mlrun.run_id
        (run_dir / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))

    if config.report.enabled:
        _write_report(run_dir)

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


def _write_report(run_dir: Path) -> None:
    """The HTML report is a view of the results: its failure must never fail the run."""
    from rayclust.report import write_report

    try:
        path = write_report(run_dir)
        log.info("report: %s", path)
    except Exception as exc:  # noqa: BLE001 - the results are already written
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
