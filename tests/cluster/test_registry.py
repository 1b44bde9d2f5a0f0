"""The clustering-algorithm registry: every name fits real data through create_estimator,
unknown names fail with close matches, and n_clusters="auto" only where it is supported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from rayclust.cluster.registry import (
    ALGORITHMS,
    UnknownAlgorithmError,
    algorithm_info,
    check_algorithm,
    create_estimator,
    hierarchical_levels,
    list_algorithms,
)

# ARI on 400 digits (64 pixel features, 10 classes) measured over random_state 0, 1, 2:
# kmeans 0.56-0.61, spectral 0.77-0.78, agglomerative 0.61, hierarchical_kmeans 0.42-0.58.
# Each floor sits below the lowest of those, so a floor that fails means a real regression.
ARI_FLOORS = {
    "kmeans": 0.45,
    "spectral": 0.65,
    "agglomerative": 0.5,
    "hierarchical_kmeans": 0.3,
}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    rows = np.random.RandomState(0).choice(len(X), size=400, replace=False)
    return X[rows].astype(np.float32), y[rows]


def test_every_algorithm_has_a_floor():
    assert set(ARI_FLOORS) == set(ALGORITHMS)
    assert list_algorithms() == list(ALGORITHMS)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_fits_digits(name, digits):
    X, y = digits
    estimator = create_estimator(name, 10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a disconnected kNN graph on some seeds
        labels = estimator.fit(X).labels_
    assert labels.shape == (len(X),)
    assert np.unique(labels).size == 10
    assert adjusted_rand_score(y, labels) > ARI_FLOORS[name]
    np.testing.assert_array_equal(create_estimator(name, 10, random_state=0).fit_predict(X), labels)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_auto_k_only_where_supported(name):
    if algorithm_info(name).supports_auto_k:
        assert create_estimator(name, "auto", random_state=0).n_clusters == "auto"
    else:
        with pytest.raises(ValueError, match=f"n_clusters='auto' is not supported by {name}"):
            create_estimator(name, "auto")


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("kmean", "kmeans"), ("spectal", "spectral"), ("agglomerativ", "agglomerative")],
)
def test_unknown_name_lists_close_matches(typo, suggestion):
    with pytest.raises(
        UnknownAlgorithmError, match=f"algorithm='{typo}'.*did you mean {suggestion}"
    ):
        create_estimator(typo, 3)
    with pytest.raises(ValueError, match=f"clustering.algorithm='{typo}' is not a clustering"):
        check_algorithm(typo, key="clustering.algorithm")


def test_unknown_name_without_close_match_lists_every_name():
    with pytest.raises(UnknownAlgorithmError, match="choose from kmeans, spectral") as info:
        check_algorithm("dbscan")
    assert "did you mean" not in str(info.value)


def test_neighbour_graph_algorithms_take_n_neighbors():
    assert {name for name in ALGORITHMS if algorithm_info(name).uses_neighbors} == {
        "spectral",
        "agglomerative",
    }
    assert create_estimator("spectral", 3, n_neighbors=7).n_neighbors == 7
    assert create_estimator("agglomerative", 3, n_neighbors=7).n_neighbors == 7


def test_hierarchical_levels():
    assert hierarchical_levels(10) == (100, 10)
    assert hierarchical_levels(10, n_samples=400) == (100, 10)
    assert hierarchical_levels(10, n_samples=200) == (50, 10)
    assert hierarchical_levels(10, n_samples=30) == (10,)  # too few points for a finer level
