"""One clustering run, end to end: scan -> extract -> clustering -> record.

This is the only module that knows the whole flow; every stage it calls works alone:
``scan`` (rayclust.images), ``extract`` (rayclust.views, into the FeatureStore), the
clustering stage (rayclust.clustering: reduce, cluster, consensus, scores), then the run
folder, MLflow and the report.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import remote, run_mlflow, runs
from rayclust.cluster import UnusableFeaturesError
from rayclust.clustering import (
    Features,
    cluster_features,
    clusters_each_view,
    load_features,
    resolve_n_clusters,
)
from rayclust.clustering_ray import cluster_sharded
from rayclust.config import ConfigError, RunConfig
from rayclust.images import CollectionError, ImageRecord, ImageSet, ImageTable, SkippedImage
from rayclust.ray_session import ensure_ray
from rayclust.reuse.model import save_run_model
from rayclust.selection import run_views
from rayclust.view_overlap import EarlyViews, mvec_record
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
    labels: np.ndarray  # cluster per usable image, in `images` order
    images: ImageSet | ImageTable
    metrics: dict[str, Any]
    mlflow_run_id: str | None = None
    extraction: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # report.html, when it was written

    @property
    def records(self) -> list[ImageRecord]:
        """The usable images as records (an object per image: at a million images read the
        columns of ``images`` instead)."""
        return self.images.records


def resolve_run_paths(config: RunConfig) -> RunConfig:
    """Fill in the run name, run folder and cache folder, and make every local path
    absolute: the written config is complete and re-runs from any directory. The name is
    the output folder's when one is given, else the source's folder name and the time."""
    name = config.name
    if name is None and config.output:
        name = Path(os.path.abspath(os.path.expanduser(config.output))).name or None
    if name is None:
        stem = Path(config.input.source or "run").name or "run"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "run"
        name = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    source = config.input.source
    return replace(
        config,
        name=name,
        output=_absolute(config.output or str(Path("runs") / name)),
        views=[_absolute_checkpoint(view) for view in config.views],
        input=replace(config.input, source=_absolute(source) if source else source),
        extraction=replace(
            config.extraction,
            cache_dir=_absolute(config.extraction.cache_dir or str(default_cache_dir())),
        ),
    )


def _absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); a bucket URI as it is."""
    return path if remote.is_remote(path) else os.path.abspath(os.path.expanduser(path))


def store_root(config: RunConfig) -> str | Path:
    """The FeatureStore root: a local folder, or an s3:// / gs:// prefix kept a str."""
    cache = config.extraction.cache_dir
    if cache and remote.is_remote(cache):
        return cache
    return Path(cache or default_cache_dir())


