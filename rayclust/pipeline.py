"""One clustering run, end to end: scan -> extract -> clustering -> record.

This is the only module that knows the whole flow; every stage it calls works alone:
``scan`` (rayclust.images), ``extract`` (rayclust.views, into the FeatureStore), the
clustering stage (rayclust.clustering: reduce, cluster, consensus, scores), then the run
folder, MLflow and the report.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import runs
from rayclust.clustering import Features, cluster_features, load_features, resolve_n_clusters
from rayclust.config import ConfigError, RunConfig
from rayclust.images import ImageRecord, ImageSet, SkippedImage
from rayclust.ray_session import ensure_ray
from rayclust.selection import run_views
from rayclust.views.store import default_cache_dir

if TYPE_CHECKING:
    from rayclust.views import ExtractionResult

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


@dataclass
class Extraction:
    """The scan and extraction stages' outcome: the images every view has features for."""

    images: ImageSet  # usable images; skipped: those skipped at scan or failed to decode
    results: dict[str, ExtractionResult]  # per view

    @property
    def view_keys(self) -> dict[str, str]:
        """View name -> FeatureStore spec key, the features' cache key."""
        return {view: result.spec_key for view, result in self.results.items()}


def scan(config: RunConfig) -> ImageSet:
    """List and probe ``input.source`` with the whole input section (labels, pixel limit,
    storage options of a bucket)."""
    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    return ImageSet.from_source(
        config.input.source,
        labels_from_folders=config.input.labels_from_folders,
        max_pixels=config.input.max_pixels,
        storage_options=config.input.storage_options,
    )


def extract(
    config: RunConfig,
    image_set: ImageSet,
    views: list[str] | None = None,
    progress: bool = True,
) -> Extraction:
    """Features of every view (``config.views`` unless given) into the FeatureStore; images
    that fail to decode for a view are skipped. Needs Ray (``ensure_ray``)."""
    from rayclust.views import extract_views

    results = extract_views(
        image_set.records,
        views if views is not None else config.views,
        Path(config.extraction.cache_dir or default_cache_dir()),
        config.extraction,
        max_pixels=config.input.max_pixels,
        progress=progress,
        storage_options=config.input.storage_options,
    )
    failed_ids: dict[str, str] = {}  # path -> the first view's reason
    for result in results.values():
        for failure in result.failed:
            failed_ids.setdefault(failure.path, failure.reason)
    usable = image_set.without(
        SkippedImage(record.path, failed_ids[record.path], stage="decode")
        for record in image_set.records
        if record.path in failed_ids
    )
    if not usable.records:
        raise ConfigError(f"no usable images in {config.input.source}: all were skipped")
    return Extraction(images=usable, results=results)


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run one clustering job as configured and write its run folder and MLflow run."""
    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    config = resolve_run_paths(config)
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    image_set = scan(config)
    timings["scan_s"] = time.perf_counter() - start
    log.info("found %d images, skipped %d", len(image_set.records), len(image_set.skipped))

    ensure_ray(config.ray.address, config.ray.num_cpus)
    start = time.perf_counter()
    extraction = extract(config, image_set, views=run_views(config), progress=progress)
    timings["extract_s"] = time.perf_counter() - start
    records, skipped = extraction.images.records, extraction.images.skipped

    start = time.perf_counter()
    features: Features = load_features(
        config, extraction.images.image_ids, extraction.view_keys, extraction.images.labels
    )
    n_clusters = resolve_n_clusters(config, len(records), features.label_names)
    clustering = cluster_features(features, config, n_clusters)
    timings["cluster_s"] = time.perf_counter() - start

    primary = clustering.primary
    outcome = clustering.rows[primary]
    labels = clustering.labels
    n_found = int(len(np.unique(labels)))
    metrics = {
        "n_images": len(records),
        "n_skipped": len(skipped),
        "n_clusters": n_found,
        "algorithm": clustering.algorithm,
        "backend": clustering.backend,
        "views": list(features.per_view),
        "view_keys": features.view_keys,
        "primary": primary,
        "summary": outcome["summary"],
        "per_seed": outcome["per_seed"],
        "chosen_seed": outcome["chosen_seed"],
        "table": clustering.table(),
        "leader": clustering.leader,
        "view_weights": clustering.weights,
        "notes": clustering.notes,
        "selection": clustering.selection,  # every candidate's score, the winner and why
        "extraction": {
            view: {"n_extracted": r.n_extracted, "n_cached": r.n_cached, "seconds": r.seconds}
            for view, r in extraction.results.items()
        },
        "timings": timings,
    }

    runs.write_config(run_dir, config)
    runs.write_manifest(run_dir, records)
    runs.write_skipped(run_dir, skipped)
    runs.write_assignments(
        run_dir,
        [r.path for r in records],
        [r.image_id for r in records],
        labels,
        [r.label for r in records],
    )
    runs.write_metrics(run_dir, metrics)
    runs.write_results(run_dir, clustering.markdown())
    if config.report.enabled:  # before MLflow, which then copies the whole folder
        _write_report(run_dir, features)
    run_id = None
    if config.tracking.enabled:
        table_means = {
            f"{row.replace(':', '.')}.{m}_mean": s["mean"]
            for row, summary in metrics["table"].items()
            for m, s in summary.items()
        }
        run_id = runs.record_in_mlflow(
            run_dir,
            config.to_dict(),
            {
                "n_images": len(records),
                "n_skipped": len(skipped),
                "n_clusters": n_found,
                **{f"{m}_mean": s["mean"] for m, s in outcome["summary"].items()},
                **{f"{m}_std": s["std"] for m, s in outcome["summary"].items()},
                **table_means,
            },
            config.tracking,
            config.name,
        )

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


def _write_report(run_dir: Path, features: Features) -> None:
    """The HTML report is a view of the results: its failure must never fail the run."""
    from rayclust.report import write_report

    try:
        path = write_report(run_dir, features=features, log_to_mlflow=False)
        log.info("report: %s", path)
    except Exception as exc:  # noqa: BLE001 - the results are already written
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)
