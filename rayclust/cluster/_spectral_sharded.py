"""Landmark spectral clustering of rows that stay in shard actors (``clustering.engine: ray``).

:class:`~rayclust.cluster.SpectralClustering` fits a
:class:`~rayclust.cluster._backend.FeatureData` (a :class:`~rayclust.cluster.distributed.
ShardedData`) with the landmark method only, through :class:`ShardedRows`:

- landmarks: :func:`~rayclust.cluster._spectral_landmarks.select_landmarks` reads the rows it
  samples through ``ShardedRows[indices]`` (``data.get_subset``), so the same seed draws the
  same sample and the same K-means landmarks as the local fit on the same rows;
- each row's r nearest landmarks: ``data.nearest_points`` on the shards (the landmarks go to
  every shard, brute force, as the local ``nearest_landmarks`` does);
- weights, the p x p eigenproblem, the n x k embedding and its K-means: on the driver, by the
  local code. Per row the driver holds r landmark indices (int64), r squared distances
  (float32, dropped once the weights are made) and r weights (float64), the per-component
  copies of indices and weights ``landmark_spectra`` keeps for the embedding, a component
  number, sort order and label: about 200 B at r = 5. Then the n x k float32 embedding of
  one component at a time while its K-means runs (400 MB at 1M rows and k = 100): K-means
  on the shards would save that but cost a network pass per Lloyd step, so it stays here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import FeatureData
from ._spectral_landmarks import nearest_landmarks
from ._validation import DEFAULT_CHUNK_ROWS


class ShardedRows:
    """``data`` as the read-only row array the landmark path indexes: ``shape``, and rows by
    an index array or a slice (each read is one ``get_subset``, so the rare full pass, the
    component centroids of a disconnected graph, goes chunk by chunk)."""

    ndim = 2

    def __init__(self, data: FeatureData) -> None:
        self.data = data
        self.shape = (data.count(), data.dim())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(self.shape[0]))
        return self.data.get_subset(np.asarray(key, dtype=np.int64))

    def nearest(self, landmarks: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, indices), each (n, n_nearest), of every row's nearest landmarks:
        on the shards where the data can search itself, else read chunk by chunk."""
        search = getattr(self.data, "nearest_points", None)
        if search is not None:
            return search(landmarks, n_nearest)
        return nearest_landmarks(self, landmarks, n_nearest, chunk_rows=DEFAULT_CHUNK_ROWS)


def check_sharded(data: FeatureData, n_clusters: int | str) -> ShardedRows:
    """The rows behind ``data`` for a spectral fit, after the checks ``check_features`` makes
    locally that need no pass over them (each shard checked its rows finite on loading)."""
    n_samples = data.count()
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples} should be >= 2 for spectral clustering")
    if n_clusters != "auto" and not 1 <= int(n_clusters) <= n_samples:
        raise ValueError(f"n_clusters={n_clusters} should be between 1 and n_samples={n_samples}")
    return ShardedRows(data)
