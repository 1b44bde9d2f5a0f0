"""A fine-tuned backbone as a file any view can load: ``arch@/path/backbone.safetensors``.

The file holds the state dict of the timm model created with ``num_classes=0`` (no head),
so ``timm.create_model(arch, num_classes=0).load_state_dict(load_file(path))`` restores it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_backbone(
    model: torch.nn.Module,
    path: str | Path,
    arch: str,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model.state_dict()`` (CPU, contiguous) with ``arch`` in the file's metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"arch": arch, "format": "timm", **(metadata or {})})
    return path


def load_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def checkpoint_view_name(arch: str, path: str | Path) -> str:
    """The view name ``rayclust cluster --view`` accepts for a saved backbone."""
    return f"{arch}@{Path(path).resolve()}"
