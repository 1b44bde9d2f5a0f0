"""Streaming extraction with Ray Data: for collections far bigger than memory.

``extract_views(..., config)`` with ``extraction.engine: stream`` comes here. Per view, one
Ray Data pipeline::

    (image id, path) rows        the images this view's FeatureStore still lacks
      -> map_batches(decode)      CPU tasks anywhere in the cluster: read the file or object
                                  (s3:// / gs:// through rayclust.remote), decode, the view's
                                  eval transform; undecodable images become failure rows
      -> map_batches(forward)     an autoscaling actor pool (1..actors_per_view) that builds
                                  the view once per actor and runs the forward pass, with the
                                  GPUs / CPUs the actors declare
      -> iter_batches (driver)    each batch becomes one FeatureStore shard as it arrives

Memory stays bounded whatever the collection size: Ray Data's streaming executor keeps only
a budget of blocks in flight (``extraction.stream_memory_mb``, default: Ray Data's share of
the object store) and stops the decode tasks when the forward actors or the driver fall
behind (backpressure). What is held whole is the list of ids and paths still to do (about
100 bytes an image), as ``ImageSet`` holds it already.

Where the features are written: in the driver, one shard per batch, by the same
:class:`~rayclust.views.writer.ViewWriter` as the other engines. The cache folder therefore
only has to be on the driver's machine (the head node for ``ray job submit``), never shared
among nodes; features
cross the network once (4 bytes x dim per image), images are read where they are decoded.

Guarantees, as for the actor engine: a run resumes from the shards already written (the
todo list is what the store lacks); each image is stored once (the store drops ids it
holds, so a batch that Ray Data re-runs after a lost node adds nothing twice); decode
failures are recorded and not retried. Features equal the actor engine's: the same decode,
transform and forward code (``decode_for_view``, ``ViewWorker.forward``) on the same images;
each view decodes its images itself (the local engine decodes once for all views).

Views run one after the other (each pipeline uses the whole cluster); the actor engine runs
all views at once instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rayclust.config import ExtractionConfig
from rayclust.ray_session import ensure_ray
from rayclust.views.registry import build_view
from rayclust.views.spec import DRAFT_DECODE, ViewSpec
from rayclust.views.worker import FaultHooks, ViewWorker, decode_for_view
from rayclust.views.writer import ExtractionJob, ExtractionResult, ViewWriter

log = logging.getLogger(__name__)

_BLOCK_BATCHES = 8  # input rows per block, in batches: the unit a decode task works on
_DECODE_CPUS = 1.0
# Logical memory each decode task reserves (a big photo decodes to hundreds of MB), so a
# node runs no more decode tasks than its RAM holds. Asking for it also keeps Ray Data from
# fusing decode into the forward actors (it fuses only operators with equal resource
# requests): fused, decoding and the forward pass would take turns in one process.
_DECODE_MEMORY = 256 * 1024**2


@functools.lru_cache(maxsize=4)
def _eval_transform(spec: ViewSpec) -> tuple[Callable, tuple[int, ...], int | None]:
    """The view's eval transform, the shape of what it returns and its decode size, built
    once per worker process (Ray reuses the processes of finished tasks); the model built
    alongside is dropped at once. The shape fills the rows of images that failed: every
    batch must have the same tensor shape, or Ray Data could not put two batches into one
    block."""
    from PIL import Image

    view = build_view(spec, device="cpu")
    decode_size = view.decode_size if spec.decode == DRAFT_DECODE else None
    return view.transform, tuple(view.transform(Image.new("RGB", (64, 64))).shape), decode_size


def _decode_batch(
    batch: dict[str, np.ndarray],
    spec: ViewSpec,
    max_pixels: int,
    storage_options: dict[str, Any] | None,
) -> dict[str, np.ndarray]:
    """Ray Data task: (image_id, path) rows -> transformed pixels, or a failure reason."""
    import time

    transform, shape, decode_size = _eval_transform(spec)
    ids = [str(value) for value in batch["image_id"]]
    pixels = np.zeros((len(ids), *shape), dtype=np.float32)
    failures: list[str] = []
    seconds: list[float] = []
    for row, path in enumerate(batch["path"]):
        start = time.perf_counter()
        tensor, reason = decode_for_view(
            str(path),
            transform,
            max_pixels,
            storage_options,
            image_id=ids[row],
            target_size=decode_size,
        )
        if tensor is not None:
            pixels[row] = tensor.numpy()
        failures.append(reason or "")
        seconds.append(time.perf_counter() - start)
    return {
        "image_id": np.array(ids, dtype=object),
        "pixels": pixels,
        "failure": np.array(failures, dtype=object),
        "decode_s": np.array(seconds, dtype=np.float64),
    }


class _StreamForward:
    """Ray Data actor: a ViewWorker fed decoded batches instead of paths."""

    def __init__(self, spec: ViewSpec, num_threads: int, hooks: FaultHooks) -> None:
        self.worker = ViewWorker(spec, num_threads=num_threads, hooks=hooks)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        failures = [str(reason) for reason in batch["failure"]]
        ok = [row for row, reason in enumerate(failures) if not reason]
        ids = [str(batch["image_id"][row]) for row in ok]
        pixels = batch["pixels"]
        tensors = [torch.from_numpy(np.array(pixels[row], dtype=np.float32)) for row in ok]
        features, (start, end) = self.worker.forward(ids, tensors)
        n = len(failures)
        out = np.zeros((n, self.worker.feature_dim), dtype=np.float32)
        out[ok] = features
        return {
            "image_id": batch["image_id"],
            "feature": out,
            "failure": batch["failure"],
            "decode_s": batch["decode_s"],
            "forward_start": np.full(n, start),
            "forward_end": np.full(n, end),
            "device": np.array([str(self.worker.device)] * n, dtype=object),
        }


def plan_stream_resources(
    config: ExtractionConfig, total: dict[str, float]
) -> tuple[float, float, int]:
    """(CPUs, GPUs, torch threads) of each forward actor; the one place this engine decides.

    Unlike the actor engine, decoding runs in separate tasks, so the forward actors leave at
    least one CPU of the cluster to them (with none left, the pipeline could not move).
    """
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) > 0 else 0.0
    cpus = config.cpus_per_actor
    if cpus is None:
        spare = max(1.0, total.get("CPU", 1) - _DECODE_CPUS)
        cpus = 1.0 if gpus > 0 else float(max(1, int(spare // config.actors_per_view)))
    threads = max(1, int(round(cpus)))
    log.info(
        "stream extraction: forward actors 1..%d x (num_cpus=%g, num_gpus=%g, torch threads=%d),"
        " decode tasks x num_cpus=%g",
        config.actors_per_view, cpus, gpus, threads, _DECODE_CPUS,
    )  # fmt: skip
    return cpus, gpus, threads


@contextlib.contextmanager
def _data_context(config: ExtractionConfig, progress: bool) -> Iterator[None]:
    """Set Ray Data's memory budget and progress bars for this call only."""
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.resource_limits, ctx.enable_progress_bars)
    if config.stream_memory_mb is not None:
        ctx.execution_options.resource_limits = ExecutionResources.for_limits(
            object_store_memory=config.stream_memory_mb * 1024**2
        )
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    try:
        yield
    finally:
        ctx.execution_options.resource_limits, ctx.enable_progress_bars = saved


