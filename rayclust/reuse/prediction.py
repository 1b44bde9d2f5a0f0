"""``rayclust predict RUN_DIR NEW_IMAGES``: put new images into a finished run's clusters.

The run's saved model (:mod:`rayclust.reuse.model`) names the views exactly as the run extracted
them, so new images are scanned, extracted into the same feature cache (an image the run
has already seen costs no forward pass) and reduced the same way, then each goes to its
nearest centroid. From Python::

    prediction = rayclust.predict("runs/photos", "new_photos/", output="predictions.csv")
    prediction.clusters, prediction.distances, prediction.counts()
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust import runs
from rayclust.cli_common import EXIT_OK, CommandError, add_quiet, run_standalone
from rayclust.config import ConfigError, ExtractionConfig
from rayclust.images import DEFAULT_MAX_PIXELS, CollectionError, ImageSet, SkippedImage
from rayclust.reuse.model import ClusterModel, RunModelError

log = logging.getLogger("rayclust")

PREDICTION_COLUMNS = ("path", "image_id", "cluster", "distance")


@dataclass
class Prediction:
    """New images and the run clusters they were put in (rows in scan order)."""

    run_dir: Path
    paths: list[str]
    image_ids: list[str]
    clusters: np.ndarray
    distances: np.ndarray  # to the cluster's centroid, in the model's metric
    beyond: np.ndarray  # farther than 95% of the run's images of the cluster (ClusterModel)
    metric: str
    n_run_clusters: int
    skipped: list[SkippedImage] = field(default_factory=list)
    output: Path | None = None
    # view -> {"n_extracted", "n_cached"}: images the run (or an earlier call) saw cost nothing
    extraction: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        """Cluster id -> number of new images put in it (clusters that got none left out)."""
        return dict(sorted(Counter(int(c) for c in self.clusters).items()))


def check_output(output: str | Path) -> Path:
    """The predictions file can be written where asked: checked before any scan."""
    path = Path(output)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name, e.g. {path}/pred.csv")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: the folder {path.parent} does not exist")
    _check_writable(path.parent, f"--output {path}")
    return path


def _check_writable(folder: Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{what}: {folder} is not writable ({exc.strerror or exc})") from None


def extraction_config(model: ClusterModel, cache_dir: str | Path | None) -> ExtractionConfig:
    """The extraction of the run's views at the precision the run used (part of the keys)."""
    saved = model.info.get("extraction", {})
    # Pixel views are always fp32; the network views of one run share one precision.
    precisions = {view.spec.get("precision", "fp32") for view in model.views} - {"fp32"}
    return ExtractionConfig(
        cache_dir=str(cache_dir or saved.get("cache_dir") or "") or None,
        batch_size=int(saved.get("batch_size") or ExtractionConfig().batch_size),
        precision=precisions.pop() if len(precisions) == 1 else "fp32",
    )


