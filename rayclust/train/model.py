"""The network being fine-tuned: a view's timm backbone, optionally with a linear head.

Stages come from timm's own ``group_matcher(coarse=True)`` (stem, then block groups, the
last one holding the final block and the feature head), so freezing "the first n stages"
means the same thing for EfficientNets, ResNets and ViTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Backbone:
    model: nn.Module  # timm model with num_classes=0: images -> pooled features
    arch: str  # timm architecture name; the exported view is "arch@file.safetensors"
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    input_size: int = 224  # the view's own (square) input resolution


def build_backbone(view_name: str) -> Backbone:
    """Build the registered view ``view_name`` and return its backbone in training form.

    Normalisation, crop and interpolation come from the view's own data config, so the
    network is trained on inputs prepared the way extraction will prepare them.
    """
    from rayclust.views import build_view, get_view_spec

    spec = get_view_spec(view_name)
    view = build_view(spec)
    data_config = view.data_config
    return Backbone(
        model=view.model,
        arch=spec.arch,
        feature_dim=int(view.feature_dim),
        mean=tuple(float(m) for m in data_config["mean"]),
        std=tuple(float(s) for s in data_config["std"]),
        crop_pct=float(data_config.get("crop_pct", 0.875)),
        interpolation=str(data_config.get("interpolation", "bicubic")),
        input_size=int(data_config.get("input_size", (3, 224, 224))[-1]),
    )


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names of each stage, input side first."""
    from timm.models._manipulate import group_with_matcher

    if not hasattr(model, "group_matcher"):
        raise TypeError(
            f"{type(model).__name__} has no timm group_matcher, so its stages are unknown; "
            "use a timm backbone or set freeze_stages=0"
        )
    groups = group_with_matcher(
        model.named_parameters(), model.group_matcher(coarse=True), return_values=False
    )
    return [list(names) for _, names in sorted(groups.items())]


def freeze_stages(model: nn.Module, n_stages: int) -> list[str]:
    """Stop gradients to the first ``n_stages`` stages; returns the frozen parameter names.

    At least one stage must stay trainable, or there is nothing to fine-tune.
    """
    if n_stages < 0:
        raise ValueError(f"n_stages={n_stages} should be >= 0")
    if n_stages == 0:
        return []
    stages = backbone_stages(model)
    if n_stages >= len(stages):
        raise ValueError(
            f"freeze_stages={n_stages} should be < the {len(stages)} stages of "
            f"{type(model).__name__} (stem + block groups), so that some stage trains"
        )
    frozen = [name for stage in stages[:n_stages] for name in stage]
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, train: bool = True) -> nn.Module:
    """``model.train(train)``, but batch norms whose parameters are all frozen stay in eval.

    A frozen stage must compute what it computed before fine-tuning; updating its running
    statistics on small training batches would change it anyway.
    """
    model.train(train)
    if train:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
    return model


class FineTuneNet(nn.Module):
    """Backbone plus an optional linear head; forward gives logits with a head, else features."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_classes) if n_classes else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return features if self.head is None else self.head(features)
