"""Typed configuration of a deep-clustering run: every hyperparameter is a field, so a YAML
file, ``key=value`` overrides and Ray Tune search spaces all address the same names.

Load with ``rayclust.config.load_config(path, overrides, schema=DeepConfig)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rayclust.config import ConfigError, TrackingConfig, load_config

METHODS = ("divclust", "mmdc", "icbpl")
TORCHVISION_DATASETS = ("cifar10", "stl10")


@dataclass
class DeepDataConfig:
    # "digits" (scikit-learn's bundled 8x8 digits, rendered as images), "cifar10" / "stl10"
    # (torchvision; train and test splits together, as deep-clustering papers evaluate), or a
    # folder whose first-level sub-folders are the classes (e.g. data/tuxpaint).
    source: str = "digits"
    root: str | None = None  # torchvision datasets: their folder (None: ~/.cache/rayclust/datasets)
    download: bool = False  # torchvision datasets: fetch when missing (needs a network)
    max_images: int | None = None  # a random subset of this many images (None: all)
    holdout_fraction: float = 0.2  # share of images never trained on, scored separately
    max_pixels: int = 89_478_485  # larger images are skipped as decompression bombs
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction={self.holdout_fraction} should be in [0, 1)")
        if self.max_images is not None and self.max_images < 2:
            raise ConfigError(f"data.max_images={self.max_images} should be >= 2 or null")


@dataclass
class DeepFeaturesConfig:
    # "pixels": the image itself, resized to image_size and flattened (no network); any other
    # name is a rayclust view (efficientnet_lite0, test_tiny, ...) whose frozen features are used.
    view: str = "efficientnet_lite0"
    # "frozen": the view's backbone runs once per image (cached) and only the heads train:
    # fast on a CPU. "finetune": the backbone trains together with the heads on the images,
    # augmented afresh at every step, as the papers do (meant for a GPU; AMP on CUDA).
    mode: Literal["frozen", "finetune"] = "frozen"
    train_size: int | None = None  # finetune: input resolution (None: the view's own, e.g. 224)
    backbone_lr: float | None = None  # finetune: the backbone's learning rate (None: trainer.lr)
    freeze_stages: int = 0  # finetune: the first n stages (stem, block groups) stay frozen
    image_size: int = 32  # pixels view only
    grayscale: bool = False  # pixels view only
    # How the objectives get a second "augmented" sample of an image on frozen features:
    # "images" extracts n_augmented randomly augmented copies per image once (cached);
    # "noise" perturbs the features themselves (Gaussian noise + dropout) at every step.
    augment: Literal["images", "noise"] = "images"
    n_augmented: int = 2
    augmentations: list[str] = field(default_factory=lambda: ["crop", "flip", "color"])
    crop_scale: float = 0.5  # smallest area share kept by the random resized crop
    noise_std: float = 0.0  # feature noise, in units of each feature's standard deviation
    feature_dropout: float = 0.0
    # Features of the image rotated by 0/90/180/270 degrees (MMDC's rotation task).
    # None: extracted when the method needs them.
    rotations: bool | None = None
    standardize: bool = True  # z-score every feature with the training rows' mean and std
    batch_size: int = 64  # extraction batch
    cache_dir: str | None = None  # None: $RAYCLUST_CACHE_DIR/deep or ~/.cache/rayclust/deep

    def __post_init__(self) -> None:
        known = {"crop", "flip", "color", "grayscale", "blur"}
        unknown = sorted(set(self.augmentations) - known)
        if unknown:
            raise ConfigError(
                f"features.augmentations has unknown {unknown}; choose from {sorted(known)}"
            )
        if self.n_augmented < (2 if self.augment == "images" else 0):
            raise ConfigError(
                f"features.n_augmented={self.n_augmented} should be >= 2 with augment='images' "
                "(two augmented views per step); or set features.augment=noise"
            )
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"features.crop_scale={self.crop_scale} should be in (0, 1]")
        if self.noise_std < 0 or not 0.0 <= self.feature_dropout < 1.0:
            raise ConfigError(
                f"features.noise_std={self.noise_std} should be >= 0 and "
                f"features.feature_dropout={self.feature_dropout} in [0, 1)"
            )
        if self.augment == "noise" and self.noise_std == 0 and self.feature_dropout == 0:
            raise ConfigError(
                "features.augment=noise needs features.noise_std > 0 or features.feature_dropout > 0"
            )
        if self.image_size < 4:
            raise ConfigError(f"features.image_size={self.image_size} should be >= 4")
        if self.mode == "finetune":
            if self.view == "pixels" or self.view.startswith("pixels"):
                raise ConfigError(
                    f"features.mode=finetune needs a network view; features.view={self.view!r} "
                    "has no weights to train (use e.g. efficientnet_lite0 or test_tiny)"
                )
            if self.augment != "images":
                raise ConfigError(
                    "features.augment=noise perturbs frozen features; features.mode=finetune "
                    "augments the images at every step (set features.augment=images)"
                )
        if self.train_size is not None and self.train_size < 16:
            raise ConfigError(f"features.train_size={self.train_size} should be >= 16 or null")
        if self.backbone_lr is not None and self.backbone_lr <= 0:
            raise ConfigError(f"features.backbone_lr={self.backbone_lr} should be > 0 or null")
        if self.freeze_stages < 0:
            raise ConfigError(f"features.freeze_stages={self.freeze_stages} should be >= 0")


@dataclass
class DeepTrainerConfig:
    backend: Literal["ray", "local"] = "ray"  # "local": the same loop in this process (no Ray)
    num_workers: int = 1  # Ray Train workers (data parallel; gradients averaged by DDP)
    use_gpu: bool = False
    epochs: int = 100
    batch_size: int = 256  # per worker
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    hidden_dim: int = 512  # width of the MLP trunk on top of the frozen features
    # Mixed precision of the backbone when fine-tuning on CUDA: "auto" = bf16 where the GPU
    # has it, else fp16 with a gradient scaler; losses stay fp32. Always fp32 on a CPU.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 0
    storage_path: str | None = None  # Ray Train's run folder (None: <output>/ray or a temp dir)
    # ray.train.report every this many epochs (for Ray Tune schedulers); 0: only the final
    # report with the checkpoint. Each report is a cross-worker barrier plus a hand-off to
    # Ray Train's controller (measured ~10-30 s on a loaded 2-core machine), so keep it rare.
    report_every: int = 0

    def __post_init__(self) -> None:
        for name in ("num_workers", "epochs", "batch_size", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)} should be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr={self.lr} should be > 0")
        if self.report_every < 0:
            raise ConfigError(f"trainer.report_every={self.report_every} should be >= 0")


@dataclass
class DivClustConfig:
    n_heads: int = 20  # K clusterings learned together
    diversity_target: float = 0.95  # D^T: upper bound of the mean inter-head NMI (1: off)
    memory_bank: int = 10_000  # M: recent samples whose head assignments measure D^R
    update_interval: int = 20  # T: steps between updates of the threshold d
    threshold_momentum: float = 0.01  # m: d <- d(1-m) above target, d(1+m) (max 1) below
    initial_threshold: float = 1.0  # d at the start (1: no pressure until D^R exceeds D^T)
    diversity_weight: float = 1.0
    cluster_temperature: float = 1.0  # CC's cluster-level NT-Xent temperature
    instance_temperature: float = 0.5  # CC's instance-level NT-Xent temperature
    instance_weight: float = 1.0  # 0 drops CC's instance-level loss
    entropy_weight: float = 1.0  # CC's cluster-size entropy term
    projection_dim: int = 128
    # Single clustering from the K heads: "best_head" (DivClust A: lowest L_main), "all"
    # (B: consensus of all heads), "top" (C: consensus of the consensus_heads best heads).
    selection: Literal["best_head", "all", "top"] = "top"
    consensus_heads: int = 10
    consensus: Literal["coassociation", "bipartite"] = "coassociation"

    def __post_init__(self) -> None:
        if self.n_heads < 1:
            raise ConfigError(f"divclust.n_heads={self.n_heads} should be >= 1")
        if not 0.0 < self.diversity_target <= 1.0:
            raise ConfigError(
                f"divclust.diversity_target={self.diversity_target} should be in (0, 1]"
            )
        if self.memory_bank < 10 or self.update_interval < 1:
            raise ConfigError(
                f"divclust.memory_bank={self.memory_bank} should be >= 10 and "
                f"divclust.update_interval={self.update_interval} >= 1"
            )
        if not 0.0 < self.threshold_momentum < 1.0:
            raise ConfigError(
                f"divclust.threshold_momentum={self.threshold_momentum} should be in (0, 1)"
            )
        if self.consensus_heads < 1:
            raise ConfigError(f"divclust.consensus_heads={self.consensus_heads} should be >= 1")


@dataclass
class MMDCConfig:
    rotation: bool = True  # alternate clustering passes with the 4-angle rotation task
    rotation_weight: float = (
        1.0  # scales the rotation loss (the paper's lr ratio lambda_r/lambda_c)
    )
    target_sigma: float = 0.0  # GMM variance around the one-hot means (the paper settles on 0)
    refine_epochs: int = 5  # final stage: K-means relabels the targets at each of these epochs

    def __post_init__(self) -> None:
        if self.refine_epochs < 0 or self.target_sigma < 0:
            raise ConfigError(
                f"mmdc.refine_epochs={self.refine_epochs} and "
                f"mmdc.target_sigma={self.target_sigma} should be >= 0"
            )


@dataclass
class ICBPLConfig:
    latent_dim: int = 64  # PEDCC dimension (>= n_clusters - 1)
    lambda_augmentation: float = 8.0  # lambda1: augmentation-consistency cosine loss
    lambda_neighbours: float = 2.0  # lambda2: kNN cosine loss
    lambda_min_cosine: float = 2.0  # lambda3: minimum-cosine-distance loss
    n_neighbors: int = 4
    knn_refresh_epochs: int = 30  # neighbours recomputed from the current latents this often
    mmd_sigma: float = 1.0  # Gaussian kernel bandwidth of the MMD
    # Weight of the MMD term (1 in the paper's Eq. 7). On small frozen-feature sets a larger
    # weight keeps every PEDCC centroid in use: at 1 a few centroids can stay empty.
    mmd_weight: float = 1.0

    def __post_init__(self) -> None:
        if (
            self.n_neighbors < 1
            or self.knn_refresh_epochs < 1
            or self.mmd_sigma <= 0
            or self.mmd_weight < 0
        ):
            raise ConfigError(
                f"icbpl.n_neighbors={self.n_neighbors} and "
                f"icbpl.knn_refresh_epochs={self.knn_refresh_epochs} should be >= 1, "
                f"icbpl.mmd_sigma={self.mmd_sigma} > 0, icbpl.mmd_weight={self.mmd_weight} >= 0"
            )


@dataclass
class DeepConfig:
    method: Literal["divclust", "mmdc", "icbpl"] = "divclust"
    n_clusters: int | None = None  # None: the number of classes in the data's labels
    name: str | None = None
    output: str | None = None  # run folder for config, labels, metrics, history (None: none)
    # Also cluster the features the head reads with K-means (train fit, held-out predicted)
    kmeans_baseline: bool = True
    data: DeepDataConfig = field(default_factory=DeepDataConfig)
    features: DeepFeaturesConfig = field(default_factory=DeepFeaturesConfig)
    trainer: DeepTrainerConfig = field(default_factory=DeepTrainerConfig)
    divclust: DivClustConfig = field(default_factory=DivClustConfig)
    mmdc: MMDCConfig = field(default_factory=MMDCConfig)
    icbpl: ICBPLConfig = field(default_factory=ICBPLConfig)
    # MLflow: params = this config, per-epoch objective and parts, final scores, the run
    # folder's files. uri None: <parent of output>/mlflow.db (runs/mlflow.db without an
    # output folder); no server needed. tracking.enabled=false or --no-mlflow: off.
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.n_clusters is not None and self.n_clusters < 2:
            raise ConfigError(f"n_clusters={self.n_clusters} should be >= 2")
        if (
            self.method == "icbpl"
            and self.n_clusters is not None
            and self.icbpl.latent_dim < self.n_clusters - 1
        ):
            raise ConfigError(
                f"icbpl.latent_dim={self.icbpl.latent_dim} should be >= n_clusters - 1 = "
                f"{self.n_clusters - 1} (PEDCC centroids span n_clusters - 1 dimensions)"
            )
        if self.method == "mmdc" and self.mmdc.rotation and self.features.rotations is False:
            raise ConfigError(
                "mmdc.rotation=true needs features.rotations=true (or null): the rotation task "
                "trains on features of rotated images"
            )

    @property
    def needs_rotations(self) -> bool:
        if self.features.rotations is not None:
            return self.features.rotations
        return self.method == "mmdc" and self.mmdc.rotation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_deep_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> DeepConfig:
    """Defaults <- YAML <- overrides, validated into a ``DeepConfig``."""
    return load_config(path, overrides, schema=DeepConfig)
