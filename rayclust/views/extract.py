"""Feature extraction on Ray: one actor pool per view, all views at once, cached in FeatureStores.

Flow for one call of :func:`extract_views`:

1. Records are reduced to unique content ids; each view's FeatureStore says which ids it
   still lacks (ids that failed to decode before are not retried).
2. Each view with work gets ``actors_per_view`` actors. An actor builds the view itself from
   its ViewSpec (models never travel through the object store), then answers ``extract``
   calls: decode + transform a batch, forward it under ``torch.inference_mode``, return
   (ids, float32 features, decode failures). Actors run two calls at a time, so decoding the
   next batch overlaps the forward pass of the current one; a lock keeps forwards serial.
3. The driver hands batches to whichever actor is free, across all views, and writes one
   shard per returned batch, so an interrupted run resumes from what is on disk. A dead
   actor is restarted by Ray (``max_restarts``) and its calls retried; the store drops ids
   it already holds, so each image is stored once whatever is retried.

Test hooks (honest ones: they kill a real actor process or stop a real run):
- ``RAYCLUST_FAULT_KILL_AFTER_BATCHES=N``: the first actor of each view to finish N batches
  calls ``os._exit(1)`` while holding its next batch. ``RAYCLUST_FAULT_MARKER`` (a path
  prefix, default ``<store>/fault-injected``) gets one marker file per view so the restarted
  actor does not die again.
- ``RAYCLUST_TEST_BATCH_DELAY_S=X``: each forward pass also sleeps X seconds, so tests can
  see whether views really run at the same time without needing heavy models.
- ``RAYCLUST_TEST_FORWARD_LOG=DIR``: each forward pass writes a JSON file (node id, pid,
  image ids) into DIR, so a test can count forward passes on nodes that were removed.
- ``stop_after_shards=K``: stop after K shards were written (as if the run were killed).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.config import ExtractionConfig
from rayclust.images import DEFAULT_MAX_PIXELS, ImageRecord, SkippedImage
from rayclust.ray_session import ensure_ray
from rayclust.views.spec import ViewSpec
from rayclust.views.store import FeatureStore, default_cache_dir

log = logging.getLogger(__name__)

FAULT_KILL_ENV = "RAYCLUST_FAULT_KILL_AFTER_BATCHES"
FAULT_MARKER_ENV = "RAYCLUST_FAULT_MARKER"
BATCH_DELAY_ENV = "RAYCLUST_TEST_BATCH_DELAY_S"
FORWARD_LOG_ENV = "RAYCLUST_TEST_FORWARD_LOG"
_CALLS_IN_FLIGHT_PER_ACTOR = 2  # one decoding while the other runs its forward pass
_LOG_EVERY_S = 10.0


@dataclass
class ExtractionResult:
    """What one view's extraction did.

    ``n_extracted`` counts images whose forward pass reached the driver in this call (a batch
    retried after an actor died counts once).
    """

    view: str
    spec_key: str
    n_extracted: int
    n_cached: int  # unique ids whose features were already in the store
    failed: list[SkippedImage]  # stage="decode"; one entry per record (duplicates included)
    seconds: float
    dim: int | None
    n_remaining: int = 0  # unique ids still without features or failure (stopped early)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # forward start/end, epoch s
    devices: list[str] = field(default_factory=list)  # one per actor that did work, e.g. "cpu"
    decode_seconds: float = 0.0  # summed over batches; overlaps the forward passes
    forward_seconds: float = 0.0  # summed over batches


@dataclass(frozen=True)
class _TestHooks:
    """Fault injection read from the driver's environment and handed to the actors."""

    kill_after_batches: int | None = None
    fault_marker: str | None = None  # created once; its existence stops further kills
    batch_delay_s: float = 0.0
    forward_log: str | None = None  # folder: one JSON file per forward pass


@dataclass
class _BatchOutput:
    ids: list[str]
    features: np.ndarray
    failures: dict[str, str]
    forward_span: tuple[float, float]
    decode_seconds: float


