"""The one place that decides which library and device run the clustering maths.

``resolve_backend(name, X)`` maps ``"auto" | "sklearn" | "faiss" | "cuml" | "torch"`` to a
concrete backend, logs the choice on ``logging.getLogger("rayclust")`` and fails with an
install hint when the requested library is missing. The K-means loop itself only talks to a
:class:`FeatureData` (count, dim, subset, assign), in the spirit of faiss
``contrib/clustering.py``'s ``DatasetAssign``: host arrays and memory-mapped files go through
:class:`HostData` (BLAS or FAISS assignment, chunk by chunk), tensors on a torch device through
:class:`TorchData`, so the algorithm never branches on the device.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import DEFAULT_CHUNK_ROWS, array_kind, is_gpu_array, to_numpy

logger = logging.getLogger("rayclust")

BACKENDS = ("auto", "sklearn", "faiss", "cuml", "torch")

_INSTALL_HINTS = {
    "faiss": "pip install faiss-cpu (or faiss-gpu-cu12 for GPUs)",
    "cuml": "pip install cuml-cu12 cupy-cuda12x (RAPIDS cuML needs an NVIDIA GPU)",
    "torch": "pip install torch",
    "sklearn": "pip install scikit-learn",
}


class BackendUnavailableError(ImportError):
    """The requested backend's library (or the GPU it needs) is not there."""


@functools.cache
def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@functools.cache
def faiss_gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def library_installed(backend: str) -> bool:
    module = {"sklearn": "sklearn", "faiss": "faiss", "cuml": "cuml", "torch": "torch"}[backend]
    return importlib.util.find_spec(module) is not None


def _check_name(name: str, allowed: Sequence[str]) -> None:
    if name in allowed:
        return
    close = difflib.get_close_matches(str(name), allowed, n=2)
    suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"backend={name!r} is not one of {', '.join(map(repr, allowed))}{suggestion}")


def resolve_backend(
    name: str, X: Any = None, *, supported: Sequence[str] = BACKENDS[1:], purpose: str = ""
) -> str:
    """Concrete backend for ``name`` given the data ``X`` (which may live on a GPU).

    ``"auto"`` prefers, when a CUDA GPU is visible (or ``X`` already lives on one): cuML, then
    faiss-gpu, then torch on CUDA; on a CPU-only machine it takes FAISS (the fast CPU path).
    Only backends listed in ``supported`` are considered. The decision is logged.

    Raises
    ------
    ValueError
        Unknown name, or a backend this estimator does not support.
    BackendUnavailableError
        The backend's library is not installed, or cuML was requested without a GPU.
    """
    _check_name(name, BACKENDS)
    what = f" for {purpose}" if purpose else ""
    if name != "auto":
        if name not in supported:
            raise ValueError(
                f"backend={name!r} is not supported{what}; use one of "
                f"{', '.join(map(repr, ['auto', *supported]))}"
            )
        if not library_installed(name):
            raise BackendUnavailableError(
                f"backend={name!r} needs a library that is not installed: {_INSTALL_HINTS[name]}"
            )
        if name == "cuml" and not cuda_available():
            raise BackendUnavailableError(
                "backend='cuml' needs an NVIDIA GPU with CUDA and none is visible; "
                "use backend='faiss' or 'auto' on this machine"
            )
        logger.debug("rayclust backend%s: %s (requested)", what, name)
        return name

    on_gpu = is_gpu_array(X) or cuda_available()
    if on_gpu:
        candidates = [
            ("cuml", library_installed("cuml"), "cuML found and a CUDA GPU is visible"),
            ("faiss", faiss_gpu_count() > 0, "faiss-gpu found and a CUDA GPU is visible"),
            ("torch", library_installed("torch"), "a CUDA GPU is visible; torch on CUDA"),
        ]
    else:
        candidates = [
            ("faiss", library_installed("faiss"), "no CUDA GPU; FAISS is the fast CPU path"),
            ("torch", library_installed("torch"), "no CUDA GPU and no FAISS; torch on CPU"),
        ]
    candidates.append(("sklearn", True, "no faster backend available"))
    for backend, usable, reason in candidates:
        if usable and backend in supported:
            logger.debug("rayclust backend%s: auto -> %s (%s)", what, backend, reason)
            return backend
    raise BackendUnavailableError(f"no backend{what} among {list(supported)} is installed")


def backend_device(backend: str, X: Any = None) -> str:
    """'cuda' or 'cpu': where a resolved backend will run on this machine."""
    if backend == "cuml":
        return "cuda"
    if backend == "faiss":
        return "cuda" if faiss_gpu_count() > 0 and (is_gpu_array(X) or cuda_available()) else "cpu"
    if backend == "torch":
        if array_kind(X) == "torch":
            return X.device.type
        return "cuda" if cuda_available() else "cpu"
    return "cpu"


