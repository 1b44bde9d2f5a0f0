"""Whole-collection near-duplicate / outlier lists on the shards (``clustering.engine: ray``)
against the report's exact local lists.

``python benchmarks/sharded_neighbours.py 30000``           both, and how far they agree
``python benchmarks/sharded_neighbours.py 200000 --sharded-only``

Data: 30 overlapping blobs in 32-d (cluster_std 6), L2-normalised, plus 200 planted near
copies (a row + N(0, 0.01) noise), written to a FeatureStore in a temporary folder and read
by 2 shard actors. Printed: seconds of each, the near-duplicate groups found by each and in
common, both thresholds, the top-100 outliers in common, the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
import ray
from sklearn.datasets import make_blobs

from rayclust.cluster.distributed import start_shards
from rayclust.report.neighbours import find_neighbour_lists, sharded_neighbour_lists
from rayclust.views.store import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("--sharded-only", action="store_true")
    args = parser.parse_args()
    X, _ = make_blobs(args.rows, n_features=32, centers=30, cluster_std=6.0, random_state=1)
    X = X.astype(np.float32)
    rng = np.random.default_rng(0)
    source = rng.choice(args.rows, 200, replace=False)
    X = np.vstack([X, X[source] + rng.normal(0, 0.01, (200, 32)).astype(np.float32)])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [f"r{i:07d}" for i in range(len(X))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cache = tempfile.mkdtemp()
    FeatureStore(cache, "b").write(ids, X)
    data = start_shards(cache, "b", ids, 2, normalize=False, num_cpus=0.5, backend="faiss")
    start = time.perf_counter()
    sharded = sharded_neighbour_lists(data, ids)
    sharded_s = time.perf_counter() - start
    data.close()

    def near(lists) -> set[tuple[int, ...]]:
        return {tuple(g.rows.tolist()) for g in lists.groups if g.kind == "near"}

    line = f"n={len(X)} sharded {sharded_s:.1f} s, {len(near(sharded))} near groups"
    if not args.sharded_only:
        start = time.perf_counter()
        exact = find_neighbour_lists(X, ids)
        exact_s = time.perf_counter() - start
        top = len(set(sharded.outlier_rows[:100]) & set(exact.outlier_rows[:100]))
        line += (
            f"; exact local {exact_s:.1f} s, {len(near(exact))} near groups, "
            f"{len(near(sharded) & near(exact))} in common; threshold {sharded.threshold:.4g} "
            f"/ {exact.threshold:.4g}; top-100 outliers in common {top}"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{line}; driver peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
