"""Distributed K-means (``clustering.engine: ray``) against the local engine, in the same run.

``python benchmarks/distributed_kmeans.py``   blobs 1,000,000 x 64, k=100, 3 shard actors
``python benchmarks/distributed_kmeans.py --n 10000000 --d 128 --k 1000 --max-iter 20``

The blobs are drawn chunk by chunk straight into float32 (10M x 128 is 5 GB; scikit-learn's
make_blobs would hold it twice in float64), and the driver drops its copy before the
distributed fit, so the two fits never hold the data at the same time.

The blobs are written to a FeatureStore (a temporary folder); the shard actors read their
slices from it by id, as the clustering stage's do. Both fits are rayclust ``KMeans(k,
random_state=seed)`` with the same defaults: the local one on the array in this process, the
distributed one on :class:`~rayclust.cluster.distributed.ShardedData` (subset stages here,
full-data passes on the shards). Printed: wall seconds of each (and actor start-up apart),
their ratio, the inertia gap, the ARI between the two labelings, the full-data passes, and
the bytes each shard actor holds. On one machine the shards share its cores, so the ratio
measures the engine's overhead, not a speed-up; on a cluster each shard has its own node.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def blobs(n: int, d: int, k: int, seed: int, chunk: int = 500_000) -> np.ndarray:
    """Isotropic Gaussian blobs as make_blobs draws them (centres in [-10, 10], SD 1), in float32."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(k, d)).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        labels = rng.integers(0, k, stop - start)
        X[start:stop] = centers[labels]
        X[start:stop] += rng.standard_normal((stop - start, d), dtype=np.float32)
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-iter", type=int, default=300, help="Lloyd steps per stage (both fits)"
    )
    args = parser.parse_args()

    import ray
    from sklearn.metrics import adjusted_rand_score

    from rayclust.cluster import KMeans
    from rayclust.cluster.distributed import start_shards
    from rayclust.views.store import FeatureStore

    X = blobs(args.n, args.d, args.k, args.seed)
    ids = [f"{i:08d}" for i in range(args.n)]
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs); data {args.n} x {args.d}, "
          f"k={args.k}, {args.shards} shards")  # fmt: skip

    with tempfile.TemporaryDirectory() as cache:
        step = 250_000
        for start in range(0, args.n, step):
            FeatureStore(Path(cache), "blobs").write(
                ids[start : start + step], X[start : start + step]
            )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
                 log_to_driver=False)  # fmt: skip

        # The first fit in a process pays FAISS's and OpenMP's start-up (~3 s here); the actors
        # pay theirs in the start-up timed below, so the local side pays it untimed.
        KMeans(args.k, random_state=args.seed, max_iter=2).fit(X[: 20 * args.k])
        started = time.perf_counter()
        local = KMeans(args.k, random_state=args.seed, max_iter=args.max_iter).fit(X)
        local_s = time.perf_counter() - started
        all_bytes = X.nbytes
        # printed now: a long distributed fit that fails must not lose the local figure
        print(f"local:       {local_s:7.1f} s  inertia {local.inertia_:.6g}  ({local.backend_})",
              flush=True)  # fmt: skip
        del X  # the distributed fit must not find the data in the driver

        started = time.perf_counter()
        data = start_shards(cache, "blobs", ids, args.shards, normalize=False)
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        distributed = KMeans(args.k, random_state=args.seed, max_iter=args.max_iter).fit(data)
        distributed_s = time.perf_counter() - started
        held = [info["bytes"] for info in data.info()]
        data.close()

    gap = distributed.inertia_ / local.inertia_ - 1
    ari = adjusted_rand_score(local.labels_, distributed.labels_)
    print(f"distributed: {distributed_s:7.1f} s  inertia {distributed.inertia_:.6g}  "
          f"({data.full_passes} full passes on the shards; {data.backend} in the actors)")  # fmt: skip
    print(f"actor start-up (load from the FeatureStore): {startup_s:.1f} s")
    print(f"distributed / local wall: {distributed_s / local_s:.2f}x; inertia gap {gap:+.4%}; "
          f"ARI between the two {ari:.4f}")  # fmt: skip
    print(f"bytes held per shard actor: {held} (all rows: {all_bytes})")


if __name__ == "__main__":
    main()
