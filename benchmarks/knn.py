"""Approximate kNN benchmark: recall@k and speed-up over exact search, measured in one run.

``python benchmarks/knn.py``          blobs, n=200,000 d=128 (100 centres), k=10
``python benchmarks/knn.py --real``   real image features (EfficientNet-Lite0 local descriptors
                                      of openclipart images, PCA-128; see benchmarks/kmeans.py)

The task is a kNN graph (every point queries the others, ``kneighbors()`` with ``X=None``), as
spectral clustering needs it. Everything runs through ``rayclust.cluster.NearestNeighbors``:

- exact: ``method="exact"`` (FAISS flat). Brute force costs the same for every query, so it is
  timed on ``--exact-queries`` random points and scaled to n (the time per query is printed);
  those points' exact neighbours are the ground truth for recall;
- approximate: ``method="hnsw"`` (a sweep over ``ef_search``) and ``method="ivf"`` (a sweep over
  ``n_probe``), each built once and timed on the full graph (build + all n queries).

Speed-up = exact full-graph time / (build + full-graph query time); recall@k = the fraction of
the true k neighbours found, on the ground-truth points.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting burn most of the CPU on a machine shared with other
# jobs, and would make whichever library uses OpenMP (scikit-learn, FAISS) look slow; sleeping
# waiters keep the comparison fair. Set before numpy/sklearn/faiss load their OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kmeans import DEFAULT_CACHE, blobs, local_features  # noqa: E402


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def recall_on(rows: np.ndarray, approx: np.ndarray, exact: np.ndarray) -> float:
    from rayclust.cluster import neighbor_recall

    return neighbor_recall(approx[rows], exact)


def main() -> None:
    from rayclust.cluster import NearestNeighbors

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--centers", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--images", type=Path, default=Path("/work/data/openclipart"))
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--exact-queries", type=int, default=2000)
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--target-recall", type=float, default=0.95)
    args = parser.parse_args()

    if args.real:
        X = local_features(args.images, n_images=args.n_images, cache_dir=args.cache)
        label = f"real features ({args.images.name} lite0 local, PCA-128)"
    else:
        X, _ = blobs(args.n, args.d, args.centers)
        label = f"blobs ({args.centers} centres)"
    n, d, k = X.shape[0], X.shape[1], args.k
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}\n== kNN graph, {label}: n={n:,} d={d} k={k} =="
    )

    rng = np.random.default_rng(0)
    truth_rows = np.sort(rng.choice(n, size=min(args.exact_queries, n), replace=False))
    exact = NearestNeighbors(k, method="exact").fit(X)
    # The ground-truth points query the full set; their own index is dropped as kneighbors()
    # does for the graph (search k+1, remove self).
    (_, exact_ind), exact_wall, exact_cpu = timed(exact.kneighbors, X[truth_rows], k + 1)
    own = exact_ind == truth_rows[:, None]
    exact_ind = np.array([row[~mask][:k] for row, mask in zip(exact_ind, own, strict=True)])
    per_query = exact_wall / len(truth_rows)
    exact_full = per_query * n
    print(
        f"exact (FAISS flat): {len(truth_rows)} queries in {exact_wall:.2f} s wall "
        f"({exact_cpu:.2f} s cpu) = {per_query * 1e3:.3f} ms/query -> full graph "
        f"{exact_full:.1f} s (scaled to n)"
    )

    results = []
    hnsw = NearestNeighbors(
        k, method="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction
    )
    _, build_wall, build_cpu = timed(hnsw.fit, X)
    print(
        f"hnsw M={args.hnsw_m} efConstruction={args.ef_construction}: built in {build_wall:.1f} s"
    )
    for ef in args.ef:
        hnsw.set_params(ef_search=ef)  # a search-time knob: no rebuild
        ind, wall, cpu = timed(hnsw.kneighbors, return_distance=False)
        results.append(
            ("hnsw", f"ef_search={ef}", build_wall, wall, recall_on(truth_rows, ind, exact_ind))
        )
    ivf = NearestNeighbors(k, method="ivf", random_state=0)
    _, build_wall, build_cpu = timed(ivf.fit, X)
    print(f"ivf n_lists={ivf.n_lists_}: trained and filled in {build_wall:.1f} s")
    for n_probe in args.nprobe:
        ivf.set_params(n_probe=n_probe)
        ind, wall, cpu = timed(ivf.kneighbors, return_distance=False)
        results.append(
            ("ivf", f"n_probe={n_probe}", build_wall, wall, recall_on(truth_rows, ind, exact_ind))
        )

    best = None
    for method, setting, build, query, recall in results:
        total = build + query
        speedup = exact_full / total
        print(
            f"{method:4s} {setting:14s} recall@{k} {recall:.4f}  build {build:6.1f} s + graph "
            f"{query:6.1f} s = {total:6.1f} s  speed-up {speedup:5.1f}x (queries only "
            f"{exact_full / query:5.1f}x)"
        )
        if recall >= args.target_recall and (best is None or speedup > best[0]):
            best = (speedup, method, setting, recall, total, query)
    if best:
        speedup, method, setting, recall, total, query = best
        print(
            f"SUMMARY {label}: best with recall@{k} >= {args.target_recall}: {method} {setting} "
            f"recall {recall:.4f}, {total:.1f} s (build + graph) vs exact {exact_full:.1f} s: "
            f"{speedup:.1f}x faster ({exact_full / query:.1f}x on queries alone)"
        )
    else:
        print(f"SUMMARY {label}: no setting reached recall@{k} >= {args.target_recall}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
