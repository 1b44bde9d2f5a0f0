"""``rayclust train CONFIG [--resume] [key=value ...]``: fine-tune a backbone on Ray Train."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rayclust.cli_common import (
    EXIT_OK,
    add_config_command,
    add_quiet,
    add_resume,
    config_layers,
    run_standalone,
)


def register(subparsers: Any) -> None:
    parser = add_config_command(
        subparsers,
        "train",
        "Fine-tune a view's backbone (classic cross-entropy or episodic with the scatter loss) "
        "on Ray Train; the result is a view 'arch@<run>/backbone.safetensors'.",
        config_help="YAML config (only what differs from the defaults)",
        overrides_example="mode=classic episodic.alpha=0.5 scaling.num_workers=2",
    )
    add_resume(parser, "continue a stopped run from its last checkpoint (same config and output)")
    add_quiet(parser)
    parser.set_defaults(handler=run, interrupt_hint="continue with --resume")


def run(args: argparse.Namespace) -> int:
    from rayclust.config import load_config
    from rayclust.train.api import fit
    from rayclust.train.config import TrainConfig

    config = load_config(args.config, config_layers(args), schema=TrainConfig)
    result = fit(config, resume=args.resume, progress=not args.quiet)
    _print_summary(result)
    return EXIT_OK


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


def main(argv: Sequence[str] | None = None) -> int:
    """The command on its own: ``main(["ft.yaml", "seed=3"])``."""
    return run_standalone(register, argv)
