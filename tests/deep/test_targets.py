"""PEDCC geometry, Hungarian assignment, DivClust's NMI bookkeeping."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from rayclust.deep import DynamicThreshold, hungarian_assign, one_hot_targets, pairwise_nmi, pedcc
from rayclust.deep.divclust import MemoryBank, mean_off_diagonal
from rayclust.deep.targets import match_clusters_to_targets


@pytest.mark.parametrize("k, dim", [(2, 1), (3, 2), (4, 3), (10, 64), (20, 19)])
def test_pedcc_unit_vectors_with_equal_pairwise_angles(k, dim):
    points = pedcc(k, dim)
    assert points.shape == (k, dim)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-6)
    gram = points @ points.T
    off = gram[~np.eye(k, dtype=bool)]
    # A regular simplex: every pair at cos = -1/(k-1), the widest equal spread possible.
    np.testing.assert_allclose(off, -1.0 / (k - 1), atol=1e-6)
    np.testing.assert_allclose(points.sum(axis=0), 0.0, atol=1e-5)


def test_pedcc_needs_k_minus_one_dimensions():
    with pytest.raises(ValueError, match=r"dim=3 should be >= n_classes - 1 = 9"):
        pedcc(10, 3)
    with pytest.raises(ValueError, match="n_classes=1 should be >= 2"):
        pedcc(1, 4)


def test_hungarian_assign_known_permutation():
    targets = one_hot_targets(3)
    # Embedding 0 is near target 2, 1 near target 0, 2 near target 1.
    embeddings = np.array([[0.1, 0.0, 0.9], [0.8, 0.2, 0.0], [0.0, 0.9, 0.1]])
    np.testing.assert_array_equal(hungarian_assign(embeddings, targets), [2, 0, 1])


def test_hungarian_assign_repeated_targets_keeps_counts():
    # MMDC batches hold repeated one-hot targets: a greedy nearest-target choice would give
    # both rows 0 and 1 target (1, 0); the assignment must keep one of each.
    targets = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    embeddings = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]])
    perm = hungarian_assign(embeddings, targets)
    assert sorted(perm.tolist()) == [0, 1, 2]
    assigned = targets[perm]
    assert assigned[1].tolist() == [0.0, 1.0]  # the least "first-class" row gives way
    with pytest.raises(ValueError, match=r"embeddings.shape=\(3, 2\) should equal"):
        hungarian_assign(embeddings, targets[:2])


def test_match_clusters_to_targets():
    centroids = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8], [0.7, 0.3, 0.0]])
    np.testing.assert_array_equal(match_clusters_to_targets(centroids, np.eye(3)), [1, 2, 0])


def test_pairwise_nmi_matches_scikit_learn():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 5, 300))
    c = rng.integers(0, 5, 300)
    nmi = pairwise_nmi(np.stack([a, b, c]), 5)
    assert nmi[0, 1] == pytest.approx(normalized_mutual_info_score(a, b))
    assert nmi[1, 2] == pytest.approx(normalized_mutual_info_score(b, c))
    assert nmi[0, 0] == 1.0 and nmi[1, 0] == nmi[0, 1]
    assert mean_off_diagonal(nmi) == pytest.approx((nmi[0, 1] + nmi[0, 2] + nmi[1, 2]) / 3)


def test_dynamic_threshold_moves_by_momentum_and_caps_at_one():
    d = DynamicThreshold(target=0.8, momentum=0.1, initial=1.0)
    assert d.update(0.9) == pytest.approx(0.9)  # above target: tighten
    assert d.update(0.95) == pytest.approx(0.81)
    assert d.update(0.5) == pytest.approx(0.891)  # below target: relax
    for _ in range(5):
        d.update(0.1)
    assert d.value == 1.0


def test_memory_bank_keeps_the_latest_samples():
    bank = MemoryBank(n_heads=2, size=5)
    bank.add(np.array([[0, 1, 2], [3, 4, 5]]))
    assert bank.contents().shape == (2, 3)
    bank.add(np.array([[6, 7, 8, 9], [6, 7, 8, 9]]))
    assert sorted(bank.contents()[0].tolist()) == [2, 6, 7, 8, 9]
