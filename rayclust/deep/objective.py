"""What every deep-clustering objective provides, and the data it trains on.

An objective is a model factory plus a training epoch plus a prediction rule. The training
loop (``rayclust.deep.training``) is the same for all three and knows nothing of their losses;
the objectives know nothing of Ray: they talk to the loop through ``WorkerContext``
(``rayclust.train.runtime``: rank, world size, device, ``all_mean``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from rayclust.deep.config import DeepConfig
from rayclust.deep.features import FrozenFeatures
from rayclust.train.runtime import WorkerContext


def mlp_trunk(in_dim: int, hidden_dim: int) -> nn.Sequential:
    """Two hidden layers on top of frozen features, shared by every head of a model."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def plan_batches(n_rows: int, batch_size: int, ctx: WorkerContext) -> tuple[torch.Tensor, int, int]:
    """This worker's shard of ``n_rows`` rows, its batch size and steps per epoch.

    Every worker runs the same number of steps, or DDP's gradient all-reduce would hang.
    """
    shard = torch.arange(ctx.rank, n_rows, ctx.world_size)
    smallest_shard = n_rows // ctx.world_size
    batch = min(batch_size, smallest_shard)
    if batch < 2:
        raise ValueError(
            f"each of trainer.num_workers={ctx.world_size} workers gets {smallest_shard} "
            "training rows; need >= 2 per worker"
        )
    return shard.to(ctx.device), batch, smallest_shard // batch


class TrainData:
    """What an objective trains on, one worker's view: batches of row indices, and for any
    rows the model's input (plain, augmented, rotated). Subclasses hold either frozen
    feature rows (``FeatureData``) or images for a backbone being fine-tuned
    (``rayclust.deep.finetune.ImageData``); the objectives cannot tell them apart.

    Every worker holds all training rows (objectives such as ICBPL's kNN and MMDC's K-means
    refinement look at all of them) but draws its batches only from its own shard.
    """

    shard: torch.Tensor  # row indices this worker trains on
    batch_size: int
    steps_per_epoch: int
    seed: int
    device: torch.device
    trains_backbone = False  # True when the rows are images for a backbone being fine-tuned
    inference_batch = 1024  # rows per chunk in forward_all

    @property
    def n_rows(self) -> int:
        raise NotImplementedError

    @property
    def has_rotations(self) -> bool:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """``steps_per_epoch`` batches of row indices from this worker's shard, reshuffled per epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.shard[
            torch.randperm(len(self.shard), generator=generator).to(self.shard.device)
        ]
        for step in range(self.steps_per_epoch):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        """The model input of each row, unaugmented."""
        raise NotImplementedError

    def augmented_views(self, index: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        """``n_views`` different augmented samples of each row."""
        raise NotImplementedError

    def rotated(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row at 0/90/180/270 degrees, as (4 len(index) inputs, their angle classes)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward_all(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn`` over every row's plain input, in chunks (no memory spike)."""
        rows = torch.arange(self.n_rows, device=self.device)
        step = self.inference_batch
        return torch.cat([fn(self.plain(rows[i : i + step])) for i in range(0, self.n_rows, step)])

    @torch.no_grad()
    def encoder_features(self, model: nn.Module) -> torch.Tensor:
        """Every row as the encoder sees it before any head: the frozen features, or the
        current backbone's output when it is being fine-tuned."""
        raise NotImplementedError


