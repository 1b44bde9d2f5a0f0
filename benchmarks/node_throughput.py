"""Per-CPU-second costs of one image: decode + transform against the forward pass, same run.

    python benchmarks/node_throughput.py [--view efficientnet_lite0] [--n 96]

The scaling note (experiments/README.md, "Scaling") sizes GPU nodes from two numbers: how
many images one CPU core decodes and transforms per second, and how many the model embeds.
Both are measured here in CPU-seconds (``time.process_time``), one thread each, so a busy
shared machine slows the wall clock but changes the figures far less. Inputs: the shipped
sample's images as they are (PNG drawings), re-encoded as 640x480 JPEGs, and as 12 MP
(4000x3000) JPEGs with sensor-like noise (a phone photo's size and entropy), each decoded by
``rayclust.images.decode_image`` as the extraction does (full decode) and at reduced JPEG
scale (``target_size``, DCT scaling). Printed: images per CPU-second for each stage and their ratio, the
CPU cores a GPU needs to be kept busy (its forward rate over the decode rate).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _per_cpu_second(work, n_items: int, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = max(best, n_items / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--view", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=96, help="images (from data/sample)")
    parser.add_argument("--n-photos", type=int, default=8, help="12 MP JPEGs made from them")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from rayclust.images import decode_image
    from rayclust.views import build_view

    torch.set_num_threads(1)
    paths = sorted((REPO_ROOT / "data" / "sample").glob("*/*.png"))[: args.n]
    if not paths:
        raise SystemExit("no images under data/sample; run scripts/build_sample.py")
    view = build_view(args.view)
    jpegs = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((640, 480)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())

    rng = np.random.default_rng(0)
    photos = []
    for path in paths[: args.n_photos]:
        big = np.asarray(Image.open(path).convert("RGB").resize((4000, 3000)), dtype=np.int16)
        noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    resize = int(round(view.data_config["input_size"][-1] / view.data_config.get("crop_pct", 1)))

    def decode(sources, target_size=None):
        def work():
            for source in sources:
                view.transform(decode_image(source, target_size=target_size))

        return work

    images = [Image.open(p).convert("RGB") for p in paths]
    batches = [
        view.preprocess(images[i : i + args.batch_size])
        for i in range(0, len(images), args.batch_size)
    ]
    view.embed(batches[0])  # the first forward sets kernels up

    def forward():
        for batch in batches:
            view.embed(batch)

    n = len(paths)
    png = _per_cpu_second(decode([str(p) for p in paths]), n)
    jpeg = _per_cpu_second(decode(jpegs), n)
    photo_full = _per_cpu_second(decode(photos), len(photos))
    photo_draft = _per_cpu_second(decode(photos, target_size=resize), len(photos))
    fwd = _per_cpu_second(forward, n)
    kb = sum(map(len, jpegs)) / len(jpegs) / 1e3
    mb = sum(map(len, photos)) / len(photos) / 1e6
    rate = "img per CPU-second"
    print(f"{args.view}, {n} images ({len(photos)} photos), 1 thread, batch {args.batch_size}")
    print(f"  decode + transform, sample PNGs:              {png:7.1f} {rate}")
    print(f"  decode + transform, 640x480 JPEG, {kb:3.0f} kB:     {jpeg:7.1f} {rate}")
    print(f"  decode + transform, 12 MP JPEG, {mb:.1f} MB, full: {photo_full:7.1f} {rate}")
    print(f"  ... the same at reduced JPEG scale (>= {resize} px): {photo_draft:7.1f} {rate}")
    print(f"  forward pass (CPU):                           {fwd:7.1f} {rate}")
    print(
        f"  ratio decode(JPEG) / forward: {jpeg / fwd:.1f}: on a CPU one decode thread feeds "
        f"{jpeg / fwd:.0f} forward threads; a GPU embedding R img/s needs R / {jpeg:.0f} cores"
    )


if __name__ == "__main__":
    main()
