"""Worker-side scanning (``extraction.scan: workers``) on the stream engine.

The driver names the candidates (:func:`rayclust.images.iter_source`: listings only) in a
thread, a block of names at a time into the object store, while the workers already
extract: a decode task reads each file once, hashes and probes those bytes (``scan_bytes``)
and decodes them for every view; one forward actor pool per view follows, each actor writing
its batch's new features as a shard of the view's store (the cache folder must be at the same
path on every node, as for ``clustering.engine=ray``); the driver gets the batch without
features and writes the manifest and skipped rows as one small CSV part per batch.

What the driver holds does not grow with the collection: the listing runs at most one
window of blocks ahead (refs only; the names are in the object store), each batch's rows are
written and dropped, no feature reaches it (the workers write the shards with
``FeatureStore.write(remember=False)`` on a store opened without its index), and the counts
are numbers. What it still holds per image comes from a resumed run: the ids stored
before (the workers' skip list) and the ones found there again (``n_cached``). The ids
written during this run are not among them: an actor per view holds them (below).

Each image is stored once per view, however many names its bytes have. The ids stored
before the run are skipped by the decode tasks; the ids written during the run are held, per
view, by a small actor (``_WrittenIds``, created for the run and killed at its end, outside
the driver): a forward actor asks it which of its batch's ids are written already, drops
those (no forward pass, no write), and reports its own ids only once its ``store.write``
returned. So an id is skipped only after another batch has confirmed it written, never
merely claimed: a writer killed mid-batch has confirmed nothing, and Ray Data's retry of its
batch writes it. Two batches holding the same content at the same moment may both write it:
a rare duplicate, harmless (readers take the first copy, ``compact`` keeps one). The counts
are a driver scan's: ``n_extracted`` counts each id this run wrote once (a skipped copy
counts nowhere; a rare duplicate twice), ``n_cached`` the distinct ids stored before. A
batch run again after its own write was confirmed (its actor lost in the instant between
reporting and returning) finds its ids written: stored, but not counted in ``n_extracted``.

Ray Data takes a fixed list of blocks, so the listing is fed to it in windows: the first
is one block (extraction starts as soon as 4,096 names are listed), each next one twice as
many, up to ``_WINDOW_BLOCKS``; a window's pipeline runs while the thread lists the next.
Resuming skips the forward pass of an id already stored (or known undecodable), never the
read: the id is only known once the worker has read the bytes.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.config import ExtractionConfig
from rayclust.ray_session import ensure_ray
from rayclust.views.spec import ViewSpec
from rayclust.views.stream import (
    _DECODE_CPUS,
    _DECODE_MEMORY,
    _data_context,
    _eval_transform,
    plan_stream_resources,
)
from rayclust.views.worker import FaultHooks, ViewWorker
from rayclust.views.writer import ExtractionResult

log = logging.getLogger(__name__)

_LIST_BLOCK_ROWS = 4096  # names per listing block put into the object store
_WINDOW_BLOCKS = 64  # most blocks one pipeline run takes (and the listing runs ahead)
_END = object()


def _scan_decode_batch(
    batch: dict[str, np.ndarray],
    specs: list[ViewSpec],
    max_pixels: int,
    storage_options: dict[str, Any] | None,
    known: list[Any],
) -> dict[str, np.ndarray]:
    """Ray Data task: (order, path, label) rows -> scan verdict and pixels for every view."""
    from rayclust.images import ImageDecodeError, ImageRecord, decode_image, read_checked
    from rayclust.images import scan_bytes as judge

    known_ids = [_known_ids(ref) for ref in known]  # fetched once per worker process
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    transforms = [_eval_transform(spec) for spec in specs]
    out: dict[str, Any] = {
        "order": batch["order"],
        "path": np.array(paths, dtype=object),
        "label": batch["label"],
        "image_id": np.array([""] * n, dtype=object),
        "scan_skip": np.array([""] * n, dtype=object),
    }
    for v, (_, shape, _) in enumerate(transforms):
        out[f"pixels_{v}"] = np.zeros((n, *shape), dtype=np.float32)
        out[f"failure_{v}"] = np.array([""] * n, dtype=object)
        out[f"todo_{v}"] = np.zeros(n, dtype=bool)
    for row, path in enumerate(paths):
        label = batch["label"][row]
        try:
            data = read_checked(path, None, storage_options)
        except ImageDecodeError as exc:
            out["scan_skip"][row] = str(exc)
            continue
        verdict = judge(path, label if label else None, data, max_pixels)
        if not isinstance(verdict, ImageRecord):
            out["scan_skip"][row] = verdict.reason
            continue
        out["image_id"][row] = verdict.image_id
        for v, (transform, _, decode_size) in enumerate(transforms):
            if verdict.image_id in known_ids[v]:
                continue  # stored or known undecodable: no forward pass (the read was needed)
            try:
                image = decode_image(data, max_pixels, target_size=decode_size)
                out[f"pixels_{v}"][row] = transform(image).numpy()
                out[f"todo_{v}"][row] = True
            except ImageDecodeError as exc:
                out[f"failure_{v}"][row] = str(exc)
            except Exception as exc:  # a transform that chokes on one image
                out[f"failure_{v}"][row] = f"transform failed: {type(exc).__name__}: {exc}"
    return out


@functools.lru_cache(maxsize=8)
def _known_ids(ref: Any) -> frozenset[str]:
    import ray

    return ray.get(ref)


class _WrittenIds:
    """Ray actor, one per view for one run: the ids whose shard a forward actor has written
    during this run (confirmed after ``store.write`` returned, never merely claimed).

    Keys are the 128-bit ints of the ids' hex (exact, no collision): about 80 B per image
    (a 44 B int and its set slot), so about 8 GB at 100M images, held in this actor's
    process on some node, not in the driver. It is not split by hash over several actors:
    every run, small ones too, would pay a process per part, and a cluster scanning 100M
    images has nodes far larger; the calls are two per batch, not per image.
    """

    def __init__(self) -> None:
        self.keys: set[int] = set()

    def written(self, keys: list[int]) -> list[int]:
        """The given keys already written this run."""
        return [key for key in keys if key in self.keys]

    def add(self, keys: list[int]) -> None:
        self.keys.update(keys)


def _key(image_id: str) -> int:
    return int(image_id, 16)


class _ScanForward:
    """Ray Data actor: view ``index``'s forward pass on the rows decoded for it, and the new
    features written as a shard of the view's store under ``root`` by this actor (the
    driver gets the batch without them). ``root`` may be an s3:// / gs:// prefix, written
    with ``storage_options``."""

    def __init__(
        self,
        spec: ViewSpec,
        index: int,
        num_threads: int,
        hooks: FaultHooks,
        root: str,
        storage_options: dict[str, Any] | None = None,
        written: Any = None,
    ) -> None:
        from rayclust.views.store import FeatureStore

        self.worker = ViewWorker(spec, num_threads=num_threads, hooks=hooks)
        self.index = index
        self.written = written  # the view's _WrittenIds actor (None: no skipping)
        self.store = FeatureStore(
            root, spec.key(), spec=spec, index=False, storage_options=storage_options
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        v = self.index
        pixels = batch[f"pixels_{v}"]
        n = len(batch["path"])
        first: dict[str, int] = {}  # an id twice in a batch is computed and stored once
        for row in np.flatnonzero(batch[f"todo_{v}"]).tolist():
            first.setdefault(str(batch["image_id"][row]), row)
        for image_id in self._written_before(list(first)):
            del first[image_id]
        out = {key: value for key, value in batch.items() if key != f"pixels_{v}"}
        out[f"wrote_{v}"] = np.zeros(n, dtype=bool)  # the row whose id this batch stored
        start = end = 0.0
        if first:
            ids, rows = list(first), list(first.values())
            tensors = [torch.from_numpy(np.array(pixels[row], dtype=np.float32)) for row in rows]
            features, (start, end) = self.worker.forward(ids, tensors)
            # Content-named and atomic: a batch Ray Data runs again writes the same shard.
            self.store.write(ids, np.asarray(features), remember=False)
            # Only now: a writer killed before this line has confirmed nothing, so its batch,
            # run again by Ray Data, is never skipped.
            self._call("add", [_key(i) for i in ids])
            out[f"wrote_{v}"][rows] = True
        out[f"span_{v}"] = np.tile(np.array([start, end]), (n, 1))
        return out

    def _written_before(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` another batch of this run has confirmed written."""
        keys = self._call("written", [_key(i) for i in ids]) if ids else None
        if not keys:
            return []
        done = set(keys)
        return [i for i in ids if _key(i) in done]

    def _call(self, method: str, keys: list[int]) -> Any:
        """A call to the view's _WrittenIds; None if there is none or it is gone: not asking
        can only store an image twice, never lose one."""
        if self.written is None:
            return None
        import ray

        try:
            return ray.get(getattr(self.written, method).remote(keys))
        except ray.exceptions.RayError as exc:
            log.warning("written-ids actor unavailable (%s): this batch skips nothing", exc)
            return None


