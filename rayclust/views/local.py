"""The in-process engine (``extraction.engine: local``): no Ray at all.

For a laptop, a notebook, a test, or a stage that already runs inside a worker (deep's base
features): the views run one after the other in this process, each as one
:class:`ViewWorker`, with the same decode, transform and forward code as the Ray engines
and the same :class:`ViewWriter`, so the features, the cache, the resume and the
"each image stored once" rule are the same. Ray is never imported here, nor started.

While one batch runs its forward pass the next one is decoded on the worker's decode
threads (one on a CPU, where the forward already uses the cores; every core on a GPU, where
decoding is the bottleneck), as in an extraction actor.

Resources: ``gpus_per_actor: 0`` keeps the forward on the CPU; otherwise CUDA is used when
this process sees it. ``cpus_per_actor`` sets torch's thread count; unset, the process
setting is left alone. The kill hook of the tests (``RAYCLUST_FAULT_KILL_AFTER_BATCHES``)
is ignored: it would kill the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

from rayclust.config import ExtractionConfig
from rayclust.views.worker import DecodedBatch, FaultHooks, ViewWorker, default_device
from rayclust.views.writer import ExtractionJob, ExtractionResult, ViewWriter

log = logging.getLogger(__name__)


def _local_worker(job: ExtractionJob, writer: ViewWriter) -> ViewWorker:
    config: ExtractionConfig = job.config
    use_gpu = None if config.gpus_per_actor is None else config.gpus_per_actor > 0
    device = default_device(use_gpu)
    threads = None if config.cpus_per_actor is None else max(1, round(config.cpus_per_actor))
    decode_workers = 1 if device.type == "cpu" else (threads or os.cpu_count() or 1)
    hooks = FaultHooks.from_env(writer.store)
    if hooks.kill_after_batches is not None:
        log.warning("the local engine ignores the fault hook that kills a worker process")
        hooks = dataclasses.replace(hooks, kill_after_batches=None, fault_marker=None)
    log.info(
        "local extraction of %s: device=%s, torch threads=%s, decode threads=%d",
        writer.name, device, threads or "process default", decode_workers,
    )  # fmt: skip
    return ViewWorker(
        writer.spec,
        num_threads=threads,
        decode_workers=decode_workers,
        max_pixels=job.max_pixels,
        hooks=hooks,
        storage_options=job.storage_options,
        device=device,
    )


def _extract_view(job: ExtractionJob, writer: ViewWriter) -> None:
    batches = writer.batches()
    worker = _local_worker(job, writer)
    writer.devices.append(str(worker.device))
    # One thread to run the decode of the next batch during this batch's forward pass.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayclust-decode-ahead")
    upcoming: Future[DecodedBatch] = ahead.submit(worker.decode, batches[0])
    try:
        for index in range(len(batches)):
            decoded = upcoming.result()
            if index + 1 < len(batches):
                upcoming = ahead.submit(worker.decode, batches[index + 1])
            writer.write_output(worker.run(decoded))
            if job.stopped:
                break
    finally:
        upcoming.cancel()
        ahead.shutdown(wait=True)  # a decode still running ends before its pool goes
        worker.close()


def extract_locally(job: ExtractionJob) -> dict[str, ExtractionResult]:
    """Run ``job`` in this process, the views one after the other."""
    writers = job.open_writers()
    for writer in writers:
        writer.begin()
        if writer.todo and not job.stopped:
            _extract_view(job, writer)
        writer.finish()
    return {writer.name: writer.result() for writer in writers}
