import itertools
import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_blobs

from rayclust.metrics import (
    EXTERNAL_METRICS,
    INTERNAL_METRICS,
    clustering_accuracy,
    external_scores,
    format_avg_sd,
    format_summary,
    internal_scores,
    purity,
    summarize,
)


def brute_force_accuracy(labels_true, labels_pred) -> float:
    """Plain reference: try every injective cluster -> class map (tiny k only)."""
    classes = np.unique(labels_true)
    clusters = np.unique(labels_pred)
    best = 0
    # Pad with None so surplus clusters (or classes) can stay unmatched.
    targets = list(classes) + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, perm, strict=True))
        hits = sum(mapping[p] == t for t, p in zip(labels_true, labels_pred, strict=True))
        best = max(best, hits)
    return best / len(labels_true)


def reference_purity(labels_true, labels_pred) -> float:
    total = 0
    for cluster in np.unique(labels_pred):
        members = labels_true[labels_pred == cluster]
        total += np.bincount(members).max()
    return total / len(labels_true)


def test_six_point_example_computed_by_hand():
    # classes:  0 0 0 1 1 1
    # clusters: 0 0 1 1 2 2
    # contingency (class x cluster): [[2, 1, 0], [0, 1, 2]]
    # ACC: match cluster0->class0 (2 hits), cluster2->class1 (2 hits), cluster1 unmatched
    #      -> 4/6.
    # PUR: majority counts per cluster 2 + 1 + 2 = 5 -> 5/6.
    # ARI: sum_ij C(n_ij,2) = 1+0+0+1 = 2; rows C(3,2)*2 = 6; cols C(2,2)*3 = 3; C(6,2) = 15;
    #      expected = 6*3/15 = 1.2; max = (6+3)/2 = 4.5 -> (2-1.2)/(4.5-1.2) = 8/33.
    # FMI: TP = 2 same-cluster-same-class pairs, 3 same-cluster pairs, 6 same-class pairs
    #      -> 2/sqrt(3*6).
    labels_true = np.array([0, 0, 0, 1, 1, 1])
    labels_pred = np.array([0, 0, 1, 1, 2, 2])
    scores = external_scores(labels_true, labels_pred)
    assert scores["acc"] == pytest.approx(4 / 6)
    assert scores["pur"] == pytest.approx(5 / 6)
    assert scores["ari"] == pytest.approx(8 / 33)
    assert scores["fmi"] == pytest.approx(2 / math.sqrt(18))
    assert clustering_accuracy(labels_true, labels_pred) == pytest.approx(4 / 6)
    assert purity(labels_true, labels_pred) == pytest.approx(5 / 6)


def test_partition_against_itself_scores_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=300)
    scores = external_scores(labels, labels)
    assert set(scores) == set(EXTERNAL_METRICS)
    for name, value in scores.items():
        assert value == pytest.approx(1.0), name


def test_relabelling_clusters_changes_nothing():
    rng = np.random.default_rng(1)
    labels_true = rng.integers(0, 5, size=400)
    # A noisy prediction: 70% correct, the rest random.
    labels_pred = np.where(rng.random(400) < 0.7, labels_true, rng.integers(0, 6, size=400))
    renamed = np.array([40, -1, 7, 13, 2, 99])[labels_pred]  # arbitrary new names, -1 included
    original = external_scores(labels_true, labels_pred)
    relabelled = external_scores(labels_true, renamed)
    for name in EXTERNAL_METRICS:
        assert relabelled[name] == pytest.approx(original[name]), name
    assert original["acc"] < 1.0


def test_random_partitions_score_near_zero_ari_ami():
    rng = np.random.default_rng(2)
    labels_true = rng.integers(0, 10, size=5000)
    labels_pred = rng.integers(0, 10, size=5000)
    scores = external_scores(labels_true, labels_pred)
    assert abs(scores["ari"]) < 0.01
    assert abs(scores["ami"]) < 0.01
    # ACC of a random assignment is near 1/k plus the matching's optimism, far below 1.
    assert 0.1 <= scores["acc"] < 0.15


@pytest.mark.parametrize("n_clusters", [2, 3, 4, 5])
def test_accuracy_and_purity_match_plain_references_with_unequal_counts(n_clusters):
    rng = np.random.default_rng(n_clusters)
    labels_true = rng.integers(0, 3, size=60)
    labels_pred = rng.integers(0, n_clusters, size=60)
    assert clustering_accuracy(labels_true, labels_pred) == pytest.approx(
        brute_force_accuracy(labels_true, labels_pred)
    )
    assert purity(labels_true, labels_pred) == pytest.approx(
        reference_purity(labels_true, labels_pred)
    )


