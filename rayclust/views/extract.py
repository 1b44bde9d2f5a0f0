"""Feature extraction, the front door: ``extract_views`` checks a call and hands it to an engine.

The layers below it, each in its own module and none importing an engine::

    worker.py   ViewEncoder / ViewWorker: build a view where it runs; decode, transform, forward
    writer.py   ExtractionJob / ViewWriter: todo lists, one FeatureStore shard per batch,
                counters, progress, ExtractionResult
    engines     local.py   in this process, no Ray                  (engine "local")
                actors.py  one Ray actor pool per view, all at once (engine "actors", default)
                stream.py  one Ray Data pipeline per view           (engine "stream")

Every engine resumes from what the store holds, stores each image once and records decode
failures, because the writer does that; features are the same whichever engine ran them,
because the worker computes them. The test hooks (``RAYCLUST_FAULT_KILL_AFTER_BATCHES`` ...)
are described in ``rayclust.views.worker``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rayclust.config import ExtractionConfig
from rayclust.images import DEFAULT_MAX_PIXELS, ImageRecord
from rayclust.views.registry import resolve_view
from rayclust.views.spec import ViewSpec
from rayclust.views.store import default_cache_dir
from rayclust.views.worker import BATCH_DELAY_ENV, FAULT_KILL_ENV, FAULT_MARKER_ENV, FORWARD_LOG_ENV
from rayclust.views.writer import ExtractionJob, ExtractionResult

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
        raise ValueError(f"engine={name!r} is not one of {', '.join(map(repr, ENGINES))}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _cache_root(cache_root: str | os.PathLike | None, config: ExtractionConfig) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    if config.cache_dir:
        return Path(config.cache_dir)
    return default_cache_dir()


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
    storage_options: Mapping[str, Any] | None = None,
    engine: str | None = None,
) -> dict[str, ExtractionResult]:
    """Extract (or find cached) features of ``records`` for every view.

    Parameters
    ----------
    records : images to extract; duplicates by ``image_id`` are extracted once.
    views : registry names or ViewSpecs. Results are keyed by the name (``spec.name``).
    cache_root : FeatureStore root; None falls back to ``config.cache_dir``, then
        ``$RAYCLUST_CACHE_DIR``, then ``~/.cache/rayclust/features``.
    config : batch size, actors per view, resources, restarts, and the engine.
    max_pixels : larger images are reported as decode failures.
    progress : tqdm bars in a terminal, periodic log lines otherwise.
    stop_after_shards : stop once this many shards were written in this call (all views
        together), leaving the rest for a later call - a deliberate interruption.
    on_shard : called with (view name, rows added) after each shard is written.
    storage_options : s3fs / gcsfs options for records whose paths are s3:// or gs:// URIs
        (e.g. ``{"endpoint_url": ...}``); the workers read those objects themselves.
    engine : ``"actors"`` (Ray actor pools, all views at once), ``"stream"`` (Ray Data,
        bounded memory) or ``"local"`` (this process, no Ray); None: ``config.engine``.

    Returns
    -------
    ``{view name: ExtractionResult}``; the features are in ``FeatureStore(cache_root,
    result.spec_key)``.
    """
    config = config or ExtractionConfig()
    run = _engine(engine or config.engine)
    if isinstance(views, (str, ViewSpec)):
        views = [views]
    if not views:
        raise ValueError("views is empty: name at least one view, e.g. efficientnet_lite0")
    if stop_after_shards is not None and stop_after_shards < 1:
        raise ValueError(f"stop_after_shards={stop_after_shards} should be >= 1 or None")
    specs = [resolve_view(view) for view in views]
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
]
