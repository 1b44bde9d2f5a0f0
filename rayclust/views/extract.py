"""Feature extraction, the front door: ``extract_views`` checks a call and hands it to an engine.

The layers below it, each in its own module and none importing an engine::

    worker.py   ViewEncoder / ViewWorker: build a view where it runs; decode, transform, forward
    writer.py   ExtractionJob / ViewWriter: todo lists, one FeatureStore shard per batch,
                counters, progress, ExtractionResult
    engines     local.py   in this process, no Ray; one decode per image for every view
                           (engine "local"; "auto", the default, picks it on one machine)
                actors.py  one Ray actor pool per view, all at once (engine "actors")
                stream.py  one Ray Data pipeline per view           (engine "stream")
    precision.py  the forward's precision (auto: bf16 / fp16 / fp32 by device), channels_last

Every engine resumes from what the store holds, stores each image once and records decode
failures, because the writer does that; features are the same whichever engine ran them,
because the worker computes them. The test hooks (``RAYCLUST_FAULT_KILL_AFTER_BATCHES`` ...)
are described in ``rayclust.views.worker``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rayclust import remote
from rayclust.config import ExtractionConfig
from rayclust.images import DEFAULT_MAX_PIXELS, ImageRecord
from rayclust.views.pixels import PIXEL_WEIGHTS
from rayclust.views.precision import resolve_precision
from rayclust.views.registry import resolve_view
from rayclust.views.spec import DRAFT_DECODE, ViewSpec
from rayclust.views.store import default_cache_dir
from rayclust.views.worker import (
    BATCH_DELAY_ENV,
    FAULT_KILL_ENV,
    FAULT_MARKER_ENV,
    FORWARD_LOG_ENV,
    default_device,
)
from rayclust.views.writer import ExtractionJob, ExtractionResult

log = logging.getLogger(__name__)

# Engine name -> "module:function" running an ExtractionJob; imported on first use, so a
# local run never imports Ray.
ENGINES: dict[str, str] = {
    "actors": "rayclust.views.actors:extract_with_actors",
    "stream": "rayclust.views.stream:extract_with_stream",
    "local": "rayclust.views.local:extract_locally",
}


def _engine(name: str) -> Callable[[ExtractionJob], dict[str, ExtractionResult]]:
    target = ENGINES.get(name)
    if target is None:
        names = ", ".join(map(repr, ["auto", *ENGINES]))
        raise ValueError(f"engine={name!r} is not one of {names}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def resolve_engine(config: ExtractionConfig, address: str | None = None) -> str:
    """``config.engine``, with ``auto`` decided: ``actors`` when Ray brings something,
    ``local`` (no Ray at all) when it would only add its start-up.

    Ray brings something when there is a cluster to join (``address``, i.e. ``ray.address``,
    or ``RAY_ADDRESS``), when this process already runs in a Ray session (a tune trial, a
    driver that called ``ray.init``), or when this machine has several GPUs (the local
    engine uses one device). On one machine otherwise the local engine is as fast or faster:
    it decodes each image once for all views and starts in a second instead of ~7.
    """
    if config.engine != "auto":
        return config.engine
    ray = sys.modules.get("ray")
    if address or os.environ.get("RAY_ADDRESS"):
        engine, why = "actors", "a Ray cluster to join"
    elif ray is not None and ray.is_initialized():
        engine, why = "actors", "a Ray session is running in this process"
    elif torch.cuda.device_count() > 1:
        engine, why = "actors", f"{torch.cuda.device_count()} GPUs"
    else:
        engine, why = "local", "one machine, no Ray cluster to join"
    log.debug("extraction engine: auto -> %s (%s)", engine, why)
    return engine


def _device_type(engine: str, config: ExtractionConfig) -> str:
    """Where the forward passes of ``engine`` will run: "cuda" or "cpu" (for the precision)."""
    wants_gpu = None if config.gpus_per_actor is None else config.gpus_per_actor > 0
    if engine == "local" or wants_gpu is False:
        return default_device(wants_gpu).type
    if wants_gpu:
        return "cuda"
    from rayclust.ray_session import cluster_gpus

    return "cuda" if cluster_gpus() > 0 else "cpu"  # as the Ray engines will decide


def extraction_specs(
    views: Sequence[str | ViewSpec] | str | ViewSpec,
    config: ExtractionConfig | None = None,
    engine: str | None = None,
) -> list[ViewSpec]:
    """The ViewSpecs an extraction with ``config`` computes (and caches under
    ``spec.key()``): each view with the forward precision (``auto`` decided for the device
    the engine will use; pixel views, which have no network, stay fp32) and the
    reduced-scale decode."""
    config = config or ExtractionConfig()
    if isinstance(views, (str, ViewSpec)):
        views = [views]
    specs = [resolve_view(view) for view in views]
    precision = config.precision
    if precision == "auto" and any(spec.weights != PIXEL_WEIGHTS for spec in specs):
        precision = resolve_precision(
            "auto", _device_type(engine or resolve_engine(config), config)
        )
    return [
        replace(
            spec,
            precision="fp32" if spec.weights == PIXEL_WEIGHTS else precision,
            decode=DRAFT_DECODE,
        )
        for spec in specs
    ]


def _cache_root(cache_root: str | os.PathLike | None, config: ExtractionConfig) -> Path | str:
    """A folder as a Path; an s3:// / gs:// prefix stays a str (a Path would fold its //)."""
    root = cache_root if cache_root is not None else config.cache_dir
    if not root:
        return default_cache_dir()
    return root if remote.is_remote(root) else Path(root)