def test_scores_agree_with_sklearn_where_it_has_them():
    rng = np.random.default_rng(3)
    labels_true = rng.integers(0, 8, size=1000)
    labels_pred = np.where(rng.random(1000) < 0.6, labels_true, rng.integers(0, 12, size=1000))
    scores = external_scores(labels_true, labels_pred)
    assert scores["nmi"] == pytest.approx(
        skm.normalized_mutual_info_score(labels_true, labels_pred)
    )
    assert scores["ami"] == pytest.approx(skm.adjusted_mutual_info_score(labels_true, labels_pred))
    assert scores["ari"] == pytest.approx(skm.adjusted_rand_score(labels_true, labels_pred))
    assert scores["fmi"] == pytest.approx(skm.fowlkes_mallows_score(labels_true, labels_pred))
    # Purity is never below accuracy: the matching is a restricted majority vote.
    assert scores["pur"] >= scores["acc"]


def test_external_scores_reject_mismatched_lengths():
    with pytest.raises(ValueError, match=r"len\(labels_true\)=3 should equal len\(labels_pred\)=2"):
        external_scores([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        external_scores([], [])


def test_internal_scores_separate_good_from_random_partitions():
    X, y = make_blobs(n_samples=600, centers=4, n_features=8, random_state=42)
    good = internal_scores(X, y, sample_size=None, metric="euclidean")
    assert set(good) == set(INTERNAL_METRICS)
    assert good["silhouette"] == pytest.approx(skm.silhouette_score(X, y))
    assert good["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X, y))
    assert good["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X, y))
    shuffled = np.random.default_rng(0).permutation(y)
    bad = internal_scores(X, shuffled, sample_size=None, metric="euclidean")
    assert good["silhouette"] > 0.5 > bad["silhouette"]
    assert good["calinski_harabasz"] > 10 * bad["calinski_harabasz"]
    assert good["davies_bouldin"] < bad["davies_bouldin"]


def test_internal_scores_sample_is_seeded_and_close_to_full():
    X, y = make_blobs(n_samples=2000, centers=5, n_features=16, random_state=42)
    full = internal_scores(X, y, sample_size=None)
    a = internal_scores(X, y, sample_size=500, random_state=7)
    b = internal_scores(X, y, sample_size=500, random_state=7)
    assert a == b
    assert a["silhouette"] == pytest.approx(full["silhouette"], abs=0.05)
    cosine = skm.silhouette_score(X, y, metric="cosine")
    assert full["silhouette"] == pytest.approx(cosine)


def test_internal_scores_single_cluster_is_nan_not_an_error():
    X, _ = make_blobs(n_samples=50, centers=2, random_state=0)
    scores = internal_scores(X, np.zeros(50, dtype=int))
    assert all(math.isnan(v) for v in scores.values())
    # Two clusters overall, but a 2-row sample may draw only one of them.
    labels = np.zeros(50, dtype=int)
    labels[0] = 1
    sampled = internal_scores(X, labels, sample_size=2, random_state=3)
    assert math.isnan(sampled["silhouette"])
    assert not math.isnan(sampled["calinski_harabasz"])


def test_internal_scores_reject_bad_arguments():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"X.shape\[0\]=5"):
        internal_scores(X, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="metric='manhattan'"):
        internal_scores(X, np.arange(5) % 2, metric="manhattan")


def test_summarize_is_population_std_and_skips_nan():
    runs = [
        {"acc": 0.8, "nmi": 0.5, "silhouette": float("nan")},
        {"acc": 0.9, "nmi": 0.7, "silhouette": 0.3},
        {"acc": 1.0, "nmi": 0.6, "silhouette": 0.5},
    ]
    summary = summarize(runs)
    assert summary["acc"]["mean"] == pytest.approx(0.9)
    # Population SD of (0.8, 0.9, 1.0): sqrt((0.01 + 0 + 0.01) / 3).
    assert summary["acc"]["std"] == pytest.approx(math.sqrt(0.02 / 3))
    assert summary["silhouette"] == {"mean": pytest.approx(0.4), "std": pytest.approx(0.1), "n": 2}
    assert summarize([{"acc": 0.5}])["acc"]["std"] == 0.0
    with pytest.raises(ValueError, match="no score dicts"):
        summarize([])


def test_format_avg_sd_like_the_papers():
    assert format_avg_sd(0.81234, 0.0127) == "0.812 (0.013)"
    assert format_avg_sd(0.5, 0.0, digits=2) == "0.50 (0.00)"
    summary = summarize([{"acc": 0.8, "nmi": 0.4}, {"acc": 0.9, "nmi": 0.6}])
    assert format_summary(summary, ["nmi", "acc"]) == {
        "nmi": "0.500 (0.100)",
        "acc": "0.850 (0.050)",
    }
    with pytest.raises(KeyError, match=r"\['ari'\] not in summary"):
        format_summary(summary, ["ari"])
