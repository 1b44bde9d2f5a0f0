"""Frozen features for the deep heads: one row per image, plus the same image seen through
random augmentations and at four rotations, all through one encoder, cached on disk.

Why features of augmented / rotated *images*: the objectives need a second view of each sample
(CC and ICBPL contrast an image with its augmentation; MMDC fits the augmented image to the
target) and MMDC's auxiliary task predicts the rotation of an image. With a frozen backbone
these are computed once per image (``n_augmented`` copies, 4 rotations) and cached, so
training epochs touch only small arrays. ``features.augment=noise`` skips the extra
extraction and perturbs features instead (Gaussian noise / dropout at every step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rayclust.deep.config import DeepFeaturesConfig
from rayclust.deep.data import ImageSource

log = logging.getLogger(__name__)

ROTATIONS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
)
MAX_SIDE_BEFORE_AUGMENT = 320  # views see ~224 px; augmenting a 100 MP image would waste minutes


@dataclass
class FrozenFeatures:
    base: np.ndarray  # (n, d) float32: each image as is
    augmented: np.ndarray | None  # (n, a, d): a randomly augmented copies of each image
    rotated: np.ndarray | None  # (n, 4, d): the image rotated by 0, 90, 180, 270 degrees
    labels: np.ndarray | None  # (n,) ground-truth classes, for evaluation only
    names: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return self.base.shape[0]

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    def subset(self, index: np.ndarray) -> FrozenFeatures:
        index = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            base=self.base[index],
            augmented=None if self.augmented is None else self.augmented[index],
            rotated=None if self.rotated is None else self.rotated[index],
            labels=None if self.labels is None else self.labels[index],
            names=[self.names[i] for i in index],
        )

    def standardized(self, mean: np.ndarray, std: np.ndarray) -> FrozenFeatures:
        """Every array z-scored with the same per-feature mean and std (from training rows)."""

        def scale(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else ((a - mean) / std).astype(np.float32)

        return replace(
            self,
            base=scale(self.base),
            augmented=scale(self.augmented),
            rotated=scale(self.rotated),
        )


def build_augmentation(config: DeepFeaturesConfig) -> Callable[[Image.Image], Image.Image]:
    """The random image transformation ``g`` (SimCLR/CC-style), applied before the encoder.

    Works on PIL images (frozen extraction) and on uint8 (3, H, W) tensors (fine-tuning)."""
    from torchvision import transforms as T

    steps: list[Callable] = []
    if "crop" in config.augmentations:
        steps.append(_RandomResizedCropKeepSize(config.crop_scale))
    if "flip" in config.augmentations:
        steps.append(T.RandomHorizontalFlip())
    if "color" in config.augmentations:
        steps.append(T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
    if "grayscale" in config.augmentations:
        steps.append(T.RandomGrayscale(p=0.2))
    if "blur" in config.augmentations:
        steps.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose(steps)


class _RandomResizedCropKeepSize:
    """A random crop of at least ``min_scale`` of the area, resized back to the image's size."""

    def __init__(self, min_scale: float) -> None:
        self.min_scale = min_scale

    def __call__(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        from torchvision import transforms as T

        # PIL images (frozen extraction) or (3, H, W) tensors (fine-tuning, on the device)
        size = tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else (img.height, img.width)
        crop = T.RandomResizedCrop(size, scale=(self.min_scale, 1.0), antialias=True)
        return crop(img)


class _PixelEncoder:
    """The image itself as features: resized, optionally gray, flattened to [0, 1] values."""

    def __init__(self, size: int, grayscale: bool) -> None:
        self.size, self.grayscale = size, grayscale
        self.key = f"pixels-{size}-{'L' if grayscale else 'RGB'}"

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        rows = []
        for img in images:
            img = img.convert("L") if self.grayscale else img.convert("RGB")
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            rows.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        return np.stack(rows)


class _ViewEncoder:
    """A rayclust view's pooled features (the model is built on first use only)."""

    def __init__(self, name: str, batch_size: int) -> None:
        from rayclust.views import get_view_spec

        self.spec = get_view_spec(name)
        self.key = f"view-{self.spec.key()}"
        self.batch_size = batch_size
        self._view = None
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> np.ndarray:
        if self._view is None:
            from rayclust.views import build_view

            self._view = build_view(self.spec, device=self._device)
            log.info("deep features: view %s on %s", self.spec.name, self._device)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            x = torch.stack([self._view.transform(img) for img in chunk]).to(self._device)
            out.append(self._view.model(x).float().cpu().numpy())
        return np.concatenate(out)


def _encoder(config: DeepFeaturesConfig) -> _PixelEncoder | _ViewEncoder:
    if config.view == "pixels":
        return _PixelEncoder(config.image_size, config.grayscale)
    return _ViewEncoder(config.view, config.batch_size)


def _cache_dir(config: DeepFeaturesConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    env = os.environ.get("RAYCLUST_CACHE_DIR")
    return Path(env) / "deep" if env else Path.home() / ".cache" / "rayclust" / "deep"


def _shrink(img: Image.Image) -> Image.Image:
    if min(img.size) > MAX_SIDE_BEFORE_AUGMENT:
        img = img.copy()
        img.thumbnail((MAX_SIDE_BEFORE_AUGMENT * 4, MAX_SIDE_BEFORE_AUGMENT), Image.Resampling.BOX)
    return img


def extract_frozen_features(
    source: ImageSource,
    config: DeepFeaturesConfig,
    rotations: bool = False,
    seed: int = 0,
) -> FrozenFeatures:
    """Features of every image, its augmented copies and (optionally) its rotations.

    Cached under ``features.cache_dir`` by (collection, encoder, augmentation settings, seed);
    a second call with the same settings reads the cache. Images that fail to decode are
    dropped and listed in ``source.skipped``.
    """
    encoder = _encoder(config)
    n_aug = config.n_augmented if config.augment == "images" else 0
    settings = {
        "source": source.identity,
        "n": len(source),
        "encoder": encoder.key,
        "n_augmented": n_aug,
        "augmentations": sorted(config.augmentations) if n_aug else [],
        "crop_scale": config.crop_scale if n_aug else None,
        "rotations": rotations,
        "seed": seed,
    }
    key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=10)
    path = _cache_dir(config) / f"{key.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as cached:
            arrays = {k: cached[k] for k in cached.files}
        log.info("deep features: read %s", path)
    else:
        arrays = _extract(source, encoder, config, n_aug, rotations, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, **arrays)
        partial.replace(path)  # atomic: a reader never sees half a file
    kept = arrays["kept"]
    for i in np.flatnonzero(~kept):
        source.skipped.append((source.names[i], "cannot decode"))
    index = np.flatnonzero(kept)
    return FrozenFeatures(
        base=arrays["base"],
        augmented=arrays.get("augmented"),
        rotated=arrays.get("rotated"),
        labels=None if source.labels is None else source.labels[index],
        names=[source.names[i] for i in index],
        class_names=source.class_names,
    )


def _extract(
    source: ImageSource,
    encoder: _PixelEncoder | _ViewEncoder,
    config: DeepFeaturesConfig,
    n_aug: int,
    rotations: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    from rayclust.images import ImageDecodeError

    augment = build_augmentation(config) if n_aug else None
    n_variants = 1 + n_aug + (3 if rotations else 0)
    kept = np.ones(len(source), dtype=bool)
    rows: list[np.ndarray] = []
    bar = tqdm(
        total=len(source),
        desc=f"features {encoder.key}",
        disable=not sys.stderr.isatty(),
        unit="img",
    )
    with torch.random.fork_rng(devices=[]):
        for start in range(0, len(source), config.batch_size):
            stop = min(start + config.batch_size, len(source))
            variants: list[Image.Image] = []
            for i in range(start, stop):
                try:
                    img = _shrink(source.load(i))
                except ImageDecodeError as exc:
                    log.warning("deep features: skipping %s: %s", source.names[i], exc)
                    kept[i] = False
                    continue
                variants.append(img)
                if augment is not None:
                    # Seeded per image: the same copies come back whatever the batching.
                    torch.manual_seed(seed * 1_000_003 + i)
                    variants.extend(augment(img) for _ in range(n_aug))
                if rotations:
                    variants.extend(img.transpose(r) for r in ROTATIONS[1:])
            if variants:
                encoded = encoder.encode(variants)
                rows.append(encoded.reshape(-1, n_variants, encoded.shape[1]))
            bar.update(stop - start)
            if not sys.stderr.isatty() and (start // config.batch_size) % 5 == 4:
                log.info("deep features: %d/%d images", stop, len(source))
    bar.close()
    if not rows:
        raise ValueError(f"none of the {len(source)} images could be decoded")
    stacked = np.concatenate(rows).astype(np.float32)
    arrays = {"base": stacked[:, 0], "kept": kept}
    if n_aug:
        arrays["augmented"] = stacked[:, 1 : 1 + n_aug]
    if rotations:
        arrays["rotated"] = np.concatenate([stacked[:, :1], stacked[:, 1 + n_aug :]], axis=1)
    return arrays
