"""ICBPL (Hu, Zhu, Wang): clustering by pulling latent features onto predefined evenly
distributed class centroids (PEDCC), on an MLP over frozen features.

Loss (Eq. 7) = mmd_weight (1 in the paper) * MMD([Z, Z_aug], PEDCC) + lambda1 * augmentation cosine loss (Eq. 4)
+ lambda2 * kNN cosine loss (Eq. 5) + lambda3 * minimum-cosine-distance loss (Eq. 6).
Latents are L2-normalised. The k nearest neighbours of each training row come first from the
frozen (pretrained) features, then from the current latents every ``knn_refresh_epochs``.
A row's cluster is the PEDCC centroid with the largest cosine to its latent (Eq. 8).
Algorithm 1's first step (Barlow Twins fine-tuning of the pretrained network) is
``icbpl.barlow_twins_epochs``: that many first epochs train only a Barlow Twins loss on two
augmented views' latents (with ``features.mode=finetune`` the backbone too), before the kNN
graph is built; rayclust applies it to the clustering network's latent output rather than to
a separate 8192-d projector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayclust.deep.features import FrozenFeatures
from rayclust.deep.losses import (
    augmentation_cosine_loss,
    barlow_twins_loss,
    min_cosine_distance_loss,
    mmd_loss,
    neighbour_cosine_loss,
)
from rayclust.deep.objective import Objective, TrainData, WorkerContext, mlp_trunk
from rayclust.deep.targets import pedcc


class ICBPLNet(nn.Module):
    """Trunk + linear layer to the PEDCC space, output on the unit sphere."""

    def __init__(self, in_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden_dim)
        self.latent = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.latent(self.trunk(x)), dim=1)


def cosine_neighbours(x: torch.Tensor, k: int, batch: int = 2048) -> torch.Tensor:
    """Indices (n, k) of each row's k most cosine-similar other rows."""
    if k >= x.shape[0]:
        raise ValueError(f"n_neighbors={k} should be < the number of training rows {x.shape[0]}")
    unit = F.normalize(x, dim=1)
    out = []
    for start in range(0, unit.shape[0], batch):
        sims = unit[start : start + batch] @ unit.T
        rows = torch.arange(start, min(start + batch, unit.shape[0]), device=x.device)
        sims[rows - start, rows] = -float("inf")  # a row is not its own neighbour
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


class ICBPLObjective(Objective):
    name = "icbpl"

    def __init__(self, config, n_clusters, in_dim):
        super().__init__(config, n_clusters, in_dim)
        if config.icbpl.latent_dim < n_clusters - 1:
            raise ValueError(
                f"icbpl.latent_dim={config.icbpl.latent_dim} should be >= n_clusters - 1 = "
                f"{n_clusters - 1}"
            )
        self.centroids = torch.as_tensor(pedcc(n_clusters, config.icbpl.latent_dim))

    def build_model(self) -> nn.Module:
        return ICBPLNet(self.in_dim, self.config.trainer.hidden_dim, self.config.icbpl.latent_dim)

    def setup(self, data: TrainData, ctx: WorkerContext) -> None:
        super().setup(data, ctx)
        self.centroids = self.centroids.to(ctx.device)
        self.neighbours: torch.Tensor | None = None
        self.refreshes = 0
        self.bt_epochs_done = 0

    def barlow_twins_epoch(self, model, optimizer) -> dict[str, float]:
        """Algorithm 1, step 1: Barlow Twins between two augmented views' latents."""
        c = self.config.icbpl
        total = 0.0
        for index in self.data.batches(self.bt_epochs_done):
            view_a, view_b = self.data.augmented_views(index, 2)
            loss = barlow_twins_loss(model(view_a), model(view_b), c.barlow_twins_off_diagonal)
            self.step(optimizer, loss)
            total += float(loss.detach())
        self.bt_epochs_done += 1
        return {"objective": total / max(1, self.data.steps_per_epoch), "barlow_twins": 1.0}

    def train_epoch(self, model, optimizer, epoch):
        c = self.config.icbpl
        if epoch < c.barlow_twins_epochs:
            return self.barlow_twins_epoch(model, optimizer)
        epoch -= c.barlow_twins_epochs  # ICBPL's own epochs count from 0 after step 1
        if self.neighbours is None:
            # Neighbours over all training rows (every worker holds them all), first from
            # the pretrained encoder's features (frozen, or the backbone before any
            # fine-tuning step), as the paper takes them from its pretrained model.
            model.eval()
            self.neighbours = cosine_neighbours(self.data.encoder_features(model), c.n_neighbors)
            model.train()
        elif epoch > 0 and epoch % c.knn_refresh_epochs == 0:
            with torch.no_grad():
                model.eval()
                latents = self.data.forward_all(model)
                model.train()
            self.neighbours = cosine_neighbours(latents, c.n_neighbors)
            self.refreshes += 1
        sums = dict.fromkeys(("objective", "mmd", "augmentation", "neighbours", "min_cosine"), 0.0)
        for index in self.data.batches(epoch):
            (augmented,) = self.data.augmented_views(index, 1)
            z = model(self.data.plain(index))
            z_aug = model(augmented)
            nbr_index = self.neighbours[index]
            z_nbr = model(self.data.plain(nbr_index.reshape(-1))).view(
                len(index), c.n_neighbors, -1
            )
            parts = {
                "mmd": mmd_loss(torch.cat([z, z_aug]), self.centroids, c.mmd_sigma),
                "augmentation": augmentation_cosine_loss(z, z_aug),
                "neighbours": neighbour_cosine_loss(z, z_nbr),
                "min_cosine": min_cosine_distance_loss(z, self.centroids),
            }
            loss = (
                c.mmd_weight * parts["mmd"]
                + c.lambda_augmentation * parts["augmentation"]
                + c.lambda_neighbours * parts["neighbours"]
                + c.lambda_min_cosine * parts["min_cosine"]
            )
            self.step(optimizer, loss)
            sums["objective"] += float(loss.detach())
            for key, value in parts.items():
                sums[key] += float(value.detach())
        stats = {k: v / max(1, self.data.steps_per_epoch) for k, v in sums.items()}
        stats["neighbour_refreshes"] = float(self.refreshes)
        return stats

    def checkpoint_state(self) -> dict[str, Any]:
        return {"centroids": self.centroids.cpu(), "neighbours": self.neighbours.cpu()}

    # ---- driver side

    def latents(self, model: nn.Module, features: FrozenFeatures) -> torch.Tensor:
        return self.forward_plain(model, features)

    def predict(self, model, features):
        return (self.latents(model, features) @ self.centroids.cpu().T).argmax(dim=1).numpy()

    def report(self, model, train, holdout, history, score=None):
        labels, reports = super().report(model, train, holdout, history, score)
        reports["pedcc_cosine"] = float((self.centroids[0] @ self.centroids[1]).cpu())
        reports["cluster_sizes_train"] = np.bincount(
            labels["train"], minlength=self.n_clusters
        ).tolist()
        if train.labels is not None:
            # How often the frozen view's nearest neighbours share the class: the signal the
            # kNN loss starts from.
            first = cosine_neighbours(torch.as_tensor(train.base), self.config.icbpl.n_neighbors)
            same = train.labels[first.numpy()] == train.labels[:, None]
            reports["initial_neighbour_agreement"] = float(same.mean())
        return labels, reports
