"""Episodic losses against values computed by hand on tiny 2-D episodes."""

import math

import pytest
import torch

from rayclust.train.losses import (
    EpisodicLoss,
    class_prototypes,
    prototype_logits,
    scatter_ratio,
    scatter_terms,
)

# Three classes, two support points each, in 2-D:
#   class 0: (0,0), (2,0) -> prototype (1,0), within-class sum 1 + 1 = 2
#   class 1: (0,4), (0,6) -> prototype (0,5), within-class sum 1 + 1 = 2
#   class 2: (4,4), (4,4) -> prototype (4,4), within-class sum 0
# S_W = 4. Pairs of prototypes: |p0-p1|^2 = 1 + 25 = 26, |p0-p2|^2 = 9 + 16 = 25,
# |p1-p2|^2 = 16 + 1 = 17, so S_B = 68.
SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [4.0, 4.0], [4.0, 4.0]])
SUPPORT_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
# One query (0,2) of class 1: squared distances 5, 9, 20 -> logits (-5, -9, -20).
QUERY = torch.tensor([[0.0, 2.0]])
QUERY_LABELS = torch.tensor([1])
HAND_CE = 9.0 + math.log(math.exp(-5) + math.exp(-9) + math.exp(-20))


def test_prototypes_are_support_means():
    prototypes = class_prototypes(SUPPORT, SUPPORT_LABELS, n_way=3)
    assert torch.equal(prototypes, torch.tensor([[1.0, 0.0], [0.0, 5.0], [4.0, 4.0]]))


def test_scatter_terms_by_hand():
    prototypes = class_prototypes(SUPPORT, SUPPORT_LABELS, n_way=3)
    within, between = scatter_terms(SUPPORT, SUPPORT_LABELS, prototypes)
    assert within.item() == pytest.approx(4.0)
    assert between.item() == pytest.approx(68.0)
    assert scatter_ratio(SUPPORT, SUPPORT_LABELS, n_way=3).item() == pytest.approx(4.0 / 68.0)


def test_two_way_scatter_counts_the_single_pair_once():
    ratio = scatter_ratio(SUPPORT[:4], SUPPORT_LABELS[:4], n_way=2)
    assert ratio.item() == pytest.approx(4.0 / 26.0)


def test_euclidean_logits_are_negative_squared_distances():
    prototypes = class_prototypes(SUPPORT, SUPPORT_LABELS, n_way=3)
    logits = prototype_logits(QUERY, prototypes, "euclidean")
    assert torch.allclose(logits, torch.tensor([[-5.0, -9.0, -20.0]]))


def test_cosine_logits_are_scaled_cosines():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    query = torch.tensor([[3.0, 3.0]])
    logits = prototype_logits(query, prototypes, "cosine", scale=10.0)
    expected = 10.0 / math.sqrt(2.0)
    assert torch.allclose(logits, torch.tensor([[expected, expected]]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_episode_loss_mixes_scatter_and_cross_entropy_by_alpha(alpha):
    out = EpisodicLoss(alpha=alpha, distance="euclidean")(
        SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, n_way=3
    )
    assert out.cross_entropy.item() == pytest.approx(HAND_CE, rel=1e-5)
    assert out.scatter.item() == pytest.approx(4.0 / 68.0, rel=1e-6)
    expected = alpha * 4.0 / 68.0 + (1 - alpha) * HAND_CE
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_accuracy_counts_nearest_prototype():
    # (0,2) is nearer p0=(1,0) (5) than p1=(0,5) (9): predicted 0, labelled 1.
    out = EpisodicLoss(alpha=0.5)(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, n_way=3)
    assert out.accuracy.item() == 0.0
    near_p1 = torch.tensor([[0.0, 4.5]])
    out = EpisodicLoss(alpha=0.5)(SUPPORT, SUPPORT_LABELS, near_p1, QUERY_LABELS, n_way=3)
    assert out.accuracy.item() == 1.0


def test_collapsed_prototypes_give_a_finite_loss_and_gradient():
    # A dead backbone maps everything to one point: S_B = 0 must not give inf or NaN.
    support = torch.ones(6, 4, requires_grad=True)
    query = torch.ones(3, 4, requires_grad=True)
    out = EpisodicLoss(alpha=1.0, eps=1e-6)(
        support, SUPPORT_LABELS, query, torch.tensor([0, 1, 2]), n_way=3
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(support.grad).all()
    # Nearly collapsed: S_B below eps is replaced by eps, so the ratio is S_W / eps.
    support = torch.zeros(4, 1)
    support[1, 0] = 1e-4  # class 0: (0, 1e-4) -> S_W = 2 * (5e-5)^2 = 5e-9; S_B = (5e-5)^2
    ratio = scatter_ratio(support, torch.tensor([0, 0, 1, 1]), n_way=2, eps=1e-6)
    assert ratio.item() == pytest.approx(5e-9 / 1e-6, rel=1e-3)


def test_scatter_ratio_grad_pulls_support_towards_its_prototype():
    support = SUPPORT.clone().requires_grad_(True)
    scatter_ratio(support, SUPPORT_LABELS, n_way=3).backward()
    # (0,0) sits left of its prototype (1,0): lowering the loss moves it right (+x).
    assert support.grad[0, 0] < 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, r"alpha=1\.5 should be in \[0, 1\]"),
        ({"distance": "manhattan"}, r"distance='manhattan' is not one of 'euclidean', 'cosine'"),
        ({"scale": 0.0}, r"scale=0\.0 should be > 0"),
    ],
)
def test_invalid_loss_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodicLoss(**kwargs)


def test_labels_must_cover_every_way():
    with pytest.raises(
        ValueError, match=r"support labels should be exactly 0\.\.2 \(n_way=3\); got \[0, 1\]"
    ):
        class_prototypes(SUPPORT[:4], SUPPORT_LABELS[:4], n_way=3)


def test_cosine_scatter_on_raw_features():
    # cosine mode, scatter_on="raw": S_W / S_B of the raw support (4 / 68, worked out above).
    # "same" uses the L2-normalised rows, where (0,0) stays 0: class 0 rows (0,0), (1,0) ->
    # S_W = 0.25 + 0.25; classes 1, 2 collapse to (0,1) and (r,r), r = 1/sqrt2 -> 0.
    # Prototypes (0.5,0), (0,1), (r,r): S_B = 1.25 + [(0.5-r)^2 + r^2] + [r^2 + (1-r)^2].
    query, labels = SUPPORT[:3], SUPPORT_LABELS[:3]
    raw = EpisodicLoss(alpha=1.0, distance="cosine", scatter_on="raw")
    out = raw(SUPPORT, SUPPORT_LABELS, query, labels, n_way=3)
    assert out.scatter.item() == pytest.approx(4.0 / 68.0)
    same = EpisodicLoss(alpha=1.0, distance="cosine")
    r = 1 / math.sqrt(2.0)
    s_b = (0.25 + 1.0) + ((0.5 - r) ** 2 + r**2) + (r**2 + (1 - r) ** 2)
    out_same = same(SUPPORT, SUPPORT_LABELS, query, labels, n_way=3)
    assert out_same.scatter.item() == pytest.approx(0.5 / s_b, rel=1e-5)
    with pytest.raises(ValueError, match="scatter_on='both'"):
        EpisodicLoss(scatter_on="both")
