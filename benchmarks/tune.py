"""Ray Tune sweep benchmark: trials per minute of a 100-trial sweep of clustering knobs on
cached features, and Tune's overhead against running the same configurations in a plain loop.

    python benchmarks/tune.py                  # 100 trials on the 1,797 digits, pixels view
    python benchmarks/tune.py --trials 30      # a quicker look

The data: scikit-learn's digits rendered as images (scripts/render_digits.py), features of
the ``pixels`` view extracted once into a FeatureStore before anything is timed. The sweep:
k (randint 8..12), PCA dimension (16, 32, none), L2 normalisation (on / off), algorithm
(kmeans, spectral), 2 seeds per trial, objective ARI.

Measured in the same run, on the same 100 drawn configurations (the searcher is seeded):

- ``tune, 1 at a time``: ``rayclust.tune.run_sweep`` with ``max_concurrent_trials=1``, one
  CPU per trial, MLflow on (parent + a child run per trial, as a user's sweep); its whole
  wall time (Tuner set-up, trials, summary, plots), extraction being a cache hit.
- ``tune, 1 at a time, no MLflow``: the same with tracking off, Tune's own cost alone.
- ``plain loop``: ``rayclust.tune.objective.score_clustering`` (what every trial runs) over the
  same configurations, one after the other in this process, one thread.
- ``tune, 2 at a time`` against ``plain pool of 2``: the same configurations over two
  processes (``multiprocessing``), each one thread: what two concurrent 1-CPU trials compete
  with.

Overhead = tune wall / loop wall - 1 (goal: under 20%). The machine is shared: ratios only.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SEARCH = {
    "clustering.n_clusters": {"randint": [8, 12]},
    "clustering.pca_dim": {"choice": [16, 32, None]},
    "clustering.normalize": {"choice": [True, False]},
    "clustering.algorithm": {"choice": ["kmeans", "spectral"]},
}


def _render_digits(folder: Path) -> None:
    spec = importlib.util.spec_from_file_location("render_digits", REPO / "scripts/render_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.render_digits(folder, size=32)


def _sweep(work: Path, name: str, trials: int, concurrent: int, mlflow: bool):
    from rayclust.config import config_from_dict
    from rayclust.tune import SweepConfig

    return config_from_dict(
        SweepConfig,
        {
            "name": name,
            "output": str(work / "runs" / name),
            "stage": "cluster",
            "config": {
                "input": {"source": str(work / "digits"), "labels_from_folders": True},
                "views": ["pixels"],
                "extraction": {"cache_dir": str(work / "features")},
                "clustering": {"seeds": 2},
                "evaluation": {"silhouette_sample": 2000},
            },
            "search": SEARCH,
            "num_samples": trials,
            "max_concurrent_trials": concurrent,
            "resources": {"cpus_per_trial": 1},
            "objective": {"metric": "ari", "mode": "max"},
            "seed": 0,
            "tracking": {"enabled": mlflow, "uri": f"sqlite:///{work / 'runs' / 'mlflow.db'}"},
        },
    )


def _timed_sweep(work: Path, name: str, trials: int, concurrent: int, mlflow: bool):
    from rayclust.tune import run_sweep

    started = time.perf_counter()
    result = run_sweep(_sweep(work, name, trials, concurrent, mlflow), work, progress=False)
    seconds = time.perf_counter() - started
    assert result.n_trials == trials and result.n_errored == 0, result
    assert all(v["n_extracted"] == 0 for v in result.features["views"].values())
    return seconds, result


def _configs_of(result, space) -> list:
    """The configurations the sweep ran, rebuilt from its trial records."""
    configs = []
    for trial in result.result_grid:
        params = {key: trial.config[key] for key in space.keys}
        configs.append(space.trial_config(params))
    return configs


_DATA = None


def _init_worker(data) -> None:
    global _DATA
    _DATA = data


def _score(config) -> float:
    from threadpoolctl import threadpool_limits

    from rayclust.tune.objective import score_clustering

    with threadpool_limits(1):
        return score_clustering(config, _DATA)["ari"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args(argv)

    import ray
    import torch

    from rayclust.tune.runner import _prepare_cluster, load_base
    from rayclust.tune.space import SearchSpace, schema_for

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="rayclust-tune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)  # fresh sweeps; digits and cache kept
    if not (work / "digits").is_dir():
        _render_digits(work / "digits")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip

    # Extraction (not timed): fill the cache the timed sweeps then only read.
    warm = _sweep(work, "warm", 2, 1, mlflow=False)
    base = load_base(warm, work)
    space = SearchSpace.from_yaml(warm.search, schema_for("cluster"), base.to_dict())
    data, features = _prepare_cluster(base, space, warm, progress=False)
    n_images = features["n_images"]
    print(f"{n_images} digits, pixels view cached ({features['views']['pixels']['n_extracted']} "
          "extracted now); Ray 2 CPUs; 1 CPU and 1 thread per trial\n")  # fmt: skip

    n = args.trials
    rows = []
    tune_1, result = _timed_sweep(work, "tune-1", n, 1, mlflow=True)
    configs = _configs_of(result, space)
    tune_1_off, _ = _timed_sweep(work, "tune-1-nomlflow", n, 1, mlflow=False)

    _init_worker(data)
    started = time.perf_counter()
    loop_scores = [_score(config) for config in configs]
    loop_1 = time.perf_counter() - started
    tune_scores = sorted(round(t.metrics["ari"], 9) for t in result.result_grid)
    assert sorted(round(s, 9) for s in loop_scores) == tune_scores, "loop and trials disagree"

    tune_2, _ = _timed_sweep(work, "tune-2", n, 2, mlflow=True)
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with context.Pool(2, initializer=_init_worker, initargs=(data,)) as pool:
        pool.map(_score, configs, chunksize=1)
    pool_2 = time.perf_counter() - started

    rows = [
        ("tune, 1 at a time (MLflow on)", tune_1, loop_1),
        ("tune, 1 at a time, no MLflow", tune_1_off, loop_1),
        ("plain loop, 1 process", loop_1, loop_1),
        ("tune, 2 at a time (MLflow on)", tune_2, pool_2),
        ("plain pool of 2 processes", pool_2, pool_2),
    ]
    print(f"| run ({n} trials) | wall s | trials/min | vs plain counterpart |")
    print("|---|---|---|---|")
    for label, seconds, reference in rows:
        print(f"| {label} | {seconds:.1f} | {n / seconds * 60:.0f} | "
              f"{seconds / reference - 1:+.1%} |")  # fmt: skip
    mean_trial = loop_1 / n
    print(f"\nmean trial work: {mean_trial:.2f} s; Tune's cost per trial, 1 at a time: "
          f"{(tune_1 - loop_1) / n:.3f} s with MLflow, {(tune_1_off - loop_1) / n:.3f} s without")  # fmt: skip
    print(f"best ARI {result.best_metrics['objective']:.3f} with {result.best_params}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
