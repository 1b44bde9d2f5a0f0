"""One clustering run, end to end: scan -> extract -> clustering -> record.

This is the only module that knows the whole flow; every stage it calls works alone:
``scan`` (rayclust.images), ``extract`` (rayclust.views, into the FeatureStore), the
clustering stage (rayclust.clustering: reduce, cluster, consensus, scores), then the run
folder, MLflow and the report.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import runs
from rayclust.cluster import UnusableFeaturesError
from rayclust.clustering import (
    ClusteringResult,
    Features,
    cluster_features,
    load_features,
    resolve_n_clusters,
)
from rayclust.config import ConfigError, RunConfig
from rayclust.images import CollectionError, ImageRecord, ImageSet, SkippedImage
from rayclust.ray_session import ensure_ray
from rayclust.reuse.model import save_run_model
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
    storage options of a bucket). A source that cannot be used (no usable image, a list
    file without a path column) is a ``ConfigError``."""
    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    try:
        return ImageSet.from_source(
            config.input.source,
            labels_from_folders=config.input.labels_from_folders,
            max_pixels=config.input.max_pixels,
            storage_options=config.input.storage_options,
        )
    except CollectionError as exc:
        raise ConfigError(str(exc)) from None


def check_views(views: list[str]) -> None:
    """Every view name resolves: an unknown view fails here, before any scan or extraction."""
    from rayclust.views import UnknownViewError, resolve_view

    for view in views:
        try:
            resolve_view(view)
        except (UnknownViewError, ValueError) as exc:
            raise ConfigError(f"views: {exc}") from None


