"""DivClust (Metaxas, Tzimiropoulos, Patras, CVPR 2023) on CC-style heads over frozen features.

K clustering heads share an MLP trunk; each head owns CC's two-layer cluster projector (as in
the authors' code; ``divclust.shared_first_layer`` shares its first layer). Each head is
trained with CC's cluster-level contrastive loss (``L_main(k)``), the trunk also with CC's
instance-level loss, and the heads together with DivClust's diversity loss
``sum_{A != B} relu(Sim(A, B) - d) / K`` (``rayclust.deep.losses.diversity_loss``). The hard
assignments of both augmented views enter a memory bank of the last ``M`` labels; every ``T``
steps (from step 0) the mean pairwise NMI ``D^R`` of the heads over the bank is compared with
the target ``D^T``: above it, ``d <- d (1 - m)`` (more pressure); below it,
``d <- min(1, d (1 + m))``. A single clustering comes from the lowest-loss head (DivClust A),
a consensus of all heads (B) or of the ``consensus_heads`` lowest-loss heads (C, default).

Checked against the supplementary (M = 10,000, T = 20, m = 0.01) and the authors' released
code (engine/criterion.py, engine/CC.py, configs/main_config.yaml: ``NMI_interval: 20``; the
loss class's own default is 5, overridden by that config): ``d`` starts at 1 and stays in
[0, 1]; NMI uses arithmetic-mean normalisation (scikit-learn's default); D^T = 1 turns
diversity off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from rayclust.deep.features import FrozenFeatures
from rayclust.deep.losses import cluster_contrastive_loss, diversity_loss, nt_xent
from rayclust.deep.objective import Objective, TrainData, WorkerContext, mlp_trunk, unwrap


class ConsensusUnavailableWarning(UserWarning):
    """rayclust.ensemble is not installed; DivClust falls back to its lowest-loss head."""


def pairwise_nmi(assignments: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
    """NMI (arithmetic normalisation) between every pair of rows of ``assignments`` (K, n).

    Contingency tables by ``bincount``: fast enough to run every T training steps on a
    10,000-sample memory bank with 20 heads.
    """
    assignments = np.asarray(assignments, dtype=np.int64)
    n_heads, n = assignments.shape
    c = int(n_clusters if n_clusters is not None else assignments.max() + 1)
    marginals = [np.bincount(a, minlength=c) / n for a in assignments]
    entropies = [-(p[p > 0] * np.log(p[p > 0])).sum() for p in marginals]
    result = np.eye(n_heads)
    for a in range(n_heads):
        for b in range(a + 1, n_heads):
            joint = np.bincount(assignments[a] * c + assignments[b], minlength=c * c) / n
            joint = joint.reshape(c, c)
            nz = joint > 0
            outer = np.outer(marginals[a], marginals[b])
            mi = (joint[nz] * np.log(joint[nz] / outer[nz])).sum()
            denom = (entropies[a] + entropies[b]) / 2
            result[a, b] = result[b, a] = 1.0 if denom == 0 else max(mi, 0.0) / denom
    return result


def mean_off_diagonal(matrix: np.ndarray) -> float:
    k = matrix.shape[0]
    if k < 2:
        return 1.0
    return float((matrix.sum() - np.trace(matrix)) / (k * (k - 1)))


class DynamicThreshold:
    """DivClust's upper bound ``d`` on cluster similarity, steered by the measured D^R."""

    def __init__(self, target: float, momentum: float, initial: float = 1.0) -> None:
        self.target, self.momentum, self.value = target, momentum, initial

    def update(self, measured: float) -> float:
        if measured > self.target:
            self.value *= 1.0 - self.momentum
        else:
            self.value = min(1.0, self.value * (1.0 + self.momentum))
        return self.value


