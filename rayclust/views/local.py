"""The in-process engine (``extraction.engine: local``; ``auto`` picks it on one machine).

For a laptop, a notebook, a test, one workstation, or a stage that already runs inside a
worker (deep's base features): no Ray at all, not even imported. All the views of a call run
together in this process, with the same transform and forward code as the Ray engines
(:class:`ViewWorker`) and the same :class:`ViewWriter`, so the features, the cache, the
resume and the "each image stored once" rule are the same.

One decode per image for every view: the images any view still lacks are cut into batches;
each image is read once (its bytes hashed against the scan's content id, see
``rayclust.images.read_checked``), decoded once (``decode_variants``: one decode per JPEG
scale the views need, usually a single one), and each view's eval transform is applied to
that decoded image; views with equal transforms share the tensor (the pixel view too rides
on the same decode, with its own reduced size). Then each view runs its forward pass on the
batch and writes its shard. Features are exactly those of the Ray engines, which decode per
view: ``decode_variants`` gives each view what ``decode_image`` alone would.

While one batch runs its forward passes the next one is decoded on the decode threads (one
on a CPU, where the forward already uses the cores; every core on a GPU, where decoding is
the bottleneck).

Resources: ``gpus_per_actor: 0`` keeps the forward on the CPU; otherwise CUDA is used when
this process sees it. ``cpus_per_actor`` sets torch's thread count; unset, the process
setting is left alone. The kill hook of the tests (``RAYCLUST_FAULT_KILL_AFTER_BATCHES``)
is ignored: it would kill the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from rayclust.config import ExtractionConfig
from rayclust.images import ImageDecodeError, decode_variants, read_checked
from rayclust.views.worker import DecodedBatch, FaultHooks, ViewWorker, default_device
from rayclust.views.writer import ExtractionJob, ExtractionResult, ViewWriter

log = logging.getLogger(__name__)

# One image decoded for the views that need it: view index -> tensor or failure reason.
DecodedImage = dict[int, "torch.Tensor | str"]


@dataclass
class _LocalView:
    writer: ViewWriter
    worker: ViewWorker
    todo: set[str]  # image ids this view still lacks


def _plan(config: ExtractionConfig) -> tuple[torch.device, int | None, int]:
    use_gpu = None if config.gpus_per_actor is None else config.gpus_per_actor > 0
    device = default_device(use_gpu)
    threads = None if config.cpus_per_actor is None else max(1, round(config.cpus_per_actor))
    decode_workers = 1 if device.type == "cpu" else (threads or os.cpu_count() or 1)
    return device, threads, decode_workers


def _open_views(job: ExtractionJob, writers: list[ViewWriter]) -> list[_LocalView]:
    device, threads, decode_workers = _plan(job.config)
    views = []
    for writer in writers:
        if not writer.todo:
            continue
        hooks = FaultHooks.from_env(writer.store)
        if hooks.kill_after_batches is not None:
            log.warning("the local engine ignores the fault hook that kills a worker process")
            hooks = dataclasses.replace(hooks, kill_after_batches=None, fault_marker=None)
        worker = ViewWorker(
            writer.spec,
            num_threads=threads,
            max_pixels=job.max_pixels,
            hooks=hooks,
            storage_options=job.storage_options,
            device=device,
        )
        views.append(_LocalView(writer, worker, {image_id for image_id, _ in writer.todo}))
    if views:  # none when every view is cached
        log.debug(
            "local extraction of %s: device=%s, precision=%s, torch threads=%s, decode threads=%d",
            ", ".join(v.writer.name for v in views), device,
            ", ".join(v.worker.precision for v in views), threads or "process default",
            decode_workers,
        )  # fmt: skip
    return views


def _decode_one(
    image_id: str, path: str, views: list[tuple[int, ViewWorker]], job: ExtractionJob
) -> DecodedImage:
    """Read, hash-check and decode one image once; each view's transform on the result."""
    try:
        data = read_checked(path, image_id, job.storage_options)
        images = decode_variants(data, [w.decode_size for _, w in views], job.max_pixels)
    except ImageDecodeError as exc:
        return {index: str(exc) for index, _ in views}
    out: DecodedImage = {}
    shared: dict[tuple[int | None, str], torch.Tensor | str] = {}
    for index, worker in views:
        key = (worker.decode_size, worker.view.transform_key)
        if key not in shared:
            try:
                shared[key] = worker.transform(images[worker.decode_size])
            except Exception as exc:  # a transform that chokes on one image: that view only
                shared[key] = f"transform failed: {type(exc).__name__}: {exc}"
        out[index] = shared[key]
    return out


class _BatchDecoder:
    """Decodes a batch of ``(image id, path)`` items for the views that lack them."""

    def __init__(self, job: ExtractionJob, views: list[_LocalView], workers: int) -> None:
        self.job = job
        self.views = views
        # One thread assembles the next batch (ahead of the forward passes), the image
        # threads decode its images (several on a GPU machine, where decoding is the limit).
        self.ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayclust-batch")
        self.images = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rayclust-decode")

    def submit(self, items: list[tuple[str, str]]) -> Future[list[DecodedBatch]]:
        return self.ahead.submit(self._decode, items)

    def _decode_item(self, item: tuple[str, str]) -> DecodedImage:
        image_id, path = item
        needed = [(i, v.worker) for i, v in enumerate(self.views) if image_id in v.todo]
        return _decode_one(image_id, path, needed, self.job)

    def _decode(self, items: list[tuple[str, str]]) -> list[DecodedBatch]:
        start = time.perf_counter()
        outputs = list(self.images.map(self._decode_item, items))
        seconds = time.perf_counter() - start
        batches = [DecodedBatch([], [], {}, seconds) for _ in self.views]
        for (image_id, _), decoded in zip(items, outputs, strict=True):
            for index, value in decoded.items():
                batch = batches[index]
                if isinstance(value, str):
                    batch.failures[image_id] = value
                else:
                    batch.ids.append(image_id)
                    batch.tensors.append(value)
        return batches

    def close(self) -> None:
        self.ahead.shutdown(wait=True, cancel_futures=True)
        self.images.shutdown(wait=True, cancel_futures=True)


def _run(job: ExtractionJob, views: list[_LocalView]) -> None:
    todo: dict[str, str] = {}  # every image some view lacks, first-seen order
    for view in views:
        todo.update((i, p) for i, p in view.writer.todo if i not in todo)
    items = list(todo.items())
    size = job.config.batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    decoder = _BatchDecoder(job, views, _plan(job.config)[2])
    upcoming = decoder.submit(batches[0])
    try:
        for index in range(len(batches)):
            decoded = upcoming.result()
            if index + 1 < len(batches):
                upcoming = decoder.submit(batches[index + 1])
            for view, batch in zip(views, decoded, strict=True):
                if not batch.ids and not batch.failures:
                    continue
                if not view.writer.devices:
                    view.writer.devices.append(str(view.worker.device))
                view.writer.write_output(view.worker.run(batch))
                if job.stopped:
                    return
    finally:
        upcoming.cancel()
        decoder.close()
        for view in views:
            view.worker.close()


def extract_locally(job: ExtractionJob) -> dict[str, ExtractionResult]:
    """Run ``job`` in this process: every view on one decode of each image."""
    writers = job.open_writers()
    for writer in writers:
        writer.begin()
    if not job.stopped:
        views = _open_views(job, writers)
        if views:
            _run(job, views)
    for writer in writers:
        writer.finish()
    return {writer.name: writer.result() for writer in writers}