def prepare_output(run_dir: Path) -> Path | None:
    """Make the run folder and prove it writable, before any heavy work.

    Returns the top folder this call created (to remove if the run fails), None when the
    folder was there. A file in the way or a folder that cannot be written is a
    ``ConfigError`` naming it.
    """
    top = None
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        top, probe = probe, probe.parent
    if not probe.is_dir():
        what = "the output" if probe == run_dir else f"{probe}, on the way to the output,"
        raise ConfigError(f"output {run_dir}: {what} is a file, not a folder; give another path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir) as handle:
            handle.write(b"rayclust")  # the run folder takes files: checked before the scan
    except OSError as exc:
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        raise ConfigError(
            f"output folder {run_dir} is not writable ({exc.strerror or exc}); "
            "give another --output"
        ) from None
    return top


def remove_failed_output(top: Path | None) -> None:
    """Remove what :func:`prepare_output` created for a run that failed (nothing else)."""
    if top is not None:
        shutil.rmtree(top, ignore_errors=True)


def extract(
    config: RunConfig,
    image_set: ImageSet,
    views: list[str] | None = None,
    progress: bool = True,
) -> Extraction:
    """Features of every view (``config.views`` unless given) into the FeatureStore; images
    that fail to decode for a view are skipped. The engine is ``extraction.engine`` (``auto``:
    in this process on one machine; with Ray, started or joined as ``config.ray`` says,
    when a cluster is there)."""
    from rayclust.views import extract_views, resolve_engine

    engine = resolve_engine(config.extraction, config.ray.address)
    if engine != "local":
        ensure_ray(config.ray.address, config.ray.num_cpus)
    results = extract_views(
        image_set.records,
        views if views is not None else config.views,
        Path(config.extraction.cache_dir or default_cache_dir()),
        config.extraction,
        max_pixels=config.input.max_pixels,
        progress=progress,
        storage_options=config.input.storage_options,
        engine=engine,
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


def scan_on_workers(config: RunConfig, run_dir: Path, views: list[str] | None = None) -> Extraction:
    """``extraction.scan: workers``: the driver lists names only; the stream engine's workers
    read, hash, probe and extract (one read per file for every view); the manifest and
    skipped parts land in ``run_dir/scan`` as batches arrive and are read back here."""
    from rayclust.images import ScanParts, iter_source
    from rayclust.views import extraction_specs, scan_and_extract_stream

    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    try:
        names = iter_source(
            config.input.source, config.input.labels_from_folders, config.input.storage_options
        )
        ensure_ray(config.ray.address, config.ray.num_cpus)
        results = scan_and_extract_stream(
            names,
            extraction_specs(
                views if views is not None else config.views, config.extraction, "stream"
            ),
            Path(config.extraction.cache_dir or default_cache_dir()),
            config.extraction,
            run_dir / "scan",
            config.input.max_pixels,
            storage_options=config.input.storage_options,
        )
    except CollectionError as exc:
        raise ConfigError(str(exc)) from None
    images = ScanParts(run_dir / "scan").image_set()
    if not images.records:
        raise ConfigError(
            f"image source {config.input.source!r} has no usable images"
            f" ({len(images.skipped)} files skipped)"
        )
    return Extraction(images=images, results=results)


def _mvec_record(
    clustering: ClusteringResult,
    features: Features,
    extraction: Extraction,
    timings: dict[str, float],
) -> dict[str, Any]:
    """MVEC's time model (t1 extraction, t2 clustering per view, t3 consensus) against the
    measured wall time, and the paper's scores (MIX, FM_Ck) where labels are known."""
    from rayclust.ensemble import paper_scores, time_model

    t = clustering.timings
    t3 = sum(t["consensus_s"].values())
    wall = timings["extract_s"] + t["views_stage_s"] + t3
    record: dict[str, Any] = {
        "mvec_time": time_model(
            {view: r.seconds for view, r in extraction.results.items()},
            t["view_fit_s"],
            t3,
            wall=wall,
        )
        | {
            "consensus_s": t["consensus_s"],
            "extract_stage_s": timings["extract_s"],
            "views_stage_s": t["views_stage_s"],  # per-view clustering, Ray tasks included
        }
    }
    if features.labels_true is not None:
        record["mvec_scores"] = paper_scores(
            clustering.rows, features.labels_true, features.label_names
        )
    return record


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run one clustering job as configured and write its run folder and MLflow run.

    The user's mistakes fail first, as ``ConfigError``: the config is checked at load, then
    the views and the output folder here, then the source by the scan, all before
    extraction. A run that fails leaves no run folder it created; a failure to write the
    record (a full disk) is a ``runs.RunRecordError``.
    """
    if not config.input.source:
        raise ConfigError("input.source is not set: give a folder or a list file of images")
    config = resolve_run_paths(config)
    check_views(config.views)
    runs.check_tracking(config.tracking, config.output)  # before any work: seconds, one line
    run_dir = Path(config.output)
    created = prepare_output(run_dir)
    try:
        return _run(config, run_dir, progress)
    except BaseException:
        remove_failed_output(created)
        raise


def _run(config: RunConfig, run_dir: Path, progress: bool) -> RunResult:
    timings: dict[str, float] = {}
    if config.extraction.scan == "workers":
        return _finish(config, run_dir, _scan_on_workers_timed(config, run_dir, timings), timings)

    start = time.perf_counter()
    image_set = scan(config)
    timings["scan_s"] = time.perf_counter() - start
    log.info("found %d images, skipped %d", len(image_set.records), len(image_set.skipped))
    # Before extraction: clusters to count must be known (given, or labels to count).
    resolve_n_clusters(
        config, len(image_set.records), image_set.label_names if image_set.has_labels else []
    )

    start = time.perf_counter()
    cache = config.extraction.cache_dir
    with runs.recording(cache, "the feature cache", "--cache-dir", only_disk_full=True):
        extraction = extract(config, image_set, views=run_views(config), progress=progress)
    timings["extract_s"] = time.perf_counter() - start
    return _finish(config, run_dir, extraction, timings)


def _scan_on_workers_timed(
    config: RunConfig, run_dir: Path, timings: dict[str, float]
) -> Extraction:
    start = time.perf_counter()
    cache = config.extraction.cache_dir
    with runs.recording(cache, "the feature cache", "--cache-dir", only_disk_full=True):
        extraction = scan_on_workers(config, run_dir, views=run_views(config))
    timings["scan_s"] = 0.0  # the workers scan while they extract
    timings["extract_s"] = time.perf_counter() - start
    return extraction


def _finish(
    config: RunConfig, run_dir: Path, extraction: Extraction, timings: dict[str, float]
) -> RunResult:
    """Clustering and record, whichever way the images were scanned."""
    records, skipped = extraction.images.records, extraction.images.skipped

    start = time.perf_counter()
    features: Features = load_features(
        config, extraction.images.image_ids, extraction.view_keys, extraction.images.labels
    )
    n_clusters = resolve_n_clusters(config, len(records), features.label_names)
    try:
        clustering = cluster_features(features, config, n_clusters)
    except UnusableFeaturesError as exc:
        cause = getattr(exc, "cause", None) or exc  # unwrapped when it came from a Ray task
        hint = "" if config.clustering.normalize else "; drop --no-normalize to scale them"
        raise ConfigError(
            f"the features of {', '.join(config.views)} cannot be clustered: "
            f"{str(cause).splitlines()[0]}{hint}"
        ) from None
    timings["cluster_s"] = time.perf_counter() - start
    notes = dict(clustering.notes)
    pca_note = _pca_note(config, len(records), extraction.results)
    if pca_note:
        log.warning("%s", pca_note)
        notes["pca"] = pca_note

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
        "notes": notes,
        "selection": clustering.selection,  # every candidate's score, the winner and why
        "extraction": {
            view: {"n_extracted": r.n_extracted, "n_cached": r.n_cached, "seconds": r.seconds}
            for view, r in extraction.results.items()
        },
        "timings": timings,
    }
    if "consensus_s" in clustering.timings:  # a multi-view consensus ran (not a selection)
        metrics |= _mvec_record(clustering, features, extraction, timings)

    with runs.recording(run_dir):
        run_id = _record(config, run_dir, extraction, clustering, features, metrics, notes)

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


def _pca_note(config: RunConfig, n_images: int, results: dict[str, Any]) -> str | None:
    """Why ``clustering.pca_dim`` was not applied to some view, or None (PCA keeps fewer
    components than both the images and a view's dimensions)."""
    pca_dim = config.clustering.pca_dim
    if pca_dim is None:
        return None
    skipped = [
        f"{view} (dim {result.dim})"
        for view, result in results.items()
        if result.dim is not None and pca_dim >= min(n_images, result.dim)
    ]
    if not skipped:
        return None
    return (
        f"clustering.pca_dim={pca_dim} is not below min(n_images={n_images}, view dim) for "
        f"{', '.join(skipped)}: PCA was not applied there; those features were clustered "
        "as they are"
    )


def _record(config, run_dir, extraction, clustering, features, metrics, notes) -> str | None:
    """Write the run folder (and the MLflow run); returns the MLflow run id."""
    records, skipped = extraction.images.records, extraction.images.skipped
    outcome = clustering.rows[clustering.primary]
    runs.write_config(run_dir, config)
    runs.write_manifest(run_dir, records)
    runs.write_skipped(run_dir, skipped)
    runs.write_assignments(
        run_dir,
        [r.path for r in records],
        [r.image_id for r in records],
        clustering.labels,
        [r.label for r in records],
    )
    specs = {view: result.spec for view, result in extraction.results.items()}
    save_run_model(run_dir, features, clustering, specs, config)  # for `rayclust predict`
    runs.write_metrics(run_dir, metrics)
    markdown = clustering.markdown()
    if notes.get("pca"):
        markdown += f"\nNote: {notes['pca']}\n"
    runs.write_results(run_dir, markdown)
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
                "n_clusters": metrics["n_clusters"],
                **{f"{m}_mean": s["mean"] for m, s in outcome["summary"].items()},
                **{f"{m}_std": s["std"] for m, s in outcome["summary"].items()},
                **table_means,
            },
            config.tracking,
            config.name,
        )
    return run_id


def _write_report(run_dir: Path, features: Features) -> None:
    """The HTML report is a view of the results: its failure must never fail the run."""
    from rayclust.report import write_report

    try:
        path = write_report(run_dir, features=features, log_to_mlflow=False)
        log.info("report: %s", path)
    except OSError as exc:
        if exc.errno in runs.DISK_FULL_ERRNOS:  # a truncated report must not pass as done
            raise
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)
    except Exception as exc:  # noqa: BLE001 - the results are already written
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)
