"""``rayclust tune CONFIG [--resume] [--sweep NAME] [key=value ...]``: run the sweeps of a
sweep file (see ``rayclust.tune.config``) and print where each one's results are.
``main(argv) -> int`` is the whole command."""

from __future__ import annotations

import argparse
import logging
import sys

from rayclust.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayclust tune",
        description=(
            "Sweep hyperparameters of a stage (cluster, train, deep) with Ray Tune; every trial "
            "is a nested MLflow run under the sweep's run."
        ),
    )
    parser.add_argument("config", help="sweep YAML, e.g. experiments/sweep.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="sweep overrides, e.g. num_samples=50 max_concurrent_trials=2 config.clustering.seeds=3",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped sweep: finished trials are kept, errored ones retried",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        dest="sweeps",
        metavar="NAME",
        help="run only this sweep of a file with sweeps: (repeatable; default: all, in order)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no Tune status tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)  # KEY=VALUE before or after options
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from rayclust.tune.config import load_sweeps

    try:
        sweeps = load_sweeps(args.config, args.overrides)
        chosen = args.sweeps or list(sweeps)
        unknown = [name for name in chosen if name not in sweeps]
        if unknown:
            raise ConfigError(f"--sweep {unknown[0]!r} is not in {args.config}: {', '.join(sweeps)}")
        from rayclust.tune.runner import run_sweep

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
                print(f"  {result.n_errored} trial(s) errored: see {result.sweep_dir}/tune; "
                      "rerun with --resume to retry them")  # fmt: skip
    except (ConfigError, FileNotFoundError) as exc:
        print(f"rayclust tune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rayclust tune: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
