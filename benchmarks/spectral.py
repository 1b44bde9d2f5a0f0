"""Spectral clustering at scale: rayclust vs scikit-learn, measured in the same run.

    python benchmarks/spectral.py                          # n=30,000: time ratio and ARI
    python benchmarks/spectral.py --touching               # + a connected (harder) graph
    python benchmarks/spectral.py --large 1000000          # + rayclust alone at n=1M
    python benchmarks/spectral.py --sklearn-100k           # + both at n=100,000 (slow)

Data (as in /work/shared/FACTS.md): Gaussian blobs, d=64, k=50 centres drawn uniformly in
[-10, 10]^64, unit standard deviation, generated chunk by chunk in float32 so that n=1M costs
256 MB. ``--touching`` draws the centres in [-1.5, 1.5]^64 instead: the 10-NN graph is then
one connected component and every eigenvector matters. scikit-learn runs
``SpectralClustering(n_clusters=50, affinity="nearest_neighbors", n_neighbors=10)``; rayclust
runs ``SpectralClustering(n_clusters=50, n_neighbors=10)`` with its defaults (``method="auto"``:
kNN graph up to 20,000 points, landmarks beyond).

Every fit runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; the RSS
just before the fit (data generated, imports done) is printed beside it. scikit-learn at 1M is not run (it
needs a shift-invert ARPACK solve on a 1M-node graph): with ``--sklearn-100k`` its time is
extrapolated from the 30k and 100k runs by a power law, and labelled as such.
"""

from __future__ import annotations

import argparse
import json
import math
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


def make_data(n: int, *, touching: bool, seed: int = 0, chunk: int = 100_000):
    """(X float32 (n, 64), labels) blobs, generated chunk by chunk."""
    rng = np.random.RandomState(seed)
    box = 1.5 if touching else 10.0
    centers = rng.uniform(-box, box, size=(N_CLUSTERS, N_FEATURES)).astype(np.float32)
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def fit(impl: str, X: np.ndarray, seed: int):
    if impl == "sklearn":
        from sklearn.cluster import SpectralClustering

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
            return SpectralClustering(
                n_clusters=N_CLUSTERS,
                affinity="nearest_neighbors",
                n_neighbors=N_NEIGHBORS,
                random_state=seed,
            ).fit(X)
    from rayclust.cluster import SpectralClustering

    return SpectralClustering(
        n_clusters=N_CLUSTERS, n_neighbors=N_NEIGHBORS, random_state=seed
    ).fit(X)


def _worker(spec: dict) -> dict:
    from sklearn.metrics import adjusted_rand_score

    # A tiny fit first: one-time imports (torch, faiss, scipy.sparse.linalg) are not timed.
    fit(spec["impl"], make_data(1000, touching=spec["touching"], seed=1)[0], spec["seed"])
    X, truth = make_data(spec["n"], touching=spec["touching"], seed=spec["seed"])
    rss_data = _peak_rss_mb()
    info: dict = {}
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    model = fit(spec["impl"], X, spec["seed"])
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    labels = model.labels_
    if spec["impl"] == "rayclust":
        info = {
            "method": model.method_,
            "backend": model.backend_,
            "components": int(model.n_components_),
            "landmarks": int(getattr(model, "n_landmarks_", 0)),
            "stages": {name: round(sec, 2) for name, sec in model.timings_.items()},
        }
    if spec.get("labels_path"):
        np.save(spec["labels_path"], np.asarray(labels))
    return {
        **spec,
        **info,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "ari_truth": float(adjusted_rand_score(truth, labels)),
        "rss_before_fit_mb": rss_data,
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


def _row(result: dict) -> str:
    if "error" in result:
        return f"  {result['impl']:8s} n={result['n']:>9,d}  ERROR: {result['error']}"
    extra = ""
    if result["impl"] == "rayclust":
        extra = f"  [{result['method']}, {result['backend']}, {result['components']} comp."
        extra += f", p={result['landmarks']}" if result["landmarks"] else ""
        extra += ", " + ", ".join(f"{k} {v:.2f}s" for k, v in result["stages"].items()) + "]"
    return (
        f"  {result['impl']:8s} n={result['n']:>9,d}  {result['seconds']:8.2f} s "
        f"(CPU {result['cpu_seconds']:8.2f} s)  "
        f"ARI(truth)={result['ari_truth']:.4f}  peak RSS {result['peak_rss_mb']:7.0f} MB "
        f"(before fit {result['rss_before_fit_mb']:.0f} MB){extra}"
    )


def compare(n: int, touching: bool, seed: int, sklearn_timeout: float) -> tuple[dict, dict]:
    from sklearn.metrics import adjusted_rand_score

    tag = "touching" if touching else "blobs"
    paths = {impl: f"/tmp/rayclust_bench_spectral_{impl}_{tag}_{n}.npy" for impl in IMPLS}
    results = {}
    for impl in IMPLS:
        spec = {"impl": impl, "n": n, "touching": touching, "seed": seed}
        spec["labels_path"] = paths[impl]
        timeout = sklearn_timeout if impl == "sklearn" else None
        results[impl] = run_isolated(spec, timeout)
        print(_row(results[impl]), flush=True)
    ours, ref = results["rayclust"], results["sklearn"]
    if "error" not in ours and "error" not in ref:
        agreement = adjusted_rand_score(np.load(paths["sklearn"]), np.load(paths["rayclust"]))
        print(
            f"  -> speed-up {ref['seconds'] / ours['seconds']:.1f}x wall, "
            f"{ref['cpu_seconds'] / ours['cpu_seconds']:.1f}x CPU, "
            f"ARI(rayclust) - ARI(sklearn) = {ours['ari_truth'] - ref['ari_truth']:+.4f}, "
            f"ARI(rayclust, sklearn) = {agreement:.4f}, "
            f"peak RSS {ours['peak_rss_mb']:.0f} vs {ref['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return ours, ref


IMPLS = ("rayclust", "sklearn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--touching", action="store_true", help="also the connected-graph data")
    parser.add_argument("--large", type=int, default=0, help="rayclust alone at this n")
    parser.add_argument("--sklearn-100k", action="store_true", help="both at n=100,000")
    parser.add_argument("--sklearn-timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    print(f"blobs d={N_FEATURES}, k={N_CLUSTERS}, {N_NEIGHBORS} neighbours; one process per fit")
    print(f"n={args.n:,d}, separated centres ([-10, 10]^64):")
    small_ours, small_ref = compare(args.n, False, args.seed, args.sklearn_timeout)
    if args.touching:
        print(f"n={args.n:,d}, touching centres ([-1.5, 1.5]^64, connected 10-NN graph):")
        compare(args.n, True, args.seed, args.sklearn_timeout)
    if args.sklearn_100k:
        print("n=100,000, separated centres:")
        big_ours, big_ref = compare(100_000, False, args.seed, args.sklearn_timeout)
        if "error" not in big_ref and "error" not in small_ref:
            exponent = math.log(big_ref["seconds"] / small_ref["seconds"]) / math.log(
                100_000 / args.n
            )
            projected = big_ref["seconds"] * (1_000_000 / 100_000) ** exponent
            print(
                f"  EXTRAPOLATION (not measured): scikit-learn time ~ n^{exponent:.2f} from "
                f"n={args.n:,d} and 100,000 -> about {projected:,.0f} s at n=1,000,000"
            )
    if args.large:
        print(f"n={args.large:,d}, separated centres, rayclust only:")
        spec = {"impl": "rayclust", "n": args.large, "touching": False, "seed": args.seed}
        print(_row(run_isolated(spec)), flush=True)


if __name__ == "__main__":
    main()
