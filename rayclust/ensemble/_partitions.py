"""Validation shared by the consensus methods: partitions in, one clean label matrix out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

MISSING = -1


class ConsensusWarning(UserWarning):
    """A consensus result that is usable but worth a look (samples no partition covers...)."""


def check_partitions(partitions: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack partitions into an ``(n_partitions, n_samples)`` int64 matrix.

    Each partition's labels are renumbered ``0..k_p-1`` in sorted order, and every negative
    label becomes ``-1`` (missing: this view has no label for that sample). A 2-D array is read
    as one partition per row.
    """
    if isinstance(partitions, np.ndarray) and partitions.ndim == 2:
        rows = list(partitions)
    else:
        rows = [np.asarray(p) for p in partitions]
    if not rows:
        raise ValueError("partitions is empty; need at least one label array")
    lengths = {row.shape[0] if row.ndim == 1 else -1 for row in rows}
    if -1 in lengths:
        bad = next(i for i, row in enumerate(rows) if row.ndim != 1)
        raise ValueError(f"partition {bad} should be a 1-D label array; got ndim={rows[bad].ndim}")
    if len(lengths) != 1:
        sizes = [row.shape[0] for row in rows]
        raise ValueError(f"partitions should all have the same length; got lengths {sizes}")
    n_samples = lengths.pop()
    if n_samples == 0:
        raise ValueError("partitions have no samples (length 0)")
    labels = np.empty((len(rows), n_samples), dtype=np.int64)
    for index, row in enumerate(rows):
        if not np.issubdtype(row.dtype, np.integer):
            if np.issubdtype(row.dtype, np.floating) and np.all(np.isfinite(row)):
                if not np.all(row == np.round(row)):
                    raise ValueError(f"partition {index} holds non-integer labels")
            else:
                raise ValueError(
                    f"partition {index} should hold integer labels; got dtype={row.dtype}"
                )
        row = row.astype(np.int64, copy=False)
        present = row >= 0
        labels[index] = MISSING
        if present.any():
            _, labels[index, present] = np.unique(row[present], return_inverse=True)
    return labels


def check_weights(weights: Sequence[float] | np.ndarray | None, n_partitions: int) -> np.ndarray:
    """Per-partition weights as float64: non-negative, finite, not all zero (None: all 1)."""
    if weights is None:
        return np.ones(n_partitions, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_partitions,):
        raise ValueError(
            f"weights should have one entry per partition: len(weights)={weights.size} "
            f"but n_partitions={n_partitions}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"weights should be finite and >= 0; got {weights.tolist()}")
    if not np.any(weights > 0):
        raise ValueError("weights are all 0; at least one partition needs a positive weight")
    return weights


def check_n_clusters(n_clusters: int, n_covered: int) -> None:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(f"n_clusters={n_clusters!r} should be an int")
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} should be >= 1")
    if n_covered < n_clusters:
        raise ValueError(
            f"n_samples={n_covered} (with a label in some partition) should be >= "
            f"n_clusters={n_clusters}"
        )


def covered_samples(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mask of samples labelled by at least one partition of positive weight; warns if not all."""
    covered = np.any((labels >= 0) & (weights[:, None] > 0), axis=0)
    n_uncovered = int((~covered).sum())
    if n_uncovered:
        warnings.warn(
            f"{n_uncovered} of {covered.size} samples have no label in any weighted partition; "
            "they get label -1",
            ConsensusWarning,
            stacklevel=3,
        )
    return covered