def iter_name_blocks(names: Iterator[Any]) -> Iterator[tuple[Any, list[tuple]]]:
    """The listing as (block ref or None, refused rows): each block is an Arrow table of up
    to ``_LIST_BLOCK_ROWS`` (order, path, label) rows put into the object store; refused
    rows are (order, path, reason, stage) of names the listing itself refused."""
    import pyarrow as pa
    import ray

    from rayclust.images import SkippedImage

    rows: list[tuple] = []
    refused: list[tuple] = []
    for order, item in enumerate(names):
        if isinstance(item, SkippedImage):
            refused.append((order, item.path, item.reason, item.stage))
        else:
            rows.append((order, item[0], item[1] or ""))
        if len(rows) >= _LIST_BLOCK_ROWS or len(refused) >= _LIST_BLOCK_ROWS:
            yield _block(rows, pa, ray), refused
            rows, refused = [], []
    if rows or refused:
        yield _block(rows, pa, ray), refused


def _block(rows: list[tuple], pa: Any, ray: Any) -> Any:
    if not rows:
        return None
    order, paths, labels = zip(*rows, strict=True)
    return ray.put(pa.table({"order": order, "path": paths, "label": labels}))


class NameListing:
    """:func:`iter_name_blocks` run in a thread, at most ``ahead`` blocks ahead of the
    consumer; :meth:`windows` hands the blocks out in growing windows."""

    def __init__(self, names: Iterator[Any], ahead: int = _WINDOW_BLOCKS) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(names,), name="rayclust-listing", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, names: Iterator[Any]) -> None:
        try:
            for item in iter_name_blocks(names):
                if not self._put(item):
                    return
        except BaseException as exc:  # raised again in the consumer's thread
            self._error = exc
        finally:
            self._put(_END)

    def windows(self, on_refused: Callable[[list[tuple]], None]) -> Iterator[list[Any]]:
        """Lists of block refs: 1 block, then 2, 4, ... up to ``_WINDOW_BLOCKS`` (fewer at
        the end); each waits until its blocks are listed. A listing error is raised here."""
        size, done = 1, False
        while not done:
            refs: list[Any] = []
            while len(refs) < size:
                item = self._queue.get()
                if item is _END:
                    done = True
                    break
                ref, refused = item
                if refused:
                    on_refused(refused)
                if ref is not None:
                    refs.append(ref)
            if self._error is not None:
                raise self._error
            if refs:
                yield refs
            size = min(2 * size, _WINDOW_BLOCKS)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Tally:
    """Per-view counts of a worker scan, kept as numbers (and the failures)."""

    def __init__(self, stores: list[Any]) -> None:
        self.stores = stores
        self.failures = [store.failures() for store in stores]
        self.n_extracted = [0] * len(stores)
        self.cached: list[set[str]] = [set() for _ in stores]  # ids stored before this run
        self.failed: list[list[Any]] = [[] for _ in stores]
        self.spans: list[set[tuple[float, float]]] = [set() for _ in stores]

    def add(self, batch: dict[str, np.ndarray], parts: Any) -> None:
        """Write one batch: each view's new features and failures, its manifest and skipped
        rows (one part each)."""
        from rayclust.images import SkippedImage

        manifest, skipped = [], []
        for row, path in enumerate(batch["path"]):
            order, reason = int(batch["order"][row]), str(batch["scan_skip"][row])
            if reason:
                skipped.append((order, str(path), reason, "scan"))
                continue
            image_id, first = str(batch["image_id"][row]), ""
            for v, failures in enumerate(self.failures):
                why = str(batch[f"failure_{v}"][row]) or failures.get(image_id, "")
                if why:
                    self.failed[v].append(SkippedImage(str(path), why, stage="decode"))
                    first = first or why
                elif not batch[f"todo_{v}"][row]:
                    self.cached[v].add(image_id)
            if first:
                skipped.append((order, str(path), first, "decode"))
            else:
                manifest.append((order, str(path), image_id, str(batch["label"][row])))
        for v, store in enumerate(self.stores):
            _record_failures(store, batch, v, self.failures[v])
            # Each id once (as a driver scan counts): not the copies this batch or an
            # earlier one already stored.
            self.n_extracted[v] += int(np.sum(batch[f"wrote_{v}"]))
            self.spans[v].update(map(tuple, batch[f"span_{v}"].tolist()))
        parts.write("manifest", manifest)
        parts.write("skipped", skipped)


