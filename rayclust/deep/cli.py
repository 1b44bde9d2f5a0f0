"""``rayclust deep CONFIG [key=value ...]``: train one deep-clustering objective and print
its per-epoch objective and scores."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayclust.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    add_config_command,
    add_tracking_options,
    config_layers,
    run_standalone,
)


def register(subparsers: Any) -> None:
    parser = add_config_command(
        subparsers,
        "deep",
        "Train DivClust, MMDC or ICBPL on Ray Train: heads on a view's frozen features "
        "(features.mode=frozen) or with the view's backbone on the images "
        "(features.mode=finetune, for a GPU). Runs are recorded in MLflow.",
        config_help="experiment YAML, e.g. experiments/divclust.yaml",
        overrides_example="trainer.epochs=20 data.max_images=1000",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train N times (trainer.seed = 0..N-1, same split and features; each in "
        "<output>/seed_<s>) and print AVG(SD) of the held-out scores and the K-means baseline",
    )
    add_tracking_options(parser, default_uri="<output parent>/mlflow.db")
    # Per-epoch lines read as the command's own output, not as timestamped log records.
    parser.set_defaults(handler=run, log_format="%(message)s")


def run(args: argparse.Namespace) -> int:
    from rayclust.deep.api import fit_deep
    from rayclust.deep.config import load_deep_config
    from rayclust.deep.data import DatasetUnavailableError

    if args.seeds < 1:
        raise CommandError(f"--seeds={args.seeds} should be >= 1")
    config = load_deep_config(args.config, config_layers(args))
    results = []
    for seed in range(args.seeds):
        run_config = config
        if args.seeds > 1:
            run_config = replace(
                config,
                trainer=replace(config.trainer, seed=seed),
                name=f"{config.name or config.method}-seed{seed}",
                output=str(Path(config.output) / f"seed_{seed}") if config.output else None,
            )
        try:
            result = fit_deep(run_config)
        except DatasetUnavailableError as exc:
            raise CommandError(str(exc), EXIT_FAILED) from exc
        _print_result(result, run_config)
        results.append(result)
    if len(results) > 1:
        _print_seed_summary(results)
    return EXIT_OK


def _print_result(result, config) -> None:
    objective = result.objective
    print(
        f"{result.method}: {len(result.train_index)} train / {len(result.holdout_index)} held-out "
        f"images, {result.n_clusters} clusters, {len(objective)} epochs, "
        f"objective {objective[0]:.4f} -> {objective[-1]:.4f}"
    )
    for split, scores in result.metrics.items():
        print(f"  {split:8s} {_format_scores(scores)}")
    baseline = result.reports.get("kmeans_baseline", {})
    if "holdout" in baseline:
        print(f"  K-means on the same features, held-out: {_format_scores(baseline['holdout'])}")
    if result.method == "divclust":
        r = result.reports
        print(
            f"  diversity: mean inter-head NMI D^R={r['diversity_reached']:.3f} "
            f"(target D^T={r['diversity_target']}), consensus={r['consensus']}"
        )
    for key in ("scores_before_refinement_holdout", "rotation_accuracy_holdout"):
        if key in result.reports:
            value = result.reports[key]
            shown = _format_scores(value) if isinstance(value, dict) else f"{value:.3f}"
            print(f"  {key}: {shown}")
    if result.trained_view:
        print(f"  fine-tuned backbone as a view: {result.trained_view}")
    if config.output:
        print(f"  outputs in {config.output}")
    if result.mlflow_run_id:
        print(f"  MLflow run: {result.mlflow_run_id}")


def _print_seed_summary(results) -> None:
    from rayclust.metrics import format_avg_sd, summarize

    rows = {"method, held-out": [r.metrics.get("holdout", {}) for r in results]}
    rows["K-means, held-out"] = [
        r.reports.get("kmeans_baseline", {}).get("holdout", {}) for r in results
    ]
    print(f"AVG(SD) over {len(results)} seeds [standard error, as MMDC's thesis reports]:")
    for name, scores in rows.items():
        if scores and all(scores):
            stats = summarize(scores)
            cells = " ".join(
                f"{k}={format_avg_sd(stats[k]['mean'], stats[k]['std'])}"
                f"[{standard_error(stats[k]):.3f}]"
                for k in ("acc", "nmi", "nmi_geometric", "ari")
                if k in stats
            )
            print(f"  {name:18s} {cells}")


def standard_error(stats: dict[str, float]) -> float:
    """SE of the mean over seeds, std(ddof=1) / sqrt(n), from ``summarize``'s population std
    (ddof=0): ``std * sqrt(n / (n - 1)) / sqrt(n) = std / sqrt(n - 1)``; NaN for one seed."""
    n = stats["n"]
    return float("nan") if n < 2 else stats["std"] / (n - 1) ** 0.5


def _format_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in scores.items())


def main(argv: Sequence[str] | None = None) -> int:
    """The command on its own: ``main(["experiments/mmdc.yaml", "trainer.epochs=3"])``."""
    return run_standalone(register, argv)
