"""PCA and K-means over features that stay sharded in Ray actors (``clustering.engine: ray``).

Where things are held:

- Each shard actor (:class:`FeatureShard`) owns a contiguous slice of the image ids and
  reads their features itself from the FeatureStore (``rayclust.views.store``), L2-normalised
  as the local engine does; the driver passes the cache folder, the spec key and the ids,
  never the features. On a GPU node the shard is a torch tensor on that GPU (one actor per
  GPU); otherwise a host array searched with FAISS (or torch on CPU).
- PCA: every shard returns ``(n, sum x, X^T X)``; the driver sums them, solves ``eigh`` on
  the d x d covariance and sends the projection back (the shards project in place).
- K-means is :class:`~rayclust.cluster.KMeans` itself, fitted on :class:`ShardedData` (the
  :class:`~rayclust.cluster._backend.FeatureData` interface the local loop talks to): the same
  coarse-to-fine stages, k-means++ seeding, over-relaxed Lloyd and empty-cluster re-seeding,
  from the same seed, so the result is the local engine's up to float summation order. The
  seeding sample and the subset stages (at most 1 GiB, as locally) are gathered from the
  shards by row; every full-data pass is one call per shard that returns per-cluster sums,
  counts, and each row's label and squared distance (what Lloyd's convergence test and the
  empty-cluster rule read).
- Spectral clustering is :class:`~rayclust.cluster.SpectralClustering` fitted on
  :class:`ShardedData` with the landmark method: the landmark sample is read by row, each
  row's nearest landmarks are found on the shards (:meth:`ShardedData.nearest_points`), and
  the landmark graph, its eigenproblem and the embedding's K-means run on the driver.
- A lost actor (its node gone, or killed) is restarted by Ray (``max_restarts``) and reloads
  its shard from the FeatureStore by the ids it owns; the projection travels with every call,
  so a fresh actor re-applies it; the call is retried (``max_task_retries``, then here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import Assignment, FeatureData, make_feature_data, resolve_backend

logger = logging.getLogger("rayclust")

# Ray restarts a lost shard actor this often, and retries a call on it this often.
MAX_RESTARTS = 4
_CALL_ATTEMPTS = 3  # retries here on top of Ray's, for a call that raced a restart
_FLOAT64_CHUNK_BYTES = 64 * 2**20  # a float64 pass's chunk (PCA moments, projection)


@dataclass(frozen=True)
class ShardSource:
    """Where one shard's rows come from: ``ids`` of view ``spec_key`` under ``cache_dir``."""

    cache_dir: str  # a folder, or an s3:// / gs:// prefix
    spec_key: str
    ids: Sequence[str]  # a tuple, or a StringColumn slice
    normalize: bool = True
    storage_options: Mapping[str, Any] | None = None  # of a bucket store