def _record_failures(store: Any, batch: dict[str, np.ndarray], v: int, failures: dict) -> None:
    """View ``v``'s new decode failures (its features are in the store already, written by
    the forward actor)."""
    new_failures: dict[str, str] = {}
    for row, image_id in enumerate(batch["image_id"]):
        image_id = str(image_id)
        if not batch[f"todo_{v}"][row] and batch[f"failure_{v}"][row] and image_id not in failures:
            new_failures[image_id] = str(batch[f"failure_{v}"][row])
    if new_failures:
        store.record_failures(new_failures)
        failures.update(new_failures)


def _scan_dataset(
    refs: list[Any],
    specs: list[ViewSpec],
    stores: list[Any],
    known: list[Any],
    config: ExtractionConfig,
    resources: tuple[float, float, int],
    max_pixels: int,
    storage_options: dict[str, Any] | None,
    written: list[Any],
):
    """One window's pipeline: decode tasks that scan, then one forward actor pool per view
    (``written``: each view's _WrittenIds actor)."""
    import ray
    from ray.data import ActorPoolStrategy

    cpus, gpus, threads = resources
    dataset = ray.data.from_arrow_refs(refs).map_batches(
        _scan_decode_batch,
        fn_kwargs={
            "specs": specs,
            "max_pixels": max_pixels,
            "storage_options": storage_options,
            "known": known,
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        num_cpus=_DECODE_CPUS,
        memory=_DECODE_MEMORY,
    )
    for v, (spec, store) in enumerate(zip(specs, stores, strict=True)):
        dataset = dataset.map_batches(
            _ScanForward,
            fn_constructor_kwargs={
                "spec": spec,
                "index": v,
                "num_threads": threads,
                "hooks": FaultHooks.from_env(store),
                "root": str(store.root),
                "storage_options": storage_options,
                "written": written[v],
            },
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=config.actors_per_view),
            num_cpus=cpus,
            num_gpus=gpus,
        )
    return dataset


