"""Extraction throughput: the whole Ray pipeline against the bare forward pass, same run.

    python benchmarks/extract.py --source /work/data/tuxpaint --n 512 --view efficientnet_lite0

1. bare forward: a Ray task with the same resources as an extraction actor (Ray runs its
   workers at a lower CPU priority, so a driver-side measurement would not be comparable on
   a shared machine) builds the view, decodes and transforms the same N images beforehand
   (not timed), then times only ``model(batch)``, batch by batch;
2. pipeline: ``extract_views`` into a fresh cache (decode + transform + forward in a Ray
   actor, shards written by the driver);
3. bare forward again (the machine may be shared; two measurements bracket the pipeline).

Printed: images/s of each, and the pipeline/forward ratio both in steady state (first
forward start to last forward end, from the actors' own timeline) and end to end (including
Ray actor start-up and model build, which a short run cannot amortise), and the fraction
of the steady-state time the actor spent in forward passes. Goal on CPU: the steady-state
ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bare_forward(spec, paths: list[str], batch_size: int, threads: int) -> float:
    """Images per second of model(batch) alone, after one warm-up batch."""
    import torch

    from rayclust.images import decode_image
    from rayclust.views import build_view

    torch.set_num_threads(threads)
    view = build_view(spec)
    images = []
    for path in paths:
        try:
            images.append(view.transform(decode_image(path)))
        except Exception:  # the pipeline reports these as failures and skips them too
            continue
    batches = [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    del images
    with torch.inference_mode():
        view.model(batches[0])
        start = time.perf_counter()
        for batch in batches:
            view.model(batch)
        elapsed = time.perf_counter() - start
    return sum(len(b) for b in batches) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO_ROOT / "data" / "sample"))
    parser.add_argument("--n", type=int, default=256, help="images to use (first N in path order)")
    parser.add_argument("--view", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs Ray may use")
    args = parser.parse_args(argv)

    import ray

    from rayclust.config import ExtractionConfig
    from rayclust.images import ImageSet
    from rayclust.views import extract_views, get_view_spec

    image_set = ImageSet.from_source(args.source, progress=False)
    records = image_set.records[: args.n]
    if not records:
        print(f"no usable images in {args.source}", file=sys.stderr)
        return 1
    spec = get_view_spec(args.view)
    threads = max(1, args.num_cpus)  # one view, one actor: it gets every CPU
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    bare = ray.remote(_bare_forward).options(num_cpus=threads)
    paths = [record.path for record in records]
    forward_before = ray.get(bare.remote(spec, paths, args.batch_size, threads))
    with tempfile.TemporaryDirectory(prefix="rayclust-bench-") as cache:
        start = time.perf_counter()
        result = extract_views(
            records, [spec], cache, ExtractionConfig(batch_size=args.batch_size), progress=False
        )[spec.name]
        end_to_end_s = time.perf_counter() - start
    forward_after = ray.get(bare.remote(spec, paths, args.batch_size, threads))
    ray.shutdown()

    steady_s = result.timeline[-1][1] - result.timeline[0][0]
    steady = result.n_extracted / steady_s
    end_to_end = result.n_extracted / end_to_end_s
    forward = (forward_before + forward_after) / 2
    print(
        f"view={args.view} n={len(records)} batch_size={args.batch_size} "
        f"num_cpus={args.num_cpus} torch_threads={threads} device={','.join(result.devices)}"
    )
    print(
        f"images forwarded by the pipeline: {result.n_extracted}, decode failures: {len(result.failed)}"
    )
    print(
        f"bare forward      : {forward_before:7.1f} img/s before, {forward_after:7.1f} img/s after"
    )
    print(f"pipeline, steady  : {steady:7.1f} img/s  ({steady_s:.1f} s)")
    print(f"pipeline, end2end : {end_to_end:7.1f} img/s  ({end_to_end_s:.1f} s incl. actor start)")
    print(
        f"inside the actor  : forward {result.forward_seconds:.1f} s "
        f"({result.n_extracted / result.forward_seconds:.1f} img/s), decode+transform "
        f"{result.decode_seconds:.1f} s (overlapped with the forward)"
    )
    # Load-independent check of the overlap: 1.0 means the actor's forward passes ran back to
    # back, never waiting for decoding (the bare-forward ratio swings on a shared machine).
    print(f"forward busy fraction in the actor = {result.forward_seconds / steady_s:.2f}")
    print(f"ratio steady / forward  = {steady / forward:.2f}  (goal >= 0.8)")
    print(f"ratio end2end / forward = {end_to_end / forward:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