def _todo_dataset(items: list[tuple[str, str]], batch_size: int):
    """The (image_id, path) rows as Arrow blocks of a few batches each: each block is one
    decode task, so there are enough of them to spread over the cluster."""
    import pyarrow as pa
    import ray

    block_rows = batch_size * _BLOCK_BATCHES
    tables = [
        pa.table(
            {
                "image_id": [image_id for image_id, _ in items[i : i + block_rows]],
                "path": [path for _, path in items[i : i + block_rows]],
            }
        )
        for i in range(0, len(items), block_rows)
    ]
    return ray.data.from_arrow(tables)


def _pipeline(job: ExtractionJob, writer: ViewWriter):
    """The view's Ray Data pipeline: decode tasks, then the forward actor pool."""
    import ray
    from ray.data import ActorPoolStrategy

    config = job.config
    cpus, gpus, threads = plan_stream_resources(config, ray.cluster_resources())
    return (
        _todo_dataset(writer.todo, config.batch_size)
        .map_batches(
            _decode_batch,
            fn_kwargs={
                "spec": writer.spec,
                "max_pixels": job.max_pixels,
                "storage_options": job.storage_options,
            },
            batch_size=config.batch_size,
            batch_format="numpy",
            num_cpus=_DECODE_CPUS,
            memory=_DECODE_MEMORY,
        )
        .map_batches(
            _StreamForward,
            fn_constructor_kwargs={
                "spec": writer.spec,
                "num_threads": threads,
                "hooks": FaultHooks.from_env(writer.store),
            },
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=config.actors_per_view),
            num_cpus=cpus,
            num_gpus=gpus,
        )
    )


def _write_batch(writer: ViewWriter, batch: dict[str, np.ndarray]) -> None:
    ids = [str(value) for value in batch["image_id"]]
    reasons = [str(reason) for reason in batch["failure"]]
    ok = [row for row, reason in enumerate(reasons) if not reason]
    writer.write(
        [ids[row] for row in ok],
        batch["feature"][ok],
        {image_id: reason for image_id, reason in zip(ids, reasons, strict=True) if reason},
        spans=zip(batch["forward_start"].tolist(), batch["forward_end"].tolist(), strict=True),
        decode_seconds=float(np.sum(batch["decode_s"])),
    )
    for device in dict.fromkeys(batch["device"].tolist()):
        if device not in writer.devices:
            writer.devices.append(device)


def extract_with_stream(job: ExtractionJob) -> dict[str, ExtractionResult]:
    """Run ``job`` as one Ray Data pipeline per view, the views one after the other."""
    writers = job.open_writers()
    for writer in writers:
        writer.begin()
        if writer.todo and not job.stopped:
            ensure_ray()
            dataset = _pipeline(job, writer)
            with _data_context(job.config, job.progress):
                batches = iter(
                    dataset.iter_batches(
                        batch_size=job.config.batch_size, batch_format="numpy", prefetch_batches=1
                    )
                )
                try:
                    for batch in batches:
                        _write_batch(writer, batch)
                        if job.stopped:
                            break
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()  # stops the pipeline's tasks and actors if we left early
        writer.finish()
    return {writer.name: writer.result() for writer in writers}
