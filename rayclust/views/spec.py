"""What a view is: a backbone plus its weights, identified by a stable key.

Interface (other modules rely on these names):
- ViewSpec: small, picklable description of a view; safe to send to Ray actors.
- ViewSpec.key(): stable hash of everything that changes the features (arch, weights
  identity, preprocessing); the FeatureStore caches by it.
- View: a built view (model in eval mode returning pooled features, transform, feature_dim).
- build_view(spec) -> View: builds the model; called inside extraction actors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ViewSpec:
    name: str  # registry name the user typed, e.g. "efficientnet_lite0"
    arch: str  # timm architecture, e.g. "tf_efficientnet_lite0"
    weights: str  # weight source name: "effnet-lite-package" | "timm-hub" | "checkpoint" | "random"
    checkpoint: str | None = None  # path for weights="checkpoint"
    weights_id: str = ""  # identity of the weights (package version, file hash); part of the key
    seed: int = 0  # only for weights="random"

    def key(self) -> str:
        payload = json.dumps(asdict(self) | {"name": None}, sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


@dataclass
class View:
    spec: ViewSpec
    model: torch.nn.Module
    transform: Callable
    feature_dim: int
