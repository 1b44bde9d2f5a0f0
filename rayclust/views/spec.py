"""What a view is: a backbone plus its weights, identified by a stable key.

Interface (other modules rely on these names):
- ViewSpec: small, picklable description of a view; safe to send to Ray actors.
- ViewSpec.key(): stable hash of everything that changes the features (arch, weights
  identity, preprocessing); the FeatureStore caches by it.
- View: a built view (model in eval mode returning pooled features, transform, feature_dim).
- build_view(spec) -> View: builds the model; called inside extraction actors
  (defined in ``rayclust.views.registry``, exported from ``rayclust.views``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ViewSpec:
    name: str  # registry name the user typed, e.g. "efficientnet_lite0"
    arch: str  # timm architecture, e.g. "tf_efficientnet_lite0"
    weights: str  # weight source name: "effnet-lite-package" | "timm-hub" | "checkpoint" | "random"
    checkpoint: str | None = None  # path for weights="checkpoint"
    weights_id: str = ""  # identity of the weights (package version, file hash); part of the key
    seed: int = 0  # only for weights="random"

    def __post_init__(self) -> None:
        if (self.weights == "checkpoint") != (self.checkpoint is not None):
            raise ValueError(
                f"ViewSpec {self.name!r}: checkpoint={self.checkpoint!r} is only valid, and "
                f"then required, with weights='checkpoint' (got weights={self.weights!r})"
            )

    def key(self) -> str:
        # With a weights_id (a content hash) the checkpoint path is left out: the same file
        # elsewhere gives the same features. timm's version is in: it decides architecture
        # details and transforms.
        import timm

        payload = asdict(self) | {"name": None, "timm": timm.__version__}
        if self.weights_id:
            payload["checkpoint"] = None
        data = json.dumps(payload, sort_keys=True)
        return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


@dataclass
class View:
    spec: ViewSpec
    model: torch.nn.Module
    transform: Callable  # PIL image -> CHW float tensor, timm's eval transform for the model
    feature_dim: int
    data_config: dict[str, Any] = field(default_factory=dict)  # timm: input_size, mean, std, ...

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Stack transformed PIL images into one NCHW batch (on the CPU)."""
        return torch.stack([self.transform(image) for image in images])

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Pooled float32 features, shape (n, feature_dim), for a preprocessed batch."""
        out = self.model(batch.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> features; the simple path for small batches and tests."""
        return self.embed(self.preprocess(images))
