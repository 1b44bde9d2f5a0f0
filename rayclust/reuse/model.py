"""A run's clusters, kept so that new images can be put in them (``rayclust predict``).

A ``rayclust cluster`` run saves, next to its assignments (``runs.MODEL_FILE`` and
``runs.MODEL_INFO_FILE``), everything that turns a new image into a point of the space its
answer was clustered in, and that space's centroids:

1. the exact ViewSpec of every view the answer uses (precision and decode rule included),
   so new images are extracted identically, into the same feature cache keys;
2. per view, the reduction of the clustering stage: L2 normalisation, the PCA fitted on
   the run (mean and components);
3. the combination: one view alone, or the views concatenated, each divided by its root
   mean squared norm as :func:`rayclust.clustering.combine_views` does, and for a
   consensus answer weighted by the view weights of the consensus (block x sqrt(weight), so
   squared distances add up as the consensus votes);
4. when the label-free selection clustered a representation's graph space (spectral,
   agglomerative, the refined partition), that space: L2, then the selection's PCA;
5. the centroids of the answer's clusters in that space: the mean of each cluster's members
   (what K-means' own centres are; spectral and agglomerative have none).

A new image goes to the nearest centroid, by Euclidean or cosine distance: whichever of the
two puts more of the run's own images back in their clusters (label-free; both agreements
are recorded in model.json, ties go to cosine on normalised features). For K-means the
agreement is 1; for graph methods, whose clusters need not be convex, it says how closely
nearest-centroid assignment reproduces them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayclust import runs
from rayclust.clustering import fit_pca, l2_normalize, view_scale

if TYPE_CHECKING:
    from rayclust.clustering import ClusteringResult, Features
    from rayclust.config import RunConfig
    from rayclust.views import ViewSpec

log = logging.getLogger("rayclust")

MODEL_VERSION = 1
METRICS = ("euclidean", "cosine")
_CHUNK = 65_536  # rows per distance block: bounded memory on large runs


class RunModelError(ValueError):
    """A run folder whose clusters cannot be reused; the message says why, in one line."""


@dataclass
class ViewReduction:
    """One view's way from raw features to its block of the model's space."""

    name: str
    spec: dict[str, Any]  # the ViewSpec's fields, as extracted in the run
    spec_key: str
    normalize: bool
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None
    scale: float = 1.0  # divisor in a concatenation of views
    weight: float = 1.0  # consensus weight of the view

    def reduce(self, raw: np.ndarray) -> np.ndarray:
        """L2 and PCA as the clustering stage did (``clustering.prepare_features``)."""
        x = np.asarray(raw, dtype=np.float32)
        if self.normalize:
            x = l2_normalize(x)
        if self.pca_components is not None:
            x = ((x - self.pca_mean) @ self.pca_components.T).astype(np.float32)
        return x


@dataclass
class ClusterModel:
    """The views, reduction, space and centroids of a run's answer (see the module)."""

    views: list[ViewReduction]
    representation: str  # "view:<name>" or "concat"
    clusters: np.ndarray  # cluster ids, one per centroid row
    centroids: np.ndarray
    metric: str = "euclidean"
    graph_space: bool = False  # then: L2, and the PCA below when there is one
    space_pca_mean: np.ndarray | None = None
    space_pca_components: np.ndarray | None = None
    # per centroid: the 95th percentile of the distances of the run's images assigned to it
    radius: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def view_keys(self) -> dict[str, str]:
        return {view.name: view.spec_key for view in self.views}

    def view_specs(self) -> list[ViewSpec]:
        """The views' specs as the run extracted them (precision and decode rule included)."""
        from rayclust.views import ViewSpec

        try:
            return [ViewSpec(**view.spec) for view in self.views]
        except (TypeError, ValueError) as exc:
            raise RunModelError(f"model.json: a view spec cannot be read ({exc})") from None

    def space(self, reduced: Mapping[str, np.ndarray]) -> np.ndarray:
        """The clustered space from each view's reduced features."""
        if len(self.views) == 1:
            x = np.asarray(reduced[self.views[0].name], dtype=np.float32)
        else:
            blocks = []
            for view in self.views:
                block = reduced[view.name] / view.scale
                if view.weight != 1.0:
                    block = block * np.sqrt(view.weight)
                blocks.append(block)
            x = np.concatenate(blocks, axis=1).astype(np.float32)
        if self.graph_space:
            x = l2_normalize(x)
            if self.space_pca_components is not None:
                x = ((x - self.space_pca_mean) @ self.space_pca_components.T).astype(np.float32)
        return x

    def transform(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """Raw features per view (as the FeatureStore holds them) -> the clustered space."""
        return self.space({view.name: view.reduce(raw[view.name]) for view in self.views})

    def assign(self, x: np.ndarray, metric: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest centroid: (cluster ids, distances)."""
        metric = metric or self.metric
        centroids = self.centroids.astype(np.float64)
        if metric == "cosine":
            centroids = l2_normalize(centroids)
        nearest = np.empty(len(x), dtype=np.int64)
        distance = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), _CHUNK):
            rows = np.asarray(x[start : start + _CHUNK], dtype=np.float64)
            if metric == "cosine":
                d = 1.0 - l2_normalize(rows) @ centroids.T
            else:
                d = (
                    np.sum(rows**2, axis=1, keepdims=True)
                    - 2.0 * rows @ centroids.T
                    + np.sum(centroids**2, axis=1)
                )
                d = np.sqrt(np.maximum(d, 0.0))
            index = np.argmin(d, axis=1)
            nearest[start : start + len(rows)] = index
            distance[start : start + len(rows)] = np.maximum(d[np.arange(len(rows)), index], 0.0)
        return self.clusters[nearest], distance

    def beyond_radius(self, clusters: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Whether each assignment lies farther from its centroid than 95% of the run's
        images there: an image unlike the cluster's, maybe unlike anything in the run."""
        if self.radius is None:
            return np.zeros(len(clusters), dtype=bool)
        index = np.searchsorted(self.clusters, clusters)
        return np.asarray(distances) > self.radius[index]

    # -- files ---------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> None:
        """model.npz + model.json, tied to the run's assignments.csv as it is now."""
        run_dir = Path(run_dir)
        arrays: dict[str, np.ndarray] = {"clusters": self.clusters, "centroids": self.centroids}
        views = []
        for i, view in enumerate(self.views):
            if view.pca_components is not None:
                arrays[f"view{i}_pca_mean"] = view.pca_mean
                arrays[f"view{i}_pca_components"] = view.pca_components
            views.append(
                {
                    "name": view.name,
                    "spec": view.spec,
                    "spec_key": view.spec_key,
                    "normalize": view.normalize,
                    "pca": view.pca_components is not None,
                    "scale": view.scale,
                    "weight": view.weight,
                }
            )
        if self.radius is not None:
            arrays["radius"] = self.radius
        if self.space_pca_components is not None:
            arrays["space_pca_mean"] = self.space_pca_mean
            arrays["space_pca_components"] = self.space_pca_components
        info = {
            "version": MODEL_VERSION,
            "representation": self.representation,
            "metric": self.metric,
            "graph_space": self.graph_space,
            "views": views,
            **self.info,
            "assignments_sha256": _digest(run_dir / runs.ASSIGNMENTS_FILE),
        }
        runs.write_model(run_dir, arrays, info)

    @classmethod
    def load(cls, run_dir: str | Path) -> ClusterModel:
        """The model a run saved; :class:`RunModelError` for a folder without one (an older
        run, a deep, tune or train run) or whose model belongs to an earlier run there."""
        import json

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunModelError(f"run folder {run_dir} does not exist")
        info_path, arrays_path = run_dir / runs.MODEL_INFO_FILE, run_dir / runs.MODEL_FILE
        if not info_path.is_file() or not arrays_path.is_file():
            raise RunModelError(
                f"{run_dir} holds no saved clusters ({runs.MODEL_INFO_FILE}, {runs.MODEL_FILE}):"
                " only `rayclust cluster` / `rayclust run` runs of this version save them "
                "(not deep, tune or train runs, nor older runs); rerun `rayclust cluster`"
            )
        try:
            info = json.loads(info_path.read_text())
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise RunModelError(f"{run_dir}: the saved clusters cannot be read ({exc})") from None
        if not isinstance(info, dict) or info.get("version") != MODEL_VERSION:
            version = info.get("version") if isinstance(info, dict) else None
            raise RunModelError(
                f"{info_path}: version {version!r}, this rayclust reads version {MODEL_VERSION}"
            )
        if info.get("assignments_sha256") != _digest(run_dir / runs.ASSIGNMENTS_FILE):
            raise RunModelError(
                f"{info_path} belongs to another run than {run_dir / runs.ASSIGNMENTS_FILE} "
                "(the folder was rewritten since); rerun `rayclust cluster`"
            )
        try:
            views = [
                ViewReduction(
                    name=v["name"],
                    spec=dict(v["spec"]),
                    spec_key=v["spec_key"],
                    normalize=bool(v["normalize"]),
                    pca_mean=arrays.get(f"view{i}_pca_mean") if v["pca"] else None,
                    pca_components=arrays.get(f"view{i}_pca_components") if v["pca"] else None,
                    scale=float(v["scale"]),
                    weight=float(v["weight"]),
                )
                for i, v in enumerate(info["views"])
            ]
            model = cls(
                views=views,
                representation=info["representation"],
                clusters=arrays["clusters"],
                centroids=arrays["centroids"],
                metric=info["metric"],
                graph_space=bool(info["graph_space"]),
                space_pca_mean=arrays.get("space_pca_mean"),
                space_pca_components=arrays.get("space_pca_components"),
                radius=arrays.get("radius"),
                info=info,
            )
        except (KeyError, TypeError) as exc:
            raise RunModelError(f"{info_path}: incomplete saved clusters (no {exc})") from None
        if model.metric not in METRICS or any(
            v.pca_components is None for v, d in zip(views, info["views"], strict=True) if d["pca"]
        ):
            raise RunModelError(f"{run_dir}: model.json and model.npz do not match")
        return model


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# -- building it from a run ------------------------------------------------------------------


def answer_space(result: ClusteringResult) -> tuple[str, bool, dict[str, float] | None]:
    """Where the answer (primary row) was clustered: (representation, graph space, view
    weights of a consensus)."""
    from rayclust.selection import clusters_reduced_space

    primary = result.primary
    if result.selection is not None:  # rows "selected" / "refined" (refined: graph space)
        algorithm = result.selection["algorithm"]
        graph = primary == "refined" or clusters_reduced_space(algorithm)
        return result.selection["representation"], graph, None
    if primary.startswith("view:") or primary == "concat":
        return primary, False, None
    if primary == "leader":
        return f"view:{result.leader}", False, None
    if primary.startswith("consensus:"):
        return "concat", False, dict(result.weights or {})
    raise ValueError(f"no space known for the primary row {primary!r}")


def build_model(
    features: Features,
    result: ClusteringResult,
    specs: Mapping[str, ViewSpec | None],
    config: RunConfig,
) -> ClusterModel:
    """The model of a finished clustering: ``specs`` are the views' specs as extracted."""
    from rayclust.selection import CONCAT, SCORE_DIM

    representation, graph, weights = answer_space(result)
    names = (
        list(features.per_view)
        if representation == CONCAT
        else [representation.removeprefix("view:")]
    )
    several = len(names) > 1
    views = []
    for name in names:
        spec, pca = specs.get(name), features.pca.get(name)
        if spec is None:
            raise ValueError(f"no spec was recorded for the extraction of view {name!r}")
        views.append(
            ViewReduction(
                name=name,
                spec=asdict(spec),
                spec_key=features.view_keys[name],
                normalize=config.clustering.normalize,
                pca_mean=None if pca is None else pca.mean_.astype(np.float32),
                pca_components=None if pca is None else pca.components_.astype(np.float32),
                scale=view_scale(features.per_view[name]) if several else 1.0,
                weight=float(weights.get(name, 1.0)) if weights else 1.0,
            )
        )
    model = ClusterModel(
        views=views, representation=representation, clusters=np.empty(0), centroids=np.empty(0)
    )
    x = model.space(features.per_view)
    if graph:  # the selection's score_space, fitted again: PCA is deterministic (seed 0)
        _, pca = fit_pca(l2_normalize(x), SCORE_DIM, 0)
        model.graph_space = True
        if pca is not None:
            model.space_pca_mean = pca.mean_.astype(np.float32)
            model.space_pca_components = pca.components_.astype(np.float32)
        x = model.space(features.per_view)
    labels = np.asarray(result.labels)
    model.clusters = np.unique(labels)
    model.centroids = np.stack([x[labels == c].mean(axis=0) for c in model.clusters]).astype(
        np.float32
    )
    agreement = {m: float(np.mean(model.assign(x, m)[0] == labels)) for m in METRICS}
    best = max(agreement.values())
    tied = [m for m in METRICS if agreement[m] == best]
    preferred = "cosine" if config.clustering.normalize else "euclidean"
    model.metric = preferred if preferred in tied else tied[0]
    nearest, distance = model.assign(x)
    model.radius = np.array(
        [
            np.percentile(distance[nearest == c], 95) if np.any(nearest == c) else 0.0
            for c in model.clusters
        ]  # fmt: skip
    ).astype(np.float32)
    model.info = {
        "primary": result.primary,
        "algorithm": result.algorithm,
        "n_clusters": len(model.clusters),
        "n_images": len(labels),
        "agreement": agreement,  # share of the run's images nearest their own centroid
        "view_weights": weights,
        "input": {"max_pixels": config.input.max_pixels},
        "extraction": {
            "cache_dir": config.extraction.cache_dir,
            "batch_size": config.extraction.batch_size,
        },
    }
    log.debug(  # in model.json; the console keeps to the summary
        "clusters saved for reuse: %s space, %s distance, %.1f%% of the run's images nearest "
        "their own centroid",
        representation + (" (graph)" if graph else ""),
        model.metric,
        100 * agreement[model.metric],
    )
    return model


def save_run_model(
    run_dir: str | Path,
    features: Features,
    result: ClusteringResult,
    specs: Mapping[str, ViewSpec | None],
    config: RunConfig,
) -> bool:
    """Build and save the model of a run (the record stage). A model that cannot be built is
    a warning, not a failed run: the run's own record is complete without it; a write that
    fails (OSError) fails the record as any of its files would."""
    try:
        model = build_model(features, result, specs, config)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("the clusters were not saved for `rayclust predict`: %s", exc)
        return False
    model.save(run_dir)
    return True
