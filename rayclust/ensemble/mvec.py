"""MVEC as Guerin et al. ran it (paper 001): the per-view clustering, the time model and the
paper's scores, for ``ensemble.mode=paper`` and for every multi-view run's record.

- ``PAPER_VIEW_ALGORITHM`` / ``paper_view_estimator``: each view clustered by scikit-learn's
  ``AgglomerativeClustering(n_clusters)`` with its defaults (ward linkage on euclidean
  distances, no connectivity graph: quadratic memory, for collections of thousands).
- ``time_model``: ``t = max_j (t1_j + t2_j) + t3`` (Section 4.3, Figure 10), with ``t1_j``
  the extraction of view j, ``t2_j`` its clustering and ``t3`` the consensus, next to the
  wall time the stages actually took. rayclust extracts every view before clustering any
  (the extraction engines return once all views are done), so the measured wall time is
  ``max_j t1_j + (per-view clustering stage) + t3``, at least the model's.
- ``paper_scores``: MIX = (NMI + PUR + ACC) / 3 per result row (AVG(SD) over seeds) and
  FM_Ck per true class (Eqs. 6-8) of each row's written labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayclust import metrics

PAPER_VIEW_ALGORITHM = "sklearn_agglomerative"


def paper_view_estimator(n_clusters: int) -> Any:
    """scikit-learn's default agglomerative clustering, as the paper clusters each view."""
    from sklearn.cluster import AgglomerativeClustering

    if not isinstance(n_clusters, int):
        raise ValueError(
            f"n_clusters={n_clusters!r}: MVEC's paper mode clusters each view with "
            "AgglomerativeClustering, which needs an integer number of clusters"
        )
    return AgglomerativeClustering(n_clusters=n_clusters)


def time_model(
    t1: Mapping[str, float],
    t2: Mapping[str, float],
    t3: float,
    wall: float | None = None,
    overlap: bool = False,
) -> dict[str, Any]:
    """The paper's parallel time ``max_j (t1_j + t2_j) + t3`` and, given, the measured wall.

    ``t1`` / ``t2``: seconds per view of extraction / clustering (views missing from ``t1``,
    e.g. features read from the store, count 0); ``t3``: seconds of the consensus.
    ``overlap``: each view was clustered as soon as it was extracted (the paper's scheme),
    not after every extraction ended.
    """
    per_view = {view: float(t1.get(view, 0.0)) + float(t2[view]) for view in t2}
    if not per_view:
        raise ValueError("time_model needs at least one view in t2")
    slowest = max(per_view, key=per_view.__getitem__)
    record: dict[str, Any] = {
        "t1_s": {view: float(t1.get(view, 0.0)) for view in t2},
        "t2_s": {view: float(seconds) for view, seconds in t2.items()},
        "t3_s": float(t3),
        "slowest_view": slowest,
        "model_s": per_view[slowest] + float(t3),
        # every extraction ending before any view is clustered
        "sequential_stages_s": max(t1.get(v, 0.0) for v in t2) + max(t2.values()) + float(t3),
        "overlap": overlap,
    }
    if wall is not None:
        record["wall_s"] = float(wall)
        record["wall_over_model"] = float(wall) / record["model_s"] if record["model_s"] else None
    return record


def paper_scores(
    rows: Mapping[str, Mapping[str, Any]],
    labels_true: np.ndarray,
    label_names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per result row: MIX AVG(SD) over its seeds and FM_Ck of its written labels.

    ``rows``: ``ClusteringResult.rows`` (each with ``per_seed`` scores and ``labels``).
    ``label_names``: class names indexed by the integer labels (keys of ``fm_class``).
    """
    scores: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        mixes = [metrics.mix_score(s) for s in row["per_seed"] if "nmi" in s]
        if not mixes:
            continue
        per_class = metrics.class_fowlkes_mallows(labels_true, row["labels"])
        if label_names is not None:
            per_class = {label_names[int(k)]: v for k, v in per_class.items()}
        scores[name] = {
            "mix": {"mean": float(np.mean(mixes)), "std": float(np.std(mixes)), "n": len(mixes)},
            "fm_class": per_class,
        }
    return scores
