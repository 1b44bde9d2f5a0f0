"""``rayclust deep CONFIG [key=value ...]``: train one deep-clustering objective and print
its per-epoch objective and scores. ``main(argv) -> int`` is the whole command."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from rayclust.config import ConfigError
from rayclust.deep.config import load_deep_config
from rayclust.deep.data import DatasetUnavailableError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayclust deep",
        description=(
            "Train DivClust, MMDC or ICBPL on Ray Train: heads on a view's frozen features "
            "(features.mode=frozen) or with the view's backbone on the images "
            "(features.mode=finetune, for a GPU). Runs are recorded in MLflow."
        ),
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/divclust.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides, e.g. trainer.epochs=20"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train N times (trainer.seed = 0..N-1, same split and features; each in "
        "<output>/seed_<s>) and print AVG(SD) of the held-out scores and the K-means baseline",
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: <output parent>/mlflow.db)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    return parser


def _tracking_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.tracking_uri:
        out.append(f"tracking.uri={args.tracking_uri}")
    if args.no_mlflow:
        out.append("tracking.enabled=false")
    return out


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
    print(f"AVG(SD) over {len(results)} seeds:")
    for name, scores in rows.items():
        if scores and all(scores):
            stats = summarize(scores)
            cells = " ".join(
                f"{k}={format_avg_sd(stats[k]['mean'], stats[k]['std'])}"
                for k in ("acc", "nmi", "ari")
            )
            print(f"  {name:18s} {cells}")


def _format_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in scores.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.seeds < 1:
        print(f"rayclust deep: --seeds={args.seeds} should be >= 1", file=sys.stderr)
        return 2
    overrides = list(args.overrides) + _tracking_overrides(args)
    try:
        config = load_deep_config(args.config, overrides)
    except ConfigError as exc:
        print(f"rayclust deep: config error: {exc}", file=sys.stderr)
        return 2
    from rayclust.deep.api import fit_deep

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
        except (ConfigError, DatasetUnavailableError) as exc:
            print(f"rayclust deep: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
        _print_result(result, run_config)
        results.append(result)
    if len(results) > 1:
        _print_seed_summary(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
