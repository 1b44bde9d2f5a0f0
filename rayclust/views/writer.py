"""The one shard writer of extraction: every engine hands its batches here.

:class:`ExtractionJob` is one ``extract_views`` call, checked and resolved (views, cache
root, records by content id, the stop rule). :meth:`ExtractionJob.open_writers` gives one
:class:`ViewWriter` per view; an engine asks it which ``(image id, path)`` items are still
to do, computes features however it likes (in this process, Ray actors, Ray Data), and
calls :meth:`ViewWriter.write` once per batch, in the driver. The writer

- writes one FeatureStore shard per batch (atomic files, content-keyed; the store drops
  ids it already holds, so a batch retried after a crash adds nothing twice and each image
  is stored once), and records decode failures (not retried by later runs; a file changed
  since the scan is reported for this run only: the next scan gives it its new id);
- counts, times and shows progress (a tqdm bar in a terminal, plain log lines otherwise);
- counts shards over all views for ``stop_after_shards`` / ``on_shard``;
- builds the view's :class:`ExtractionResult`.

Resuming is the same for every engine: the todo list is what the store lacks.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust.config import ExtractionConfig
from rayclust.images import CHANGED_SINCE_SCAN, ImageRecord, SkippedImage
from rayclust.views.spec import ViewSpec
from rayclust.views.store import FeatureStore

if TYPE_CHECKING:
    from rayclust.views.worker import BatchOutput

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # plain progress lines (no terminal) at most this often


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
    devices: list[str] = field(default_factory=list)  # one per worker that did work, e.g. "cpu"
    decode_seconds: float = 0.0  # summed over batches; overlaps the forward passes
    forward_seconds: float = 0.0  # summed over batches
    # The exact spec (precision, decode rule) the features were computed with: a run saves
    # it so that new images are extracted the same way (rayclust.reuse.model).
    spec: ViewSpec | None = None


class ExtractionProgress:
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
        elif self.enabled and time.perf_counter() - self.last_log >= LOG_EVERY_S:
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
            self.bar = None
        elif self.enabled:
            self._log()
        self.enabled = False  # closing twice logs once


@dataclass
class ExtractionJob:
    """One ``extract_views`` call, checked: what every engine is given."""

    specs: list[ViewSpec]
    root: Path | str  # a folder, or an s3:// / gs:// prefix (written with storage_options)
    config: ExtractionConfig
    paths_by_id: dict[str, list[str]]  # content id -> every path with that content
    max_pixels: int
    progress: bool = True
    storage_options: dict[str, Any] | None = None
    stop_after_shards: int | None = None
    on_shard: Callable[[str, int], None] | None = None
    # called with (view name, its ExtractionResult) once per view, when the view is finished
    on_view_done: Callable[[str, ExtractionResult], None] | None = None
    n_shards: int = 0  # written in this call, all views together

    @staticmethod
    def index_records(records: Iterable[ImageRecord]) -> dict[str, list[str]]:
        """Records by content id (first-seen order): duplicates are extracted once."""
        paths_by_id: dict[str, list[str]] = {}
        for record in records:
            paths_by_id.setdefault(record.image_id, []).append(record.path)
        return paths_by_id

    @property
    def unique_ids(self) -> list[str]:
        return list(self.paths_by_id)

    @property
    def stopped(self) -> bool:
        """True once ``stop_after_shards`` shards were written: engines stop submitting."""
        return self.stop_after_shards is not None and self.n_shards >= self.stop_after_shards

    def open_writers(self) -> list[ViewWriter]:
        return [ViewWriter(self, spec, position) for position, spec in enumerate(self.specs)]

    def shard_written(self, view: str, n_rows: int) -> None:
        self.n_shards += 1
        if self.on_shard is not None:
            self.on_shard(view, n_rows)


class ViewWriter:
    """One view's side of a job: its store, its todo list, its counters and result."""

    def __init__(self, job: ExtractionJob, spec: ViewSpec, position: int = 0) -> None:
        self.job = job
        self.spec = spec
        self.name = spec.name
        self.store = FeatureStore(
            job.root, spec.key(), spec=spec, storage_options=job.storage_options
        )
        unique_ids = job.unique_ids
        todo = self.store.missing(unique_ids)
        self.n_cached = sum(image_id in self.store for image_id in unique_ids)
        self.todo: list[tuple[str, str]] = [(i, job.paths_by_id[i][0]) for i in todo]
        self.progress = ExtractionProgress(spec.name, len(todo), position, job.progress)
        self.n_extracted = 0
        self.n_failed = 0
        self.changed: dict[str, str] = {}  # image id -> reason: changed since the scan
        self.devices: list[str] = []
        self.decode_seconds = 0.0
        self._spans: set[tuple[float, float]] = set()
        self._started = time.perf_counter()
        self._seconds: float | None = None

    def begin(self) -> None:
        """Start this view's clock now (an engine that runs views one after the other)."""
        self._started = self.progress.started = self.progress.last_log = time.perf_counter()

    def batches(self) -> list[list[tuple[str, str]]]:
        """The todo list cut into ``config.batch_size`` batches."""
        size = self.job.config.batch_size
        return [self.todo[i : i + size] for i in range(0, len(self.todo), size)]

    def write(
        self,
        ids: Sequence[str],
        features: np.ndarray,
        failures: dict[str, str],
        spans: Iterable[tuple[float, float]] = (),
        decode_seconds: float = 0.0,
    ) -> int:
        """Store one batch as one shard and its decode failures; returns rows added.

        ``spans``: (start, end) of the forward passes that made the batch; a span given
        again (a forward pass split over two batches) is counted once.
        """
        added = 0
        if len(ids):
            added = self.store.write(ids, features)
        # A file changed since the scan is this run's loss only: its id names content that
        # may come back (the file restored), so it is not recorded as undecodable for good.
        lasting = {i: r for i, r in failures.items() if not r.startswith(CHANGED_SINCE_SCAN)}
        self.changed.update((i, r) for i, r in failures.items() if i not in lasting)
        if lasting:
            self.store.record_failures(lasting)
        self.n_extracted += len(ids)
        self.n_failed += len(failures)
        self._spans.update(spans)
        self.decode_seconds += decode_seconds
        self.progress.update(len(ids), len(failures))
        if added:
            self.job.shard_written(self.name, added)
        return added

    def write_output(self, output: BatchOutput) -> int:
        """``write`` for a worker's BatchOutput (one forward pass)."""
        return self.write(
            output.ids,
            output.features,
            output.failures,
            spans=[output.forward_span],
            decode_seconds=output.decode_seconds,
        )

    def finish(self) -> None:
        """This view is done (or stopped): freeze its time, close its progress, and tell
        ``job.on_view_done`` (once) so a caller can use this view before the others end."""
        if self._seconds is not None:
            return
        self._seconds = time.perf_counter() - self._started
        self.progress.close()
        if self.job.on_view_done is not None:
            self.job.on_view_done(self.name, self.result())

    def result(self) -> ExtractionResult:
        self.finish()
        failures = self.store.failures() | self.changed
        unique_ids = self.job.unique_ids
        timeline = sorted(self._spans)
        return ExtractionResult(
            view=self.name,
            spec=self.spec,
            spec_key=self.store.spec_key,
            n_extracted=self.n_extracted,
            n_cached=self.n_cached,
            failed=[
                SkippedImage(path, failures[image_id], stage="decode")
                for image_id in unique_ids
                if image_id in failures
                for path in self.job.paths_by_id[image_id]
            ],
            seconds=self._seconds,
            dim=self.store.dim,
            n_remaining=len(set(self.store.missing(unique_ids)) - set(self.changed)),
            timeline=timeline,
            devices=list(self.devices),
            decode_seconds=self.decode_seconds,
            forward_seconds=sum(end - start for start, end in timeline),
        )