# ---------------------------------------------------------------------------------------------
# The narrow device interface the K-means loop talks to.
# ---------------------------------------------------------------------------------------------


@dataclass
class Assignment:
    """Nearest centroid of every point, with what a Lloyd update needs."""

    labels: np.ndarray  # (n,) int64
    sq_distances: np.ndarray  # (n,) float32, squared distance to the nearest centroid
    sums: np.ndarray | None  # (k, d) float64 sum of the points of each cluster
    counts: np.ndarray | None  # (k,) int64

    @property
    def inertia(self) -> float:
        return float(self.sq_distances.sum(dtype=np.float64))


class FeatureData(ABC):
    """Data as the K-means loop sees it: size, dimension, a row subset, nearest-centroid search.

    Subclasses hold the array in ``X`` and implement :meth:`get_subset` and :meth:`assign_rows`
    (one block of rows); :meth:`assign` runs the latter over the whole array block by block,
    so a memory-mapped file is never loaded whole.
    """

    X: Any  # the (n, d) array: numpy, memmap or torch tensor
    device: str = "cpu"
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def count(self) -> int:
        return int(self.X.shape[0])

    def dim(self) -> int:
        return int(self.X.shape[1])

    @abstractmethod
    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (in the given order) as a host float32 array."""

    @abstractmethod
    def assign_rows(
        self, start: int, stop: int, centroids: np.ndarray, *, accumulate: bool = True
    ) -> Assignment:
        """Nearest of ``centroids`` (k, d) for rows ``start:stop``; with ``accumulate``, their
        per-cluster sums and counts."""

    def chunk_bounds(self) -> list[tuple[int, int]]:
        n = self.count()
        return [(s, min(s + self.chunk_rows, n)) for s in range(0, n, self.chunk_rows)]

    def _map_chunks(self, function, bounds):
        """Run ``function(start, stop)`` over chunks; subclasses may run chunks in parallel."""
        return map(lambda b: function(*b), bounds)

    def assign(self, centroids: np.ndarray, *, accumulate: bool = True) -> Assignment:
        """Nearest centroid of every row (and per-cluster sums), one chunk at a time."""
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        k, d = centroids.shape
        n = self.count()
        labels = np.empty(n, dtype=np.int64)
        sq = np.empty(n, dtype=np.float32)
        sums = np.zeros((k, d), dtype=np.float64) if accumulate else None
        counts = np.zeros(k, dtype=np.int64) if accumulate else None
        bounds = self.chunk_bounds()
        parts = self._map_chunks(
            lambda start, stop: self.assign_rows(start, stop, centroids, accumulate=accumulate),
            bounds,
        )
        for (start, stop), part in zip(bounds, parts, strict=True):
            labels[start:stop] = part.labels
            sq[start:stop] = part.sq_distances
            if accumulate:
                sums += part.sums
                counts += part.counts
        return Assignment(labels, sq, sums, counts)


def _squared_norms(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X)


def nearest_centroids_blas(
    X: np.ndarray, centroids: np.ndarray, centroid_sq_norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, squared distances) by ||x||^2 - 2 x.c + ||c||^2 with one GEMM per block."""
    if centroid_sq_norms is None:
        centroid_sq_norms = _squared_norms(centroids)
    scores = X @ centroids.T
    scores *= -2.0
    scores += centroid_sq_norms
    labels = scores.argmin(axis=1)
    best = np.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    sq = best + _squared_norms(X)
    np.maximum(sq, 0.0, out=sq)  # rounding can push a point on its centroid slightly below 0
    return labels.astype(np.int64, copy=False), sq.astype(np.float32, copy=False)


_GPU_RESOURCES = None


