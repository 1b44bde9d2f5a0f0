"""Frozen features for the deep heads: one row per image, plus the same image seen through
random augmentations and at four rotations, all through one view, cached in FeatureStores.

Why features of augmented / rotated *images*: the objectives need a second view of each sample
(CC and ICBPL contrast an image with its augmentation; MMDC fits the augmented image to the
target) and MMDC's auxiliary task predicts the rotation of an image. With a frozen backbone
these are computed once per image (``n_augmented`` copies, 4 rotations) and cached, so
training epochs touch only small arrays. ``features.augment=noise`` skips the extra
extraction and perturbs features instead (Gaussian noise / dropout at every step).

Where the features come from and go: the views stage. ``features.view`` resolves to a
ViewSpec (``pixels`` is the views' own pixel grid, at ``features.image_size``), the views'
public ``ViewEncoder`` encodes the images, and every row is cached in a ``FeatureStore`` by
the image's content id, under ``features.cache_dir`` (default: the views' feature cache):

- plain images: the view's own store (``spec.key()``), the very rows ``rayclust run`` caches
  for the same image, so either reuses the other's work;
- derived images are other stores, whose keys add the derivation to the view's key: the
  augmented copies (recipe, crop scale, seed: copies of another recipe or seed are never
  mistaken for these, nor for plain images) and the rotations (90, 180, 270 degrees; the
  0-degree row is the plain one). ``features.grayscale`` makes the pixel view read gray
  images: that too is a derivation, with a key of its own.

Augmented copies are seeded by (seed, content id), so an image gets the same copies in any
collection, batch or order. Images that fail to decode are recorded in the plain store (not
retried, as in the pipeline) and listed in ``source.skipped``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image

from rayclust.deep.config import DeepFeaturesConfig
from rayclust.deep.data import ImageSource
from rayclust.views import FeatureStore, ViewSpec

log = logging.getLogger(__name__)

ROTATIONS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
ROTATION_DEGREES = (90, 180, 270)
MAX_SIDE_BEFORE_AUGMENT = 320  # views see ~224 px; augmenting a 100 MP image would waste minutes
FLUSH_IMAGES = 1024  # images encoded between store writes: resumable, without tiny shards
PIXEL_VIEW = "pixels"  # features.view that takes its grid size from features.image_size

Rows = TypeVar("Rows", bound="LabelledRows")


class LabelledRows:
    """Base of the dataclasses the heads train on (frozen features, decoded images): arrays
    with one row per image, the images' names and ground-truth labels (evaluation only)."""

    row_arrays: ClassVar[tuple[str, ...]]  # the fields with one row per image
    labels: np.ndarray | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self: Rows, index: np.ndarray) -> Rows:
        """The rows ``index`` of every array (arrays that are None stay None)."""
        index = np.asarray(index, dtype=np.int64)
        cut = {}
        for name in (*self.row_arrays, "labels"):
            value = getattr(self, name)
            cut[name] = None if value is None else value[index]
        return replace(self, names=[self.names[i] for i in index], **cut)


