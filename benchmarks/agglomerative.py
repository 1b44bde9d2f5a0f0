"""Connectivity-constrained agglomerative clustering: rayclust vs scikit-learn, same run.

    python benchmarks/agglomerative.py                     # n=100,000, ward and average
    python benchmarks/agglomerative.py --n 20000 --linkage ward

Data: Gaussian blobs, d=64, k=50 centres in [-1.5, 1.5]^64 with unit standard deviation,
float32, so that the 10-NN graph is one connected component (scikit-learn would otherwise
first "complete" the graph with an O(n^2) pass over every pair of components).

For each linkage, three timings:
- scikit-learn: ``kneighbors_graph(X, 10)`` once (timed), then
  ``AgglomerativeClustering(50, linkage=..., connectivity=graph).fit(X)``;
- rayclust given the same graph (``connectivity=graph``): the merging alone, like for like;
- rayclust end to end: ``AgglomerativeClustering(50, linkage=..., n_neighbors=10).fit(X)``,
  building its own graph (FAISS, exact up to 50,000 points, HNSW beyond).
Each fit runs in a fresh subprocess (its own peak RSS); ARIs against the truth and between
the two implementations are printed, and the share of the largest cluster. These blobs
overlap, and average linkage chains on them in both libraries (one cluster takes ~99% of the
points, ARI ~0; ``--n 20000 --linkage average`` shows it for scikit-learn too): ward is the
linkage that recovers them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

N_CLUSTERS = 50
N_FEATURES = 64
N_NEIGHBORS = 10


def make_data(n: int, seed: int = 0, chunk: int = 100_000):
    rng = np.random.RandomState(seed)
    centers = rng.uniform(-1.5, 1.5, size=(N_CLUSTERS, N_FEATURES)).astype(np.float32)
    labels = rng.randint(N_CLUSTERS, size=n)
    X = np.empty((n, N_FEATURES), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = rng.standard_normal((stop - start, N_FEATURES)).astype(np.float32)
        X[start:stop] = centers[labels[start:stop]] + noise
    return X, labels


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (the fair measure when the machine
    is shared: wall time then depends on what else runs)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _paths(n: int, seed: int) -> dict:
    stem = f"/tmp/rayclust_bench_agglo_{n}_{seed}"
    return {"graph": f"{stem}_graph.npz", "labels": stem + "_{job}_{linkage}.npy"}


def _worker(spec: dict) -> dict:
    import scipy.sparse as sp
    from sklearn.metrics import adjusted_rand_score

    X, truth = make_data(spec["n"], spec["seed"])
    paths = _paths(spec["n"], spec["seed"])
    job, linkage = spec["job"], spec.get("linkage", "")
    if job == "graph":
        from sklearn.neighbors import kneighbors_graph

        start, cpu_start = time.perf_counter(), _cpu_seconds()
        graph = kneighbors_graph(X, N_NEIGHBORS, include_self=False)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        sp.save_npz(paths["graph"], graph)
        return {**spec, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb()}

    graph = sp.load_npz(paths["graph"]) if job in ("sklearn", "same_graph") else None
    if job == "sklearn":
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(N_CLUSTERS, linkage=linkage, connectivity=graph)
    else:
        from rayclust.cluster import AgglomerativeClustering

        # Warm-up on a tiny set: one-time imports (faiss, torch) are not timed.
        AgglomerativeClustering(2, n_neighbors=5).fit(X[:200])
        model = AgglomerativeClustering(
            N_CLUSTERS, linkage=linkage, connectivity=graph, n_neighbors=N_NEIGHBORS
        )
    rss_before = _peak_rss_mb()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    np.save(paths["labels"].format(job=job, linkage=linkage), model.labels_)
    return {
        **spec,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "ari_truth": float(adjusted_rand_score(truth, model.labels_)),
        # Chaining shows as one cluster holding nearly every point.
        "largest_share": float(np.bincount(model.labels_).max() / len(model.labels_)),
        "components": int(model.n_connected_components_),
        "rounds": int(getattr(model, "n_iter_", 0)),
        "stages": {name: round(sec, 2) for name, sec in getattr(model, "timings_", {}).items()},
        "rss_before_fit_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_isolated(spec: dict, timeout: float | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"}
    return json.loads(done.stdout.strip().splitlines()[-1])


LABELS = {
    "sklearn": "scikit-learn (given graph)",
    "same_graph": "rayclust (given graph)",
    "end_to_end": "rayclust (own graph)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--linkage", nargs="+", default=["ward", "average"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn-timeout", type=float, default=3600.0)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    from sklearn.metrics import adjusted_rand_score

    n, seed = args.n, args.seed
    print(f"blobs n={n:,d}, d={N_FEATURES}, k={N_CLUSTERS}, {N_NEIGHBORS}-NN connectivity")
    graph = run_isolated({"job": "graph", "n": n, "seed": seed})
    if "error" in graph:
        sys.exit(f"graph: {graph['error']}")
    print(
        f"  scikit-learn kneighbors_graph: {graph['seconds']:.2f} s "
        f"(CPU {graph['cpu_seconds']:.2f} s)",
        flush=True,
    )
    paths = _paths(n, seed)
    for linkage in args.linkage:
        print(f"{linkage} linkage:")
        results = {}
        for job in LABELS:
            timeout = args.sklearn_timeout if job == "sklearn" else None
            spec = {"job": job, "linkage": linkage, "n": n, "seed": seed}
            result = results[job] = run_isolated(spec, timeout)
            if "error" in result:
                print(f"  {LABELS[job]:28s} ERROR: {result['error']}")
                continue
            print(
                f"  {LABELS[job]:28s} {result['seconds']:8.2f} s (CPU "
                f"{result['cpu_seconds']:8.2f} s)  ARI(truth)="
                f"{result['ari_truth']:.4f}  largest cluster {result['largest_share']:.1%}  "
                f"{result['components']} comp., "
                f"{result['rounds']} rounds  peak RSS {result['peak_rss_mb']:.0f} MB "
                f"(before fit {result['rss_before_fit_mb']:.0f} MB)"
                + "".join(f", {k} {v:.2f} s" for k, v in result["stages"].items()),
                flush=True,
            )
        if all("error" not in r for r in results.values()):
            ref = np.load(paths["labels"].format(job="sklearn", linkage=linkage))
            same = np.load(paths["labels"].format(job="same_graph", linkage=linkage))
            own = np.load(paths["labels"].format(job="end_to_end", linkage=linkage))
            sk_total = graph["seconds"] + results["sklearn"]["seconds"]
            sk_cpu = graph["cpu_seconds"] + results["sklearn"]["cpu_seconds"]
            print(
                f"  -> merging: {results['sklearn']['seconds'] / results['same_graph']['seconds']:.1f}x"
                f" faster on the same graph (CPU "
                f"{results['sklearn']['cpu_seconds'] / results['same_graph']['cpu_seconds']:.1f}x),"
                f" ARI(rayclust, sklearn) = "
                f"{adjusted_rand_score(ref, same):.4f}; end to end (graph + fit) "
                f"{sk_total:.1f} s vs {results['end_to_end']['seconds']:.1f} s = "
                f"{sk_total / results['end_to_end']['seconds']:.1f}x (CPU "
                f"{sk_cpu / results['end_to_end']['cpu_seconds']:.1f}x), "
                f"ARI(own graph, sklearn) = {adjusted_rand_score(ref, own):.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
