"""``rayclust deep CONFIG [key=value ...]``: train one deep-clustering objective and print
its per-epoch objective and scores. ``main(argv) -> int`` is the whole command."""

from __future__ import annotations

import argparse
import logging
import sys

from rayclust.config import ConfigError
from rayclust.deep.config import load_deep_config
from rayclust.deep.data import DatasetUnavailableError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayclust deep",
        description="Train DivClust, MMDC or ICBPL on a view's frozen features (Ray Train).",
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/divclust.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides, e.g. trainer.epochs=20"
    )
    return parser


def _format_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in scores.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_deep_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"rayclust deep: config error: {exc}", file=sys.stderr)
        return 2
    from rayclust.deep.api import fit_deep

    try:
        result = fit_deep(config)
    except (ConfigError, DatasetUnavailableError) as exc:
        print(f"rayclust deep: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    objective = result.objective
    print(
        f"{result.method}: {len(result.train_index)} train / {len(result.holdout_index)} held-out "
        f"images, {result.n_clusters} clusters, {len(objective)} epochs, "
        f"objective {objective[0]:.4f} -> {objective[-1]:.4f}"
    )
    for split, scores in result.metrics.items():
        print(f"  {split:8s} {_format_scores(scores)}")
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
    if config.output:
        print(f"  outputs in {config.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
