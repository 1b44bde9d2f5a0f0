"""Fine-tuning throughput on Ray Train: training samples/s with 1, 2, ... workers.

    python benchmarks/train.py                                  # test_tiny, 96 px, 1 and 2 workers
    python benchmarks/train.py --view efficientnet_lite0 --image-size 128 --freeze-stages 4
    python benchmarks/train.py --mode classic --workers 1 2 4 --use-gpu

Each worker count is one ``rayclust.train.fit`` run on the same data with the same per-worker
work per step (one episode, or ``--batch-size`` images): data-parallel weak scaling, the
way DDP is used. Throughput is the loop's own ``samples_per_s`` (images through forward and
backward per second over all workers, training time only: no validation, no checkpoint
writes, no worker start-up), taken from the epochs after the first, whose time includes
decoding every image once.

Reference measured in the same run: the 1-worker throughput. Printed per worker count n:
speed-up = sps(n) / sps(1) and scaling efficiency = speed-up / n (1.0 is perfect). On a
shared 2-core machine two 1-CPU workers compete with everything else running there; read
the efficiency as an upper bound on what the all-reduce costs, not as a property of DDP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _classes(source: Path, wanted: int) -> list[str]:
    """The ``wanted`` class folders with the most images (ties by name)."""
    counts = {
        folder.name: sum(
            1 for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        )
        for folder in source.iterdir()
        if folder.is_dir()
    }
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    return sorted(ranked[:wanted])


def run_one(args: argparse.Namespace, workers: int, output: Path) -> dict:
    from rayclust.config import load_config
    from rayclust.train import TrainConfig, fit

    config = load_config(
        None,
        {
            "view": args.view,
            "mode": args.mode,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "freeze_stages": args.freeze_stages,
            "seed": 0,
            "output": str(output),
            "data": {
                "source": str(args.source),
                "train_classes": _classes(args.source, args.classes),
                "image_size": args.image_size,
            },
            "episodic": {
                "n_way": args.n_way,
                "k_shot": args.k_shot,
                "q_query": args.q_query,
                "episodes_per_epoch": args.episodes,
            },
            "scaling": {
                "num_workers": workers,
                "use_gpu": args.use_gpu,
                "cpus_per_worker": args.cpus_per_worker,
            },
            "tracking": {"enabled": False},
            "evaluation": {"enabled": False},
        },
        schema=TrainConfig,
    )
    started = time.perf_counter()
    result = fit(config, progress=False)
    wall = time.perf_counter() - started
    steady = [m["samples_per_s"] for m in result.history[1:]] or [
        result.history[0]["samples_per_s"]
    ]
    return {
        "workers": workers,
        "samples_per_s": statistics.mean(steady),
        "per_epoch": [round(m["samples_per_s"], 2) for m in result.history],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_source = REPO_ROOT / "data" / "sample"
    parser.add_argument("--source", type=Path, default=default_source, help="class folders")
    parser.add_argument(
        "--classes", type=int, default=5, help="largest N class folders to train on"
    )
    parser.add_argument("--view", default="test_tiny")
    parser.add_argument("--mode", choices=["episodic", "classic"], default="episodic")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--freeze-stages", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=16, help="episodes per epoch (all workers)")
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=5)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="classic: images per worker step"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs} should be >= 2: the first epoch includes decoding")

    import ray

    need_cpus = max(args.workers) * args.cpus_per_worker
    ray.init(num_cpus=int(max(need_cpus, 1)), include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rayclust-bench-train-") as tmp:
        for workers in args.workers:
            rows.append(run_one(args, workers, Path(tmp) / f"w{workers}"))
            print(f"  {workers} worker(s): {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)
    reference = next((r for r in rows if r["workers"] == 1), rows[0])
    print(
        f"\n{args.view} {args.mode} at {args.image_size} px, freeze_stages={args.freeze_stages}, "
        f"{'GPU' if args.use_gpu else f'{args.cpus_per_worker:g} CPU'} per worker"
    )
    print(f"{'workers':>7} {'samples/s':>10} {'speed-up':>9} {'efficiency':>10} {'per epoch':>28}")
    for row in rows:
        speedup = row["samples_per_s"] / reference["samples_per_s"]
        row["speedup"] = speedup
        row["efficiency"] = speedup / (row["workers"] / reference["workers"])
        print(
            f"{row['workers']:>7} {row['samples_per_s']:>10.1f} {speedup:>9.2f} "
            f"{row['efficiency']:>10.2f} {str(row['per_epoch']):>28}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
