"""``rayclust report RUN_DIR``: (re)write a run folder's report.html and print its path."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayclust.cli_common import EXIT_OK, CommandError, run_standalone
from rayclust.report.analysis import MAP_METHODS, ReportError
from rayclust.report.writer import write_report

DESCRIPTION = (
    "Write RUN_DIR/report.html (and near_duplicates.csv, outliers.csv, mislabelled.csv, "
    "image_quality.csv) for a cluster, deep or sweep run folder, and print its path."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", type=Path, help="a run folder (assignments.csv or trials.csv)")
    parser.add_argument("--max-thumbnails-per-cluster", type=int, default=12)
    parser.add_argument("--max-clusters-shown", type=int, default=50)
    parser.add_argument(
        "--max-map-points", type=int, default=2000, help="t-SNE runs on a sample of this many"
    )
    parser.add_argument(
        "--map", dest="map_method", default="tsne", choices=MAP_METHODS,
        help="the 2-D map: t-SNE (default) or PCA (fast, linear)",
    )  # fmt: skip
    parser.add_argument(
        "--duplicate-distance", type=float, default=None,
        help="cosine distance for near-duplicates (default: set from the features' "
        "nearest-neighbour distances)",
    )  # fmt: skip
    parser.add_argument("--max-knn-rows", type=int, default=20_000)
    parser.add_argument("--no-mlflow", action="store_true", help="do not attach to the MLflow run")
    return parser


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``rayclust`` command's sub-commands."""
    parser = subparsers.add_parser(
        "report", help="(re)write a run folder's HTML report", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = write_report(
            args.run_dir,
            max_thumbnails_per_cluster=args.max_thumbnails_per_cluster,
            max_clusters_shown=args.max_clusters_shown,
            max_map_points=args.max_map_points,
            map_method=args.map_method,
            duplicate_distance=args.duplicate_distance,
            max_knn_rows=args.max_knn_rows,
            log_to_mlflow=not args.no_mlflow,
        )
    except (ReportError, ValueError) as exc:  # ReportError: not a run folder
        raise CommandError(str(exc)) from exc
    print(out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``rayclust report RUN_DIR [options]`` on its own (``python -m rayclust.report``)."""
    return run_standalone(register, argv)
