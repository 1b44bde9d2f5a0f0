"""Command line: a thin layer over rayclust's Python API.

rayclust cluster PATH --clusters K [--view NAME ...] [--output DIR] ...
rayclust run CONFIG.yaml [key.sub=value ...]
rayclust views [PATTERN]
rayclust train CONFIG [--resume] [key=value ...]
rayclust deep CONFIG [key=value ...]
rayclust tune CONFIG [--resume] [--sweep NAME] [key=value ...]
rayclust report RUN_DIR
rayclust predict RUN_DIR NEW_IMAGES [--output CSV]
rayclust export RUN_DIR DEST [--copy] [--force]
rayclust fetch-weights VIEW [VIEW ...]
rayclust check-cluster CLUSTER_YAML [--security-group-commands]

Each sub-command is a ``register(subparsers)`` that adds its parser with a ``handler``
(``run(args) -> int``); the shared options, override parsing and error handling are in
``rayclust.cli_common``. This module only lists the commands and runs the chosen one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from rayclust.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Register,
    add_config_command,
    add_overrides,
    add_quiet,
    add_tracking_options,
    add_verbose,
    config_layers,
    dispatch,
    new_parser,
)
from rayclust.config import load_config

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

_RUN_OVERRIDES_EXAMPLE = "clustering.seeds=3 extraction.batch_size=64"
_RUN_INTERRUPTED = "features already extracted are cached, rerun to resume"


# --- rayclust cluster / rayclust run ----------------------------------------------------------


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
    add_tracking_options(parser)
    add_quiet(parser, "no progress bars, warnings and the closing summary only")
    add_verbose(parser)
    parser.set_defaults(interrupt_hint=_RUN_INTERRUPTED)


def register_cluster(subparsers: Any) -> None:
    from rayclust.cluster.registry import ALGORITHMS

    cluster = subparsers.add_parser(
        "cluster",
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
    cluster.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="use this algorithm on the given view only (default: chosen without labels among "
        "kmeans, spectral, agglomerative on the view, the pixels and both; clustering.select)",
    )
    cluster.add_argument(
        "--refine",
        action="store_true",
        help="refine the chosen partition with a SCAN-style head; kept if its label-free "
        "score is better (clustering.refine)",
    )
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
    add_overrides(cluster, _RUN_OVERRIDES_EXAMPLE)
    _add_run_options(cluster)
    cluster.set_defaults(handler=run_cluster)


def register_run(subparsers: Any) -> None:
    run = add_config_command(
        subparsers,
        "run",
        "Run the clustering job a YAML config describes.",
        config_help="YAML config (only what differs from the defaults)",
        overrides_example=_RUN_OVERRIDES_EXAMPLE,
    )
    _add_run_options(run)
    run.set_defaults(handler=run_config)


def _cluster_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config sections ``rayclust cluster``'s options set (unset options change nothing)."""
    flags: dict[str, Any] = {"input": {"source": args.path}}
    given = {
        ("input", "labels_from_folders"): args.labels_from_folders or None,
        ("input", "max_pixels"): args.max_pixels,
        ("clustering", "n_clusters"): args.clusters,
        ("clustering", "algorithm"): args.algorithm,
        ("clustering", "seeds"): args.seeds,
        ("clustering", "refine"): args.refine or None,
        ("clustering", "pca_dim"): args.pca_dim,
        ("clustering", "normalize"): False if args.no_normalize else None,
        ("extraction", "batch_size"): args.batch_size,
        ("extraction", "cache_dir"): args.cache_dir,
    }
    if args.algorithm is not None:  # an algorithm asked for by name is not second-guessed
        given[("clustering", "select")] = "off"
    for (section, key), value in given.items():
        if value is not None:
            flags.setdefault(section, {})[key] = value
    for key in ("output", "name", "views"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    return flags


def run_cluster(args: argparse.Namespace) -> int:
    return _run_pipeline(args.config, config_layers(args, _cluster_flags(args)), args.quiet)


def run_config(args: argparse.Namespace) -> int:
    return _run_pipeline(args.config, config_layers(args), args.quiet)


def _run_pipeline(config_path: str | None, changes: dict[str, Any], quiet: bool) -> int:
    from rayclust.pipeline import run

    config = load_config(config_path, changes)
    result = run(config, progress=not quiet)
    print("\n".join(summary_lines(result)))
    return EXIT_OK


def summary_lines(result) -> list[str]:
    """What a finished run prints: where its files are, the counts, and the scores of the
    row it answers with, grouped by which way each score is better."""
    from rayclust import metrics as scores

    metrics = result.metrics
    lines = [f"run folder: {result.run_dir}"]
    if result.report is not None:
        lines.append(f"report:     {result.report}")
    if result.mlflow_run_id:
        lines.append(f"MLflow run: {result.mlflow_run_id}")
    lines.append(
        f"{result.n_images} images clustered into {result.n_clusters} clusters; "
        f"{result.n_skipped} skipped{' (see skipped.csv)' if result.n_skipped else ''}; "
        f"backend {metrics['backend']}"
    )
    summary = metrics["summary"]
    row = metrics["primary"]
    if metrics.get("selection"):
        row = f"{metrics['selection']['chosen']} (row {row!r}, chosen without labels)"
    lines.append(f"scores of {row}, mean (sd) over {len(metrics['per_seed'])} seeds:")
    groups: dict[str, list[str]] = {}
    for name, stats in summary.items():
        kind = "against the labels" if name in scores.EXTERNAL_METRICS else "label-free"
        group = f"{kind}, {scores.better(name)} is better:"
        cell = f"{name} {scores.format_avg_sd(stats['mean'], stats['std'])}"
        groups.setdefault(group, []).append(cell)
    for group, cells in sorted(groups.items()):
        line = f"  {group}"
        for i, cell in enumerate(cells):  # wrapped between scores, never inside one
            if i and len(line) + len(cell) > 98:
                lines.append(line + ",")
                line = "   "
            line += f"{',' if i and line.strip() else ''} {cell}"
        lines.append(line)
    return lines


# --- rayclust views -------------------------------------------------------------------------


def register_views(subparsers: Any) -> None:
    views = subparsers.add_parser("views", description="List the registered views.")
    views.add_argument("pattern", nargs="?", default="*", help="glob over view names")
    views.set_defaults(handler=run_views)


def run_views(args: argparse.Namespace) -> int:
    from rayclust.views import describe_view, list_views, view_access

    names = list_views(args.pattern)
    width = max((len(name) for name in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {view_access(name):<7}  {describe_view(name).description}")
    if names:
        print(
            "\noffline: packaged weights or raw pixels; network: weights downloaded on first "
            "use (then cached); test: random init, for tests only"
        )
    return EXIT_OK


# --- rayclust check-cluster -----------------------------------------------------------------


def register_check_cluster(subparsers: Any) -> None:
    check = subparsers.add_parser(
        "check-cluster",
        description="Check a `ray up` cluster config against Ray's schema and the security "
        "rules, offline. Exit status 1 when anything blocks `ray up` (errors, placeholders "
        "still in place).",
    )
    check.add_argument("config", type=Path, help="a `ray up` cluster config, e.g. cluster.yaml")
    check.add_argument(
        "--security-group-commands",
        action="store_true",
        help="also print the aws commands that create the config's security group",
    )
    check.set_defaults(handler=run_check_cluster)


def run_check_cluster(args: argparse.Namespace) -> int:
    import yaml

    from rayclust import cloud

    try:
        config = cloud.load_cluster_config(args.config)
    except (ValueError, yaml.YAMLError) as exc:  # a missing file is handled by dispatch
        raise CommandError(str(exc)) from exc
    problems = cloud.check_cluster_schema(config) + cloud.check_cluster_security(config)
    for problem in problems:
        print(problem)
    if args.security_group_commands:
        print("\n# create the security group before `ray up`:")
        print("\n".join(cloud.security_group_commands(config)))
    stop = cloud.blocking(problems)
    print(
        f"{args.config}: {len(stop)} problem(s) to fix before `ray up`"
        if stop
        else f"{args.config}: schema and security checks passed"
    )
    return EXIT_FAILED if stop else EXIT_OK


# --- the command line -------------------------------------------------------------------------

# name: (its register, or the module whose ``register(subparsers)`` adds it; its line in
# ``rayclust --help``). A module is imported only when its command runs: train, deep and tune
# bring torch and Ray, which ``rayclust views`` or ``rayclust --help`` should not wait for.
COMMANDS: dict[str, tuple[Register | str, str]] = {
    "cluster": (register_cluster, "cluster a folder or list of images"),
    "run": (register_run, "run a YAML config"),
    "views": (register_views, "list the registered views"),
    "train": ("rayclust.train.cli", "fine-tune a backbone on Ray Train (rayclust train --help)"),
    "deep": ("rayclust.deep.cli", "train DivClust / MMDC / ICBPL heads (rayclust deep --help)"),
    "tune": ("rayclust.tune.cli", "sweep a stage's hyperparameters with Ray Tune"),
    "report": ("rayclust.report.cli", "(re)write a run folder's HTML report"),
    "predict": ("rayclust.reuse.prediction", "put new images into a finished run's clusters"),
    "export": ("rayclust.reuse.folders", "write a run's clusters as folders of links or copies"),
    "fetch-weights": (
        "rayclust.views.fetch",
        "download views' hub weights (DINOv2, CLIP, ...) to copy to offline machines",
    ),
    "check-cluster": (
        register_check_cluster,
        "check a `ray up` cluster.yaml offline: Ray's schema, open ports, SSH range, token auth",
    ),
}


class _HelpLine:
    """The sub-parsers action as a register sees it: ``add_parser`` gets the command's line
    from ``COMMANDS`` unless the register gives one (so the line is written once)."""

    def __init__(self, subparsers: Any, help: str) -> None:
        self._subparsers = subparsers
        self._help = help

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("help", self._help)
        return self._subparsers.add_parser(name, **kwargs)


def _command_line(registered: Collection[str]) -> tuple[argparse.ArgumentParser, Any]:
    """The parser, with the full parsers of the ``registered`` commands; the others are
    listed by name and help only (nothing of theirs is imported)."""
    parser, subparsers = new_parser(
        "rayclust", "Cluster image collections with pretrained deep networks, on Ray."
    )
    for name, (register, help) in COMMANDS.items():
        if name not in registered:
            subparsers.add_parser(name, help=help, add_help=False)
            continue
        if isinstance(register, str):
            register = import_module(register).register
        register(_HelpLine(subparsers, help))
    return parser, subparsers


def build_parser() -> argparse.ArgumentParser:
    """The whole ``rayclust`` parser, every sub-command's parser in it."""
    return _command_line(COMMANDS)[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    # Only the chosen command's parser is built; without one (rayclust --help, a typo)
    # argparse lists the commands or names the unknown one.
    return dispatch(*_command_line({command} if command else set()), argv)


if __name__ == "__main__":
    sys.exit(main())
