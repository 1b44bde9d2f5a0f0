"""What the driver holds in the clustering stage with ``clustering.engine: ray``.

``python benchmarks/driver_sample_memory.py``   blobs 200,000 x 128 float32, k=50, 2 shards

The blobs are written to a FeatureStore (a temporary folder); then, in this process:
``cluster_sharded`` (the pipeline's ray path: shard actors read their rows, the driver
gets labels and ``clustering.driver_sample`` rows) and ``load_features`` +
``cluster_features`` (the local engine), each under ``tracemalloc`` (numpy's buffers are
traced). Printed: the peak of traced memory of each, against the feature matrix's bytes,
the rows the ray driver gathered from the shards per call (K-means' seeding and coarse-to-fine
subset stages, at most 1 GiB each, then the driver sample), and the ARI of the labelings.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _peak(fn):
    tracemalloc.start()
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--driver-sample", type=int, default=20_000)
    # The silhouette's distance matrix (sample^2 x 8 B: 200 MB at 5,000) would hide the rest.
    parser.add_argument("--silhouette-sample", type=int, default=1000)
    args = parser.parse_args()

    import ray
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from rayclust.cluster.distributed import ShardedData
    from rayclust.clustering import cluster_features, load_features
    from rayclust.clustering_ray import cluster_sharded
    from rayclust.config import RunConfig, config_from_dict
    from rayclust.views.store import FeatureStore

    X, _ = make_blobs(args.n, n_features=args.d, centers=args.k, random_state=0)
    X = X.astype(np.float32)
    ids = [f"img{i:08d}" for i in range(args.n)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as cache:
        FeatureStore(Path(cache), "blobs").write(ids, X)
        del X
        settings = {"seeds": 1, "n_clusters": args.k, "select": "off"}
        configs = {
            engine: config_from_dict(
                RunConfig,
                {
                    "views": ["blobs"],
                    "extraction": {"cache_dir": cache},
                    "evaluation": {"silhouette_sample": args.silhouette_sample},
                    "clustering": settings
                    | {
                        "engine": engine,
                        "shards": args.shards,
                        "driver_sample": args.driver_sample,
                    },
                },
            )
            for engine in ("ray", "local")
        }
        gathered: list[int] = []  # rows of each ShardedData.get_subset call (driver-bound)
        get_subset = ShardedData.get_subset

        def counted(self, indices):
            gathered.append(len(indices))
            return get_subset(self, indices)

        ShardedData.get_subset = counted
        (ray_result, sample), ray_peak, ray_s = _peak(
            lambda: cluster_sharded(configs["ray"], ids, {"blobs": "blobs"}, None, args.k)
        )
        ShardedData.get_subset = get_subset
        local_result, local_peak, local_s = _peak(
            lambda: cluster_features(
                load_features(configs["local"], ids, {"blobs": "blobs"}), configs["local"], args.k
            )
        )
    matrix = args.n * args.d * 4
    print(f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"features {args.n:,} x {args.d} float32 = {matrix:,} B; driver_sample {len(sample):,}")
    print(f"ray   : traced peak {ray_peak:,} B ({ray_peak / matrix:.2f} x matrix), {ray_s:.1f} s")
    print(
        f"local : traced peak {local_peak:,} B ({local_peak / matrix:.2f} x matrix), {local_s:.1f} s"
    )
    print(f"rows gathered by the ray driver, per get_subset call: {gathered}")
    print(f"ARI ray vs local: {adjusted_rand_score(local_result.labels, ray_result.labels):.4f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
