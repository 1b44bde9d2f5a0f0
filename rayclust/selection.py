"""The label-free choice of one run: which representation, which algorithm, and (with
``--clusters auto``) how many clusters.

A user who runs ``rayclust cluster DIR --clusters K`` gets one answer. Which features and
which algorithm give the best answer depends on the collection (raw pixels beat ImageNet
features on rendered digits; spectral clustering beats K-means on most image collections but
not all), so the run tries a small grid and keeps the candidate with the best label-free
score (``clustering.select: auto``, the default for single-view runs):

- representations: every view of the run (the configured network plus the cheap extra views
  of ``clustering.select_views``, by default the raw-pixel view) and their concatenation;
- algorithms: ``clustering.select_algorithms`` (K-means, spectral, ward agglomerative);
- score: the modularity of the partition on the representation's kNN graph
  (:func:`rayclust.cluster.graph_modularity`; 10 cosine neighbours on the L2-normalised
  features reduced by PCA to 50 dimensions). Modularity is the share of kNN edges kept inside
  clusters minus the share expected from the cluster sizes alone, so it does not reward
  giant clusters, and every representation's graph has the same number of edges per image,
  which puts the scores of different representations on one scale.

With ``n_clusters="auto"`` one k is chosen for the run before the candidates are compared:
per representation, spectral partitions for every k of ``clustering.k_range`` are scored by
modularity; the representation whose curve peaks highest decides, and its k is the smallest
within ``clustering.k_tolerance`` of its peak (a parsimony rule: the curves are flat near
their top). Every curve is kept in the record.

Each candidate is fitted with every seed of the run and scored by its mean modularity over
the seeds: a seed-0 score alone let a K-means candidate win on one lucky restart and then
report its unlucky seeds (data/sample: seed 0 scored 0.645 against spectral's 0.644, its five
seeds averaged 0.631 and ARI 0.81 (0.06) against 0.84 (0.00)). The winner's partitions are
those fits, so choosing costs no extra fit of the winner. On more than
``clustering.select_max_samples`` images the candidates are fitted and scored on a seeded
sample of that many and the winner is then clustered on every row. :class:`Selection` is
plain data for ``metrics.json``: every candidate's scores and seconds, the winner, and why.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rayclust.cluster import KSelection
    from rayclust.config import RunConfig

log = logging.getLogger("rayclust")

SCORE_DIM = 50  # PCA dimensions of the space the kNN graphs (and spectral / ward) work in
CONCAT = "concat"


@dataclass
class Selection:
    """What the selection tried and what it kept (JSON-ready with :meth:`to_dict`)."""

    representation: str  # "view:<name>" or "concat"
    algorithm: str
    n_clusters: int
    score: float  # the winner's modularity
    why: str
    criterion: str = "knn_modularity"
    candidates: list[dict[str, Any]] = field(default_factory=list)
    k_selection: dict[str, Any] | None = None
    seconds: float = 0.0
    refine: dict[str, Any] | None = None  # with clustering.refine: scores before / after, kept

    @property
    def chosen(self) -> str:
        return f"{self.representation}/{self.algorithm}"

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, **asdict(self)}


def selection_applies(config: RunConfig) -> bool:
    """``clustering.select: auto`` on a single-view run; multi-view runs keep their MVEC rows,
    and the ray engine runs its one algorithm (it has no selection)."""
    return (
        config.clustering.select == "auto"
        and len(config.views) == 1
        and config.clustering.engine == "local"
    )


def run_views(config: RunConfig) -> list[str]:
    """The views a run extracts: ``views``, plus ``clustering.select_views`` when selecting."""
    views = list(config.views)
    if selection_applies(config):
        views += [v for v in config.clustering.select_views if v not in views]
    return views


# -- representations and their graphs -------------------------------------------------------


def representations(per_view: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every view alone (``view:<name>``) and, with several views, their concatenation."""
    from rayclust.clustering import combine_views

    reps = {f"view:{name}": np.asarray(x, dtype=np.float32) for name, x in per_view.items()}
    if len(per_view) > 1:
        reps[CONCAT] = combine_views(per_view)
    return reps


