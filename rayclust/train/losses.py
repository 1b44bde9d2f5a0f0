"""Episodic losses: prototypical classification plus the multivariate scatter loss.

For one N-way episode with support features ``s`` (N*K rows) and query features ``q``:

- prototypes ``p_c`` are the means of the support rows of class ``c``;
- query scores are the negative squared Euclidean distance to each prototype, or the
  cosine similarity times ``scale`` (a temperature: cosines live in [-1, 1], far too flat
  for a softmax);
- the scatter ratio is ``S_W / S_B`` with ``S_W = sum_i ||s_i - p_{y_i}||^2`` (spread of the
  support around its own prototype) and ``S_B = sum_{j<k} ||p_j - p_k||^2`` (each unordered
  pair of prototypes once);
- ``loss = alpha * S_W / S_B + (1 - alpha) * CE(query scores, query labels)``.

With ``distance="cosine"`` the scatter terms are computed on L2-normalised features, so the
loss measures the same geometry the classifier scores with; ``scatter_on="raw"`` computes
them on the raw (unnormalised) features instead, as Bjerge et al.'s code does in cosine mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Distance = Literal["euclidean", "cosine"]
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")
SCATTER_ON: tuple[str, ...] = ("same", "raw")  # features the scatter terms are computed on


def _check_episode(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> None:
    if features.ndim != 2:
        raise ValueError(f"features should be 2-D (n, dim); got features.ndim={features.ndim}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels should be 1-D with len(labels)={labels.shape[0] if labels.ndim else 0} "
            f"equal to features.shape[0]={features.shape[0]}"
        )
    if n_way < 2:
        raise ValueError(f"n_way={n_way} should be >= 2: an episode compares classes")
    present = torch.unique(labels)
    if present.numel() != n_way or present.min() < 0 or present.max() >= n_way:
        raise ValueError(
            f"support labels should be exactly 0..{n_way - 1} (n_way={n_way}); "
            f"got {present.tolist()}"
        )


def class_prototypes(
    support: torch.Tensor, support_labels: torch.Tensor, n_way: int
) -> torch.Tensor:
    """Mean support feature of each episode class: shape (n_way, dim)."""
    _check_episode(support, support_labels, n_way)
    one_hot = F.one_hot(support_labels, n_way).to(support.dtype)  # (n, n_way)
    counts = one_hot.sum(dim=0).unsqueeze(1)  # (n_way, 1), all >= 1 after the check
    return one_hot.T @ support / counts


def prototype_logits(
    query: torch.Tensor,
    prototypes: torch.Tensor,
    distance: Distance = "euclidean",
    scale: float = 10.0,
) -> torch.Tensor:
    """Class scores of each query row against the prototypes: shape (n_query, n_way)."""
    if distance == "euclidean":
        return -torch.cdist(query, prototypes).pow(2)
    if distance == "cosine":
        return scale * F.normalize(query, dim=1) @ F.normalize(prototypes, dim=1).T
    raise ValueError(f"distance={distance!r} is not one of {', '.join(map(repr, DISTANCES))}")


def scatter_terms(
    support: torch.Tensor, support_labels: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S_W, S_B)``: within-class and between-prototype sums of squared distances."""
    within = (support - prototypes[support_labels]).pow(2).sum()
    n_way = prototypes.shape[0]
    rows, cols = torch.triu_indices(n_way, n_way, offset=1, device=prototypes.device)
    between = (prototypes[rows] - prototypes[cols]).pow(2).sum()
    return within, between


def scatter_ratio(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    n_way: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``S_W / max(S_B, eps)``.

    The guard matters at the start of training from a collapsed or random backbone, where
    all prototypes can coincide: the ratio would be inf/NaN and poison the whole step.
    """
    prototypes = class_prototypes(support, support_labels, n_way)
    within, between = scatter_terms(support, support_labels, prototypes)
    return within / between.clamp_min(eps)


@dataclass
class EpisodeLossOutput:
    loss: torch.Tensor
    scatter: torch.Tensor  # S_W / S_B (guarded)
    cross_entropy: torch.Tensor
    accuracy: torch.Tensor  # share of query rows whose nearest prototype is right


class EpisodicLoss(torch.nn.Module):
    """``alpha * S_W / S_B + (1 - alpha) * CE(query)`` for one episode of backbone features."""

    def __init__(
        self,
        alpha: float = 0.5,
        distance: Distance = "euclidean",
        scale: float = 10.0,
        eps: float = 1e-6,
        scatter_on: Literal["same", "raw"] = "same",
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} should be in [0, 1]")
        if distance not in DISTANCES:
            raise ValueError(
                f"distance={distance!r} is not one of {', '.join(map(repr, DISTANCES))}"
            )
        if scale <= 0:
            raise ValueError(f"scale={scale} should be > 0")
        if eps <= 0:
            raise ValueError(f"eps={eps} should be > 0")
        if scatter_on not in SCATTER_ON:
            raise ValueError(f"scatter_on={scatter_on!r} should be 'same' or 'raw'")
        self.scatter_on = scatter_on
        self.alpha = alpha
        self.distance = distance
        self.scale = scale
        self.eps = eps

    def forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        query_labels: torch.Tensor,
        n_way: int,
    ) -> EpisodeLossOutput:
        # The loss is computed in float32 even under autocast: squared distances of
        # 1000-d features overflow float16.
        support, query = support.float(), query.float()
        raw_support = support
        if self.distance == "cosine":
            support, query = F.normalize(support, dim=1), F.normalize(query, dim=1)
        prototypes = class_prototypes(support, support_labels, n_way)
        logits = prototype_logits(query, prototypes, self.distance, self.scale)
        cross_entropy = F.cross_entropy(logits, query_labels)
        if self.scatter_on == "raw" and raw_support is not support:
            raw_prototypes = class_prototypes(raw_support, support_labels, n_way)
            within, between = scatter_terms(raw_support, support_labels, raw_prototypes)
        else:
            within, between = scatter_terms(support, support_labels, prototypes)
        scatter = within / between.clamp_min(self.eps)
        loss = self.alpha * scatter + (1.0 - self.alpha) * cross_entropy
        accuracy = (logits.argmax(dim=1) == query_labels).float().mean()
        return EpisodeLossOutput(loss, scatter.detach(), cross_entropy.detach(), accuracy.detach())
