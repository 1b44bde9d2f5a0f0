"""``write_report(run_dir)``: read a run folder, analyse it, write the page and its lists."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rayclust.report.analysis import (
    MAP_METHODS,
    TRIALS_FILE,
    ReportError,
    run_features,
    run_neighbour_lists,
)
from rayclust.report.html import PAGE_BOUND_BYTES, build_report_html
from rayclust.report.thumbnails import ThumbnailCache
from rayclust.run_mlflow import attach_to_mlflow_run
from rayclust.runs import ASSIGNMENTS_FILE, read_run, write_csv

if TYPE_CHECKING:
    from rayclust.clustering import Features
    from rayclust.report.neighbours import NeighbourLists

log = logging.getLogger("rayclust")

REPORT_FILE = "report.html"
NEAR_DUPLICATES_FILE = "near_duplicates.csv"
# The lists searched on the shards (engine=ray), read back when the report is rendered again.
SHARDED_LISTS_FILE = "neighbours.npz"
OUTLIERS_FILE = "outliers.csv"
MISLABELLED_FILE = "mislabelled.csv"
QUALITY_FILE = "image_quality.csv"


def write_report(
    run_dir: str | Path,
    *,
    max_thumbnails_per_cluster: int = 12,
    max_clusters_shown: int = 50,
    max_map_points: int = 2000,
    map_method: str = "tsne",
    n_neighbors: int = 10,
    duplicate_distance: float | None = None,
    max_knn_rows: int = 20_000,
    features: Features | np.ndarray | None = None,
    neighbours: NeighbourLists | None = None,
    log_to_mlflow: bool = True,
    seed: int = 0,
) -> Path:
    """Write report.html and its lists into `run_dir`; return the page.

    Any run folder renders: a cluster or deep run (assignments.csv), or a sweep (trials.csv).
    The lists (``rayclust.report.neighbours``): near_duplicates.csv (exact duplicates by
    content id; near ones: kNN pairs within `duplicate_distance` (cosine), None setting it
    from the features' nearest-neighbour distances, joined into groups), outliers.csv (mean
    cosine distance to `n_neighbors` neighbours), mislabelled.csv (labelled runs). They come
    from an exact kNN graph over at most `max_knn_rows` rows (a sample spread over clusters
    on larger runs, so there the lists cover the sample only). image_quality.csv: size,
    blur and brightness of up to 1,000 images (``rayclust.report.quality``).
    map_method: "tsne" (on at most `max_map_points` rows) or "pca".

    features: what was clustered, as ``rayclust.clustering.Features`` (the pipeline hands
    them over), or an array of raw features of the assignment rows; None loads them from
    the run's FeatureStore by the cache keys in metrics.json (the map section says why when
    they cannot be found).
    neighbours: the lists already found (``clustering.engine=ray``: every row, searched on
    the shards by :func:`~rayclust.report.neighbours.sharded_neighbour_lists`), written and
    shown in place of those of `features`.
    log_to_mlflow: also attach the written files to the run's MLflow run (from mlflow.json).
    """
    if max_thumbnails_per_cluster < 1:
        raise ValueError(f"max_thumbnails_per_cluster={max_thumbnails_per_cluster} should be >= 1")
    if max_map_points < 2:
        raise ValueError(f"max_map_points={max_map_points} should be >= 2")
    if max_knn_rows < 2:
        raise ValueError(f"max_knn_rows={max_knn_rows} should be >= 2")
    if map_method not in MAP_METHODS:
        raise ValueError(f"map_method={map_method!r} should be one of {', '.join(MAP_METHODS)}")
    if duplicate_distance is not None and not 0 <= duplicate_distance < 2:
        raise ValueError(f"duplicate_distance={duplicate_distance} should be in [0, 2)")
    run_dir = Path(run_dir)
    if not (run_dir / ASSIGNMENTS_FILE).is_file() and not (run_dir / TRIALS_FILE).is_file():
        raise ReportError(
            f"{run_dir / ASSIGNMENTS_FILE} is missing: {run_dir} is not a finished run folder "
            f"(expected assignments.csv, metrics.json, config.yaml) nor a sweep folder "
            f"({TRIALS_FILE})"
        )
    run = read_run(run_dir)
    found = run_features(run, features)

    outputs = [run_dir / REPORT_FILE]
    from rayclust.report.neighbours import load_lists, save_lists

    if neighbours is not None and neighbours.scope:
        save_lists(neighbours, run_dir / SHARDED_LISTS_FILE)
        outputs.append(run_dir / SHARDED_LISTS_FILE)
    elif neighbours is None and (run_dir / SHARDED_LISTS_FILE).is_file():
        neighbours = load_lists(run_dir / SHARDED_LISTS_FILE)
    if found.matrix is not None and (neighbours is None or run.has_labels):
        local = run_neighbour_lists(
            found.matrix,
            run,
            n_neighbors=n_neighbors,
            duplicate_distance=duplicate_distance,
            max_knn_rows=max_knn_rows,
            seed=seed,
            feature_rows=found.rows,
        )
        # Lists given for the whole collection carry no labels: those come from `features`.
        neighbours = (
            local if neighbours is None else replace(neighbours, mislabelled=local.mislabelled)
        )
    if neighbours is not None:
        groups = [
            [g, group.kind, run.paths[r], f"{d:.6f}"]
            for g, group in enumerate(neighbours.groups)
            for r, d in zip(group.rows, group.distances, strict=True)
        ]
        outliers = [
            [run.paths[r], f"{s:.6f}"]
            for r, s in zip(neighbours.outlier_rows, neighbours.outlier_scores, strict=True)
        ]
        outputs += [
            write_csv(
                run_dir / NEAR_DUPLICATES_FILE, ["group", "kind", "path", "distance"], groups
            ),
            write_csv(run_dir / OUTLIERS_FILE, ["path", "score"], outliers),
        ]
        if run.has_labels:
            rows = [
                [run.paths[m["row"]], m["label"], int(run.clusters[m["row"]]),
                 m["cluster_label"], m["neighbour_label"], f"{m['agree']:.3f}"]
                for m in neighbours.mislabelled
            ]  # fmt: skip
            header = ["path", "label", "cluster", "cluster_label", "neighbour_label", "agree"]
            outputs.append(write_csv(run_dir / MISLABELLED_FILE, header, rows))

    storage_options = (run.config.get("input") or {}).get("storage_options")
    thumbnails = ThumbnailCache(storage_options=storage_options)
    quality_rows: list[list] = []
    page = build_report_html(
        run,
        found.matrix,
        max_thumbnails_per_cluster=max_thumbnails_per_cluster,
        max_clusters_shown=max_clusters_shown,
        max_map_points=max_map_points,
        map_method=map_method,
        neighbours=neighbours,
        seed=seed,
        why_no_features=found.why_missing,
        feature_rows=found.rows,
        cache=thumbnails,
        quality_rows=quality_rows,
    )
    if quality_rows:
        header = ["path", "width", "height", "blur", "brightness"]
        outputs.append(write_csv(run_dir / QUALITY_FILE, header, quality_rows))
    if thumbnails.failures:
        path, reason = thumbnails.failures[0]
        log.warning(
            "report: %d images could not be shown (first: %s: %s)",
            len(thumbnails.failures),
            path,
            reason,
        )
    # A file name that is not UTF-8 (a str with surrogate escapes) is shown escaped.
    data = page.encode("utf-8", errors="backslashreplace")
    outputs[0].write_bytes(data)
    size = len(data)
    if size > PAGE_BOUND_BYTES:
        log.warning(
            "report: %s is %d bytes, over the %d-byte bound", outputs[0], size, PAGE_BOUND_BYTES
        )
    if log_to_mlflow:
        attach_to_mlflow_run(run, outputs)
    return outputs[0]
