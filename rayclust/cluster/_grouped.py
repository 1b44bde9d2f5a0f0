"""The per-part passes of :class:`~rayclust.cluster.TopDownKMeans`: rows grouped by their
coarse cluster, each group searched against its own fine centroids only.

A *part* is the rows one process holds: the whole array in a local fit, one shard actor's
rows in a sharded one (:meth:`rayclust.cluster.distributed.FeatureShard.grouped`). Both run
this code, so a sharded fit equals the local one up to float summation order; the driver
only adds up what the parts return (per-cluster sums and counts, a few candidate rows).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ._backend import cluster_sums, nearest_centroids_faiss, parallel_map

# Rows per search block inside a group (bounds the block x k_g distance matrix).
_BLOCK_ROWS = 32_768
# Groups per task handed to the thread pool: per-group calls are small, batching them keeps
# the pool's overhead below the work.
_GROUPS_PER_TASK = 8

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_keys(global_rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row from its global index and ``seed`` (splitmix64).

    A sample drawn as ``key < rate`` is the same however the rows are split into parts, which
    is what makes a sharded fit see the local fit's seeding sample."""
    with np.errstate(over="ignore"):
        z = np.asarray(global_rows, dtype=np.uint64) + np.uint64(seed + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def centers_key(centers: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(centers).tobytes()).hexdigest()


class GroupedPart:
    """One part's rows, sorted by coarse cluster once per set of coarse centres.

    ``offset`` is the global index of the part's first row. The sorted copy (one more copy of
    the part's rows) lives until :meth:`release` or the next coarse centres."""

    def __init__(self, X: np.ndarray, offset: int = 0) -> None:
        self.X = X
        self.offset = int(offset)
        self._key: str | None = None

    def _groups(self, coarse: np.ndarray) -> None:
        key = centers_key(coarse)
        if key == self._key:
            return
        n = self.X.shape[0]
        labels = np.empty(n, dtype=np.int64)
        bounds = [(s, min(s + _BLOCK_ROWS, n)) for s in range(0, n, _BLOCK_ROWS)]

        def nearest(bound):
            start, stop = bound
            chunk = np.ascontiguousarray(self.X[start:stop], dtype=np.float32)
            return nearest_centroids_faiss(chunk, coarse)[0]

        for (start, stop), part in zip(bounds, parallel_map(nearest, bounds), strict=True):
            labels[start:stop] = part
        self.order = np.argsort(labels, kind="stable")
        self.sorted_rows = np.ascontiguousarray(self.X[self.order], dtype=np.float32)
        self.bounds = np.searchsorted(labels[self.order], np.arange(len(coarse) + 1))
        self._key = key

    def release(self) -> None:
        self._key = None
        for name in ("order", "sorted_rows", "bounds"):
            self.__dict__.pop(name, None)

    def coarse_counts(self, coarse: np.ndarray) -> np.ndarray:
        """Rows of this part in each coarse cluster."""
        self._groups(coarse)
        return np.diff(self.bounds).astype(np.int64)

    def sample(
        self, coarse: np.ndarray, rates: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(groups, global rows, rows)`` of the rows whose key is below their group's rate."""
        self._groups(coarse)
        group_of = np.repeat(np.arange(len(coarse)), np.diff(self.bounds))
        global_rows = self.offset + self.order
        chosen = np.flatnonzero(row_keys(global_rows, seed) < rates[group_of])
        return group_of[chosen], global_rows[chosen], self.sorted_rows[chosen]

    def _per_group(self, coarse, fine, fine_offsets, work):
        """``work(g, rows, centres)`` for every non-empty group with fine centres, threaded."""
        self._groups(coarse)
        groups = [
            g
            for g in range(len(coarse))
            if self.bounds[g + 1] > self.bounds[g] and fine_offsets[g + 1] > fine_offsets[g]
        ]
        tasks = [groups[i : i + _GROUPS_PER_TASK] for i in range(0, len(groups), _GROUPS_PER_TASK)]

        def run(task):
            out = []
            for g in task:
                rows = self.sorted_rows[self.bounds[g] : self.bounds[g + 1]]
                out.append((g, work(g, rows, fine[fine_offsets[g] : fine_offsets[g + 1]])))
            return out

        return [item for part in parallel_map(run, tasks) for item in part]

    @staticmethod
    def _nearest(rows: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.empty(len(rows), dtype=np.int64)
        sq = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            labels[start:stop], sq[start:stop] = nearest_centroids_faiss(rows[start:stop], centers)
        return labels, sq

    def grouped_pass(
        self,
        coarse: np.ndarray,
        fine: np.ndarray,
        fine_offsets: np.ndarray,
        n_far: int,
    ) -> dict[str, np.ndarray | float]:
        """One Lloyd pass of every group against its own fine centres.

        Returns per-fine-cluster ``sums`` (k, d) float64 and ``counts`` (k,), the ``inertia``
        and, per group, the ``n_far`` rows farthest from their centre (``far_groups``,
        ``far_sq``, ``far_rows``): the candidates that re-seed an empty cluster."""
        k, d = fine.shape
        sums = np.zeros((k, d), dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)

        def work(g, rows, centers):
            labels, sq = self._nearest(rows, centers)
            group_sums, group_counts = cluster_sums(rows, labels, len(centers))
            far = np.argsort(-sq, kind="stable")[:n_far]
            return group_sums, group_counts, float(sq.sum(dtype=np.float64)), sq[far], rows[far]

        inertia = 0.0
        far_groups, far_sq, far_rows = [], [], []
        for g, (group_sums, group_counts, group_inertia, sq, rows) in self._per_group(
            coarse, fine, fine_offsets, work
        ):
            sums[fine_offsets[g] : fine_offsets[g + 1]] = group_sums
            counts[fine_offsets[g] : fine_offsets[g + 1]] = group_counts
            inertia += group_inertia
            far_groups.append(np.full(len(sq), g))
            far_sq.append(sq)
            far_rows.append(rows)
        return {
            "sums": sums,
            "counts": counts,
            "inertia": inertia,
            "far_groups": np.concatenate([np.zeros(0, np.int64), *far_groups]),
            "far_sq": np.concatenate([np.zeros(0, np.float32), *far_sq]),
            "far_rows": np.concatenate([np.zeros((0, d), np.float32), *far_rows]),
        }

    def grouped_labels(
        self, coarse: np.ndarray, fine: np.ndarray, fine_offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(fine label, squared distance) of every row, in the part's row order."""
        n = self.X.shape[0]
        labels = np.full(n, -1, dtype=np.int64)
        sq = np.zeros(n, dtype=np.float32)

        def work(g, rows, centers):
            return self._nearest(rows, centers)

        for g, (group_labels, group_sq) in self._per_group(coarse, fine, fine_offsets, work):
            rows = self.order[self.bounds[g] : self.bounds[g + 1]]
            labels[rows] = group_labels + fine_offsets[g]
            sq[rows] = group_sq
        return labels, sq

    def call(self, name: str, *args):
        """The method ``name`` (one of the passes above) on ``args``: the one entry point a
        shard actor exposes for them."""
        if name not in ("coarse_counts", "sample", "grouped_pass", "grouped_labels", "release"):
            raise ValueError(f"unknown grouped pass {name!r}")
        return getattr(self, name)(*args)