def extract_views(
    records: Sequence[ImageRecord],
    views: Sequence[str | ViewSpec] | str | ViewSpec,
    cache_root: str | os.PathLike | None = None,
    config: ExtractionConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    *,
    stop_after_shards: int | None = None,
    on_shard: Callable[[str, int], None] | None = None,
    on_view_done: Callable[[str, ExtractionResult], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    engine: str | None = None,
) -> dict[str, ExtractionResult]:
    """Extract (or find cached) features of ``records`` for every view.

    Parameters
    ----------
    records : images to extract; duplicates by ``image_id`` are extracted once.
    views : registry names or ViewSpecs. Results are keyed by the name (``spec.name``).
    cache_root : FeatureStore root, a folder or an s3:// / gs:// prefix; None falls back to
        ``config.cache_dir``, then ``$RAYCLUST_CACHE_DIR``, then ``~/.cache/rayclust/features``.
    config : batch size, actors per view, resources, restarts, and the engine.
    max_pixels : larger images are reported as decode failures.
    progress : tqdm bars in a terminal, periodic log lines otherwise.
    stop_after_shards : stop once this many shards were written in this call (all views
        together), leaving the rest for a later call - a deliberate interruption.
    on_shard : called with (view name, rows added) after each shard is written.
    on_view_done : called with (view name, its ExtractionResult) once per view, in the
        calling process, as soon as that view is finished (every feature stored, or the call
        stopped: ``result.n_remaining`` says). The actors engine runs views side by side, so
        they finish at different times (a view all in the cache at once); the stream engine
        runs them one after the other; the local engine decodes each image once for all
        views, so there every view finishes together, at the end. It runs in the engine's
        loop: hand heavy work elsewhere (a thread, a Ray task).
    storage_options : s3fs / gcsfs options for records whose paths are s3:// or gs:// URIs
        (e.g. ``{"endpoint_url": ...}``); the workers read those objects themselves. A
        bucket ``cache_root`` is read and written with them too.
    engine : ``"actors"`` (Ray actor pools, all views at once), ``"stream"`` (Ray Data,
        bounded memory), ``"local"`` (this process, no Ray, one decode for all views) or
        ``"auto"`` (:func:`resolve_engine`); None: ``config.engine``.

    Each view runs at ``config.precision`` and decodes at reduced scale; both are part of
    its cache key (:func:`extraction_specs`).

    Returns
    -------
    ``{view name: ExtractionResult}``; the features are in ``FeatureStore(cache_root,
    result.spec_key)``.
    """
    config = config or ExtractionConfig()
    engine = engine or config.engine
    if engine == "auto":
        engine = resolve_engine(config)
    run = _engine(engine)
    if isinstance(views, (str, ViewSpec)):
        views = [views]
    if not views:
        raise ValueError("views is empty: name at least one view, e.g. efficientnet_lite0")
    if stop_after_shards is not None and stop_after_shards < 1:
        raise ValueError(f"stop_after_shards={stop_after_shards} should be >= 1 or None")
    specs = extraction_specs(views, config, engine)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"views {names} name the same view twice")
    job = ExtractionJob(
        specs=specs,
        root=_cache_root(cache_root, config),
        config=config,
        paths_by_id=ExtractionJob.index_records(records),
        max_pixels=max_pixels,
        progress=progress,
        storage_options=dict(storage_options or {}) or None,
        stop_after_shards=stop_after_shards,
        on_shard=on_shard,
        on_view_done=on_view_done,
    )
    return run(job)


__all__ = [
    "BATCH_DELAY_ENV",
    "ENGINES",
    "FAULT_KILL_ENV",
    "FAULT_MARKER_ENV",
    "FORWARD_LOG_ENV",
    "ExtractionResult",
    "extract_views",
    "extraction_specs",
    "resolve_engine",
]
