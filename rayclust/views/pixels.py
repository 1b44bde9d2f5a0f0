"""A raw-pixel view: each image shrunk to a small RGB grid and flattened.

Not every collection suits ImageNet features: on rendered digits, K-means on PCA-reduced
pixels reaches ARI 0.70 where EfficientNet-Lite features reach 0.13-0.19. A pixel view is
the cheap baseline a multi-view ensemble should be compared with (and can lean on).

It plugs into the same machinery as the timm views, so ``get_view_spec("pixels")``,
``build_view``, ``extract_views`` and ``FeatureStore`` need no special case:

- the weight source ``"pixels"`` (no weights at all) builds a :class:`PixelGrid` module;
- the architecture name carries the grid size (``pixels_32``), so the cache key changes with
  the size, and the weight id names the preprocessing version;
- the module carries a timm-style ``pretrained_cfg`` (input size, ``box`` interpolation,
  ``squash`` resize, mean 0 / std 1), so timm's own eval transform resizes the whole image
  to the grid (area averaging, aspect ratio not kept, nothing cropped) and turns it into a
  tensor in [0, 1]. The forward pass only flattens.

PCA, if wanted, happens in clustering (``clustering.pca_dim``), not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from rayclust.views.spec import ViewSpec

PIXEL_WEIGHTS = "pixels"
PIXEL_ARCH_PREFIX = "pixels_"
# Bump when the preprocessing changes, so cached features of the old version are not reused.
PIXEL_PREPROCESSING_VERSION = 1
MIN_GRID, MAX_GRID = 4, 256


def pixel_arch(size: int) -> str:
    """Architecture name of a ``size`` x ``size`` RGB grid, e.g. ``pixels_32``."""
    _check_grid_size(size)
    return f"{PIXEL_ARCH_PREFIX}{size}"


def grid_size(arch: str) -> int:
    """The grid size named by a pixel architecture (``pixels_32`` -> 32)."""
    match = re.fullmatch(rf"{PIXEL_ARCH_PREFIX}(\d+)", arch)
    if match is None:
        raise ValueError(
            f"arch={arch!r} is not a pixel grid; expected {PIXEL_ARCH_PREFIX}<size>, "
            f"e.g. {PIXEL_ARCH_PREFIX}32"
        )
    size = int(match.group(1))
    _check_grid_size(size)
    return size


def _check_grid_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"grid size={size!r} should be an int")
    if not MIN_GRID <= size <= MAX_GRID:
        raise ValueError(f"grid size={size} should be in [{MIN_GRID}, {MAX_GRID}]")


class PixelGrid(torch.nn.Module):
    """Flattens an ``(n, 3, size, size)`` batch into ``(n, 3 * size * size)`` features.

    Holds no weights. It has one empty, frozen parameter only because code that asks a model
    for its device does so through ``next(model.parameters())``; it adds nothing to the
    features and moves with ``.to(device)`` like any parameter.
    """

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        _check_grid_size(size)
        self.size = size
        self.num_features = 3 * size * size
        self._device_anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        # Read by timm's resolve_model_data_config -> create_transform in build_view.
        self.pretrained_cfg = {
            "input_size": (3, size, size),
            "interpolation": "box",  # area average: the right filter for shrinking
            "crop_pct": 1.0,
            "crop_mode": "squash",  # whole image, no crop (stamps are not square)
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "architecture": pixel_arch(size),
        }

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        expected = (3, self.size, self.size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"batch shape {tuple(batch.shape)} should be (n, {', '.join(map(str, expected))})"
            )
        return batch.flatten(1).float()


@dataclass(frozen=True)
class PixelSource:
    """Weight source ``"pixels"``: no weights, only the grid size (in the arch) matters."""

    access: ClassVar[str] = "offline"

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str:
        if checkpoint is not None:
            raise ValueError(f"pixel views take no checkpoint; got checkpoint={checkpoint!r}")
        return f"pixels:v{PIXEL_PREPROCESSING_VERSION}:{grid_size(arch)}:box-squash"

    def create_model(self, spec: ViewSpec) -> torch.nn.Module:
        return PixelGrid(grid_size(spec.arch))

    def check_available(self, spec: ViewSpec) -> None:
        return None  # nothing to fetch


__all__ = [
    "PIXEL_WEIGHTS",
    "PixelGrid",
    "PixelSource",
    "grid_size",
    "pixel_arch",
]
