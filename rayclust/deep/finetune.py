"""Full-backbone training (``features.mode=finetune``): the view's backbone trains together
with the objective's head, on the images.

- Images are decoded once on the driver at the training resolution (timm's evaluation crop
  of the view, as uint8; ``features.train_size`` overrides the view's own size) and cached
  under the features' cache root, keyed by the images' content ids; the workers get them
  through Ray's object store.
- Every step draws fresh augmentations (``features.augmentations``, the same transform the
  frozen path applies once per image, here on tensors on the worker's device); MMDC's
  rotations are ``torch.rot90``.
- The model is ``BackboneHead``: backbone (under autocast on CUDA: bf16, or fp16 with a
  gradient scaler; ``rayclust.train.runtime.resolve_precision``) -> fp32 features -> the
  objective's own head. The objectives train it
  through the same ``TrainData`` interface as a head on frozen features, unchanged.
- After training the driver runs the trained backbone once over the images (plain, two
  augmented copies, four rotations) and hands the head those features, so prediction and
  the method reports are the frozen path's.

Backbone, preprocessing and stage freezing come from ``rayclust.train.model`` (the same code
``rayclust train`` fine-tunes with); the exported backbone is a view, ``arch@file``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rayclust.deep.config import DeepConfig
from rayclust.deep.data import ImageSource
from rayclust.deep.features import (
    FrozenFeatures,
    LabelledRows,
    build_augmentation,
    feature_cache_root,
)
from rayclust.deep.objective import TrainData, plan_batches, unwrap
from rayclust.train.model import Backbone, build_backbone, freeze_stages, set_train_mode
from rayclust.train.runtime import Precision, WorkerContext

log = logging.getLogger(__name__)

N_ROTATIONS = 4
DRIVER_AUGMENTED_COPIES = 2  # what DivClust's head selection needs after training
DECODED_IMAGES_DIR = "deep-decoded-images"  # under the cache root, beside the feature stores


@dataclass
class ImageArrays(LabelledRows):
    """Decoded images at one square training resolution, for the workers."""

    row_arrays = ("pixels",)

    pixels: np.ndarray  # (n, 3, s, s) uint8
    labels: np.ndarray | None  # ground-truth classes, for evaluation only
    names: list[str]
    class_names: list[str]

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]


class BackboneHead(nn.Module):
    """Images -> backbone (autocast on CUDA) -> fp32 features -> an objective's head.

    ``forward`` passes extra arguments to the head (MMDC's ``task="rotation"``), so the
    objectives call it exactly as they call their head on frozen features.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, amp_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.amp_dtype = amp_dtype

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with Precision(self.amp_dtype).autocast(images.device):
            out = self.backbone(images)
        return out.float()  # losses, softmaxes and the MMD stay in fp32

    def forward(self, images: torch.Tensor, *args, **kwargs):
        return self.head(self.features(images), *args, **kwargs)

    def train(self, mode: bool = True) -> BackboneHead:
        super().train(mode)
        set_train_mode(self.backbone, mode)  # frozen stages keep their batch-norm statistics
        return self


def load_backbone(config: DeepConfig) -> Backbone:
    """The view's backbone in training form, with ``features.freeze_stages`` frozen."""
    backbone = build_backbone(config.features.view)
    frozen = freeze_stages(backbone.model, config.features.freeze_stages)
    if frozen:
        log.info("finetune: %d backbone tensors frozen", len(frozen))
    return backbone


def training_size(config: DeepConfig, backbone: Backbone) -> int:
    return config.features.train_size or backbone.input_size


def decode_images(source: ImageSource, config: DeepConfig, backbone: Backbone) -> ImageArrays:
    """Every image of ``source`` as timm's centre crop at the training size (uint8), cached.

    Images that fail to decode are dropped and listed in ``source.skipped``.
    """
    from rayclust.images import ImageDecodeError
    from rayclust.train.data import resample_filter, square_uint8

    size = training_size(config, backbone)
    settings = {
        "images": hashlib.blake2b("\n".join(source.ids).encode(), digest_size=16).hexdigest(),
        "size": size,
        "crop_pct": backbone.crop_pct,
        "interpolation": backbone.interpolation,
    }
    key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=10)
    path = feature_cache_root(config.features) / DECODED_IMAGES_DIR / f"{key.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as cached:
            pixels, kept = cached["pixels"], cached["kept"]
        log.info("finetune: read decoded images %s", path)
    else:
        resize_to = int(np.floor(size / backbone.crop_pct))
        resample = resample_filter(backbone.interpolation)
        kept = np.ones(len(source), dtype=bool)
        rows = []
        for i in range(len(source)):
            try:
                image = source.load(i)
            except ImageDecodeError as exc:
                log.warning("finetune: skipping %s: %s", source.names[i], exc)
                kept[i] = False
                continue
            rows.append(square_uint8(image, size, resize_to, resample).numpy())
            if (i + 1) % 500 == 0:
                log.info("finetune: decoded %d/%d images", i + 1, len(source))
        if not rows:
            raise ValueError(f"none of the {len(source)} images could be decoded")
        pixels = np.stack(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, pixels=pixels, kept=kept)
        partial.replace(path)  # atomic: a reader never sees half a file
    for i in np.flatnonzero(~kept):
        source.skipped.append((source.names[i], "cannot decode"))
    index = np.flatnonzero(kept)
    return ImageArrays(
        pixels=pixels,
        labels=None if source.labels is None else source.labels[index],
        names=[source.names[i] for i in index],
        class_names=source.class_names,
    )