class _ViewWorker:
    """Ray actor body: builds one view and extracts features batch by batch."""

    def __init__(
        self,
        spec: ViewSpec,
        num_threads: int,
        decode_workers: int,
        max_pixels: int,
        hooks: _TestHooks = _TestHooks(),
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        import torch

        from rayclust.views import build_view

        torch.set_num_threads(max(1, num_threads))
        # Ray hides GPUs from actors that did not ask for one, so this follows the resources.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.view = build_view(spec, device=self.device)
        self.model = self.view.model.eval()
        self.max_pixels = max_pixels
        # Decoding stays off the forward thread: measured on 2 CPUs, forward passes in a thread
        # that had also decoded and transformed the images ran 2-8x slower.
        self.decoder = ThreadPoolExecutor(max_workers=max(1, decode_workers))
        self.forward_lock = threading.Lock()
        self.n_batches = 0
        self.hooks = hooks
        self.storage_options = storage_options  # for s3:// / gs:// paths (rayclust.remote)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "dim": self.view.feature_dim}

    def _load(self, item: tuple[str, str]):
        from rayclust.images import ImageDecodeError, decode_image

        image_id, path = item
        try:
            image = decode_image(path, self.max_pixels, storage_options=self.storage_options)
        except ImageDecodeError as exc:
            return image_id, None, str(exc)
        try:
            return image_id, self.view.transform(image), None
        except Exception as exc:  # a transform that chokes on one image must not sink the batch
            return image_id, None, f"transform failed: {type(exc).__name__}: {exc}"

    def _maybe_die(self) -> None:
        kill_after = self.hooks.kill_after_batches
        if kill_after is None or self.n_batches < kill_after:
            return
        try:
            fd = os.open(self.hooks.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # already died once for this view
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    def extract(self, items: list[tuple[str, str]]) -> _BatchOutput:
        ids, tensors, failures = [], [], {}
        decode_start = time.perf_counter()
        for image_id, tensor, reason in self.decoder.map(self._load, items):
            if reason is not None:
                failures[image_id] = reason
            else:
                ids.append(image_id)
                tensors.append(tensor)
        decode_seconds = time.perf_counter() - decode_start
        features, span = self.forward(ids, tensors)
        return _BatchOutput(ids, features, failures, span, decode_seconds)

    def forward(self, ids: list[str], tensors: list) -> tuple[np.ndarray, tuple[float, float]]:
        """Features of already transformed images (CHW tensors), float32 [len(ids), dim], and
        the forward's (start, end) epoch seconds. Shared by both extraction engines, so the
        same images give the same features whichever engine ran them."""
        import torch

        with self.forward_lock:
            self._maybe_die()
            start = time.time()
            if tensors:
                batch = torch.stack(tensors)
                if self.device.type == "cuda":
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                with torch.inference_mode():
                    features = self.model(batch).float().cpu().numpy()
            else:
                features = np.empty((0, self.view.feature_dim), dtype=np.float32)
            if self.hooks.batch_delay_s:
                time.sleep(self.hooks.batch_delay_s)
            self.n_batches += 1
            span = (start, time.time())
        self._log_forward(ids)
        return np.ascontiguousarray(features, dtype=np.float32), span

    def _log_forward(self, ids: list[str]) -> None:
        # Test hook: one file per forward pass (node, process, ids), so a test can count
        # forward passes across nodes and processes that have since died.
        if self.hooks.forward_log is None or not ids:
            return
        import json

        import ray

        folder = Path(self.hooks.forward_log)
        folder.mkdir(parents=True, exist_ok=True)
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        record = {"node_id": node, "pid": os.getpid(), "ids": list(ids)}
        name = f"{os.getpid()}-{self.n_batches}-{time.time_ns()}.json"
        (folder / name).write_text(json.dumps(record))


# -- driver -----------------------------------------------------------------------------------


def _resolve_spec(view: str | ViewSpec) -> ViewSpec:
    if isinstance(view, ViewSpec):
        return view
    from rayclust.views import get_view_spec

    return get_view_spec(view)


def _resolve_cache_root(cache_root: str | os.PathLike | None, config: ExtractionConfig) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    if config.cache_dir:
        return Path(config.cache_dir)
    return default_cache_dir()


@dataclass
class _Resources:
    cpus: float
    gpus: float
    threads: int
    decode_workers: int


def _plan_resources(
    config: ExtractionConfig,
    n_actors: int,
    total: dict[str, float],
    available: dict[str, float],
) -> _Resources:
    """Declare what each actor needs (Ray places them), from the cluster's resources.

    The one place that decides CPU or GPU for extraction; the decision is logged.
    """
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) > 0 else 0.0
    cpus = config.cpus_per_actor
    if cpus is None:
        cpus = float(max(1, int(available.get("CPU", 1) // max(1, n_actors))))
    threads = max(1, int(round(cpus)))
    # On a GPU the forward is quick and decoding is the bottleneck: give it every CPU.
    # On a CPU the forward already uses them; one decode thread overlaps with it.
    decode_workers = threads if gpus > 0 else 1
    if n_actors * cpus > total.get("CPU", 0) or n_actors * gpus > total.get("GPU", 0):
        log.warning(
            "%d extraction actors x (%g CPU, %g GPU) exceed the cluster (%g CPU, %g GPU); "
            "some start only when others finish",
            n_actors, cpus, gpus, total.get("CPU", 0), total.get("GPU", 0),
        )  # fmt: skip
    log.info(
        "extraction actors: %d x (num_cpus=%g, num_gpus=%g, torch threads=%d, decode threads=%d)",
        n_actors, cpus, gpus, threads, decode_workers,
    )  # fmt: skip
    return _Resources(cpus, gpus, threads, decode_workers)


class _Progress:
    """A tqdm bar per view in a terminal; periodic plain log lines otherwise."""

    def __init__(self, name: str, total: int, position: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.failed = name, total, 0, 0
        self.enabled = enabled and total > 0
        self.started = time.perf_counter()
        self.last_log = self.started
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="img", position=position, leave=True)

    def update(self, n_done: int, n_failed: int) -> None:
        self.done += n_done
        self.failed += n_failed
        if self.bar is not None:
            self.bar.update(n_done + n_failed)
            if self.failed:
                self.bar.set_postfix(failed=self.failed)
        elif self.enabled and time.perf_counter() - self.last_log >= _LOG_EVERY_S:
            self._log()

    def _log(self) -> None:
        self.last_log = time.perf_counter()
        rate = self.done / max(self.last_log - self.started, 1e-9)
        log.info(
            "extract %s: %d/%d images (%.1f img/s), %d failed",
            self.name, self.done + self.failed, self.total, rate, self.failed,
        )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._log()


@dataclass
class _ViewRun:
    name: str
    spec: ViewSpec
    store: FeatureStore
    batches: deque
    n_todo: int
    n_cached: int
    progress: _Progress
    actors: list = field(default_factory=list)
    ready_actors: set = field(default_factory=set)  # indices whose view is built
    dead_actors: set = field(default_factory=set)  # indices that died for good
    calls: dict = field(default_factory=dict)  # actor index -> extract calls in flight
    n_extracted: int = 0
    n_failed: int = 0
    timeline: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    decode_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def finished(self) -> bool:
        return not self.batches and not any(self.calls.values())

    def starting_actors(self) -> int:
        return len(self.actors) - len(self.ready_actors) - len(self.dead_actors)


def _test_hooks(store: FeatureStore) -> _TestHooks:
    def number(env: str, kind: type):
        raw = os.environ.get(env)
        if not raw:
            return None
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} should be a {kind.__name__}") from None

    kill_after = number(FAULT_KILL_ENV, int)
    prefix = os.environ.get(FAULT_MARKER_ENV) or str(store.path / "fault-injected")
    return _TestHooks(
        kill_after_batches=kill_after,
        fault_marker=f"{prefix}-{store.spec_key}" if kill_after is not None else None,
        batch_delay_s=number(BATCH_DELAY_ENV, float) or 0.0,
        forward_log=os.environ.get(FORWARD_LOG_ENV) or None,
    )


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
) -> dict[str, ExtractionResult]:
    """Extract (or find cached) features of ``records`` for every view, all views at once.

    Parameters
    ----------
    records : images to extract; duplicates by ``image_id`` are extracted once.
    views : registry names or ViewSpecs. Results are keyed by the name (``spec.name``).
    cache_root : FeatureStore root; None falls back to ``config.cache_dir``, then
        ``$RAYCLUST_CACHE_DIR``, then ``~/.cache/rayclust/features``.
    config : batch size, actors per view, resources, restarts, and the engine:
        ``"actors"`` (this module) or ``"stream"`` (``rayclust.views.stream``, Ray Data).
    max_pixels : larger images are reported as decode failures.
    progress : tqdm bars in a terminal, periodic log lines otherwise.
    stop_after_shards : stop once this many shards were written in this call (all views
        together), leaving the rest for a later call - a deliberate interruption.
    on_shard : called with (view name, rows added) after each shard is written.
    storage_options : s3fs / gcsfs options for records whose paths are s3:// or gs:// URIs
        (e.g. ``{"endpoint_url": ...}``); the workers read those objects themselves.

    Returns
    -------
    ``{view name: ExtractionResult}``; the features are in ``FeatureStore(cache_root,
    result.spec_key)``.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    config = config or ExtractionConfig()
    storage_options = dict(storage_options or {}) or None
    if isinstance(views, (str, ViewSpec)):
        views = [views]
    if not views:
        raise ValueError("views is empty: name at least one view, e.g. efficientnet_lite0")
    if stop_after_shards is not None and stop_after_shards < 1:
        raise ValueError(f"stop_after_shards={stop_after_shards} should be >= 1 or None")
    root = _resolve_cache_root(cache_root, config)
    if config.engine == "stream":
        from rayclust.views.stream import stream_extract_views

        return stream_extract_views(
            records, views, root, config, max_pixels, progress,
            stop_after_shards=stop_after_shards, on_shard=on_shard,
            storage_options=storage_options,
        )  # fmt: skip

    paths_by_id: dict[str, list[str]] = {}
    for record in records:
        paths_by_id.setdefault(record.image_id, []).append(record.path)
    unique_ids = list(paths_by_id)

    runs: list[_ViewRun] = []
    for position, view in enumerate(views):
        spec = _resolve_spec(view)
        store = FeatureStore(root, spec.key(), spec=spec)
        todo = store.missing(unique_ids)
        n_cached = sum(image_id in store for image_id in unique_ids)
        items = [(image_id, paths_by_id[image_id][0]) for image_id in todo]
        batches = deque(
            items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)
        )
        runs.append(
            _ViewRun(
                name=spec.name,
                spec=spec,
                store=store,
                batches=batches,
                n_todo=len(todo),
                n_cached=n_cached,
                progress=_Progress(spec.name, len(todo), position, progress),
            )
        )
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"views {names} name the same view twice")

    working = [run for run in runs if run.batches]
    if working:
        ensure_ray()
    n_actors = {id(run): min(config.actors_per_view, len(run.batches)) for run in working}
    resources = None
    if working:
        resources = _plan_resources(
            config, sum(n_actors.values()), ray.cluster_resources(), ray.available_resources()
        )

    pending: dict[Any, tuple[_ViewRun, int, list | None]] = {}  # ref -> (run, actor, batch)
    n_shards = 0
    stopped = False

    def submit(run: _ViewRun, actor: int) -> None:
        while run.batches and run.calls[actor] < _CALLS_IN_FLIGHT_PER_ACTOR:
            batch = run.batches.popleft()
            pending[run.actors[actor].extract.remote(batch)] = (run, actor, batch)
            run.calls[actor] += 1

    def retire(run: _ViewRun) -> None:
        # Free the actors' CPUs / GPUs at once so another view's waiting actors can start.
        for handle in run.actors:
            ray.kill(handle, no_restart=True)
        run.actors = []
        for ref in [ref for ref, (owner, _, _) in pending.items() if owner is run]:
            del pending[ref]
        run.seconds = time.perf_counter() - run.started
        run.progress.close()

    try:
        for run in working:
            hooks = _test_hooks(run.store)
            actor_cls = ray.remote(_ViewWorker).options(
                num_cpus=resources.cpus,
                num_gpus=resources.gpus,
                max_restarts=config.max_restarts,
                max_task_retries=config.max_restarts,
                max_concurrency=_CALLS_IN_FLIGHT_PER_ACTOR,
            )
            for index in range(n_actors[id(run)]):
                handle = actor_cls.remote(
                    run.spec,
                    resources.threads,
                    resources.decode_workers,
                    max_pixels,
                    hooks,
                    storage_options,
                )
                run.actors.append(handle)
                run.calls[index] = 0
                # Work goes only to actors that came up, so an actor still waiting for
                # resources never holds batches hostage.
                pending[handle.info.remote()] = (run, index, None)

        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_LOG_EVERY_S)
            for ref in ready:
                if ref not in pending:  # its view was retired earlier in this loop
                    continue
                run, actor, batch = pending.pop(ref)
                try:
                    output = ray.get(ref)
                except ActorUnavailableError:
                    # Unreachable for now (restarting, network) and out of task retries:
                    # the batch goes back in the queue, the actor may take it again.
                    if batch is not None:
                        run.calls[actor] -= 1
                        run.batches.appendleft(batch)
                        for index in run.ready_actors:
                            submit(run, index)
                    else:
                        pending[run.actors[actor].info.remote()] = (run, actor, None)
                    continue
                except RayActorError as exc:
                    # Ray already restarted it max_restarts times: give its batch to the others.
                    if batch is not None:
                        run.calls[actor] -= 1
                        run.batches.appendleft(batch)
                    if actor not in run.dead_actors:
                        log.warning(
                            "an extraction actor of view %s died for good: %s", run.name, exc
                        )
                    run.dead_actors.add(actor)
                    run.ready_actors.discard(actor)
                    if getattr(exc, "actor_init_failed", False):
                        raise RuntimeError(
                            f"could not build view {run.name} in its actor: {exc}"
                        ) from exc
                    if not run.ready_actors and not run.starting_actors():
                        raise RuntimeError(
                            f"every extraction actor of view {run.name} died "
                            f"(max_restarts={config.max_restarts} used up): {exc}"
                        ) from exc
                    for other in run.ready_actors:
                        submit(run, other)
                    continue
                if batch is None:  # the actor's view is built
                    run.ready_actors.add(actor)
                    run.devices.append(output["device"])
                else:
                    run.calls[actor] -= 1
                    added = 0
                    if output.features.shape[0]:
                        added = run.store.write(output.ids, output.features)
                    if output.failures:
                        run.store.record_failures(output.failures)
                    run.n_extracted += len(output.ids)
                    run.n_failed += len(output.failures)
                    run.timeline.append(output.forward_span)
                    run.decode_seconds += output.decode_seconds
                    run.progress.update(len(output.ids), len(output.failures))
                    if added:
                        n_shards += 1
                        if on_shard is not None:
                            on_shard(run.name, added)
                        if stop_after_shards is not None and n_shards >= stop_after_shards:
                            stopped = True
                if stopped:
                    continue
                submit(run, actor)
                if run.finished():
                    retire(run)
            if stopped:
                break
    finally:
        for run in working:
            if run.actors:
                retire(run)

    results = {}
    for run in runs:
        failures = run.store.failures()
        failed = [
            SkippedImage(path, failures[image_id], stage="decode")
            for image_id in unique_ids
            if image_id in failures
            for path in paths_by_id[image_id]
        ]
        results[run.name] = ExtractionResult(
            view=run.name,
            spec_key=run.store.spec_key,
            n_extracted=run.n_extracted,
            n_cached=run.n_cached,
            failed=failed,
            seconds=run.seconds or (time.perf_counter() - run.started),
            dim=run.store.dim,
            n_remaining=len(run.store.missing(unique_ids)),
            timeline=sorted(run.timeline),
            devices=run.devices,
            decode_seconds=run.decode_seconds,
            forward_seconds=sum(end - start for start, end in run.timeline),
        )
    return results
