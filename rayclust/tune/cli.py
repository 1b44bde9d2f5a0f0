"""``rayclust tune CONFIG [--resume] [--sweep NAME] [key=value ...]``: run the sweeps of a
sweep file (see ``rayclust.tune.config``) and print where each one's results are."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rayclust.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    add_config_command,
    add_quiet,
    add_resume,
    run_standalone,
)


def register(subparsers: Any) -> None:
    parser = add_config_command(
        subparsers,
        "tune",
        "Sweep hyperparameters of a stage (cluster, train, deep) with Ray Tune; every trial is "
        "a nested MLflow run under the sweep's run.",
        config_help="sweep YAML, e.g. experiments/sweep.yaml",
        overrides_example="num_samples=50 max_concurrent_trials=2 config.clustering.seeds=3",
    )
    add_resume(parser, "continue a stopped sweep: finished trials are kept, errored ones retried")
    parser.add_argument(
        "--sweep",
        action="append",
        dest="sweeps",
        metavar="NAME",
        help="run only this sweep of a file with sweeps: (repeatable; default: all, in order)",
    )
    add_quiet(parser, "no Tune status tables")
    parser.set_defaults(handler=run, interrupt_hint="rerun with --resume to continue")


def run(args: argparse.Namespace) -> int:
    from rayclust.tune.config import load_sweeps
    from rayclust.tune.runner import run_sweep

    sweeps = load_sweeps(args.config, args.overrides)
    chosen = args.sweeps or list(sweeps)
    unknown = [name for name in chosen if name not in sweeps]
    if unknown:
        raise CommandError(f"--sweep {unknown[0]!r} is not in {args.config}: {', '.join(sweeps)}")
    failed = False
    for name in chosen:
        sweep, base_dir = sweeps[name]
        result = run_sweep(sweep, base_dir, resume=args.resume, progress=not args.quiet)
        metric = sweep.objective.metric
        best = result.best_metrics.get("objective")
        print(f"\nsweep {sweep.name}: {result.n_trials} trials ({result.n_errored} errored)")
        print(f"  best {metric}: {best if best is None else f'{best:.4f}'}  {result.best_params}")
        print(f"  sweep folder: {result.sweep_dir}")
        print(f"  best config:  {result.best_config_path}")
        if result.mlflow_parent_run_id:
            print(f"  MLflow parent run: {result.mlflow_parent_run_id}")
        if result.n_errored:
            failed = True
            print(
                f"  {result.n_errored} trial(s) errored: see {result.sweep_dir}/tune; "
                "rerun with --resume to retry them"
            )
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The command on its own: ``main(["experiments/sweep.yaml", "--sweep", "k"])``."""
    return run_standalone(register, argv)
