"""The GPU check's measurements (run by ``benchmarks/gpu_check.sh``); torch, timm and
scikit-learn only (CuPy if present): no Ray, no FAISS.

1. extraction img/s per precision (fp32, bf16, fp16) and batch size, ``efficientnet_lite0``
   through rayclust's own ``ViewEncoder`` (channels_last + autocast), on transformed tensors
   already on the host (the forward and the host->device copy; decoding is measured apart);
2. the fp32-vs-low-precision cosine of those features on real images (``data/sample``);
3. decode + transform img/s of the sample on the CPU threads (what must feed the GPU);
4. ``rayclust.cluster.KMeans(backend="torch")`` on CUDA against scikit-learn's KMeans.

On a machine without CUDA the CUDA parts are skipped, each with the reason, and the CPU
figures are printed instead (small sizes, so the whole check stays within minutes).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _images(limit: int) -> list:
    from rayclust.images import ImageSet, decode_image

    records = ImageSet.from_source(str(REPO_ROOT / "data" / "sample"), progress=False).records
    return [decode_image(r.path, target_size=256) for r in records[:limit]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extraction(device: torch.device, batch_sizes: list[int], seconds: float) -> None:
    from rayclust.views import ViewEncoder, get_view_spec

    images = _images(64)
    spec = get_view_spec("efficientnet_lite0")
    precisions = ["fp32", "bf16", "fp16"]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("  bf16: skipped, this GPU has no bf16")
        precisions.remove("bf16")
    if device.type == "cpu":
        precisions.remove("fp16")  # no fp16 arithmetic on most CPUs: emulated, not a target
    reference = None
    for precision in precisions:
        encoder = ViewEncoder(replace(spec, precision=precision), device=device)
        tensors = torch.stack([encoder.transform(img) for img in images])
        features = encoder.encode_tensors(tensors)
        if reference is None:
            reference = features
        cosine = np.sum(
            (reference / np.linalg.norm(reference, axis=1, keepdims=True))
            * (features / np.linalg.norm(features, axis=1, keepdims=True)),
            axis=1,
        )
        rates = []
        for batch_size in batch_sizes:
            batch = tensors[torch.arange(batch_size) % len(tensors)]
            encoder.encode_tensors(batch)  # warm-up (kernel selection)
            _sync(device)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                encoder.encode_tensors(batch)
                n += batch_size
            _sync(device)
            rates.append(f"batch {batch_size}: {n / (time.perf_counter() - start):.0f} img/s")
        print(f"  {precision}: {', '.join(rates)}; cosine to fp32 min {cosine.min():.5f}")


def decoding(threads: int) -> None:
    from rayclust.images import ImageSet, decode_image
    from rayclust.views import build_view, get_view_spec

    records = ImageSet.from_source(str(REPO_ROOT / "data" / "sample"), progress=False).records
    view = build_view(get_view_spec("efficientnet_lite0"))

    def one(path: str):
        return view.transform(decode_image(path, target_size=view.decode_size))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, [r.path for r in records[:8]]))
        start = time.perf_counter()
        list(pool.map(one, [r.path for r in records]))
    rate = len(records) / (time.perf_counter() - start)
    print(f"  decode + transform, {threads} threads: {rate:.0f} img/s (small PNGs of data/sample)")


def kmeans(device: torch.device, n: int) -> None:
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from rayclust.cluster import KMeans

    x, truth = make_blobs(n_samples=n, n_features=128, centers=100, random_state=42)
    x = x.astype(np.float32)
    if device.type != "cuda":
        print("  torch backend on CUDA: skipped, no CUDA device")
        return
    KMeans(100, backend="torch", random_state=0).fit(x[:10_000])  # warm-up (CUDA context)
    start = time.perf_counter()
    ours = KMeans(100, backend="torch", random_state=0).fit(x)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = SklearnKMeans(100, n_init=1, random_state=0).fit(x)
    ref_s = time.perf_counter() - start
    print(
        f"  {n} x 128, k=100: torch/CUDA {ours_s:.2f} s (ARI {adjusted_rand_score(truth, ours.labels_):.3f}),"
        f" scikit-learn {ref_s:.2f} s (ARI {adjusted_rand_score(truth, ref.labels_):.3f}),"
        f" ratio {ref_s / ours_s:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA device: CPU figures instead"
    print(f"torch {torch.__version__}, device: {name}, {os.cpu_count()} CPUs")
    print("1-2. extraction (efficientnet_lite0, 224 px, ViewEncoder):")
    extraction(device, [64, 256, 512] if cuda else [32], args.seconds if cuda else 2.0)
    print("3. decoding on the CPU:")
    decoding(os.cpu_count() or 1)
    print("4. K-means:")
    kmeans(device, 1_000_000 if cuda else 20_000)
    try:
        import cupy  # noqa: F401

        print("CuPy: present")
    except ImportError:
        print("CuPy: not installed (cupy-cuda12x); the cuml/cupy backends were not checked")


if __name__ == "__main__":
    main()
