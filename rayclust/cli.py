"""Command line: a thin layer over rayclust's Python API.

rayclust cluster PATH --clusters K [--view NAME ...] [--output DIR] ...
rayclust run CONFIG.yaml [key.sub=value ...]
rayclust views [PATTERN]
rayclust train CONFIG [--resume] [key=value ...]
rayclust deep CONFIG [key=value ...]
rayclust tune CONFIG [--resume] [--sweep NAME] [key=value ...]
rayclust check-cluster CLUSTER_YAML [--security-group-commands]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from importlib import import_module
from typing import Any

from rayclust.config import ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Sub-commands whose own module parses their arguments: name -> (module, help).
_DELEGATED = {
    "train": ("rayclust.train.cli", "fine-tune a backbone on Ray Train (rayclust train --help)"),
    "deep": ("rayclust.deep.cli", "train DivClust / MMDC / ICBPL heads (rayclust deep --help)"),
    "tune": ("rayclust.tune.cli", "sweep a stage's hyperparameters with Ray Tune (rayclust tune --help)"),
    "report": ("rayclust.report", "(re)write a run folder's HTML report (rayclust report --help)"),
    "check-cluster": (
        "rayclust.cloud",
        "check a `ray up` cluster.yaml offline: Ray's schema, open ports, SSH range, token auth",
    ),
}


def _clusters(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--clusters {value!r} should be an integer or 'auto'"
        ) from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"--clusters {k} should be >= 1")
    return k


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. clustering.seeds=3 extraction.batch_size=64",
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: local store beside the runs)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, warnings only"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayclust",
        description="Cluster image collections with pretrained deep networks, on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser(
        "cluster",
        help="cluster a folder or list of images",
        description="Cluster the images under PATH (a folder tree, or a .csv/.txt list of paths).",
    )
    cluster.add_argument("path", help="folder of images, or a .csv (path[,label]) / .txt list")
    cluster.add_argument(
        "-k",
        "--clusters",
        type=_clusters,
        help="number of clusters, or 'auto' (default: the number of label folders)",
    )
    cluster.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="use each image's top sub-folder as its ground-truth label (enables ACC/NMI/ARI...)",
    )
    cluster.add_argument("-o", "--output", help="the run folder (default: runs/<name>)")
    cluster.add_argument("--name", help="run name (default: folder name + time)")
    cluster.add_argument(
        "--view",
        action="append",
        dest="views",
        metavar="NAME",
        help="backbone view, repeatable (default: efficientnet_lite0; see `rayclust views`)",
    )
    cluster.add_argument("--algorithm", choices=["kmeans", "spectral"], help="default: kmeans")
    cluster.add_argument(
        "--seeds", type=int, help="clustering repeats, scored as AVG(SD) (default: 5)"
    )
    cluster.add_argument(
        "--pca", type=int, dest="pca_dim", help="reduce features to this many PCA dimensions"
    )
    cluster.add_argument(
        "--no-normalize", action="store_true", help="skip L2 normalisation of features"
    )
    cluster.add_argument("--batch-size", type=int, help="images per forward pass (default: 32)")
    cluster.add_argument("--cache-dir", help="feature cache (default: ~/.cache/rayclust/features)")
    cluster.add_argument("--max-pixels", type=int, help="skip images larger than this (bomb guard)")
    cluster.add_argument("--config", help="a YAML config to start from; flags override it")
    _add_run_options(cluster)

    run = sub.add_parser(
        "run",
        help="run a YAML config",
        description="Run the clustering job a YAML config describes.",
    )
    run.add_argument("config", help="YAML config (only what differs from the defaults)")
    _add_run_options(run)

    views = sub.add_parser("views", help="list the registered views")
    views.add_argument("pattern", nargs="?", default="*", help="glob over view names")

    for name, (_, helptext) in _DELEGATED.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


def _cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {"input": {"source": args.path}}
    flags = {
        ("input", "labels_from_folders"): args.labels_from_folders or None,
        ("input", "max_pixels"): args.max_pixels,
        ("clustering", "n_clusters"): args.clusters,
        ("clustering", "algorithm"): args.algorithm,
        ("clustering", "seeds"): args.seeds,
        ("clustering", "pca_dim"): args.pca_dim,
        ("clustering", "normalize"): False if args.no_normalize else None,
        ("extraction", "batch_size"): args.batch_size,
        ("extraction", "cache_dir"): args.cache_dir,
    }
    for (section, key), value in flags.items():
        if value is not None:
            over.setdefault(section, {})[key] = value
    for key in ("output", "name", "views"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    return over


def _tracking_overrides(args: argparse.Namespace) -> dict[str, Any]:
    tracking: dict[str, Any] = {}
    if args.tracking_uri:
        tracking["uri"] = args.tracking_uri
    if args.no_mlflow:
        tracking["enabled"] = False
    return {"tracking": tracking} if tracking else {}


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    from rayclust.config import _deep_merge

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer)
    return merged


def _run_pipeline(config_path: str | None, layers: list[dict[str, Any]], quiet: bool) -> int:
    from rayclust.pipeline import run

    config = load_config(config_path, _merge(*layers))
    result = run(config, progress=not quiet)
    _print_summary(result)
    return EXIT_OK


def _print_summary(result) -> None:
    from rayclust.metrics import format_avg_sd

    metrics = result.metrics
    print(f"\nrun folder: {result.run_dir}")
    print(
        f"images clustered: {result.n_images}   skipped: {result.n_skipped}"
        f"{' (see skipped.csv)' if result.n_skipped else ''}   clusters: {result.n_clusters}"
        f"   backend: {metrics['backend']}"
    )
    for name, stats in metrics["summary"].items():
        print(f"  {name:>18}: {format_avg_sd(stats['mean'], stats['std'])}")
    if result.mlflow_run_id:
        print(f"MLflow run: {result.mlflow_run_id}")


_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``key.sub=value`` tokens out, wherever they stand (argparse cannot mix them with
    options after a positional). Sub-commands with their own parsers get argv untouched."""
    if not argv or argv[0] not in ("cluster", "run"):
        return argv, []
    rest, overrides = [], []
    for token in argv:
        (overrides if _OVERRIDE.match(token) else rest).append(token)
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _DELEGATED:
        # These sub-commands own their parsers (and --help); hand them the rest untouched.
        module, _ = _DELEGATED[argv[0]]
        return import_module(module).main(list(argv[1:]))
    argv, overrides = _split_overrides(list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "cluster":
            from rayclust.config import parse_overrides

            return _run_pipeline(
                args.config,
                [
                    _cluster_overrides(args),
                    _tracking_overrides(args),
                    parse_overrides(args.overrides),
                ],
                args.quiet,
            )
        if args.command == "run":
            from rayclust.config import parse_overrides

            return _run_pipeline(
                args.config,
                [_tracking_overrides(args), parse_overrides(args.overrides)],
                args.quiet,
            )
        if args.command == "views":
            from rayclust.views import list_views

            for name in list_views(args.pattern):
                print(name)
            return EXIT_OK
    except (ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"rayclust: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "rayclust: interrupted; features already extracted are cached, rerun to resume",
            file=sys.stderr,
        )
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
