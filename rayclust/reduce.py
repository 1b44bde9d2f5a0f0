"""The reduce stage: a run's stored features, read by ids, L2-normalised, PCA-reduced and
combined across views into the ``Features`` the clustering stage clusters.

Usable alone from Python::

    features = load_features(config, ids, {"efficientnet_lite0": spec_key}, labels)

``rayclust.clustering`` exports these names too (the stage's front door).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rayclust.config import ClusteringConfig, RunConfig

log = logging.getLogger("rayclust")


@dataclass
class Features:
    """The features one clustering runs on, row i being image ``ids[i]``."""

    ids: list[str]
    per_view: dict[str, np.ndarray]  # per view, after L2 normalisation and PCA (as configured)
    combined: np.ndarray  # what is clustered for a single view / the concat row
    view_keys: dict[str, str]  # view name -> FeatureStore spec key (cache key)
    labels_true: np.ndarray | None  # encoded labels (index into label_names) or None
    label_names: list[str] = field(default_factory=list)
    # view -> its fitted PCA (sklearn), where PCA was applied: kept so that new images can be
    # reduced the same way (rayclust.reuse.model)
    pca: dict[str, Any] = field(default_factory=dict)
    # A sample of a run's rows (clustering.engine=ray): the run's row of each of these rows,
    # ascending; None: these are every row of the run, in its order.
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode_labels(labels: Sequence[str | None] | None) -> tuple[np.ndarray | None, list[str]]:
    """Labels as integers into their sorted names; ``(None, [])`` unless every image has one."""
    from rayclust.images import LabelColumn

    if isinstance(labels, LabelColumn):  # coded already: no string per image
        if len(labels) == 0 or bool(np.any(labels.codes < 0)):
            return None, []
        used = np.unique(labels.codes)
        names = [labels.names[code] for code in used.tolist()]
        return np.searchsorted(used, labels.codes).astype(np.int64), names
    if labels is None or len(labels) == 0 or any(label is None for label in labels):
        return None, []
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels]), names


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fit_pca(x: np.ndarray, pca_dim: int | None, seed: int = 0) -> tuple[np.ndarray, Any]:
    """PCA to ``pca_dim`` components and the fitted PCA; ``(x, None)`` when None or not
    smaller than the data."""
    if pca_dim is None or pca_dim >= min(x.shape):
        return x, None
    from sklearn.decomposition import PCA

    pca = PCA(n_components=pca_dim, random_state=seed)
    return pca.fit_transform(x).astype(np.float32), pca


def reduce_dim(x: np.ndarray, pca_dim: int | None, seed: int = 0) -> np.ndarray:
    """PCA to ``pca_dim`` components; unchanged when None or not smaller than the data."""
    return fit_pca(x, pca_dim, seed)[0]


def view_scale(feats: np.ndarray) -> float:
    """A view's root mean squared row norm: what :func:`combine_views` divides it by."""
    return float(np.sqrt(np.mean(np.sum(feats.astype(np.float64) ** 2, axis=1))) or 1.0)


def combine_views(per_view: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate views, each scaled to unit average row norm so no view dominates by size."""
    if len(per_view) == 1:
        return next(iter(per_view.values()))
    parts = [feats / view_scale(feats) for feats in per_view.values()]
    return np.concatenate(parts, axis=1).astype(np.float32)


def prepare_features(
    raw: Mapping[str, np.ndarray],
    clustering: ClusteringConfig,
    ids: Sequence[str],
    view_keys: Mapping[str, str],
    labels: Sequence[str | None] | None = None,
) -> Features:
    """Normalise and reduce each view's raw features as ``clustering`` says, then combine."""
    per_view, pcas = {}, {}
    for view, feats in raw.items():
        if len(feats) != len(ids):
            raise ValueError(f"view {view!r} has {len(feats)} rows but there are {len(ids)} ids")
        per_view[view], pca = prepare_view(feats, clustering)
        if pca is not None:
            pcas[view] = pca
    return assemble_features(per_view, pcas, ids, view_keys, labels)


def prepare_view(feats: np.ndarray, clustering: ClusteringConfig) -> tuple[np.ndarray, Any]:
    """One view's raw features L2-normalised and reduced as ``clustering`` says, and its
    fitted PCA (None where not applied); each view is prepared alone."""
    feats = np.asarray(feats, dtype=np.float32)
    if clustering.normalize:
        feats = l2_normalize(feats)
    return fit_pca(feats, clustering.pca_dim)


def assemble_features(
    per_view: Mapping[str, np.ndarray],
    pcas: Mapping[str, Any],
    ids: Sequence[str],
    view_keys: Mapping[str, str],
    labels: Sequence[str | None] | None = None,
) -> Features:
    """Features from views already prepared (:func:`prepare_view`), in ``ids`` order."""
    labels_true, label_names = encode_labels(labels)
    return Features(
        ids=list(ids),
        per_view=dict(per_view),
        combined=combine_views(per_view),
        view_keys={view: view_keys[view] for view in per_view},
        labels_true=labels_true,
        label_names=label_names,
        pca=dict(pcas),
    )


def read_features(
    cache_dir: str | Path,
    ids: Sequence[str],
    view_keys: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Each view's stored features of ``ids`` (float32, in ``ids`` order) from its FeatureStore
    (``cache_dir`` a folder or an s3:// / gs:// prefix, read with ``storage_options``)."""
    from rayclust.views.store import FeatureStore

    return {
        view: np.asarray(
            FeatureStore(cache_dir, key, storage_options=storage_options).get(list(ids)),
            dtype=np.float32,
        )
        for view, key in view_keys.items()
    }


def load_features(
    config: RunConfig,
    ids: Sequence[str],
    view_keys: Mapping[str, str],
    labels: Sequence[str | None] | None = None,
) -> Features:
    """Read the views' stored features (``config.extraction.cache_dir``) and prepare them."""
    from rayclust.views.store import default_cache_dir

    cache_dir = config.extraction.cache_dir or default_cache_dir()
    raw = read_features(cache_dir, ids, view_keys, config.input.storage_options)
    return prepare_features(raw, config.clustering, ids, view_keys, labels)


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded uniform sample of ``size`` of ``n`` rows (all when
    ``size >= n``)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
