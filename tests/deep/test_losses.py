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


def test_clustering_similarity_matches_each_cluster_to_its_best_partner():
    # A = [0,0,1,1], B = [0,1,1,1]: cos(A0,B0)=1/sqrt2, cos(A0,B1)=1/sqrt6, cos(A1,B0)=0,
    # cos(A1,B1)=2/sqrt6. Sim(A,B) = mean over A's clusters of the best cosine = Sim(B,A).
    probs = torch.stack([_one_hot([0, 0, 1, 1]), _one_hot([0, 1, 1, 1])])
    expected = (1 / math.sqrt(2) + 2 / math.sqrt(6)) / 2  # 0.76184
    sim = clustering_similarity(probs)
    assert float(sim[0, 1]) == pytest.approx(expected, abs=1e-6)
    assert float(sim[1, 0]) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(torch.diagonal(sim), torch.ones(2))
    # relu over the two ordered pairs: 2 * (0.76184 - 0.5); nothing above d = 0.9
    assert float(diversity_loss(probs, threshold=0.5)) == pytest.approx(
        2 * (expected - 0.5), abs=1e-6
    )
    assert float(diversity_loss(probs, threshold=0.9)) == 0.0


def test_clustering_similarity_is_not_symmetric():
    # B puts every sample in cluster 0 (its cluster 1 is an all-zero column, cosine 0).
    # Sim(A,B) = (1/sqrt2 + 1/sqrt2)/2; Sim(B,A) = (1/sqrt2 + 0)/2.
    probs = torch.stack([_one_hot([0, 0, 1, 1]), _one_hot([0, 0, 0, 0])])
    sim = clustering_similarity(probs)
    assert float(sim[0, 1]) == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert float(sim[1, 0]) == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-6)
    # only the ordered pair (A, B) exceeds d = 0.5
    assert float(diversity_loss(probs, threshold=0.5)) == pytest.approx(
        1 / math.sqrt(2) - 0.5, abs=1e-6
    )


def test_identical_heads_at_half_give_one_as_published():
    # Soft, identical assignments (not one-hot): every cluster's best match is itself, so
    # Sim = 1 for both ordered pairs and the loss is 2 * relu(1 - 0.5) = 1.0 (the earlier
    # "sum every similarity above d, / C, mean over pairs" form gave 1.54 here).
    head = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    probs = torch.stack([head, head])
    assert float(diversity_loss(probs, threshold=0.5)) == pytest.approx(1.0, abs=1e-6)
    relabelled = torch.stack([_one_hot([0, 1, 1, 0]), _one_hot([1, 0, 0, 1])])
    assert float(diversity_loss(relabelled, threshold=0.5)) == pytest.approx(1.0, abs=1e-6)
    assert float(diversity_loss(probs, threshold=1.0)) == 0.0
    assert float(diversity_loss(probs[:1], threshold=0.0)) == 0.0  # one head: no pairs


def test_diversity_loss_sums_over_all_ordered_pairs():
    # A, B as above and C = A relabelled: Sim(A,C) = Sim(C,A) = 1, the four pairs with B
    # are 0.76184. At d = 0.6: 2 * 0.4 + 4 * 0.16184; at d = 0.9 only A-C: 2 * 0.1.
    probs = torch.stack([_one_hot([0, 0, 1, 1]), _one_hot([0, 1, 1, 1]), _one_hot([1, 1, 0, 0])])
    v = (1 / math.sqrt(2) + 2 / math.sqrt(6)) / 2
    assert float(diversity_loss(probs, threshold=0.6)) == pytest.approx(
        2 * 0.4 + 4 * (v - 0.6), abs=1e-5
    )
    assert float(diversity_loss(probs, threshold=0.9)) == pytest.approx(0.2, abs=1e-5)


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


def test_divclust_heads_own_both_projector_layers_unless_shared():
    from rayclust.deep.divclust import DivClustNet

    torch.manual_seed(0)
    own = DivClustNet(in_dim=6, hidden_dim=8, n_heads=3, n_clusters=4, projection_dim=5)
    shared = DivClustNet(6, 8, 3, 4, 5, shared_first_layer=True)
    x = torch.randn(7, 6)
    proj, probs = own.eval()(x)
    assert proj.shape == (7, 5) and probs.shape == (3, 7, 4)
    assert torch.allclose(probs.sum(dim=2), torch.ones(3, 7))
    assert tuple(own.cluster_hidden[0].weight.shape) == (3, 8, 8)  # one first layer per head
    assert tuple(shared.cluster_hidden[0].weight.shape) == (8, 8)  # one for all heads
    n_own = sum(p.numel() for p in own.cluster_hidden.parameters())
    n_shared = sum(p.numel() for p in shared.cluster_hidden.parameters())
    assert (n_own, n_shared) == (3 * (8 * 8 + 8), 8 * 8 + 8)
    # each head is its own Linear: head 1 computed by hand from its weights
    h = own.trunk(x)
    first = own.cluster_hidden[0]
    hidden = torch.relu(h @ first.weight[1].T + first.bias[1])
    last = own.cluster_heads
    expected = (hidden @ last.weight[1].T + last.bias[1]).softmax(dim=1)
    assert torch.allclose(probs[1], expected, atol=1e-6)


def test_barlow_twins_loss_by_hand():
    from rayclust.deep.losses import barlow_twins_loss

    # columns already standardised (mean 0, population std 1)
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(a, a)) == pytest.approx(0.0, abs=1e-6)  # C = identity
    # b's second column copies a's first: C = [[1, 1], [0, 0]] -> (1-1)^2 + (1-0)^2 + w * 1
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(a, b, 0.5)) == pytest.approx(1.5, abs=1e-6)
    # scale and shift per dimension do not matter (standardised over the batch)
    assert float(barlow_twins_loss(3 * a + 2, b, 0.5)) == pytest.approx(1.5, abs=1e-5)
    with pytest.raises(ValueError, match="two"):
        barlow_twins_loss(a[:1], b[:1])