def rotations_of(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, s, s) -> (4n, 3, s, s): each image at 0, 90, 180 and 270 degrees, in that order."""
    turned = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(N_ROTATIONS)], 1)
    return turned.reshape(-1, *images.shape[1:])


class ImagePreprocessor:
    """uint8 images -> normalised float inputs, optionally augmented image by image."""

    def __init__(self, config: DeepConfig, backbone: Backbone, device: torch.device) -> None:
        self.mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
        self.augment = build_augmentation(config.features)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255.0) - self.mean) / self.std

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        # Image by image: each gets its own crop, flip and jitter (a batched transform
        # would apply one draw to the whole batch).
        return self.normalise(torch.stack([self.augment(img) for img in images]))


class ImageData(TrainData):
    """Training images for a backbone being fine-tuned, as uint8 on the worker's device."""

    trains_backbone = True

    def __init__(
        self,
        images: ImageArrays,
        config: DeepConfig,
        ctx: WorkerContext,
        preprocess: ImagePreprocessor,
        rotations: bool,
    ) -> None:
        # Arrays from Ray's object store are read-only; torch wants writable memory.
        pixels = np.require(images.pixels, dtype=np.uint8, requirements="W")
        self.pixels = torch.as_tensor(pixels).to(ctx.device)
        self.preprocess = preprocess
        self.rotations = rotations
        self.device = ctx.device
        self.shard, self.batch_size, self.steps_per_epoch = plan_batches(
            len(images), config.trainer.batch_size, ctx
        )
        self.seed = config.trainer.seed * 7919 + ctx.rank
        # Inference over all rows in chunks small enough for full-size images.
        self.inference_batch = max(16, min(256, config.trainer.batch_size))

    @property
    def n_rows(self) -> int:
        return self.pixels.shape[0]

    @property
    def has_rotations(self) -> bool:
        return self.rotations

    def plain(self, index: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalise(self.pixels[index])

    def augmented_views(self, index: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        batch = self.pixels[index]
        return [self.preprocess.augmented(batch) for _ in range(n_views)]

    def rotated(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess.normalise(rotations_of(self.pixels[index]))
        y = torch.arange(N_ROTATIONS, device=x.device).repeat(len(index))
        return x, y

    @torch.no_grad()
    def encoder_features(self, model: nn.Module) -> torch.Tensor:
        return self.forward_all(unwrap(model).features)


@torch.no_grad()
def encode_with_backbone(
    net: BackboneHead,
    images: ImageArrays,
    config: DeepConfig,
    backbone: Backbone,
    rotations: bool,
    seed: int,
    device: torch.device,
    batch_size: int = 64,
) -> FrozenFeatures:
    """The trained backbone's features of every image (plain, augmented copies, rotations),
    in the frozen path's form, for the head's prediction and reports."""
    net = net.to(device).eval()
    preprocess = ImagePreprocessor(config, backbone, device)
    base, augmented, rotated = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            chunk = torch.as_tensor(images.pixels[start : start + batch_size]).to(device)
            base.append(net.features(preprocess.normalise(chunk)).cpu())
            copies = [
                net.features(preprocess.augmented(chunk)).cpu()
                for _ in range(DRIVER_AUGMENTED_COPIES)
            ]
            augmented.append(torch.stack(copies, 1))
            if rotations:
                turned = net.features(preprocess.normalise(rotations_of(chunk))).cpu()
                rotated.append(turned.view(len(chunk), N_ROTATIONS, -1))
    return FrozenFeatures(
        base=torch.cat(base).numpy(),
        augmented=torch.cat(augmented).numpy(),
        rotated=torch.cat(rotated).numpy() if rotations else None,
        labels=images.labels,
        names=images.names,
        class_names=images.class_names,
    )


def save_trained_backbone(net: BackboneHead, backbone: Backbone, folder: Path) -> str:
    """Write the fine-tuned backbone as ``folder/backbone.safetensors``; returns its view name."""
    from rayclust.train.export import checkpoint_view_name, save_backbone

    path = save_backbone(net.backbone, folder / "backbone.safetensors", backbone.arch)
    return checkpoint_view_name(backbone.arch, path)
