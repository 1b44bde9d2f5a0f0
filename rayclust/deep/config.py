"""Typed configuration of a deep-clustering run: every hyperparameter is a field, so a YAML
file, ``key=value`` overrides and Ray Tune search spaces all address the same names.

Load with ``rayclust.config.load_config(path, overrides, schema=DeepConfig)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rayclust.config import (
    ClassFolderSource,
    ConfigError,
    ConfigSection,
    RayConfig,
    TrackingConfig,
    at_least,
    load_config,
)

METHODS = ("divclust", "mmdc", "icbpl")
TORCHVISION_DATASETS = ("cifar10", "stl10")
DATASETS = ("digits", *TORCHVISION_DATASETS)  # names data.source takes besides a folder


@dataclass
class DeepDataConfig(ClassFolderSource):
    """The shared source section, where ``source`` also takes a dataset name (``DATASETS``)."""

    # "digits" (scikit-learn's bundled 8x8 digits, rendered as images), "cifar10" / "stl10"
    # (torchvision; train and test splits together, as deep-clustering papers evaluate), or a
    # folder whose first-level sub-folders are the classes (e.g. data/tuxpaint).
    source: str = "digits"
    root: str | None = None  # torchvision datasets: their folder (None: ~/.cache/rayclust/datasets)
    download: bool = False  # torchvision datasets: fetch when missing (needs a network)
    max_images: int | None = None  # a random subset of this many images (None: all)
    holdout_fraction: float = 0.2  # share of images never trained on, scored separately
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_in_range("holdout_fraction", 0, 1, high_open=True)
        self.check_at_least(max_images=2)


@dataclass
class DeepFeaturesConfig(ConfigSection, section="features"):
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
    # Feature stores (FeatureStore, one per view and derivation) and decoded images.
    # None: the views' feature cache, $RAYCLUST_CACHE_DIR or ~/.cache/rayclust/features
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        known = {"crop", "flip", "color", "grayscale", "blur"}
        unknown = sorted(set(self.augmentations) - known)
        if unknown:
            raise ConfigError(
                f"features.augmentations has unknown {unknown}; choose from {sorted(known)}"
            )
        if self.augment == "images":
            at_least(
                self.key("n_augmented"),
                self.n_augmented,
                2,
                hint="with augment='images' (two augmented views per step); "
                "or set features.augment=noise",
            )
        self.check_at_least(
            n_augmented=0, noise_std=0, image_size=4, train_size=16, freeze_stages=0
        )
        self.check_in_range("crop_scale", 0, 1, low_open=True)
        self.check_in_range("feature_dropout", 0, 1, high_open=True)
        self.check_above(backbone_lr=0)
        if self.augment == "noise" and self.noise_std == 0 and self.feature_dropout == 0:
            raise ConfigError(
                "features.augment=noise needs features.noise_std > 0 or features.feature_dropout > 0"
            )
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


@dataclass
class DeepTrainerConfig(ConfigSection, section="trainer"):
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
        self.check_at_least(num_workers=1, epochs=1, batch_size=1, hidden_dim=1, report_every=0)
        self.check_above(lr=0)


@dataclass
class DivClustConfig(ConfigSection, section="divclust"):
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
    # false: every head owns both layers of CC's cluster projector (the authors' code);
    # true: the heads share its first layer and own only the last one (fewer parameters)
    shared_first_layer: bool = False
    # Single clustering from the K heads: "best_head" (DivClust A: lowest L_main), "all"
    # (B: consensus of all heads), "top" (C: consensus of the consensus_heads best heads).
    selection: Literal["best_head", "all", "top"] = "top"
    consensus_heads: int = 10
    consensus: Literal["coassociation", "bipartite"] = "coassociation"

    def __post_init__(self) -> None:
        self.check_at_least(n_heads=1, memory_bank=10, update_interval=1, consensus_heads=1)
        self.check_in_range("diversity_target", 0, 1, low_open=True)
        self.check_in_range("threshold_momentum", 0, 1, low_open=True, high_open=True)


@dataclass
class MMDCConfig(ConfigSection, section="mmdc"):
    rotation: bool = True  # alternate clustering passes with the 4-angle rotation task
    rotation_weight: float = (
        1.0  # scales the rotation loss (the paper's lr ratio lambda_r/lambda_c)
    )
    target_sigma: float = 0.0  # GMM variance around the one-hot means (the paper settles on 0)
    refine_epochs: int = 5  # final stage: K-means relabels the targets at each of these epochs

    def __post_init__(self) -> None:
        self.check_at_least(refine_epochs=0, target_sigma=0)


@dataclass
class ICBPLConfig(ConfigSection, section="icbpl"):
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
    # Algorithm 1, step 1: this many first epochs train only a Barlow Twins loss between two
    # augmented views' latents (self-supervised fine-tuning, meant for features.mode=finetune);
    # the kNN graph is then built from the fine-tuned encoder. 0: skip (frozen features).
    barlow_twins_epochs: int = 0
    barlow_twins_off_diagonal: float = 5e-3  # lambda of the off-diagonal redundancy term

    def __post_init__(self) -> None:
        self.check_at_least(
            n_neighbors=1,
            knn_refresh_epochs=1,
            mmd_weight=0,
            barlow_twins_epochs=0,
            barlow_twins_off_diagonal=0,
        )
        self.check_above(mmd_sigma=0)


@dataclass
class DeepConfig(ConfigSection):
    method: Literal["divclust", "mmdc", "icbpl"] = "divclust"
    n_clusters: int | None = None  # None: the number of classes in the data's labels
    name: str | None = None
    output: str | None = None  # run folder for config, labels, metrics, history (None: none)
    # Also cluster the features the head reads with K-means (train fit, held-out predicted)
    kmeans_baseline: bool = True
    data: DeepDataConfig
    features: DeepFeaturesConfig
    trainer: DeepTrainerConfig
    divclust: DivClustConfig
    mmdc: MMDCConfig
    icbpl: ICBPLConfig
    # MLflow: params = this config, per-epoch objective and parts, final scores, the run
    # folder's files. uri None: <parent of output>/mlflow.db (runs/mlflow.db without an
    # output folder); no server needed. tracking.enabled=false or --no-mlflow: off.
    tracking: TrackingConfig
    # trainer.backend=ray: the Ray session to start or join (as a clustering run's ray section)
    ray: RayConfig

    def __post_init__(self) -> None:
        self.check_at_least(n_clusters=2)
        if (
            self.method == "icbpl"
            and self.n_clusters is not None
            and self.icbpl.latent_dim < self.n_clusters - 1
        ):
            raise ConfigError(
                f"icbpl.latent_dim={self.icbpl.latent_dim} should be >= n_clusters - 1 = "
                f"{self.n_clusters - 1} (PEDCC centroids span n_clusters - 1 dimensions)"
            )
        if self.method == "icbpl" and self.icbpl.barlow_twins_epochs >= self.trainer.epochs:
            raise ConfigError(
                f"icbpl.barlow_twins_epochs={self.icbpl.barlow_twins_epochs} should be < "
                f"trainer.epochs={self.trainer.epochs} (the Barlow Twins step is the first "
                "epochs of training; ICBPL's own losses need at least one more)"
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


def load_deep_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> DeepConfig:
    """Defaults <- YAML <- overrides, validated into a ``DeepConfig``."""
    return load_config(path, overrides, schema=DeepConfig)