class FeatureData(TrainData):
    """Frozen (standardised) feature rows, as tensors on the worker's device."""

    def __init__(
        self,
        base: torch.Tensor,  # (n, d)
        augmented: torch.Tensor | None,  # (n, a, d)
        rotated: torch.Tensor | None,  # (n, 4, d)
        batch_size: int,
        ctx: WorkerContext,
        noise_std: float = 0.0,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.base, self.augmented, self.rotated_features = base, augmented, rotated
        self.shard, self.batch_size, self.steps_per_epoch = plan_batches(
            base.shape[0], batch_size, ctx
        )
        self.noise_std, self.dropout, self.seed, self.device = noise_std, dropout, seed, ctx.device

    @classmethod
    def from_features(
        cls, features: FrozenFeatures, config: DeepConfig, ctx: WorkerContext
    ) -> FeatureData:
        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            if a is None:
                return None
            # Arrays from Ray's object store are read-only; torch wants writable memory.
            writable = np.require(a, dtype=np.float32, requirements="W")
            return torch.as_tensor(writable, device=ctx.device)

        return cls(
            base=tensor(features.base),
            augmented=tensor(features.augmented) if config.features.augment == "images" else None,
            rotated=tensor(features.rotated),
            batch_size=config.trainer.batch_size,
            ctx=ctx,
            noise_std=config.features.noise_std,
            dropout=config.features.feature_dropout,
            seed=config.trainer.seed * 7919 + ctx.rank,
        )

    @property
    def n_rows(self) -> int:
        return self.base.shape[0]

    @property
    def has_rotations(self) -> bool:
        return self.rotated_features is not None

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        return self.base[index]

    def augmented_views(self, index: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        """Distinct cached augmented copies when there are enough, each then perturbed by
        feature noise / dropout if configured."""
        views = []
        if self.augmented is not None:
            n_copies = self.augmented.shape[1]
            first = torch.randint(n_copies, (len(index),), device=index.device)
            for v in range(n_views):
                copy = (first + v) % n_copies
                views.append(self.augmented[index, copy])
        else:
            views = [self.base[index] for _ in range(n_views)]
        return [self._perturb(v) for v in views]

    def rotated(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.rotated_features[index].reshape(-1, self.rotated_features.shape[2])
        y = torch.arange(4, device=x.device).repeat(len(index))
        return x, y

    @torch.no_grad()
    def encoder_features(self, model: nn.Module) -> torch.Tensor:
        return self.base

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        if self.dropout > 0:
            x = nn.functional.dropout(x, self.dropout, training=True)
        return x


class Objective:
    """Base of DivClust, MMDC and ICBPL. Worker side: ``build_model``, ``setup``,
    ``train_epoch``, ``finish``, ``checkpoint_state``; driver side: ``load_checkpoint_state``,
    ``predict``, ``report``."""

    name = "objective"

    def __init__(self, config: DeepConfig, n_clusters: int, in_dim: int) -> None:
        self.config = config
        self.n_clusters = n_clusters
        self.in_dim = in_dim

    # ---- worker side

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    # fp16 autocast needs its gradients scaled (set by the training loop; None otherwise)
    scaler: torch.amp.GradScaler | None = None

    def setup(self, data: TrainData, ctx: WorkerContext) -> None:
        self.data, self.ctx = data, ctx

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        step(optimizer, loss, self.scaler)

    def train_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int
    ) -> dict[str, float]:
        """One epoch; returns at least ``objective`` (the quantity the method minimises)."""
        raise NotImplementedError

    def finish(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> Iterator[dict[str, float]]:
        """Stages after the main epochs (MMDC's refinement); yields one dict per extra epoch."""
        return iter(())

    def checkpoint_state(self) -> dict[str, Any]:
        """Training state the driver needs besides the weights (torch-saveable)."""
        return {}

    # ---- driver side

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.state = state

    @torch.no_grad()
    def predict(self, model: nn.Module, features: FrozenFeatures) -> np.ndarray:
        raise NotImplementedError

    @torch.no_grad()
    def forward_plain(self, model: nn.Module, features: FrozenFeatures) -> torch.Tensor:
        """The model (unwrapped, in eval mode) over every plain row, in chunks."""
        return batched_forward(unwrap(model).eval(), torch.as_tensor(features.base))

    def report(
        self,
        model: nn.Module,
        train: FrozenFeatures,
        holdout: FrozenFeatures | None,
        history: list[dict[str, float]],
        score: Callable[[str, np.ndarray], dict[str, float] | None] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Final labels per split (``{"train": ..., "holdout": ...}``) and method reports.

        ``score(split, labels)`` returns external scores against that split's ground truth
        (None without labels), for reports that score intermediate labellings.
        """
        labels = {"train": self.predict(model, train)}
        if holdout is not None and len(holdout):
            labels["holdout"] = self.predict(model, holdout)
        return labels, {}


def step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One optimizer step; with a (fp16) gradient scaler, scaled as AMP needs."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def batched_forward(fn, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """``fn`` over ``x`` in chunks (inference on all rows without a memory spike)."""
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])
