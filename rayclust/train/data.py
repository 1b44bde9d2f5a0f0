"""Class splits of a labelled image folder, and the image batches the training loop eats.

The driver scans the collection once (``load_splits``) and sends each worker plain lists of
paths and class ids; workers decode lazily and memoise each image at training resolution,
so an image decoded for one episode is not decoded again in the next.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rayclust.config import ConfigError
from rayclust.images import ImageSet, decode_image


@dataclass
class LabeledImages:
    """Paths with integer class ids; ``class_names[i]`` is the name of class id ``i``."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(
                f"len(paths)={len(self.paths)} should equal len(labels)={len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}


def load_splits(
    source: str,
    splits: dict[str, Sequence[str]],
    max_pixels: int | None = None,
) -> dict[str, LabeledImages]:
    """Scan ``source`` (class folders) and return the images of each named class split.

    Raises ConfigError naming any class that has no images, with the classes that exist.
    """
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    image_set = ImageSet.from_source(source, labels_from_folders=True, **kwargs)
    by_class: dict[str, list[str]] = {}
    for record in image_set.records:
        if record.label is not None:
            by_class.setdefault(record.label, []).append(record.path)
    available = Counter({name: len(paths) for name, paths in by_class.items()})
    result = {}
    for split, class_names in splits.items():
        missing = [name for name in class_names if name not in by_class]
        if missing:
            listing = ", ".join(f"{name} ({n})" for name, n in sorted(available.items()))
            raise ConfigError(
                f"data.{split} names {missing}, not found in {source}; classes there "
                f"(images): {listing}"
            )
        paths, labels = [], []
        for class_id, name in enumerate(class_names):
            paths.extend(sorted(by_class[name]))
            labels.extend([class_id] * len(by_class[name]))
        result[split] = LabeledImages(paths, np.asarray(labels), list(class_names))
    return result


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(interpolation: str) -> Image.Resampling:
    """The PIL filter for a timm interpolation name (bicubic when unknown)."""
    return _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)


def square_uint8(
    image: Image.Image, image_size: int, resize_to: int, resample: Image.Resampling
) -> torch.Tensor:
    """timm's evaluation crop as a (3, size, size) uint8 tensor: the short side resized to
    ``resize_to`` (``size / crop_pct``), then the centre ``image_size`` square."""
    width, height = image.size
    scale = resize_to / min(width, height)
    new_size = (
        max(image_size, round(width * scale)),
        max(image_size, round(height * scale)),
    )
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize(new_size, resample)
    left = (new_size[0] - image_size) // 2
    top = (new_size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8).copy()  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageBatcher:
    """Rows of a LabeledImages as normalised float batches at one square resolution.

    Preprocessing mirrors timm's evaluation transform (resize the short side to
    ``size / crop_pct``, centre crop ``size``) so training sees what extraction will see.
    Decoded images are kept as uint8 (3 x size x size bytes each).
    """

    def __init__(
        self,
        paths: Sequence[str],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        max_pixels: int | None = None,
    ) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct} should be in (0, 1]")
        self.paths = list(paths)
        self.image_size = image_size
        self.resize_to = int(math.floor(image_size / crop_pct))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.resample = resample_filter(interpolation)
        self.max_pixels = max_pixels
        self._cache: dict[int, torch.Tensor] = {}

    def _load(self, row: int) -> torch.Tensor:
        cached = self._cache.get(row)
        if cached is None:
            kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            image = decode_image(self.paths[row], **kwargs)
            cached = self._square_uint8(image)
            self._cache[row] = cached
        return cached

    def _square_uint8(self, image: Image.Image) -> torch.Tensor:
        return square_uint8(image, self.image_size, self.resize_to, self.resample)

    def batch(self, rows: Sequence[int], flip: torch.Generator | None = None) -> torch.Tensor:
        """Float batch (len(rows), 3, size, size); ``flip``: mirror each image with p=0.5."""
        images = torch.stack([self._load(int(row)) for row in rows]).float().div_(255.0)
        if flip is not None:
            mirrored = torch.rand(len(rows), generator=flip) < 0.5
            images[mirrored] = images[mirrored].flip(-1)
        return (images - self.mean) / self.std
