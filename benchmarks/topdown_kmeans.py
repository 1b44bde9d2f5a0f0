"""TopDownKMeans with a large k, local against sharded (``clustering.engine: ray``).

``python benchmarks/topdown_kmeans.py``   2,000,000 x 64, k=100,000, 3 shard actors

Data: a mixture of ``--centres`` Gaussians (unit variance, centres uniform in [-10, 10]^d),
written to a FeatureStore in a temporary folder; the shard actors read their slices by id.
Both fits are ``TopDownKMeans(k, random_state=seed)``: the local one on the array, the
sharded one on ShardedData (every pass on the actors). Printed: wall seconds (coarse,
seeding, passes), inertia, the ARI between the two labelings, the ratio of wall times, and
for reference the inertia of a flat K-means with ``--flat-k`` clusters (the coarse level,
``sqrt(k)`` clusters, is one too). On one machine the actors share its cores: the ratio
measures the engine's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def mixture(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.uniform(-10, 10, size=(centres, d)).astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += means[rng.integers(centres, size=n)]
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=100_000)
    parser.add_argument("--centres", type=int, default=20_000)
    parser.add_argument("--flat-k", type=int, default=1000, help="0: skip the flat reference")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray
    from sklearn.metrics import adjusted_rand_score

    from rayclust.cluster import KMeans, TopDownKMeans, resolve_backend
    from rayclust.cluster.distributed import start_shards
    from rayclust.views.store import FeatureStore

    resolve_backend("auto")  # imports torch to look for a GPU: not part of either fit's time
    X = mixture(args.n, args.d, args.centres, args.seed)
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}); "
          f"data {args.n} x {args.d} ({args.centres} Gaussians), k={args.k}, "
          f"{args.shards} shards")  # fmt: skip

    def report(name: str, model, seconds: float) -> None:
        t = model.timings_
        print(f"{name}: {seconds:7.1f} s (coarse {t['coarse']:.1f}, seeding {t['seeding']:.1f}, "
              f"{model.n_iter_} passes {t['passes']:.1f})  inertia {model.inertia_:.6g}  "
              f"coarse level (flat k={len(model.coarse_centers_)}) {model.coarse_inertia_:.6g}",
              flush=True)  # fmt: skip

    local = None
    if not args.skip_local:
        started = time.perf_counter()
        local = TopDownKMeans(args.k, random_state=args.seed).fit(X)
        local_s = time.perf_counter() - started
        report("local  ", local, local_s)
        print(f"driver peak RSS after the local fit: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")  # fmt: skip

    ids = [f"{i:08d}" for i in range(args.n)]
    with tempfile.TemporaryDirectory() as cache:
        step = 250_000
        for start in range(0, args.n, step):
            FeatureStore(Path(cache), "mix").write(
                ids[start : start + step], X[start : start + step]
            )
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 configure_logging=False,
                 log_to_driver=False)  # fmt: skip
        started = time.perf_counter()
        data = start_shards(cache, "mix", ids, args.shards, normalize=False, backend="faiss")
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        sharded = TopDownKMeans(args.k, random_state=args.seed).fit(data)
        sharded_s = time.perf_counter() - started
        data.close()
    report("sharded", sharded, sharded_s)
    print(f"actor start-up (load from the FeatureStore): {startup_s:.1f} s")
    if local is not None:
        gap = sharded.inertia_ / local.inertia_ - 1
        ari = adjusted_rand_score(local.labels_, sharded.labels_)
        print(f"sharded / local wall: {sharded_s / local_s:.2f}x; inertia gap {gap:+.4%}; "
              f"ARI {ari:.4f}")  # fmt: skip
    if args.flat_k:
        started = time.perf_counter()
        flat = KMeans(args.flat_k, random_state=args.seed).fit(X)
        print(f"flat KMeans k={args.flat_k}: {time.perf_counter() - started:.1f} s, inertia "
              f"{flat.inertia_:.6g}")  # fmt: skip
        started = time.perf_counter()
        same_k = TopDownKMeans(args.flat_k, random_state=args.seed).fit(X)
        print(f"TopDownKMeans k={args.flat_k}: {time.perf_counter() - started:.1f} s, inertia "
              f"{same_k.inertia_:.6g} ({same_k.inertia_ / flat.inertia_ - 1:+.2%} vs flat)")  # fmt: skip


if __name__ == "__main__":
    main()
