"""Extraction throughput: the whole Ray pipeline against the bare forward pass, same run.

    python benchmarks/extract.py --source /work/data/tuxpaint --n 512 --view efficientnet_lite0
    python benchmarks/extract.py --engine local     # the in-process engine, same comparison

1. bare forward: an actor of the very class and options the pipeline uses (same process
   kind, CPU priority, torch threads, model build; only a benchmark method added) decodes
   and transforms the same N images beforehand (not timed), then times only
   ``model(batch)`` on a second pass over the batches (the first warms the kernels up);
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


def _bare_forward_actor_class():
    import torch

    from rayclust.views.worker import ViewWorker

    class BareForward(ViewWorker):
        def bare_forward(self, paths: list[str], batch_size: int) -> float:
            """Images per second of model(batch) alone, on a second pass over the batches.

            The first pass after a model is built runs several times slower (kernel set-up);
            the pipeline's steady state includes its own first batches, so this is strict.
            """
            items = [(str(i), path) for i, path in enumerate(paths)]
            # Decoded on the actor's own decode threads, as in the pipeline.
            tensors = self.decode(items).tensors
            batches = [
                torch.stack(tensors[i : i + batch_size]).to(self.device)
                for i in range(0, len(tensors), batch_size)
            ]
            del tensors
            with torch.inference_mode():
                for batch in batches:
                    self.model(batch)
                start = time.perf_counter()
                for batch in batches:
                    self.model(batch).float().cpu()
                elapsed = time.perf_counter() - start
            return sum(len(b) for b in batches) / elapsed

    return BareForward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO_ROOT / "data" / "sample"))
    parser.add_argument("--n", type=int, default=256, help="images to use (first N in path order)")
    parser.add_argument("--view", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs Ray may use")
    parser.add_argument(
        "--engine", default="actors", choices=["actors", "stream", "local"],
        help="extraction engine of the pipeline run (the bare forward is always an actor)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import ray

    from rayclust.config import ExtractionConfig
    from rayclust.images import DEFAULT_MAX_PIXELS, ImageSet
    from rayclust.views import extract_views, get_view_spec

    image_set = ImageSet.from_source(args.source, progress=False)
    records = image_set.records[: args.n]
    if not records:
        print(f"no usable images in {args.source}", file=sys.stderr)
        return 1
    spec = get_view_spec(args.view)
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    from rayclust.views.actors import CALLS_IN_FLIGHT_PER_ACTOR, plan_actor_resources

    plan = plan_actor_resources(
        ExtractionConfig(), 1, ray.cluster_resources(), ray.available_resources()
    )
    bare_cls = ray.remote(_bare_forward_actor_class()).options(
        num_cpus=plan.cpus, num_gpus=plan.gpus, max_concurrency=CALLS_IN_FLIGHT_PER_ACTOR
    )
    paths = [record.path for record in records]

    def bare_forward() -> float:
        actor = bare_cls.remote(
            spec,
            num_threads=plan.threads,
            decode_workers=plan.decode_workers,
            max_pixels=DEFAULT_MAX_PIXELS,
        )
        try:
            return ray.get(actor.bare_forward.remote(paths, args.batch_size))
        finally:
            ray.kill(actor)

    forward_before = bare_forward()
    with tempfile.TemporaryDirectory(prefix="rayclust-bench-") as cache:
        start = time.perf_counter()
        config = ExtractionConfig(batch_size=args.batch_size, engine=args.engine)
        result = extract_views(records, [spec], cache, config, progress=False)[spec.name]
        end_to_end_s = time.perf_counter() - start
    forward_after = bare_forward()
    ray.shutdown()

    steady_s = result.timeline[-1][1] - result.timeline[0][0]
    steady = result.n_extracted / steady_s
    end_to_end = result.n_extracted / end_to_end_s
    forward = (forward_before + forward_after) / 2
    print(
        f"view={args.view} engine={args.engine} n={len(records)} batch_size={args.batch_size} "
        f"num_cpus={args.num_cpus} torch_threads={plan.threads} device={','.join(result.devices)}"
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