def nearest_centroids_faiss(
    X: np.ndarray, centroids: np.ndarray, *, use_gpu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, squared distances) by FAISS brute-force search (blocked GEMM + fused argmin)."""
    import faiss

    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if use_gpu:
        global _GPU_RESOURCES
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        distances, labels = faiss.knn_gpu(_GPU_RESOURCES, X, centroids, 1)
    else:
        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(centroids)
        distances, labels = index.search(X, 1)
    labels = labels[:, 0].astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        # FAISS answers -1 where every distance is NaN or inf; such a label must never be
        # used as an index (it once wrote past the per-cluster sums and corrupted memory).
        raise FloatingPointError(
            f"no nearest centroid for {int((labels < 0).sum())} of {labels.size} rows: their "
            "distances are not finite (features or centroids too large for float32)"
        )
    return labels, np.maximum(distances[:, 0], 0.0)


def cluster_sums(
    X: np.ndarray, labels: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """(k, d) float64 per-cluster sums and (k,) counts, via one sparse product (fast, exact
    enough: each chunk is summed in float32, chunks are added in float64)."""
    import scipy.sparse as sp

    n = X.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    if n and (labels.min() < 0 or labels.max() >= n_clusters):
        # scipy does not bound-check CSR indices: a bad label would write out of bounds.
        raise ValueError(
            f"labels should lie in [0, {n_clusters}), got {labels.min()}..{labels.max()}"
        )
    # One-hot rows built straight from CSR arrays (no COO sort): (n, k); its transpose times
    # X sums each cluster's rows. 2.3 ms for 98k x 128, k=100 (5.3 ms from (row, col) pairs).
    membership = sp.csr_matrix(
        (np.ones(n, dtype=X.dtype), labels, np.arange(n + 1)),
        shape=(n, n_clusters),
    )
    sums = np.asarray(membership.T @ X, dtype=np.float64)
    counts = np.bincount(labels, minlength=n_clusters).astype(np.int64)
    return sums, counts


# Below this many rows one chunk is cheaper than handing pieces to threads.
_PARALLEL_MIN_ROWS = 8192
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _worker_count() -> int:
    """Threads for chunk-parallel work: the CPUs this process may use, capped by the OpenMP
    thread limit in force (``OMP_NUM_THREADS`` or a ``threadpoolctl.threadpool_limits``
    block), so that rayclust runs on as many threads as scikit-learn would."""
    cpus = _cpu_count()
    try:
        import faiss  # shares the process's OpenMP runtime, which threadpoolctl limits

        return max(1, min(cpus, int(faiss.omp_get_max_threads())))
    except ImportError:
        return cpus


_FAISS_CONFIGURED = False


def configure_faiss() -> None:
    """Once per process: let FAISS brute-force search use BLAS for batches of queries.

    FAISS 1.15 searches fewer than ``distance_compute_blas_threshold`` = 128,000 queries
    without BLAS; for k > 1 neighbours that path was measured 6x slower here (500 queries
    against 98k vectors: 1.07 s instead of 0.17 s). The earlier default, 20, is restored.
    Query blocks of 1024 rows (default 4096) keep each block's distance matrix in cache:
    nearest of 100 centroids for 98k x 128 rows took 27 ms instead of 29-33 ms on one core.
    Both are process-wide FAISS settings; they change speed, never results.
    """
    global _FAISS_CONFIGURED
    if not _FAISS_CONFIGURED:
        import faiss

        faiss.cvar.distance_compute_blas_threshold = min(
            faiss.cvar.distance_compute_blas_threshold, 20
        )
        faiss.cvar.distance_compute_blas_query_bs = 1024
        _FAISS_CONFIGURED = True


def _single_threaded_faiss() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # OpenMP settings are per thread: this one only


def _chunk_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` single-threaded-FAISS threads (one pool per size, kept)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(
            workers, thread_name_prefix="rayclust-assign", initializer=_single_threaded_faiss
        )
    return _POOLS[workers]


@contextmanager
def single_threaded_faiss():
    """FAISS calls in this thread use one OpenMP thread (restored afterwards).

    FAISS's OpenMP regions spin-wait at their barriers; on a machine shared with other jobs
    a 2-thread search of 30 points was measured at 70 ms instead of 0.01 ms. Parallelism comes
    from :func:`parallel_map` instead, whose workers never wait on each other.
    """
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(item) for item in items]`` on a pool of threads, each running single-threaded
    FAISS/BLAS calls (which release the GIL); in this thread when there is one item."""
    configure_faiss()
    workers = _worker_count()
    if len(items) <= 1 or workers == 1:
        with single_threaded_faiss():
            return [function(item) for item in items]
    return list(_chunk_pool(workers).map(function, items))


_BLAS_CONTROLLER = None