@dataclass
class FrozenFeatures(LabelledRows):
    row_arrays = ("base", "augmented", "rotated")

    base: np.ndarray  # (n, d) float32: each image as is
    augmented: np.ndarray | None  # (n, a, d): a randomly augmented copies of each image
    rotated: np.ndarray | None  # (n, 4, d): the image rotated by 0, 90, 180, 270 degrees
    labels: np.ndarray | None  # (n,) ground-truth classes, for evaluation only
    names: list[str]
    class_names: list[str]

    @property
    def dim(self) -> int:
        return self.base.shape[1]

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
        steps.append(RandomResizedCropKeepSize(config.crop_scale))
    if "flip" in config.augmentations:
        steps.append(T.RandomHorizontalFlip())
    if "color" in config.augmentations:
        steps.append(T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
    if "grayscale" in config.augmentations:
        steps.append(T.RandomGrayscale(p=0.2))
    if "blur" in config.augmentations:
        steps.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose(steps)


class RandomResizedCropKeepSize:
    """A random crop of at least ``min_scale`` of the area, resized back to the image's size."""

    def __init__(self, min_scale: float) -> None:
        self.min_scale = min_scale

    def __call__(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        from torchvision import transforms as T

        # PIL images (frozen extraction) or (3, H, W) tensors (fine-tuning, on the device)
        size = tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else (img.height, img.width)
        crop = T.RandomResizedCrop(size, scale=(self.min_scale, 1.0), antialias=True)
        return crop(img)


# ----------------------------------------------------------------------------- the encoder


def feature_cache_root(config: DeepFeaturesConfig) -> Path:
    """Where deep caches: ``features.cache_dir``, else the views' feature cache (shared with
    the clustering pipeline)."""
    from rayclust.views.store import default_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def frozen_view_spec(config: DeepFeaturesConfig) -> ViewSpec:
    """``features.view`` as a ViewSpec; ``pixels`` is the views' pixel grid of
    ``features.image_size`` (``pixels<size>``, which the views' registry resolves)."""
    from rayclust.views import resolve_view

    if config.view != PIXEL_VIEW:
        return resolve_view(config.view)
    name = PIXEL_VIEW if config.image_size == 32 else f"{PIXEL_VIEW}{config.image_size}"
    return resolve_view(name)


def derived_key(base_key: str, derivation: dict[str, Any]) -> str:
    """The store key of features of derived images: the base key plus how they derive."""
    payload = json.dumps({"of": base_key, **derivation}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


class FrozenEncoder:
    """The frozen path's encoder: a view (built on first use: a cache hit never builds it),
    reading gray images when ``features.grayscale`` is set for the pixel view."""

    def __init__(self, config: DeepFeaturesConfig) -> None:
        self.spec = frozen_view_spec(config)
        self.batch_size = config.batch_size
        self.grayscale = config.grayscale and config.view == PIXEL_VIEW
        view_key = self.spec.key()
        self.key = derived_key(view_key, {"images": "grayscale"}) if self.grayscale else view_key
        self._encoder = None

    def describe(self) -> dict[str, Any]:
        """What the plain store holds, for people reading its meta.json."""
        return {**asdict(self.spec), "grayscale": self.grayscale}

    def prepare(self, image: Image.Image) -> Image.Image:
        return image.convert("L").convert("RGB") if self.grayscale else image

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        if self._encoder is None:
            from rayclust.train.runtime import choose_device
            from rayclust.views import ViewEncoder

            self._encoder = ViewEncoder(self.spec, device=choose_device(use_gpu=True))
            log.info("deep features: view %s on %s", self.spec.name, self._encoder.device)
        features = self._encoder.encode(images, batch_size=self.batch_size)
        if self.grayscale:
            # The pixel grid is (3, s, s), channel first; a gray image's channels are equal.
            side = features.shape[1] // 3
            features = np.ascontiguousarray(features[:, :side])
        return features


# ----------------------------------------------------------------------------- the variants


@dataclass
class _Variant:
    """One store of the extraction and how an image's rows in it are made."""

    store: FeatureStore
    suffixes: list[str]  # row ids are content id + suffix
    make: Callable[[Image.Image, str], list[Image.Image]]  # (decoded image, content id)

    def ids(self, content_id: str) -> list[str]:
        return [content_id + suffix for suffix in self.suffixes]

    def complete(self, content_id: str) -> bool:
        return all(row_id in self.store for row_id in self.ids(content_id))

    def rows(self, content_ids: list[str]) -> np.ndarray:
        """(n, len(suffixes), d) features of these images."""
        flat = self.store.get([row for c in content_ids for row in self.ids(c)])
        return flat.reshape(len(content_ids), len(self.suffixes), -1)


def _shrink(img: Image.Image) -> Image.Image:
    if min(img.size) > MAX_SIDE_BEFORE_AUGMENT:
        img = img.copy()
        img.thumbnail((MAX_SIDE_BEFORE_AUGMENT * 4, MAX_SIDE_BEFORE_AUGMENT), Image.Resampling.BOX)
    return img


def _image_seed(seed: int, content_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{content_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are < 2**63


def _derived_store(root: Path, base_key: str, derivation: dict[str, Any]) -> FeatureStore:
    return FeatureStore(
        root, derived_key(base_key, derivation), spec={"of": base_key, **derivation}
    )


def _variants(
    root: Path,
    encoder: FrozenEncoder,
    config: DeepFeaturesConfig,
    n_aug: int,
    rotations: bool,
    seed: int,
) -> dict[str, _Variant]:
    variants = {
        "base": _Variant(
            FeatureStore(root, encoder.key, spec=encoder.describe()), [""], lambda img, c: [img]
        )
    }
    if n_aug:
        augment = build_augmentation(config)
        recipe = {
            "images": "augmented",
            "augmentations": sorted(config.augmentations),
            "crop_scale": config.crop_scale,
            "max_side": MAX_SIDE_BEFORE_AUGMENT,
            "seed": seed,
        }

        def augmented(img: Image.Image, content_id: str) -> list[Image.Image]:
            small = _shrink(img)
            torch.manual_seed(_image_seed(seed, content_id))  # copy j is the same for any n_aug
            return [augment(small) for _ in range(n_aug)]

        store = _derived_store(root, encoder.key, recipe)
        variants["augmented"] = _Variant(store, [f"~aug{j}" for j in range(n_aug)], augmented)
    if rotations:
        recipe = {"images": "rotated", "degrees": list(ROTATION_DEGREES)}
        store = _derived_store(root, encoder.key, recipe)
        variants["rotated"] = _Variant(
            store,
            [f"~rot{d}" for d in ROTATION_DEGREES],
            lambda img, c: [img.transpose(r) for r in ROTATIONS],
        )
    return variants


def extract_frozen_features(
    source: ImageSource,
    config: DeepFeaturesConfig,
    rotations: bool = False,
    seed: int = 0,
) -> FrozenFeatures:
    """Features of every image, its augmented copies and (optionally) its rotations.

    Rows already in the stores are read, the others encoded and written (a second call with
    the same settings encodes nothing). Images that fail to decode are dropped and listed in
    ``source.skipped``.
    """
    encoder = FrozenEncoder(config)
    n_aug = config.n_augmented if config.augment == "images" else 0
    variants = _variants(feature_cache_root(config), encoder, config, n_aug, rotations, seed)
    plain = variants["base"].store
    known_failures = plain.failures()
    pending = [
        i
        for i, content_id in enumerate(source.ids)
        if content_id not in known_failures
        and not all(v.complete(content_id) for v in variants.values())
    ]
    if pending:
        _encode_missing(source, pending, encoder, variants, config.batch_size)
    else:
        log.info("deep features: all %d images read from %s", len(source), plain.path.parent)
    failures = plain.failures()
    index = [i for i, content_id in enumerate(source.ids) if content_id not in failures]
    for i in range(len(source)):
        if source.ids[i] in failures:
            source.skipped.append((source.names[i], failures[source.ids[i]]))
    if not index:
        raise ValueError(f"none of the {len(source)} images could be decoded")
    kept = [source.ids[i] for i in index]
    base = variants["base"].rows(kept)[:, 0]
    rotated = None
    if "rotated" in variants:
        rotated = np.concatenate([base[:, None], variants["rotated"].rows(kept)], axis=1)
    return FrozenFeatures(
        base=base,
        augmented=variants["augmented"].rows(kept) if "augmented" in variants else None,
        rotated=rotated,
        labels=None if source.labels is None else source.labels[np.asarray(index)],
        names=[source.names[i] for i in index],
        class_names=source.class_names,
    )


def _encode_missing(
    source: ImageSource,
    pending: list[int],
    encoder: FrozenEncoder,
    variants: dict[str, _Variant],
    batch_size: int,
) -> None:
    """Decode the pending images once, derive their missing variants, encode, store."""
    from tqdm import tqdm

    from rayclust.images import ImageDecodeError

    buffered: dict[str, tuple[list[str], list[np.ndarray]]] = {k: ([], []) for k in variants}
    failures: dict[str, str] = {}

    def flush() -> None:
        for name, (ids, rows) in buffered.items():
            if ids:
                variants[name].store.write(ids, np.concatenate(rows))
                ids.clear()
                rows.clear()
        variants["base"].store.record_failures(failures)

    bar = tqdm(
        total=len(pending), desc=f"features {encoder.spec.name}", disable=not sys.stderr.isatty()
    )
    since_flush = 0
    # Seeded augmentations must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        for start in range(0, len(pending), batch_size):
            images: list[Image.Image] = []
            owners: list[tuple[str, str]] = []  # (variant, row id) of each image
            for i in pending[start : start + batch_size]:
                content_id = source.ids[i]
                try:
                    image = source.load(i)
                except ImageDecodeError as exc:
                    log.warning("deep features: skipping %s: %s", source.names[i], exc)
                    failures[content_id] = str(exc)
                    continue
                for name, variant in variants.items():
                    if not variant.complete(content_id):
                        # Gray conversion last, as the view would see any image.
                        images.extend(encoder.prepare(x) for x in variant.make(image, content_id))
                        owners.extend((name, row) for row in variant.ids(content_id))
            if images:
                encoded = encoder.encode(images)
                for (name, row_id), row in zip(owners, encoded, strict=True):
                    buffered[name][0].append(row_id)
                    buffered[name][1].append(row[None])
            done = min(batch_size, len(pending) - start)
            bar.update(done)
            since_flush += done
            if since_flush >= FLUSH_IMAGES:
                flush()
                since_flush = 0
            if not sys.stderr.isatty() and (start // batch_size) % 5 == 4:
                log.info("deep features: %d/%d images", start + done, len(pending))
    bar.close()
    flush()


__all__ = [
    "FrozenEncoder",
    "FrozenFeatures",
    "LabelledRows",
    "RandomResizedCropKeepSize",
    "build_augmentation",
    "derived_key",
    "extract_frozen_features",
    "feature_cache_root",
    "frozen_view_spec",
]