def score_space(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """L2-normalised rows reduced by PCA to ``SCORE_DIM`` (unchanged when already smaller)."""
    from rayclust.clustering import l2_normalize, reduce_dim

    return reduce_dim(l2_normalize(np.asarray(x, dtype=np.float32)), SCORE_DIM, seed)


def knn_graph(x: np.ndarray, n_neighbors: int = 10, backend: str = "auto") -> Any:
    """Symmetric 0/1 cosine kNN graph (scipy CSR) of the rows of ``x``."""
    from rayclust.cluster import kneighbors_graph

    n_neighbors = max(1, min(n_neighbors, len(x) - 1))
    graph = kneighbors_graph(x, n_neighbors, metric="cosine", backend=backend)
    graph = graph.maximum(graph.T)
    graph.data[:] = 1.0
    return graph.tocsr()


def clusters_reduced_space(algorithm: str) -> bool:
    """Whether ``algorithm`` clusters a representation's PCA space (:func:`score_space`), as
    the graph methods do; K-means clusters the representation itself."""
    return algorithm != "kmeans"


def fit_labels(
    algorithm: str, x_full: np.ndarray, x_reduced: np.ndarray, k: int, seed: int, job: Any
) -> np.ndarray:
    """One partition: K-means on the representation itself, graph methods on its PCA space."""
    return fit_partition(algorithm, x_full, x_reduced, k, seed, job)[0]


def fit_partition(
    algorithm: str, x_full: np.ndarray, x_reduced: np.ndarray, k: int, seed: int, job: Any
) -> tuple[np.ndarray, str]:
    """:func:`fit_labels` and the backend that ran it."""
    from rayclust.clustering import make_estimator

    job = replace(job, algorithm=algorithm, n_clusters=k)
    x = x_reduced if clusters_reduced_space(algorithm) else x_full
    estimator = make_estimator(job, seed)
    labels = np.asarray(estimator.fit_predict(x))
    return labels, getattr(estimator, "backend_", job.backend)


# -- the number of clusters -----------------------------------------------------------------


def choose_n_clusters(
    reduced: Mapping[str, np.ndarray],
    graphs: Mapping[str, Any],
    ks: Sequence[int],
    tolerance: float,
    job: Any,
) -> KSelection:
    """One k for the run from modularity-over-k curves of spectral partitions (see module)."""
    from rayclust.cluster import (
        DisconnectedGraphWarning,
        graph_modularity,
        parsimonious_selection,
    )

    curves: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        # Small k on a graph of more components than k: expected along a curve, not a problem.
        warnings.simplefilter("ignore", DisconnectedGraphWarning)
        for rep, x in reduced.items():
            valid = [k for k in ks if 2 <= k < len(x)]
            curves[rep] = [
                graph_modularity(graphs[rep], fit_labels("spectral", x, x, k, 0, job))
                for k in valid
            ]
    peaks = {rep: float(np.nanmax(c)) if c else -np.inf for rep, c in curves.items()}
    best_rep = max(peaks, key=lambda rep: peaks[rep])
    valid = [k for k in ks if 2 <= k < len(reduced[best_rep])]
    return parsimonious_selection(
        "knn_modularity",
        valid,
        curves[best_rep],
        tolerance=tolerance,
        details={
            "representation": best_rep,
            "algorithm": "spectral",
            "curves": {
                rep: dict(zip(map(str, valid), c, strict=False)) for rep, c in curves.items()
            },
        },
    )


# -- the candidates -------------------------------------------------------------------------


def select(
    per_view: Mapping[str, np.ndarray],
    n_clusters: int | str,
    config: RunConfig,
    job: Any,
) -> tuple[Selection, dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Try every representation x algorithm over the run's seeds and keep the best by mean
    kNN modularity.

    Returns the record; per representation, the features its algorithm clusters (``rep`` and
    ``rep#reduced``); and, when every row was scored (no sample), each candidate's fits
    (``partitions`` per seed, ``backend``, ``seconds``) under ``"<rep>/<algorithm>"``
    (empty otherwise).
    """
    from rayclust.cluster import graph_modularity

    start = time.perf_counter()
    cfg = config.clustering
    reps = representations(per_view)
    reduced = {rep: score_space(x) for rep, x in reps.items()}
    # Large collections: candidates are fitted and scored on a seeded sample of the rows.
    n_rows = len(next(iter(reps.values())))
    rows = np.arange(n_rows)
    if n_rows > cfg.select_max_samples:
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(n_rows, cfg.select_max_samples, replace=False))
    sample = {rep: x[rows] for rep, x in reps.items()}
    sample_reduced = {rep: x[rows] for rep, x in reduced.items()}
    graphs = {rep: knn_graph(x, cfg.n_neighbors, cfg.backend) for rep, x in sample_reduced.items()}

    k_record = None
    if n_clusters == "auto":
        ks = range(2, cfg.k_max + 1)
        k_sel = choose_n_clusters(sample_reduced, graphs, ks, cfg.k_tolerance, job)
        k_record = k_sel.to_dict()
        k = k_sel.chosen
        log.debug("auto k: %d (%s)", k, k_sel.details.get("representation"))
    else:
        k = int(n_clusters)

    candidates, partitions = [], {}
    seeds = range(max(1, job.seeds))
    for rep in reps:
        for algorithm in cfg.select_algorithms:
            t0 = time.perf_counter()
            fits, backends = zip(
                *(fit_partition(algorithm, sample[rep], sample_reduced[rep], k, s, job)
                  for s in seeds),
                strict=True,
            )  # fmt: skip
            per_seed = [graph_modularity(graphs[rep], labels) for labels in fits]
            candidates.append(
                {
                    "representation": rep,
                    "algorithm": algorithm,
                    "knn_modularity": mean_score(per_seed),
                    "knn_modularity_per_seed": per_seed,
                    "n_found": int(len(np.unique(fits[0]))),
                    "seconds": time.perf_counter() - t0,
                }
            )
            partitions[f"{rep}/{algorithm}"] = {
                "partitions": list(fits), "backend": backends[-1],
                "seconds": candidates[-1]["seconds"],
            }  # fmt: skip
    best = best_candidate(candidates)
    ranked = sorted(candidates, key=lambda c: -c["knn_modularity"])
    runner_up = ranked[1] if len(ranked) > 1 else None
    why = (
        f"highest kNN-graph modularity {best['knn_modularity']:.3f} (mean of {len(seeds)} "
        f"seeds) of {len(candidates)} candidates at k={k}"
        + (" (chosen by the modularity curve)" if k_record is not None else "")
        + (f" (scored on {len(rows)} of {n_rows} images)" if len(rows) < n_rows else "")
        + (
            f"; next: {runner_up['representation']}/{runner_up['algorithm']} "
            f"{runner_up['knn_modularity']:.3f}"
            if runner_up
            else ""
        )
    )
    selection = Selection(
        representation=best["representation"],
        algorithm=best["algorithm"],
        n_clusters=k,
        score=best["knn_modularity"],
        why=why,
        candidates=candidates,
        k_selection=k_record,
        seconds=time.perf_counter() - start,
    )
    log.info("selected %s: %s", selection.chosen, why)
    features = {rep: reps[rep] for rep in reps} | {f"{r}#reduced": x for r, x in reduced.items()}
    return selection, features, (partitions if len(rows) == n_rows else {})


def mean_score(per_seed: Sequence[float]) -> float:
    """The mean of a candidate's per-seed scores; NaN (a degenerate partition) where any is."""
    values = np.asarray(per_seed, dtype=float)
    return float(values.mean()) if len(values) and np.isfinite(values).all() else float("nan")


def best_candidate(candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The candidate of highest ``knn_modularity``; the first listed wins a tie (the
    configured view before the extra ones, K-means before the graph methods)."""
    scores = np.array([c["knn_modularity"] for c in candidates], dtype=float)
    if not np.isfinite(scores).any():
        raise ValueError("no candidate partition could be scored (every kNN modularity is NaN)")
    return candidates[int(np.nanargmax(scores))]


def cluster_selected(features: Any, config: RunConfig, n_clusters: int | str) -> Any:
    """The clustering stage with selection: the winner over every seed is the primary row,
    the configured view's own K-means (as without selection) is kept next to it."""
    from rayclust.clustering import ClusteringResult, ClusterJob, score_partitions

    job = ClusterJob.from_config(config, n_clusters)
    selection, reps, fitted = select(features.per_view, n_clusters, config, job)
    rep, algorithm = selection.representation, selection.algorithm
    x = reps[f"{rep}#reduced"] if clusters_reduced_space(algorithm) else reps[rep]
    winner_job = replace(job, algorithm=algorithm, n_clusters=selection.n_clusters)
    winner = seeds_or_fit(fitted.get(f"{rep}/{algorithm}"), x, winner_job)
    rows = {"selected": score_partitions(winner["partitions"], winner["internal"],
                                         features.labels_true)}  # fmt: skip
    primary = "selected"
    if config.clustering.refine:
        primary = refine_rows(rows, reps[f"{rep}#reduced"], winner["partitions"], selection,
                              config, features.labels_true)  # fmt: skip
    default_view = f"view:{config.views[0]}"
    if default_view in reps and (rep, algorithm) != (default_view, job.algorithm):
        base_job = replace(job, n_clusters=selection.n_clusters)
        base = seeds_or_fit(fitted.get(f"{default_view}/{job.algorithm}"), reps[default_view],
                            base_job)  # fmt: skip
        rows[default_view] = score_partitions(
            base["partitions"], base["internal"], features.labels_true
        )
    return ClusteringResult(
        rows=rows,
        primary=primary,
        labels=rows[primary]["labels"],
        algorithm=algorithm,
        backend=winner["backend"],
        selection=selection.to_dict(),
    )


def seeds_or_fit(fits: dict[str, Any] | None, x: np.ndarray, job: Any) -> dict[str, Any]:
    """``cluster_seeds``' record from the selection's own per-seed fits of this candidate
    (scored on every row), else from new fits."""
    from rayclust import metrics
    from rayclust.clustering import cluster_seeds

    if fits is None or len(fits["partitions"]) != job.seeds:
        return cluster_seeds(x, job)
    internal = [
        metrics.internal_scores(x, labels, sample_size=job.silhouette_sample, random_state=seed)
        for seed, labels in enumerate(fits["partitions"])
    ]
    return {"partitions": fits["partitions"], "internal": internal, "backend": fits["backend"],
            "seconds": fits["seconds"]}  # fmt: skip


def refine_rows(
    rows: dict[str, Any],
    x: np.ndarray,
    partitions: Sequence[np.ndarray],
    selection: Selection,
    config: RunConfig,
    labels_true: np.ndarray | None,
) -> str:
    """``clustering.refine``: a SCAN head per seed (rayclust.refine) on the winner's PCA space;
    the ``refined`` row is added and becomes the answer only when its mean kNN-graph
    modularity beats the selected partitions'. Returns the primary row's name."""
    from rayclust import metrics
    from rayclust.clustering import score_partitions
    from rayclust.refine import refine

    cfg = config.clustering
    graph = knn_graph(x, cfg.n_neighbors, cfg.backend)
    results = [
        refine(x, labels, graph, selection.n_clusters, seed)
        for seed, labels in enumerate(partitions)
    ]
    refined = [r.labels for r in results]
    internal = [
        metrics.internal_scores(x, labels, random_state=seed) for seed, labels in enumerate(refined)
    ]
    rows["refined"] = score_partitions(refined, internal, labels_true)
    before = float(np.mean([r.score_before for r in results]))
    after = float(np.mean([r.score_after for r in results]))
    kept = after > before
    selection.refine = {"kept": kept, "knn_modularity_before": before,
                        "knn_modularity_after": after}  # fmt: skip
    log.info("refinement %s: modularity %.3f -> %.3f", "kept" if kept else "dropped", before, after)
    return "refined" if kept else "selected"