def check_store(config: RunConfig) -> None:
    """A feature store in a bucket that does not exist (or cannot be reached) is a one-line
    ``ConfigError`` before any image is read, as a missing ``input.source`` bucket is."""
    cache = config.extraction.cache_dir
    if not cache or not remote.is_remote(cache):
        return
    try:
        remote.check_bucket(cache, config.input.storage_options)
    except ImportError as exc:
        raise ConfigError(f"extraction.cache_dir={cache!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the backends raise their own error types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"extraction.cache_dir={cache!r}: {reason}") from None


def _absolute_checkpoint(view: str) -> str:
    """``arch@ckpt.pt`` with the checkpoint's path absolute; other view names as they are."""
    if "@" not in view:
        return view
    base, path = view.split("@", 1)
    return f"{base}@{_absolute(path)}"


@dataclass
class Extraction:
    """The scan and extraction stages' outcome: the images every view has features for."""

    images: (
        ImageSet | ImageTable
    )  # usable images; skipped: those skipped at scan or failed to decode
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
    """Every view name resolves and its weights can be had here: an unknown view, or hub
    weights neither cached nor reachable, fail here, before any scan or extraction."""
    from rayclust.views import UnknownViewError, WeightsUnavailableError, check_weights

    for view in views:
        try:
            check_weights(view)
        except (UnknownViewError, ValueError, WeightsUnavailableError) as exc:
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
    on_view_done: Callable[[str, ExtractionResult], None] | None = None,
) -> Extraction:
    """Features of every view (``config.views`` unless given) into the FeatureStore; images
    that fail to decode for a view are skipped. The engine is ``extraction.engine`` (``auto``:
    in this process on one machine; with Ray, started or joined as ``config.ray`` says,
    when a cluster is there). ``on_view_done``: see :func:`rayclust.views.extract_views`."""
    from rayclust.views import extract_views, resolve_engine

    engine = resolve_engine(config.extraction, config.ray.address)
    if engine != "local":
        ensure_ray(config.ray.address, config.ray.num_cpus)
    results = extract_views(
        image_set.records,
        views if views is not None else config.views,
        store_root(config),
        config.extraction,
        max_pixels=config.input.max_pixels,
        progress=progress,
        storage_options=config.input.storage_options,
        engine=engine,
        on_view_done=on_view_done,
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
            store_root(config),
            config.extraction,
            run_dir / "scan",
            config.input.max_pixels,
            storage_options=config.input.storage_options,
        )
    except CollectionError as exc:
        raise ConfigError(str(exc)) from None
    images = ScanParts(run_dir / "scan").image_set()
    if not len(images):
        raise ConfigError(
            f"image source {config.input.source!r} has no usable images"
            f" ({len(images.skipped)} files skipped)"
        )
    return Extraction(images=images, results=results)


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
    check_store(config)
    run_mlflow.check_tracking(config.tracking, config.output)  # before any work: seconds, one line
    run_dir = Path(config.output)
    created = prepare_output(run_dir)
    recording = None
    try:
        # Opened before the scan: the MLflow run's duration is the run's, and a run that
        # fails is there, marked FAILED (KILLED when stopped).
        recording = _open_recording(config, run_dir)
        return _run(config, run_dir, progress, recording)
    except BaseException as exc:
        if recording is not None:
            recording.fail(exc)
        remove_failed_output(created)
        raise


def _open_recording(config: RunConfig, run_dir: Path) -> run_mlflow.MlflowRecording | None:
    if not config.tracking.enabled:
        return None
    tags = {
        "rayclust.kind": "cluster",
        "rayclust.source": config.input.source,
        "rayclust.views": ", ".join(config.views),
    }
    return run_mlflow.open_mlflow_run(
        run_dir, config.to_dict(), config.tracking, config.name, tags=tags
    )


