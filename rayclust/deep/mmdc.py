"""MMDC, multi-modal deep clustering (Shiran 2021), on an MLP over frozen features.

Targets are the K one-hot vectors of R^K (the GMM means of the thesis' chosen setting, zero
variance; ``mmdc.target_sigma`` > 0 samples noisy targets around them as in its Algorithm 1).
Every training row holds one target, K equal shares at random to start. Each clustering step
re-solves the assignment of the batch's targets to the batch's clean embeddings with the
Hungarian algorithm (so cluster sizes never change), then moves the embeddings of augmented
copies towards their targets (Euclidean distance, Eq. 3.1). Every epoch's clustering pass is
followed by a rotation pass: the same trunk, a 4-way head, cross-entropy on features of the
images rotated by 0/90/180/270 degrees. A final refinement stage relabels targets by K-means
on the embeddings (clusters matched to targets by the Hungarian algorithm) and fits them.
A row's cluster is its nearest target mean: the largest component of its embedding.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayclust.cluster import KMeans
from rayclust.deep.features import FrozenFeatures
from rayclust.deep.losses import target_distance_loss
from rayclust.deep.objective import Objective, TrainData, WorkerContext, mlp_trunk, unwrap
from rayclust.deep.targets import hungarian_assign, match_clusters_to_targets, one_hot_targets

N_ROTATIONS = 4
REFINE_RESTARTS = 3  # K-means runs per refinement epoch; the lowest inertia is kept


class MMDCNet(nn.Module):
    """Trunk + clustering head (unit-norm embedding in R^K) + rotation head (4 logits)."""

    def __init__(self, in_dim: int, hidden_dim: int, n_clusters: int) -> None:
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden_dim)
        self.cluster_head = nn.Linear(hidden_dim, n_clusters)
        self.rotation_head = nn.Linear(hidden_dim, N_ROTATIONS)

    def forward(self, x: torch.Tensor, task: str = "cluster") -> torch.Tensor:
        h = self.trunk(x)
        if task == "rotation":
            return self.rotation_head(h)
        return F.normalize(self.cluster_head(h), dim=1)


class MMDCObjective(Objective):
    name = "mmdc"

    def build_model(self) -> nn.Module:
        return MMDCNet(self.in_dim, self.config.trainer.hidden_dim, self.n_clusters)

    def setup(self, data: TrainData, ctx: WorkerContext) -> None:
        super().setup(data, ctx)
        self.means = torch.as_tensor(one_hot_targets(self.n_clusters), device=ctx.device)
        rng = np.random.default_rng(self.config.trainer.seed + 31 * ctx.rank)
        shard = data.shard.cpu().numpy()
        component = np.zeros(data.n_rows, dtype=np.int64)
        component[shard] = rng.permutation(np.arange(len(shard)) % self.n_clusters)
        self.targets = self._sample_targets(torch.as_tensor(component, device=ctx.device), rng)
        self.rotation_on = self.config.mmdc.rotation and data.has_rotations
        self.before_refinement: dict[str, torch.Tensor] | None = None

    def _sample_targets(self, component: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        targets = self.means[component].clone()
        sigma = self.config.mmdc.target_sigma
        if sigma > 0:
            noise = rng.standard_normal(tuple(targets.shape)).astype(np.float32)
            targets = F.normalize(
                targets + sigma * torch.as_tensor(noise, device=targets.device), dim=1
            )
        return targets

    def _clustering_pass(self, model, optimizer, epoch: int, reassign: bool) -> dict[str, float]:
        total, moved = 0.0, 0.0
        for index in self.data.batches(epoch):
            if reassign:
                with torch.no_grad():
                    model.eval()
                    clean = model(self.data.plain(index))
                    model.train()
                held = self.targets[index]
                perm = hungarian_assign(clean.cpu().numpy(), held.cpu().numpy())
                perm_t = torch.as_tensor(perm, device=held.device)
                moved += float((held.argmax(1) != held[perm_t].argmax(1)).float().mean())
                self.targets[index] = held[perm_t]
            (augmented,) = self.data.augmented_views(index, 1)
            loss = target_distance_loss(model(augmented), self.targets[index])
            self.step(optimizer, loss)
            total += float(loss.detach())
        steps = max(1, self.data.steps_per_epoch)
        return {"objective": total / steps, "reassigned": moved / steps}

    def _rotation_pass(self, model, optimizer, epoch: int) -> dict[str, float]:
        weight = self.config.mmdc.rotation_weight
        total, correct, seen = 0.0, 0, 0
        for index in self.data.batches(epoch + 1_000_000):
            x, y = self.data.rotated(index)
            logits = model(x, task="rotation")
            loss = F.cross_entropy(logits, y)
            self.step(optimizer, weight * loss)
            total += float(loss.detach())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        return {
            "rotation_loss": total / max(1, self.data.steps_per_epoch),
            "rotation_accuracy": correct / max(1, seen),
        }

    def train_epoch(self, model, optimizer, epoch):
        stats = self._clustering_pass(model, optimizer, epoch, reassign=True)
        if self.rotation_on:
            stats |= self._rotation_pass(model, optimizer, epoch)
        return stats

    def finish(self, model, optimizer):
        refine = self.config.mmdc.refine_epochs
        if refine == 0:
            return
        if not self.data.trains_backbone:
            # Kept to score the labels before refinement. Not when fine-tuning: the driver
            # scores heads on the final backbone's features, which this head never saw.
            self.before_refinement = {
                k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()
            }
        means = self.means.cpu().numpy()
        for r in range(refine):
            with torch.no_grad():
                model.eval()
                embeddings = self.data.forward_all(model).cpu().numpy()
                model.train()
            # Same seed and same weights on every worker: every worker gets the same labels.
            kmeans = KMeans(
                n_clusters=self.n_clusters,
                n_init=REFINE_RESTARTS,
                random_state=self.config.trainer.seed + r,
            )
            labels = kmeans.fit_predict(embeddings)
            mapping = match_clusters_to_targets(kmeans.cluster_centers_, means)
            component = torch.as_tensor(mapping[labels], device=self.targets.device)
            previous = self.targets.argmax(1)
            rng = np.random.default_rng(self.config.trainer.seed + 977 * r)
            self.targets = self._sample_targets(component, rng)
            changed = float(
                (previous[self.data.shard] != component[self.data.shard]).float().mean()
            )
            stats = self._clustering_pass(
                model, optimizer, self.config.trainer.epochs + r, reassign=False
            )
            stats["reassigned"] = changed
            yield stats

    def checkpoint_state(self) -> dict[str, Any]:
        return {"before_refinement": self.before_refinement}

    # ---- driver side

    def embed(self, model: nn.Module, features: FrozenFeatures) -> np.ndarray:
        return self.forward_plain(model, features).numpy()

    def predict(self, model, features):
        return self.embed(model, features).argmax(axis=1)

    @torch.no_grad()
    def rotation_accuracy(self, model: nn.Module, features: FrozenFeatures) -> float | None:
        if features.rotated is None:
            return None
        model = unwrap(model).eval()
        x = torch.as_tensor(features.rotated.reshape(-1, features.dim))
        y = torch.arange(N_ROTATIONS).repeat(len(features))
        return float((model(x, task="rotation").argmax(1) == y).float().mean())

    def report(self, model, train, holdout, history, score=None):
        labels, reports = super().report(model, train, holdout, history, score)
        splits = {"train": train} | ({"holdout": holdout} if "holdout" in labels else {})
        for split, feats in splits.items():
            reports[f"cluster_sizes_{split}"] = np.bincount(
                labels[split], minlength=self.n_clusters
            ).tolist()
            if self.rotation_on_features(feats):
                reports[f"rotation_accuracy_{split}"] = self.rotation_accuracy(model, feats)
        before = getattr(self, "state", {}).get("before_refinement")
        if before is not None and score is not None:
            earlier = copy.deepcopy(unwrap(model))
            earlier.load_state_dict(before)
            for split, feats in splits.items():
                reports[f"scores_before_refinement_{split}"] = score(
                    split, self.predict(earlier, feats)
                )
        return labels, reports

    def rotation_on_features(self, features: FrozenFeatures) -> bool:
        return self.config.mmdc.rotation and features.rotated is not None
