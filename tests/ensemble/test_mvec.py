"""MVEC as the paper ran it: FM_i / FM_Ck / MIX (paper 001, Eqs. 6-8) and the time model on
hand-worked cases, and ``ensemble.mode=paper`` (equal weights, scikit-learn's default
agglomerative per view) on a tiny hand-built collection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering

from rayclust import metrics
from rayclust.clustering import ClusterJob, cluster_features, prepare_features, view_weights
from rayclust.config import ClusteringConfig, ConfigError, EnsembleConfig, RunConfig
from rayclust.ensemble import (
    PAPER_VIEW_ALGORITHM,
    paper_scores,
    paper_view_estimator,
    time_model,
)

# classes    0 0 0 1 1 1
# clusters   0 0 1 1 1 2
TRUE = [0, 0, 0, 1, 1, 1]
PRED = [0, 0, 1, 1, 1, 2]


def test_pointwise_fowlkes_mallows_by_hand():
    # sample 0: 1 other in its cluster, 2 in its class, 1 in both -> 1/sqrt(1*2)
    # sample 2: its cluster {2,3,4} holds no other of class 0 -> 0
    # sample 3: cluster {2,3,4}, class {3,4,5}: TP 1 of 2 and 2 -> 1/2
    # sample 5: alone in cluster 2 -> 0
    fm = metrics.pointwise_fowlkes_mallows(TRUE, PRED)
    expected = [1 / np.sqrt(2), 1 / np.sqrt(2), 0.0, 0.5, 0.5, 0.0]
    np.testing.assert_allclose(fm, expected)


def test_fowlkes_mallows_per_class_and_mix():
    per_class = metrics.class_fowlkes_mallows(np.array(TRUE), np.array(PRED))
    assert per_class == pytest.approx({"0": np.sqrt(2) / 3, "1": 1 / 3})
    # a perfect partition: every FM_i is 1 (labels need not match)
    assert metrics.class_fowlkes_mallows([5, 5, 7, 7], [1, 1, 0, 0]) == {"5": 1.0, "7": 1.0}
    assert metrics.mix_score({"nmi": 0.3, "pur": 0.6, "acc": 0.9}) == pytest.approx(0.6)


def test_time_model_by_hand():
    record = time_model({"a": 10.0, "b": 4.0}, {"a": 1.0, "b": 5.0}, 2.0, wall=15.0)
    # max(10 + 1, 4 + 5) + 2 = 13; what runs now: max t1 + max t2 + t3 = 10 + 5 + 2
    assert record["model_s"] == 13.0 and record["slowest_view"] == "a"
    assert record["sequential_stages_s"] == 17.0
    assert record["wall_over_model"] == pytest.approx(15 / 13)
    # a view read from the store was not extracted in this run: t1 = 0
    assert time_model({}, {"a": 1.0, "b": 3.0}, 0.5)["model_s"] == 3.5


def test_paper_view_estimator_is_scikit_learns_default():
    estimator = paper_view_estimator(3)
    assert isinstance(estimator, AgglomerativeClustering)
    assert estimator.get_params() == AgglomerativeClustering(n_clusters=3).get_params()
    with pytest.raises(ValueError, match="integer number of clusters"):
        paper_view_estimator("auto")


def test_equal_weighting_ignores_quality():
    quality = {"good": 0.4, "weak": 0.05}
    assert view_weights(quality, 0.5) == {"good": 1.0, "weak": 0.0}
    assert view_weights(quality, 0.5, "equal") == {"good": 1.0, "weak": 1.0}


def test_ensemble_mode_config():
    assert EnsembleConfig().resolved_weighting == "silhouette"
    assert EnsembleConfig(mode="paper").resolved_weighting == "equal"
    assert EnsembleConfig(mode="paper", weighting="silhouette").resolved_weighting == "silhouette"
    with pytest.raises(ConfigError, match="ensemble.mode"):
        EnsembleConfig(mode="papers")


def _paper_config(**ensemble) -> RunConfig:
    return RunConfig(
        clustering=ClusteringConfig(algorithm="kmeans", n_clusters=2, seeds=1, normalize=False),
        ensemble=EnsembleConfig(
            methods=["coassociation"], primary="consensus:coassociation", **ensemble
        ),
    )


def test_paper_mode_on_a_hand_built_collection():
    # Two views of 6 images. View "a" separates {0,1,2} from {3,4,5}; view "b" puts image 2
    # with the second group. Ward (scikit-learn's default) gives exactly those partitions.
    # Equal weights: the co-association of images 2 and 3 is 1/2, 2-with-{0,1} also 1/2.
    a = np.array([[0, 0], [0, 0.1], [0.1, 0], [5, 5], [5, 5.1], [5.1, 5]], dtype=np.float32)
    b = np.array([[0, 0], [0, 0.1], [5, 5.2], [5, 5], [5, 5.1], [5.1, 5]], dtype=np.float32)
    y = ["x", "x", "x", "y", "y", "y"]
    config = _paper_config(mode="paper")
    assert ClusterJob.from_config(config, 2).algorithm == PAPER_VIEW_ALGORITHM
    features = prepare_features(
        {"a": a, "b": b}, config.clustering, [f"i{i}" for i in range(6)], {"a": "ka", "b": "kb"}, y
    )
    result = cluster_features(features, config, 2, parallel=False)
    assert result.weights == {"a": 1.0, "b": 1.0}
    assert result.rows["view:a"]["summary"]["acc"]["mean"] == 1.0
    assert result.rows["view:b"]["summary"]["acc"]["mean"] == pytest.approx(5 / 6)
    assert set(result.timings["view_fit_s"]) == {"a", "b"}
    assert set(result.timings["consensus_s"]) == {"coassociation"}
    scores = paper_scores(result.rows, features.labels_true, features.label_names)
    # view b: classes x = {0,1,2}, y = {3,4,5}; clusters {0,1}, {2,3,4,5}
    # FM_i: 0,1 -> 1/sqrt(1*2); 2 -> 0; 3,4,5 -> 2/sqrt(3*2)
    assert scores["view:b"]["fm_class"] == pytest.approx({"x": np.sqrt(2) / 3, "y": 2 / np.sqrt(6)})
    mix_b = metrics.mix_score(result.rows["view:b"]["per_seed"][0])
    assert scores["view:b"]["mix"]["mean"] == pytest.approx(mix_b)
    assert scores["view:a"]["mix"]["mean"] == pytest.approx(1.0)
