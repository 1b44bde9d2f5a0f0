import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from rayclust.ensemble import (
    BipartiteConsensus,
    CoAssociationConsensus,
    ConsensusTooLargeError,
    ConsensusWarning,
    co_association_matrix,
    coassociation_memory_bytes,
    create_consensus,
    list_consensus,
)

METHODS = ["bipartite", "coassociation"]


def noisy_copies(truth, n_partitions, keep, n_labels, rng, missing=0.0):
    """Partitions that keep each true label with probability `keep`, else a random label;
    every copy gets its own label names, and a share `missing` of entries becomes -1."""
    partitions = []
    for _ in range(n_partitions):
        labels = np.where(
            rng.random(truth.size) < keep, truth, rng.integers(0, n_labels, truth.size)
        )
        labels = rng.permutation(n_labels)[labels] * 3 + 5  # arbitrary, non-contiguous names
        labels[rng.random(truth.size) < missing] = -1
        partitions.append(labels)
    return partitions


@pytest.fixture
def truth():
    return np.random.default_rng(0).integers(0, 6, size=600)


def test_registry_lists_and_creates_with_close_match_errors():
    assert list_consensus() == ["bipartite", "coassociation"]
    assert list_consensus("co*") == ["coassociation"]
    estimator = create_consensus("bipartite", n_clusters=4, random_state=3)
    assert isinstance(estimator, BipartiteConsensus)
    assert estimator.get_params()["random_state"] == 3
    with pytest.raises(
        ValueError, match=r"unknown consensus method 'bipartit'; did you mean 'bipartite'\?"
    ):
        create_consensus("bipartit")
    with pytest.raises(ValueError, match=r"known: bipartite, coassociation"):
        create_consensus("mvec")


@pytest.mark.parametrize("method", METHODS)
def test_agreeing_partitions_give_that_partition_back(method, truth):
    rng = np.random.default_rng(1)
    partitions = noisy_copies(truth, 5, keep=1.0, n_labels=6, rng=rng)
    estimator = create_consensus(method, n_clusters=6)
    assert estimator.fit(partitions) is estimator
    assert adjusted_rand_score(truth, estimator.labels_) == 1.0
    assert estimator.n_partitions_ == 5


@pytest.mark.parametrize("method", METHODS)
def test_consensus_of_noisy_copies_beats_the_average_partition(method, truth):
    rng = np.random.default_rng(2)
    partitions = noisy_copies(truth, 8, keep=0.6, n_labels=6, rng=rng)
    single = np.mean([adjusted_rand_score(truth, p) for p in partitions])
    consensus = create_consensus(method, n_clusters=6).fit_predict(partitions)
    assert single < 0.45
    assert adjusted_rand_score(truth, consensus) > single + 0.3


@pytest.mark.parametrize("method", METHODS)
def test_missing_entries_are_ignored_and_uncovered_samples_get_minus_one(method, truth):
    rng = np.random.default_rng(3)
    partitions = noisy_copies(truth, 6, keep=0.85, n_labels=6, rng=rng, missing=0.25)
    for partition in partitions:
        partition[:4] = -1  # the first four samples have no label anywhere
    uncovered = np.all(np.stack(partitions) == -1, axis=0)  # those, and any unlucky others
    with pytest.warns(ConsensusWarning, match=f"{uncovered.sum()} of 600 samples have no label"):
        labels = create_consensus(method, n_clusters=6).fit_predict(partitions)
    np.testing.assert_array_equal(labels == -1, uncovered)
    assert adjusted_rand_score(truth[~uncovered], labels[~uncovered]) > 0.85


def test_co_association_matrix_by_hand():
    # Three partitions of four samples, -1 = missing:
    #   p0: a a b b      p1: a b b -      p2: a a - a
    # (0,1): together in p0, p2; apart in p1          -> 2/3
    # (0,2): apart in p0, p1; p2 misses 2             -> 0
    # (0,3): apart in p0; p1 misses 3; together in p2 -> 1/2
    # (1,2): apart in p0; together in p1; p2 misses 2 -> 1/2
    # (2,3): together in p0 only partition with both  -> 1
    partitions = [np.array([0, 0, 1, 1]), np.array([0, 1, 1, -1]), np.array([0, 0, -1, 0])]
    expected = np.array(
        [
            [1, 2 / 3, 0, 1 / 2],
            [2 / 3, 1, 1 / 2, 1 / 2],
            [0, 1 / 2, 1, 1],
            [1 / 2, 1 / 2, 1, 1],
        ]
    )
    np.testing.assert_allclose(co_association_matrix(partitions), expected, rtol=1e-6)
    # Weighting p0 by 2: (0,1) -> (2 + 1) / 4, (0,3) -> 1 / 3.
    weighted = co_association_matrix(partitions, weights=[2, 1, 1])
    assert weighted[0, 1] == pytest.approx(3 / 4)
    assert weighted[0, 3] == pytest.approx(1 / 3)
    np.testing.assert_allclose(co_association_matrix(partitions, rows=slice(1, 3)), expected[1:3])


def test_coassociation_matches_sklearn_average_linkage_on_the_same_distances(truth):
    rng = np.random.default_rng(4)
    partitions = noisy_copies(truth[:200], 7, keep=0.7, n_labels=6, rng=rng)
    distances = 1.0 - co_association_matrix(partitions)
    reference = AgglomerativeClustering(n_clusters=6, metric="precomputed", linkage="average")
    expected = reference.fit_predict(distances)
    ours = CoAssociationConsensus(n_clusters=6).fit_predict(partitions)
    assert adjusted_rand_score(expected, ours) == 1.0


