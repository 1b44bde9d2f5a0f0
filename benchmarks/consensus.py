"""Consensus at scale: bipartite (HBGF) consensus of 10 partitions of 1,000,000 samples.

    python benchmarks/consensus.py                      # n=1e6, m=10, k in 10 30 100
    python benchmarks/consensus.py --n 200000 --k 10

Synthetic partitions: a ground truth of k balanced classes and m noisy copies of it (each
label kept with probability --keep, else drawn at random; every copy with its own label
names), the kind of disagreement several views produce. Each configuration runs in a fresh
subprocess so its peak RSS (``ru_maxrss``) is its own; the data-generation RSS is reported
separately and subtracted. Wall and CPU seconds are both printed: on a shared machine the
wall time mostly measures the neighbours.

References measured in the same run:
- co-association (MVEC) consensus at the largest n it handles quickly (--coassoc-n), to
  compare time per sample and quality;
- the bipartite consensus at that same small n, so time(n) / time(small n) can be set
  against n / small n (linear scaling gives a ratio near 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _one(method: str, n: int, n_partitions: int, k: int, keep: float, seed: int) -> dict:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from rayclust.ensemble import create_consensus

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=n)
    partitions = []
    for _ in range(n_partitions):
        labels = np.where(rng.random(n) < keep, truth, rng.integers(0, k, size=n))
        partitions.append(rng.permutation(k)[labels])
    single_ari = float(np.mean([adjusted_rand_score(truth, p) for p in partitions[:3]]))
    rss_data = _rss_mb()
    estimator = create_consensus(method, n_clusters=k)
    start, cpu_start = time.perf_counter(), time.process_time()
    labels = estimator.fit_predict(partitions)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return {
        "method": method,
        "n": n,
        "m": n_partitions,
        "k": k,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": _rss_mb(),
        "data_rss_mb": rss_data,
        "ari": float(adjusted_rand_score(truth, labels)),
        "single_ari": single_ari,
        "n_patterns": getattr(estimator, "n_patterns_", None),
    }


def _run_isolated(method: str, n: int, m: int, k: int, keep: float, seed: int) -> dict:
    command = [sys.executable, __file__, "--child", method, str(n), str(m), str(k), str(keep)]
    command.append(str(seed))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} n={n} k={k} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_row(row: dict) -> None:
    print(
        f"{row['method']:>13} n={row['n']:>9,} m={row['m']} k={row['k']:>3}  "
        f"{row['seconds']:7.1f} s (cpu {row['cpu_seconds']:6.1f} s)  peak RSS {row['peak_rss_mb']:7.0f} MB "
        f"(data {row['data_rss_mb']:5.0f} MB, fit +{row['peak_rss_mb'] - row['data_rss_mb']:5.0f} MB)"
        f"  ARI {row['ari']:.3f} (one partition {row['single_ari']:.3f})"
        + (f"  patterns {row['n_patterns']:,}" if row["n_patterns"] else ""),
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, n, m, k, keep, seed = sys.argv[2:8]
        print(json.dumps(_one(method, int(n), int(m), int(k), float(keep), int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=10, help="number of partitions")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--keep", type=float, default=0.7, help="share of true labels kept")
    parser.add_argument("--coassoc-n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"consensus benchmark: {args.m} partitions, keep={args.keep}, cpus={os.cpu_count()}")
    for k in args.k:
        small_bip = _run_isolated("bipartite", args.coassoc_n, args.m, k, args.keep, args.seed)
        small_co = _run_isolated("coassociation", args.coassoc_n, args.m, k, args.keep, args.seed)
        big = _run_isolated("bipartite", args.n, args.m, k, args.keep, args.seed)
        for row in (small_co, small_bip, big):
            _print_row(row)
        scale = args.n / args.coassoc_n
        print(
            f"    k={k}: bipartite at {args.n:,} / at {args.coassoc_n:,} ({scale:.0f}x the "
            f"samples): wall {big['seconds'] / small_bip['seconds']:.1f}x, "
            f"cpu {big['cpu_seconds'] / small_bip['cpu_seconds']:.1f}x; co-association at "
            f"{args.coassoc_n:,} / bipartite at {args.coassoc_n:,}: wall "
            f"{small_co['seconds'] / small_bip['seconds']:.1f}x, "
            f"cpu {small_co['cpu_seconds'] / small_bip['cpu_seconds']:.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
