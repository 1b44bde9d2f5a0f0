"""What a view is: a backbone plus its weights, identified by a stable key.

Interface (other modules rely on these names):
- ViewSpec: small, picklable description of a view; safe to send to Ray actors.
- ViewSpec.key(): stable hash of everything that changes the features (arch, weights
  identity, preprocessing, forward precision, decode rule); the FeatureStore caches by it.
- View: a built view (model in eval mode returning pooled features, transform, feature_dim).
- build_view(spec) -> View: builds the model; called inside extraction actors
  (defined in ``rayclust.views.registry``, exported from ``rayclust.views``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rayclust.views.pooling import POOLS

PRECISIONS = ("fp32", "bf16", "fp16")
# Reduced-scale decode, version 1: each view's image is decoded with JPEG DCT scaling and
# box-reduced (rayclust.images.decode_variants) so that its shortest side stays >= what the
# view's eval transform resizes to (``View.decode_size``). Bump when the rule changes.
DRAFT_DECODE = "draft-v1"
DECODES = ("full", DRAFT_DECODE)


@dataclass(frozen=True)
class ViewSpec:
    name: str  # registry name the user typed, e.g. "efficientnet_lite0"
    arch: str  # timm architecture, e.g. "tf_efficientnet_lite0"
    weights: str  # weight source name: "effnet-lite-package" | "timm-hub" | "checkpoint" | "random"
    checkpoint: str | None = None  # path for weights="checkpoint"
    weights_id: str = ""  # identity of the weights (package version, file hash); part of the key
    seed: int = 0  # only for weights="random"
    # How the features are computed; both are part of the key when not the default.
    precision: str = "fp32"  # forward pass: "fp32", or autocast to "bf16" / "fp16"
    decode: str = "full"  # "full": every pixel decoded; DRAFT_DECODE: reduced-scale decode
    # "default": the model's own pooled output; "gem-multilayer": rayclust.views.pooling
    pool: str = "default"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"ViewSpec {self.name!r}: precision={self.precision!r} should be one of "
                f"{', '.join(PRECISIONS)}"
            )
        if self.decode not in DECODES:
            raise ValueError(
                f"ViewSpec {self.name!r}: decode={self.decode!r} should be one of "
                f"{', '.join(DECODES)}"
            )
        if self.pool not in POOLS:
            raise ValueError(
                f"ViewSpec {self.name!r}: pool={self.pool!r} should be one of {', '.join(POOLS)}"
            )
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
        # The defaults are left out, so fp32 / full-decode keys stay those written before
        # these fields existed.
        for name, default in (("precision", "fp32"), ("decode", "full"), ("pool", "default")):
            if payload[name] == default:
                del payload[name]
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

    @property
    def decode_size(self) -> int:
        """The shortest side the eval transform resizes an image to (timm: input size /
        crop_pct): a decode at reduced scale keeps at least this many pixels."""
        _, height, width = self.data_config.get("input_size", (3, 224, 224))
        crop_pct = self.data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
        return max(math.floor(height / crop_pct), math.floor(width / crop_pct), 1)

    @property
    def transform_key(self) -> str:
        """Equal for views whose eval transforms are equal (they may share one tensor)."""
        return json.dumps(self.data_config, sort_keys=True, default=str)

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
