"""``rayclust train CONFIG [--resume] [key=value ...]``: fine-tune a backbone on Ray Train."""

from __future__ import annotations

import argparse
import logging
import sys

from rayclust.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayclust train",
        description=(
            "Fine-tune a view's backbone (classic cross-entropy or episodic with the scatter "
            "loss) on Ray Train; the result is a view 'arch@<run>/backbone.safetensors'."
        ),
    )
    parser.add_argument("config", help="YAML config (only what differs from the defaults)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. mode=classic episodic.alpha=0.5 scaling.num_workers=2",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run from its last checkpoint (same config and output)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="warnings only, no progress bars"
    )
    return parser


def _print_summary(result) -> None:
    from rayclust.metrics import format_avg_sd

    print(f"\nrun folder: {result.output_dir}")
    if result.best_epoch is not None:
        best = result.best_metrics
        accuracy = best.get("val_accuracy")
        shown = f", val_accuracy={accuracy:.3f}" if accuracy is not None else ""
        print(f"best epoch: {result.best_epoch}{shown}")
    print(f"view: {result.view}")
    if result.clustering is not None:
        for name in ("ari", "ami", "nmi", "acc"):
            stats = result.clustering["summary"].get(name)
            if stats is not None:
                print(f"  {name:>4}: {format_avg_sd(stats['mean'], stats['std'])}")
    if result.mlflow_run_id:
        print(f"MLflow run: {result.mlflow_run_id}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from rayclust.config import load_config
    from rayclust.train.api import fit
    from rayclust.train.config import TrainConfig

    try:
        config = load_config(args.config, args.overrides, schema=TrainConfig)
        result = fit(config, resume=args.resume, progress=not args.quiet)
    except (ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"rayclust train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rayclust train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    _print_summary(result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
