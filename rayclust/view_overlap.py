"""MVEC's scheme inside a run: each view clustered as soon as its features are stored, and
the paper's time model (t1 extraction, t2 clustering per view, t3 consensus) and scores.

The pipeline hands :class:`EarlyViews` to the extraction as its ``on_view_done`` hook and
records :func:`mvec_record` in metrics.json for multi-view runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rayclust.clustering import (
    ClusteringResult,
    Features,
    ViewClustering,
    assemble_features,
    cluster_view,
)

if TYPE_CHECKING:
    from rayclust.config import RunConfig
    from rayclust.images import ImageSet
    from rayclust.views import ExtractionResult


class EarlyViews:
    """MVEC's scheme: each view clustered (:func:`cluster_view`, in a thread) as soon as its
    features are stored, while other views are still being extracted.

    A view is clustered on the images it could decode; a view whose rows or clustering job
    turn out to differ from the run's (another view failed to decode an image, so the
    labels or the number of clusters changed) is clustered again by the stage, so the
    result always equals clustering after the extraction.
    """

    def __init__(self, config: RunConfig, image_set: ImageSet, n_clusters: int | str) -> None:
        self.config, self.image_set, self.n_clusters = config, image_set, n_clusters
        self.origin = time.perf_counter()  # every recorded time is seconds after this
        self.pool = ThreadPoolExecutor(max_workers=len(config.views), thread_name_prefix="view")
        self.futures: dict[str, Future[ViewClustering]] = {}
        self.extracted: dict[str, tuple[float, float]] = {}  # view -> (start, end)

    def on_view_done(self, view: str, result: ExtractionResult) -> None:
        end = time.perf_counter() - self.origin
        self.extracted[view] = (max(0.0, end - result.seconds), end)
        if view in self.config.views and not result.n_remaining:
            ids = self.image_set.without(result.failed).image_ids
            self.futures[view] = self.pool.submit(
                cluster_view, self.config, view, result.spec_key, ids, self.n_clusters
            )

    def collect(
        self,
        ids: list[str],
        view_keys: Mapping[str, str],
        labels: list[str | None],
        n_clusters: int | str,
    ) -> tuple[Features | None, dict[str, ViewClustering]]:
        """The views clustered early that match the run (its usable ``ids``, its k); their
        Features when all do."""
        done = {view: future.result() for view, future in self.futures.items()}
        usable = {
            view: early
            for view, early in done.items()
            if early.ids == ids and early.job.n_clusters == n_clusters
        }
        if set(usable) != set(self.config.views):
            return None, usable
        features = assemble_features(
            {view: usable[view].feats for view in self.config.views},
            {view: early.pca for view, early in usable.items() if early.pca is not None},
            ids,
            dict(view_keys),
            labels,
        )
        return features, usable

    def spans(self, early: dict[str, ViewClustering]) -> dict[str, dict[str, float | None]]:
        """Per view: extraction (t1) and clustering (t2) start and end, in seconds."""
        return {
            view: {
                "t1_start": start,
                "t1_end": end,
                "t2_start": early[view].started - self.origin if view in early else None,
                "t2_end": early[view].ended - self.origin if view in early else None,
            }
            for view, (start, end) in self.extracted.items()
            if view in self.config.views
        }

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def mvec_record(
    clustering: ClusteringResult,
    features: Features,
    extracted: Mapping[str, ExtractionResult],
    timings: dict[str, float],
    overlap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MVEC's time model (t1 extraction, t2 clustering per view, t3 consensus) against the
    measured wall time, and the paper's scores (MIX, FM_Ck) where labels are known.

    ``overlap``: per-view spans of a run that clustered each view as soon as it was
    extracted (:class:`EarlyViews`); its wall is extraction start to the last view clustered
    (or extracted), plus the consensus."""
    from rayclust.ensemble import paper_scores, time_model

    t = clustering.timings
    t3 = sum(t["consensus_s"].values())
    t2 = dict(t["view_fit_s"])
    if overlap is None:
        wall = timings["extract_s"] + t["views_stage_s"] + t3
    else:
        t2 |= {v: s["t2_end"] - s["t2_start"] for v, s in overlap.items() if s["t2_end"]}
        ends = [s["t2_end"] or 0.0 for s in overlap.values()] + [timings["extract_s"]]
        wall = max(ends) + t3
    record: dict[str, Any] = {
        "mvec_time": time_model(
            {view: r.seconds for view, r in extracted.items()},
            t2,
            t3,
            wall=wall,
            overlap=overlap is not None,
        )
        | {
            "consensus_s": t["consensus_s"],
            "extract_stage_s": timings["extract_s"],
            "views_stage_s": t["views_stage_s"],  # per-view clustering after the extraction
        }
    }
    if overlap is not None:
        record["mvec_time"]["views"] = overlap
    if features.labels_true is not None:
        record["mvec_scores"] = paper_scores(
            clustering.rows, features.labels_true, features.label_names
        )
    return record