def predict(
    run_dir: str | Path,
    source: str | Path,
    output: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Prediction:
    """Assign the images of ``source`` (a folder, a list file, a bucket prefix) to the
    clusters of the run in ``run_dir``; with ``output``, write them as a CSV
    (``PREDICTION_COLUMNS``).

    A run folder without saved clusters, an unusable source or output raise ``ConfigError``
    (``RunModelError`` for the run folder) before any extraction. cache_dir: the feature
    cache (default: the run's).
    """
    from rayclust.clustering import read_features
    from rayclust.remote import is_remote
    from rayclust.views import extract_views, extraction_specs
    from rayclust.views.store import default_cache_dir

    model = ClusterModel.load(run_dir)
    out_path = check_output(output) if output is not None else None
    specs = model.view_specs()
    config = extraction_config(model, cache_dir)
    cache: Path | str
    if config.cache_dir and is_remote(config.cache_dir):
        cache = config.cache_dir  # a bucket prefix: no folder to make
    else:
        cache = Path(config.cache_dir or default_cache_dir())
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--cache-dir {cache}: {exc.strerror or exc}") from None
        _check_writable(cache, f"--cache-dir {cache}")
    planned = {spec.name: spec.key() for spec in extraction_specs(specs, config, "local")}
    for name, key in model.view_keys.items():
        if planned.get(name) != key:
            log.warning(
                "view %s: its features now have key %s, the run's had %s (another timm or "
                "rayclust version?): new images may not be extracted exactly as the run's",
                name,
                planned.get(name),
                key,
            )
    max_pixels = int(model.info.get("input", {}).get("max_pixels") or DEFAULT_MAX_PIXELS)
    try:
        image_set = ImageSet.from_source(
            source, max_pixels=max_pixels, progress=progress, storage_options=storage_options
        )
    except CollectionError as exc:
        raise ConfigError(str(exc)) from None
    results = extract_views(
        image_set.records,
        specs,
        cache,
        config,
        progress=progress,
        storage_options=storage_options,
        max_pixels=max_pixels,
    )
    failed: dict[str, str] = {}
    for result in results.values():
        for failure in result.failed:
            failed.setdefault(failure.path, failure.reason)
    records = [r for r in image_set.records if r.path not in failed]
    skipped = list(image_set.skipped) + [
        SkippedImage(path, reason, stage="decode") for path, reason in failed.items()
    ]
    if not records:
        raise ConfigError(f"no usable images in {source}: all {len(skipped)} were skipped")
    ids = [r.image_id for r in records]
    raw = read_features(
        cache, ids, {name: r.spec_key for name, r in results.items()}, storage_options
    )
    clusters, distances = model.assign(model.transform(raw))
    prediction = Prediction(
        run_dir=Path(run_dir),
        paths=[r.path for r in records],
        image_ids=ids,
        clusters=clusters,
        distances=distances,
        beyond=model.beyond_radius(clusters, distances),
        metric=model.metric,
        n_run_clusters=len(model.clusters),
        skipped=skipped,
        output=out_path,
        extraction={
            name: {"n_extracted": r.n_extracted, "n_cached": r.n_cached}
            for name, r in results.items()
        },
    )
    if out_path is not None:
        rows = (
            (path, image_id, int(cluster), f"{distance:.6f}")
            for path, image_id, cluster, distance in zip(
                prediction.paths, ids, clusters, distances, strict=True
            )
        )
        with runs.recording(out_path, "the predictions", "--output"):
            runs.write_csv(out_path, PREDICTION_COLUMNS, rows)
    return prediction


# -- the command -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``predict`` to the ``rayclust`` command's sub-commands."""
    parser = subparsers.add_parser(
        "predict",
        description="Put new images into the clusters of a finished `rayclust cluster` run: "
        "the run's views are extracted (cached features reused), reduced as in the run, "
        "and each image goes to its nearest cluster centroid.",
    )
    parser.add_argument("run_dir", type=Path, help="a `rayclust cluster` run folder")
    parser.add_argument("source", help="new images: a folder, or a .csv/.txt list of paths")
    parser.add_argument(
        "-o", "--output", default="predictions.csv", help="the CSV to write (default: %(default)s)"
    )
    parser.add_argument("--cache-dir", help="feature cache (default: the run's)")
    add_quiet(parser, "no progress bars, warnings only")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        prediction = predict(
            args.run_dir,
            args.source,
            args.output,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
    except RunModelError as exc:
        raise CommandError(str(exc)) from None
    print_summary(prediction)
    return EXIT_OK


def print_summary(prediction: Prediction, top: int = 20) -> None:
    counts = prediction.counts()
    print(
        f"\n{len(prediction.paths)} images put in {len(counts)} of the "
        f"{prediction.n_run_clusters} clusters of {prediction.run_dir}"
        + (f"   skipped: {len(prediction.skipped)}" if prediction.skipped else "")
    )
    for cluster, n in sorted(counts.items(), key=lambda item: -item[1])[:top]:
        distance = float(np.median(prediction.distances[prediction.clusters == cluster]))
        print(f"  cluster {cluster:>4}: {n:>6} images   median {prediction.metric} distance "
              f"{distance:.3f}")  # fmt: skip
    if len(counts) > top:
        print(f"  ... {len(counts) - top} more clusters")
    if prediction.beyond.any():
        print(f"  {int(prediction.beyond.sum())} images lie farther from their centroid than "
              "95% of the run's images of that cluster: maybe unlike any cluster")  # fmt: skip
    for view, counts in prediction.extraction.items():
        print(f"  view {view}: {counts['n_extracted']} images extracted, "
              f"{counts['n_cached']} from the feature cache")  # fmt: skip
    for item in prediction.skipped[:5]:
        print(f"  skipped {item.path}: {item.reason}")
    if prediction.output is not None:
        print(f"predictions: {prediction.output}")


def main(argv: Sequence[str] | None = None) -> int:
    """``rayclust predict`` on its own (``python -m rayclust.reuse.prediction``)."""
    return run_standalone(register, argv)
