"""Every loss against a value worked out by hand on a tiny input."""

import math

import pytest
import torch

from rayclust.deep import (
    augmentation_cosine_loss,
    cluster_contrastive_loss,
    clustering_similarity,
    diversity_loss,
    min_cosine_distance_loss,
    mmd_loss,
    neighbour_cosine_loss,
    nt_xent,
    target_distance_loss,
)
from rayclust.deep.losses import assignment_entropy_penalty

EYE2 = torch.eye(2)


def test_nt_xent_two_orthogonal_pairs():
    # Each row: positive logit 1 (its partner), negatives 0 and 0 -> -log(e / (e + 2)).
    assert float(nt_xent(EYE2, EYE2, temperature=1.0)) == pytest.approx(math.log(1 + 2 / math.e))


def test_nt_xent_temperature_scales_logits():
    expected = math.log(1 + 2 / math.exp(2.0))  # logits divided by 0.5
    assert float(nt_xent(EYE2, EYE2, temperature=0.5)) == pytest.approx(expected)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"a.shape=\(2, 2\) should equal b.shape=\(3, 2\)"):
        nt_xent(EYE2, torch.ones(3, 2), 1.0)


def test_entropy_penalty_zero_when_balanced_log_c_when_collapsed():
    assert float(assignment_entropy_penalty(torch.full((4, 2), 0.5))) == pytest.approx(0.0)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(assignment_entropy_penalty(collapsed)) == pytest.approx(math.log(2))


def test_cluster_contrastive_loss_one_hot_balanced():
    # Columns (1,0) and (0,1) are the NT-Xent case above; both marginals are (0.5, 0.5).
    loss = cluster_contrastive_loss(EYE2, EYE2, temperature=1.0)
    assert float(loss) == pytest.approx(math.log(1 + 2 / math.e))


def test_cluster_contrastive_loss_with_unbalanced_marginal():
    # Both columns of [[.75, .25], [.75, .25]] point along (1, 1): every cosine is 1, so each
    # of the 4 columns' NT-Xent is -log(e / 3e) = log 3. The marginal (.75, .25) costs
    # log 2 + .75 log .75 + .25 log .25 per view, here weighted by 0.5.
    probs = torch.tensor([[0.75, 0.25], [0.75, 0.25]])
    penalty = math.log(2) + 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    loss = cluster_contrastive_loss(probs, probs, temperature=1.0, entropy_weight=0.5)
    assert float(loss) == pytest.approx(math.log(3) + 0.5 * 2 * penalty)


def _one_hot(labels, c=2):
    return torch.nn.functional.one_hot(torch.tensor(labels), c).float()


def test_clustering_similarity_thresholds_cluster_pairs():
    # A = [0,0,1,1], B = [0,1,1,1]: cos(A0,B0)=1/sqrt2, cos(A0,B1)=1/sqrt6, cos(A1,B0)=0,
    # cos(A1,B1)=2/sqrt6. Sim keeps the pairs above d and divides by C=2.
    probs = torch.stack([_one_hot([0, 0, 1, 1]), _one_hot([0, 1, 1, 1])])
    at_half = (1 / math.sqrt(2) + 2 / math.sqrt(6)) / 2
    sim = clustering_similarity(probs, threshold=0.5)
    assert float(sim[0, 1]) == pytest.approx(at_half, abs=1e-6)
    assert float(sim[1, 0]) == pytest.approx(at_half, abs=1e-6)
    assert float(clustering_similarity(probs, threshold=0.75)[0, 1]) == pytest.approx(
        (2 / math.sqrt(6)) / 2, abs=1e-6
    )
    assert float(diversity_loss(probs, threshold=0.5)) == pytest.approx(at_half, abs=1e-6)
    assert float(diversity_loss(probs, threshold=0.9)) == 0.0


def test_identical_clusterings_up_to_relabelling_have_similarity_one():
    probs = torch.stack([_one_hot([0, 1, 1, 0]), _one_hot([1, 0, 0, 1])])
    assert float(diversity_loss(probs, threshold=0.5)) == pytest.approx(1.0)


def test_target_distance_loss_is_mean_euclidean_distance():
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(target_distance_loss(EYE2, targets)) == pytest.approx(math.sqrt(2) / 2)


def test_mmd_identical_sets_and_orthogonal_sets():
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # Squared distance 4 between the two points, sigma 1: k = e^-2; cross mean (1 + e^-2) / 2.
    assert float(mmd_loss(pts, pts, sigma=1.0)) == pytest.approx(math.exp(-2) - 1)
    other = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # every cross distance^2 is 2: k = e^-1
    assert float(mmd_loss(other, pts, sigma=1.0)) == pytest.approx(
        2 * math.exp(-2) - 2 * math.exp(-1)
    )


def test_mmd_needs_two_points_each():
    with pytest.raises(ValueError, match="M=1, C=2"):
        mmd_loss(torch.ones(1, 2), EYE2)


def test_augmentation_cosine_loss():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z_aug = torch.tensor([[0.0, 2.0], [3.0, 0.0]])  # cosines 0 and 1
    assert float(augmentation_cosine_loss(z, z_aug)) == pytest.approx((1.0 + 0.0) / 4)


def test_neighbour_cosine_loss():
    z = torch.tensor([[1.0, 0.0]])
    neighbours = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # cosines 1 and -1
    assert float(neighbour_cosine_loss(z, neighbours)) == pytest.approx((0.0 + 4.0) / 4)


def test_min_cosine_distance_loss():
    centroids = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # Best cosines: 1 for (1,0), 0 for (0,1) -> mean of 0 and 1.
    assert float(min_cosine_distance_loss(EYE2, centroids)) == pytest.approx(0.5)
