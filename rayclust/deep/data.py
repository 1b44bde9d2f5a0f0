"""Image collections for the deep-clustering objectives: sklearn digits, a labelled folder,
or a torchvision dataset (CIFAR-10 / STL-10). Each is an ``ImageSource``: images loaded one
at a time by index, each with a content id (the key of its features in a ``FeatureStore``),
with ground-truth labels kept aside for evaluation only.

Folders are scanned by ``rayclust.images`` (``ImageSet.from_folder``: the same content ids,
decoding and skip reasons as the clustering pipeline, so both share cached features); the
in-memory datasets are not files, and their ids hash the pixels each image is made from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rayclust.deep.config import TORCHVISION_DATASETS, DeepDataConfig
from rayclust.images import content_id

DIGITS_RENDER_SIZE = 32  # digits are 8x8; upsampled so crops and views have pixels to work on


class DatasetUnavailableError(RuntimeError):
    """A dataset that is neither on disk nor downloadable here; the message says how to fix it."""


@dataclass
class ImageSource:
    names: list[str]  # one identifier per image (path, or dataset:index)
    ids: list[str]  # content id per image: the key of its features in a FeatureStore
    labels: np.ndarray | None  # integer class per image, or None when unlabelled
    class_names: list[str]
    load: Callable[[int], Image.Image]  # RGB image number i (may raise ImageDecodeError)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> ImageSource:
        index = np.asarray(index, dtype=np.int64)
        parent_load = self.load
        return ImageSource(
            names=[self.names[i] for i in index],
            ids=[self.ids[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            load=lambda i: parent_load(int(index[i])),
            skipped=self.skipped,
        )


def array_ids(pixels: np.ndarray, recipe: str) -> list[str]:
    """Content ids of in-memory images: each image's pixels (and how they become an image)."""
    prefix = f"{recipe}:{pixels.shape[1:]}:{pixels.dtype}:".encode()
    return [content_id(prefix + np.ascontiguousarray(p).tobytes()) for p in pixels]


def digits_source() -> ImageSource:
    """scikit-learn's bundled 1,797 handwritten digits (real scans, 10 classes), as RGB images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).round().astype(np.uint8)

    def load(i: int) -> Image.Image:
        small = Image.fromarray(pixels[i], mode="L")
        size = (DIGITS_RENDER_SIZE, DIGITS_RENDER_SIZE)
        return small.resize(size, Image.Resampling.BILINEAR).convert("RGB")

    return ImageSource(
        names=[f"digits:{i}" for i in range(len(pixels))],
        ids=array_ids(pixels, f"sklearn-digits-bilinear-{DIGITS_RENDER_SIZE}px"),
        labels=digits.target.astype(np.int64),
        class_names=[str(c) for c in range(10)],
        load=load,
    )


def folder_source(root: str | Path, max_pixels: int) -> ImageSource:
    """Images under ``root``; each first-level sub-folder is a class (deeper folders join it).

    Images decode in full, as the clustering pipeline decodes them: the plain features of a
    folder are then the very rows ``rayclust run`` caches for it, and either reuses the other's.
    """
    from rayclust.images import ImageSet, decode_image

    images = ImageSet.from_folder(
        root, labels_from_folders=True, max_pixels=max_pixels, progress=False
    )
    if len(images) == 0:
        raise DatasetUnavailableError(f"no usable images under {root}")
    paths = images.paths

    def load(i: int) -> Image.Image:
        return decode_image(paths[i], max_pixels=max_pixels)

    return ImageSource(
        names=paths,
        ids=images.image_ids,
        labels=images.label_codes() if images.has_labels else None,
        class_names=images.label_names,
        load=load,
        skipped=[(s.path, s.reason) for s in images.skipped],
    )


def torchvision_source(name: str, root: str | None, download: bool) -> ImageSource:
    """CIFAR-10 (60,000) or STL-10 labelled part (13,000): train and test splits together."""
    import torchvision

    root_path = Path(root or Path.home() / ".cache" / "rayclust" / "datasets").expanduser()
    try:
        if name == "cifar10":
            parts = [
                torchvision.datasets.CIFAR10(str(root_path), train=t, download=download)
                for t in (True, False)
            ]
            arrays = [np.asarray(p.data) for p in parts]
            targets = [np.asarray(p.targets) for p in parts]
            class_names = list(parts[0].classes)
        else:
            parts = [
                torchvision.datasets.STL10(str(root_path), split=s, download=download)
                for s in ("train", "test")
            ]
            arrays = [np.asarray(p.data).transpose(0, 2, 3, 1) for p in parts]  # NCHW -> NHWC
            targets = [np.asarray(p.labels) for p in parts]
            class_names = list(parts[0].classes)
    except (RuntimeError, OSError) as exc:
        raise DatasetUnavailableError(
            f"{name} is not under {root_path} and could not be downloaded ({exc}). "
            f"With a network set data.download=true; offline, copy the torchvision {name} "
            f"files into data.root, or use data.source=digits or a local image folder."
        ) from exc
    pixels = np.concatenate(arrays)
    labels = np.concatenate(targets).astype(np.int64)
    return ImageSource(
        names=[f"{name}:{i}" for i in range(len(pixels))],
        ids=array_ids(pixels, "rgb"),
        labels=labels,
        class_names=class_names,
        load=lambda i: Image.fromarray(pixels[i]).convert("RGB"),
    )


def load_image_source(config: DeepDataConfig) -> ImageSource:
    """The collection named by ``data.source``, cut to ``data.max_images`` if set."""
    if config.source == "digits":
        source = digits_source()
    elif config.source in TORCHVISION_DATASETS:
        source = torchvision_source(config.source, config.root, config.download)
    else:
        path = Path(config.source).expanduser()
        if not path.is_dir():
            raise DatasetUnavailableError(
                f"data.source={config.source!r} is not 'digits', one of "
                f"{', '.join(TORCHVISION_DATASETS)}, nor an existing folder"
            )
        source = folder_source(path, config.max_pixels)
    if config.max_images is not None and config.max_images < len(source):
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(len(source), size=config.max_images, replace=False))
        source = source.subset(keep)
    return source
