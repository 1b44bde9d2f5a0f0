"""Score a view by clustering held-out classes, through the same pipeline users run.

The clustering classes go into a ``path,label`` list file and ``rayclust.pipeline.run``
clusters it with the view (for a fine-tuned backbone, ``arch@backbone.safetensors``), so the
numbers are exactly what ``rayclust cluster --view NAME@PATH`` gives.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rayclust.train.config import ClusterEvalConfig
from rayclust.train.data import LabeledImages


def write_image_list(images: LabeledImages, path: str | Path) -> Path:
    """A ``path,label`` CSV (the list format ``ImageSet.from_list`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for image_path, label in zip(images.paths, images.labels, strict=True):
            writer.writerow([image_path, images.class_names[int(label)]])
    return path


def evaluate_clustering(
    view: str,
    images: LabeledImages,
    config: ClusterEvalConfig,
    run_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Cluster ``images`` into as many clusters as classes with ``view``, over ``config.seeds``.

    Returns ``{"summary": {metric: {"mean", "std", "n"}}, "per_seed": [...], "run_dir"}``.
    """
    from rayclust.config import (
        ClusteringConfig,
        ExtractionConfig,
        InputConfig,
        RunConfig,
        TrackingConfig,
    )
    from rayclust.pipeline import run

    run_dir = Path(run_dir)
    image_list = write_image_list(images, run_dir / "images.csv")
    run_config = RunConfig(
        name=run_dir.name,
        output=str(run_dir),
        views=[view],
        input=InputConfig(source=str(image_list)),
        extraction=ExtractionConfig(
            batch_size=config.batch_size, cache_dir=str(run_dir / "features")
        ),
        clustering=ClusteringConfig(
            algorithm=config.algorithm,
            n_clusters=len(images.class_names),
            seeds=config.seeds,
            backend=config.backend,
        ),
        tracking=TrackingConfig(enabled=False),  # the training run records the scores
    )
    outcome = run(run_config, progress=progress)
    return {
        "summary": outcome.metrics["summary"],
        "per_seed": outcome.metrics["per_seed"],
        "run_dir": str(outcome.run_dir),
    }