def scan_and_extract_stream(
    names: Iterator[Any],
    specs: list[ViewSpec],
    root: Any,
    config: ExtractionConfig,
    parts_dir: Any,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, ExtractionResult]:
    """Scan on the workers and extract every view in Ray Data pipelines fed while the
    driver still lists (each file read once for all views). ``names``:
    :func:`rayclust.images.iter_source`. Writes the FeatureStores under ``root`` and the
    manifest / skipped parts under ``parts_dir``; returns per view an ExtractionResult
    (``failed``: this run's decode failures)."""
    import ray

    from rayclust.images import ScanParts
    from rayclust.views.store import FeatureStore

    ensure_ray()
    started = time.perf_counter()
    parts = ScanParts(Path(parts_dir)).clear()
    stores = [
        FeatureStore(root, spec.key(), spec=spec, storage_options=storage_options) for spec in specs
    ]
    tally = _Tally(stores)
    known = [
        ray.put(frozenset(store.ids()) | frozenset(failures))
        for store, failures in zip(stores, tally.failures, strict=True)
    ]
    cpus, gpus, threads = plan_stream_resources(config, ray.cluster_resources())
    if config.cpus_per_actor is None and gpus == 0:
        # Every view's pool runs at once here (one read for all views): they share the CPUs
        # one view would take, or the last pool could wait for CPUs forever.
        cpus = cpus / len(specs)
    # Restarted empty if its node dies: that can only store an image twice, never lose one.
    written = [ray.remote(num_cpus=0, max_restarts=-1)(_WrittenIds).remote() for _ in specs]
    listing = NameListing(names)
    windows = 0
    try:
        for refs in listing.windows(lambda rows: parts.write("skipped", rows)):
            windows += 1
            dataset = _scan_dataset(
                refs, specs, stores, known, config, (cpus, gpus, threads),
                max_pixels, storage_options, written,
            )  # fmt: skip
            with _data_context(config, progress=False):
                for batch in dataset.iter_batches(
                    batch_size=config.batch_size, batch_format="numpy", prefetch_batches=1
                ):
                    tally.add(batch, parts)
    finally:
        listing.close()
        for actor in written:
            ray.kill(actor)
    seconds = time.perf_counter() - started
    log.info(
        "worker scan: %d images extracted for %s in %.1f s (%d pipeline windows)",
        max(tally.n_extracted, default=0), ", ".join(spec.name for spec in specs), seconds,
        windows,
    )  # fmt: skip
    return {
        spec.name: ExtractionResult(
            view=spec.name,
            spec=spec,
            spec_key=store.spec_key,
            n_extracted=tally.n_extracted[v],
            n_cached=len(tally.cached[v]),
            failed=tally.failed[v],
            seconds=seconds,
            # the workers wrote it
            dim=FeatureStore(
                root, store.spec_key, index=False, storage_options=storage_options
            ).dim,
            timeline=sorted(s for s in tally.spans[v] if s[1] > 0),
        )
        for v, (spec, store) in enumerate(zip(specs, stores, strict=True))
    }