def single_threaded_blas():
    """Context that limits numpy's BLAS to one thread (the library scan is done once)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


class HostData(FeatureData):
    """A host array or memory-mapped file, processed ``chunk_rows`` rows at a time.

    A memmap is never loaded whole: each pass reads one chunk, assigns it, adds its per-cluster
    sums and drops it, so memory stays at one chunk plus the (n,) labels.
    ``kernel`` picks the nearest-centroid search: ``"blas"`` (numpy GEMM), ``"faiss"`` or
    ``"faiss-gpu"`` (host chunks searched on the GPU).
    """

    def __init__(
        self, X: np.ndarray, *, kernel: str = "faiss", chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> None:
        if kernel not in ("blas", "faiss", "faiss-gpu"):
            raise ValueError(f"kernel={kernel!r} should be 'blas', 'faiss' or 'faiss-gpu'")
        self.X = X
        self.kernel = kernel
        self.device = "cuda" if kernel == "faiss-gpu" else "cpu"
        self.chunk_rows = int(chunk_rows)

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.X, np.memmap):
            # Reading a memmap in sorted order touches each page once.
            order = np.argsort(indices, kind="stable")
            rows = np.empty((indices.size, self.dim()), dtype=np.float32)
            rows[order] = self.X[indices[order]]
            return rows
        return np.ascontiguousarray(self.X[indices], dtype=np.float32)

    def chunk_bounds(self) -> list[tuple[int, int]]:
        # Enough chunks to keep every worker busy, none larger than chunk_rows.
        n, workers = self.count(), _worker_count()
        rows = max(1, min(self.chunk_rows, -(-n // workers)))
        if self.kernel != "faiss" or n < _PARALLEL_MIN_ROWS:
            rows = self.chunk_rows
        return [(s, min(s + rows, n)) for s in range(0, n, rows)]

    def _map_chunks(self, function, bounds):
        if self.kernel != "faiss":
            return super()._map_chunks(function, bounds)
        # Chunks run as single-threaded FAISS calls on a thread pool rather than one
        # multi-threaded call: no OpenMP spin barriers (see single_threaded_faiss).
        return parallel_map(lambda b: function(*b), bounds)

    def assign_rows(
        self, start: int, stop: int, centroids: np.ndarray, *, accumulate: bool = True
    ) -> Assignment:
        chunk = np.ascontiguousarray(self.X[start:stop], dtype=np.float32)
        if self.kernel == "blas":
            labels, sq = nearest_centroids_blas(chunk, centroids)
        else:
            labels, sq = nearest_centroids_faiss(
                chunk, centroids, use_gpu=self.kernel == "faiss-gpu"
            )
        sums = counts = None
        if accumulate:
            sums, counts = cluster_sums(chunk, labels, centroids.shape[0])
        return Assignment(labels, sq, sums, counts)


class TorchData(FeatureData):
    """A torch tensor on its device (CPU or CUDA); per-chunk results come back to the host."""

    def __init__(self, X: Any, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        import torch

        if not isinstance(X, torch.Tensor):
            X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        self.X = X.to(torch.float32).contiguous()
        self.device = self.X.device.type
        self.chunk_rows = int(chunk_rows)

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        import torch

        index = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.X.device)
        return self.X.index_select(0, index).cpu().numpy()

    def assign_rows(
        self, start: int, stop: int, centroids: np.ndarray, *, accumulate: bool = True
    ) -> Assignment:
        import torch

        C = torch.as_tensor(np.ascontiguousarray(centroids, dtype=np.float32), device=self.X.device)
        k = C.shape[0]
        chunk = self.X[start:stop]
        scores = torch.addmm((C * C).sum(dim=1), chunk, C.T, alpha=-2.0)
        best, labels = scores.min(dim=1)
        sq = (best + (chunk * chunk).sum(dim=1)).clamp_min_(0)
        sums = counts = None
        if accumulate:
            sums_t = torch.zeros((k, chunk.shape[1]), dtype=torch.float32, device=chunk.device)
            sums_t.index_add_(0, labels, chunk)
            sums = sums_t.double().cpu().numpy()
            counts = torch.bincount(labels, minlength=k).cpu().numpy().astype(np.int64)
        return Assignment(labels.cpu().numpy(), sq.cpu().numpy(), sums, counts)


def make_feature_data(X: Any, backend: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> FeatureData:
    """The :class:`FeatureData` through which a resolved backend ('faiss', 'torch') sees X.

    ``"torch"`` keeps (or puts) X on the backend's device; ``"faiss"`` reads host memory and
    searches on the GPU when faiss-gpu and a GPU are there.
    """
    if backend == "torch":
        import torch

        device = backend_device("torch", X)
        if array_kind(X) == "cupy":
            X = torch.from_dlpack(X)
        tensor = X if array_kind(X) == "torch" else torch.from_numpy(np.asarray(X))
        return TorchData(tensor.to(device), chunk_rows=chunk_rows)
    if backend == "faiss":
        kernel = "faiss-gpu" if backend_device("faiss", X) == "cuda" else "faiss"
        return HostData(to_numpy(X), kernel=kernel, chunk_rows=chunk_rows)
    if backend == "blas":
        return HostData(to_numpy(X), kernel="blas", chunk_rows=chunk_rows)
    raise ValueError(f"backend={backend!r} has no FeatureData; it runs its own K-means")
