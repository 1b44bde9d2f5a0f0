"""Extraction throughput: the whole Ray pipeline against the bare forward pass, same run.

    python benchmarks/extract.py --source /work/data/tuxpaint --n 512 --view efficientnet_lite0

1. bare forward: the view built in this process, the same N images decoded and transformed
   beforehand (not timed), then only ``model(batch)`` timed, batch by batch, with as many
   torch threads as one extraction actor gets;
2. pipeline: ``extract_views`` into a fresh cache (decode + transform + forward in a Ray
   actor, shards written by the driver);
3. bare forward again (the machine is shared; two measurements bracket the pipeline).

Printed: images/s of each, and the pipeline/forward ratio both in steady state (first
forward start to last forward end, from the actors' own timeline) and end to end (including
Ray actor start-up and model build, which a short run cannot amortise). Goal on CPU: the
steady-state ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bare_forward(view, batches, threads: int) -> float:
    """Images per second of model(batch) alone, after one warm-up batch."""
    import torch

    torch.set_num_threads(threads)
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
    import torch

    from rayclust.config import ExtractionConfig
    from rayclust.images import ImageSet, decode_image
    from rayclust.views import build_view, extract_views, get_view_spec

    image_set = ImageSet.from_source(args.source, progress=False)
    records = image_set.records[: args.n]
    if not records:
        print(f"no usable images in {args.source}", file=sys.stderr)
        return 1
    spec = get_view_spec(args.view)
    threads = max(1, args.num_cpus)  # one view, one actor: it gets every CPU
    view = build_view(spec)
    images = []
    for record in records:
        try:
            images.append(view.transform(decode_image(record.path)))
        except Exception:  # the pipeline reports these as failures and skips them too
            continue
    batches = [
        torch.stack(images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)
    ]
    del images
    forward_before = _bare_forward(view, batches, threads)

    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    with tempfile.TemporaryDirectory(prefix="rayclust-bench-") as cache:
        start = time.perf_counter()
        result = extract_views(
            records, [spec], cache, ExtractionConfig(batch_size=args.batch_size), progress=False
        )[spec.name]
        end_to_end_s = time.perf_counter() - start
    ray.shutdown()
    forward_after = _bare_forward(view, batches, threads)

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
    print(f"ratio steady / forward  = {steady / forward:.2f}  (goal >= 0.8)")
    print(f"ratio end2end / forward = {end_to_end / forward:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