class MemoryBank:
    """Hard assignments of every head for the last ``size`` samples seen (a ring buffer)."""

    def __init__(self, n_heads: int, size: int) -> None:
        self.labels = np.zeros((n_heads, size), dtype=np.int64)
        self.size, self.position, self.filled = size, 0, 0

    def add(self, labels: np.ndarray) -> None:
        for column in np.array_split(labels, max(1, labels.shape[1] // self.size + 1), axis=1):
            n = column.shape[1]
            end = self.position + n
            if end <= self.size:
                self.labels[:, self.position : end] = column
            else:
                first = self.size - self.position
                self.labels[:, self.position :] = column[:, :first]
                self.labels[:, : n - first] = column[:, first:]
            self.position = end % self.size
            self.filled = min(self.size, self.filled + n)

    def contents(self) -> np.ndarray:
        return self.labels[:, : self.filled]


class MultiHeadLinear(nn.Module):
    """K independent linear layers applied in one einsum: (n, d) or (K, n, d) -> (K, n, out).

    Each head's weight and bias are initialised as ``nn.Linear`` initialises its own.
    """

    def __init__(self, in_dim: int, out_dim: int, n_heads: int) -> None:
        super().__init__()
        layers = [nn.Linear(in_dim, out_dim) for _ in range(n_heads)]
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            out = torch.einsum("ni,koi->kno", x, self.weight)
        else:
            out = torch.einsum("kni,koi->kno", x, self.weight)
        return out + self.bias.unsqueeze(1)


class DivClustNet(nn.Module):
    """Trunk + CC instance projector + K clustering heads (softmax over C clusters each).

    As in the authors' CC model, every head owns both layers of CC's cluster projector
    (Linear-ReLU-Linear-softmax); ``shared_first_layer=True`` shares the first layer between
    the heads (one Linear) and keeps only the last one per head, which is cheaper.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        n_heads: int,
        n_clusters: int,
        projection_dim: int,
        shared_first_layer: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_clusters = n_heads, n_clusters
        self.trunk = mlp_trunk(in_dim, hidden_dim)
        self.instance_projector = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )
        first = (
            nn.Linear(hidden_dim, hidden_dim)
            if shared_first_layer
            else MultiHeadLinear(hidden_dim, hidden_dim, n_heads)
        )
        self.cluster_hidden = nn.Sequential(first, nn.ReLU(inplace=True))
        self.cluster_heads = MultiHeadLinear(hidden_dim, n_clusters, n_heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        probs = self.cluster_heads(self.cluster_hidden(h)).softmax(dim=2)
        return self.instance_projector(h), probs  # (n, p), (K, n, C)


class DivClustObjective(Objective):
    name = "divclust"

    def build_model(self) -> nn.Module:
        c = self.config.divclust
        return DivClustNet(
            self.in_dim,
            self.config.trainer.hidden_dim,
            c.n_heads,
            self.n_clusters,
            c.projection_dim,
            shared_first_layer=c.shared_first_layer,
        )

    @property
    def diversity_active(self) -> bool:
        return self.config.divclust.diversity_target < 1.0 and self.config.divclust.n_heads > 1

    def setup(self, data: TrainData, ctx: WorkerContext) -> None:
        super().setup(data, ctx)
        c = self.config.divclust
        self.threshold = DynamicThreshold(
            c.diversity_target, c.threshold_momentum, c.initial_threshold
        )
        # both augmented views enter the bank: up to 2 labels per training row
        self.bank = MemoryBank(c.n_heads, min(c.memory_bank, 2 * len(data.shard)))
        self.steps = 0
        self.last_measured = float("nan")

    def _losses(
        self, model: nn.Module, view_a: torch.Tensor, view_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config.divclust
        proj_a, probs_a = model(view_a)
        proj_b, probs_b = model(view_b)
        instance = (
            nt_xent(proj_a, proj_b, c.instance_temperature)
            if c.instance_weight > 0
            else proj_a.sum() * 0.0
        )
        per_head = torch.stack(
            [
                cluster_contrastive_loss(
                    probs_a[k], probs_b[k], c.cluster_temperature, c.entropy_weight
                )
                for k in range(c.n_heads)
            ]
        )
        return instance, per_head, probs_a, probs_b

    def train_epoch(self, model, optimizer, epoch):
        c = self.config.divclust
        sums = {"objective": 0.0, "instance": 0.0, "cluster": 0.0, "diversity": 0.0}
        for index in self.data.batches(epoch):
            view_a, view_b = self.data.augmented_views(index, 2)
            instance, per_head, probs_a, probs_b = self._losses(model, view_a, view_b)
            main = per_head.mean()
            both = torch.cat([probs_a, probs_b], dim=1)  # (K, 2n, C): both augmented views
            # As the authors' code orders it: both views enter the memory bank, D^R is measured
            # (every T steps, from step 0) and d updated, then the loss uses the new d.
            self.bank.add(both.detach().argmax(dim=2).cpu().numpy())
            if self.steps % c.update_interval == 0:
                self._update_threshold()
            self.steps += 1
            if self.diversity_active:
                # the published CC step divides the pair sum by the number of heads
                div = diversity_loss(both, self.threshold.value) / c.n_heads
            else:
                div = main * 0.0
            loss = c.instance_weight * instance + main + c.diversity_weight * div
            self.step(optimizer, loss)
            for key, value in (
                ("objective", loss),
                ("instance", instance),
                ("cluster", main),
                ("diversity", div),
            ):
                sums[key] += float(value.detach())
        stats = {k: v / max(1, self.data.steps_per_epoch) for k, v in sums.items()}
        stats.update(threshold=self.threshold.value, diversity_measured=self.last_measured)
        return stats

    def _update_threshold(self) -> None:
        measured = mean_off_diagonal(pairwise_nmi(self.bank.contents(), self.n_clusters))
        # Each worker measures its own bank; averaging keeps every worker's d identical.
        measured = self.ctx.all_mean({"d": measured})["d"]
        self.last_measured = measured
        if self.diversity_active:
            self.threshold.update(measured)

    # ---- driver side

    @torch.no_grad()
    def head_probabilities(self, model: nn.Module, x: np.ndarray) -> torch.Tensor:
        model = unwrap(model).eval()
        return model(torch.as_tensor(x, dtype=torch.float32))[1]

    @torch.no_grad()
    def head_losses(self, model: nn.Module, features: FrozenFeatures) -> np.ndarray:
        """``L_main(k)`` of every head over all rows at once (two augmented views)."""
        c = self.config.divclust
        model = unwrap(model).eval()
        if features.augmented is not None and features.augmented.shape[1] >= 2:
            view_a, view_b = features.augmented[:, 0], features.augmented[:, 1]
        else:
            rng = np.random.default_rng(self.config.trainer.seed)
            noise = max(self.config.features.noise_std, 1e-3)
            view_a = features.base + noise * rng.standard_normal(
                features.base.shape, dtype=np.float32
            )
            view_b = features.base + noise * rng.standard_normal(
                features.base.shape, dtype=np.float32
            )
        probs_a = model(torch.as_tensor(view_a))[1]
        probs_b = model(torch.as_tensor(view_b))[1]
        return np.array(
            [
                float(
                    cluster_contrastive_loss(
                        probs_a[k], probs_b[k], c.cluster_temperature, c.entropy_weight
                    )
                )
                for k in range(c.n_heads)
            ]
        )

    def head_labels(self, model: nn.Module, features: FrozenFeatures) -> np.ndarray:
        """(K, n): every head's hard assignment of every row."""
        return self.head_probabilities(model, features.base).argmax(dim=2).numpy()

    def report(self, model, train, holdout, history, score: Callable | None = None):
        c = self.config.divclust
        losses = self.head_losses(model, train)
        order = np.argsort(losses)
        if c.selection == "best_head":
            chosen = order[:1]
        elif c.selection == "all":
            chosen = order
        else:
            chosen = order[: min(c.consensus_heads, c.n_heads)]
        splits = {"train": train} | (
            {"holdout": holdout} if holdout is not None and len(holdout) else {}
        )
        labels: dict[str, np.ndarray] = {}
        reports: dict[str, Any] = {
            "head_losses": losses.tolist(),
            "selection": c.selection,
            "selected_heads": chosen.tolist(),
            "diversity_target": c.diversity_target,
            "threshold_final": history[-1]["threshold"] if history else c.initial_threshold,
        }
        head_labels = {split: self.head_labels(model, feats) for split, feats in splits.items()}
        # One consensus over train and held-out rows together, so both splits share one label
        # space (two separate consensus runs would number the same cluster differently). The
        # heads never trained on the held-out rows; the consensus only combines their votes.
        every_row = np.concatenate(list(head_labels.values()), axis=1)
        combined, consensus_used = None, None
        if len(chosen) > 1:
            combined, consensus_used = _consensus(
                [every_row[k] for k in chosen], self.n_clusters, c.consensus
            )
        if combined is None:
            combined = every_row[chosen[0] if len(chosen) == 1 else order[0]]
        start = 0
        for split, heads in head_labels.items():
            labels[split] = combined[start : start + heads.shape[1]]
            start += heads.shape[1]
            nmi = pairwise_nmi(heads, self.n_clusters)
            reports[f"inter_head_nmi_{split}"] = nmi.round(4).tolist()
            reports[f"diversity_reached_{split}"] = mean_off_diagonal(nmi)
            if score is not None:
                per_head = [score(split, h) for h in heads]
                if per_head[0] is not None:
                    reports[f"head_scores_{split}"] = _mean_max(per_head)
                    reports[f"best_head_scores_{split}"] = per_head[order[0]]
        reports["consensus"] = consensus_used or (
            "none" if len(chosen) == 1 else "fallback_best_head"
        )
        reports["diversity_reached"] = reports["diversity_reached_train"]
        reports["diversity_met"] = bool(reports["diversity_reached"] <= c.diversity_target + 0.02)
        return labels, reports


def _mean_max(scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = scores[0].keys()
    return {
        "mean": {k: float(np.mean([s[k] for s in scores])) for k in keys},
        "max": {k: float(np.max([s[k] for s in scores])) for k in keys},
    }


def _consensus(
    label_sets: list[np.ndarray], n_clusters: int, method: str
) -> tuple[np.ndarray | None, str | None]:
    """Combine head labellings with rayclust.ensemble (None when that package is absent)."""
    try:
        from rayclust.ensemble import BipartiteConsensus, CoAssociationConsensus
    except ImportError:
        warnings.warn(
            "rayclust.ensemble is not available; DivClust uses its lowest-loss head instead "
            "of a consensus",
            ConsensusUnavailableWarning,
            stacklevel=3,
        )
        return None, None
    estimator = (
        CoAssociationConsensus(n_clusters)
        if method == "coassociation"
        else BipartiteConsensus(n_clusters)
    )
    return np.asarray(estimator.fit_predict(label_sets)), method


__all__ = [
    "ConsensusUnavailableWarning",
    "DivClustNet",
    "DivClustObjective",
    "DynamicThreshold",
    "MemoryBank",
    "pairwise_nmi",
]
