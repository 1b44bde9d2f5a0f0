"""Multi-layer pooled features of one forward pass: the ``<view>+gem`` variant.

``MultiLayerGeM(backbone)`` runs the backbone once through timm's ``forward_intermediates``
and returns, concatenated, the GeM-pooled (p=3) final feature map and the last
``STAGES`` stage outputs, each block L2-normalised, in that order: the first block is the
L2-normalised GeM of ``backbone.forward_features`` (what the plain view average-pools).
Later stages carry mid-level texture and shape the ImageNet head has partly discarded;
per-block normalisation keeps the wide head (1280 channels for EfficientNet-Lite0) from
drowning the narrower stages (112 and 320).

The pooling is part of the view's cache key (``ViewSpec.pool``).
"""

from __future__ import annotations

import torch

GEM_POOL = "gem-multilayer"
POOLS = ("default", GEM_POOL)
GEM_SUFFIX = "+gem"  # view name suffix that selects GEM_POOL
GEM_P = 3.0  # Radenovic et al.'s fixed exponent: between average (1) and max (inf) pooling
GEM_EPS = 1e-6
STAGES = 2  # stage outputs taken after the final map: stride 16 and 32 on most CNNs


def gem(feature_map: torch.Tensor, p: float = GEM_P, eps: float = GEM_EPS) -> torch.Tensor:
    """Generalised-mean pooling of an NCHW map -> (n, c). Activations are clamped at ``eps``
    as in Radenovic et al. (a fractional power of a negative is undefined)."""
    pooled = feature_map.float().clamp(min=eps).pow(p).mean(dim=(2, 3))
    return pooled.pow(1.0 / p)


class MultiLayerGeM(torch.nn.Module):
    """A backbone whose forward returns its multi-layer GeM features (see the module doc)."""

    def __init__(self, backbone: torch.nn.Module, stages: int = STAGES) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_intermediates"):
            raise ValueError(
                f"{type(backbone).__name__} has no forward_intermediates: the '{GEM_SUFFIX}' "
                "pooling needs a timm CNN backbone"
            )
        self.backbone = backbone
        self.stages = stages
        # timm's data config (read by build_view) is the backbone's
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})
        self.block_dims = self._probe_dims()
        self.num_features = sum(self.block_dims)

    def _maps(self, batch: torch.Tensor) -> list[torch.Tensor]:
        final, stages = self.backbone.forward_intermediates(batch, indices=self.stages)
        if final.ndim != 4:
            raise ValueError(
                f"{type(self.backbone).__name__} returns {final.ndim}-d final features, not a "
                f"feature map: the '{GEM_SUFFIX}' pooling needs a CNN backbone"
            )
        # ResNets' last stage is the final map itself: pooled once
        kept = [m for m in stages if m.shape != final.shape or not torch.equal(m, final)]
        return [final, *reversed(kept)]

    @torch.inference_mode()
    def _probe_dims(self) -> list[int]:
        was_training = self.backbone.training
        self.backbone.eval()
        size = self.pretrained_cfg.get("input_size", (3, 224, 224))
        maps = self._maps(torch.zeros(1, *size))
        self.backbone.train(was_training)
        return [int(m.shape[1]) for m in maps]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        blocks = [torch.nn.functional.normalize(gem(m), dim=1) for m in self._maps(batch)]
        return torch.cat(blocks, dim=1)


__all__ = ["GEM_POOL", "GEM_SUFFIX", "POOLS", "MultiLayerGeM", "gem"]