def test_coassociation_cut_gives_exactly_k_clusters_despite_tied_heights(truth):
    # Identical partitions: every distance is 0 or 1, so all merge heights tie.
    partitions = [truth, truth, truth]
    labels = CoAssociationConsensus(n_clusters=9).fit_predict(partitions)
    assert np.unique(labels).size == 9
    # Splitting only ever happens inside a true cluster.
    assert all(np.unique(truth[labels == c]).size == 1 for c in range(9))


def test_coassociation_refuses_sizes_it_cannot_hold(truth):
    partitions = [truth, truth]
    needed = coassociation_memory_bytes(600)
    estimator = CoAssociationConsensus(n_clusters=6, max_memory_bytes=needed - 1)
    with pytest.raises(ConsensusTooLargeError, match=r"n_samples=600 needs about .* GB") as info:
        estimator.fit(partitions)
    assert "BipartiteConsensus" in str(info.value)
    assert "max_memory_bytes" in str(info.value)
    CoAssociationConsensus(n_clusters=6, max_memory_bytes=needed).fit(partitions)
    # Without a cap, a million samples (8 TB) is refused before any allocation.
    with pytest.raises(MemoryError, match=r"n_samples=1000000 .*\(half the available memory\)"):
        CoAssociationConsensus(n_clusters=6).fit([np.zeros(1_000_000, dtype=np.int64)])


def test_both_methods_agree_on_small_data(truth):
    rng = np.random.default_rng(5)
    partitions = noisy_copies(truth, 6, keep=0.75, n_labels=6, rng=rng)
    bipartite = BipartiteConsensus(n_clusters=6).fit_predict(partitions)
    coassociation = CoAssociationConsensus(n_clusters=6).fit_predict(partitions)
    assert adjusted_rand_score(bipartite, coassociation) > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_weights_down_weight_weak_views(method, truth):
    # Four weak views agree with each other on a structure unrelated to the classes (think
    # colour instead of object); unweighted, their majority wins over the three good views.
    rng = np.random.default_rng(6)
    distractor = rng.integers(0, 6, truth.size)
    good = noisy_copies(truth, 3, keep=0.7, n_labels=6, rng=rng)
    weak = noisy_copies(distractor, 4, keep=0.8, n_labels=6, rng=rng)
    partitions = good + weak
    plain = create_consensus(method, n_clusters=6).fit_predict(partitions)
    weighted = create_consensus(method, n_clusters=6).fit_predict(
        partitions, weights=[1, 1, 1, 0.2, 0.2, 0.2, 0.2]
    )
    assert adjusted_rand_score(distractor, plain) > 0.8 > adjusted_rand_score(truth, plain) + 0.7
    assert (
        adjusted_rand_score(truth, weighted) > 0.6 > adjusted_rand_score(distractor, weighted) + 0.5
    )
    # Weight 0 is the same as leaving the partition out.
    dropped = create_consensus(method, n_clusters=6).fit_predict(
        partitions, weights=[1, 1, 1, 0, 0, 0, 0]
    )
    np.testing.assert_array_equal(dropped, create_consensus(method, n_clusters=6).fit_predict(good))


def test_bipartite_runs_kmeans_on_distinct_label_patterns_only(truth):
    rng = np.random.default_rng(7)
    partitions = noisy_copies(truth, 4, keep=0.9, n_labels=6, rng=rng)
    estimator = BipartiteConsensus(n_clusters=6).fit(partitions)
    patterns = {tuple(column) for column in np.stack(partitions).T}
    assert estimator.n_patterns_ == len(patterns) < truth.size
    assert adjusted_rand_score(truth, estimator.labels_) > 0.95


def test_bipartite_handles_tens_of_thousands_of_samples_quickly():
    rng = np.random.default_rng(8)
    truth = rng.integers(0, 20, size=50_000)
    partitions = noisy_copies(truth, 10, keep=0.7, n_labels=20, rng=rng)
    estimator = BipartiteConsensus(n_clusters=20, max_fit_samples=None)
    labels = estimator.fit_predict(partitions)
    assert adjusted_rand_score(truth, labels) > 0.95
    # Centroids fitted on a 2,000-sample draw, then every sample assigned: as good.
    sampled = estimator.set_params(max_fit_samples=2_000).fit_predict(partitions)
    assert np.all(sampled >= 0)
    assert adjusted_rand_score(truth, sampled) > 0.95
    with pytest.raises(ValueError, match="max_fit_samples=5 should be >= n_clusters=20"):
        estimator.set_params(max_fit_samples=5).fit(partitions)


@pytest.mark.parametrize("method", METHODS)
def test_estimators_clone_and_validate_inputs(method):
    estimator = create_consensus(method, n_clusters=3)
    assert clone(estimator).get_params() == estimator.get_params()
    with pytest.raises(ValueError, match=r"same length; got lengths \[4, 3\]"):
        estimator.fit([np.arange(4), np.arange(3)])
    with pytest.raises(ValueError, match=r"len\(weights\)=1 but n_partitions=2"):
        estimator.fit([np.arange(4), np.arange(4)], weights=[1.0])
    with pytest.raises(ValueError, match="weights are all 0"):
        estimator.fit([np.arange(4), np.arange(4)], weights=[0, 0])
    with pytest.raises(ValueError, match=r"n_samples=2 .* should be >= n_clusters=3"):
        estimator.fit([np.array([0, 1])])
    with pytest.raises(ValueError, match="non-integer labels"):
        estimator.fit([np.array([0.5, 1.0, 2.0, 0.0])])
    with pytest.raises(ValueError, match="partitions is empty"):
        estimator.fit([])


def test_coassociation_rejects_unknown_linkage(truth):
    with pytest.raises(ValueError, match="linkage='ward' is not one of average"):
        CoAssociationConsensus(n_clusters=3, linkage="ward").fit([truth])