class FeatureShard:
    """One shard's features, held by a Ray actor (``ray.remote`` is applied by
    :func:`start_shards`). Every method takes the current projection (None or
    ``(key, mean, components)``), so an actor restarted from scratch catches up."""

    def __init__(self, source: ShardSource, backend: str = "auto", chunk_rows: int = 65_536):
        self._source = source
        self._backend_name = backend
        self._chunk_rows = chunk_rows
        self._projection_key: str | None = None
        self._load()

    def _load(self) -> None:
        from rayclust.views.store import FeatureStore

        source = self._source
        try:
            X = FeatureStore(
                source.cache_dir, source.spec_key, storage_options=source.storage_options
            ).get(list(source.ids))
        except KeyError as exc:  # the cache folder is not this node's (no shared filesystem)
            raise FileNotFoundError(
                f"{exc.args[0]} under {source.cache_dir}/{source.spec_key} on this node: the "
                "feature cache must be at the same path on every node (a shared filesystem)"
            ) from None
        X = np.asarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise ValueError(f"shard of {source.spec_key} holds NaN or inf features")
        if source.normalize:  # a chunk at a time: a whole-shard temporary would double it
            for start in range(0, len(X), self._chunk_rows):
                rows = X[start : start + self._chunk_rows]
                rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self._set(X)
        self._projection_key = None

    def _set(self, X: np.ndarray) -> None:
        backend = resolve_backend(self._backend_name, X, supported=("faiss", "torch"))
        self.backend = backend
        self._data = make_feature_data(X, backend, chunk_rows=self._chunk_rows)

    def _ensure(self, projection: tuple[str, np.ndarray, np.ndarray] | None) -> FeatureData:
        key = None if projection is None else projection[0]
        if key == self._projection_key:
            return self._data
        if self._projection_key is not None:
            self._load()  # another projection was applied: start again from the stored rows
        if projection is not None:
            # Chunk by chunk in float64: projecting the whole shard at once took five times
            # its size (a copy, float64, centred), and three shards on a node of a 1M-image
            # run went past its memory.
            _, mean, components = projection
            data = self._data
            X = np.empty((data.count(), components.shape[1]), dtype=np.float32)
            for start, stop in self._float64_chunks(data):
                rows = data.get_subset(np.arange(start, stop)).astype(np.float64)
                rows -= mean
                X[start:stop] = rows @ components
            self._data = None  # the unprojected rows go before the projected ones are set
            self._set(X)
            self._projection_key = key
        return self._data

    def _float64_chunks(self, data: FeatureData) -> list[tuple[int, int]]:
        """Row ranges of at most ``_FLOAT64_CHUNK_BYTES`` in float64 (and ``chunk_rows``): the
        passes that widen rows to float64 allocate that much at a time, whatever the dim."""
        n, d = data.count(), max(1, data.dim())
        step = max(1, min(self._chunk_rows, _FLOAT64_CHUNK_BYTES // (8 * d)))
        return [(start, min(start + step, n)) for start in range(0, n, step)]

    def moments(self, projection=None) -> tuple[int, np.ndarray, np.ndarray]:
        """``(n, sum of rows, X^T X)`` in float64: what a PCA of all shards needs."""
        data = self._ensure(projection)
        n, d = data.count(), data.dim()
        total, gram = np.zeros(d), np.zeros((d, d))
        for start, stop in self._float64_chunks(data):
            rows = data.get_subset(np.arange(start, stop)).astype(np.float64)
            total += rows.sum(axis=0)
            gram += rows.T @ rows
        return n, total, gram

    def assign(self, centers: np.ndarray, accumulate: bool, projection=None) -> Assignment:
        return self._ensure(projection).assign(centers, accumulate=accumulate)

    def rows(self, indices: np.ndarray, projection=None) -> np.ndarray:
        return self._ensure(projection).get_subset(indices)

    def info(self) -> dict[str, Any]:
        """Rows, dimension, bytes of features held, backend, device and node of this shard."""
        import ray

        data = self._data
        X = data.X
        nbytes = int(X.element_size() * X.nelement()) if hasattr(X, "nelement") else X.nbytes
        return {
            "rows": data.count(),
            "dim": data.dim(),
            "bytes": nbytes,
            "backend": self.backend,
            "device": data.device,
            "node": ray.get_runtime_context().get_node_id(),
        }

    # -- added for the top-down K-means and the sharded kNN search (issue 16) -------------

    @staticmethod
    def _host_rows(data: FeatureData) -> np.ndarray:
        """The shard's rows as a host array (a copy only where they live on a GPU)."""
        if isinstance(data.X, np.ndarray):
            return data.X
        return data.get_subset(np.arange(data.count()))

    def grouped(self, name: str, args: tuple, offset: int, projection=None) -> Any:
        """One pass of :class:`~rayclust.cluster.TopDownKMeans` over this shard's rows
        (:class:`rayclust.cluster._grouped.GroupedPart`; ``offset``: the global index of the
        shard's first row). The grouping is cached per coarse centres and rebuilt by a
        restarted actor, since every call carries them."""
        from ._grouped import GroupedPart

        data = self._ensure(projection)
        cached = getattr(self, "_grouped_part", None)
        if cached is None or cached[0] != (self._projection_key, offset):
            X = self._host_rows(data)
            cached = ((self._projection_key, offset), GroupedPart(X, offset))
            self._grouped_part = cached
        return cached[1].call(name, *args)

    def ivf_search(
        self, centroids: np.ndarray, queries: np.ndarray, k: int, nprobe: int, metric: str,
        projection=None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top ``k`` of this shard's rows for each query (scores, shard-local indices) from an
        IVF index over the shared coarse ``centroids``, built on first use and kept."""
        from .distributed_knn import ShardIndex

        data = self._ensure(projection)
        key = (self._projection_key, metric, hash(np.ascontiguousarray(centroids).tobytes()))
        cached = getattr(self, "_ivf", None)
        if cached is None or cached[0] != key:
            X = self._host_rows(data)
            cached = (key, ShardIndex(X, centroids, metric=metric))
            self._ivf = cached
        return cached[1].search(np.asarray(queries, dtype=np.float32), k, nprobe)

    def nearest_points(
        self, points: np.ndarray, n_nearest: int, projection=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, indices) of each shard row's ``n_nearest`` of ``points`` (a
        small driver-held set, e.g. spectral landmarks), brute force."""
        from ._spectral_landmarks import nearest_landmarks

        data = self._ensure(projection)
        return nearest_landmarks(
            self._host_rows(data), np.ascontiguousarray(points, dtype=np.float32), n_nearest
        )


class ShardLoadError(RuntimeError):
    """A shard actor could not read its rows from the FeatureStore."""


def split_ids(ids: Sequence[str], shards: int) -> list[Sequence[str]]:
    """``ids`` in ``shards`` contiguous slices of (nearly) equal size, in order. A list's
    slices become tuples; a column's (``rayclust.images.StringColumn``) stay columns: two
    buffers to pickle, not a string object per id in the driver."""
    if shards < 1 or shards > len(ids):
        raise ValueError(f"shards={shards} should be between 1 and the number of ids {len(ids)}")
    bounds = np.linspace(0, len(ids), shards + 1).round().astype(int)
    parts = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [tuple(part) if isinstance(part, list) else part for part in parts]


def _node_cpus() -> list[float]:
    """Logical CPUs of each alive node (a head started with ``--num-cpus 0`` has none)."""
    import ray

    return [
        float(node.get("Resources", {}).get("CPU", 0.0))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def default_shards() -> int:
    """One shard per GPU of the Ray cluster, else one per alive node that has CPUs."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus or max(1, sum(1 for cpus in _node_cpus() if cpus > 0))


def shard_cpus(node_cpus: Sequence[float], shards: int) -> float:
    """The most CPUs (at most 1) each of ``shards`` actors can ask for so that all of them fit
    on nodes with ``node_cpus``; 0 when none fits (an actor of 0 CPUs goes anywhere). An equal
    share of the cluster's CPUs does not always fit: 4 shards of 0.75 CPU on 3 nodes of 1 CPU
    leave the fourth waiting for ever."""
    candidates = {min(1.0, c / m) for c in node_cpus if c > 0 for m in range(1, shards + 1)}
    for each in sorted(candidates, reverse=True):
        if sum(int(c / each + 1e-9) for c in node_cpus) >= shards:
            return each
    return 0.0


def start_shards(
    cache_dir: str | Path,
    spec_key: str,
    ids: Sequence[str],
    shards: int,
    *,
    normalize: bool = True,
    backend: str = "auto",
    max_restarts: int = MAX_RESTARTS,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    shard_class: type[FeatureShard] = FeatureShard,
    storage_options: Mapping[str, Any] | None = None,
) -> ShardedData:
    """Start ``shards`` actors, each loading its slice of ``ids`` from the FeatureStore.

    Resources per actor (None: an equal share of the free CPUs and of the cluster's GPUs, at
    most 1 each): a GPU per actor where the cluster has them, so each shard lives on its own
    device. ``shard_class``: a subclass of :class:`FeatureShard` (tests signal from it)."""
    import ray

    if num_cpus is None:  # of the CPUs free now: actors that wait for CPUs would stall the run
        free = ray.available_resources().get("CPU", 0)
        num_cpus = min(shard_cpus(_node_cpus(), shards), free / shards)
    if num_gpus is None:
        num_gpus = min(1.0, ray.cluster_resources().get("GPU", 0) / shards)
    actor_class = ray.remote(shard_class).options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
        scheduling_strategy="SPREAD",
    )
    sources = [
        ShardSource(str(cache_dir), spec_key, part, normalize, storage_options)
        for part in split_ids(ids, shards)
    ]
    # Put here and held by the ShardedData: Ray restarts a lost actor with its constructor
    # arguments, and an argument over the inline limit (a shard's ids) that went out of
    # scope is gone (ray-project/ray#53727): the restart after a lost node would fail.
    source_refs = [ray.put(source) for source in sources]
    actors = [actor_class.remote(ref, backend) for ref in source_refs]
    data = ShardedData(actors, [len(s.ids) for s in sources])
    data.source_refs = source_refs
    return data


class ShardedData(FeatureData):
    """The rows of all shards, in shard order, as the K-means loop sees them."""

    def __init__(self, actors: list[Any], sizes: Sequence[int]) -> None:
        self.actors = actors
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.projection: tuple[str, np.ndarray, np.ndarray] | None = None
        self.full_passes = 0  # calls of assign (each one pass over every shard)
        from ray.exceptions import RayActorError

        try:
            infos = self.info()
        except RayActorError as exc:
            cause = getattr(exc, "error_msg", None) or str(exc)
            last = [line for line in cause.splitlines() if line.strip()][-1]
            self.close()
            raise ShardLoadError(f"a shard actor could not load its features: {last}") from None
        self._dim = infos[0]["dim"]
        self.backend = infos[0]["backend"]
        self.device = infos[0]["device"]

    def count(self) -> int:
        return int(self.offsets[-1])

    def dim(self) -> int:
        return self._dim

    def _call(self, method: str, per_actor_args: Sequence[tuple]) -> list[Any]:
        """One call of ``method`` on every actor; a call on a lost actor is retried once Ray
        restarted it (the fresh actor reloads its shard)."""
        import ray
        from ray.exceptions import RayActorError

        pending = dict(enumerate(per_actor_args))
        results: dict[int, Any] = {}
        for attempt in range(_CALL_ATTEMPTS):
            refs = {
                i: getattr(self.actors[i], method).remote(*args, projection=self.projection)
                for i, args in pending.items()
            }
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                    del pending[i]
                except RayActorError:
                    if attempt == _CALL_ATTEMPTS - 1:
                        raise
                    logger.warning("shard %d lost during %s; retrying after its restart", i, method)
            if not pending:
                break
            time.sleep(1.0)
        return [results[i] for i in range(len(self.actors))]

    def info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([actor.info.remote() for actor in self.actors])

    def project(self, mean: np.ndarray, components: np.ndarray) -> None:
        """From now on every shard holds ``(X - mean) @ components``."""
        key = f"{len(components)}x{components.shape[1]}:{hash(components.tobytes())}"
        self.projection = (key, mean.astype(np.float64), components.astype(np.float64))
        self._dim = int(components.shape[1])

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        parts = self._call("moments", [()] * len(self.actors))
        return (
            sum(p[0] for p in parts),
            np.sum([p[1] for p in parts], axis=0),
            np.sum([p[2] for p in parts], axis=0),
        )

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), self.dim()), dtype=np.float32)
        per_actor = [(indices[shard_of == s] - self.offsets[s],) for s in range(len(self.actors))]
        for s, rows in enumerate(self._call("rows", per_actor)):
            out[shard_of == s] = rows
        return out

    def assign(self, centroids: np.ndarray, *, accumulate: bool = True) -> Assignment:
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.full_passes += 1
        parts = self._call("assign", [(centroids, accumulate)] * len(self.actors))
        return Assignment(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.sq_distances for p in parts]),
            np.sum([p.sums for p in parts], axis=0) if accumulate else None,
            np.sum([p.counts for p in parts], axis=0) if accumulate else None,
        )

    def assign_rows(self, start, stop, centroids, *, accumulate=True) -> Assignment:
        raise NotImplementedError(
            "sharded data is searched a whole pass at a time; algorithm='minibatch' is local only"
        )

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)

    # -- added for the top-down K-means and the sharded kNN search (issue 16) -------------

    def grouped(self, name: str, *args: Any) -> list[Any]:
        """The grouped pass ``name`` (see :meth:`FeatureShard.grouped`) on every shard, one
        result per shard in shard order."""
        return self._call("grouped", [(name, args, int(offset)) for offset in self.offsets[:-1]])

    def ivf_search(
        self, centroids: Any, queries: Any, k: int, nprobe: int, metric: str = "euclidean"
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every shard's top ``k`` for ``queries`` (an array or a Ray object ref, so rows of
        one shard can query all shards without passing through this process), with global
        row indices (-1 where a shard had fewer than ``k`` candidates)."""
        parts = self._call(
            "ivf_search", [(centroids, queries, k, nprobe, metric)] * len(self.actors)
        )
        out = []
        for offset, (scores, indices) in zip(self.offsets[:-1], parts, strict=True):
            out.append((scores, np.where(indices >= 0, indices + offset, -1)))
        return out

    def nearest_points(self, points: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, indices), each (n, n_nearest), of every row's nearest of
        ``points``, computed on the shards (the landmark step of spectral clustering)."""
        parts = self._call("nearest_points", [(points, n_nearest)] * len(self.actors))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def rows_ref(self, shard: int, indices: np.ndarray) -> Any:
        """A Ray object ref to rows ``indices`` (shard-local) of shard ``shard``: other actors
        can read it; this process never fetches it."""
        return self.actors[shard].rows.remote(indices, projection=self.projection)


def fit_pca(data: ShardedData, n_components: int) -> np.ndarray:
    """PCA of all shards from their summed moments; the shards are projected in place.

    Returns the explained variance of each kept component (descending)."""
    n, total, gram = data.moments()
    mean = total / n
    covariance = gram / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:n_components]
    components = vectors[:, order]
    # A deterministic sign (largest loading positive), as the local PCA fixes its signs.
    signs = np.sign(components[np.argmax(np.abs(components), axis=0), range(len(order))])
    components *= np.where(signs == 0, 1.0, signs)
    data.project(mean, components)
    return values[order]