def _run(
    config: RunConfig, run_dir: Path, progress: bool, recording: run_mlflow.MlflowRecording | None
) -> RunResult:
    timings: dict[str, float] = {}
    early: EarlyViews | None = None  # extraction.scan=workers: no scan before extraction
    overlap = False
    if config.extraction.scan != "workers":
        start = time.perf_counter()
        image_set = scan(config)
        timings["scan_s"] = time.perf_counter() - start
        n_skipped = len(image_set.skipped)
        log.info(
            "%d images in %s%s",
            len(image_set.records),
            config.input.source,
            f"; {n_skipped} file{'s' if n_skipped > 1 else ''} skipped" if n_skipped else "",
        )
        # Before extraction: clusters to count must be known (given, or labels to count).
        scanned_k = resolve_n_clusters(
            config, len(image_set.records), image_set.label_names if image_set.has_labels else []
        )
        # MVEC's scheme: a view is clustered as soon as its features are stored.
        early = EarlyViews(config, image_set, scanned_k)
        overlap = clusters_each_view(config, len(config.views))

    start = time.perf_counter()
    cache = config.extraction.cache_dir
    try:
        with runs.recording(cache, "the feature cache", "--cache-dir", only_disk_full=True):
            if early is None:
                extraction = scan_on_workers(config, run_dir, views=run_views(config))
                timings["scan_s"] = 0.0  # the workers scan while they extract
            else:
                extraction = extract(
                    config,
                    image_set,
                    views=run_views(config),
                    progress=progress,
                    on_view_done=early.on_view_done if overlap else None,
                )
        timings["extract_s"] = time.perf_counter() - start
        lines = [_extraction_line(view, result) for view, result in extraction.results.items()]
        log.info("features: %s", "; ".join(lines))
        usable = extraction.images  # columns after a worker scan: no object per image
        n_images, skipped = len(usable), usable.skipped

        start = time.perf_counter()
        labels = usable.labels
        n_clusters = resolve_n_clusters(
            config, n_images, usable.label_names if usable.has_labels else []
        )
        if config.clustering.engine == "ray":
            # The shards read the features; the driver gets labels and a bounded sample.
            clustering, features = cluster_sharded(
                config, usable.image_ids, extraction.view_keys, labels, n_clusters
            )
            clustered = {}
        else:
            features, clustered = (
                early.collect(usable.image_ids, extraction.view_keys, labels, n_clusters)
                if early is not None
                else (None, {})
            )
            if features is None:  # the local engine holds every row: lists are no burden
                features = load_features(
                    config, list(usable.image_ids), extraction.view_keys, list(labels)
                )
            clustering = cluster_features(
                features,
                config,
                n_clusters,
                clustered={v: e.clustered for v, e in clustered.items()},
            )
    except UnusableFeaturesError as exc:
        cause = getattr(exc, "cause", None) or exc  # unwrapped when it came from a Ray task
        hint = "" if config.clustering.normalize else "; drop --no-normalize to scale them"
        raise ConfigError(
            f"the features of {', '.join(config.views)} cannot be clustered: "
            f"{str(cause).splitlines()[0]}{hint}"
        ) from None
    finally:
        if early is not None:
            early.close()
    timings["cluster_s"] = time.perf_counter() - start
    notes = dict(clustering.notes)
    pca_note = _pca_note(config, n_images, extraction.results)
    if pca_note:
        log.warning("%s", pca_note)
        notes["pca"] = pca_note

    primary = clustering.primary
    outcome = clustering.rows[primary]
    labels = clustering.labels
    n_found = int(len(np.unique(labels)))
    metrics = {
        "n_images": n_images,
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
    if features.rows is not None:  # clustering.engine=ray: what the driver held
        metrics["driver_sample"] = {
            "rows": len(features),
            "of": n_images,
            "setting": config.clustering.driver_sample,
            "used_for": "internal scores, report map / thumbnails, predict model",
        }
    if "consensus_s" in clustering.timings:  # a multi-view consensus ran (not a selection)
        spans = early.spans(clustered) if early is not None and overlap else None
        metrics |= mvec_record(clustering, features, extraction.results, timings, spans)

    with runs.recording(run_dir):
        run_id = _record(
            config, run_dir, extraction, clustering, features, metrics, notes, recording
        )
    report = run_dir / runs.REPORT_FILES[0]

    return RunResult(
        run_dir=run_dir,
        n_images=n_images,
        n_skipped=len(skipped),
        n_clusters=n_found,
        labels=labels,
        images=usable,
        metrics=metrics,
        mlflow_run_id=run_id,
        extraction=metrics["extraction"],
        report=report if config.report.enabled and report.is_file() else None,
    )


def _extraction_line(view: str, result: ExtractionResult) -> str:
    """``efficientnet_lite0: 120 images from the cache`` or ``...: 100 extracted (12.3 s),
    20 from the cache``."""
    parts = []
    if result.n_extracted:
        parts.append(f"{result.n_extracted} extracted ({result.seconds:.1f} s)")
    if result.n_cached:
        parts.append(f"{result.n_cached} {'images ' if not parts else ''}from the cache")
    if result.failed:
        parts.append(f"{len(result.failed)} failed to decode")
    return f"{view}: {', '.join(parts) or 'no images'}"


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


def _record(
    config, run_dir, extraction, clustering, features, metrics, notes, recording
) -> str | None:
    """Write the run folder and finish the MLflow run; returns the MLflow run id."""
    images = extraction.images  # iterated, not copied: a column per field after a worker scan
    runs.write_config(run_dir, config)
    runs.write_manifest(run_dir, images)
    runs.write_skipped(run_dir, images.skipped)
    runs.write_assignments(
        run_dir, images.paths, images.image_ids, clustering.labels, images.labels
    )
    specs = {view: result.spec for view, result in extraction.results.items()}
    # For `rayclust predict`; from the sample's rows where the driver holds only a sample.
    sampled = (
        clustering
        if features.rows is None
        else replace(clustering, labels=clustering.labels[features.rows])
    )
    save_run_model(run_dir, features, sampled, specs, config)
    runs.write_metrics(run_dir, metrics)
    markdown = clustering.markdown()
    if notes.get("pca"):
        markdown += f"\nNote: {notes['pca']}\n"
    runs.write_results(run_dir, markdown)
    if config.report.enabled:  # before MLflow, which then copies the whole folder
        _write_report(run_dir, features, clustering.neighbours)
    if recording is None:
        return None
    return recording.finish(
        _mlflow_metrics(metrics),
        tags=_outcome_tags(metrics),
        dataset=_manifest_dataset(config, images),
    )


def _outcome_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """What the run answered with: the method (the selected candidate, or the primary row),
    the backend, and each view's weight in it (a single representation has all of it)."""
    selection = metrics.get("selection")
    method = selection["chosen"] if selection else metrics["primary"]
    weights = metrics["view_weights"] or {
        selection["representation"] if selection else metrics["primary"]: 1.0
    }
    return {
        "rayclust.primary": method,
        "rayclust.primary_row": metrics["primary"],
        "rayclust.algorithm": metrics["algorithm"],
        "rayclust.backend": metrics["backend"],
        "rayclust.view_weights": json.dumps(weights),  # one tag, not one per view
    }


def _mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The primary row's scores as ``<metric>_mean`` / ``_std``, every row's as
    ``<row>.<metric>_mean`` / ``_std`` (":" of a row name made "." for MLflow), counts."""
    numbers: dict[str, float] = {
        "n_images": metrics["n_images"],
        "n_skipped": metrics["n_skipped"],
        "n_clusters": metrics["n_clusters"],
    }
    rows = {"": metrics["summary"]} | {
        f"{row.replace(':', '.')}.": summary for row, summary in metrics["table"].items()
    }
    for prefix, summary in rows.items():
        for metric, stats in summary.items():
            numbers[f"{prefix}{metric}_mean"] = stats["mean"]
            numbers[f"{prefix}{metric}_std"] = stats["std"]
    return numbers


def _manifest_dataset(config: RunConfig, images: ImageSet | ImageTable) -> dict[str, Any]:
    """The run's input for MLflow: the manifest (path, image_id, label) as a frame."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "path": list(images.paths),
            "image_id": list(images.image_ids),
            "label": [label or "" for label in images.labels],
        }
    )
    source = config.input.source
    return {
        "frame": frame,
        "source": source,
        "name": Path(source.rstrip("/")).name or source,
        "context": "clustering",
        "targets": "label" if any(images.labels) else None,
    }


def _write_report(run_dir: Path, features: Features, neighbours: Any = None) -> None:
    """The HTML report is a view of the results: its failure must never fail the run."""
    from rayclust.report import write_report

    try:
        path = write_report(run_dir, features=features, neighbours=neighbours, log_to_mlflow=False)
        log.debug("report: %s", path)
    except OSError as exc:
        if exc.errno in runs.DISK_FULL_ERRNOS:  # a truncated report must not pass as done
            raise
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)
    except Exception as exc:  # noqa: BLE001 - the results are already written
        log.warning("could not write the report (rerun `rayclust report %s`): %s", run_dir, exc)
